package microvm

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/image"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// FuzzSyscall drives fuzz-chosen system calls through the real dispatch path.
//
// Each input is a sequence of up to fzMaxCalls system calls (number and six arguments) and
// the contents of a guest scratch region. Per input the harness creates a fresh micro VM
// whose program (fzCode) loads the registers of each call from a read-only table at
// fzTable, executes `syscall`, and stores RAX at fzResults; then it calls exit_group(0). So
// every call arrives exactly as from a real program, through (*thread).syscall and
// (*thread).dispatch on a real vCPU thread, with pointers into guest memory the fuzzer
// filled (fzScratch) and into strings the harness put there (fzStrings: host paths of a
// canary file, escapes through /proc/self/root and "..", scratch paths). An encoded call
// is a uint16 number (with the top bit set, an index into the calls dispatch serves) and
// six arguments of a tag byte and a uint64 (tagRaw, tagScratch, tagInt, tagString). The
// guest's stdin yields a line, then blocks in the host reader for ever.
//
// Every input must leave the VMM sound: no panic; Run returns within fzRunBound although
// calls may block (the VM's Timeout ends them); every result is a value or -errno with a
// known errno, and obeys the call's contract where that is simple to state (a read returns
// at most count bytes, a sleep longer than the VM's life never completes, ...); after Close
// no goroutine of the VM is left, no host descriptor is leaked, no file appeared in the
// host temp directories, and the host files around the input (a canary with a secret,
// whose atime shows any read) are untouched and their secret never reaches the guest.
//
// The VM's Timeout is short (fzTimeout) because inputs that block until it are common
// (sleeps, waits, reads of empty pipes) and would otherwise dominate the fuzzing time.
func FuzzSyscall(f *testing.F) {
	h := newFuzzHarness(f)
	// A private temp directory, which must stay empty: the VMM is to leave no file behind.
	// (The shared one sees other processes, such as other fuzz workers building images.)
	h.tmpDir = f.TempDir()
	f.Setenv("TMPDIR", h.tmpDir)
	for _, s := range fuzzSeeds() {
		f.Add(s.calls.encode(), s.mem)
	}
	f.Fuzz(func(t *testing.T, calls, mem []byte) {
		h.run(t, calls, mem)
	})
}

// Guest layout of the harness.
const (
	fzTable       = 0x0800_0000 // read-only: count, then fzMaxCalls entries of nr + 6 args
	fzResults     = 0x0801_0000 // per call: RAX, RAX^fzCheck
	fzScratch     = 0x0900_0000 // fuzz bytes
	fzScratchSize = 64 << 10
	fzStrings     = fzScratch + fzScratchSize // harness strings, fzStrSlot bytes apart
	fzStringsSize = 8 << 10
	fzStrSlot     = 256
	fzRegion      = fzScratchSize + fzStringsSize // mapped read-write at fzScratch; unmapped after
	fzMaxCalls    = 8
	fzCallBytes   = 2 + 6*9 // encoded call: nr (uint16) and six tagged arguments
	fzCheck       = 0x5ca1ab1e_0ddba11

	fzTimeout  = 300 * time.Millisecond // the VM's wall-clock limit: ends blocked calls
	fzRunBound = 10 * time.Second       // Run must return within this
)

// Argument tags: how an encoded argument becomes a register value.
const (
	tagRaw     = 0 // the 64-bit value
	tagScratch = 1 // fzScratch + value mod (fzRegion + a page): a pointer into (or just past) the region
	tagInt     = 2 // the low 32 bits sign-extended: descriptors, flags, small counts
	tagString  = 3 // pointer to harness string number value mod fzNumStrings
)

// Harness strings: fixed slots in the fzStrings page.
const (
	strCanary        = iota // host path of the canary file
	strCanaryDir            // host directory holding the input and the canary
	strProcRoot             // /proc/self/root + canary
	strDotDot               // ../../../..  + canary
	strHostInput            // host path of the input file
	strInput                // /input/x
	strEtcDotDot            // /etc/../input/x
	strTmpA                 // /tmp/a
	strWorkB                // /work/b
	strEscape               // /etc/escape: image symlink to ../../../../../../etc/shadow
	strTmpLnk               // /tmp/lnk
	strEtcPasswd            // /etc/passwd (the image's)
	strProcFD3              // /proc/self/fd/3
	strProcMaps             // /proc/self/maps
	strTmp                  // /tmp
	strOutput               // /output/o
	strRoot                 // /
	strDevZero              // /dev/zero
	strProcExe              // /proc/self/exe
	strEmpty                // ""
	strTmpD                 // /tmp/d
	strTmpDF                // /tmp/d/f
	strDot                  // .
	strProcRootInput        // /proc/self/root/../../.. + host input path
	strCanaryParent         // parent of strCanaryDir
	strAbsLink              // /etc/abs: image symlink to /proc/self/root/etc/passwd
	strDevStdin             // /dev/stdin
	strProcFD               // /proc/self/fd
	strInputDir             // /input
	strHostPasswd           // /etc/passwd again, through /input/..
	fzNumStrings
)

// fzCode is the guest program. RBX walks the call table, R13 the results, R12 counts.
var fzCode = join(
	[]byte{0x48, 0xbb}, le64(fzTable), // mov rbx, fzTable
	[]byte{0x49, 0xbd}, le64(fzResults), // mov r13, fzResults
	[]byte{0x4c, 0x8b, 0x23},       // mov r12, [rbx]
	[]byte{0x48, 0x83, 0xc3, 0x08}, // add rbx, 8
	[]byte{0x4d, 0x85, 0xe4},       // test r12, r12
	[]byte{0x74, 0x3f},             // jz done
	// loop:
	[]byte{0x48, 0x8b, 0x03},          // mov rax, [rbx]
	[]byte{0x48, 0x8b, 0x7b, 0x08},    // mov rdi, [rbx+8]
	[]byte{0x48, 0x8b, 0x73, 0x10},    // mov rsi, [rbx+16]
	[]byte{0x48, 0x8b, 0x53, 0x18},    // mov rdx, [rbx+24]
	[]byte{0x4c, 0x8b, 0x53, 0x20},    // mov r10, [rbx+32]
	[]byte{0x4c, 0x8b, 0x43, 0x28},    // mov r8, [rbx+40]
	[]byte{0x4c, 0x8b, 0x4b, 0x30},    // mov r9, [rbx+48]
	[]byte{0x0f, 0x05},                // syscall
	[]byte{0x49, 0x89, 0x45, 0x00},    // mov [r13], rax
	[]byte{0x49, 0xbe}, le64(fzCheck), // mov r14, fzCheck
	[]byte{0x49, 0x31, 0xc6},       // xor r14, rax
	[]byte{0x4d, 0x89, 0x75, 0x08}, // mov [r13+8], r14
	[]byte{0x48, 0x83, 0xc3, 0x38}, // add rbx, 56
	[]byte{0x49, 0x83, 0xc5, 0x10}, // add r13, 16
	[]byte{0x49, 0xff, 0xcc},       // dec r12
	[]byte{0x75, 0xc1},             // jnz loop
	// done:
	movEAXImm(unix.SYS_EXIT_GROUP), // mov eax, 231
	[]byte{0x31, 0xff},             // xor edi, edi
	codeSyscall,
	[]byte{0x0f, 0x0b}, // ud2
)

func le64(v uint64) []byte { b := make([]byte, 8); binary.LittleEndian.PutUint64(b, v); return b }

// fzArg is one encoded argument.
type fzArg struct {
	tag byte
	v   uint64
}

func raw(v uint64) fzArg   { return fzArg{tagRaw, v} }
func num(v int64) fzArg    { return fzArg{tagInt, uint64(v)} }
func ptr(off uint64) fzArg { return fzArg{tagScratch, off} }
func str(i int) fzArg      { return fzArg{tagString, uint64(i)} }

// value is the register value of a.
func (a fzArg) value() uint64 {
	switch a.tag % 8 {
	case tagScratch:
		return fzScratch + a.v%(fzRegion+pageSize)
	case tagInt:
		return uint64(int64(int32(a.v)))
	case tagString:
		return fzStrings + a.v%fzNumStrings*fzStrSlot
	}
	return a.v
}

// fzCall is one encoded system call.
type fzCall struct {
	nr   uint16
	args []fzArg // up to 6; missing ones are 0
}

func call(nr uint64, args ...fzArg) fzCall { return fzCall{nr: uint16(nr), args: args} }

type fzCalls []fzCall

func (cs fzCalls) encode() []byte {
	var b []byte
	for _, c := range cs {
		b = binary.LittleEndian.AppendUint16(b, c.nr)
		for i := range 6 {
			var a fzArg
			if i < len(c.args) {
				a = c.args[i]
			}
			b = append(b, a.tag)
			b = binary.LittleEndian.AppendUint64(b, a.v)
		}
	}
	return b
}

// fzServed lists the system calls dispatch serves, read from its source: an encoded
// number with the top bit set picks one of them (so that random numbers are mostly calls
// that do something, not ENOSYS); below that, it is the number itself.
var fzServed = sync.OnceValue(func() []uint64 {
	byName := map[string]uint64{}
	for nr, name := range syscallNames {
		if name != "" {
			byName[name] = uint64(nr)
		}
	}
	f, err := parser.ParseFile(token.NewFileSet(), "syscalls.go", nil, 0)
	if err != nil {
		panic(err)
	}
	var nrs []uint64
	ast.Inspect(f, func(n ast.Node) bool {
		if fn, ok := n.(*ast.FuncDecl); ok && fn.Name.Name != "dispatch" {
			return false
		}
		if sel, ok := n.(*ast.SelectorExpr); ok && strings.HasPrefix(sel.Sel.Name, "SYS_") {
			if nr, ok := byName[strings.ToLower(strings.TrimPrefix(sel.Sel.Name, "SYS_"))]; ok && !slices.Contains(nrs, nr) {
				nrs = append(nrs, nr)
			}
		}
		return true
	})
	if len(nrs) < 100 {
		panic(fmt.Sprintf("found only %d served system calls in syscalls.go", len(nrs)))
	}
	return nrs
})

// decodeCalls turns fuzz bytes into at most fzMaxCalls register sets.
func decodeCalls(b []byte) [][7]uint64 {
	var out [][7]uint64
	for len(b) >= fzCallBytes && len(out) < fzMaxCalls {
		var r [7]uint64
		r[0] = uint64(binary.LittleEndian.Uint16(b))
		if r[0]&0x8000 != 0 {
			served := fzServed()
			r[0] = served[(r[0]&0x7fff)%uint64(len(served))]
		}
		for i := range 6 {
			p := b[2+9*i:]
			r[1+i] = fzArg{p[0], binary.LittleEndian.Uint64(p[1:])}.value()
		}
		out = append(out, r)
		b = b[fzCallBytes:]
	}
	return out
}

// fileSnap is what must not change about a host file: its stat.
type fileSnap struct {
	ino, size, nlink   uint64
	mode               uint32
	mtime, ctime, atim unix.Timespec
}

func snapFile(path string, withAtime bool) (fileSnap, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fileSnap{}, err
	}
	s := fileSnap{ino: st.Ino, size: uint64(st.Size), nlink: st.Nlink, mode: st.Mode, mtime: st.Mtim, ctime: st.Ctim}
	if withAtime {
		s.atim = st.Atim
	}
	return s, nil
}

type fuzzHarness struct {
	sys        *kvmhv.System
	im         *image.Image
	dir        string // host directory of the input and the canary
	input      string
	canary     string
	secret     []byte
	inputData  []byte
	strs       []byte // the fzStrings page
	atimeWorks bool   // reads update atime here (relatime with atime before mtime)

	canarySnap, inputSnap fileSnap
	dirSnap               []string
	tmpDir                string        // TMPDIR of the VMM, checked to stay empty if set
	timeout               time.Duration // the VMs' Timeout; fzTimeout if zero
}

func newFuzzHarness(f testing.TB) *fuzzHarness {
	sys := requireKVM(f)
	h := &fuzzHarness{sys: sys, dir: f.TempDir()}
	host := f.TempDir()
	prog := filepath.Join(host, "prog")
	etc := filepath.Join(host, "etc")
	must := func(err error) {
		f.Helper()
		if err != nil {
			f.Fatal(err)
		}
	}
	must(os.WriteFile(prog, tinyELF(fzCode), 0o755))
	must(os.Mkdir(etc, 0o755))
	must(os.WriteFile(filepath.Join(etc, "passwd"), []byte("guest:x:1000:1000::/work:/bin/sh\n"), 0o644))
	must(os.Symlink("../../../../../../etc/shadow", filepath.Join(etc, "escape")))
	must(os.Symlink("/proc/self/root/etc/passwd", filepath.Join(etc, "abs")))
	h.im = buildImage(f, "fuzzsyscall", image.BuildConfig{Files: []image.FileSpec{
		{HostPath: prog, GuestPath: "/prog"}, {HostPath: etc, GuestPath: "/etc"}}})

	h.input = filepath.Join(h.dir, "x")
	h.canary = filepath.Join(h.dir, "canary")
	h.inputData = []byte("input file contents\nsecond line\n")
	h.secret = fmt.Appendf(nil, "canary-secret-%d-%d", os.Getpid(), time.Now().UnixNano())
	must(os.WriteFile(h.input, h.inputData, 0o444))
	must(os.WriteFile(h.canary, h.secret, 0o644))
	// An atime before the mtime is updated by any read under relatime (and strictatime).
	// Check that the file system does so on a probe, without reading the canary itself.
	old := time.Unix(1_000_000_000, 0)
	probe := filepath.Join(host, "probe")
	must(os.WriteFile(probe, []byte("probe"), 0o644))
	must(os.Chtimes(probe, old, time.Now()))
	must(os.Chtimes(h.canary, old, time.Now()))
	if _, err := os.ReadFile(probe); err != nil {
		f.Fatal(err)
	}
	if st, err := os.Stat(probe); err == nil {
		h.atimeWorks = st.Sys().(*syscall.Stat_t).Atim.Sec != old.Unix()
	}
	if !h.atimeWorks {
		f.Logf("reads do not update atime here: the canary's stat is checked without its atime")
	}

	strs := make([]string, fzNumStrings)
	strs[strCanary] = h.canary
	strs[strCanaryDir] = h.dir
	strs[strProcRoot] = "/proc/self/root" + h.canary
	strs[strDotDot] = strings.Repeat("../", 12) + h.canary[1:]
	strs[strHostInput] = h.input
	strs[strInput] = "/input/x"
	strs[strEtcDotDot] = "/etc/../input/x"
	strs[strTmpA] = "/tmp/a"
	strs[strWorkB] = "/work/b"
	strs[strEscape] = "/etc/escape"
	strs[strTmpLnk] = "/tmp/lnk"
	strs[strEtcPasswd] = "/etc/passwd"
	strs[strProcFD3] = "/proc/self/fd/3"
	strs[strProcMaps] = "/proc/self/maps"
	strs[strTmp] = "/tmp"
	strs[strOutput] = "/output/o"
	strs[strRoot] = "/"
	strs[strDevZero] = "/dev/zero"
	strs[strProcExe] = "/proc/self/exe"
	strs[strEmpty] = ""
	strs[strTmpD] = "/tmp/d"
	strs[strTmpDF] = "/tmp/d/f"
	strs[strDot] = "."
	strs[strProcRootInput] = "/proc/self/root/../../.." + h.input
	strs[strCanaryParent] = filepath.Dir(h.dir)
	strs[strAbsLink] = "/etc/abs"
	strs[strDevStdin] = "/dev/stdin"
	strs[strProcFD] = "/proc/self/fd"
	strs[strInputDir] = "/input"
	strs[strHostPasswd] = "/input/../etc/passwd"
	h.strs = make([]byte, fzStringsSize)
	// The last bytes of the mapped region hold no NUL: a string there runs into unmapped memory.
	copy(h.strs[fzStringsSize-fzStrSlot:], bytes.Repeat([]byte{'A'}, fzStrSlot))
	for i, s := range strs {
		if len(s) >= fzStrSlot {
			f.Fatalf("harness string %q is too long", s)
		}
		copy(h.strs[i*fzStrSlot:], s)
	}

	var err error
	if h.canarySnap, err = snapFile(h.canary, h.atimeWorks); err != nil {
		f.Fatal(err)
	}
	if h.inputSnap, err = snapFile(h.input, false); err != nil {
		f.Fatal(err)
	}
	if h.dirSnap, err = listDir(h.dir); err != nil {
		f.Fatal(err)
	}
	// Warm up what the process creates once (the runtime's poller, the image's mapping), so
	// that the per-input checks compare like with like.
	h.runOne(f, fzCalls{call(unix.SYS_OPENAT, num(unix.AT_FDCWD), str(strInput), num(unix.O_RDONLY)),
		call(unix.SYS_READ, num(3), ptr(0), num(64))}.encode(), nil)
	return h
}

func listDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// fzStdin is what the guest's stdin yields before it blocks: stdin is a host reader
// that blocks until the harness frees it after the VM is closed, like a terminal or a
// pipe whose writer stays open.
const fzStdin = "stdin line\n"

type blockingStdin struct {
	data    []byte
	release chan struct{}
	once    sync.Once
}

func (b *blockingStdin) Read(p []byte) (int, error) {
	if len(b.data) > 0 {
		n := copy(p, b.data)
		b.data = b.data[n:]
		return n, nil
	}
	<-b.release
	return 0, io.EOF
}

func (b *blockingStdin) free() { b.once.Do(func() { close(b.release) }) }

// secretScan reports whether anything written to it contained the secret.
type secretScan struct {
	mu     sync.Mutex
	secret []byte
	tail   []byte
	found  bool
	n      int64
}

func (s *secretScan) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n += int64(len(p))
	buf := append(s.tail, p...)
	if bytes.Contains(buf, s.secret) {
		s.found = true
	}
	s.tail = append([]byte(nil), buf[max(0, len(buf)-len(s.secret)+1):]...)
	return len(p), nil
}

// fzOutcome is what one input did, for the checks.
type fzOutcome struct {
	regs     [][7]uint64
	res      *Result
	results  []byte // fzResults page after the run (nil if unreadable)
	table    []byte // fzTable page after the run (nil if unreadable)
	region   []byte // fzScratch region after the run (nil if unreadable)
	initial  []byte // fzScratch region as written
	elapsed  time.Duration
	allocs   uint64
	stdout   *secretScan
	stderr   *secretScan
	tableOK  bool // the call table is as written: the args the VMM saw are the encoded ones
	executed uint64
}

func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// runOne runs one input in a fresh VM and returns what happened; it fails tb on harness
// errors and on a Run that does not return in time.
func (h *fuzzHarness) runOne(tb testing.TB, calls, mem []byte) *fzOutcome {
	tb.Helper()
	o := &fzOutcome{regs: decodeCalls(calls)}
	o.stdout = &secretScan{secret: h.secret}
	o.stderr = &secretScan{secret: h.secret}
	allocs0 := heapAllocs()
	stdin := &blockingStdin{data: []byte(fzStdin), release: make(chan struct{})}
	defer stdin.free()
	vm, err := New(Config{KVM: h.sys, Image: h.im, Program: "/prog", Inputs: []Input{{Name: "x", HostPath: h.input}},
		Memory: 16 << 20, ScratchBytes: 1 << 20, Timeout: cmp.Or(h.timeout, fzTimeout), MaxVCPUs: 4,
		Stdin: stdin, Stdout: o.stdout, Stderr: o.stderr})
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	defer vm.Close()
	table := make([]byte, pageSize)
	binary.LittleEndian.PutUint64(table, uint64(len(o.regs)))
	for i, r := range o.regs {
		for j, v := range r {
			binary.LittleEndian.PutUint64(table[8+56*i+8*j:], v)
		}
	}
	o.initial = make([]byte, fzRegion)
	copy(o.initial, mem[:min(len(mem), fzScratchSize)])
	copy(o.initial[fzScratchSize:], h.strs)
	for _, step := range []error{
		vm.mm.mapAnon(fzTable, pageSize, kvmhv.ProtRead),
		vm.hv.Poke(table, fzTable),
		vm.mm.mapAnon(fzResults, pageSize, kvmhv.ProtRead|kvmhv.ProtWrite),
		vm.mm.mapAnon(fzScratch, fzRegion, kvmhv.ProtRead|kvmhv.ProtWrite),
		vm.hv.Poke(o.initial, fzScratch),
	} {
		if step != nil {
			tb.Fatalf("set up guest memory: %v", step)
		}
	}
	type runResult struct {
		res *Result
		err error
	}
	done := make(chan runResult, 1)
	start := time.Now()
	go func() {
		res, err := vm.Run(context.Background())
		done <- runResult{res, err}
	}()
	select {
	case r := <-done:
		o.elapsed = time.Since(start)
		if r.err != nil {
			tb.Fatalf("Run: %v", r.err)
		}
		o.res = r.res
	case <-time.After(fzRunBound):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		tb.Fatalf("Run did not return within %v (VM timeout %v) for calls %s\ngoroutines:\n%s", fzRunBound, fzTimeout, fmtCalls(o.regs), buf)
	}
	read := func(addr uint64, n int) []byte {
		b := make([]byte, n)
		if _, err := vm.hv.ReadAt(b, addr); err != nil {
			return nil
		}
		return b
	}
	o.results = read(fzResults, pageSize)
	o.table = read(fzTable, pageSize)
	o.region = read(fzScratch, fzRegion)
	o.tableOK = bytes.Equal(o.table, table)
	o.executed = o.res.Stats.SyscallCount + o.res.Stats.DeniedCount
	if err := vm.Close(); err != nil {
		tb.Errorf("Close: %v", err)
	}
	stdin.free() // only now: the VM must not have waited for its stdin
	o.allocs = heapAllocs() - allocs0
	return o
}

func fmtCalls(regs [][7]uint64) string {
	var b strings.Builder
	for _, r := range regs {
		fmt.Fprintf(&b, "\n\t%s(%#x, %#x, %#x, %#x, %#x, %#x)", syscallName(r[0]), r[1], r[2], r[3], r[4], r[5], r[6])
	}
	return b.String()
}

func (h *fuzzHarness) run(t *testing.T, calls, mem []byte) {
	if len(calls) < fzCallBytes {
		return
	}
	fds0, err := fzCountFDs()
	if err != nil {
		t.Fatal(err)
	}
	g0 := runtime.NumGoroutine()
	o := h.runOne(t, calls, mem)
	desc := fmtCalls(o.regs)
	if strings.HasPrefix(o.res.Reason, "vCPU failed") {
		t.Errorf("the VMM failed to run the vCPU: %s; calls:%s", o.res.Reason, desc)
	}
	h.checkResults(t, o, desc)

	// Host memory: the VMM may buffer at most a few tens of MiB per call it serves.
	if bound := 64<<20*(o.executed+1) + 64<<20; o.allocs > bound {
		t.Errorf("serving %d calls allocated %d MiB on the host heap (bound %d MiB); calls:%s", o.executed, o.allocs>>20, bound>>20, desc)
	}
	// The canary's secret never reaches the guest.
	if o.stdout.found || o.stderr.found || bytes.Contains(o.region, h.secret) || bytes.Contains(o.results, h.secret) {
		t.Errorf("the host canary's contents reached the guest; calls:%s", desc)
	}
	for _, out := range o.res.Outputs {
		if bytes.Contains(out.Data, h.secret) {
			t.Errorf("the host canary's contents reached output %s; calls:%s", out.Name, desc)
		}
	}
	// Nothing left behind.
	if leaked := waitVMGoroutines(g0); leaked != "" {
		t.Errorf("goroutines left after Close; calls:%s\n%s", desc, leaked)
	}
	if fds, err := fzCountFDs(); err != nil || fds != fds0 {
		t.Errorf("%d host descriptors after Close, %d before (%v); calls:%s", fds, fds0, err, desc)
	}
	h.checkHost(t, desc)
}

// checkHost checks that the host files next to the input are untouched.
func (h *fuzzHarness) checkHost(t *testing.T, desc string) {
	t.Helper()
	for _, c := range []struct {
		path  string
		want  fileSnap
		atime bool
	}{{h.canary, h.canarySnap, h.atimeWorks}, {h.input, h.inputSnap, false}} {
		// Only stat: reading the file would change its atime. Any write changes mtime and
		// ctime, any read the atime (atimeWorks), a rename or unlink the directory.
		got, err := snapFile(c.path, c.atime)
		if err != nil || got != c.want {
			t.Fatalf("host file %s changed: %+v (%v), was %+v; calls:%s", c.path, got, err, c.want, desc)
		}
	}
	if names, err := listDir(h.dir); err != nil || !slices.Equal(names, h.dirSnap) {
		t.Fatalf("host directory %s holds %v (%v), held %v; calls:%s", h.dir, names, err, h.dirSnap, desc)
	}
	if h.tmpDir != "" {
		if names, err := listDir(h.tmpDir); err != nil || len(names) != 0 {
			t.Errorf("the temp directory %s holds %v (%v); calls:%s", h.tmpDir, names, err, desc)
		}
	}
}

// waitVMGoroutines waits for the goroutine count to return to g0 and for no goroutine to
// run VMM code; it returns the stacks of those left after a grace period.
func waitVMGoroutines(g0 int) string {
	deadline := time.Now().Add(2 * time.Second)
	for {
		left := vmGoroutines()
		if left == "" && runtime.NumGoroutine() <= g0 {
			return ""
		}
		if time.Now().After(deadline) {
			if left == "" {
				left = fmt.Sprintf("%d goroutines, %d before", runtime.NumGoroutine(), g0)
			}
			return left
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// vmGoroutines returns the stacks of goroutines other than the caller's that are in
// package microvm or kvmhv.
func vmGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "FuzzSyscall") || strings.Contains(g, "(*fuzzHarness)") {
			continue
		}
		if strings.Contains(g, "pkg/microvm.") || strings.Contains(g, "pkg/kvmhv.") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

func fzCountFDs() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	return len(ents), err
}

// maxErrno is the largest errno Linux returns to programs (EHWPOISON).
const maxErrno = 133

// checkResults checks each stored result: a value, or -errno with a known errno, and the
// call's contract where it is simple to state.
func (h *fuzzHarness) checkResults(t *testing.T, o *fzOutcome, desc string) {
	t.Helper()
	if o.results == nil {
		return // the guest unmapped or protected its results page
	}
	for i, r := range o.regs {
		res := binary.LittleEndian.Uint64(o.results[16*i:])
		if binary.LittleEndian.Uint64(o.results[16*i+8:]) != res^fzCheck {
			continue // not stored (the program ended first) or overwritten by a call
		}
		nr, a := r[0], r[1:]
		name := syscallName(nr)
		if v := int64(res); v < 0 && (v < -4095 || -v > maxErrno) {
			t.Errorf("call %d: %s returned %#x: neither a value nor -errno; calls:%s", i, name, res, desc)
			continue
		}
		if !o.tableOK {
			continue // the arguments may not be the ones encoded
		}
		if msg := h.contract(o, nr, a, res); msg != "" {
			t.Errorf("call %d: %s(%#x, %#x, %#x, %#x, %#x, %#x) returned %#x: %s; calls:%s", i, name, a[0], a[1], a[2], a[3], a[4], a[5], res, msg, desc)
		}
	}
}

// contract returns what is wrong with the result res of call nr, or "".
func (h *fuzzHarness) contract(o *fzOutcome, nr uint64, a []uint64, res uint64) string {
	atMost := func(n uint64) string {
		if res > n {
			return fmt.Sprintf("more than the %d bytes asked for", n)
		}
		return ""
	}
	isFD := func() string {
		if res >= maxFDs {
			return "not a descriptor below RLIMIT_NOFILE"
		}
		return ""
	}
	// never reports a call that waited longer than the VM lives: it was ended by the VM's
	// timeout, so it cannot have completed.
	never := func(wait time.Duration) string {
		if wait > fzTimeout+time.Second {
			return fmt.Sprintf("completed a wait of %v in a VM that lives %v", wait, fzTimeout)
		}
		return ""
	}
	if int64(res) < 0 {
		// Errors: only a timeout can break a contract.
		if nr == unix.SYS_FUTEX && res == errnoResult(unix.ETIMEDOUT) && a[3] != 0 {
			cmd := a[1] &^ (futexPrivateFlag | futexClockRealtime)
			if d, ok := o.timespec(a[3]); ok && cmd == futexWait {
				return never(d)
			} else if ok && cmd == futexWaitBitset {
				clk := unix.CLOCK_MONOTONIC
				if a[1]&futexClockRealtime != 0 {
					clk = unix.CLOCK_REALTIME
				}
				return never(absWait(clk, d))
			}
		}
		return ""
	}
	switch nr {
	case unix.SYS_READ, unix.SYS_WRITE, unix.SYS_PREAD64, unix.SYS_PWRITE64, unix.SYS_GETDENTS64, unix.SYS_READLINK:
		return atMost(a[2])
	case unix.SYS_READLINKAT:
		return atMost(a[3])
	case unix.SYS_GETRANDOM, unix.SYS_GETCWD:
		return atMost(a[1])
	case unix.SYS_SENDFILE:
		return atMost(a[3])
	case unix.SYS_MMAP, unix.SYS_MREMAP, unix.SYS_BRK:
		if res%pageSize != 0 && nr != unix.SYS_BRK || res >= kvmhv.UserLimit {
			return "not a page-aligned user address"
		}
		if nr == unix.SYS_MMAP && int32(a[3])&unix.MAP_FIXED != 0 && res != a[0] {
			return "not the fixed address asked for"
		}
	case unix.SYS_LSEEK:
		if int32(a[2]) == unix.SEEK_SET && res != a[1] {
			return "not the offset asked for"
		}
	case unix.SYS_POLL, unix.SYS_PPOLL:
		if res > a[1] {
			return "more ready descriptors than were polled"
		}
	case unix.SYS_EPOLL_WAIT, unix.SYS_EPOLL_PWAIT:
		if res > uint64(int32(a[2])) {
			return "more events than maxevents"
		}
	case unix.SYS_SCHED_GETAFFINITY:
		return atMost(a[1])
	case unix.SYS_CLONE:
		if res != 0 && (res <= guestPID || res > 1<<22) { // 0 is the child
			return "not a thread ID"
		}
	case unix.SYS_OPEN, unix.SYS_OPENAT, unix.SYS_CREAT, unix.SYS_DUP, unix.SYS_EVENTFD,
		unix.SYS_EVENTFD2, unix.SYS_EPOLL_CREATE, unix.SYS_EPOLL_CREATE1:
		return isFD()
	case unix.SYS_DUP2, unix.SYS_DUP3:
		if res != uint64(uint32(a[1])) {
			return "not the descriptor asked for"
		}
	case unix.SYS_FCNTL:
		if a[1] == unix.F_DUPFD || a[1] == unix.F_DUPFD_CLOEXEC {
			return isFD()
		}
	case unix.SYS_NANOSLEEP:
		if d, ok := o.timespec(a[0]); ok {
			return never(d)
		}
	case unix.SYS_CLOCK_NANOSLEEP:
		if d, ok := o.timespec(a[2]); ok {
			if a[1]&unix.TIMER_ABSTIME != 0 {
				d = absWait(int(a[0]), d)
			}
			return never(d)
		}
	}
	// A zero result of a wait is its timeout.
	switch {
	case nr == unix.SYS_PPOLL && res == 0:
		if d, ok := o.timespec(a[2]); ok {
			return never(d)
		}
	case nr == unix.SYS_POLL && res == 0 && int32(a[2]) > 0:
		return never(time.Duration(int32(a[2])) * time.Millisecond)
	case (nr == unix.SYS_EPOLL_WAIT || nr == unix.SYS_EPOLL_PWAIT) && res == 0 && int32(a[3]) > 0:
		return never(time.Duration(int32(a[3])) * time.Millisecond)
	}
	return ""
}

// timespec returns the duration of the struct timespec at addr as it was written, if addr
// is in the scratch region and the struct is unchanged after the run, saturating.
func (o *fzOutcome) timespec(addr uint64) (time.Duration, bool) {
	if addr < fzScratch || addr+16 > fzScratch+fzRegion || addr+16 < addr {
		return 0, false
	}
	off := addr - fzScratch
	if o.region == nil || !bytes.Equal(o.region[off:off+16], o.initial[off:off+16]) {
		return 0, false
	}
	sec := int64(binary.LittleEndian.Uint64(o.initial[off:]))
	nsec := int64(binary.LittleEndian.Uint64(o.initial[off+8:]))
	if sec < 0 || nsec < 0 || nsec >= 1e9 {
		return 0, false
	}
	if sec >= int64(maxDuration/time.Second) {
		return maxDuration, true
	}
	return time.Duration(sec)*time.Second + time.Duration(nsec), true
}

const maxDuration = time.Duration(1<<63 - 1)

// absWait converts an absolute time (as a duration since the clock's epoch) into how long
// from now it is.
func absWait(clk int, at time.Duration) time.Duration {
	var now time.Duration
	if clk == unix.CLOCK_REALTIME {
		now = time.Duration(time.Now().UnixNano())
	} else {
		now = monotonicNow()
	}
	return at - now
}

// fzMem builds the contents of the scratch region for a seed.
type fzMem []byte

// at returns the guest address of scratch offset off.
func at(off uint64) uint64 { return fzScratch + off }

// put stores little-endian words at off.
func (m *fzMem) put(off int, words ...uint64) *fzMem {
	for i, w := range words {
		m.bytes(off+8*i, le64(w))
	}
	return m
}

func (m *fzMem) bytes(off int, b []byte) *fzMem {
	if n := off + len(b); n > len(*m) {
		*m = append(*m, make([]byte, n-len(*m))...)
	}
	copy((*m)[off:], b)
	return m
}

type fzSeed struct {
	calls fzCalls
	mem   []byte
}

// fuzzSeeds are realistic and hostile call sequences. Descriptors are predictable: 0-2 are
// stdio and each new one takes the lowest free number, so the first opened is 3.
func fuzzSeeds() []fzSeed {
	const (
		cwd  = unix.AT_FDCWD
		rw   = unix.PROT_READ | unix.PROT_WRITE
		anon = unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
	)
	threadClone := uint64(threadFlags)
	huge := uint64(1<<63 - 1)
	var seeds []fzSeed
	add := func(m *fzMem, calls ...fzCall) {
		var b []byte
		if m != nil {
			b = *m
		}
		seeds = append(seeds, fzSeed{calls, b})
	}
	mem := func() *fzMem { return &fzMem{} }
	// Two iovecs at 0x100: 8 bytes at 0x2000 and 8 at 0x2100.
	iov2 := func() *fzMem { return mem().put(0x100, at(0x2000), 8, at(0x2100), 8) }

	// Reading the input through a path with "..", every read flavour.
	add(iov2(),
		call(unix.SYS_OPENAT, num(cwd), str(strEtcDotDot), num(unix.O_RDONLY)),
		call(unix.SYS_READ, num(3), ptr(0x1000), num(100)),
		call(unix.SYS_PREAD64, num(3), ptr(0x1000), num(4), num(2)),
		call(unix.SYS_READV, num(3), ptr(0x100), num(2)),
		call(unix.SYS_PREADV, num(3), ptr(0x100), num(2), num(1)),
		call(unix.SYS_LSEEK, num(3), num(0), num(unix.SEEK_END)),
		call(unix.SYS_FSTAT, num(3), ptr(0x3000)),
		call(unix.SYS_CLOSE, num(3)))
	// Host paths and escapes: all must stay inside the guest namespace.
	add(nil,
		call(unix.SYS_OPENAT, num(cwd), str(strProcRoot), num(unix.O_RDONLY)),
		call(unix.SYS_OPENAT, num(cwd), str(strDotDot), num(unix.O_RDONLY)),
		call(unix.SYS_OPENAT, num(cwd), str(strCanary), num(unix.O_RDONLY)),
		call(unix.SYS_OPENAT, num(cwd), str(strEscape), num(unix.O_RDONLY)),
		call(unix.SYS_OPENAT, num(cwd), str(strAbsLink), num(unix.O_RDWR)),
		call(unix.SYS_NEWFSTATAT, num(cwd), str(strHostInput), ptr(0x1000), num(0)),
		call(unix.SYS_OPENAT, num(cwd), str(strProcRootInput), num(unix.O_RDONLY)),
		call(unix.SYS_STATX, num(cwd), str(strCanaryDir), num(0), num(unix.STATX_ALL), ptr(0x1000)))
	// Symlinks planted by the guest pointing at host paths.
	add(nil,
		call(unix.SYS_SYMLINKAT, str(strCanary), num(cwd), str(strTmpLnk)),
		call(unix.SYS_OPENAT, num(cwd), str(strTmpLnk), num(unix.O_RDONLY)),
		call(unix.SYS_READLINKAT, num(cwd), str(strTmpLnk), ptr(0x1000), num(4096)),
		call(unix.SYS_SYMLINK, str(strDotDot), str(strTmpA)),
		call(unix.SYS_OPEN, str(strTmpA), num(unix.O_RDWR|unix.O_CREAT), num(0o644)),
		call(unix.SYS_LINKAT, num(cwd), str(strTmpLnk), num(cwd), str(strWorkB), num(unix.AT_SYMLINK_FOLLOW)),
		call(unix.SYS_OPEN, str(strWorkB), num(unix.O_RDONLY)),
		call(unix.SYS_UNLINKAT, num(cwd), str(strTmpLnk), num(0)))
	// The canary's host path created, written, renamed and removed inside the guest.
	add(nil,
		call(unix.SYS_MKDIR, str(strCanaryParent), num(0o755)),
		call(unix.SYS_MKDIR, str(strCanaryDir), num(0o755)),
		call(unix.SYS_OPENAT, num(cwd), str(strCanary), num(unix.O_CREAT|unix.O_WRONLY|unix.O_TRUNC), num(0o644)),
		call(unix.SYS_WRITE, num(3), str(strCanary), num(32)),
		call(unix.SYS_RENAMEAT, num(cwd), str(strCanary), num(cwd), str(strTmpA)),
		call(unix.SYS_RENAME, str(strHostInput), str(strTmpA)),
		call(unix.SYS_UNLINK, str(strCanary)),
		call(unix.SYS_RMDIR, str(strCanaryDir)))
	// Scratch files in /tmp and /work: positional writes, the scratch limit, renames.
	add(mem().put(0x100, at(0x1000), 100, at(0x2000), 200),
		call(unix.SYS_MKDIR, str(strTmpD), num(0o700)),
		call(unix.SYS_OPENAT, num(cwd), str(strTmpDF), num(unix.O_CREAT|unix.O_RDWR), num(0o600)),
		call(unix.SYS_PWRITEV, num(3), ptr(0x100), num(2), num(4096)),
		call(unix.SYS_WRITE, num(3), ptr(0), num(1<<20)),
		call(unix.SYS_FTRUNCATE, num(3), raw(1<<40)),
		call(unix.SYS_RENAME, str(strTmpDF), str(strWorkB)),
		call(unix.SYS_UNLINK, str(strWorkB)),
		call(unix.SYS_RMDIR, str(strTmpD)))
	// Pipes: non-blocking reads, vectored reads, sendfile.
	add(iov2(),
		call(unix.SYS_PIPE2, ptr(0x800), num(unix.O_NONBLOCK)),
		call(unix.SYS_WRITE, num(4), ptr(0x1000), num(8)),
		call(unix.SYS_READV, num(3), ptr(0x100), num(2)),
		call(unix.SYS_READ, num(3), ptr(0x2000), num(8)),
		call(unix.SYS_WRITE, num(4), ptr(0x1000), num(100)),
		call(unix.SYS_SENDFILE, num(1), num(3), num(0), num(1<<24)),
		call(unix.SYS_CLOSE, num(4)),
		call(unix.SYS_READ, num(3), ptr(0x2000), num(8)))
	// A blocking read of an empty pipe: the VM's timeout ends it.
	add(nil,
		call(unix.SYS_PIPE2, ptr(0x800), num(0)),
		call(unix.SYS_READ, num(3), ptr(0x1000), num(8)))
	// A vectored read of a blocking pipe holding exactly the first iovec's worth.
	add(iov2(),
		call(unix.SYS_PIPE2, ptr(0x800), num(0)),
		call(unix.SYS_WRITE, num(4), ptr(0x1000), num(8)),
		call(unix.SYS_READV, num(3), ptr(0x100), num(2)),
		call(unix.SYS_GETPID))
	// sendfile from a pipe into itself.
	add(nil,
		call(unix.SYS_PIPE2, ptr(0x800), num(unix.O_NONBLOCK)),
		call(unix.SYS_WRITE, num(4), ptr(0x1000), num(1)),
		call(unix.SYS_SENDFILE, num(4), num(3), num(0), num(1<<24)))
	// Anonymous memory: map, protect the scratch region, remap, unmap, brk.
	add(nil,
		call(unix.SYS_MMAP, num(0), num(8192), num(rw), num(anon), num(-1), num(0)),
		call(unix.SYS_MPROTECT, raw(fzScratch), num(4096), num(unix.PROT_READ)),
		call(unix.SYS_WRITE, num(1), ptr(0), num(16)),
		call(unix.SYS_GETRANDOM, ptr(0), num(16), num(0)),
		call(unix.SYS_MREMAP, raw(at(0x4000)), num(4096), num(8192), num(unix.MREMAP_MAYMOVE)),
		call(unix.SYS_MUNMAP, raw(at(0x8000)), num(4096)),
		call(unix.SYS_BRK, num(0)),
		call(unix.SYS_BRK, raw(1<<46)))
	// File mappings and hostile mappings.
	add(nil,
		call(unix.SYS_OPENAT, num(cwd), str(strInput), num(unix.O_RDONLY)),
		call(unix.SYS_MMAP, num(0), num(4096), num(unix.PROT_READ), num(unix.MAP_PRIVATE), num(3), num(0)),
		call(unix.SYS_MMAP, num(0), raw(1<<40), num(rw), num(anon), num(-1), num(0)),
		call(unix.SYS_MMAP, raw(fzScratch), num(4096), num(rw), num(anon|unix.MAP_FIXED_NOREPLACE), num(-1), num(0)),
		call(unix.SYS_MADVISE, raw(fzScratch), num(fzScratchSize), num(unix.MADV_DONTNEED)),
		call(unix.SYS_MMAP, raw(fzTable), num(4096), num(rw), num(anon|unix.MAP_FIXED), num(-1), num(0)),
		call(unix.SYS_MUNMAP, raw(0xffff_ffff_ffff_f000), num(0x2000)),
		call(unix.SYS_MPROTECT, raw(0xffff_ffff_ffff_f000), num(0x2000), num(unix.PROT_READ)))
	// Threads: clone with the flags pthread uses, with process flags, with unknown flags.
	add(nil,
		call(unix.SYS_CLONE, raw(threadClone|unix.CLONE_SYSVSEM|unix.CLONE_SETTLS|unix.CLONE_PARENT_SETTID|unix.CLONE_CHILD_CLEARTID),
			num(0), ptr(0x800), ptr(0x810), ptr(0x900)),
		call(unix.SYS_CLONE, num(0x11), num(0)),
		call(unix.SYS_CLONE, raw(threadClone|unix.CLONE_NEWNS), num(0)),
		call(unix.SYS_CLONE, raw(threadClone|unix.CLONE_CHILD_SETTID), raw(0xdead_beef_0000), num(0), raw(0x10)),
		call(unix.SYS_GETTID),
		call(unix.SYS_FUTEX, ptr(0x810), num(futexWake), num(1)),
		call(unix.SYS_EXIT, num(0)))
	// Futexes that return at once.
	add(mem().put(0x500, 0, 1000, 1, 0),
		call(unix.SYS_FUTEX, ptr(0x400), num(futexWake|futexPrivateFlag), num(1)),
		call(unix.SYS_FUTEX, ptr(0x400), num(futexWait|futexPrivateFlag), num(1), num(0)),
		call(unix.SYS_FUTEX, ptr(0x400), num(futexWait), num(0), ptr(0x500)),
		call(unix.SYS_FUTEX, ptr(0x401), num(futexWait), num(0), num(0)),
		call(unix.SYS_FUTEX, ptr(0x400), num(futexWaitBitset), num(0), ptr(0x500), num(0), num(0)),
		call(unix.SYS_FUTEX, ptr(0x400), num(futexCmpRequeue), num(1), num(1), ptr(0x404), num(0)),
		call(unix.SYS_FUTEX, ptr(0x400), num(99)),
		call(unix.SYS_FUTEX, ptr(0x400), num(futexWaitBitset|futexClockRealtime), num(0), ptr(0x510), num(0), num(-1)))
	// Futex waits that outlive the VM: without and with a huge timeout.
	add(nil, call(unix.SYS_FUTEX, ptr(0x400), num(futexWait|futexPrivateFlag), num(0), num(0)))
	add(mem().put(0x500, 1<<62, 0), call(unix.SYS_FUTEX, ptr(0x400), num(futexWait), num(0), ptr(0x500)))
	add(mem().put(0x500, huge, 999_999_999),
		call(unix.SYS_FUTEX, ptr(0x400), num(futexWaitBitset), num(0), ptr(0x500), num(0), num(-1)))
	// epoll over an eventfd.
	add(mem().put(0x600, unix.EPOLLIN|0x1234_0000_0000, 0),
		call(unix.SYS_EPOLL_CREATE1, num(0)),
		call(unix.SYS_EVENTFD2, num(1), num(unix.EFD_NONBLOCK)),
		call(unix.SYS_EPOLL_CTL, num(3), num(unix.EPOLL_CTL_ADD), num(4), ptr(0x600)),
		call(unix.SYS_EPOLL_PWAIT, num(3), ptr(0x700), num(8), num(0), num(0), num(8)),
		call(unix.SYS_EPOLL_CTL, num(3), num(unix.EPOLL_CTL_MOD), num(4), ptr(0x600)),
		call(unix.SYS_EPOLL_CTL, num(3), num(unix.EPOLL_CTL_DEL), num(4), num(0)),
		call(unix.SYS_EPOLL_CTL, num(3), num(unix.EPOLL_CTL_ADD), num(3), ptr(0x600)),
		call(unix.SYS_EPOLL_WAIT, num(3), ptr(0x700), num(8), num(20)))
	add(nil, call(unix.SYS_EPOLL_CREATE1, num(0)), call(unix.SYS_EPOLL_PWAIT, num(3), ptr(0x700), num(1), num(-1), num(0), num(8)))
	add(nil, call(unix.SYS_EPOLL_CREATE, num(1)), call(unix.SYS_EPOLL_WAIT, num(3), ptr(0x700), num(1), num(1<<31-1)))
	// ppoll and poll over stdio, a bad descriptor and a negative one.
	pollfds := func() *fzMem {
		m := mem()
		for i, p := range [][2]uint64{{0, unix.POLLIN}, {1, unix.POLLOUT}, {99, unix.POLLIN}, {0xffff_ffff, 0}} {
			m.put(0x600+8*i, p[0]|p[1]<<32)
		}
		return m.put(0x500, 0, 0, 0, 1_000_000, 0, 1_000_000_000)
	}
	add(pollfds(),
		call(unix.SYS_PPOLL, ptr(0x600), num(4), ptr(0x500), num(0), num(8)),
		call(unix.SYS_POLL, ptr(0x600), num(4), num(0)),
		call(unix.SYS_PPOLL, ptr(0x600), raw(1<<20), num(0)),
		call(unix.SYS_PPOLL, ptr(0x600), num(0), ptr(0x510)),
		call(unix.SYS_PPOLL, num(0), num(0), ptr(0x520)),
		call(unix.SYS_POLL, ptr(0x608), num(2), num(-1)))
	add(nil, call(unix.SYS_PPOLL, num(0), num(0), num(0)))
	// sec*1000 wraps to -616 ms: +700 ms of nsec made an 84 ms wait of 584 million years.
	add(mem().put(0x500, 18446744073709551, 700_000_000), call(unix.SYS_PPOLL, num(0), num(0), ptr(0x500)))
	// Signal dispositions, masks and signals to itself.
	add(mem().put(0x600, 0x400000, 0x04000004, 0x400000, 0).put(0x800, 1<<9|1<<14).put(0x900, at(0x1000), 0, 8192),
		call(unix.SYS_RT_SIGACTION, num(int64(unix.SIGUSR1)), ptr(0x600), ptr(0x700), num(8)),
		call(unix.SYS_RT_SIGACTION, num(int64(unix.SIGKILL)), ptr(0x600), num(0), num(8)),
		call(unix.SYS_RT_SIGACTION, num(int64(unix.SIGUSR1)), ptr(0x600), num(0), num(16)),
		call(unix.SYS_RT_SIGACTION, num(65), num(0), ptr(0x700), num(8)),
		call(unix.SYS_RT_SIGPROCMASK, num(unix.SIG_BLOCK), ptr(0x800), ptr(0x808), num(8)),
		call(unix.SYS_SIGALTSTACK, ptr(0x900), ptr(0x920)),
		call(unix.SYS_KILL, num(1), num(int64(unix.SIGUSR1))),
		call(unix.SYS_TGKILL, num(1), num(1), num(int64(unix.SIGURG))))
	add(nil, call(unix.SYS_TGKILL, num(1), num(2), num(9)), call(unix.SYS_KILL, num(0), num(int64(unix.SIGTERM))), call(unix.SYS_GETPID))
	// Resource limits.
	add(mem().put(0x610, 10, 10),
		call(unix.SYS_PRLIMIT64, num(0), num(unix.RLIMIT_NOFILE), num(0), ptr(0x600)),
		call(unix.SYS_PRLIMIT64, num(0), num(99), num(0), ptr(0x600)),
		call(unix.SYS_PRLIMIT64, num(0), num(unix.RLIMIT_STACK), ptr(0x610), ptr(0x620)),
		call(unix.SYS_PRLIMIT64, num(2), num(unix.RLIMIT_AS), num(0), ptr(0x600)),
		call(unix.SYS_PRLIMIT64, num(0), num(-1), num(0), ptr(0x600)),
		call(unix.SYS_GETRLIMIT, num(unix.RLIMIT_AS), ptr(0x600)),
		call(unix.SYS_SETRLIMIT, num(unix.RLIMIT_AS), ptr(0x610)),
		call(unix.SYS_GETRUSAGE, num(0), ptr(0x1000)))
	// Directory listings of the image, /proc/self/fd and a pipe.
	add(nil,
		call(unix.SYS_OPENAT, num(cwd), str(strRoot), num(unix.O_RDONLY|unix.O_DIRECTORY)),
		call(unix.SYS_GETDENTS64, num(3), ptr(0x1000), num(4096)),
		call(unix.SYS_GETDENTS64, num(3), ptr(0x1000), num(1)),
		call(unix.SYS_OPENAT, num(cwd), str(strProcFD), num(unix.O_RDONLY|unix.O_DIRECTORY)),
		call(unix.SYS_GETDENTS64, num(4), ptr(0x1000), num(0x10000)),
		call(unix.SYS_GETDENTS64, num(1), ptr(0x1000), num(4096)),
		call(unix.SYS_LSEEK, num(3), num(0), num(unix.SEEK_SET)),
		call(unix.SYS_GETDENTS64, num(3), ptr(fzRegion-16), num(4096)))
	// statx and stat flavours.
	add(nil,
		call(unix.SYS_STATX, num(cwd), str(strInput), num(0), num(unix.STATX_ALL), ptr(0x1000)),
		call(unix.SYS_STATX, num(1), str(strEmpty), num(unix.AT_EMPTY_PATH), num(-1), ptr(0x1000)),
		call(unix.SYS_STATX, num(cwd), str(strEmpty), num(unix.AT_EMPTY_PATH), num(0), ptr(0x1000)),
		call(unix.SYS_STATX, num(cwd), str(strEscape), num(unix.AT_SYMLINK_NOFOLLOW), num(0), ptr(0x1000)),
		call(unix.SYS_NEWFSTATAT, num(cwd), str(strDevZero), ptr(0x1000), num(0x1234)),
		call(unix.SYS_STAT, str(strProcExe), ptr(0x1000)),
		call(unix.SYS_LSTAT, str(strAbsLink), ptr(0x1000)),
		call(unix.SYS_STATX, num(cwd), ptr(fzRegion-100), num(0), num(0), ptr(0x1000)))
	// ioctl and fcntl on stdio.
	add(mem().put(0x600, 1),
		call(unix.SYS_IOCTL, num(1), num(unix.TCGETS), ptr(0x1000)),
		call(unix.SYS_IOCTL, num(0), num(fionbio), ptr(0x600)),
		call(unix.SYS_IOCTL, num(1), num(fioclex), num(0)),
		call(unix.SYS_FCNTL, num(1), num(unix.F_GETFL)),
		call(unix.SYS_FCNTL, num(1), num(unix.F_SETFL), num(unix.O_NONBLOCK|unix.O_APPEND)),
		call(unix.SYS_FCNTL, num(0), num(unix.F_DUPFD), num(10)),
		call(unix.SYS_FCNTL, num(0), num(unix.F_GETLK), ptr(0x700)),
		call(unix.SYS_FCNTL, num(99), num(unix.F_GETFD)))
	// dup family at and past the descriptor limit.
	add(nil,
		call(unix.SYS_DUP3, num(1), num(5), num(unix.O_CLOEXEC)),
		call(unix.SYS_DUP3, num(1), num(1), num(0)),
		call(unix.SYS_DUP2, num(1), num(1023)),
		call(unix.SYS_DUP2, num(1), num(1024)),
		call(unix.SYS_DUP2, num(1), raw(^uint64(0))),
		call(unix.SYS_DUP3, num(2), raw(1<<63), num(0)),
		call(unix.SYS_CLOSE_RANGE, num(3), raw(^uint64(0)), num(0)),
		call(unix.SYS_FCNTL, num(1), num(unix.F_DUPFD), raw(1<<31)))
	// getrandom of every size.
	add(nil,
		call(unix.SYS_GETRANDOM, ptr(0x1000), raw(1<<40), num(0)),
		call(unix.SYS_GETRANDOM, ptr(0x1000), num(64), num(0)),
		call(unix.SYS_GETRANDOM, ptr(0x1000), num(64), num(0xff)),
		call(unix.SYS_GETRANDOM, num(0), num(1<<20), num(0)),
		call(unix.SYS_GETRANDOM, ptr(0), num(0), num(unix.GRND_NONBLOCK)),
		call(unix.SYS_GETRANDOM, ptr(fzRegion-8), num(64), num(0)))
	// Sleeps: negative, out-of-range, short, absolute in the past.
	add(mem().put(0x500, ^uint64(0), 0, 0, 1_000_000_000, 0, 1000, 0, 0),
		call(unix.SYS_NANOSLEEP, ptr(0x500), num(0)),
		call(unix.SYS_NANOSLEEP, ptr(0x510), num(0)),
		call(unix.SYS_NANOSLEEP, ptr(0x520), num(0)),
		call(unix.SYS_CLOCK_NANOSLEEP, num(unix.CLOCK_MONOTONIC), num(unix.TIMER_ABSTIME), ptr(0x530)),
		call(unix.SYS_CLOCK_NANOSLEEP, num(unix.CLOCK_REALTIME), num(unix.TIMER_ABSTIME), ptr(0x530)),
		call(unix.SYS_CLOCK_NANOSLEEP, num(99), num(0), ptr(0x520)),
		call(unix.SYS_NANOSLEEP, num(0), num(0)))
	// Sleeps that outlive the VM.
	add(mem().put(0x500, huge, 999_999_999), call(unix.SYS_NANOSLEEP, ptr(0x500), ptr(0x600)))
	add(mem().put(0x500, 1<<62, 0), call(unix.SYS_CLOCK_NANOSLEEP, num(unix.CLOCK_MONOTONIC), num(unix.TIMER_ABSTIME), ptr(0x500)))
	// Vectored writes: a huge iovec, too many iovecs, iovecs aliasing the same memory.
	iovs := mem().put(0x100, at(0x1000), 1<<30)
	for i := range 64 {
		iovs.put(0x200+16*i, at(0), fzScratchSize)
	}
	add(iovs,
		call(unix.SYS_WRITEV, num(1), ptr(0x100), num(1)),
		call(unix.SYS_WRITEV, num(1), ptr(0x200), num(1025)),
		call(unix.SYS_WRITEV, num(1), ptr(0x200), num(64)),
		call(unix.SYS_OPENAT, num(cwd), str(strOutput), num(unix.O_CREAT|unix.O_WRONLY), num(0o644)),
		call(unix.SYS_PWRITEV, num(3), ptr(0x200), num(64), num(0)),
		call(unix.SYS_WRITEV, num(3), ptr(0x200), num(16)))
	// Ending the program in the middle of the sequence.
	add(nil, call(unix.SYS_GETPID), call(unix.SYS_EXIT, num(3)), call(unix.SYS_GETPID))
	add(nil, call(unix.SYS_EXIT_GROUP, num(7)), call(unix.SYS_GETPID))
	add(nil, call(unix.SYS_RT_SIGRETURN), call(unix.SYS_GETPID))
	// FS base.
	add(nil,
		call(unix.SYS_ARCH_PRCTL, num(archSetFS), ptr(0)),
		call(unix.SYS_ARCH_PRCTL, num(archGetFS), ptr(0x600)),
		call(unix.SYS_ARCH_PRCTL, num(archSetFS), raw(1<<47)),
		call(unix.SYS_ARCH_PRCTL, num(0x9999), num(0)),
		call(unix.SYS_ARCH_PRCTL, num(archGetFS), raw(0xffff_8000_0000_0000)))
	// Working directory.
	add(nil,
		call(unix.SYS_CHDIR, str(strTmp)),
		call(unix.SYS_GETCWD, ptr(0x1000), num(4096)),
		call(unix.SYS_OPENAT, num(cwd), str(strDot), num(unix.O_RDONLY|unix.O_DIRECTORY)),
		call(unix.SYS_CHDIR, str(strInput)),
		call(unix.SYS_FCHDIR, num(3)),
		call(unix.SYS_GETCWD, ptr(0x1000), num(1)),
		call(unix.SYS_CHDIR, str(strCanaryDir)),
		call(unix.SYS_OPENAT, num(3), str(strDotDot), num(unix.O_RDONLY)))
	// Links, truncation, times and modes on the read-only input and the image.
	add(mem().put(0x600, 1, 0, 0, unix.UTIME_OMIT),
		call(unix.SYS_LINK, str(strInput), str(strTmpA)),
		call(unix.SYS_TRUNCATE, str(strInput), num(0)),
		call(unix.SYS_UTIMENSAT, num(cwd), str(strInput), ptr(0x600), num(0)),
		call(unix.SYS_FCHMODAT, num(cwd), str(strInput), num(0o777)),
		call(unix.SYS_FACCESSAT2, num(cwd), str(strInput), num(unix.W_OK), num(0)),
		call(unix.SYS_CHMOD, str(strEtcPasswd), num(0o777)),
		call(unix.SYS_CREAT, str(strInput), num(0o644)),
		call(unix.SYS_OPENAT, num(cwd), str(strInput), num(unix.O_ACCMODE)))
	// Refused and unknown calls.
	add(nil,
		call(999),
		call(unix.SYS_SOCKET, num(unix.AF_INET), num(unix.SOCK_STREAM), num(0)),
		call(unix.SYS_FORK),
		call(unix.SYS_EXECVE, str(strProcExe), num(0), num(0)),
		call(unix.SYS_CLONE3, ptr(0), num(88)),
		call(unix.SYS_IO_URING_SETUP, num(8), ptr(0)),
		call(unix.SYS_PTRACE, num(0)),
		call(0xffff))
	// Identity and system information.
	add(nil,
		call(unix.SYS_SYSINFO, ptr(0x1000)),
		call(unix.SYS_UNAME, ptr(0x1000)),
		call(unix.SYS_PRCTL, num(unix.PR_GET_NAME), ptr(0x1000)),
		call(unix.SYS_PRCTL, num(unix.PR_SET_NAME), ptr(0x1000)),
		call(unix.SYS_SCHED_GETAFFINITY, num(0), num(128), ptr(0x1000)),
		call(unix.SYS_GETRESUID, ptr(0x1000), ptr(0x1004), raw(0x10)),
		call(unix.SYS_CLOCK_GETTIME, num(unix.CLOCK_PROCESS_CPUTIME_ID), ptr(0x1000)),
		call(unix.SYS_CLOCK_GETRES, num(unix.CLOCK_MONOTONIC), num(0)))
	// Synthetic /proc and /dev.
	add(nil,
		call(unix.SYS_READLINK, str(strProcExe), ptr(0x1000), num(4096)),
		call(unix.SYS_OPEN, str(strProcMaps), num(unix.O_RDONLY)),
		call(unix.SYS_READ, num(3), ptr(0x1000), num(4096)),
		call(unix.SYS_READLINK, str(strProcFD3), ptr(0x1000), num(100)),
		call(unix.SYS_OPEN, str(strProcFD3), num(unix.O_RDONLY)),
		call(unix.SYS_OPEN, str(strDevStdin), num(unix.O_RDONLY)),
		call(unix.SYS_READ, num(5), ptr(0x1000), num(100)),
		call(unix.SYS_SENDFILE, num(1), num(3), ptr(0x800), num(100)))
	// Paths that run off the end of mapped memory, or past PATH_MAX.
	add(mem().bytes(0, bytes.Repeat([]byte("a/"), 2600)),
		call(unix.SYS_OPENAT, num(cwd), ptr(fzRegion-100), num(unix.O_RDONLY)),
		call(unix.SYS_OPENAT, num(cwd), ptr(0), num(unix.O_RDONLY)),
		call(unix.SYS_MKDIR, ptr(fzRegion+pageSize-1), num(0o755)),
		call(unix.SYS_OPENAT, num(cwd), ptr(5000), num(unix.O_RDONLY)))
	// eventfd counters at their limits.
	add(mem().put(0x600, ^uint64(0)-1, 1),
		call(unix.SYS_EVENTFD2, num(0), num(unix.EFD_NONBLOCK|unix.EFD_SEMAPHORE)),
		call(unix.SYS_WRITE, num(3), ptr(0x600), num(8)),
		call(unix.SYS_WRITE, num(3), ptr(0x608), num(8)),
		call(unix.SYS_READ, num(3), ptr(0x700), num(8)),
		call(unix.SYS_READ, num(3), ptr(0x700), num(4)),
		call(unix.SYS_EVENTFD2, num(0), num(0xffff)))
	// stdin: what the host gives, then a read that blocks in the host reader.
	add(mem().put(0x600, unix.POLLIN<<32),
		call(unix.SYS_PPOLL, ptr(0x600), num(1), num(0)),
		call(unix.SYS_READ, num(0), ptr(0x700), num(4)),
		call(unix.SYS_READ, num(0), ptr(0x700), num(100)),
		call(unix.SYS_FCNTL, num(0), num(unix.F_SETFL), num(unix.O_NONBLOCK)),
		call(unix.SYS_READ, num(0), ptr(0x700), num(100)),
		call(unix.SYS_SENDFILE, num(1), num(0), num(0), num(100)),
		call(unix.SYS_FCNTL, num(0), num(unix.F_SETFL), num(0)),
		call(unix.SYS_READ, num(0), ptr(0x700), num(100)))
	return seeds
}

// TestFuzzSyscallHarness checks the fuzz harness itself: the calls of an input run in
// order with the registers encoded, and their results come back.
func TestFuzzSyscallHarness(t *testing.T) {
	h := newFuzzHarness(t)
	calls := fzCalls{
		call(unix.SYS_GETPID),
		call(unix.SYS_OPENAT, num(unix.AT_FDCWD), str(strEtcDotDot), num(unix.O_RDONLY)),
		call(unix.SYS_READ, num(3), ptr(0x1000), num(100)),
		call(unix.SYS_OPENAT, num(unix.AT_FDCWD), str(strCanary), num(unix.O_RDONLY)),
		call(unix.SYS_CLOSE, num(3)),
		call(unix.SYS_CLOSE, num(3)),
		call(unix.SYS_WRITE, num(1), ptr(0), num(5)),
		call(unix.SYS_GETTID),
	}
	o := h.runOne(t, calls.encode(), []byte("hello"))
	if o.res.ExitCode != 0 || o.res.Reason != "" {
		t.Fatalf("exit %d (%s)", o.res.ExitCode, o.res.Reason)
	}
	want := []uint64{1, 3, uint64(len(h.inputData)), errnoResult(unix.ENOENT), 0, errnoResult(unix.EBADF), 5, 1}
	for i, w := range want {
		got := binary.LittleEndian.Uint64(o.results[16*i:])
		if got != w || binary.LittleEndian.Uint64(o.results[16*i+8:]) != got^fzCheck {
			t.Errorf("call %d (%s): result %#x, want %#x", i, syscallName(o.regs[i][0]), got, w)
		}
	}
	if !bytes.Equal(o.region[0x1000:0x1000+len(h.inputData)], h.inputData) {
		t.Errorf("read stored %q, want the input", o.region[0x1000:0x1000+len(h.inputData)])
	}
	if o.stdout.n != 5 {
		t.Errorf("stdout got %d bytes, want 5", o.stdout.n)
	}
	h.run(t, calls.encode(), []byte("hello"))
}
