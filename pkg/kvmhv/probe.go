package kvmhv

import (
	"fmt"
	"runtime"
)

// probeSyscall runs a one-instruction guest (`syscall`) once and looks at the privilege
// level at which the supervisor's hypercall arrives: CPL0 on VT-x/AMD-V, CPL3 on kvm_pvm.
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
		if exit.Kind != ExitSyscall {
			ch <- result{err: fmt.Errorf("probe guest exited with %v (%s) vector %d err %#x addr %#x rip %#x, want a syscall", exit.Kind, exit.Reason, exit.Vector, exit.ErrorCode, exit.Address, v.Regs.RIP)}
			return
		}
		var sr sregs
		if err := ioctlPtr(v.fd, kvmGetSregs, &sr); err != nil {
			ch <- result{err: fmt.Errorf("KVM_GET_SREGS: %w", err)}
			return
		}
		ch <- result{mode: modeFromCS(sr.CS.Selector)}
	}()
	r := <-ch
	return r.mode, r.err
}

// modeFromCS interprets the code segment selector at the syscall hypercall.
func modeFromCS(cs uint16) SyscallMode {
	if cs&3 == 3 {
		return SyscallStaysCPL3
	}
	return SyscallEntersCPL0
}
