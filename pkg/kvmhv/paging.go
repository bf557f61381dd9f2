package kvmhv

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

const (
	pageSize  = 4096
	pageShift = 12

	// PageSize is the guest page size.
	PageSize = pageSize

	// UserLimit is the first address above the user half of the address space (as on
	// Linux x86-64 with 4-level paging).
	UserLimit = 0x0000_8000_0000_0000
)

// Page-table entry bits.
const (
	ptePresent  = 1 << 0
	pteWrite    = 1 << 1
	pteUser     = 1 << 2
	pteAccessed = 1 << 5 // set by the processor
	pteDirty    = 1 << 6 // set by the processor
	pteOwned    = 1 << 9 // software bit: the entry holds a frame even when not present
	pteNX       = 1 << 63
	pteAddr     = 0x000f_ffff_ffff_f000
)

// Prot is the protection of guest user pages.
type Prot uint8

// Protection bits, as in mmap's PROT_*.
const (
	ProtRead  Prot = 1
	ProtWrite Prot = 2
	ProtExec  Prot = 4
	ProtNone  Prot = 0
)

// ErrNoMemory means the VM's memory budget is exhausted.
var ErrNoMemory = errors.New("guest memory budget exhausted")

// ErrFault means a guest-virtual address is not mapped with the access asked for.
var ErrFault = errors.New("bad guest address")

// leafBits returns the PTE flags for prot.
func leafBits(p Prot) uint64 {
	if p == ProtNone {
		return pteOwned
	}
	b := uint64(ptePresent | pteUser | pteOwned)
	if p&ProtWrite != 0 {
		b |= pteWrite
	}
	if p&ProtExec == 0 {
		b |= pteNX
	}
	return b
}

// protOf decodes a leaf entry's protection.
func protOf(pte uint64) Prot {
	if pte&ptePresent == 0 {
		return ProtNone
	}
	p := ProtRead
	if pte&pteWrite != 0 {
		p |= ProtWrite
	}
	if pte&pteNX == 0 {
		p |= ProtExec
	}
	return p
}

// frames allocates 4 KiB guest-physical frames. Never-used frames come from a bump pointer;
// freed frames are returned to the host with MADV_DONTNEED (or, if a file backed them, see
// addressSpace.release), so every frame handed out reads as zeros. The fields are guarded by
// the owning addressSpace's mutex.
type frames struct {
	next  uint64   // next never-used frame (guest-physical address)
	limit uint64   // end of guest memory
	free  []uint64 // freed, zeroed frames
	used  int64    // frames in use (user pages and page tables)
	peak  int64
	max   int64 // budget in frames
}

func (f *frames) alloc() (uint64, error) {
	if f.used >= f.max {
		return 0, ErrNoMemory
	}
	var gpa uint64
	if n := len(f.free); n > 0 {
		gpa = f.free[n-1]
		f.free = f.free[:n-1]
	} else {
		if f.next >= f.limit {
			return 0, ErrNoMemory
		}
		gpa = f.next
		f.next += pageSize
	}
	f.used++
	if f.used > f.peak {
		f.peak = f.used
	}
	return gpa, nil
}

// allocRun allocates n frames, contiguous from the bump pointer if there is room there (so
// that a file can back them with one host mapping), else one by one, sorted. It takes all n
// or none.
func (f *frames) allocRun(n uint64) ([]uint64, error) {
	if n > uint64(f.max-f.used) {
		return nil, ErrNoMemory
	}
	out := make([]uint64, 0, n)
	if f.next <= f.limit && n <= (f.limit-f.next)/pageSize {
		for i := uint64(0); i < n; i++ {
			out = append(out, f.next+i*pageSize)
		}
		f.next += n * pageSize
		f.used += int64(n)
		f.peak = max(f.peak, f.used)
		return out, nil
	}
	for range n {
		gpa, err := f.alloc()
		if err != nil {
			f.free = append(f.free, out...) // still zero: never handed out
			f.used -= int64(len(out))
			return nil, err
		}
		out = append(out, gpa)
	}
	// Any order serves the caller; ascending makes the longest runs of contiguous frames.
	slices.Sort(out)
	return out, nil
}

// addressSpace is the guest's 4-level page table. The mutex is the VM's memMu.
type addressSpace struct {
	mem    *guestMemory
	frames frames
	pml4   uint64 // guest-physical address of the root table
	// pml4Alt is a second root with the same entries; a vCPU flushes its TLB by switching
	// CR3 between the two (see VCPU.flushTLB).
	pml4Alt uint64
	// dirty collects frames freed by the current operation; release zeroes and recycles them.
	dirty []uint64
	// fileBacked marks the frames whose host pages lie in a private file mapping (see
	// VM.MapFile): MADV_DONTNEED would bring the file's bytes back there, not zeros.
	fileBacked bitmap
	// hostMaps counts the host mmap calls made over parts of guest memory, bounded by
	// maxHostMaps (see VM.MapFile).
	hostMaps int
}

func index(va uint64, level int) uint64 { return (va >> (pageShift + 9*uint(level))) & 511 }

// entry returns a pointer to the level-0 (PTE) entry for va, creating tables if create.
func (as *addressSpace) entry(va uint64, create bool) (*uint64, error) {
	table := as.pml4
	for level := 3; level > 0; level-- {
		e := as.mem.word(table + 8*index(va, level))
		v := atomic.LoadUint64(e)
		if v&ptePresent == 0 {
			if !create {
				return nil, nil
			}
			f, err := as.frames.alloc()
			if err != nil {
				return nil, err
			}
			v = f | ptePresent | pteWrite | pteUser
			atomic.StoreUint64(e, v)
			if level == 3 {
				atomic.StoreUint64(as.mem.word(as.pml4Alt+8*index(va, level)), v)
			}
		}
		table = v & pteAddr
		if table+pageSize > uint64(len(as.mem.mem)) {
			return nil, fmt.Errorf("%w: corrupt page table at %#x", ErrFault, va)
		}
	}
	return as.mem.word(table + 8*index(va, 0)), nil
}

// stale reports whether replacing the leaf entry old by next can leave a translation that a
// TLB must drop: old was present and the entry changes (its frame or its permissions). The
// accessed and dirty bits, which the processor sets, do not count.
//
// A not-present entry is never cached (Intel SDM vol. 3A, 4.10.2.3; AMD APM vol. 2, 5.5.1),
// so making a page present needs no flush. Raising the permissions of a present entry does:
// without an invalidation the processor may still use the old, narrower translation and raise
// a "spurious" page fault (SDM 4.10.4.3), which this VMM would deliver as SIGSEGV.
func stale(old, next uint64) bool {
	const ad = pteAccessed | pteDirty
	return old&ptePresent != 0 && old&^ad != next&^ad
}

// mapPages makes [va, va+n pages) present with prot, allocating zeroed frames for pages that
// hold none and keeping the contents of pages that do. flush reports whether a present entry
// changed (see stale), even when err is not nil.
func (as *addressSpace) mapPages(va, n uint64, prot Prot) (flush bool, err error) {
	for i := uint64(0); i < n; i++ {
		a := va + i*pageSize
		e, err := as.entry(a, true)
		if err != nil {
			return flush, err
		}
		v := atomic.LoadUint64(e)
		frame := v & pteAddr
		if v&pteOwned == 0 {
			if frame, err = as.frames.alloc(); err != nil {
				return flush, err
			}
		}
		nv := frame | leafBits(prot)
		flush = flush || stale(v, nv)
		atomic.StoreUint64(e, nv)
	}
	return flush, nil
}

// protect changes the protection of the pages in range that hold frames. flush is as for
// mapPages.
func (as *addressSpace) protect(va, n uint64, prot Prot) (flush bool, err error) {
	for i := uint64(0); i < n; i++ {
		e, err := as.entry(va+i*pageSize, false)
		if err != nil {
			return flush, err
		}
		if e == nil {
			continue
		}
		if v := atomic.LoadUint64(e); v&pteOwned != 0 {
			nv := v&pteAddr | leafBits(prot)
			flush = flush || stale(v, nv)
			atomic.StoreUint64(e, nv)
		}
	}
	return flush, nil
}

// unmap removes the pages in range and queues their frames for release. flush reports
// whether a present entry was removed.
func (as *addressSpace) unmap(va, n uint64) (flush bool, err error) {
	for i := uint64(0); i < n; i++ {
		a := va + i*pageSize
		e, err := as.entry(a, false)
		if err != nil {
			return flush, err
		}
		if e == nil {
			// Skip the rest of an absent page table.
			next := (a | (512*pageSize - 1)) + 1
			if skip := (next - a) / pageSize; skip > 1 {
				i += skip - 1
			}
			continue
		}
		v := atomic.SwapUint64(e, 0)
		flush = flush || stale(v, 0)
		if v&pteOwned != 0 {
			as.dirty = append(as.dirty, v&pteAddr)
		}
	}
	return flush, nil
}

// move moves the frames of n pages from src to dst (mremap); dst must be unmapped. flush
// reports whether a present entry was removed or replaced.
func (as *addressSpace) move(src, dst, n uint64) (flush bool, err error) {
	for i := uint64(0); i < n; i++ {
		se, err := as.entry(src+i*pageSize, false)
		if err != nil {
			return flush, err
		}
		if se == nil {
			continue
		}
		v := atomic.LoadUint64(se)
		if v&pteOwned == 0 {
			continue
		}
		de, err := as.entry(dst+i*pageSize, true)
		if err != nil {
			return flush, err
		}
		old := atomic.SwapUint64(de, v)
		flush = flush || stale(old, v)
		if old&pteOwned != 0 {
			as.dirty = append(as.dirty, old&pteAddr)
		}
		atomic.StoreUint64(se, 0)
		flush = flush || stale(v, 0)
	}
	return flush, nil
}

// release zeroes the queued frames (returning their memory to the host) and recycles them.
// It must run after every vCPU has flushed its TLB of the old mappings: after a shootdown
// when the operation that queued them removed a present entry. A frame whose entry was not
// present needs none, since the change that made it not present already shot it down.
func (as *addressSpace) release() {
	var fromFile []uint64
	for _, f := range as.dirty {
		if as.fileBacked.has(f / pageSize) {
			fromFile = append(fromFile, f)
		} else {
			// MADV_DONTNEED on private anonymous memory drops the page: it reads as zero
			// next time.
			_ = unix.Madvise(as.mem.mem[f:f+pageSize], unix.MADV_DONTNEED)
		}
		as.frames.free = append(as.frames.free, f)
		as.frames.used--
	}
	if len(fromFile) > 0 {
		as.zeroFileFrames(fromFile)
	}
	as.dirty = as.dirty[:0]
}

// translate returns the guest-physical address of va and the page's protection.
func (as *addressSpace) translate(va uint64) (gpa uint64, prot Prot, ok bool) {
	if va >= UserLimit {
		return 0, 0, false
	}
	e, err := as.entry(va, false)
	if err != nil || e == nil {
		return 0, 0, false
	}
	v := atomic.LoadUint64(e)
	if v&pteOwned == 0 {
		return 0, 0, false
	}
	gpa = v&pteAddr | va&(pageSize-1)
	if gpa >= uint64(len(as.mem.mem)) {
		return 0, 0, false
	}
	return gpa, protOf(v), true
}
