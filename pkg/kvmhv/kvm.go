package kvmhv

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrNoKVM means /dev/kvm is missing or cannot be opened.
var ErrNoKVM = errors.New("kvm unavailable")

// ErrUnsupportedHost means the host's KVM delivers guest system calls in a way this
// package does not know.
var ErrUnsupportedHost = errors.New("unsupported KVM host")

// SyscallMode says how the host delivers a guest `syscall` executed at CPL3.
type SyscallMode int

const (
	// SyscallEntersCPL0 is the architectural behaviour (VT-x/AMD-V): the supervisor stub
	// runs at CPL0 and returns with sysretq.
	SyscallEntersCPL0 SyscallMode = iota
	// SyscallStaysCPL3 is kvm_pvm's behaviour: the stub runs at CPL3 and the VMM completes
	// the call (RIP from RCX, RFLAGS from R11).
	SyscallStaysCPL3
)

func (m SyscallMode) String() string {
	if m == SyscallStaysCPL3 {
		return "stays-cpl3"
	}
	return "enters-cpl0"
}

// System is an open /dev/kvm with the facts probed once about the host. It is safe for
// concurrent use; create VMs with NewVM.
type System struct {
	fd        int
	vcpuMmap  int
	cpuid     *cpuid2 // KVM_GET_SUPPORTED_CPUID, given to every vCPU
	hasXCRS   bool
	hasXSave  bool // KVM_GET_XSAVE and KVM_SET_XSAVE
	syncRegs  bool // KVM_CAP_SYNC_REGS covers regs and sregs
	mode      SyscallMode
	tscWhy    string // why the guest TSC cannot serve as a clock; "" if it can
	closeOnce sync.Once
}

// Open opens /dev/kvm, checks the API, and probes how the host delivers `syscall`.
func Open() (*System, error) {
	return OpenPath("/dev/kvm")
}

// OpenPath is Open for a KVM device at path.
func OpenPath(path string) (*System, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w", ErrNoKVM, path, err)
	}
	s := &System{fd: fd}
	if err := s.init(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return s, nil
}

func (s *System) init() error {
	v, err := ioctl(s.fd, kvmGetAPIVersion, 0)
	if err != nil {
		return fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("%w: KVM API version %d, want %d", ErrNoKVM, v, kvmAPIVersion)
	}
	for _, c := range []struct {
		cap  uintptr
		name string
	}{{capUserMemory, "KVM_CAP_USER_MEMORY"}, {capImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"}} {
		if ok, _ := ioctl(s.fd, kvmCheckExtension, c.cap); ok == 0 {
			return fmt.Errorf("%w: missing %s", ErrNoKVM, c.name)
		}
	}
	if ok, _ := ioctl(s.fd, kvmCheckExtension, capXCRS); ok != 0 {
		s.hasXCRS = true
	}
	if ok, _ := ioctl(s.fd, kvmCheckExtension, capXSave); ok != 0 {
		s.hasXSave = true
	}
	if m, _ := ioctl(s.fd, kvmCheckExtension, capSyncRegs); m&(syncX86Regs|syncX86Sregs) == syncX86Regs|syncX86Sregs {
		s.syncRegs = true
	}
	n, err := ioctl(s.fd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	s.vcpuMmap = int(n)
	c := &cpuid2{NEnt: maxCPUIDEntries}
	if err := ioctlPtr(s.fd, kvmGetSupportedCPUID, c); err != nil {
		return fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	s.cpuid = c
	mode, tscWhy, err := s.probeSyscall()
	if err != nil {
		return fmt.Errorf("probe syscall delivery: %w", err)
	}
	s.mode = mode
	if s.tscWhy = s.hostTSCReason(); s.tscWhy == "" {
		s.tscWhy = tscWhy
	}
	return nil
}

// SyscallMode returns how this host delivers a guest `syscall`, as probed by Open.
func (s *System) SyscallMode() SyscallMode { return s.mode }

// Close closes /dev/kvm. VMs already created stay valid until they are closed.
func (s *System) Close() error {
	var err error
	s.closeOnce.Do(func() { err = unix.Close(s.fd) })
	return err
}

// Available reports whether /dev/kvm exists and can be opened, and if not, why.
func Available() (bool, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, err.Error()
	}
	f.Close()
	return true, ""
}
