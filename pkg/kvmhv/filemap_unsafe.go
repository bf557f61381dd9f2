package kvmhv

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapFile replaces the host memory of guest-physical [gpa, gpa+length) by a private,
// copy-on-write mapping of f from off. KVM's MMU notifier drops any translation of the old
// pages.
func (g *guestMemory) mapFile(gpa, length uint64, f *os.File, off int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var merr error
	// Control keeps the descriptor open (and not reused) while mmap uses it.
	if err := rc.Control(func(fd uintptr) {
		merr = g.remap(gpa, length, int(fd), off, unix.MAP_PRIVATE|unix.MAP_FIXED|unix.MAP_NORESERVE)
	}); err != nil {
		return err
	}
	return merr
}

// mapAnon replaces the host memory of guest-physical [gpa, gpa+length) by fresh anonymous
// memory, as the guest-memory slot was mapped.
func (g *guestMemory) mapAnon(gpa, length uint64) error {
	return g.remap(gpa, length, -1, 0, unix.MAP_PRIVATE|unix.MAP_FIXED|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
}

func (g *guestMemory) remap(gpa, length uint64, fd int, off int64, flags int) error {
	if length == 0 || gpa+length < gpa || gpa+length > uint64(len(g.mem)) || gpa%pageSize != 0 || length%pageSize != 0 {
		return fmt.Errorf("remap %#x+%#x: outside guest memory", gpa, length)
	}
	addr := unsafe.Pointer(&g.mem[gpa])
	got, err := unix.MmapPtr(fd, off, addr, uintptr(length), unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		return fmt.Errorf("mmap over guest memory at %#x: %w", gpa, err)
	}
	if got != addr {
		return fmt.Errorf("mmap over guest memory at %#x: mapped at %p", gpa, got)
	}
	return nil
}
