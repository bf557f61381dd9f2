package microvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ErrBadELF is wrapped by errors for a program that is not a loadable x86-64 ELF file.
var ErrBadELF = errors.New("not a loadable x86-64 ELF program")

// ELF constants used by the loader.
const (
	etExec    = 2
	etDyn     = 3
	emX8664   = 62
	ptLoad    = 1
	ptInterp  = 3
	ptPhdr    = 6
	pfX       = 1
	pfW       = 2
	pfR       = 4
	ehdrSize  = 64
	phdrSize  = 56
	maxPhdrs  = 128
	maxInterp = 4096
)

// progHeader is one ELF64 program header.
type progHeader struct {
	Type, Flags                      uint32
	Off, Vaddr, Filesz, Memsz, Align uint64
}

// elfFile is what the loader needs from an ELF executable: its type, entry point, program
// headers and interpreter path.
type elfFile struct {
	Type   uint16
	Entry  uint64
	Phoff  uint64
	Phdrs  []progHeader
	Interp string
}

// parseELF reads and validates the headers of an x86-64 ELF executable from r, of size
// bytes. It never trusts a count or offset it has not checked against size.
func parseELF(r io.ReaderAt, size int64) (*elfFile, error) {
	var h [ehdrSize]byte
	if size < ehdrSize {
		return nil, fmt.Errorf("%w: file too short", ErrBadELF)
	}
	if _, err := r.ReadAt(h[:], 0); err != nil {
		return nil, fmt.Errorf("%w: read header: %v", ErrBadELF, err)
	}
	if string(h[:4]) != "\x7fELF" {
		return nil, fmt.Errorf("%w: no ELF magic", ErrBadELF)
	}
	if h[4] != 2 || h[5] != 1 || h[6] != 1 {
		return nil, fmt.Errorf("%w: not 64-bit little-endian ELF version 1", ErrBadELF)
	}
	le := binary.LittleEndian
	f := &elfFile{Type: le.Uint16(h[16:]), Entry: le.Uint64(h[24:]), Phoff: le.Uint64(h[32:])}
	if f.Type != etExec && f.Type != etDyn {
		return nil, fmt.Errorf("%w: ELF type %d is not an executable", ErrBadELF, f.Type)
	}
	if m := le.Uint16(h[18:]); m != emX8664 {
		return nil, fmt.Errorf("%w: machine %d is not x86-64", ErrBadELF, m)
	}
	phentsize, phnum := le.Uint16(h[54:]), le.Uint16(h[56:])
	if phentsize != phdrSize || phnum == 0 || phnum > maxPhdrs {
		return nil, fmt.Errorf("%w: %d program headers of %d bytes", ErrBadELF, phnum, phentsize)
	}
	end := f.Phoff + uint64(phnum)*phdrSize
	if f.Phoff > uint64(size) || end > uint64(size) || end < f.Phoff {
		return nil, fmt.Errorf("%w: program headers outside the file", ErrBadELF)
	}
	buf := make([]byte, int(phnum)*phdrSize)
	if _, err := r.ReadAt(buf, int64(f.Phoff)); err != nil {
		return nil, fmt.Errorf("%w: read program headers: %v", ErrBadELF, err)
	}
	loads := 0
	for i := 0; i < int(phnum); i++ {
		b := buf[i*phdrSize:]
		p := progHeader{
			Type: le.Uint32(b[0:]), Flags: le.Uint32(b[4:]), Off: le.Uint64(b[8:]), Vaddr: le.Uint64(b[16:]),
			Filesz: le.Uint64(b[32:]), Memsz: le.Uint64(b[40:]), Align: le.Uint64(b[48:]),
		}
		switch p.Type {
		case ptLoad:
			loads++
			if p.Filesz > p.Memsz || p.Off+p.Filesz < p.Off || p.Off+p.Filesz > uint64(size) {
				return nil, fmt.Errorf("%w: segment %d: file range outside the file", ErrBadELF, i)
			}
			if p.Vaddr+p.Memsz < p.Vaddr || p.Vaddr+p.Memsz > 1<<46 {
				return nil, fmt.Errorf("%w: segment %d: address range %#x+%#x out of bounds", ErrBadELF, i, p.Vaddr, p.Memsz)
			}
			if p.Vaddr%pageSize != p.Off%pageSize {
				return nil, fmt.Errorf("%w: segment %d: address and offset not congruent", ErrBadELF, i)
			}
		case ptInterp:
			if p.Filesz < 2 || p.Filesz > maxInterp || p.Off+p.Filesz > uint64(size) || p.Off+p.Filesz < p.Off {
				return nil, fmt.Errorf("%w: bad PT_INTERP", ErrBadELF)
			}
			s := make([]byte, p.Filesz)
			if _, err := r.ReadAt(s, int64(p.Off)); err != nil {
				return nil, fmt.Errorf("%w: read PT_INTERP: %v", ErrBadELF, err)
			}
			if s[len(s)-1] != 0 || s[0] != '/' {
				return nil, fmt.Errorf("%w: PT_INTERP is not an absolute NUL-terminated path", ErrBadELF)
			}
			for _, c := range s[:len(s)-1] {
				if c == 0 {
					return nil, fmt.Errorf("%w: PT_INTERP contains NUL", ErrBadELF)
				}
			}
			f.Interp = string(s[:len(s)-1])
		}
		f.Phdrs = append(f.Phdrs, p)
	}
	if loads == 0 {
		return nil, fmt.Errorf("%w: no loadable segment", ErrBadELF)
	}
	return f, nil
}

// span returns the page-aligned address range covered by the loadable segments.
func (f *elfFile) span() (lo, hi uint64) {
	lo = ^uint64(0)
	for _, p := range f.Phdrs {
		if p.Type == ptLoad {
			lo = min(lo, pageDown(p.Vaddr))
			hi = max(hi, pageUp(p.Vaddr+p.Memsz))
		}
	}
	return lo, hi
}

// phdrAddr is the address of the program headers in memory (for AT_PHDR), relative to the
// load bias.
func (f *elfFile) phdrAddr() uint64 {
	for _, p := range f.Phdrs {
		if p.Type == ptPhdr {
			return p.Vaddr
		}
	}
	for _, p := range f.Phdrs {
		if p.Type == ptLoad && f.Phoff >= p.Off && f.Phoff < p.Off+p.Filesz {
			return p.Vaddr + f.Phoff - p.Off
		}
	}
	return 0
}
