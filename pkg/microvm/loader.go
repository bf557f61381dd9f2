package microvm

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/guestfs"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// Auxiliary vector keys (include/uapi/linux/auxvec.h).
const (
	atNull        = 0
	atPhdr        = 3
	atPhent       = 4
	atPhnum       = 5
	atPagesz      = 6
	atBase        = 7
	atFlags       = 8
	atEntry       = 9
	atUID         = 11
	atEUID        = 12
	atGID         = 13
	atEGID        = 14
	atPlatform    = 15
	atHwcap       = 16
	atClktck      = 17
	atSecure      = 23
	atRandom      = 25
	atHwcap2      = 26
	atExecfn      = 31
	atMinSigStkSz = 51
	guestUID      = 1000
	guestGID      = 1000
	maxArgBytes   = 256 << 10
)

// openELF opens a guest file and parses its ELF headers.
func (vm *VM) openELF(path string) (guestfs.File, *elfFile, error) {
	f, err := vm.fs.Open("/", path, unix.O_RDONLY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s in the guest image: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w: not a regular file", path, ErrBadELF)
	}
	e, err := parseELF(f, st.Size)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, e, nil
}

// mapELF maps the loadable segments of e at bias. When f is a file of the image, the whole
// pages of a segment's file content are mapped copy-on-write from the image file (see
// kvmhv.VM.MapFile) rather than copied; only the partial pages at either end are copied,
// so that, as before, the bytes of those pages outside the segment are zero (or another
// segment's), and the bss is anonymous.
func (vm *VM) mapELF(f guestfs.File, e *elfFile, bias uint64) error {
	host, hostOff, hostSize, inImage := guestfs.ImageExtent(f)
	for _, p := range e.Phdrs {
		if p.Type != ptLoad || p.Memsz == 0 {
			continue
		}
		var prot kvmhv.Prot
		if p.Flags&pfR != 0 {
			prot |= kvmhv.ProtRead
		}
		if p.Flags&pfW != 0 {
			prot |= kvmhv.ProtWrite | kvmhv.ProtRead
		}
		if p.Flags&pfX != 0 {
			prot |= kvmhv.ProtExec | kvmhv.ProtRead
		}
		lo := bias + p.Vaddr
		start, end := pageDown(lo), pageUp(lo+p.Memsz)
		// The whole pages of the file content: [fileStart, fileEnd) in the guest.
		fileStart, fileEnd := pageUp(lo), pageDown(lo+p.Filesz)
		mapped := inImage && fileStart < fileEnd && (p.Off-p.Vaddr)%pageSize == 0 &&
			p.Off <= uint64(hostSize) && p.Filesz <= uint64(hostSize)-p.Off
		vm.mm.mu.Lock()
		// Segments may share a page at their boundary: keep the union of protections.
		segProt := prot | vm.mm.protAt(start)
		var err error
		if mapped {
			err = vm.hv.Map(start, fileStart-start, segProt)
			if err == nil {
				err = vm.hv.Map(fileEnd, end-fileEnd, segProt)
			}
			if err == nil {
				err = vm.hv.MapFile(fileStart, fileEnd-fileStart, segProt, host, hostOff+int64(p.Off+fileStart-lo))
			}
		} else {
			err = vm.hv.Map(start, end-start, segProt)
		}
		if err != nil {
			vm.mm.mu.Unlock()
			return fmt.Errorf("map segment at %#x: %w", start, err)
		}
		vm.mm.insert(start, end, prot)
		vm.mm.mu.Unlock()
		copyRange := func(va, n uint64) error {
			if n == 0 {
				return nil
			}
			buf := make([]byte, n)
			if _, err := f.ReadAt(buf, int64(p.Off+va-lo)); err != nil {
				return fmt.Errorf("read segment: %w", err)
			}
			if err := vm.hv.Poke(buf, va); err != nil {
				return fmt.Errorf("load segment at %#x: %w", va, err)
			}
			return nil
		}
		if mapped {
			err = copyRange(lo, fileStart-lo)
			if err == nil {
				err = copyRange(fileEnd, lo+p.Filesz-fileEnd)
			}
		} else {
			err = copyRange(lo, p.Filesz)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// load maps the program (and its interpreter) and builds the initial stack; it returns the
// registers of the first thread.
func (vm *VM) load() (kvmhv.Regs, error) {
	f, e, err := vm.openELF(vm.cfg.Program)
	if err != nil {
		return kvmhv.Regs{}, err
	}
	defer f.Close()
	var bias uint64
	if e.Type == etDyn {
		bias = pieBase
	}
	if err := vm.mapELF(f, e, bias); err != nil {
		return kvmhv.Regs{}, err
	}
	_, hi := e.span()
	vm.mm.brkStart, vm.mm.brk = bias+hi, bias+hi
	entry, interpBase := bias+e.Entry, uint64(0)
	if e.Interp != "" {
		fi, ei, err := vm.openELF(e.Interp)
		if err != nil {
			return kvmhv.Regs{}, fmt.Errorf("interpreter: %w", err)
		}
		defer fi.Close()
		if ei.Type != etDyn || ei.Interp != "" {
			return kvmhv.Regs{}, fmt.Errorf("interpreter %s: %w: not a self-contained shared object", e.Interp, ErrBadELF)
		}
		lo, hi := ei.span()
		vm.mm.mu.Lock()
		base, ok := vm.mm.free(hi - lo)
		vm.mm.mu.Unlock()
		if !ok {
			return kvmhv.Regs{}, fmt.Errorf("no room for the interpreter")
		}
		interpBase = base - lo
		if err := vm.mapELF(fi, ei, interpBase); err != nil {
			return kvmhv.Regs{}, fmt.Errorf("interpreter: %w", err)
		}
		entry = interpBase + ei.Entry
	}
	if err := vm.mm.mapAnon(stackTop-stackSize, stackSize, kvmhv.ProtRead|kvmhv.ProtWrite); err != nil {
		return kvmhv.Regs{}, fmt.Errorf("map stack: %w", err)
	}
	vdso, err := vm.mapVDSO()
	if err != nil {
		return kvmhv.Regs{}, fmt.Errorf("map vDSO: %w", err)
	}
	vm.vdso = vdso
	sp, err := vm.buildStack(e, bias, interpBase)
	if err != nil {
		return kvmhv.Regs{}, err
	}
	return kvmhv.Regs{RIP: entry, RSP: sp, RFLAGS: 0x202}, nil
}

// buildStack writes argc, argv, envp and the auxiliary vector below stackTop, as the
// Linux ELF loader does, and returns the initial stack pointer.
func (vm *VM) buildStack(e *elfFile, bias, interpBase uint64) (uint64, error) {
	var strs []byte
	total := 0
	for _, s := range append(append([]string{}, vm.cfg.Args...), vm.cfg.Env...) {
		total += len(s) + 1
	}
	if total > maxArgBytes {
		return 0, fmt.Errorf("%w: arguments and environment are %d bytes, limit %d", ErrInvalidConfig, total, maxArgBytes)
	}
	// Strings area, built top-down: offsets are from its start.
	add := func(s string) int {
		off := len(strs)
		strs = append(strs, s...)
		strs = append(strs, 0)
		return off
	}
	argOff := make([]int, len(vm.cfg.Args))
	for i, a := range vm.cfg.Args {
		argOff[i] = add(a)
	}
	envOff := make([]int, len(vm.cfg.Env))
	for i, s := range vm.cfg.Env {
		envOff[i] = add(s)
	}
	execfn := add(vm.cfg.Program)
	platform := add("x86_64")
	randOff := len(strs)
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return 0, err
	}
	strs = append(strs, rnd[:]...)

	strBase := (stackTop - 16 - uint64(len(strs))) &^ 15
	at := func(off int) uint64 { return strBase + uint64(off) }

	aux := []uint64{
		atPhdr, bias + e.phdrAddr(), atPhent, phdrSize, atPhnum, uint64(len(e.Phdrs)),
		atPagesz, pageSize, atBase, interpBase, atFlags, 0, atEntry, bias + e.Entry,
		atUID, guestUID, atEUID, guestUID, atGID, guestGID, atEGID, guestGID, atSecure, 0,
		atRandom, at(randOff), atHwcap, 0x178bfbff, atHwcap2, 0, atClktck, 100,
		atPlatform, at(platform), atExecfn, at(execfn), atMinSigStkSz, 2048,
	}
	if vm.vdso {
		aux = append(aux, atSysinfoEhdr, vdsoAddr)
	}
	aux = append(aux, atNull, 0)
	var words []uint64
	words = append(words, uint64(len(vm.cfg.Args)))
	for _, o := range argOff {
		words = append(words, at(o))
	}
	words = append(words, 0)
	for _, o := range envOff {
		words = append(words, at(o))
	}
	words = append(words, 0)
	words = append(words, aux...)
	sp := (strBase - uint64(len(words))*8) &^ 15
	buf := make([]byte, len(words)*8)
	for i, w := range words {
		binary.LittleEndian.PutUint64(buf[i*8:], w)
	}
	if _, err := vm.hv.WriteAt(buf, sp); err != nil {
		return 0, fmt.Errorf("write initial stack: %w", err)
	}
	if _, err := vm.hv.WriteAt(strs, strBase); err != nil {
		return 0, fmt.Errorf("write initial stack strings: %w", err)
	}
	return sp, nil
}
