package microvm

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/image"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// checkStatsConsistent checks what holds for the statistics of every run: each system
// call exit was served or denied, the maps add up to the totals, the times are there and
// the CPU time fits in the wall-clock time of the threads, and the peak memory is within
// the budget.
func checkStatsConsistent(t *testing.T, st Stats, budget int64) {
	t.Helper()
	var served, denied uint64
	for _, n := range st.Syscalls {
		served += n
	}
	for _, n := range st.Denied {
		denied += n
	}
	if served != st.SyscallCount || denied != st.DeniedCount {
		t.Errorf("syscalls by name add up to %d served, %d denied; totals %d and %d", served, denied, st.SyscallCount, st.DeniedCount)
	}
	if n := st.Exits[kvmhv.ExitSyscall.String()]; n != st.SyscallCount+st.DeniedCount {
		t.Errorf("%d system call exits, %d calls served and %d denied: %v", n, st.SyscallCount, st.DeniedCount, st.Exits)
	}
	if st.Wall <= 0 || st.CPU <= 0 {
		t.Errorf("wall %v, CPU %v: both must be measured", st.Wall, st.CPU)
	}
	// No more threads than were started ran at once.
	if st.Threads < 1 || st.CPU > st.Wall*time.Duration(st.Threads) {
		t.Errorf("CPU %v over %d threads in %v wall-clock time", st.CPU, st.Threads, st.Wall)
	}
	if st.PeakMemory <= 0 || st.PeakMemory > budget {
		t.Errorf("peak memory %d, budget %d", st.PeakMemory, budget)
	}
}

// TestStats checks the statistics of runs whose counts are known: a program that makes a
// known number of system calls and then faults, busybox sha256sum over an input of known
// size, and a many-threaded Go program.
func TestStats(t *testing.T) {
	sys := requireKVM(t)
	dir := t.TempDir()

	t.Run("counted calls", func(t *testing.T) {
		// getpid 100 times (ecx counts down; syscall clobbers rcx, so the count is in ebx),
		// an unknown call, then ud2.
		const n = 100
		code := join([]byte{0xbb}, le32(n), // mov ebx, n
			movEAXImm(unix.SYS_GETPID), codeSyscall, // loop: getpid
			[]byte{0xff, 0xcb, 0x75, 0xf5}, // dec ebx; jnz loop
			movEAXImm(999), codeSyscall, []byte{0x0f, 0x0b})
		prog := filepath.Join(dir, "prog")
		if err := os.WriteFile(prog, tinyELF(code), 0o755); err != nil {
			t.Fatal(err)
		}
		im := buildImage(t, "stats-calls", image.BuildConfig{Files: []image.FileSpec{{HostPath: prog, GuestPath: "/prog"}}})
		_, _, res := runGuest(t, sys, im, nil, nil, "/prog")
		st := res.Stats
		if res.Signal != int(unix.SIGILL) {
			t.Fatalf("exit %d (%s), want SIGILL", res.ExitCode, res.Reason)
		}
		if st.Syscalls["getpid"] != n || st.SyscallCount != n || st.Denied["syscall_999"] != 1 || st.DeniedCount != 1 {
			t.Errorf("served %v (%d), denied %v (%d): want getpid %d times and syscall_999 once",
				st.Syscalls, st.SyscallCount, st.Denied, st.DeniedCount, n)
		}
		if st.Exits["syscall"] != n+1 || st.Exits["exception-6"] != 1 || len(st.Exits) != 2 {
			t.Errorf("exits %v, want syscall %d and exception-6 once", st.Exits, n+1)
		}
		if st.Threads != 1 || st.BytesCopiedIn != 0 || st.BytesCopiedOut != 0 {
			t.Errorf("threads %d, copied in %d, out %d; want 1, 0, 0", st.Threads, st.BytesCopiedIn, st.BytesCopiedOut)
		}
		checkStatsConsistent(t, st, DefaultMemory)
	})

	t.Run("sha256sum", func(t *testing.T) {
		im := busyboxImage(t)
		data := make([]byte, 1<<20)
		rand.Read(data)
		in := filepath.Join(dir, "data.bin")
		if err := os.WriteFile(in, data, 0o644); err != nil {
			t.Fatal(err)
		}
		out, _, res := runGuest(t, sys, im, []Input{{Name: "data.bin", HostPath: in}}, nil, "/usr/bin/busybox", "sha256sum", "/input/data.bin")
		if res.ExitCode != 0 {
			t.Fatalf("exit %d (%s)", res.ExitCode, res.Reason)
		}
		st := res.Stats
		// The input was read into guest memory; the output was written from it.
		if st.BytesCopiedIn < int64(len(data)) || st.BytesCopiedOut < int64(len(out)) {
			t.Errorf("copied in %d bytes (input %d), out %d (output %d)", st.BytesCopiedIn, len(data), st.BytesCopiedOut, len(out))
		}
		if st.Syscalls["write"] < 1 || st.Syscalls["exit_group"] != 1 {
			t.Errorf("syscalls %v: want a write and one exit_group", st.Syscalls)
		}
		checkStatsConsistent(t, st, DefaultMemory)
	})

	t.Run("threads", func(t *testing.T) {
		im := buildTestProg(t, "mmapstress")
		const budget = 128 << 20
		res, err := Run(t.Context(), Config{KVM: sys, Image: im, Program: "/bin/mmapstress", Args: []string{"/bin/mmapstress", "8", "100"},
			Env: []string{"GOMAXPROCS=4"}, Memory: budget, Timeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 {
			t.Fatalf("exit %d (%s)", res.ExitCode, res.Reason)
		}
		st := res.Stats
		if st.Threads < 2 || st.Syscalls["clone"] != uint64(st.Threads-1) {
			t.Errorf("%d threads, %d clone calls: want several threads, each but the first from a clone", st.Threads, st.Syscalls["clone"])
		}
		if st.Syscalls["munmap"] < 800 {
			t.Errorf("%d munmap calls, want at least 800 (8 workers, 100 rounds)", st.Syscalls["munmap"])
		}
		checkStatsConsistent(t, st, budget)
	})
}
