// Package kvmhv is Isolator's hypervisor layer on /dev/kvm.
//
// It creates VMs, their guest-physical memory, vCPUs on locked OS threads, and a 64-bit
// long-mode environment in which guest code runs at CPL3: VMM-owned 4-level page tables, a
// GDT, an IDT, one TSS per vCPU and a tiny CPL0 supervisor (see supervisor.go for its
// byte listing). Everything the guest does that it cannot complete itself (a system call,
// an exception, a stray port access, a triple fault) comes back from Run as an Exit.
//
// kvmhv knows nothing of Linux processes: system call numbers, signals and files belong to
// package microvm.
//
// # System calls on two kinds of host
//
// On VT-x/AMD-V, `syscall` at CPL3 enters CPL0 at MSR_LSTAR, where the supervisor's entry
// stub executes `out` to a hypercall port (an exit to the VMM) and then `sysretq`. On the
// nested kvm_pvm hosts Isolator is also built on, `syscall` jumps to MSR_LSTAR but stays at
// CPL3, and `out` at CPL3 exits to the VMM instead of raising #GP. There the stub page is
// mapped user-executable (read-only) and the VMM completes the call itself (RIP from RCX,
// RFLAGS from R11); on VT-x/AMD-V it is supervisor-only. Open tells the two apart once, by
// running `syscall` in a VM whose stub page is supervisor-only: the stub's hypercall on
// VT-x, a user-mode page fault at MSR_LSTAR on kvm_pvm. Both paths share the same exit:
// ExitSyscall.
//
// unsafe is confined to files named *_unsafe.go.
package kvmhv
