package microvm

import (
	"errors"
	"os"
	"sort"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// Guest address-space layout (no randomization: the guest is untrusted anyway, and a fixed
// layout makes runs reproducible).
const (
	pageSize   = kvmhv.PageSize
	pieBase    = 0x5555_5555_4000 // load address of a position-independent program
	mmapTop    = 0x7fff_f000_0000 // mmap allocates downwards from here
	mmapBottom = 0x1000_0000
	stackTop   = 0x7fff_ffff_d000
	stackSize  = 8 << 20
	maxBrk     = 1 << 30 // the heap may grow at most this far past its start
)

func pageDown(a uint64) uint64 { return a &^ (pageSize - 1) }
func pageUp(a uint64) uint64   { return (a + pageSize - 1) &^ (pageSize - 1) }

// userRange rounds length up to whole pages and returns the end of [addr, addr+length),
// with ok false when the rounding or the range wraps around 2^64 or the range ends above
// the user address space. length 0 gives end == addr.
func userRange(addr, length uint64) (end uint64, ok bool) {
	if length > ^uint64(0)-(pageSize-1) {
		return 0, false
	}
	end = addr + pageUp(length)
	return end, end >= addr && end <= kvmhv.UserLimit
}

// vma is one mapped region with a single protection.
type vma struct {
	start, end uint64
	prot       kvmhv.Prot
}

// memory is the guest's address space: the regions it mapped and the heap break.
type memory struct {
	hv *kvmhv.VM

	mu       sync.Mutex // guards vmas, brkStart, brk
	vmas     []vma      // sorted, non-overlapping
	brkStart uint64
	brk      uint64
}

func newMemory(hv *kvmhv.VM) *memory { return &memory{hv: hv} }

// errnoOf maps address-space errors to the errno Linux returns.
func errnoOf(err error) unix.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, kvmhv.ErrNoMemory):
		return unix.ENOMEM
	case errors.Is(err, kvmhv.ErrFault):
		return unix.EFAULT
	}
	return unix.EINVAL
}

// carve removes [start, end) from the region list. Called with mu held.
func (m *memory) carve(start, end uint64) {
	out := m.vmas[:0:0]
	for _, v := range m.vmas {
		if v.end <= start || v.start >= end {
			out = append(out, v)
			continue
		}
		if v.start < start {
			out = append(out, vma{v.start, start, v.prot})
		}
		if v.end > end {
			out = append(out, vma{end, v.end, v.prot})
		}
	}
	m.vmas = out
}

// insert records [start, end) with prot, replacing what was there. Called with mu held.
func (m *memory) insert(start, end uint64, prot kvmhv.Prot) {
	m.carve(start, end)
	m.vmas = append(m.vmas, vma{start, end, prot})
	sort.Slice(m.vmas, func(i, j int) bool { return m.vmas[i].start < m.vmas[j].start })
}

// covered reports whether every page of [start, end) is mapped. Called with mu held.
func (m *memory) covered(start, end uint64) bool {
	at := start
	for _, v := range m.vmas {
		if v.end <= at {
			continue
		}
		if v.start > at {
			return false
		}
		at = v.end
		if at >= end {
			return true
		}
	}
	return at >= end
}

// free finds length bytes of unmapped space, highest first, below mmapTop. Called with mu held.
func (m *memory) free(length uint64) (uint64, bool) {
	top := uint64(mmapTop)
	for i := len(m.vmas) - 1; i >= -1; i-- {
		var lo uint64 = mmapBottom
		if i >= 0 {
			lo = max(m.vmas[i].end, mmapBottom)
			if m.vmas[i].start >= top {
				continue
			}
		}
		if top >= lo+length {
			return top - length, true
		}
		if i >= 0 {
			top = min(top, m.vmas[i].start)
		}
	}
	return 0, false
}

// mapAnon maps zeroed pages at [addr, addr+length) with prot, replacing older mappings.
func (m *memory) mapAnon(addr, length uint64, prot kvmhv.Prot) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mapAnonLocked(addr, length, prot)
}

func (m *memory) mapAnonLocked(addr, length uint64, prot kvmhv.Prot) error {
	if err := m.hv.Unmap(addr, length); err != nil {
		return err
	}
	m.carve(addr, addr+length)
	if prot != kvmhv.ProtNone {
		if err := m.hv.Map(addr, length, prot); err != nil {
			m.hv.Unmap(addr, length)
			return err
		}
	}
	m.insert(addr, addr+length, prot)
	return nil
}

// reserve picks an address for a new mapping: hint if it is free, else a free range.
func (m *memory) reserve(hint, length uint64) (uint64, bool) {
	if hint != 0 && hint%pageSize == 0 && hint+length > hint && hint+length <= kvmhv.UserLimit && !m.overlaps(hint, hint+length) {
		return hint, true
	}
	return m.free(length)
}

func (m *memory) overlaps(start, end uint64) bool {
	for _, v := range m.vmas {
		if v.start < end && v.end > start {
			return true
		}
	}
	return false
}

// fileSource is the file content a file mapping starts with.
type fileSource struct {
	off    uint64                                 // file offset of the mapping's first byte
	readAt func(p []byte, off int64) (int, error) // reads the guest file (pread semantics)
	// When host is not nil, the file's content is the size bytes of host at hostOff (a
	// page-aligned extent of the image file), which can be mapped rather than read.
	host    *os.File
	hostOff int64
	size    int64
}

// mmap implements mmap for anonymous memory and, with src, file mappings. It returns the
// address or an errno.
func (m *memory) mmap(addr, length uint64, prot kvmhv.Prot, flags int, src *fileSource) (uint64, unix.Errno) {
	if length == 0 {
		return 0, unix.EINVAL
	}
	length = pageUp(length)
	if length == 0 {
		return 0, unix.ENOMEM
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	fixed := flags&unix.MAP_FIXED != 0
	noReplace := flags&unix.MAP_FIXED_NOREPLACE != 0
	switch {
	case fixed || noReplace:
		if addr%pageSize != 0 || addr+length < addr || addr+length > kvmhv.UserLimit {
			return 0, unix.EINVAL
		}
		if noReplace && m.overlaps(addr, addr+length) {
			return 0, unix.EEXIST
		}
	default:
		a, ok := m.reserve(pageDown(addr), length)
		if !ok {
			return 0, unix.ENOMEM
		}
		addr = a
	}
	if src != nil && src.host != nil && src.off < uint64(src.size) {
		return m.mmapImage(addr, length, prot, src)
	}
	if err := m.mapAnonLocked(addr, length, prot); err != nil {
		return 0, errnoOf(err)
	}
	if src != nil {
		buf := make([]byte, length)
		if err := src.read(buf); err != nil {
			m.hv.Unmap(addr, length)
			m.carve(addr, addr+length)
			return 0, unix.EIO
		}
		if prot == kvmhv.ProtNone {
			// Keep the frames so that a later mprotect reveals the file contents.
			if err := m.hv.Map(addr, length, kvmhv.ProtRead); err != nil {
				return 0, errnoOf(err)
			}
			defer m.hv.Protect(addr, length, kvmhv.ProtNone)
		}
		if err := m.hv.Poke(buf, addr); err != nil {
			return 0, errnoOf(err)
		}
	}
	return addr, 0
}

// read fills buf with the file's bytes from src.off; past the end of the file it reads as
// zeros (where Linux would raise SIGBUS).
func (src *fileSource) read(buf []byte) error {
	n, err := src.readAt(buf, int64(src.off))
	if n > 0 || err == nil {
		return nil
	}
	if toErrno(err) == 0 {
		return nil // EOF
	}
	return err
}

// mmapImage maps a file of the image at addr: the pages that hold file content from the
// image file, copy-on-write, and anonymous zero pages past the end of the file. Called with
// mu held; src.off < src.size.
func (m *memory) mmapImage(addr, length uint64, prot kvmhv.Prot, src *fileSource) (uint64, unix.Errno) {
	if err := m.hv.Unmap(addr, length); err != nil {
		return 0, errnoOf(err)
	}
	m.carve(addr, addr+length)
	filePages := min(length, pageUp(uint64(src.size)-src.off))
	fail := func(err error) (uint64, unix.Errno) {
		m.hv.Unmap(addr, length)
		if errors.Is(err, kvmhv.ErrNoMemory) {
			return 0, unix.ENOMEM
		}
		return 0, unix.EIO
	}
	if length > filePages && prot != kvmhv.ProtNone {
		if err := m.hv.Map(addr+filePages, length-filePages, prot); err != nil {
			return fail(err)
		}
	}
	// With PROT_NONE the frames are kept, so that a later mprotect reveals the file contents.
	if err := m.hv.MapFile(addr, filePages, prot, src.host, src.hostOff+int64(src.off)); err != nil {
		return fail(err)
	}
	m.insert(addr, addr+length, prot)
	return addr, 0
}

func (m *memory) munmap(addr, length uint64) unix.Errno {
	end, ok := userRange(addr, length)
	if addr%pageSize != 0 || length == 0 || !ok {
		return unix.EINVAL
	}
	length = end - addr
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.hv.Unmap(addr, length); err != nil {
		return errnoOf(err)
	}
	m.carve(addr, addr+length)
	return 0
}

func (m *memory) mprotect(addr, length uint64, prot kvmhv.Prot) unix.Errno {
	if addr%pageSize != 0 {
		return unix.EINVAL
	}
	if length == 0 {
		return 0
	}
	end, ok := userRange(addr, length)
	if !ok {
		return unix.ENOMEM
	}
	length = end - addr
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.covered(addr, addr+length) {
		return unix.ENOMEM
	}
	var err error
	if prot == kvmhv.ProtNone {
		err = m.hv.Protect(addr, length, prot)
	} else {
		err = m.hv.Map(addr, length, prot)
	}
	if err != nil {
		return errnoOf(err)
	}
	m.insert(addr, addr+length, prot)
	return 0
}

// dontneed implements MADV_DONTNEED: private anonymous pages read as zero afterwards.
func (m *memory) dontneed(addr, length uint64) unix.Errno {
	if addr%pageSize != 0 || length > ^uint64(0)-(pageSize-1) || addr+pageUp(length) < addr {
		return unix.EINVAL
	}
	if length == 0 {
		return 0
	}
	end, ok := userRange(addr, length)
	if !ok {
		return unix.ENOMEM // nothing is mapped above the user address space
	}
	length = end - addr
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.covered(addr, addr+length) {
		return unix.ENOMEM
	}
	var regions []vma
	for _, v := range m.vmas {
		if v.start < addr+length && v.end > addr {
			regions = append(regions, vma{max(v.start, addr), min(v.end, addr+length), v.prot})
		}
	}
	for _, r := range regions {
		if err := m.hv.Unmap(r.start, r.end-r.start); err != nil {
			return errnoOf(err)
		}
		if r.prot != kvmhv.ProtNone {
			if err := m.hv.Map(r.start, r.end-r.start, r.prot); err != nil {
				return errnoOf(err)
			}
		}
	}
	return 0
}

func (m *memory) mremap(old, oldLen, newLen uint64, flags int, newAddr uint64) (uint64, unix.Errno) {
	if old%pageSize != 0 || newLen == 0 || oldLen > ^uint64(0)-(pageSize-1) || newLen > ^uint64(0)-(pageSize-1) {
		return 0, unix.EINVAL
	}
	oldLen, newLen = pageUp(oldLen), pageUp(newLen)
	if flags&^(unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED) != 0 || oldLen == 0 {
		return 0, unix.EINVAL
	}
	if _, ok := userRange(old, oldLen); !ok {
		return 0, unix.EFAULT // no mapping there
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.covered(old, old+oldLen) {
		return 0, unix.EFAULT
	}
	prot := m.protAt(old)
	if flags&unix.MREMAP_FIXED == 0 {
		if newLen <= oldLen {
			if newLen < oldLen {
				m.hv.Unmap(old+newLen, oldLen-newLen)
				m.carve(old+newLen, old+oldLen)
			}
			return old, 0
		}
		if !m.overlaps(old+oldLen, old+newLen) && old+newLen <= kvmhv.UserLimit {
			if err := m.hv.Map(old+oldLen, newLen-oldLen, prot); err != nil {
				return 0, errnoOf(err)
			}
			m.insert(old+oldLen, old+newLen, prot)
			return old, 0
		}
		if flags&unix.MREMAP_MAYMOVE == 0 {
			return 0, unix.ENOMEM
		}
		a, ok := m.free(newLen)
		if !ok {
			return 0, unix.ENOMEM
		}
		newAddr = a
	} else {
		if flags&unix.MREMAP_MAYMOVE == 0 || newAddr%pageSize != 0 || newAddr+newLen > kvmhv.UserLimit {
			return 0, unix.EINVAL
		}
		if newAddr < old+oldLen && newAddr+newLen > old {
			return 0, unix.EINVAL
		}
		m.hv.Unmap(newAddr, newLen)
		m.carve(newAddr, newAddr+newLen)
	}
	moved := min(oldLen, newLen)
	if err := m.hv.Move(old, newAddr, moved); err != nil {
		return 0, errnoOf(err)
	}
	m.hv.Unmap(old, oldLen)
	m.carve(old, old+oldLen)
	if newLen > moved {
		if err := m.hv.Map(newAddr+moved, newLen-moved, prot); err != nil {
			return 0, errnoOf(err)
		}
	}
	m.insert(newAddr, newAddr+newLen, prot)
	return newAddr, 0
}

func (m *memory) protAt(a uint64) kvmhv.Prot {
	for _, v := range m.vmas {
		if a >= v.start && a < v.end {
			return v.prot
		}
	}
	return kvmhv.ProtNone
}

// setBrk implements brk: the heap grows and shrinks in whole pages past brkStart.
func (m *memory) setBrk(want uint64) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if want < m.brkStart || want > m.brkStart+maxBrk {
		return m.brk
	}
	oldEnd, newEnd := pageUp(m.brk), pageUp(want)
	switch {
	case newEnd > oldEnd:
		if m.overlaps(oldEnd, newEnd) {
			return m.brk
		}
		if err := m.hv.Map(oldEnd, newEnd-oldEnd, kvmhv.ProtRead|kvmhv.ProtWrite); err != nil {
			return m.brk
		}
		m.insert(oldEnd, newEnd, kvmhv.ProtRead|kvmhv.ProtWrite)
	case newEnd < oldEnd:
		m.hv.Unmap(newEnd, oldEnd-newEnd)
		m.carve(newEnd, oldEnd)
	}
	m.brk = want
	return m.brk
}

// protFromLinux converts PROT_* bits.
func protFromLinux(p uint64) (kvmhv.Prot, bool) {
	if p&^uint64(unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC) != 0 {
		return 0, false
	}
	var r kvmhv.Prot
	if p&unix.PROT_READ != 0 {
		r |= kvmhv.ProtRead
	}
	if p&unix.PROT_WRITE != 0 {
		r |= kvmhv.ProtWrite | kvmhv.ProtRead
	}
	if p&unix.PROT_EXEC != 0 {
		r |= kvmhv.ProtExec | kvmhv.ProtRead
	}
	return r, true
}

// maps renders /proc/self/maps.
func (m *memory) maps() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b []byte
	for _, v := range m.vmas {
		p := []byte("---p")
		if v.prot&kvmhv.ProtRead != 0 {
			p[0] = 'r'
		}
		if v.prot&kvmhv.ProtWrite != 0 {
			p[1] = 'w'
		}
		if v.prot&kvmhv.ProtExec != 0 {
			p[2] = 'x'
		}
		b = append(b, []byte(hex(v.start)+"-"+hex(v.end)+" "+string(p)+" 00000000 00:00 0\n")...)
	}
	return b
}
