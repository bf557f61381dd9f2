package kvmhv

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync/atomic"
)

// maxHostMaps bounds the host mmap calls one VM makes over parts of its guest memory: file
// mappings (MapFile) and the anonymous mappings that replace them when their frames are
// freed. Each call adds at most two mappings (VMAs) to the host process, whose number the
// kernel bounds (vm.max_map_count, 65530 by default) for the whole process, Go runtime
// included; so a VM keeps under 2*maxHostMaps+1 of them whatever its guest does. A VM past
// the bound still works: MapFile reads file bytes in instead, and freed file-backed frames
// are zeroed in place.
const maxHostMaps = 512

// bitmap is a set of frame numbers (guest-physical address / pageSize).
type bitmap []uint64

func (b bitmap) has(i uint64) bool {
	w := i / 64
	return w < uint64(len(b)) && b[w]&(1<<(i%64)) != 0
}

// set adds i; frames is the number of frames the set can ever hold.
func (b *bitmap) set(i, frames uint64) {
	if *b == nil {
		*b = make(bitmap, (frames+63)/64)
	}
	(*b)[i/64] |= 1 << (i % 64)
}

func (b bitmap) clear(i uint64) {
	if w := i / 64; w < uint64(len(b)) {
		b[w] &^= 1 << (i % 64)
	}
}

// MapFile makes the user pages [va, va+length) present with prot, holding the bytes of f
// from off (a multiple of the page size) on, copy-on-write: the pages are the VM's own, and
// what the guest writes to them never reaches f. Whatever the range held before is
// unmapped. Bytes past the end of f read as zero. The frames are charged to the budget as
// Map's are.
//
// Nothing is copied: the host memory of the frames is replaced by a private mapping of f
// (mmap MAP_PRIVATE|MAP_FIXED over them, one call per run of contiguous frames), which KVM
// follows through its MMU notifier. Past maxHostMaps such calls the bytes are read in. f
// must not change while the VM exists: pages the guest has not written still show f's
// current bytes, and a page beyond the end of a truncated f faults for the guest (KVM_RUN
// fails) and for the VMM, whose ReadAt, WriteAt and Poke then fail with ErrFault and
// ErrBackingLost. An image file is immutable, which is what this is for.
func (vm *VM) MapFile(va, length uint64, prot Prot, f *os.File, off int64) error {
	if err := checkRange(va, length); err != nil {
		return err
	}
	if off < 0 || off%pageSize != 0 || off+int64(length) < off {
		return fmt.Errorf("map file: offset %#x is not page-aligned", off)
	}
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("map file: %w", err)
	}
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	n := length / pageSize
	flush, err := vm.as.unmap(va, n)
	if flush {
		vm.shootdown()
	}
	vm.as.release()
	if err != nil {
		return err
	}
	// Page tables first, so that installing the leaves below cannot fail.
	for i := uint64(0); i < n; i++ {
		if _, err := vm.as.entry(va+i*pageSize, true); err != nil {
			return err
		}
	}
	frames, err := vm.as.frames.allocRun(n)
	if err != nil {
		return err
	}
	if err := vm.as.fill(frames, f, off, st.Size()); err != nil {
		vm.as.dirty = append(vm.as.dirty, frames...)
		vm.as.release()
		return fmt.Errorf("map file: %w", err)
	}
	bits := leafBits(prot)
	for i, fr := range frames {
		e, _ := vm.as.entry(va+uint64(i)*pageSize, false)
		atomic.StoreUint64(e, fr|bits) // the entry was just cleared: no flush needed
	}
	return nil
}

// fill makes the fresh frames fr hold the bytes of f (of size bytes) from off, fr[i] the page
// at off+i*pageSize: by mapping f over runs of contiguous frames, or by reading.
func (as *addressSpace) fill(fr []uint64, f *os.File, off, size int64) error {
	// Only pages that start before the end of f can be mapped: touching a page wholly past
	// the end of a file mapping raises SIGBUS. Those past it stay zero.
	inFile := len(fr)
	if off >= size {
		inFile = 0
	} else if k := (size - off + pageSize - 1) / pageSize; k < int64(inFile) {
		inFile = int(k)
	}
	for i := 0; i < inFile; {
		j := i + 1
		for j < inFile && fr[j] == fr[j-1]+pageSize {
			j++
		}
		gpa, length, o := fr[i], uint64(j-i)*pageSize, off+int64(i)*pageSize
		if as.hostMaps < maxHostMaps {
			as.hostMaps++
			err := as.mem.mapFile(gpa, length, f, o)
			if err == nil {
				for k := i; k < j; k++ {
					as.fileBacked.set(fr[k]/pageSize, uint64(len(as.mem.mem))/pageSize)
				}
				i = j
				continue
			}
			// A failed MAP_FIXED mmap may have removed the old mapping: put fresh
			// anonymous memory back before reading into it.
			if err := as.mem.mapAnon(gpa, length); err != nil {
				return err
			}
			for k := i; k < j; k++ {
				as.fileBacked.clear(fr[k] / pageSize)
			}
		}
		if _, err := f.ReadAt(as.mem.mem[gpa:gpa+length], o); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		i = j
	}
	return nil
}

// zeroFileFrames makes the freed file-backed frames fr read as zero again: it maps fresh
// anonymous memory over each run of contiguous frames, or, past maxHostMaps, writes zeros
// (the frame then stays in the file mapping, as a private page).
func (as *addressSpace) zeroFileFrames(fr []uint64) {
	slices.Sort(fr)
	for i := 0; i < len(fr); {
		j := i + 1
		for j < len(fr) && fr[j] == fr[j-1]+pageSize {
			j++
		}
		gpa, length := fr[i], uint64(j-i)*pageSize
		if as.hostMaps < maxHostMaps {
			as.hostMaps++
			if as.mem.mapAnon(gpa, length) == nil {
				for k := i; k < j; k++ {
					as.fileBacked.clear(fr[k] / pageSize)
				}
				i = j
				continue
			}
		}
		if guarded(func() { clear(as.mem.mem[gpa : gpa+length]) }) != nil {
			// The file no longer backs these frames (it shrank): they cannot be written,
			// so replace them with anonymous memory whatever the bound on host mappings.
			if as.mem.mapAnon(gpa, length) == nil {
				as.hostMaps++
				for k := i; k < j; k++ {
					as.fileBacked.clear(fr[k] / pageSize)
				}
			}
		}
		i = j
	}
}
