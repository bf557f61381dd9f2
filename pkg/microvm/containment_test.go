package microvm

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/image"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// tinyELF returns a static x86-64 ELF executable whose only code is code, loaded at
// 0x400000 read+execute.
func tinyELF(code []byte) []byte {
	const base, hdr = 0x400000, 64 + 56
	b := make([]byte, hdr, hdr+len(code))
	le := binary.LittleEndian
	copy(b, "\x7fELF\x02\x01\x01")
	le.PutUint16(b[16:], etExec)
	le.PutUint16(b[18:], emX8664)
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], base+hdr) // entry
	le.PutUint64(b[32:], 64)       // phoff
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[54:], phdrSize)
	le.PutUint16(b[56:], 1)
	p := b[64:]
	le.PutUint32(p[0:], ptLoad)
	le.PutUint32(p[4:], pfR|pfX)
	le.PutUint64(p[16:], base)
	le.PutUint64(p[24:], base)
	le.PutUint64(p[32:], uint64(hdr+len(code)))
	le.PutUint64(p[40:], uint64(hdr+len(code)))
	le.PutUint64(p[48:], 0x1000)
	return append(b, code...)
}

func le32(v uint32) []byte { b := make([]byte, 4); binary.LittleEndian.PutUint32(b, v); return b }

func join(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// Machine code fragments for the containment programs.
var (
	codeSyscall    = []byte{0x0f, 0x05}
	codeExitNegRAX = join([]byte{0x48, 0xf7, 0xd8, 0x48, 0x89, 0xc7}, movEAXImm(60), codeSyscall) // exit(-rax)
)

// codeMmapAnon maps size bytes of anonymous read-write memory and exits with 0, or with
// the errno when mmap fails.
func codeMmapAnon(size uint32) []byte {
	return join(
		[]byte{0x31, 0xff}, movESIImm(size), movEDXImm(unix.PROT_READ|unix.PROT_WRITE), // addr 0, length, prot
		[]byte{0x41, 0xba}, le32(unix.MAP_PRIVATE|unix.MAP_ANONYMOUS), // mov r10d, flags
		[]byte{0x49, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff, 0x45, 0x31, 0xc9}, // mov r8, -1; xor r9d, r9d
		movEAXImm(unix.SYS_MMAP), codeSyscall,
		[]byte{0x48, 0x85, 0xc0, 0x78, 0x0c},                // test rax, rax; js the error exit (12 bytes on)
		movEDIImm(0), movEAXImm(unix.SYS_EXIT), codeSyscall, // exit(0)
		codeExitNegRAX)
}

func movEAXImm(n uint32) []byte { return append([]byte{0xb8}, le32(n)...) }
func movEDIImm(n uint32) []byte { return append([]byte{0xbf}, le32(n)...) }
func movESIImm(n uint32) []byte { return append([]byte{0xbe}, le32(n)...) }
func movEDXImm(n uint32) []byte { return append([]byte{0xba}, le32(n)...) }

// TestContainment runs misbehaving guest programs, one micro VM each, in this one process:
// each must end exactly as it would on Linux, and the VMM must survive them all without
// leaking goroutines or file descriptors.
func TestContainment(t *testing.T) {
	sys := requireKVM(t)
	baseGoroutines := runtime.NumGoroutine()
	baseFDs := countFDs(t)
	cases := []struct {
		name     string
		code     []byte
		memory   int64
		timeout  time.Duration
		cpu      time.Duration
		exit     int
		signal   int
		timedOut bool
		denied   string
		reason   string        // Result.Reason, when not ""
		maxWall  time.Duration // an upper bound of Stats.Wall, when not 0
	}{
		{name: "unmapped read", code: []byte{0x48, 0x8b, 0x04, 0x25, 0x00, 0x10, 0x00, 0x00}, exit: 139, signal: 11},
		{name: "write to code", code: []byte{0xc6, 0x04, 0x25, 0x00, 0x00, 0x40, 0x00, 0x00}, exit: 139, signal: 11},
		{name: "supervisor read", code: []byte{0x48, 0xa1, 0x00, 0x10, 0x00, 0x00, 0x80, 0xff, 0xff, 0xff}, exit: 139, signal: 11},
		{name: "ud2", code: []byte{0x0f, 0x0b}, exit: 132, signal: 4},
		{name: "hlt", code: []byte{0xf4}, exit: 139, signal: 11},
		{name: "port io", code: []byte{0xe6, 0x42}, exit: 139, signal: 11},
		{name: "int3", code: []byte{0xcc}, exit: 133, signal: 5},
		{name: "divide by zero", code: []byte{0x31, 0xc9, 0xf7, 0xf1}, exit: 136, signal: 8},
		{name: "fall off the code", code: []byte{0x90}, exit: 139, signal: 11},
		{name: "bad pointer in write", code: join(movEDIImm(1), movESIImm(0x1000), movEDXImm(10), movEAXImm(1), codeSyscall, codeExitNegRAX), exit: 14},
		// The cap, not the default budget (256 MiB), refuses 32 MiB; 4 MiB fit under it
		// (the 8 MiB main stack is charged from the start: memory is populated eagerly).
		{name: "over memory cap", memory: 16 << 20, code: codeMmapAnon(32 << 20), exit: 12},
		{name: "under memory cap", memory: 16 << 20, code: codeMmapAnon(4 << 20), exit: 0},
		{name: "no cap but the default", code: codeMmapAnon(32 << 20), exit: 0},
		{name: "fork denied", code: join(movEAXImm(57), codeSyscall, codeExitNegRAX), exit: 38, denied: "fork"},
		// clone as fork calls it (SIGCHLD) and as posix_spawn does (CLONE_VM|CLONE_VFORK|SIGCHLD).
		{name: "process clone denied", code: join(movEDIImm(uint32(unix.SIGCHLD)), []byte{0x31, 0xf6}, movEAXImm(56), codeSyscall, codeExitNegRAX), exit: 38, denied: "clone"},
		{name: "vfork clone denied", code: join(movEDIImm(unix.CLONE_VM|unix.CLONE_VFORK|uint32(unix.SIGCHLD)), []byte{0x31, 0xf6}, movEAXImm(56), codeSyscall, codeExitNegRAX), exit: 38, denied: "clone"},
		{name: "socket refused", code: join(movEDIImm(2), movESIImm(1), movEDXImm(0), movEAXImm(41), codeSyscall, codeExitNegRAX), exit: 13, denied: "socket"},
		{name: "unknown syscall", code: join(movEAXImm(999), codeSyscall, codeExitNegRAX), exit: 38, denied: "syscall_999"},
		{name: "wall clock timeout", code: []byte{0xeb, 0xfe}, timeout: 300 * time.Millisecond, exit: 137, signal: 9, timedOut: true,
			reason: "wall-clock limit 300ms reached"},
		// The wall-clock limit would give the same exit: the reason and the time say which
		// limit acted.
		{name: "cpu limit", code: []byte{0xeb, 0xfe}, timeout: 20 * time.Second, cpu: 200 * time.Millisecond, exit: 137, signal: 9, timedOut: true,
			reason: "CPU time limit 200ms reached", maxWall: 10 * time.Second},
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			prog := filepath.Join(dir, "prog")
			os.Remove(prog)
			if err := os.WriteFile(prog, tinyELF(c.code), 0o755); err != nil {
				t.Fatal(err)
			}
			imgPath := filepath.Join(dir, "prog.img")
			if _, err := image.BuildFile(imgPath, image.BuildConfig{Files: []image.FileSpec{{HostPath: prog, GuestPath: "/prog"}}}); err != nil {
				t.Fatal(err)
			}
			im, err := image.Open(imgPath)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			timeout := c.timeout
			if timeout == 0 {
				timeout = 10 * time.Second
			}
			res, err := Run(t.Context(), Config{KVM: sys, Image: im, Program: "/prog", Memory: c.memory, Timeout: timeout, CPUTime: c.cpu})
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != c.exit || res.Signal != c.signal || res.TimedOut != c.timedOut {
				t.Errorf("exit %d signal %d timed out %v (%s), want exit %d signal %d timed out %v",
					res.ExitCode, res.Signal, res.TimedOut, res.Reason, c.exit, c.signal, c.timedOut)
			}
			if c.reason != "" && res.Reason != c.reason {
				t.Errorf("reason %q, want %q", res.Reason, c.reason)
			}
			if c.maxWall != 0 && res.Stats.Wall > c.maxWall {
				t.Errorf("ended after %v (CPU %v), want well before the wall-clock limit %v", res.Stats.Wall, res.Stats.CPU, timeout)
			}
			if c.denied != "" && (res.Stats.Denied[c.denied] != 1 || res.Stats.Syscalls[c.denied] != 0 || res.Stats.DeniedCount != 1) {
				t.Errorf("denied %v, served %v: want %s counted once, as denied only", res.Stats.Denied, res.Stats.Syscalls, c.denied)
			}
		})
	}
	checkNothingLeft(t, baseGoroutines, baseFDs)
}

// TestFatalExit checks that a fatal exit of a vCPU (a triple fault, a fault inside the
// supervisor, an instruction KVM cannot emulate) ends the program as MICROVM.md says: with
// SIGSEGV, exit status 139 and the reason, whichever thread it happens on, leaving nothing
// behind. A CPL3 program cannot cause one: kvmhv's TestTripleFault does by breaking the
// TSS, which only the VMM can write, and the supervisor takes no fault a user program can
// provoke. So the test injects the exits kvmhv reports for them into the thread loop,
// through VM.exitHook, in place of a system call.
func TestFatalExit(t *testing.T) {
	sys := requireKVM(t)
	prog := filepath.Join(t.TempDir(), "prog")
	// getpid, then exit(0): the fatal exit comes in place of the getpid.
	if err := os.WriteFile(prog, tinyELF(join(movEAXImm(39), codeSyscall, movEDIImm(0), movEAXImm(60), codeSyscall)), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, cfg Config, hook func(kvmhv.Exit) kvmhv.Exit) *Result {
		t.Helper()
		vm, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer vm.Close()
		vm.exitHook = hook
		res, err := vm.Run(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	check := func(t *testing.T, res *Result, reason string) {
		t.Helper()
		if res.ExitCode != 139 || res.Signal != int(unix.SIGSEGV) || res.Reason != "SIGSEGV: "+reason || res.TimedOut || res.Killed {
			t.Errorf("exit %d signal %d reason %q timed out %v killed %v, want exit 139 signal 11 reason %q",
				res.ExitCode, res.Signal, res.Reason, res.TimedOut, res.Killed, "SIGSEGV: "+reason)
		}
		if n := res.Stats.Exits["fatal"]; n != 1 {
			t.Errorf("%d fatal exits counted, want 1: %v", n, res.Stats.Exits)
		}
	}
	im := buildImage(t, "fatal", image.BuildConfig{Files: []image.FileSpec{{HostPath: prog, GuestPath: "/prog"}}})
	threaded := buildTestProg(t, "mmapstress")
	baseGoroutines := runtime.NumGoroutine() // the images stay open, in buildImage's cache
	baseFDs := countFDs(t)
	for _, reason := range []string{"triple fault", "exception 14 in supervisor code at 0xffffff8000001000",
		"exception 13 with supervisor stack at 0x7ffffffde000", "KVM internal error (suberror 1)"} {
		t.Run(reason, func(t *testing.T) {
			res := run(t, Config{KVM: sys, Image: im, Program: "/prog", Timeout: 10 * time.Second}, func(e kvmhv.Exit) kvmhv.Exit {
				if e.Kind == kvmhv.ExitSyscall {
					return kvmhv.Exit{Kind: kvmhv.ExitFatal, Reason: reason}
				}
				return e
			})
			check(t, res, reason)
			if res.Stats.SyscallCount != 0 {
				t.Errorf("system calls served after the fatal exit: %v", res.Stats.Syscalls)
			}
		})
	}
	t.Run("one thread of many", func(t *testing.T) {
		var syscalls atomic.Int64
		res := run(t, Config{KVM: sys, Image: threaded, Program: "/bin/mmapstress", Args: []string{"/bin/mmapstress", "8", "300"},
			Env: []string{"GOMAXPROCS=4"}, Timeout: 60 * time.Second}, func(e kvmhv.Exit) kvmhv.Exit {
			if e.Kind == kvmhv.ExitSyscall && syscalls.Add(1) == 1000 {
				return kvmhv.Exit{Kind: kvmhv.ExitFatal, Reason: "triple fault"}
			}
			return e
		})
		check(t, res, "triple fault")
		if res.Stats.Threads < 2 {
			t.Errorf("the program had %d threads when the fatal exit came, want several", res.Stats.Threads)
		}
	})
	checkNothingLeft(t, baseGoroutines, baseFDs)
}

// checkNothingLeft checks that goroutines and descriptors came back to where they were
// (given by runtime.NumGoroutine and countFDs before), waiting a little for goroutines
// that are on their way out.
func checkNothingLeft(t *testing.T, baseGoroutines, baseFDs int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseGoroutines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > baseGoroutines {
		t.Errorf("%d goroutines left, %d before", g, baseGoroutines)
	}
	if n := countFDs(t); n > baseFDs {
		t.Errorf("%d open descriptors left, %d before", n, baseFDs)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestTeardownReleasesMemory runs micro VMs that each fill 48 MiB of guest memory and checks
// that closing them gives the memory and the mappings back to the host: resident memory
// does not grow with the number of VMs run, and no VM leaves a mapping behind.
func TestTeardownReleasesMemory(t *testing.T) {
	sys := requireKVM(t)
	im := busyboxImage(t)
	const fill = 48 << 20
	run := func() {
		// dd reads /dev/zero into one 48 MiB buffer, which touches every page of it.
		_, stderr, res := runGuest(t, sys, im, nil, nil, "/usr/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=1")
		if res.ExitCode != 0 {
			t.Fatalf("dd: exit %d: %s", res.ExitCode, stderr)
		}
		if res.Stats.PeakMemory < fill {
			t.Fatalf("peak guest memory %d, want at least %d: the run did not fill its buffer", res.Stats.PeakMemory, fill)
		}
	}
	run() // warm up caches and the Go heap
	runtime.GC()
	baseRSS, baseMaps := procMemory(t)
	const runs = 12
	for range runs {
		run()
	}
	runtime.GC()
	rss, maps := procMemory(t)
	t.Logf("resident %d MiB -> %d MiB, mappings %d -> %d over %d runs", baseRSS>>20, rss>>20, baseMaps, maps, runs)
	// Twelve leaked guests would be over 500 MiB; allow one guest's worth for heap growth.
	if rss-baseRSS > fill {
		t.Errorf("resident memory grew by %d MiB over %d runs (from %d MiB)", (rss-baseRSS)>>20, runs, baseRSS>>20)
	}
	if maps > baseMaps+8 {
		t.Errorf("%d mappings after %d runs, %d before", maps, runs, baseMaps)
	}
}

// procMemory returns this process's resident memory in bytes and its number of mappings.
func procMemory(t *testing.T) (rss int64, maps int) {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatalf("VmRSS: %v", err)
			}
			rss = kb << 10
		}
	}
	m, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return rss, strings.Count(string(m), "\n")
}

// TestKill kills running micro VMs with VM.Kill from another goroutine: one spinning in
// user mode, one blocked in a system call (a sleep of an hour), and one with several
// threads spinning. Each must end at once with exit 137, SIGKILL, Killed and the reason
// "killed", and leave no goroutine or descriptor behind.
func TestKill(t *testing.T) {
	sys := requireKVM(t)
	dir := t.TempDir()
	prog := func(name string, code []byte) *image.Image {
		host := filepath.Join(dir, name)
		if err := os.WriteFile(host, tinyELF(code), 0o755); err != nil {
			t.Fatal(err)
		}
		return buildImage(t, "kill-"+name, image.BuildConfig{Files: []image.FileSpec{{HostPath: host, GuestPath: "/prog"}}})
	}
	// nanosleep({3600, 0}): the timespec is pushed on the stack.
	sleep := join([]byte{0x6a, 0x00, 0x68}, le32(3600), []byte{0x48, 0x89, 0xe7, 0x31, 0xf6}, // push 0; push 3600; mov rdi, rsp; xor esi, esi
		movEAXImm(unix.SYS_NANOSLEEP), codeSyscall, codeExitNegRAX)
	spin := prog("spin", []byte{0xeb, 0xfe})
	sleeper := prog("sleep", sleep)
	threaded := buildTestProg(t, "mmapstress")
	baseGoroutines := runtime.NumGoroutine() // the images stay open, in buildImage's cache
	baseFDs := countFDs(t)
	for _, c := range []struct {
		name    string
		cfg     Config
		threads int64 // guest threads to wait for before Kill
		call    bool  // wait for a system call, not for CPU time
	}{
		{"spinning", Config{Image: spin, Program: "/prog"}, 1, false},
		{"sleeping", Config{Image: sleeper, Program: "/prog"}, 1, true},
		// mmapstress 8 workers, a million rounds each: far longer than the test waits.
		{"threads", Config{Image: threaded, Program: "/bin/mmapstress", Args: []string{"/bin/mmapstress", "8", "1000000"},
			Env: []string{"GOMAXPROCS=4"}}, 5, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg
			cfg.KVM, cfg.Timeout = sys, time.Minute
			vm, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Close()
			type ran struct {
				res *Result
				err error
			}
			done := make(chan ran, 1)
			go func() {
				res, err := vm.Run(t.Context())
				done <- ran{res, err}
			}()
			// Let it get going: its threads have started and used some CPU, or, for the
			// sleeper, made its call.
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the program did not start within 10s")
				}
				if c.call && vm.snapshotStats().Exits[kvmhv.ExitSyscall.String()] > 0 ||
					!c.call && vm.stats.threads.Load() >= c.threads && vm.cpuTime() > 20*time.Millisecond {
					break
				}
			}
			killed := time.Now()
			vm.Kill()
			var r ran
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return within 10s of Kill")
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			res := r.res
			if res.ExitCode != 137 || res.Signal != int(unix.SIGKILL) || !res.Killed || res.TimedOut || res.Reason != "killed" {
				t.Errorf("exit %d signal %d killed %v timed out %v reason %q, want exit 137 signal 9 killed, reason \"killed\"",
					res.ExitCode, res.Signal, res.Killed, res.TimedOut, res.Reason)
			}
			if int64(res.Stats.Threads) < c.threads {
				t.Errorf("%d guest threads, want at least %d", res.Stats.Threads, c.threads)
			}
			t.Logf("Run returned %v after Kill; %d threads", time.Since(killed), res.Stats.Threads)
			if err := vm.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		})
	}
	checkNothingLeft(t, baseGoroutines, baseFDs)
}
