package kvmhv

import (
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReadTSC: where the guest TSC is usable, a TSCReading taken before the guest runs,
// with the reported frequency, turns the guest's own `rdtsc` into host CLOCK_MONOTONIC
// within the run's bounds; elsewhere ReadTSC fails with ErrNoGuestTSC and the reason.
func TestReadTSC(t *testing.T) {
	s := requireKVM(t)
	ok, why := s.GuestTSC()
	t.Logf("guest TSC usable: %v %s", ok, why)
	vm := newTestVMOn(t, s, cat([]byte{0x0f, 0x31}, asmSyscall, asmUD2)) // rdtsc; syscall; ud2
	var (
		r           TSCReading
		rerr, err   error
		regs        Regs
		exit        Exit
		start, done unix.Timespec
	)
	onThread(func() {
		var v *VCPU
		if v, err = vm.NewVCPU(testCode, testStack+pageSize); err != nil {
			return
		}
		r, rerr = v.ReadTSC()
		unix.ClockGettime(unix.CLOCK_MONOTONIC, &start)
		exit, err = v.Run()
		unix.ClockGettime(unix.CLOCK_MONOTONIC, &done)
		regs = v.Regs
	})
	if err != nil {
		t.Fatal(err)
	}
	if exit.Kind != ExitSyscall {
		t.Fatalf("exit %v (%s), want the syscall", exit.Kind, exit.Reason)
	}
	if !ok {
		if !errors.Is(rerr, ErrNoGuestTSC) || !strings.Contains(rerr.Error(), why) {
			t.Errorf("ReadTSC on a host without a usable guest TSC: %v, want ErrNoGuestTSC saying %q", rerr, why)
		}
		return
	}
	if rerr != nil {
		t.Fatalf("ReadTSC: %v", rerr)
	}
	guest := regs.RDX<<32 | regs.RAX&0xffffffff
	if guest < r.TSC {
		t.Fatalf("the guest read TSC %d, before the reading %d", guest, r.TSC)
	}
	// ns = (guest - r.TSC) * 1e6 / kHz, exactly.
	d := new(big.Int).Mul(new(big.Int).SetUint64(guest-r.TSC), big.NewInt(1e6))
	d.Quo(d, new(big.Int).SetUint64(r.KHz))
	at := r.Monotonic + time.Duration(d.Int64())
	const slack = 50 * time.Microsecond // the reading is the middle of a read of a few µs
	lo, hi := time.Duration(start.Nano())-slack, time.Duration(done.Nano())+slack
	if at < lo || at > hi {
		t.Errorf("the guest's rdtsc gives CLOCK_MONOTONIC %v, outside the run %v..%v", at, lo, hi)
	}
}

func TestProbeTSCReason(t *testing.T) {
	for _, c := range []struct {
		before, guest, after uint64
		ok                   bool
	}{
		{100, 150, 200, true},
		{100, 100, 100, true},
		{100, 99, 200, false},
		{100, 201, 200, false},
		{100, 5, 200, false}, // a guest counter offset from the VMM's view
	} {
		if why := probeTSCReason(c.before, c.guest, c.after); (why == "") != c.ok {
			t.Errorf("probeTSCReason(%d, %d, %d) = %q, want ok %v", c.before, c.guest, c.after, why, c.ok)
		}
	}
}
