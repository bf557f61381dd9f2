package kvmhv

import "testing"

// BenchmarkSyscallRoundTrip measures one guest system call completed by the VMM: the
// guest loops `mov eax, 39; syscall`, and each iteration is one exit, served with
// CompleteSyscall.
func BenchmarkSyscallRoundTrip(b *testing.B) {
	code := cat(movEAX(39), asmSyscall, []byte{0xeb, 0xf7}) // jmp back to mov eax
	vm := newTestVM(b, code)
	var err error
	onThread(func() {
		var v *VCPU
		if v, err = vm.NewVCPU(testCode, testStack+pageSize); err != nil {
			return
		}
		for b.Loop() {
			var exit Exit
			if exit, err = v.Run(); err != nil {
				return
			}
			if exit.Kind != ExitSyscall || v.Regs.RAX != 39 {
				b.Errorf("exit %v rax %d, want the syscall", exit.Kind, v.Regs.RAX)
				return
			}
			v.CompleteSyscall(1)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
}
