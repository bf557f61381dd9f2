package kvmhv

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Config describes a VM.
type Config struct {
	// Memory is the budget of guest memory in bytes: user pages plus the page tables that
	// map them. Rounded up to whole pages; at least 1 MiB.
	Memory uint64
	// MaxVCPUs bounds the vCPUs the VM may create (default 16, at most MaxVCPUs).
	MaxVCPUs int
}

// VM is one KVM virtual machine with its guest memory, address space and vCPUs.
type VM struct {
	sys      *System
	fd       int
	mem      guestMemory
	maxVCPUs int

	memMu sync.Mutex   // guards as and serializes address-space changes
	as    addressSpace // guarded by memMu

	tlbGen atomic.Uint64 // bumped by every change that needs a TLB flush (see stale)

	vcpuMu sync.Mutex // guards vcpus and nextID
	vcpus  []*VCPU    // live vCPUs
	nextID int

	closeOnce sync.Once
}

// NewVM creates a VM with its guest memory, page tables and supervisor area.
func (s *System) NewVM(cfg Config) (*VM, error) {
	if cfg.MaxVCPUs <= 0 {
		cfg.MaxVCPUs = 16
	}
	if cfg.MaxVCPUs > MaxVCPUs {
		return nil, fmt.Errorf("max vCPUs %d exceeds %d", cfg.MaxVCPUs, MaxVCPUs)
	}
	if cfg.Memory < 1<<20 {
		cfg.Memory = 1 << 20
	}
	budget := (cfg.Memory + pageSize - 1) / pageSize
	// Guest-physical memory: the supervisor area, then the budget, plus slack for the page
	// tables of sparse mappings so the budget, not the slot, is what runs out.
	slot := (supervisorPages + budget + budget/64 + 64) * pageSize
	fd, err := ioctl(s.fd, kvmCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	vm := &VM{sys: s, fd: int(fd), maxVCPUs: cfg.MaxVCPUs}
	if err := vm.init(slot, budget); err != nil {
		vm.Close()
		return nil, err
	}
	return vm, nil
}

func (vm *VM) init(slot, budget uint64) error {
	unix.CloseOnExec(vm.fd)
	mem, err := unix.Mmap(-1, 0, int(slot), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return fmt.Errorf("mmap guest memory: %w", err)
	}
	vm.mem.mem = mem
	region := userspaceMemoryRegion{Slot: 0, MemorySize: slot, UserspaceAddr: uint64(vm.mem.hostAddr())}
	if err := ioctlPtr(vm.fd, kvmSetUserMemoryRegion, &region); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	// Intel needs a TSS area for real-mode emulation even if it is never used.
	if _, err := ioctl(vm.fd, kvmSetTSSAddr, 0xfffbd000); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
	}
	vm.as = addressSpace{mem: &vm.mem, frames: frames{
		next:  supervisorPages * pageSize,
		limit: slot,
		max:   int64(budget),
	}}
	root, err := vm.as.frames.alloc()
	if err != nil {
		return err
	}
	vm.as.pml4 = root
	if vm.as.pml4Alt, err = vm.as.frames.alloc(); err != nil {
		return err
	}
	copy(mem[gdtGPA:], gdtBytes(vm.maxVCPUs))
	copy(mem[idtGPA:], idtBytes())
	for i := 0; i < vm.maxVCPUs; i++ {
		copy(mem[tssGPA+tssStride*i:], tssBytes(i))
	}
	copy(mem[codeGPA:], codePage())
	return vm.mapSupervisor()
}

// mapSupervisor maps the supervisor area at SupervisorBase with U/S=0, except the code
// page where `syscall` stays at CPL3 (kvm_pvm): there the syscall stub runs at CPL3, so
// the page is user-executable and read-only. The probe's VM, made while the mode still
// has its zero value, has it supervisor-only: that is how the probe tells the two kinds
// of host apart.
func (vm *VM) mapSupervisor() error {
	userCode := vm.sys.mode == SyscallStaysCPL3
	for p := uint64(1); p < supervisorPages; p++ {
		gpa := p * pageSize
		va := uint64(SupervisorBase) + gpa
		e, err := vm.as.entry(va, true)
		if err != nil {
			return err
		}
		bits := uint64(ptePresent | pteWrite | pteNX)
		if gpa == codeGPA {
			bits = ptePresent // read-only, executable
			if userCode {
				bits |= pteUser
			}
		}
		atomic.StoreUint64(e, gpa|bits)
	}
	return nil
}

// Close destroys the VM: its vCPUs must have stopped running. It frees guest memory and
// closes every file descriptor.
func (vm *VM) Close() error {
	var errs []error
	vm.closeOnce.Do(func() {
		vm.vcpuMu.Lock()
		vcpus := vm.vcpus
		vm.vcpus = nil
		vm.vcpuMu.Unlock()
		for _, v := range vcpus {
			errs = append(errs, v.close())
		}
		if vm.fd >= 0 {
			errs = append(errs, unix.Close(vm.fd))
		}
		if vm.mem.mem != nil {
			errs = append(errs, unix.Munmap(vm.mem.mem))
			vm.mem.mem = nil
		}
	})
	return errors.Join(errs...)
}

// MemoryStats reports guest memory in use and its peak, in bytes, including page tables.
func (vm *VM) MemoryStats() (used, peak int64) {
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	return vm.as.frames.used * pageSize, vm.as.frames.peak * pageSize
}

// LimitMemory lowers the VM's memory budget to bytes, rounded up to whole pages: a VM made
// ahead of need with a large budget takes the budget of the program it is given. It cannot
// raise the budget, and fails with ErrNoMemory if more is in use already.
func (vm *VM) LimitMemory(bytes uint64) error {
	n := int64((bytes + pageSize - 1) / pageSize)
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	f := &vm.as.frames
	switch {
	case n > f.max:
		return fmt.Errorf("memory budget %d bytes exceeds the VM's %d", bytes, f.max*pageSize)
	case f.used > n:
		return fmt.Errorf("%w: %d bytes in use, budget %d", ErrNoMemory, f.used*pageSize, bytes)
	}
	f.max = n
	return nil
}

// MemoryBudget is the VM's memory budget in bytes.
func (vm *VM) MemoryBudget() int64 { return vm.as.frames.max * pageSize }

func checkRange(va, length uint64) error {
	if va%pageSize != 0 || length%pageSize != 0 || va+length < va || va+length > UserLimit {
		return fmt.Errorf("%w: range %#x+%#x", ErrFault, va, length)
	}
	return nil
}

// Map makes the user pages in [va, va+length) present with prot. Pages that already hold a
// frame keep their contents; the others read as zeros. ErrNoMemory past the budget. TLBs
// are shot down only if a page that was present changes its protection (see stale).
func (vm *VM) Map(va, length uint64, prot Prot) error {
	if err := checkRange(va, length); err != nil {
		return err
	}
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	flush, err := vm.as.mapPages(va, length/pageSize, prot)
	if flush {
		vm.shootdown()
	}
	return err
}

// Protect changes the protection of the pages in range that hold frames.
func (vm *VM) Protect(va, length uint64, prot Prot) error {
	if err := checkRange(va, length); err != nil {
		return err
	}
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	flush, err := vm.as.protect(va, length/pageSize, prot)
	if flush {
		vm.shootdown()
	}
	return err
}

// Unmap removes the pages in range and frees their frames.
func (vm *VM) Unmap(va, length uint64) error {
	if err := checkRange(va, length); err != nil {
		return err
	}
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	flush, err := vm.as.unmap(va, length/pageSize)
	if flush {
		vm.shootdown()
	}
	vm.as.release()
	return err
}

// Move moves the pages of [src, src+length) to dst, which must hold no pages (mremap).
func (vm *VM) Move(src, dst, length uint64) error {
	if err := checkRange(src, length); err != nil {
		return err
	}
	if err := checkRange(dst, length); err != nil {
		return err
	}
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	flush, err := vm.as.move(src, dst, length/pageSize)
	if flush {
		vm.shootdown()
	}
	vm.as.release()
	return err
}

// Translate returns the protection of the user page holding va, if it holds a frame.
func (vm *VM) Translate(va uint64) (Prot, bool) {
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	_, p, ok := vm.as.translate(va)
	return p, ok
}

// access copies between buf and guest-virtual memory at va, page by page. With write set
// it copies buf into the guest and requires ProtWrite (as copy_to_user does); otherwise it
// copies out and requires ProtRead. force skips the protection check (used by the loader).
func (vm *VM) access(va uint64, buf []byte, write, force bool) (int, error) {
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	done := 0
	for done < len(buf) {
		a := va + uint64(done)
		if a < va {
			return done, ErrFault
		}
		gpa, prot, ok := vm.as.translate(a)
		if !ok || (!force && (prot&ProtRead == 0 || write && prot&ProtWrite == 0)) {
			return done, fmt.Errorf("%w: %#x", ErrFault, a)
		}
		n := min(int(pageSize-a%pageSize), len(buf)-done)
		page, part := vm.mem.mem[gpa:gpa+uint64(n)], buf[done:done+n]
		if err := guarded(func() {
			if write {
				copy(page, part)
			} else {
				copy(part, page)
			}
		}); err != nil {
			return done, fmt.Errorf("%w: %#x: %w", ErrFault, a, err)
		}
		done += n
	}
	return done, nil
}

// ReadAt copies guest memory at va into buf; ErrFault if any byte is not readable by the
// guest program.
func (vm *VM) ReadAt(buf []byte, va uint64) (int, error) { return vm.access(va, buf, false, false) }

// WriteAt copies buf into guest memory at va; ErrFault if any byte is not writable by the
// guest program.
func (vm *VM) WriteAt(buf []byte, va uint64) (int, error) { return vm.access(va, buf, true, false) }

// Poke copies buf into guest memory at va whatever the page protection (for loading
// read-only segments). The pages must hold frames.
func (vm *VM) Poke(buf []byte, va uint64) error {
	_, err := vm.access(va, buf, true, true)
	return err
}

// shootdown makes every vCPU drop stale translations before it runs guest code again, and
// waits for those in guest mode to leave it. Called with memMu held.
func (vm *VM) shootdown() {
	gen := vm.tlbGen.Add(1)
	vm.vcpuMu.Lock()
	vcpus := append([]*VCPU(nil), vm.vcpus...)
	vm.vcpuMu.Unlock()
	for _, v := range vcpus {
		for spins := 0; v.inGuest.Load() && v.flushedGen.Load() < gen; spins++ {
			v.kick()
			if spins < 50 {
				runtime.Gosched()
			} else {
				time.Sleep(20 * time.Microsecond)
			}
		}
	}
}
