package microvm

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/arch/x86/x86asm"
	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/image"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// vdsoSymname names the vvar fields for the disassembler.
func vdsoSymname(addr uint64) (string, uint64) {
	for _, f := range []struct {
		name string
		off  uint64
	}{{"vvar.tsc0", vvarTSC0}, {"vvar.mult", vvarMult}, {"vvar.base", vvarBase}, {"vvar.mask", vvarMask}, {"vvar.offset", vvarOffset}} {
		if addr == vvarAddr+f.off {
			return f.name, addr
		}
	}
	return "", 0
}

// TestVDSOListing disassembles vdsoCode where the vDSO puts it and checks every
// instruction against the listing in vdso.go's comments (branch targets as offsets, vvar
// operands by field), and that every exported function starts on an instruction and ends
// with ret.
func TestVDSOListing(t *testing.T) {
	src, err := os.ReadFile("vdso.go")
	if err != nil {
		t.Fatal(err)
	}
	body := string(src)
	body = body[strings.Index(body, "var vdsoCode = []byte{"):]
	body = body[:strings.Index(body, "\n}\n")]
	lineRE := regexp.MustCompile(`// ([0-9a-f]{4})  (.+)$`)
	listing := map[int]string{}
	for _, l := range strings.Split(body, "\n") {
		if m := lineRE.FindStringSubmatch(l); m != nil {
			off, _ := strconv.ParseUint(m[1], 16, 32)
			listing[int(off)] = m[2]
		}
	}
	pc := uint64(vdsoAddr + vdsoCodeOff)
	targetRE := regexp.MustCompile(`0x[0-9a-f]+`)
	starts := map[uint64]bool{}
	var last string
	ends := map[uint64]string{}
	for off := 0; off < len(vdsoCode); {
		inst, err := x86asm.Decode(vdsoCode[off:], 64)
		if err != nil {
			t.Fatalf("decode at %#x: %v", off, err)
		}
		got := strings.ToLower(x86asm.IntelSyntax(inst, pc+uint64(off), vdsoSymname))
		got = targetRE.ReplaceAllStringFunc(got, func(m string) string {
			// A branch target in the code: as its offset.
			if v, _ := strconv.ParseUint(m[2:], 16, 64); v >= pc && v < pc+uint64(len(vdsoCode)) {
				return fmt.Sprintf("%#x", v-pc)
			}
			return m
		})
		if want, ok := listing[off]; !ok || want != got {
			t.Errorf("%04x: %q, listing says %q", off, got, want)
		}
		delete(listing, off)
		starts[uint64(off)] = true
		ends[uint64(off)] = last
		last = got
		off += inst.Len
	}
	ends[uint64(len(vdsoCode))] = last
	for off, l := range listing {
		t.Errorf("the listing has %04x %q, not an instruction", off, l)
	}
	for _, f := range vdsoFuncs {
		if !starts[f.off] {
			t.Errorf("%s starts at %#x, inside an instruction", f.name, f.off)
		}
		if end := f.off + f.size; ends[end] != "ret" {
			t.Errorf("%s ends at %#x after %q, want ret", f.name, end, ends[end])
		}
	}
}

// hostVDSO returns the host's own vDSO, read from this process.
func hostVDSO(t *testing.T) []byte {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(maps), "\n") {
		if !strings.HasSuffix(l, "[vdso]") {
			continue
		}
		var lo, hi uint64
		fmt.Sscanf(l, "%x-%x", &lo, &hi)
		mem, err := os.Open("/proc/self/mem")
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		b := make([]byte, hi-lo)
		if _, err := mem.ReadAt(b, int64(lo)); err != nil {
			t.Fatal(err)
		}
		return b
	}
	t.Skip("skipping the comparison: this process has no [vdso]")
	return nil
}

// vdsoSymbols lists the exported functions of a vDSO as "name@version" with their
// binding.
func vdsoSymbols(t *testing.T, img []byte) map[string]elf.SymBind {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	syms, err := f.DynamicSymbols()
	if err != nil {
		t.Fatalf("dynamic symbols: %v", err)
	}
	out := map[string]elf.SymBind{}
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Section != elf.SHN_UNDEF {
			out[s.Name+"@"+s.Version] = elf.ST_BIND(s.Info)
		}
	}
	return out
}

// TestVDSOImage parses the vDSO with debug/elf: a shared object linked at 0 whose
// functions are exported under the names, version and bindings the host kernel's own
// x86-64 vDSO uses, pointing at their code, with a read-only dynamic segment.
func TestVDSOImage(t *testing.T) {
	img := vdsoImage()
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != elf.ET_DYN || f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
		t.Errorf("type %v machine %v class %v", f.Type, f.Machine, f.Class)
	}
	var load, dyn int
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			load++
			if p.Vaddr != 0 || p.Off != 0 || p.Filesz != uint64(len(img)) || p.Flags != elf.PF_R|elf.PF_X {
				t.Errorf("PT_LOAD %+v, want the whole image at 0, read and execute", p.ProgHeader)
			}
		case elf.PT_DYNAMIC:
			dyn++
			if p.Flags&elf.PF_W != 0 {
				t.Error("PT_DYNAMIC is writable: loaders would relocate it in place, in a read-only page")
			}
		}
	}
	if load != 1 || dyn != 1 {
		t.Errorf("%d PT_LOAD and %d PT_DYNAMIC, want one each", load, dyn)
	}
	if so, err := f.DynString(elf.DT_SONAME); err != nil || len(so) != 1 || so[0] != vdsoSoname {
		t.Errorf("DT_SONAME %q, %v", so, err)
	}
	text := f.Section(".text")
	if text == nil || text.Addr != vdsoCodeOff || text.Size != uint64(len(vdsoCode)) {
		t.Fatalf(".text %+v, want %d bytes at %#x", text, len(vdsoCode), vdsoCodeOff)
	}
	syms, _ := f.DynamicSymbols()
	want := map[string]uint64{}
	for _, fn := range vdsoFuncs {
		want["__vdso_"+fn.name] = vdsoCodeOff + fn.off
		want[fn.name] = vdsoCodeOff + fn.off
	}
	for _, s := range syms {
		if v, ok := want[s.Name]; ok {
			if s.Value != v || s.Version != vdsoVersion || elf.ST_TYPE(s.Info) != elf.STT_FUNC {
				t.Errorf("symbol %s: value %#x version %q type %v, want %#x, %s, FUNC", s.Name, s.Value, s.Version, elf.ST_TYPE(s.Info), v, vdsoVersion)
			}
			delete(want, s.Name)
		}
	}
	for name := range want {
		t.Errorf("symbol %s missing", name)
	}

	// Every function exported is exported by the host kernel's vDSO too, with the same
	// version and binding (the host's may have more, e.g. getrandom).
	host := vdsoSymbols(t, hostVDSO(t))
	for name, bind := range vdsoSymbols(t, img) {
		if hb, ok := host[name]; !ok || hb != bind {
			t.Errorf("%s (%v): the host's vDSO has it %v, %v", name, bind, ok, hb)
		}
	}
}

// clockReport is what testdata/clockprog.c prints.
type clockReport struct {
	clocks    [8]time.Duration
	tod, time time.Duration
	back      string
	syscall   time.Duration
}

func parseClockReport(t *testing.T, out string) clockReport {
	t.Helper()
	dur := func(s string) time.Duration {
		sec, frac, _ := strings.Cut(s, ".")
		n, err := strconv.ParseInt(sec, 10, 64)
		if err != nil {
			t.Fatalf("bad time %q in %q", s, out)
		}
		d := time.Duration(n) * time.Second
		if frac != "" {
			f, err := strconv.ParseInt((frac + "000000000")[:9], 10, 64)
			if err != nil {
				t.Fatalf("bad time %q", s)
			}
			d += time.Duration(f)
		}
		return d
	}
	var r clockReport
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 3 && f[0] == "clock":
			i, _ := strconv.Atoi(f[1])
			r.clocks[i] = dur(f[2])
		case len(f) == 2 && f[0] == "gettimeofday":
			r.tod = dur(f[1])
		case len(f) == 2 && f[0] == "time":
			r.time = dur(f[1])
		case len(f) == 2 && f[0] == "syscall":
			r.syscall = dur(f[1])
		case f[0] == "backwards":
			r.back = sc.Text()
		default:
			t.Fatalf("unexpected line %q", sc.Text())
		}
	}
	return r
}

// hostClocks reads the host's clocks 0..7.
func hostClocks() (c [8]time.Duration) {
	for clk := range c {
		var ts unix.Timespec
		unix.ClockGettime(int32(clk), &ts)
		c[clk] = time.Duration(ts.Nano())
	}
	return c
}

// buildClockProg compiles testdata/clockprog.c with gcc, static and dynamically linked,
// into an image (/bin/clockprog-static, /bin/clockprog-dynamic with the C library).
func buildClockProg(t *testing.T) *image.Image {
	t.Helper()
	if v, ok := imageOnce.Load("clockprog"); ok {
		return v.(*image.Image)
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("skipping: gcc is not installed (make deps installs gcc and libc6-dev)")
	}
	dir := t.TempDir()
	var files []image.FileSpec
	for _, link := range []string{"static", "dynamic"} {
		bin := filepath.Join(dir, "clockprog-"+link)
		args := []string{"-O2", "-o", bin, "testdata/clockprog.c"}
		if link == "static" {
			args = append([]string{"-static"}, args...)
		}
		if out, err := exec.Command(gcc, args...).CombinedOutput(); err != nil {
			t.Skipf("skipping: gcc %s: %v\n%s (make deps installs libc6-dev)", link, err, out)
		}
		files = append(files, image.FileSpec{HostPath: bin, GuestPath: "/bin/clockprog-" + link})
	}
	// /usr/bin/true brings the C library and ld.so the dynamic build needs.
	return buildImage(t, "clockprog", image.BuildConfig{Programs: []string{"/usr/bin/true"}, Files: files})
}

// TestVDSOClocks runs a C program, static and dynamically linked (through ld.so), and a
// Go program, with and without the vDSO. With it, every clock the vDSO serves reads the
// host's time within the run, CLOCK_MONOTONIC never goes backwards over 200,000 reads,
// and only the CPU-time clocks and the explicit system call reach the VMM; without it,
// the same program reads the same clocks through system calls.
func TestVDSOClocks(t *testing.T) {
	sys := requireKVM(t)
	im := buildClockProg(t)
	usable, why := sys.GuestTSC()
	if !usable {
		t.Logf("this host's TSC cannot serve as a guest clock (%s): only the system-call path is checked", why)
	}
	pool, err := NewPool(PoolConfig{KVM: sys})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for _, prog := range []string{"/bin/clockprog-static", "/bin/clockprog-dynamic"} {
		for _, c := range []struct {
			noVDSO bool
			pool   *Pool // a VM made ahead of need, with its TSC read then
		}{{false, nil}, {true, nil}, {false, pool}} {
			noVDSO := c.noVDSO
			t.Run(fmt.Sprintf("%s noVDSO=%v pooled=%v", filepath.Base(prog), noVDSO, c.pool != nil), func(t *testing.T) {
				n := "200000"
				if noVDSO || !usable {
					n = "20" // each read is a VM exit
				}
				var stdout, stderr bytes.Buffer
				before := hostClocks()
				res, err := Run(context.Background(), Config{KVM: sys, Image: im, Program: prog, Args: []string{prog, n},
					Stdout: &stdout, Stderr: &stderr, Timeout: time.Minute, NoVDSO: noVDSO, Pool: c.pool})
				after := hostClocks()
				if err != nil {
					t.Fatal(err)
				}
				if res.ExitCode != 0 {
					t.Fatalf("exit %d (%s): %s", res.ExitCode, res.Reason, &stderr)
				}
				r := parseClockReport(t, stdout.String())
				guestClock := usable && !noVDSO
				if res.Stats.GuestClock != guestClock {
					t.Errorf("Stats.GuestClock %v, want %v", res.Stats.GuestClock, guestClock)
				}
				for _, clk := range vdsoClocks {
					lo, hi := before[clk], after[clk]
					if clk == unix.CLOCK_REALTIME_COARSE || clk == unix.CLOCK_MONOTONIC_COARSE {
						hi += 20 * time.Millisecond // the host's coarse clocks lag by up to a tick
					}
					if r.clocks[clk] < lo || r.clocks[clk] > hi {
						t.Errorf("clock %d read %v in the guest, outside the host's %v..%v", clk, r.clocks[clk], lo, hi)
					}
				}
				realLo, realHi := before[unix.CLOCK_REALTIME], after[unix.CLOCK_REALTIME]
				for name, v := range map[string]time.Duration{"gettimeofday": r.tod, "syscall": r.syscall} {
					if v < realLo.Truncate(time.Microsecond) || v > realHi {
						t.Errorf("%s read %v, outside the host's %v..%v", name, v, realLo, realHi)
					}
				}
				if r.time < realLo.Truncate(time.Second) || r.time > realHi {
					t.Errorf("time read %v, outside the host's %v..%v", r.time, realLo, realHi)
				}
				if want := "backwards 0 of " + n; r.back != want {
					t.Errorf("%q, want %q", r.back, want)
				}
				reads := res.Stats.Syscalls["clock_gettime"]
				if guestClock {
					// The two CPU-time clocks and the explicit system call.
					if reads != 3 || res.Stats.Syscalls["gettimeofday"] != 0 || res.Stats.Syscalls["time"] != 0 {
						t.Errorf("with the vDSO the VMM served clock_gettime %d times (want 3), gettimeofday %d, time %d",
							reads, res.Stats.Syscalls["gettimeofday"], res.Stats.Syscalls["time"])
					}
				} else if reads < 8+20 {
					t.Errorf("without the vDSO the VMM served clock_gettime %d times, want every read", reads)
				}
			})
		}
	}
}

// TestVDSOGoProgram: the Go runtime finds the vDSO and reads the time without a system
// call; the program's output stays what the host computes.
func TestVDSOGoProgram(t *testing.T) {
	sys := requireKVM(t)
	if ok, why := sys.GuestTSC(); !ok {
		t.Skipf("skipping: no guest clock on this host: %s", why)
	}
	im := buildGoProg(t)
	data := bytes.Repeat([]byte("isolator"), 4096)
	in := filepath.Join(t.TempDir(), "data.bin")
	os.WriteFile(in, data, 0o644)
	want, _ := goprogWant(t, data)
	out, stderr, res := runGuest(t, sys, im, []Input{{Name: "data.bin", HostPath: in}}, nil, "/bin/goprog", "/input/data.bin")
	if res.ExitCode != 0 || out != want {
		t.Fatalf("exit %d (%s), output %q, want %q; stderr %s", res.ExitCode, res.Reason, out, want, stderr)
	}
	if !res.Stats.GuestClock || res.Stats.Syscalls["clock_gettime"] != 0 {
		t.Errorf("GuestClock %v, clock_gettime system calls %d: the Go runtime did not use the vDSO",
			res.Stats.GuestClock, res.Stats.Syscalls["clock_gettime"])
	}
}

// TestFreshReading: a Pool's TSC reading serves only while it is younger than
// maxReadingAge; an older one, or none, is taken again at start.
func TestFreshReading(t *testing.T) {
	r := &kvmhv.TSCReading{Monotonic: 10 * time.Second}
	for _, c := range []struct {
		r    *kvmhv.TSCReading
		now  time.Duration
		keep bool
	}{
		{nil, 10 * time.Second, false},
		{r, 10 * time.Second, true},
		{r, 10*time.Second + maxReadingAge, true},
		{r, 10*time.Second + maxReadingAge + 1, false},
		{r, 8 * time.Hour, false},
	} {
		if got := freshReading(c.r, c.now); (got != nil) != c.keep {
			t.Errorf("freshReading(%v, %v) = %v, want kept %v", c.r, c.now, got, c.keep)
		}
	}
}

// TestVDSOMult checks the fixed-point factor against exact arithmetic for common TSC
// frequencies and long intervals.
func TestVDSOMult(t *testing.T) {
	for _, khz := range []uint64{1_000_000, 2_600_000, 2_899_999, 3_700_123, 5_000_000} {
		mult := vvarMultOf(khz)
		for _, ticks := range []uint64{1, 1e6, 1e12, 1e15} {
			// ns = ticks * mult >> 32, as the vDSO computes it, against ticks * 1e6 / khz.
			got := new(big.Int).Rsh(new(big.Int).Mul(new(big.Int).SetUint64(ticks), new(big.Int).SetUint64(mult)), 32)
			exact := new(big.Int).Quo(new(big.Int).Mul(new(big.Int).SetUint64(ticks), big.NewInt(1e6)), new(big.Int).SetUint64(khz))
			diff := new(big.Int).Sub(exact, got)
			// Truncating mult loses under one part in 2^32 of ns, plus the final truncation.
			limit := new(big.Int).Add(new(big.Int).Rsh(exact, 31), big.NewInt(1))
			if diff.Sign() < 0 || diff.Cmp(limit) > 0 {
				t.Errorf("%d kHz, %d ticks: %v ns, exact %v", khz, ticks, got, exact)
			}
		}
	}
}
