package microvm

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// thread is one guest thread: a vCPU on its own locked OS thread.
type thread struct {
	vm  *VM
	tid int

	mu   sync.Mutex  // guards vcpu for stop()
	vcpu *kvmhv.VCPU // owned by the thread's goroutine once set

	clearTID uint64 // set_tid_address / CLONE_CHILD_CLEARTID; owned by the thread
	sigmask  uint64 // blocked signals; owned by the thread
	altstack [3]uint64
	exited   atomic.Bool
	// exitCalled and exitCode record an exit(2), which exitThread finishes; owned by
	// the thread.
	exitCalled bool
	exitCode   int
	retired    atomic.Bool   // CPU time added to the VM's total
	hostTID    int           // OS thread running the vCPU, 0 until it starts; written under vm.threadMu
	cpuBase    time.Duration // CPU time of that OS thread before the guest thread started; likewise
}

func (t *thread) setVCPU(v *kvmhv.VCPU) {
	t.mu.Lock()
	t.vcpu = v
	t.mu.Unlock()
	if t.vm.stopping() {
		v.Stop()
	}
}

// stop makes the thread's vCPU leave the guest and its loop end.
func (t *thread) stop() {
	t.exited.Store(true)
	t.mu.Lock()
	if t.vcpu != nil {
		t.vcpu.Stop()
	}
	t.mu.Unlock()
}

// errno values are returned to the guest as -errno.
func errnoResult(e unix.Errno) uint64 { return uint64(-int64(e)) }

// loop runs the guest thread until it exits or the VM stops.
func (t *thread) loop() {
	v := t.vcpu
	defer t.vm.stats.retire(t)
	for !t.exited.Load() {
		exit, err := v.Run()
		if err != nil {
			t.vm.terminate(exitStatus{signal: int(unix.SIGKILL), reason: fmt.Sprintf("vCPU failed: %v", err)})
			return
		}
		if t.vm.exitHook != nil {
			exit = t.vm.exitHook(exit)
		}
		t.vm.stats.exit(exit)
		switch exit.Kind {
		case kvmhv.ExitSyscall:
			t.syscall(v)
		case kvmhv.ExitException:
			t.fault(exit)
		case kvmhv.ExitPortIO:
			t.vm.terminate(exitStatus{signal: int(unix.SIGSEGV), reason: fmt.Sprintf("SIGSEGV: port I/O to %#x at %#x", exit.Port, v.Regs.RIP)})
		case kvmhv.ExitStopped:
			return
		case kvmhv.ExitFatal:
			t.vm.terminate(exitStatus{signal: int(unix.SIGSEGV), reason: "SIGSEGV: " + exit.Reason})
		}
	}
}

// fault turns a CPU exception into the signal Linux would send, and ends the program with
// it. (Guest signal handlers for synchronous faults are not run.)
func (t *thread) fault(e kvmhv.Exit) {
	sig, what := unix.SIGSEGV, "general protection fault"
	switch e.Vector {
	case kvmhv.VectorDivide:
		sig, what = unix.SIGFPE, "divide error"
	case kvmhv.VectorDebug, kvmhv.VectorBreakpoint:
		sig, what = unix.SIGTRAP, "breakpoint"
	case kvmhv.VectorInvalidOp:
		sig, what = unix.SIGILL, "invalid opcode"
	case kvmhv.VectorX87, kvmhv.VectorSIMD:
		sig, what = unix.SIGFPE, "floating-point exception"
	case kvmhv.VectorAlignment:
		sig, what = unix.SIGBUS, "alignment check"
	case kvmhv.VectorPageFault:
		what = fmt.Sprintf("page fault at %#x (error %#x)", e.Address, e.ErrorCode)
	}
	t.vm.terminate(exitStatus{signal: int(sig), reason: fmt.Sprintf("%s: %s at rip %#x", unix.SignalName(sig), what, t.vcpu.Regs.RIP)})
}
