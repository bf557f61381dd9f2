package kvmhv

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues an ioctl whose argument is an integer.
//
// A signal can interrupt any KVM ioctl that sleeps (KVM_CREATE_VM does when the host is
// busy), and the Go runtime sends SIGURG to running threads at any time, so every request but
// KVM_RUN is retried on EINTR. KVM_RUN returns EINTR on purpose when a vCPU is kicked; its
// caller handles that.
func ioctl(fd int, req uintptr, arg uintptr) (uintptr, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if e == unix.EINTR && req != kvmRun {
			continue
		}
		if e != 0 {
			return r, e
		}
		return r, nil
	}
}

// ioctlPtr issues an ioctl whose argument points at a struct mirroring the kernel's.
func ioctlPtr[T any](fd int, req uintptr, p *T) error {
	_, err := ioctlPtrN(fd, req, p)
	return err
}

// ioctlPtrN is ioctlPtr for ioctls that return a count.
func ioctlPtrN[T any](fd int, req uintptr, p *T) (uintptr, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(p)))
		if e == unix.EINTR {
			continue // see ioctl
		}
		if e != 0 {
			return r, e
		}
		return r, nil
	}
}

// runArea is the mmap'ed struct kvm_run of one vCPU.
type runArea struct {
	mem []byte
}

func mapRunArea(vcpuFD, size int) (*runArea, error) {
	mem, err := unix.Mmap(vcpuFD, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap kvm_run: %w", err)
	}
	return &runArea{mem: mem}, nil
}

func (r *runArea) header() *runHeader { return (*runHeader)(unsafe.Pointer(&r.mem[0])) }

// union returns the exit union at offset 32 as T.
func runUnion[T any](r *runArea) *T { return (*T)(unsafe.Pointer(&r.mem[32])) }

// setImmediateExit writes kvm_run.immediate_exit; it is read by the kernel at KVM_RUN entry.
func (r *runArea) setImmediateExit(v bool) {
	var b uint8
	if v {
		b = 1
	}
	p := (*uint8)(unsafe.Pointer(&r.mem[1]))
	*p = b
}

func (r *runArea) unmap() error { return unix.Munmap(r.mem) }

// guestMemory is the host mapping of a VM's guest-physical memory.
type guestMemory struct {
	mem []byte
}

func (g *guestMemory) hostAddr() uintptr { return uintptr(unsafe.Pointer(&g.mem[0])) }

// word returns a pointer to the aligned 64-bit word at guest-physical address gpa, used for
// page-table entries that the guest's page walker reads concurrently.
func (g *guestMemory) word(gpa uint64) *uint64 {
	return (*uint64)(unsafe.Pointer(&g.mem[gpa]))
}
