package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/isolator-dev/isolator/pkg/image"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
	"github.com/isolator-dev/isolator/pkg/microvm"
	"golang.org/x/sys/unix"
)

func TestSummarize(t *testing.T) {
	ms := func(v ...int) []sample {
		s := make([]sample, len(v))
		for i, x := range v {
			s[i] = sample{wall: time.Duration(x) * time.Millisecond, exits: uint64(x), syscalls: uint64(2 * x)}
		}
		return s
	}
	tests := []struct {
		name        string
		in          []sample
		median, p90 time.Duration
		exits       uint64
	}{
		{"one", ms(7), 7 * time.Millisecond, 7 * time.Millisecond, 7},
		{"two", ms(9, 1), 1 * time.Millisecond, 9 * time.Millisecond, 1},
		{"ten unsorted", ms(10, 1, 9, 2, 8, 3, 7, 4, 6, 5), 5 * time.Millisecond, 9 * time.Millisecond, 5},
		{"twenty", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20), 10 * time.Millisecond, 18 * time.Millisecond, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := summarize(tt.in)
			if s.n != len(tt.in) || s.median != tt.median || s.p90 != tt.p90 || s.exits != tt.exits || s.syscalls != 2*tt.exits {
				t.Errorf("summarize = %+v, want n %d median %v p90 %v exits %d", s, len(tt.in), tt.median, tt.p90, tt.exits)
			}
		})
	}
}

func TestParseStats(t *testing.T) {
	tests := []struct {
		name     string
		stderr   string
		ok       bool
		exits    uint64
		syscalls uint64
	}{
		{"stats only", `{"exits":{"syscall":20,"io":2},"syscall_count":19}` + "\n", true, 22, 19},
		{"after program output", "busybox: warning\n" + `{"exits":{"syscall":281},"syscall_count":280}`, true, 281, 280},
		{"no stats", "isoctl: open image: no such file\n", false, 0, 0},
		{"truncated", `{"exits":{"syscall":2`, false, 0, 0},
		{"empty", "", false, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := parseStats([]byte(tt.stderr))
			if (err == nil) != tt.ok {
				t.Fatalf("parseStats error = %v, want ok %v", err, tt.ok)
			}
			if tt.ok && (totalExits(st) != tt.exits || st.SyscallCount != tt.syscalls) {
				t.Errorf("exits %d syscalls %d, want %d %d", totalExits(st), st.SyscallCount, tt.exits, tt.syscalls)
			}
		})
	}
}

func TestParseHyperfine(t *testing.T) {
	good := `{"results":[{"command":"busybox true","mean":0.002,"times":[0.004,0.001,0.002,0.003]}]}`
	s, err := parseHyperfine([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if s.n != 4 || s.median != 2*time.Millisecond || s.p90 != 4*time.Millisecond {
		t.Errorf("parseHyperfine = %+v, want n 4 median 2ms p90 4ms", s)
	}
	for _, bad := range []string{``, `{"results":[]}`, `{"results":[{"times":[]}]}`, `[1]`} {
		if _, err := parseHyperfine([]byte(bad)); err == nil {
			t.Errorf("parseHyperfine(%q) succeeded", bad)
		}
	}
}

const smapsFixture = `55d0c0000000-55d0c0100000 r-xp 00000000 fe:01 1234   /usr/bin/bench
Size:               1024 kB
Rss:                 800 kB
Pss:                 800 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:                4096 kB
Private_Dirty:      4096 kB
VmFlags: rd wr mr mw me nr
7f0020000000-7f0020400000 rw-p 00000000 00:00 0
Size:               4096 kB
Rss:                 100 kB
VmFlags: rd wr mr mw me ac
7f0030000000-7f0030001000 rw-p 00000000 00:00 0
Size:                  4 kB
Rss:                   4 kB
VmFlags: rd wr mr mw me nr wf dd dp
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  12 kB
VmFlags: rd wr mr mw me gd ac
`

func TestParseSmaps(t *testing.T) {
	r, err := parseSmaps([]byte(smapsFixture))
	if err != nil {
		t.Fatal(err)
	}
	if want := (rss{total: (800 + 4096 + 100 + 4 + 12) << 10, guest: 4096 << 10}); r != want {
		t.Errorf("parseSmaps = %+v, want %+v", r, want)
	}
	for _, bad := range []string{"", "Rss: x kB\nVmFlags: rd\n", "Rss: 4 MB\nVmFlags: rd\n", "VmFlags: rd nr\n"} {
		if _, err := parseSmaps([]byte(bad)); err == nil {
			t.Errorf("parseSmaps(%q) succeeded", bad)
		}
	}
}

// TestReadRSSGuest maps memory the way pkg/kvmhv maps guest slots, and ordinary memory,
// and checks that readRSS counts the touched part of the first, and only that, as guest
// memory. The race detector's shadow memory is also mapped MAP_NORESERVE, so under -race
// only the lower bounds are checked.
func TestReadRSSGuest(t *testing.T) {
	const size, touched = 64 << 20, 16 << 20
	touch := func(flags int) {
		t.Helper()
		mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|flags)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Munmap(mem) })
		for i := 0; i < touched; i += 4096 {
			mem[i] = 1
		}
	}
	before, err := readRSS()
	if err != nil {
		t.Fatal(err)
	}
	if !raceEnabled && before.guest != 0 {
		t.Fatalf("%d bytes in MAP_NORESERVE mappings before any was made", before.guest)
	}
	touch(unix.MAP_NORESERVE)
	touch(0)
	after, err := readRSS()
	if err != nil {
		t.Fatal(err)
	}
	guest := after.guest - before.guest
	if guest < touched || !raceEnabled && guest != touched {
		t.Errorf("guest RSS grew by %d, want %d", guest, touched)
	}
	if after.total-before.total < 2*touched {
		t.Errorf("total RSS grew by %d, want at least %d", after.total-before.total, 2*touched)
	}
}

func TestParseStraceTotal(t *testing.T) {
	summary := "    calls syscall\n--------- ----------------\n        5 brk\n        1 execve\n--------- ----------------\n        6 total\n"
	if n, err := parseStraceTotal([]byte(summary)); err != nil || n != 6 {
		t.Errorf("parseStraceTotal = %d, %v, want 6", n, err)
	}
	for _, bad := range []string{"", "    calls syscall\n", "        x total\n"} {
		if _, err := parseStraceTotal([]byte(bad)); err == nil {
			t.Errorf("parseStraceTotal(%q) succeeded", bad)
		}
	}
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("strace not installed")
	}
	// A shell that also runs a program makes more calls than one that only exits.
	one, err := straceCount(context.Background(), t.TempDir(), []string{"/bin/sh", "-c", "exit 0"})
	if err != nil {
		t.Fatal(err)
	}
	two, err := straceCount(context.Background(), t.TempDir(), []string{"/bin/sh", "-c", "/bin/true; exit 0"})
	if err != nil {
		t.Fatal(err)
	}
	if one < 2 || two <= one {
		t.Errorf("strace counted %d calls for sh and %d for sh running true; want at least 2 and more for the second", one, two)
	}
}

func TestShellQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/usr/bin/busybox", "/usr/bin/busybox"},
		{"--rootless=false", "--rootless=false"},
		{"", "''"},
		{"a b", "'a b'"},
		{"it's", `'it'\''s'`},
		{"$HOME", "'$HOME'"},
	}
	for _, tt := range tests {
		if got := shellQuote(tt.in); got != tt.want {
			t.Errorf("shellQuote(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
	// The quoted words must survive a real shell unchanged.
	for _, tt := range tests {
		out, err := exec.Command("/bin/sh", "-c", "printf %s "+shellQuote(tt.in)).Output()
		if err != nil || string(out) != tt.in {
			t.Errorf("sh printed %q, %v for %q", out, err, tt.in)
		}
	}
}

// TestGetpidProgram builds the getpid program as the bench does and checks that it runs on
// the host and that, in a micro VM, each call is one system call served by the VMM.
func TestGetpidProgram(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go tool not in PATH")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "getpid")
	build := exec.Command("go", "build", "-o", bin, "./getpid")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"0"}, {"1000"}} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Errorf("getpid %v: %v %s", args, err, out)
		}
	}
	for _, args := range [][]string{{}, {"-1"}, {"x"}} {
		err := exec.Command(bin, args...).Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("getpid %v: %v, want exit status 2", args, err)
		}
	}

	if ok, why := kvmhv.Available(); !ok {
		t.Skipf("micro VM part skipped: %s", why)
	}
	imgPath := filepath.Join(dir, "getpid.img")
	if _, err := image.BuildFile(imgPath, image.BuildConfig{Files: []image.FileSpec{{HostPath: bin, GuestPath: guestGetpid}}}); err != nil {
		t.Fatal(err)
	}
	im, err := image.Open(imgPath)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	kvm, err := kvmhv.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer kvm.Close()
	calls := func(n int) uint64 {
		t.Helper()
		res, err := microvm.Run(context.Background(), microvm.Config{KVM: kvm, Image: im, Program: guestGetpid,
			Args: []string{guestGetpid, strconv.Itoa(n)}, Timeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 {
			t.Fatalf("getpid %d in a micro VM: exit status %d %s", n, res.ExitCode, res.Reason)
		}
		return res.Stats.Syscalls["getpid"]
	}
	// The Go runtime calls getpid itself to send a preemption signal (tgkill) to a
	// goroutine that runs long, which the loop may: allow a few of those.
	if zero, many := calls(0), calls(300); many-zero < 300 || many-zero > 310 {
		t.Errorf("getpid calls served: %d at N=0, %d at N=300; want a difference of 300 (up to 310)", zero, many)
	}
}
