package microvm

import (
	"crypto/rand"
	"encoding/binary"
	"math"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/guestfs"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

func (t *thread) mmap(addr, length, protBits uint64, flags, fd int, off uint64) (uint64, unix.Errno) {
	prot, ok := protFromLinux(protBits)
	if !ok {
		return 0, unix.EINVAL
	}
	if off%pageSize != 0 {
		return 0, unix.EINVAL
	}
	typ := flags & unix.MAP_TYPE
	if typ != unix.MAP_PRIVATE && typ != unix.MAP_SHARED && typ != unix.MAP_SHARED_VALIDATE {
		return 0, unix.EINVAL
	}
	if flags&unix.MAP_ANONYMOUS != 0 {
		// One process: shared anonymous memory is private memory.
		return t.vm.mm.mmap(addr, length, prot, flags, nil)
	}
	o, e := t.file(fd)
	if e != 0 {
		return 0, e
	}
	defer o.unref()
	ff, ok := o.file.(*fsFile)
	if !ok {
		return 0, unix.ENODEV
	}
	if accessMode(o.flags) == unix.O_WRONLY {
		return 0, unix.EACCES
	}
	if typ != unix.MAP_PRIVATE && prot&kvmhv.ProtWrite != 0 {
		// Writable shared file mappings would need write-back to the file.
		return 0, unix.ENODEV
	}
	// A private mapping is the program's own copy; so is a read-only shared one, since
	// nothing can write the file (image files are read-only; other files are copied at
	// mmap time). Files of the image are mapped from the image file copy-on-write.
	src := &fileSource{off: off, readAt: ff.f.ReadAt}
	if host, hostOff, size, ok := guestfs.ImageExtent(ff.f); ok && off <= math.MaxInt64 {
		src.host, src.hostOff, src.size = host, hostOff, size
	}
	return t.vm.mm.mmap(addr, length, prot, flags, src)
}

// taskSizeMax is Linux's TASK_SIZE_MAX on x86-64 (4-level paging): an FS base must be
// below it.
const taskSizeMax = kvmhv.UserLimit - pageSize

const (
	archSetGS = 0x1001
	archSetFS = 0x1002
	archGetFS = 0x1003
	archGetGS = 0x1004
)

func (t *thread) archPrctl(v *kvmhv.VCPU, code, addr uint64) (uint64, unix.Errno) {
	switch code {
	case archSetFS:
		if addr >= taskSizeMax {
			return 0, unix.EPERM
		}
		v.SetFSBase(addr)
		return 0, 0
	case archGetFS:
		return 0, t.writeU64(addr, v.FSBase())
	}
	return 0, unix.EINVAL
}

// Thread clone flags a thread needs; anything without CLONE_VM|CLONE_THREAD would be a new
// process, which the personality does not provide: dispatch leaves such a clone unhandled,
// so that it fails with ENOSYS and is counted once, in Stats.Denied.
const threadFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD

// clone starts a thread; flags has every bit of threadFlags.
//
// As Linux does, the new thread's ID is stored at ptid (CLONE_PARENT_SETTID) and then at
// ctid (CLONE_CHILD_SETTID) before the new thread runs its first instruction, and a bad
// pointer there is ignored, not an error: glibc points both and CLONE_CHILD_CLEARTID at
// the same word, which pthread_join waits on, so a thread that ended before a late store
// would leave its ID there for ever.
func (t *thread) clone(v *kvmhv.VCPU, flags, stack, ptid, ctid, tls uint64) (uint64, unix.Errno) {
	const known = threadFlags | unix.CLONE_SYSVSEM | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID |
		unix.CLONE_CHILD_SETTID | unix.CLONE_CHILD_CLEARTID | unix.CLONE_DETACHED
	if flags&^known != 0 {
		return 0, unix.EINVAL
	}
	fs := v.FSBase()
	if flags&unix.CLONE_SETTLS != 0 {
		if tls >= taskSizeMax {
			return 0, unix.EPERM // as arch_prctl(ARCH_SET_FS)
		}
		fs = tls
	}
	regs := v.Regs
	regs.RAX = 0
	regs.RIP = regs.RCX
	regs.RFLAGS = regs.R11&0x3C7FD7&^0x3100 | 0x202
	if stack != 0 {
		regs.RSP = stack
	}
	// The new thread starts with the x87 and SSE state of its parent, as on Linux, not
	// with that of a thread that ran on its vCPU before.
	fpu, err := v.FPUState()
	if err != nil {
		return 0, unix.EAGAIN
	}
	sigmask := t.sigmask
	child, err := t.vm.startThread(regs, func(c *thread, cv *kvmhv.VCPU) error {
		// This runs before the child's first KVM_RUN, and clone returns after it.
		if err := cv.SetFPUState(fpu); err != nil {
			return err
		}
		cv.SetFSBase(fs)
		c.sigmask = sigmask
		if flags&unix.CLONE_PARENT_SETTID != 0 {
			c.writeU32(ptid, uint32(c.tid))
		}
		if flags&unix.CLONE_CHILD_SETTID != 0 {
			c.writeU32(ctid, uint32(c.tid))
		}
		if flags&unix.CLONE_CHILD_CLEARTID != 0 {
			c.clearTID = ctid
		}
		return nil
	})
	if err != nil {
		return 0, unix.EAGAIN
	}
	return uint64(child.tid), 0
}

// exitThread finishes the exit(2) of a thread, on its OS thread after its loop has ended.
// The last thread's exit ends the program. Otherwise park offers the thread's vCPU to the
// next thread before the exit shows at the thread's CLONE_CHILD_CLEARTID word, so that a
// program that joins a thread and then starts another finds a vCPU.
func (t *thread) exitThread(park func()) {
	t.vm.stats.retire(t)
	if t.vm.removeThread(t) {
		t.vm.terminate(exitStatus{code: t.exitCode})
		return
	}
	park()
	if t.clearTID != 0 {
		t.writeU32(t.clearTID, 0)
		t.vm.futex.wake(t.clearTID, 1, ^uint32(0))
	}
}

// Futex operations.
const (
	futexWait          = 0
	futexWake          = 1
	futexRequeue       = 3
	futexCmpRequeue    = 4
	futexWakeOp        = 5
	futexWaitBitset    = 9
	futexWakeBitset    = 10
	futexPrivateFlag   = 128
	futexClockRealtime = 256
)

func (t *thread) futex(a args) (uint64, unix.Errno) {
	addr, op, val, tsArg := a[0], int(a[1]), uint32(a[2]), a[3]
	cmd := op &^ (futexPrivateFlag | futexClockRealtime)
	switch cmd {
	case futexWait, futexWaitBitset:
		bitset := ^uint32(0)
		if cmd == futexWaitBitset {
			bitset = uint32(a[5])
		}
		var deadline time.Time
		if tsArg != 0 {
			sec, nsec, e := t.readTimespec(tsArg)
			if e != 0 {
				return 0, e
			}
			d := timespecDuration(sec, nsec)
			if cmd == futexWait {
				deadline = time.Now().Add(d) // relative
			} else if op&futexClockRealtime != 0 {
				deadline = time.Unix(sec, nsec)
			} else {
				deadline = time.Now().Add(d - monotonicNow())
			}
		}
		return 0, t.vm.futex.wait(t.vm, addr, val, bitset, deadline)
	case futexWake, futexWakeBitset:
		bitset := ^uint32(0)
		if cmd == futexWakeBitset {
			bitset = uint32(a[5])
		}
		return uint64(t.vm.futex.wake(addr, int(min(val, 1<<30)), bitset)), 0
	case futexRequeue, futexCmpRequeue:
		if cmd == futexCmpRequeue {
			var b [4]byte
			if _, err := t.vm.hv.ReadAt(b[:], addr); err != nil {
				return 0, unix.EFAULT
			}
			if binary.LittleEndian.Uint32(b[:]) != uint32(a[5]) {
				return 0, unix.EAGAIN
			}
		}
		return uint64(t.vm.futex.requeue(addr, a[4], int(min(val, 1<<30)), int(min(tsArg, 1<<30)))), 0
	}
	return 0, unix.ENOSYS
}

// monotonicNow is CLOCK_MONOTONIC as a duration.
func monotonicNow() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

func (t *thread) schedGetaffinity(size, mask uint64) (uint64, unix.Errno) {
	if size < 8 || size%8 != 0 {
		return 0, unix.EINVAL
	}
	cpus := min(t.vm.cfg.MaxVCPUs, 2)
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, 1<<cpus-1)
	return 8, t.writeMem(mask, b)
}

// sigaction mirrors struct kernel_sigaction (x86-64).
type sigaction struct {
	handler, flags, restorer, mask uint64
}

const (
	ssDisable   = 2  // stack_t.ss_flags: no alternate stack
	rlimNLimits = 16 // RLIM_NLIMITS
	sigDfl      = 0
	sigIgn      = 1
)

func (t *thread) rtSigaction(sig int, act, oact, size uint64) unix.Errno {
	if sig < 1 || sig > 64 || size != 8 {
		return unix.EINVAL
	}
	if act != 0 && (sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP)) {
		return unix.EINVAL
	}
	var newAct sigaction
	if act != 0 {
		b, e := t.readMem(act, 32)
		if e != 0 {
			return e
		}
		le := binary.LittleEndian
		newAct = sigaction{le.Uint64(b), le.Uint64(b[8:]), le.Uint64(b[16:]), le.Uint64(b[24:])}
	}
	t.vm.sigMu.Lock()
	old := t.vm.sigactions[sig]
	if act != 0 {
		t.vm.sigactions[sig] = newAct
	}
	t.vm.sigMu.Unlock()
	if oact != 0 {
		b := make([]byte, 32)
		le := binary.LittleEndian
		le.PutUint64(b, old.handler)
		le.PutUint64(b[8:], old.flags)
		le.PutUint64(b[16:], old.restorer)
		le.PutUint64(b[24:], old.mask)
		return t.writeMem(oact, b)
	}
	return 0
}

func (t *thread) rtSigprocmask(how int, set, oset, size uint64) unix.Errno {
	if size != 8 {
		return unix.EINVAL
	}
	old := t.sigmask
	if set != 0 {
		s, e := t.readU64(set)
		if e != 0 {
			return e
		}
		s &^= 1<<(unix.SIGKILL-1) | 1<<(unix.SIGSTOP-1)
		switch how {
		case unix.SIG_BLOCK:
			t.sigmask |= s
		case unix.SIG_UNBLOCK:
			t.sigmask &^= s
		case unix.SIG_SETMASK:
			t.sigmask = s
		default:
			return unix.EINVAL
		}
	}
	if oset != 0 {
		return t.writeU64(oset, old)
	}
	return 0
}

func (t *thread) sigaltstack(ss, oss uint64) unix.Errno {
	old := t.altstack
	if ss != 0 {
		b, e := t.readMem(ss, 24)
		if e != 0 {
			return e
		}
		le := binary.LittleEndian
		t.altstack = [3]uint64{le.Uint64(b), uint64(le.Uint32(b[8:])), le.Uint64(b[16:])}
	}
	if oss != 0 {
		b := make([]byte, 24)
		le := binary.LittleEndian
		le.PutUint64(b, old[0])
		le.PutUint32(b[8:], uint32(old[1]))
		le.PutUint64(b[16:], old[2])
		if old[2] == 0 {
			le.PutUint32(b[8:], ssDisable)
		}
		return t.writeMem(oss, b)
	}
	return 0
}

// kill sends sig to the guest process or one of its threads. Signal handlers are not run:
// a signal whose disposition is to terminate ends the program with it; one that is
// ignored, caught or blocked is counted and dropped (Go's preemption requests, SIGURG,
// are the common case).
func (t *thread) kill(pid, tid, sig int) unix.Errno {
	if pid != guestPID && pid != 0 && pid != -1 {
		return unix.ESRCH
	}
	if tid != 0 {
		t.vm.threadMu.Lock()
		_, ok := t.vm.threads[tid]
		t.vm.threadMu.Unlock()
		if !ok {
			return unix.ESRCH
		}
	}
	if sig < 0 || sig > 64 {
		return unix.EINVAL
	}
	if sig == 0 {
		return 0
	}
	t.vm.sigMu.Lock()
	act := t.vm.sigactions[sig]
	t.vm.sigMu.Unlock()
	caught := act.handler != sigDfl
	if sig == int(unix.SIGKILL) || !caught && defaultTerminates(unix.Signal(sig)) {
		t.exited.Store(true)
		t.vm.terminate(exitStatus{signal: sig, reason: unix.SignalName(unix.Signal(sig)) + ": sent by the program to itself"})
		return 0
	}
	t.vm.stats.droppedSignal()
	return 0
}

func defaultTerminates(s unix.Signal) bool {
	switch s {
	case unix.SIGCHLD, unix.SIGURG, unix.SIGWINCH, unix.SIGCONT, unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU:
		return false
	}
	return true
}

func (t *thread) clockGettime(clk int, addr uint64) unix.Errno {
	var ts unix.Timespec
	switch clk {
	case unix.CLOCK_REALTIME, unix.CLOCK_MONOTONIC, unix.CLOCK_MONOTONIC_RAW, unix.CLOCK_REALTIME_COARSE,
		unix.CLOCK_MONOTONIC_COARSE, unix.CLOCK_BOOTTIME, unix.CLOCK_THREAD_CPUTIME_ID:
		// The vCPU runs on this OS thread, so its CPU clock is the guest thread's.
		if err := unix.ClockGettime(int32(clk), &ts); err != nil {
			return unix.EINVAL
		}
	case unix.CLOCK_PROCESS_CPUTIME_ID:
		ts = unix.NsecToTimespec(int64(t.vm.cpuTime()))
	default:
		return unix.EINVAL
	}
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, uint64(ts.Sec))
	binary.LittleEndian.PutUint64(b[8:], uint64(ts.Nsec))
	return t.writeMem(addr, b)
}

func (t *thread) clockGetres(clk int, addr uint64) unix.Errno {
	if clk < 0 || clk > unix.CLOCK_BOOTTIME {
		return unix.EINVAL
	}
	if addr == 0 {
		return 0
	}
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b[8:], 1)
	return t.writeMem(addr, b)
}

func (t *thread) gettimeofday(addr uint64) unix.Errno {
	if addr == 0 {
		return 0
	}
	now := time.Now()
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, uint64(now.Unix()))
	binary.LittleEndian.PutUint64(b[8:], uint64(now.Nanosecond()/1000))
	return t.writeMem(addr, b)
}

func (t *thread) time(addr uint64) (uint64, unix.Errno) {
	now := uint64(time.Now().Unix())
	if addr != 0 {
		if e := t.writeU64(addr, now); e != 0 {
			return 0, e
		}
	}
	return now, 0
}

func (t *thread) nanosleep(clk, flags int, req uint64) unix.Errno {
	sec, nsec, e := t.readTimespec(req)
	if e != 0 {
		return e
	}
	var deadline time.Time
	d := timespecDuration(sec, nsec)
	switch {
	case flags&unix.TIMER_ABSTIME == 0:
		deadline = time.Now().Add(d)
	case clk == unix.CLOCK_REALTIME:
		deadline = time.Unix(sec, nsec)
	default:
		deadline = time.Now().Add(d - monotonicNow())
	}
	if e := t.vm.block(nil, deadline); e == unix.EINTR {
		return unix.EINTR
	}
	return 0
}

func (t *thread) getres(a, b, c uint64) unix.Errno {
	for _, p := range []uint64{a, b, c} {
		if e := t.writeU32(p, guestUID); e != 0 {
			return e
		}
	}
	return 0
}

func (t *thread) uname(addr uint64) unix.Errno {
	b := make([]byte, 65*6)
	for i, s := range []string{"Linux", "isolator", "6.1.0-isolator", "#1 SMP PREEMPT_DYNAMIC", "x86_64", "(none)"} {
		copy(b[65*i:], s)
	}
	return t.writeMem(addr, b)
}

func (t *thread) getrandom(addr, n uint64, flags uint) (uint64, unix.Errno) {
	if flags&^uint(unix.GRND_NONBLOCK|unix.GRND_RANDOM|unix.GRND_INSECURE) != 0 {
		return 0, unix.EINVAL
	}
	n = min(n, 1<<25)
	b := make([]byte, n)
	rand.Read(b)
	return n, t.writeMem(addr, b)
}

func (t *thread) prlimit(pid, resource int, newLimit, oldLimit uint64) unix.Errno {
	if pid != 0 && pid != guestPID {
		return unix.ESRCH
	}
	if newLimit != 0 {
		return unix.EPERM
	}
	inf := ^uint64(0)
	cur, mx := inf, inf
	switch resource {
	case unix.RLIMIT_STACK:
		cur = stackSize
	case unix.RLIMIT_NOFILE:
		cur, mx = maxFDs, maxFDs
	case unix.RLIMIT_AS, unix.RLIMIT_DATA:
		cur, mx = uint64(t.vm.cfg.Memory), uint64(t.vm.cfg.Memory)
	case unix.RLIMIT_NPROC:
		cur, mx = uint64(t.vm.cfg.MaxVCPUs), uint64(t.vm.cfg.MaxVCPUs)
	case unix.RLIMIT_CORE:
		cur, mx = 0, 0
	default:
		if resource < 0 || resource >= rlimNLimits {
			return unix.EINVAL
		}
	}
	if oldLimit != 0 {
		b := make([]byte, 16)
		binary.LittleEndian.PutUint64(b, cur)
		binary.LittleEndian.PutUint64(b[8:], mx)
		return t.writeMem(oldLimit, b)
	}
	return 0
}

func (t *thread) getrusage(addr uint64) unix.Errno {
	b := make([]byte, 144)
	cpu := t.vm.cpuTime()
	binary.LittleEndian.PutUint64(b, uint64(cpu/time.Second))
	binary.LittleEndian.PutUint64(b[8:], uint64(cpu%time.Second/time.Microsecond))
	return t.writeMem(addr, b)
}

func (t *thread) sysinfo(addr uint64) unix.Errno {
	b := make([]byte, 112)
	le := binary.LittleEndian
	le.PutUint64(b, uint64(time.Since(t.vm.start)/time.Second))
	le.PutUint64(b[32:], uint64(t.vm.cfg.Memory))
	used, _ := t.vm.hv.MemoryStats()
	le.PutUint64(b[40:], uint64(t.vm.cfg.Memory-used))
	t.vm.threadMu.Lock()
	le.PutUint16(b[80:], uint16(len(t.vm.threads)))
	t.vm.threadMu.Unlock()
	le.PutUint32(b[104:], 1)
	return t.writeMem(addr, b)
}

func (t *thread) prctl(option int, arg uint64) (uint64, unix.Errno) {
	switch option {
	case unix.PR_SET_NAME, unix.PR_SET_PDEATHSIG, unix.PR_SET_NO_NEW_PRIVS:
		return 0, 0
	case unix.PR_GET_NAME:
		return 0, t.writeMem(arg, append([]byte("guest"), make([]byte, 11)...))
	case unix.PR_GET_NO_NEW_PRIVS:
		return 1, 0
	}
	return 0, unix.EINVAL
}
