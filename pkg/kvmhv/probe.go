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
func (s *System) probeSyscall() (SyscallMode, error) {
	vm, err := s.NewVM(Config{Memory: 1 << 20, MaxVCPUs: 1})
	if err != nil {
		return 0, err
	}
	defer vm.Close()
	const code = 0x10000
	if err := vm.Map(code, pageSize, ProtRead|ProtExec); err != nil {
		return 0, err
	}
	// syscall ; ud2
	if err := vm.Poke([]byte{0x0f, 0x05, 0x0f, 0x0b}, code); err != nil {
		return 0, err
	}
	type result struct {
		mode SyscallMode
		err  error
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
		exit, err := v.Run()
		if err != nil {
			ch <- result{err: err}
			return
		}
		mode, err := modeFromExit(exit, v.Regs)
		ch <- result{mode, err}
	}()
	r := <-ch
	return r.mode, r.err
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
