package kvmhv

import (
	"fmt"
	"runtime"
)

// probeSyscall runs a one-instruction guest (`syscall`) once and sees where the call
// arrives. The probe VM is made before the mode is known, so its supervisor code page is
// mapped for CPL0 only. On VT-x/AMD-V `syscall` enters CPL0 at MSR_LSTAR and the syscall
// stub's hypercall exits to the VMM. On kvm_pvm it jumps to MSR_LSTAR but stays at CPL3, so
// fetching the stub faults with a user-mode page fault at exactly that address.
//
// The guest reads its time-stamp counter with `rdtsc` first, and the VMM reads the vCPU's
// IA32_TIME_STAMP_COUNTER before and after the run: tscWhy is "" when the guest's value lies
// between the two, and says what went wrong otherwise (see GuestTSC).
func (s *System) probeSyscall() (mode SyscallMode, tscWhy string, err error) {
	vm, err := s.NewVM(Config{Memory: 1 << 20, MaxVCPUs: 1})
	if err != nil {
		return 0, "", err
	}
	defer vm.Close()
	const code = 0x10000
	if err := vm.Map(code, pageSize, ProtRead|ProtExec); err != nil {
		return 0, "", err
	}
	// rdtsc ; syscall ; ud2
	if err := vm.Poke([]byte{0x0f, 0x31, 0x0f, 0x05, 0x0f, 0x0b}, code); err != nil {
		return 0, "", err
	}
	type result struct {
		mode   SyscallMode
		tscWhy string
		err    error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		v, err := vm.NewVCPU(code, 0)
		if err != nil {
			ch <- result{err: err}
			return
		}
		before, berr := v.readTSC()
		exit, err := v.Run()
		if err != nil {
			ch <- result{err: err}
			return
		}
		after, aerr := v.readTSC()
		mode, err := modeFromExit(exit, v.Regs)
		var why string
		switch {
		case berr != nil:
			why = berr.Error()
		case aerr != nil:
			why = aerr.Error()
		default:
			why = probeTSCReason(before, v.Regs.RDX<<32|v.Regs.RAX&0xffffffff, after)
		}
		ch <- result{mode, why, err}
	}()
	r := <-ch
	return r.mode, r.tscWhy, r.err
}

// modeFromExit interprets the exit of the probe guest and its registers.
func modeFromExit(exit Exit, regs Regs) (SyscallMode, error) {
	stub := SupervisorBase + codeGPA
	switch {
	case exit.Kind == ExitSyscall && regs.RIP == stub+syscallExitOffset:
		return SyscallEntersCPL0, nil
	case exit.Kind == ExitException && exit.Vector == VectorPageFault && exit.Address == stub &&
		regs.RIP == stub && exit.ErrorCode&pfUser != 0:
		return SyscallStaysCPL3, nil
	}
	return 0, fmt.Errorf("%w: the probe guest's syscall ended in %v (%s), vector %d, error %#x, address %#x, rip %#x",
		ErrUnsupportedHost, exit.Kind, exit.Reason, exit.Vector, exit.ErrorCode, exit.Address, regs.RIP)
}

// pfUser is the page-fault error code bit for an access made at CPL3.
const pfUser = 1 << 2
