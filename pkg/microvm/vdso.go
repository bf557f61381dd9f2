package microvm

import (
	"debug/elf"
	"encoding/binary"
	"math/bits"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// The vDSO: a small ELF shared object mapped into every guest, as Linux maps its own, so
// that programs read the time without a system call. glibc and the Go runtime find it
// through AT_SYSINFO_EHDR and call __vdso_clock_gettime, __vdso_gettimeofday and
// __vdso_time instead of the system calls; each costs a VM exit here (tens of
// microseconds on kvm_pvm), and a Go program asks for the time hundreds of times a run.
//
// Its code (vdsoCode) computes the host's clocks from the guest's time-stamp counter and
// a read-only page of parameters the VMM writes before the program starts (vvar, below the
// ELF): ns = base + (rdtsc - tsc0) * mult >> 32 + offset[clock]. Clocks the page does not
// list, and every call when the host's TSC cannot serve as a clock (kvmhv.System.GuestTSC),
// fall back to the real system call, which the VMM serves as before. The vDSO holds no
// secret and gives the guest nothing it could not do itself: it is guest code, running at
// CPL3 like the program, and `rdtsc` is open to the program anyway.
const (
	vvarAddr = stackTop // parameters page, read-only; above the stack, sharing its page table

	vdsoAddr      = vvarAddr + pageSize
	vdsoCodeOff   = 0x800 // offset of vdsoCode in the ELF image: its RIP-relative operands depend on it
	vdsoSoname    = "linux-vdso.so.1"
	vdsoVersion   = "LINUX_2.6"
	atSysinfoEhdr = 33 // AT_SYSINFO_EHDR
)

// Layout of the vvar page, in bytes, each field a little-endian uint64.
const (
	vvarTSC0   = 0x00 // guest TSC at the reading
	vvarMult   = 0x08 // nanoseconds per TSC tick, 32.32 fixed point
	vvarBase   = 0x10 // host CLOCK_MONOTONIC at the reading, ns
	vvarMask   = 0x18 // bit N set: clock N is served here
	vvarOffset = 0x20 // [8]uint64: added to CLOCK_MONOTONIC for clock N (two's complement)
)

// vdsoClocks are the clocks the vDSO serves, all derived from CLOCK_MONOTONIC by a
// constant offset taken when the program starts. The CPU-time clocks (2, 3) are not.
var vdsoClocks = [...]int32{
	unix.CLOCK_REALTIME, unix.CLOCK_MONOTONIC, unix.CLOCK_MONOTONIC_RAW,
	unix.CLOCK_REALTIME_COARSE, unix.CLOCK_MONOTONIC_COARSE, unix.CLOCK_BOOTTIME,
}

// vdsoCode is the vDSO's code, at vdsoCodeOff in the image (vvar is thus at -0x1800 from
// its first byte). System V calling convention; it touches only caller-saved registers.
// TestVDSOListing disassembles it and checks it against this listing.
var vdsoCode = []byte{
	// __vdso_clock_gettime(clockid edi, struct timespec *rsi): served clocks here, others by the system call
	0x83, 0xff, 0x07, // 0000  cmp edi, 0x7
	0x77, 0x26, // 0003  jnbe 0x2b
	0x41, 0x89, 0xf8, // 0005  mov r8d, edi
	0x4c, 0x0f, 0xa3, 0x05, 0x08, 0xe8, 0xff, 0xff, // 0008  bt qword ptr [vvar.mask], r8
	0x73, 0x19, // 0010  jnb 0x2b
	0xe8, 0x9e, 0x00, 0x00, 0x00, // 0012  call 0xb5
	0x31, 0xd2, // 0017  xor edx, edx
	0xb9, 0x00, 0xca, 0x9a, 0x3b, // 0019  mov ecx, 0x3b9aca00
	0x48, 0xf7, 0xf1, // 001e  div rcx
	0x48, 0x89, 0x06, // 0021  mov qword ptr [rsi], rax
	0x48, 0x89, 0x56, 0x08, // 0024  mov qword ptr [rsi+0x8], rdx
	0x31, 0xc0, // 0028  xor eax, eax
	0xc3,                         // 002a  ret
	0xb8, 0xe4, 0x00, 0x00, 0x00, // 002b  mov eax, 0xe4
	0x0f, 0x05, // 0030  syscall
	0xc3, // 0032  ret

	// __vdso_gettimeofday(struct timeval *rdi, struct timezone *rsi): the system call when a time zone is asked for
	0x48, 0x85, 0xf6, // 0033  test rsi, rsi
	0x75, 0x38, // 0036  jnz 0x70
	0x45, 0x31, 0xc0, // 0038  xor r8d, r8d
	0x4c, 0x0f, 0xa3, 0x05, 0xd5, 0xe7, 0xff, 0xff, // 003b  bt qword ptr [vvar.mask], r8
	0x73, 0x2b, // 0043  jnb 0x70
	0x48, 0x85, 0xff, // 0045  test rdi, rdi
	0x74, 0x23, // 0048  jz 0x6d
	0xe8, 0x66, 0x00, 0x00, 0x00, // 004a  call 0xb5
	0x31, 0xd2, // 004f  xor edx, edx
	0xb9, 0x00, 0xca, 0x9a, 0x3b, // 0051  mov ecx, 0x3b9aca00
	0x48, 0xf7, 0xf1, // 0056  div rcx
	0x48, 0x89, 0x07, // 0059  mov qword ptr [rdi], rax
	0x48, 0x89, 0xd0, // 005c  mov rax, rdx
	0x31, 0xd2, // 005f  xor edx, edx
	0xb9, 0xe8, 0x03, 0x00, 0x00, // 0061  mov ecx, 0x3e8
	0x48, 0xf7, 0xf1, // 0066  div rcx
	0x48, 0x89, 0x47, 0x08, // 0069  mov qword ptr [rdi+0x8], rax
	0x31, 0xc0, // 006d  xor eax, eax
	0xc3,                         // 006f  ret
	0xb8, 0x60, 0x00, 0x00, 0x00, // 0070  mov eax, 0x60
	0x0f, 0x05, // 0075  syscall
	0xc3, // 0077  ret

	// __vdso_time(time_t *rdi)
	0x45, 0x31, 0xc0, // 0078  xor r8d, r8d
	0x4c, 0x0f, 0xa3, 0x05, 0x95, 0xe7, 0xff, 0xff, // 007b  bt qword ptr [vvar.mask], r8
	0x73, 0x18, // 0083  jnb 0x9d
	0xe8, 0x2b, 0x00, 0x00, 0x00, // 0085  call 0xb5
	0x31, 0xd2, // 008a  xor edx, edx
	0xb9, 0x00, 0xca, 0x9a, 0x3b, // 008c  mov ecx, 0x3b9aca00
	0x48, 0xf7, 0xf1, // 0091  div rcx
	0x48, 0x85, 0xff, // 0094  test rdi, rdi
	0x74, 0x03, // 0097  jz 0x9c
	0x48, 0x89, 0x07, // 0099  mov qword ptr [rdi], rax
	0xc3,                         // 009c  ret
	0xb8, 0xc9, 0x00, 0x00, 0x00, // 009d  mov eax, 0xc9
	0x0f, 0x05, // 00a2  syscall
	0xc3, // 00a4  ret

	// __vdso_clock_getres(clockid edi, struct timespec *rsi): always the system call
	0xb8, 0xe5, 0x00, 0x00, 0x00, // 00a5  mov eax, 0xe5
	0x0f, 0x05, // 00aa  syscall
	0xc3, // 00ac  ret

	// __vdso_getcpu(unsigned *rdi, unsigned *rsi, void *rdx): always the system call
	0xb8, 0x35, 0x01, 0x00, 0x00, // 00ad  mov eax, 0x135
	0x0f, 0x05, // 00b2  syscall
	0xc3, // 00b4  ret

	// now: rax = the nanoseconds of clock r8 (< 8, served); clobbers rcx, rdx
	0x0f, 0xae, 0xe8, // 00b5  lfence
	0x0f, 0x31, // 00b8  rdtsc
	0x48, 0xc1, 0xe2, 0x20, // 00ba  shl rdx, 0x20
	0x48, 0x09, 0xd0, // 00be  or rax, rdx
	0x48, 0x2b, 0x05, 0x38, 0xe7, 0xff, 0xff, // 00c1  sub rax, qword ptr [vvar.tsc0]
	0x48, 0xf7, 0x25, 0x39, 0xe7, 0xff, 0xff, // 00c8  mul qword ptr [vvar.mult]
	0x48, 0x0f, 0xac, 0xd0, 0x20, // 00cf  shrd rax, rdx, 0x20
	0x48, 0x03, 0x05, 0x35, 0xe7, 0xff, 0xff, // 00d4  add rax, qword ptr [vvar.base]
	0x48, 0x8d, 0x0d, 0x3e, 0xe7, 0xff, 0xff, // 00db  lea rcx, ptr [vvar.offset]
	0x4a, 0x03, 0x04, 0xc1, // 00e2  add rax, qword ptr [rcx+8*r8]
	0xc3, // 00e6  ret
}

// vdsoFuncs are the exported functions: offset in vdsoCode and size. Each is exported as
// __vdso_NAME (global) and NAME (weak), version LINUX_2.6, as Linux's x86-64 vDSO does.
var vdsoFuncs = []struct {
	name      string
	off, size uint64
}{
	{"clock_gettime", 0x00, 0x33},
	{"gettimeofday", 0x33, 0x45},
	{"time", 0x78, 0x2d},
	{"clock_getres", 0xa5, 0x08},
	{"getcpu", 0xad, 0x08},
}

// vdsoImage returns the vDSO's ELF image, built once.
var vdsoImage = sync.OnceValue(buildVDSO)

// Sizes of ELF structures and the version-definition flag, which debug/elf has no
// names for; the rest of the ELF constants are debug/elf's.
const (
	elfSymSize      = elf.Sym64Size
	elfDynSize      = 16 // Elf64_Dyn
	elfShdrSize     = 64 // Elf64_Shdr
	verFlagBase     = 1  // VER_FLG_BASE
	verdefSize      = 20 // Elf64_Verdef
	verdauxSize     = 8  // Elf64_Verdaux
	vdsoTextSection = 7  // index of .text among the section headers below
)

// elfHash is the System V ELF hash function, for DT_HASH and version definitions.
func elfHash(name string) uint32 {
	var h uint32
	for i := 0; i < len(name); i++ {
		h = h<<4 + uint32(name[i])
		if g := h & 0xf0000000; g != 0 {
			h ^= g >> 24
		}
		h &^= 0xf0000000
	}
	return h
}

// buildVDSO lays out the vDSO, an ET_DYN image linked at 0 that fits in one page: ELF
// header, a PT_LOAD of the whole image (read, execute) and a PT_DYNAMIC, then .hash,
// .dynsym, .dynstr, .gnu.version, .gnu.version_d, .dynamic, .text at vdsoCodeOff,
// .shstrtab and the section headers (for tools: loaders use the program headers only).
func buildVDSO() []byte {
	le := binary.LittleEndian
	img := make([]byte, pageSize)
	align := func(off, a int) int { return (off + a - 1) &^ (a - 1) }

	// Strings and symbols.
	var dynstr []byte
	str := func(s string) uint32 {
		off := uint32(len(dynstr))
		dynstr = append(append(dynstr, s...), 0)
		return off
	}
	str("")
	soname, version := str(vdsoSoname), str(vdsoVersion)
	type sym struct {
		name       string
		nameOff    uint32
		info       byte
		shndx      uint16
		value, siz uint64
	}
	syms := []sym{{}}
	for _, f := range vdsoFuncs {
		v := vdsoCodeOff + f.off
		syms = append(syms,
			sym{"__vdso_" + f.name, str("__vdso_" + f.name), byte(elf.STB_GLOBAL)<<4 | byte(elf.STT_FUNC), vdsoTextSection, v, f.size},
			sym{f.name, str(f.name), byte(elf.STB_WEAK)<<4 | byte(elf.STT_FUNC), vdsoTextSection, v, f.size})
	}
	syms = append(syms, sym{vdsoVersion, version, byte(elf.STB_GLOBAL)<<4 | byte(elf.STT_OBJECT), uint16(elf.SHN_ABS), 0, 0})

	off := ehdrSize + 2*phdrSize
	// .hash: nbucket, nchain, buckets, chains.
	hashOff := off
	nbucket := uint32(len(syms))
	buckets := make([]uint32, nbucket)
	chains := make([]uint32, len(syms))
	for i := len(syms) - 1; i > 0; i-- {
		b := elfHash(syms[i].name) % nbucket
		chains[i] = buckets[b]
		buckets[b] = uint32(i)
	}
	le.PutUint32(img[off:], nbucket)
	le.PutUint32(img[off+4:], uint32(len(syms)))
	off += 8
	for _, b := range append(buckets, chains...) {
		le.PutUint32(img[off:], b)
		off += 4
	}
	hashEnd := off
	// .dynsym
	symOff := align(off, 8)
	off = symOff
	for _, s := range syms {
		le.PutUint32(img[off:], s.nameOff)
		img[off+4] = s.info
		le.PutUint16(img[off+6:], s.shndx)
		le.PutUint64(img[off+8:], s.value)
		le.PutUint64(img[off+16:], s.siz)
		off += elfSymSize
	}
	// .dynstr
	strOff := off
	off += copy(img[off:], dynstr)
	// .gnu.version: every symbol but the first is version 2, LINUX_2.6.
	versymOff := align(off, 2)
	off = versymOff
	for i := range syms {
		if i > 0 {
			le.PutUint16(img[off:], 2)
		}
		off += 2
	}
	// .gnu.version_d: the base definition (the object itself), then LINUX_2.6.
	verdefOff := align(off, 8)
	off = verdefOff
	for i, d := range []struct {
		flags uint16
		name  string
		nameO uint32
	}{{verFlagBase, vdsoSoname, soname}, {0, vdsoVersion, version}} {
		next := uint32(verdefSize + verdauxSize)
		if i == 1 {
			next = 0
		}
		le.PutUint16(img[off:], 1) // vd_version
		le.PutUint16(img[off+2:], d.flags)
		le.PutUint16(img[off+4:], uint16(i+1)) // vd_ndx
		le.PutUint16(img[off+6:], 1)           // vd_cnt
		le.PutUint32(img[off+8:], elfHash(d.name))
		le.PutUint32(img[off+12:], verdefSize) // vd_aux
		le.PutUint32(img[off+16:], next)
		le.PutUint32(img[off+verdefSize:], d.nameO) // vda_name; vda_next 0
		off += verdefSize + verdauxSize
	}
	// .dynamic
	dynOff := align(off, 8)
	off = dynOff
	for _, d := range [][2]uint64{
		{uint64(elf.DT_HASH), uint64(hashOff)}, {uint64(elf.DT_STRTAB), uint64(strOff)}, {uint64(elf.DT_SYMTAB), uint64(symOff)},
		{uint64(elf.DT_STRSZ), uint64(len(dynstr))}, {uint64(elf.DT_SYMENT), elfSymSize}, {uint64(elf.DT_SONAME), uint64(soname)},
		{uint64(elf.DT_VERSYM), uint64(versymOff)}, {uint64(elf.DT_VERDEF), uint64(verdefOff)}, {uint64(elf.DT_VERDEFNUM), 2}, {uint64(elf.DT_NULL), 0},
	} {
		le.PutUint64(img[off:], d[0])
		le.PutUint64(img[off+8:], d[1])
		off += elfDynSize
	}
	dynEnd := off
	if off > vdsoCodeOff {
		panic("vdso: tables overlap the code")
	}
	// .text
	copy(img[vdsoCodeOff:], vdsoCode)
	off = vdsoCodeOff + len(vdsoCode)
	// .shstrtab and the section headers.
	var shstr []byte
	sh := func(s string) uint32 {
		o := uint32(len(shstr))
		shstr = append(append(shstr, s...), 0)
		return o
	}
	sh("")
	shstrOff := off
	type section struct {
		name             uint32
		typ              uint32
		flags            uint64
		off, size        int
		link, info       uint32
		addralign, entsz uint64
	}
	// Indexes: 1 .hash, 2 .dynsym, 3 .dynstr, 4 .gnu.version, 5 .gnu.version_d, 6 .dynamic,
	// 7 .text (vdsoTextSection), 8 .shstrtab.
	secs := []section{
		{},
		{sh(".hash"), uint32(elf.SHT_HASH), uint64(elf.SHF_ALLOC), hashOff, hashEnd - hashOff, 2, 0, 8, 4},
		{sh(".dynsym"), uint32(elf.SHT_DYNSYM), uint64(elf.SHF_ALLOC), symOff, len(syms) * elfSymSize, 3, 1, 8, elfSymSize},
		{sh(".dynstr"), uint32(elf.SHT_STRTAB), uint64(elf.SHF_ALLOC), strOff, len(dynstr), 0, 0, 1, 0},
		{sh(".gnu.version"), uint32(elf.SHT_GNU_VERSYM), uint64(elf.SHF_ALLOC), versymOff, 2 * len(syms), 2, 0, 2, 2},
		{sh(".gnu.version_d"), uint32(elf.SHT_GNU_VERDEF), uint64(elf.SHF_ALLOC), verdefOff, 2 * (verdefSize + verdauxSize), 3, 2, 8, 0},
		{sh(".dynamic"), uint32(elf.SHT_DYNAMIC), uint64(elf.SHF_ALLOC), dynOff, dynEnd - dynOff, 3, 0, 8, elfDynSize},
		{sh(".text"), uint32(elf.SHT_PROGBITS), uint64(elf.SHF_ALLOC | elf.SHF_EXECINSTR), vdsoCodeOff, len(vdsoCode), 0, 0, 16, 0},
		{sh(".shstrtab"), uint32(elf.SHT_STRTAB), 0, 0, 0, 0, 0, 1, 0},
	}
	off += copy(img[off:], shstr)
	secs[8].off, secs[8].size = shstrOff, len(shstr)
	shOff := align(off, 8)
	off = shOff
	for _, s := range secs {
		le.PutUint32(img[off:], s.name)
		le.PutUint32(img[off+4:], s.typ)
		le.PutUint64(img[off+8:], s.flags)
		if s.flags&uint64(elf.SHF_ALLOC) != 0 {
			le.PutUint64(img[off+16:], uint64(s.off)) // sh_addr: linked at 0
		}
		le.PutUint64(img[off+24:], uint64(s.off))
		le.PutUint64(img[off+32:], uint64(s.size))
		le.PutUint32(img[off+40:], s.link)
		le.PutUint32(img[off+44:], s.info)
		le.PutUint64(img[off+48:], s.addralign)
		le.PutUint64(img[off+56:], s.entsz)
		off += elfShdrSize
	}
	size := off
	if size > pageSize {
		panic("vdso: image over one page")
	}

	// ELF header.
	copy(img, "\x7fELF")
	img[4], img[5], img[6] = 2, 1, 1 // ELFCLASS64, ELFDATA2LSB, EV_CURRENT
	le.PutUint16(img[16:], uint16(etDyn))
	le.PutUint16(img[18:], emX8664)
	le.PutUint32(img[20:], 1) // EV_CURRENT
	le.PutUint64(img[32:], ehdrSize)
	le.PutUint64(img[40:], uint64(shOff))
	le.PutUint16(img[52:], ehdrSize)
	le.PutUint16(img[54:], phdrSize)
	le.PutUint16(img[56:], 2)
	le.PutUint16(img[58:], elfShdrSize)
	le.PutUint16(img[60:], uint16(len(secs)))
	le.PutUint16(img[62:], 8) // .shstrtab
	// Program headers: the whole image, and the dynamic table (read-only, so that loaders
	// do not relocate it in place).
	for i, p := range []struct {
		typ, flags uint32
		off, size  uint64
		align      uint64
	}{{ptLoad, pfR | pfX, 0, uint64(size), pageSize}, {uint32(elf.PT_DYNAMIC), pfR, uint64(dynOff), uint64(dynEnd - dynOff), 8}} {
		o := ehdrSize + i*phdrSize
		le.PutUint32(img[o:], p.typ)
		le.PutUint32(img[o+4:], p.flags)
		le.PutUint64(img[o+8:], p.off)
		le.PutUint64(img[o+16:], p.off) // p_vaddr
		le.PutUint64(img[o+24:], p.off) // p_paddr
		le.PutUint64(img[o+32:], p.size)
		le.PutUint64(img[o+40:], p.size)
		le.PutUint64(img[o+48:], p.align)
	}
	return img[:size]
}

// mapVDSO maps the vvar page (zero: no clock served until startClock fills it) and the
// vDSO into the guest, both read-only, the vDSO executable. It reports whether it did:
// not when Config.NoVDSO is set or the host's TSC cannot serve as a clock.
func (vm *VM) mapVDSO() (bool, error) {
	if vm.cfg.NoVDSO {
		return false, nil
	}
	if ok, _ := vm.sys.GuestTSC(); !ok {
		return false, nil
	}
	img := vdsoImage()
	if err := vm.mm.mapAnon(vvarAddr, pageSize, kvmhv.ProtRead); err != nil {
		return false, err
	}
	n := pageUp(uint64(len(img)))
	if err := vm.mm.mapAnon(vdsoAddr, n, kvmhv.ProtRead|kvmhv.ProtExec); err != nil {
		return false, err
	}
	if err := vm.hv.Poke(img, vdsoAddr); err != nil {
		return false, err
	}
	return true, nil
}

// maxReadingAge bounds the age of a Pool's TSC reading. The vDSO counts from it at KVM's
// nominal TSC rate while the host's CLOCK_MONOTONIC follows NTP's frequency correction
// (tens of parts per million), and stops across a suspend while the TSC may not: an old
// reading would put the guest's clocks off the host's by its age times that correction.
const maxReadingAge = time.Second

// freshReading returns r unless it is nil or older than maxReadingAge at host
// CLOCK_MONOTONIC now (the VM waited in its Pool).
func freshReading(r *kvmhv.TSCReading, now time.Duration) *kvmhv.TSCReading {
	if r == nil || now-r.Monotonic > maxReadingAge {
		return nil
	}
	return r
}

// startClock fills the vvar page from a reading of the first vCPU's TSC: the one its
// Pool took when it made the VM ahead of need, or one taken now on the vCPU's thread, before
// the program's first instruction. The other clocks' offsets from CLOCK_MONOTONIC are
// taken now. If there is no reading the page stays zero and every time call goes to the
// VMM (Stats.GuestClock says which happened).
func (vm *VM) startClock(v *kvmhv.VCPU, ahead *kvmhv.TSCReading) {
	r := freshReading(ahead, monotonicNow())
	if r == nil {
		now, err := v.ReadTSC()
		if err != nil {
			return
		}
		r = &now
	}
	if r.KHz < 1000 {
		return
	}
	page := make([]byte, vvarOffset+8*8)
	le := binary.LittleEndian
	le.PutUint64(page[vvarTSC0:], r.TSC)
	le.PutUint64(page[vvarMult:], vvarMultOf(r.KHz))
	le.PutUint64(page[vvarBase:], uint64(r.Monotonic))
	var mask uint64
	for _, clk := range vdsoClocks {
		mask |= 1 << clk
		le.PutUint64(page[vvarOffset+8*int(clk):], uint64(clockOffset(clk)))
	}
	le.PutUint64(page[vvarMask:], mask)
	if vm.hv.Poke(page, vvarAddr) == nil {
		vm.stats.guestClock.Store(true)
	}
}

// vvarMultOf returns the nanoseconds per tick of a counter of khz kHz in 32.32 fixed
// point: 10^6 * 2^32 / khz, rounded down. khz must be over 1000 (a 1 MHz counter).
func vvarMultOf(khz uint64) uint64 {
	mult, _ := bits.Div64(1e6>>32, 1e6<<32, khz)
	return mult
}

// clockOffset returns clk minus CLOCK_MONOTONIC now, from the middle of two monotonic
// reads around the read of clk.
func clockOffset(clk int32) time.Duration {
	var a, c, b unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &a)
	unix.ClockGettime(clk, &c)
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &b)
	return time.Duration(c.Nano() - (a.Nano()+b.Nano())/2)
}
