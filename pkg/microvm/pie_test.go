package microvm

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/isolator-dev/isolator/pkg/image"
)

// A static PIE is an ET_DYN program without PT_INTERP: the loader places it at pieBase,
// jumps to its own entry point (no interpreter runs) and passes AT_BASE 0. TestStaticPIE
// runs two of them, each in a micro VM and on the host, and checks where they were loaded
// and what their auxiliary vector says; the host's kernel loads them at a random base, so
// the guest's values are compared with the host's relative to the load base.
//
//   - "minimal" is a static PIE made here byte by byte (pieELF, pieDumpCode), so it needs
//     no toolchain and always runs: it writes the raw auxiliary vector. It has a PT_PHDR.
//   - "toolchain" is a C-library or Go program (testdata/pieprog) reading its auxv through
//     the library. The Go toolchain is tried first: CGO_ENABLED=0 go build
//     -buildmode=pie. Go 1.26 cannot make a static PIE that way (the result has PT_INTERP:
//     the Go runtime does not relocate itself, so it needs ld.so, and -ldflags=-d drops
//     the relocations and crashes), so the test falls back to gcc -static-pie over
//     testdata/pieprog.c when gcc and the static C library are installed, and skips saying
//     so otherwise. glibc's static-PIE start-up relocates itself and finds its TLS segment
//     through AT_PHDR, and gcc's program has no PT_PHDR: the loader must derive AT_PHDR
//     from the PT_LOAD holding the program headers.
func TestStaticPIE(t *testing.T) {
	sys := requireKVM(t)
	t.Run("minimal", func(t *testing.T) {
		bin := filepath.Join(t.TempDir(), "pie")
		if err := os.WriteFile(bin, pieELF(pieDumpCode), 0o755); err != nil {
			t.Fatal(err)
		}
		checkStaticPIE(t, bin)
		im := buildImage(t, "pie-minimal", image.BuildConfig{Files: []image.FileSpec{{HostPath: bin, GuestPath: "/bin/pie"}}})
		out, stderr, res := runGuest(t, sys, im, nil, nil, "/bin/pie")
		if res.ExitCode != 0 {
			t.Fatalf("exit %d (%s), stderr %q, denied %v", res.ExitCode, res.Reason, stderr, res.Stats.Denied)
		}
		g := parsePIEDump(t, "guest", []byte(out))
		hostOut, err := exec.Command(bin).Output()
		if err != nil {
			t.Fatalf("host run: %v", err)
		}
		h := parsePIEDump(t, "host", hostOut)

		const entryOff = pieHeaderSize
		if g.start != pieBase+entryOff {
			t.Errorf("entry code runs at %#x, want %#x (the PIE base %#x + %#x)", g.start, pieBase+entryOff, pieBase, entryOff)
		}
		hostBase := h.start - entryOff
		for _, c := range []struct {
			name       string
			key        uint64
			guest, rel uint64 // rel: the value relative to the load base, or the value itself
			relative   bool
		}{
			{"AT_PHDR", atPhdr, pieBase + 64, 64, true},
			{"AT_ENTRY", atEntry, pieBase + entryOff, entryOff, true},
			{"AT_BASE", atBase, 0, 0, false},
			{"AT_PHENT", atPhent, phdrSize, phdrSize, false},
			{"AT_PHNUM", atPhnum, pieNumPhdrs, pieNumPhdrs, false},
			{"AT_PAGESZ", atPagesz, 4096, 4096, false},
			{"AT_FLAGS", atFlags, 0, 0, false},
		} {
			gv, ok := g.aux[c.key]
			if !ok || gv != c.guest {
				t.Errorf("guest %s = %#x (present %v), want %#x", c.name, gv, ok, c.guest)
			}
			hv, ok := h.aux[c.key]
			if c.relative {
				hv -= hostBase
			}
			if !ok || hv != c.rel {
				t.Errorf("host %s = %#x relative to its base %#x (present %v), want %#x: the expectation is wrong", c.name, hv, hostBase, ok, c.rel)
			}
		}
		// AT_RANDOM points at 16 bytes above the initial stack pointer, in the stack.
		if r := g.aux[atRandom]; r <= g.sp || r+16 > stackTop {
			t.Errorf("AT_RANDOM %#x is not in the stack above the initial stack pointer %#x", r, g.sp)
		}
		if g.random == [16]byte{} {
			t.Errorf("the 16 bytes at AT_RANDOM are zero")
		}
		if g.sp%16 != 0 || g.sp >= stackTop || g.sp < stackTop-stackSize {
			t.Errorf("initial stack pointer %#x not 16-byte aligned in the stack", g.sp)
		}
	})

	t.Run("toolchain", func(t *testing.T) {
		bin, mainSym, how := buildPIEProg(t)
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		syms, err := f.Symbols()
		f.Close()
		if err != nil {
			t.Fatalf("%s: symbols: %v", bin, err)
		}
		var mainOff uint64
		for _, s := range syms {
			if s.Name == mainSym {
				mainOff = s.Value
			}
		}
		if mainOff == 0 {
			t.Fatalf("%s: no symbol %s", bin, mainSym)
		}
		entry, phdrOff := checkStaticPIE(t, bin)
		im := buildImage(t, "pie-toolchain", image.BuildConfig{Files: []image.FileSpec{{HostPath: bin, GuestPath: "/bin/pieprog"}}})
		out, stderr, res := runGuest(t, sys, im, nil, nil, "/bin/pieprog")
		if res.ExitCode != 0 {
			t.Fatalf("%s: exit %d (%s), stdout %q, stderr %q, denied %v", how, res.ExitCode, res.Reason, out, stderr, res.Stats.Denied)
		}
		hostOut, err := exec.Command(bin).Output()
		if err != nil {
			t.Fatalf("host run: %v", err)
		}
		g, h := parsePIEReport(t, out), parsePIEReport(t, string(hostOut))
		t.Logf("%s; guest output:\n%s", how, out)
		if g.greeting != "hello from a static PIE" {
			t.Errorf("greeting %q", g.greeting)
		}
		if g.values["main"] != pieBase+mainOff {
			t.Errorf("main at %#x, want %#x: the program is not at the PIE base %#x", g.values["main"], pieBase+mainOff, pieBase)
		}
		hostBase := h.values["main"] - mainOff
		for _, c := range []struct {
			key  string
			want uint64 // relative to the load base when rel
			rel  bool
		}{
			{"AT_PHDR", phdrOff, true},
			{"AT_ENTRY", entry, true},
			{"AT_BASE", 0, false},
			{"AT_PAGESZ", 4096, false},
			{"pagesize", 4096, false},
			{"phdr0", uint64(elf.PT_LOAD), false}, // neither program has a PT_PHDR
		} {
			gv, hv := g.values[c.key], h.values[c.key]
			if c.rel {
				gv, hv = gv-pieBase, hv-hostBase
			}
			if gv != c.want || hv != c.want {
				t.Errorf("%s: guest %#x, host %#x, want %#x", c.key, gv, hv, c.want)
			}
		}
		if r := g.values["AT_RANDOM"]; r < stackTop-stackSize || r+16 > stackTop {
			t.Errorf("AT_RANDOM %#x is not in the stack", r)
		}
	})
}

// checkStaticPIE checks with debug/elf that bin is a static PIE (ET_DYN without PT_INTERP)
// and returns its entry point and the address of its program headers, relative to the base.
func checkStaticPIE(t *testing.T, bin string) (entry, phdr uint64) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if why := notStaticPIE(f); why != "" {
		t.Fatalf("%s is not a static PIE: %s", bin, why)
	}
	raw, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	// Where the program headers are in memory, as Linux computes AT_PHDR: PT_PHDR's
	// address, or else e_phoff's place in the PT_LOAD that holds it.
	phoff := binary.LittleEndian.Uint64(raw[32:])
	for _, p := range f.Progs {
		if p.Type == elf.PT_PHDR {
			return f.Entry, p.Vaddr
		}
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && phoff >= p.Off && phoff < p.Off+p.Filesz {
			return f.Entry, p.Vaddr + phoff - p.Off
		}
	}
	t.Fatalf("%s: no segment maps the program headers", bin)
	return 0, 0
}

// notStaticPIE says why f is not a static PIE, or "".
func notStaticPIE(f *elf.File) string {
	if f.Type != elf.ET_DYN {
		return fmt.Sprintf("type %v, want ET_DYN", f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "it has PT_INTERP"
		}
	}
	return ""
}

// buildPIEProg builds testdata/pieprog as a static PIE with the Go toolchain, or
// testdata/pieprog.c with gcc -static-pie when Go cannot (see TestStaticPIE); it skips the
// test when neither can. It returns the binary, the symbol of its main function and how it
// was made.
func buildPIEProg(t *testing.T) (bin, mainSym, how string) {
	t.Helper()
	dir := t.TempDir()
	bin = filepath.Join(dir, "pieprog")
	cmd := exec.Command("go", "build", "-buildmode=pie", "-o", bin, "./testdata/pieprog")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go build -buildmode=pie: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	why := notStaticPIE(f)
	f.Close()
	if why == "" {
		return bin, "main.main", "built with CGO_ENABLED=0 go build -buildmode=pie"
	}
	goWhy := "CGO_ENABLED=0 go build -buildmode=pie does not make a static PIE: " + why
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skipf("skipping: %s, and gcc is not installed for gcc -static-pie", goWhy)
	}
	for _, lib := range []string{"libc.a", "rcrt1.o"} {
		p, err := exec.Command(gcc, "-print-file-name="+lib).Output()
		if _, serr := os.Stat(strings.TrimSpace(string(p))); err != nil || !filepath.IsAbs(strings.TrimSpace(string(p))) || serr != nil {
			t.Skipf("skipping: %s, and gcc has no %s for -static-pie (Debian: libc6-dev)", goWhy, lib)
		}
	}
	bin = filepath.Join(dir, "pieprog-c")
	if out, err := exec.Command(gcc, "-static-pie", "-O2", "-o", bin, "testdata/pieprog.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc -static-pie: %v\n%s", err, out)
	}
	return bin, "main", goWhy + "; built testdata/pieprog.c with gcc -static-pie"
}

// pieReport is what testdata/pieprog prints: its first line and "name value" lines.
type pieReport struct {
	greeting string
	values   map[string]uint64
}

func parsePIEReport(t *testing.T, out string) pieReport {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	r := pieReport{greeting: lines[0], values: map[string]uint64{}}
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, " ")
		n, err := strconv.ParseUint(v, 0, 64)
		if !ok || err != nil {
			t.Fatalf("bad report line %q in\n%s", l, out)
		}
		r.values[k] = n
	}
	for _, k := range []string{"main", "AT_PHDR", "AT_ENTRY", "AT_BASE", "AT_RANDOM", "AT_PAGESZ", "phdr0", "pagesize"} {
		if _, ok := r.values[k]; !ok {
			t.Fatalf("report lacks %s:\n%s", k, out)
		}
	}
	return r
}

// The minimal static PIE: the ELF header, pieNumPhdrs program headers (PT_PHDR, one
// read+execute PT_LOAD of the whole file at address 0, PT_GNU_STACK), then the code.
const (
	pieNumPhdrs   = 3
	pieHeaderSize = 64 + pieNumPhdrs*56
)

// pieELF returns a static PIE (ET_DYN, no PT_INTERP, no dynamic section: the code is
// position independent and needs no relocation) whose entry point is the start of code.
func pieELF(code []byte) []byte {
	b := make([]byte, pieHeaderSize, pieHeaderSize+len(code))
	le := binary.LittleEndian
	copy(b, "\x7fELF\x02\x01\x01")
	le.PutUint16(b[16:], etDyn)
	le.PutUint16(b[18:], emX8664)
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], pieHeaderSize) // entry
	le.PutUint64(b[32:], 64)            // phoff
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[54:], phdrSize)
	le.PutUint16(b[56:], pieNumPhdrs)
	size := uint64(pieHeaderSize + len(code))
	ph := func(i int, typ, flags uint32, off, filesz, align uint64) {
		p := b[64+56*i:]
		le.PutUint32(p[0:], typ)
		le.PutUint32(p[4:], flags)
		le.PutUint64(p[8:], off)
		le.PutUint64(p[16:], off) // vaddr
		le.PutUint64(p[24:], off) // paddr
		le.PutUint64(p[32:], filesz)
		le.PutUint64(p[40:], filesz)
		le.PutUint64(p[48:], align)
	}
	ph(0, ptPhdr, pfR, 64, pieNumPhdrs*56, 8)
	ph(1, ptLoad, pfR|pfX, 0, size, 0x1000)
	ph(2, uint32(elf.PT_GNU_STACK), pfR|pfW, 0, 0, 16)
	return append(b, code...)
}

// pieDumpCode writes to stdout the runtime address of its own first instruction, the
// initial stack pointer, the 16 bytes at AT_RANDOM (zeros without it) and the auxiliary
// vector up to and including AT_NULL, then calls exit_group(0). Position independent.
var pieDumpCode = []byte{
	0x49, 0x89, 0xe4, //                   mov r12, rsp            ; initial stack pointer
	0x49, 0x8b, 0x04, 0x24, //             mov rax, [r12]          ; argc
	0x4d, 0x8d, 0x6c, 0xc4, 0x10, //       lea r13, [r12+rax*8+16] ; envp
	0x49, 0x8b, 0x45, 0x00, //        1:   mov rax, [r13]
	0x49, 0x83, 0xc5, 0x08, //             add r13, 8
	0x48, 0x85, 0xc0, //                   test rax, rax
	0x75, 0xf3, //                         jnz 1b                  ; r13 = auxv
	0x4d, 0x89, 0xee, //                   mov r14, r13
	0x45, 0x31, 0xff, //                   xor r15d, r15d
	0x49, 0x8b, 0x06, //              2:   mov rax, [r14]
	0x49, 0x8b, 0x56, 0x08, //             mov rdx, [r14+8]
	0x49, 0x83, 0xc6, 0x10, //             add r14, 16
	0x48, 0x83, 0xf8, 0x19, //             cmp rax, AT_RANDOM
	0x75, 0x03, //                         jne 3f
	0x49, 0x89, 0xd7, //                   mov r15, rdx
	0x48, 0x85, 0xc0, //              3:   test rax, rax
	0x75, 0xe7, //                         jnz 2b                  ; r14 = past AT_NULL
	0x48, 0x83, 0xec, 0x20, //             sub rsp, 32
	0x48, 0x8d, 0x05, 0xbd, 0xff, 0xff, 0xff, // lea rax, [rip-0x43] ; the first instruction
	0x48, 0x89, 0x04, 0x24, //             mov [rsp], rax
	0x4c, 0x89, 0x64, 0x24, 0x08, //       mov [rsp+8], r12
	0x31, 0xc0, //                         xor eax, eax
	0x48, 0x89, 0x44, 0x24, 0x10, //       mov [rsp+16], rax
	0x48, 0x89, 0x44, 0x24, 0x18, //       mov [rsp+24], rax
	0x4d, 0x85, 0xff, //                   test r15, r15
	0x74, 0x11, //                         jz 4f
	0x49, 0x8b, 0x07, //                   mov rax, [r15]
	0x48, 0x89, 0x44, 0x24, 0x10, //       mov [rsp+16], rax
	0x49, 0x8b, 0x47, 0x08, //             mov rax, [r15+8]
	0x48, 0x89, 0x44, 0x24, 0x18, //       mov [rsp+24], rax
	0xbf, 0x01, 0x00, 0x00, 0x00, //  4:   mov edi, 1
	0x48, 0x89, 0xe6, //                   mov rsi, rsp
	0xba, 0x20, 0x00, 0x00, 0x00, //       mov edx, 32
	0xb8, 0x01, 0x00, 0x00, 0x00, //       mov eax, SYS_write
	0x0f, 0x05, //                         syscall
	0xbf, 0x01, 0x00, 0x00, 0x00, //       mov edi, 1
	0x4c, 0x89, 0xee, //                   mov rsi, r13
	0x4c, 0x89, 0xf2, //                   mov rdx, r14
	0x4c, 0x29, 0xea, //                   sub rdx, r13
	0xb8, 0x01, 0x00, 0x00, 0x00, //       mov eax, SYS_write
	0x0f, 0x05, //                         syscall
	0x31, 0xff, //                         xor edi, edi
	0xb8, 0xe7, 0x00, 0x00, 0x00, //       mov eax, SYS_exit_group
	0x0f, 0x05, //                         syscall
}

// pieDump is what pieDumpCode writes.
type pieDump struct {
	start, sp uint64
	random    [16]byte
	aux       map[uint64]uint64
}

func parsePIEDump(t *testing.T, who string, b []byte) pieDump {
	t.Helper()
	le := binary.LittleEndian
	if len(b) < 32+16 || (len(b)-32)%16 != 0 {
		t.Fatalf("%s: %d bytes of output, not a dump", who, len(b))
	}
	d := pieDump{start: le.Uint64(b), sp: le.Uint64(b[8:]), aux: map[uint64]uint64{}}
	copy(d.random[:], b[16:32])
	for p := b[32:]; len(p) > 0; p = p[16:] {
		k, v := le.Uint64(p), le.Uint64(p[8:])
		if k == atNull {
			if len(p) != 16 {
				t.Fatalf("%s: %d bytes after AT_NULL", who, len(p)-16)
			}
			break
		}
		if _, dup := d.aux[k]; dup {
			t.Errorf("%s: auxv key %d twice", who, k)
		}
		d.aux[k] = v
	}
	return d
}
