package microvm

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Regression tests for bugs FuzzSyscall found. Each runs a few calls through the fuzz
// harness (a real guest program making them) and checks their results.

// result returns the stored result of call i of o, if the call completed.
func (o *fzOutcome) result(i int) (uint64, bool) {
	if o.results == nil {
		return 0, false
	}
	r := binary.LittleEndian.Uint64(o.results[16*i:])
	return r, binary.LittleEndian.Uint64(o.results[16*i+8:]) == r^fzCheck
}

// wantResults checks the results of o's calls; a nil entry means the call must not have
// completed.
func wantResults(t *testing.T, o *fzOutcome, want ...any) {
	t.Helper()
	for i, w := range want {
		got, ok := o.result(i)
		name := syscallName(o.regs[i][0])
		switch w := w.(type) {
		case nil:
			if ok {
				t.Errorf("call %d (%s) completed with %#x; it must still be waiting when the VM ends", i, name, got)
			}
		case unix.Errno:
			if !ok || got != errnoResult(w) {
				t.Errorf("call %d (%s): result %#x (stored %v), want -%v", i, name, got, ok, w)
			}
		case int:
			if !ok || got != uint64(w) {
				t.Errorf("call %d (%s): result %#x (stored %v), want %d", i, name, got, ok, w)
			}
		default:
			t.Fatalf("bad want %T", w)
		}
	}
}

// TestLongWaitsDoNotOverflow: a timeout of centuries overflowed time.Duration and became
// none (or a few milliseconds), so the call returned at once instead of blocking until the
// VM's limit: nanosleep, clock_nanosleep, futex waits and ppoll.
func TestLongWaitsDoNotOverflow(t *testing.T) {
	huge := uint64(1<<63 - 1)
	for _, c := range []struct {
		name string
		mem  *fzMem
		call fzCall
	}{
		{"nanosleep", (&fzMem{}).put(0x500, huge, 999_999_999), call(unix.SYS_NANOSLEEP, ptr(0x500), num(0))},
		{"clock_nanosleep abs", (&fzMem{}).put(0x500, 1<<62, 0),
			call(unix.SYS_CLOCK_NANOSLEEP, num(unix.CLOCK_MONOTONIC), num(unix.TIMER_ABSTIME), ptr(0x500))},
		{"futex wait", (&fzMem{}).put(0x500, 1<<62, 0), call(unix.SYS_FUTEX, ptr(0x400), num(futexWait), num(0), ptr(0x500))},
		{"futex wait bitset", (&fzMem{}).put(0x500, huge, 0),
			call(unix.SYS_FUTEX, ptr(0x400), num(futexWaitBitset), num(0), ptr(0x500), num(0), num(-1))},
		{"ppoll", (&fzMem{}).put(0x500, 18446744073709551, 700_000_000), call(unix.SYS_PPOLL, num(0), num(0), ptr(0x500))},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := newFuzzHarness(t)
			o := h.runOne(t, fzCalls{c.call}.encode(), *c.mem)
			wantResults(t, o, nil)
			if !o.res.TimedOut {
				t.Errorf("the VM ended with %q, not by its time limit", o.res.Reason)
			}
		})
	}
}

// TestDup2NewfdIsUnsigned: dup2 and dup3 take unsigned int descriptors; a newfd of -1 was
// taken as "the lowest free descriptor", returning one the caller never asked for.
func TestDup2NewfdIsUnsigned(t *testing.T) {
	h := newFuzzHarness(t)
	o := h.runOne(t, fzCalls{
		call(unix.SYS_DUP2, num(1), raw(^uint64(0))),
		call(unix.SYS_DUP3, num(1), num(-1), num(0)),
		call(unix.SYS_DUP2, num(1), raw(1<<32|7)),
		call(unix.SYS_DUP2, raw(1<<32|7), num(7)),
		call(unix.SYS_DUP3, num(1), raw(1<<32|1), num(0)),
		call(unix.SYS_FCNTL, num(1), num(unix.F_DUPFD), num(0)),
	}.encode(), nil)
	wantResults(t, o, unix.EBADF, unix.EBADF, 7, 7, unix.EINVAL, 3)
}

// TestReadvDoesNotBlockOnceItHasData: readv read each iovec with its own blocking read,
// so a pipe holding exactly the first iovec's worth blocked it (forever, without a writer)
// where Linux returns what it read. A read of 0 bytes also blocked on an empty pipe.
func TestReadvDoesNotBlockOnceItHasData(t *testing.T) {
	h := newFuzzHarness(t)
	mem := (&fzMem{}).bytes(0x1000, []byte("abcdefgh")).put(0x100, at(0x2000), 8, at(0x2100), 8)
	o := h.runOne(t, fzCalls{
		call(unix.SYS_PIPE2, ptr(0x800), num(0)),
		call(unix.SYS_READ, num(3), ptr(0x2000), num(0)),
		call(unix.SYS_WRITE, num(4), ptr(0x1000), num(8)),
		call(unix.SYS_READV, num(3), ptr(0x100), num(2)),
		call(unix.SYS_WRITE, num(4), ptr(0x1000), num(5)),
		call(unix.SYS_READV, num(3), ptr(0x100), num(2)),
		call(unix.SYS_READV, num(3), ptr(0x100), num(0)),
		call(unix.SYS_GETPID),
	}.encode(), *mem)
	wantResults(t, o, 0, 0, 8, 8, 5, 5, 0, 1)
	if o.region != nil && !bytes.Equal(o.region[0x2000:0x2008], []byte("abcdefgh")) {
		t.Errorf("readv stored %q", o.region[0x2000:0x2008])
	}
}

// TestVectoredIOIsBounded: writev gathered every iovec into one host buffer, up to 2 GiB
// (1 GiB for one iovec, allocated before the guest memory was even checked) however little
// memory the guest has; iovecs naming the same memory over and over made a 16 MiB guest
// cost gigabytes of host heap. One call now moves at most maxIO bytes, like a short write.
func TestVectoredIOIsBounded(t *testing.T) {
	h := newFuzzHarness(t)
	h.timeout = 10 * time.Second // copying 16 MiB a few times takes long with -race
	mem := (&fzMem{}).put(0x100, at(0x1000), 1<<30).put(0x110, at(0), 1<<63)
	for i := range 1024 {
		mem.put(0x400+16*i, at(0), fzScratchSize)
	}
	o := h.runOne(t, fzCalls{
		call(unix.SYS_WRITEV, num(1), ptr(0x100), num(1)),
		call(unix.SYS_WRITEV, num(1), ptr(0x110), num(1)),
		call(unix.SYS_WRITEV, num(1), ptr(0x400), num(1024)),
		call(unix.SYS_OPENAT, num(unix.AT_FDCWD), str(strDevZero), num(unix.O_RDONLY)),
		call(unix.SYS_READV, num(3), ptr(0x400), num(1024)),
		call(unix.SYS_PREADV, num(3), ptr(0x400), num(2), num(-1)),
		call(unix.SYS_PWRITEV, num(1), ptr(0x400), num(2), num(-1)),
	}.encode(), *mem)
	wantResults(t, o, unix.EFAULT, unix.EINVAL, maxIO, 3, maxIO, unix.EINVAL, unix.EINVAL)
	if o.allocs > 160<<20 {
		t.Errorf("the calls allocated %d MiB of host heap", o.allocs>>20)
	}
}

// TestSendfile: sendfile read its source with read(2) semantics whatever it was, so a pipe
// sent into itself looped 16 million times one byte at a time (seconds of VMM time, gigabytes
// of allocations, deaf to the VM's time limit) where Linux refuses a pipe source with
// EINVAL; and a short write into a pipe lost the rest of the chunk read (the offset moved
// past bytes never written).
func TestSendfile(t *testing.T) {
	h := newFuzzHarness(t)
	o := h.runOne(t, fzCalls{
		call(unix.SYS_PIPE2, ptr(0x800), num(unix.O_NONBLOCK)),
		call(unix.SYS_WRITE, num(4), ptr(0x1000), num(1)),
		call(unix.SYS_SENDFILE, num(4), num(3), num(0), num(1<<24)),
		call(unix.SYS_OPENAT, num(unix.AT_FDCWD), str(strDevZero), num(unix.O_RDONLY)), // 5
		call(unix.SYS_SENDFILE, num(4), num(5), ptr(0x900), num(100_000)),
		call(unix.SYS_OPENAT, num(unix.AT_FDCWD), str(strInput), num(unix.O_RDONLY)), // 6
		call(unix.SYS_SENDFILE, num(1), num(6), num(0), num(10)),
		call(unix.SYS_SENDFILE, num(1), num(6), ptr(0x908), num(100)),
	}.encode(), *(&fzMem{}).put(0x900, 0, 4))
	n := len(h.inputData)
	wantResults(t, o, 0, 1, unix.EINVAL, 5, pipeCapacity-1, 6, 10, n-4)
	if o.region != nil {
		if off := binary.LittleEndian.Uint64(o.region[0x900:]); off != pipeCapacity-1 {
			t.Errorf("offset after a short sendfile into a pipe: %d, want %d", off, pipeCapacity-1)
		}
		if off := binary.LittleEndian.Uint64(o.region[0x908:]); off != uint64(n) {
			t.Errorf("offset after sendfile from the input: %d, want %d", off, n)
		}
	}
	if o.stdout.n != int64(10+n-4) {
		t.Errorf("stdout got %d bytes, want %d", o.stdout.n, 10+n-4)
	}
}

// TestStdinReadEndsWithTheVM: a read of stdin blocked in the host reader, where neither
// the VM's time limit nor Kill could reach it: Run did not return until the host reader
// did (isoctl passes its own stdin, which may stay open for ever).
func TestStdinReadEndsWithTheVM(t *testing.T) {
	h := newFuzzHarness(t)
	start := time.Now()
	o := h.runOne(t, fzCalls{
		call(unix.SYS_READ, num(0), ptr(0x700), num(100)),
		call(unix.SYS_PPOLL, ptr(0x600), num(1), ptr(0x500)),
		call(unix.SYS_READ, num(0), ptr(0x700), num(100)),
	}.encode(), *(&fzMem{}).put(0x600, unix.POLLIN<<32).put(0x500, 0, 0))
	wantResults(t, o, len(fzStdin), 0, nil)
	if !o.res.TimedOut {
		t.Errorf("the VM ended with %q, not by its time limit", o.res.Reason)
	}
	if d := time.Since(start); d > fzTimeout+2*time.Second {
		t.Errorf("the VM took %v to end, limit %v", d, fzTimeout)
	}
	if o.region != nil && string(o.region[0x700:0x700+len(fzStdin)]) != fzStdin {
		t.Errorf("read %q from stdin, want %q", o.region[0x700:0x700+len(fzStdin)], fzStdin)
	}
	for deadline := time.Now().Add(2 * time.Second); strings.Contains(vmGoroutines(), "stdinReader"); {
		if time.Now().After(deadline) {
			t.Fatalf("stdin's reader is left running after the host reader ended:\n%s", vmGoroutines())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestMemoryRangesMustNotWrap: mem.go took ranges that wrap past 2^64 for valid ones.
// mremap of [2^64-4096, +8192) "succeeds" returning 0xfffffffffffff000 (-4096: neither an
// address nor an errno); growing such a range maps pages from address 0 up, which mprotect
// then makes accessible (a null page); munmap and mprotect with a length that rounds up to
// 0 succeed; madvise of a wrapping range succeeds. Linux: EFAULT, ENOMEM, EINVAL.
func TestMemoryRangesMustNotWrap(t *testing.T) {
	h := newFuzzHarness(t)
	const top = 0xffff_ffff_ffff_f000
	o := h.runOne(t, fzCalls{
		call(unix.SYS_MREMAP, raw(top), num(0x2000), num(0x1000), num(0)),
		call(unix.SYS_MREMAP, raw(top), num(0x1000), num(0x11000), num(0)),
		call(unix.SYS_MPROTECT, num(0), num(0x10000), num(unix.PROT_READ|unix.PROT_WRITE)),
		call(unix.SYS_MUNMAP, raw(fzScratch), raw(^uint64(0))),
		call(unix.SYS_MPROTECT, raw(fzScratch), raw(^uint64(0)), num(unix.PROT_READ)),
		call(unix.SYS_MADVISE, raw(top), num(0x2000), num(unix.MADV_DONTNEED)),
	}.encode(), nil)
	wantResults(t, o, unix.EFAULT, unix.EFAULT, unix.ENOMEM, unix.EINVAL, unix.ENOMEM, unix.EINVAL)
}

// TestEpollWatchEndsWithTheFile: epoll watched descriptor numbers, not open files. After
// close the watch stayed and reported POLLNVAL, an event Linux never reports from epoll,
// on every wait (a busy loop for a program that closed without EPOLL_CTL_DEL), and a new
// file at the same number could not be added (EEXIST). A watch now ends when its open
// file is closed for good, and survives while a dup of it is open, as on Linux.
func TestEpollWatchEndsWithTheFile(t *testing.T) {
	h := newFuzzHarness(t)
	mem := (&fzMem{}).put(0x600, unix.EPOLLIN|0x77<<32, 0)
	o := h.runOne(t, fzCalls{
		call(unix.SYS_EPOLL_CREATE1, num(0)),                                          // 3
		call(unix.SYS_EVENTFD2, num(1), num(0)),                                       // 4, readable
		call(unix.SYS_EPOLL_CTL, num(3), num(unix.EPOLL_CTL_ADD), num(4), ptr(0x600)), // 0
		call(unix.SYS_DUP, num(4)),                                                    // 5
		call(unix.SYS_CLOSE, num(4)),
		call(unix.SYS_EPOLL_WAIT, num(3), ptr(0x700), num(8), num(0)), // 1: the dup keeps the file open
		call(unix.SYS_CLOSE, num(5)),
		call(unix.SYS_EPOLL_WAIT, num(3), ptr(0x700), num(8), num(0)), // 0: closed for good
	}.encode(), *mem)
	wantResults(t, o, 3, 4, 0, 5, 0, 1, 0, 0)
	o = h.runOne(t, fzCalls{
		call(unix.SYS_EPOLL_CREATE1, num(0)),
		call(unix.SYS_EVENTFD2, num(1), num(0)),
		call(unix.SYS_EPOLL_CTL, num(3), num(unix.EPOLL_CTL_ADD), num(4), ptr(0x600)),
		call(unix.SYS_CLOSE, num(4)),
		call(unix.SYS_EVENTFD2, num(0), num(0)),                                       // 4 again, not readable
		call(unix.SYS_EPOLL_CTL, num(3), num(unix.EPOLL_CTL_ADD), num(4), ptr(0x600)), // a new watch
		call(unix.SYS_EPOLL_CTL, num(3), num(unix.EPOLL_CTL_MOD), num(4), ptr(0x600)),
		call(unix.SYS_EPOLL_WAIT, num(3), ptr(0x700), num(8), num(0)),
	}.encode(), *mem)
	wantResults(t, o, 3, 4, 0, 0, 4, 0, 0, 0)
}

// TestUmask: the file mode creation mask was never applied (files and directories got the
// mode the program asked for, 0666 for unzip's files where Linux gives 0644), and umask(2)
// always returned 022 without changing it. TestBusyboxMatchesHost (unzip into /tmp) found
// it.
func TestUmask(t *testing.T) {
	h := newFuzzHarness(t)
	o := h.runOne(t, fzCalls{
		call(unix.SYS_UMASK, num(0o027)),
		call(unix.SYS_OPENAT, num(unix.AT_FDCWD), str(strTmpA), num(unix.O_CREAT|unix.O_WRONLY), num(0o4666)),
		call(unix.SYS_FSTAT, num(3), ptr(0x1000)),
		call(unix.SYS_MKDIR, str(strTmpD), num(0o7777)),
		call(unix.SYS_STAT, str(strTmpD), ptr(0x1100)),
		call(unix.SYS_UMASK, num(0o1777)),
		call(unix.SYS_UMASK, num(0)),
	}.encode(), nil)
	wantResults(t, o, 0o022, 3, 0, 0, 0, 0o027, 0o777)
	if o.region == nil {
		t.Fatal("guest memory unreadable")
	}
	// st_mode is at offset 24 of struct stat.
	if m := binary.LittleEndian.Uint32(o.region[0x1000+24:]); m != unix.S_IFREG|0o4640 {
		t.Errorf("file made with 04666 under umask 027: mode %o, want %o", m, unix.S_IFREG|0o4640)
	}
	if m := binary.LittleEndian.Uint32(o.region[0x1100+24:]); m != unix.S_IFDIR|0o1750 {
		t.Errorf("directory made with 07777 under umask 027: mode %o, want %o", m, unix.S_IFDIR|0o1750)
	}
}
