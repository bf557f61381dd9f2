package kvmhv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ExitKind classifies why Run returned.
type ExitKind int

const (
	// ExitSyscall: the guest executed `syscall`; Regs holds its registers (RAX = number).
	// Finish it with CompleteSyscall.
	ExitSyscall ExitKind = iota + 1
	// ExitException: a CPU exception at CPL3 (Vector, ErrorCode, Address for #PF). Regs
	// holds the user registers at the faulting instruction.
	ExitException
	// ExitPortIO: the guest accessed an I/O port other than the supervisor's hypercall.
	ExitPortIO
	// ExitStopped: Stop was called.
	ExitStopped
	// ExitFatal: the VM cannot continue (triple fault, fault in the supervisor, an
	// instruction KVM could not emulate, failed entry). Reason says which.
	ExitFatal
)

func (k ExitKind) String() string {
	switch k {
	case ExitSyscall:
		return "syscall"
	case ExitException:
		return "exception"
	case ExitPortIO:
		return "port-io"
	case ExitStopped:
		return "stopped"
	case ExitFatal:
		return "fatal"
	}
	return fmt.Sprintf("exit(%d)", int(k))
}

// Exception vectors.
const (
	VectorDivide      = 0
	VectorDebug       = 1
	VectorBreakpoint  = 3
	VectorInvalidOp   = 6
	VectorDoubleFault = 8
	VectorGP          = 13
	VectorPageFault   = 14
	VectorX87         = 16
	VectorAlignment   = 17
	VectorSIMD        = 19
)

// Exit describes why Run returned.
type Exit struct {
	Kind      ExitKind
	Vector    int    // ExitException
	ErrorCode uint64 // ExitException
	Address   uint64 // ExitException: CR2 for a page fault
	Port      uint16 // ExitPortIO
	Reason    string // ExitFatal: what happened
}

// VCPU is one virtual CPU. Its methods must be called from the OS thread that created it
// (runtime.LockOSThread), except Stop and Kick, which any goroutine may call.
type VCPU struct {
	vm  *VM
	id  int
	fd  int
	tid int
	run *runArea

	// Regs are the guest's general-purpose registers after Run returns; changes are
	// written back before the next Run. Owned by the vCPU's thread.
	Regs Regs

	sregs         sregs // user-mode system registers, the source of truth; owned by the thread
	sregsDirty    bool
	pendingReturn bool // a syscall is being completed by the VMM or the stub

	inGuest    atomic.Bool   // between the TLB check and the end of KVM_RUN
	flushedGen atomic.Uint64 // TLB generation this vCPU last flushed to
	stopped    atomic.Bool

	closeOnce sync.Once
}

// NewVCPU creates a vCPU whose first instruction is at rip in user mode with stack rsp.
// The calling goroutine must be locked to its OS thread, which then runs the vCPU.
func (vm *VM) NewVCPU(rip, rsp uint64) (*VCPU, error) {
	vm.vcpuMu.Lock()
	if vm.nextID >= vm.maxVCPUs {
		vm.vcpuMu.Unlock()
		return nil, fmt.Errorf("vCPU limit %d reached", vm.maxVCPUs)
	}
	id := vm.nextID
	vm.nextID++
	vm.vcpuMu.Unlock()

	fd, err := ioctl(vm.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	v := &VCPU{vm: vm, id: id, fd: int(fd), tid: unix.Gettid()}
	unix.CloseOnExec(v.fd)
	if err := v.init(rip, rsp); err != nil {
		v.close()
		return nil, err
	}
	vm.vcpuMu.Lock()
	vm.vcpus = append(vm.vcpus, v)
	vm.vcpuMu.Unlock()
	// A vCPU created after a shootdown has nothing stale to flush.
	v.flushedGen.Store(vm.tlbGen.Load())
	return v, nil
}

func (v *VCPU) init(rip, rsp uint64) error {
	var err error
	if v.run, err = mapRunArea(v.fd, v.vm.sys.vcpuMmap); err != nil {
		return err
	}
	if err := ioctlPtr(v.fd, kvmSetCPUID2, v.vm.sys.cpuid); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2: %w", err)
	}
	s := &v.sregs
	s.CR0 = cr0PE | cr0MP | cr0ET | cr0NE | cr0WP | cr0AM | cr0PG
	s.CR3 = v.vm.as.pml4
	s.CR4 = cr4PAE | cr4OSFXSR | cr4OSXMMEXCPT
	if v.vm.sys.hasXCRS {
		s.CR4 |= cr4OSXSAVE
	}
	s.EFER = eferLME | eferLMA | eferNXE | eferSCE
	s.GDT = dtable{Base: SupervisorBase + gdtGPA, Limit: uint16((gdtFixed+2*v.vm.maxVCPUs)*8 - 1)}
	s.IDT = dtable{Base: SupervisorBase + idtGPA, Limit: idtVectors*16 - 1}
	s.TR = segment{Base: uint64(SupervisorBase + tssGPA + tssStride*uint64(v.id)), Limit: tssLimit,
		Selector: uint16(tssSel0 + 16*v.id), Type: 11, Present: 1}
	s.LDT = segment{Unusable: 1, Type: 2, Present: 1}
	s.CS = segment{Limit: 0xffffffff, Selector: userCS, Type: 11, Present: 1, DPL: 3, S: 1, L: 1, G: 1}
	data := segment{Limit: 0xffffffff, Selector: userSS, Type: 3, Present: 1, DPL: 3, DB: 1, S: 1, G: 1}
	s.SS, s.DS, s.ES, s.FS, s.GS = data, data, data, data, data
	if err := ioctlPtr(v.fd, kvmSetSregs, s); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	m := msrs{NMSRs: 6}
	m.Entries[0] = msrEntry{Index: msrSTAR, Data: uint64(kernelSS)<<48 | uint64(kernelCS)<<32}
	m.Entries[1] = msrEntry{Index: msrLSTAR, Data: SupervisorBase + codeGPA}
	m.Entries[2] = msrEntry{Index: msrSFMASK, Data: 0x47700} // TF, DF, IF, IOPL, NT, AC
	m.Entries[3] = msrEntry{Index: msrCSTAR, Data: SupervisorBase + codeGPA}
	m.Entries[4] = msrEntry{Index: msrKernelGSBase}
	m.Entries[5] = msrEntry{Index: msrGSBase}
	if n, err := ioctlPtrN(v.fd, kvmSetMSRs, &m); err != nil || n != uintptr(m.NMSRs) {
		return fmt.Errorf("KVM_SET_MSRS: set %d of %d: %v", n, m.NMSRs, err)
	}
	if v.vm.sys.hasXCRS {
		x := xcrs{NrXCRs: 1}
		x.XCRs[0] = xcr{XCR: 0, Value: v.vm.sys.xcr0()}
		if err := ioctlPtr(v.fd, kvmSetXCRS, &x); err != nil {
			return fmt.Errorf("KVM_SET_XCRS: %w", err)
		}
	}
	v.Regs = Regs{RIP: rip, RSP: rsp, RFLAGS: 0x202}
	if err := ioctlPtr(v.fd, kvmSetRegs, &v.Regs); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

// xcr0 is the XSAVE feature mask for guests: x87, SSE, AVX and AVX-512 state, as far as
// KVM supports them (CPUID leaf 0xD, sub-leaf 0).
func (s *System) xcr0() uint64 {
	for _, e := range s.cpuid.Entries[:s.cpuid.NEnt] {
		if e.Function == 0xd && e.Index == 0 {
			return (uint64(e.EDX)<<32 | uint64(e.EAX)) & 0xe7
		}
	}
	return 0x3
}

// ID is the vCPU's index in its VM.
func (v *VCPU) ID() int { return v.id }

// SetFSBase sets the FS segment base (arch_prctl ARCH_SET_FS) for the next Run.
func (v *VCPU) SetFSBase(base uint64) {
	v.sregs.FS.Base = base
	v.sregsDirty = true
}

// FSBase returns the FS segment base.
func (v *VCPU) FSBase() uint64 { return v.sregs.FS.Base }

// FPUState is the floating-point and vector register state of a vCPU: x87, SSE with
// MXCSR, AVX and what else the guest's XCR0 enables, from KVM_GET_XSAVE; where the host
// lacks KVM_CAP_XSAVE (a processor without XSAVE), the x87 and SSE registers of
// KVM_GET_FPU, without MXCSR. (KVM_SET_FPU is no use where KVM keeps an XSAVE area: it
// does not mark the x87 and SSE state in use, which then load as initial values.)
type FPUState struct {
	xsave *xsaveArea
	fpu   *fpuRegs
}

// FPUState returns the vCPU's floating-point and vector registers.
func (v *VCPU) FPUState() (FPUState, error) {
	if v.vm.sys.hasXSave {
		x := new(xsaveArea)
		if err := ioctlPtr(v.fd, kvmGetXSave, x); err != nil {
			return FPUState{}, fmt.Errorf("KVM_GET_XSAVE: %w", err)
		}
		return FPUState{xsave: x}, nil
	}
	f := new(fpuRegs)
	if err := ioctlPtr(v.fd, kvmGetFPU, f); err != nil {
		return FPUState{}, fmt.Errorf("KVM_GET_FPU: %w", err)
	}
	return FPUState{fpu: f}, nil
}

// SetFPUState sets the vCPU's floating-point and vector registers to st, which FPUState
// returned for a vCPU of the same System.
func (v *VCPU) SetFPUState(st FPUState) error {
	switch {
	case st.xsave != nil:
		if err := ioctlPtr(v.fd, kvmSetXSave, st.xsave); err != nil {
			return fmt.Errorf("KVM_SET_XSAVE: %w", err)
		}
	case st.fpu != nil:
		if err := ioctlPtr(v.fd, kvmSetFPU, st.fpu); err != nil {
			return fmt.Errorf("KVM_SET_FPU: %w", err)
		}
	default:
		return errors.New("set FPU state: no state")
	}
	return nil
}

// CompleteSyscall finishes the system call Run returned with result in RAX.
func (v *VCPU) CompleteSyscall(result uint64) {
	v.Regs.RAX = result
	v.pendingReturn = true
}

// ReturnToUser makes the next Run resume user mode with Regs as they are (after an
// exception, or to enter a signal handler).
func (v *VCPU) ReturnToUser() {
	v.pendingReturn = false
	v.sregsDirty = true
}

// Stop makes Run return ExitStopped as soon as possible, now and at every later call.
func (v *VCPU) Stop() {
	v.stopped.Store(true)
	v.kick()
}

// Kick interrupts KVM_RUN on the vCPU's thread so Run re-checks its state.
func (v *VCPU) kick() {
	v.run.setImmediateExit(true)
	_ = unix.Tgkill(os.Getpid(), v.tid, unix.SIGURG) // Go's runtime ignores a spurious SIGURG
}

// flushTLB drops the vCPU's cached translations by switching CR3 between the two copies
// of the root table: KVM reloads the MMU context for a new CR3.
func (v *VCPU) flushTLB() {
	if v.sregs.CR3 == v.vm.as.pml4 {
		v.sregs.CR3 = v.vm.as.pml4Alt
	} else {
		v.sregs.CR3 = v.vm.as.pml4
	}
	v.sregsDirty = true
}

// userReturn prepares the registers for a VMM-completed system call: what sysretq does.
func userReturn(r *Regs) {
	r.RIP = r.RCX
	// SYSRET: RFLAGS = R11 & 0x3C7FD7 | 2; IOPL and TF are not the program's to set here.
	r.RFLAGS = r.R11&0x3C7FD7&^0x3100 | 0x202
}

// finishSyscall prepares the registers of a vCPU stopped at the syscall stub's hypercall
// for the return of a call the VMM completed, and reports whether the system registers
// must be written before it runs again. sregsNeeded says they must be anyway (a new FS
// base, a TLB flush).
//
// Where `syscall` stays at CPL3 (kvm_pvm) the vCPU is at CPL3 in the stub, so the VMM does
// what sysretq would: RIP from RCX, RFLAGS from R11. Where it enters CPL0 (VT-x/AMD-V) the
// stub's own sysretq returns, unless the system registers must be rewritten: writing them
// with the program's CPL3 segments would leave the vCPU at CPL3 in the stub, so then the
// VMM finishes the return itself and enters the program directly.
func finishSyscall(mode SyscallMode, r *Regs, sregsNeeded bool) (writeSregs bool) {
	switch {
	case mode == SyscallStaysCPL3:
		userReturn(r)
		return sregsNeeded
	case sregsNeeded:
		userReturn(r)
		return true
	}
	return false // RIP stays at the stub's sysretq
}

// canonical reports whether a is a canonical user address sysretq may return to.
func canonical(a uint64) bool { return a < UserLimit }

// Run runs the vCPU until the guest needs the VMM.
func (v *VCPU) Run() (Exit, error) {
	for {
		if v.stopped.Load() {
			return Exit{Kind: ExitStopped}, nil
		}
		if v.pendingReturn {
			v.pendingReturn = false
			if !canonical(v.Regs.RCX) {
				return Exit{Kind: ExitException, Vector: VectorGP}, nil
			}
			v.sregsDirty = finishSyscall(v.vm.sys.mode, &v.Regs, v.sregsDirty || v.flushedGen.Load() < v.vm.tlbGen.Load())
		}
		v.inGuest.Store(true)
		if g := v.vm.tlbGen.Load(); v.flushedGen.Load() < g {
			v.flushTLB()
			v.flushedGen.Store(g)
		}
		if err := v.runOnce(); err != nil {
			v.inGuest.Store(false)
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				// Kicked, or a signal for this thread: re-check the state.
				v.run.setImmediateExit(false)
				continue
			}
			return Exit{}, err
		}
		v.inGuest.Store(false)
		exit, again, err := v.decode()
		if err != nil || !again {
			return exit, err
		}
	}
}

// runOnce writes the registers that changed, enters the guest with one KVM_RUN and reads
// the registers back. With KVM_CAP_SYNC_REGS the registers travel in kvm_run and KVM_RUN
// is the only ioctl of an exit; otherwise KVM_SET_SREGS (when needed), KVM_SET_REGS and
// KVM_GET_REGS surround it. Registers are read back also when KVM_RUN was interrupted.
func (v *VCPU) runOnce() error {
	sys := v.vm.sys
	var runErr error
	if sys.syncRegs {
		sync := v.run.sync()
		sync.ValidRegs = syncX86Regs
		sync.Regs = v.Regs
		sync.DirtyRegs = syncX86Regs
		if v.sregsDirty {
			sync.Sregs = v.sregs
			sync.DirtyRegs |= syncX86Sregs
		}
		_, runErr = ioctl(v.fd, kvmRun, 0)
		if runErr != nil && !errors.Is(runErr, unix.EINTR) && !errors.Is(runErr, unix.EAGAIN) {
			return fmt.Errorf("KVM_RUN: %w", runErr)
		}
		if sync.DirtyRegs != 0 {
			// KVM clears the bits of what it loaded; an interrupted KVM_RUN may not have
			// got that far, and then v.Regs still holds the registers.
			if runErr != nil {
				return runErr
			}
			return fmt.Errorf("KVM_RUN did not load the registers (dirty %#x)", sync.DirtyRegs)
		}
		v.sregsDirty = false
		v.Regs = sync.Regs
		return runErr
	}
	if v.sregsDirty {
		if err := ioctlPtr(v.fd, kvmSetSregs, &v.sregs); err != nil {
			return fmt.Errorf("KVM_SET_SREGS: %w", err)
		}
		v.sregsDirty = false
	}
	if err := ioctlPtr(v.fd, kvmSetRegs, &v.Regs); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	_, runErr = ioctl(v.fd, kvmRun, 0)
	if runErr != nil && !errors.Is(runErr, unix.EINTR) && !errors.Is(runErr, unix.EAGAIN) {
		return fmt.Errorf("KVM_RUN: %w", runErr)
	}
	if err := ioctlPtr(v.fd, kvmGetRegs, &v.Regs); err != nil {
		return fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	return runErr
}

// decode classifies the exit in kvm_run.
func (v *VCPU) decode() (exit Exit, again bool, err error) {
	h := v.run.header()
	switch h.ExitReason {
	case exitIO:
		io := runUnion[runIO](v.run)
		code := uint64(SupervisorBase + codeGPA)
		switch {
		case io.Port == portSyscall && v.Regs.RIP == code+syscallExitOffset:
			return Exit{Kind: ExitSyscall}, false, nil
		case io.Port >= portException && io.Port < portException+idtVectors:
			vec := int(io.Port - portException)
			_, off := exceptionStub(vec)
			if v.Regs.RIP == code+excStubBase+uint64(excStubSize*vec)+uint64(off) {
				return v.exception(vec)
			}
		}
		return Exit{Kind: ExitPortIO, Port: io.Port}, false, nil
	case exitIntr:
		return Exit{}, true, nil
	case exitShutdown:
		return Exit{Kind: ExitFatal, Reason: "triple fault"}, false, nil
	case exitHLT:
		return Exit{Kind: ExitFatal, Reason: "halt"}, false, nil
	case exitInternalError:
		in := runUnion[runInternal](v.run)
		return Exit{Kind: ExitFatal, Reason: fmt.Sprintf("KVM internal error (suberror %d)", in.Suberror)}, false, nil
	case exitFailEntry:
		fe := runUnion[runFailEntry](v.run)
		return Exit{Kind: ExitFatal, Reason: fmt.Sprintf("VM entry failed (reason %#x)", fe.HardwareEntryFailureReason)}, false, nil
	case exitMMIO:
		return Exit{Kind: ExitFatal, Reason: "access to unbacked guest-physical memory"}, false, nil
	}
	return Exit{Kind: ExitFatal, Reason: fmt.Sprintf("unexpected KVM exit %d", h.ExitReason)}, false, nil
}

// exception reads the frame the CPU pushed on the exception stack:
// [error code, RIP, CS, RFLAGS, RSP, SS] (the stub pushed 0 where the CPU did not).
func (v *VCPU) exception(vec int) (Exit, bool, error) {
	rsp := v.Regs.RSP
	lo := uint64(SupervisorBase + stackGPA)
	hi := uint64(SupervisorBase + stackGPA + pageSize*uint64(v.vm.maxVCPUs))
	if rsp < lo || rsp+48 > hi {
		return Exit{Kind: ExitFatal, Reason: fmt.Sprintf("exception %d with supervisor stack at %#x", vec, rsp)}, false, nil
	}
	f := v.vm.mem.mem[rsp-SupervisorBase : rsp-SupervisorBase+48]
	word := func(i int) uint64 { return binary.LittleEndian.Uint64(f[8*i:]) }
	errCode, rip, cs, rflags, ursp := word(0), word(1), word(2), word(3), word(4)
	if cs&3 != 3 {
		return Exit{Kind: ExitFatal, Reason: fmt.Sprintf("exception %d in supervisor code at %#x", vec, rip)}, false, nil
	}
	exit := Exit{Kind: ExitException, Vector: vec, ErrorCode: errCode}
	if vec == VectorPageFault {
		var s sregs
		if err := ioctlPtr(v.fd, kvmGetSregs, &s); err != nil {
			return Exit{}, false, fmt.Errorf("KVM_GET_SREGS: %w", err)
		}
		exit.Address = s.CR2
	}
	v.Regs.RIP, v.Regs.RFLAGS, v.Regs.RSP = rip, rflags, ursp
	// Until told otherwise the vCPU resumes in user mode at the faulting instruction.
	v.sregsDirty = true
	return exit, false, nil
}

// close releases the vCPU's file descriptor and run area.
func (v *VCPU) close() error {
	var err error
	v.closeOnce.Do(func() {
		if v.run != nil {
			err = v.run.unmap()
		}
		err = errors.Join(err, unix.Close(v.fd))
	})
	return err
}
