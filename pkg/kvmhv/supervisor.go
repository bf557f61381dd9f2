package kvmhv

import "encoding/binary"

// Guest-physical layout of the supervisor area, at the bottom of guest memory. Everything
// here is mapped at SupervisorBase+gpa with U/S=0 (the guest program can never touch it),
// except, on kvm_pvm, the code page, which is mapped user-executable and read-only there
// because the syscall entry stub runs at CPL3 (see the package comment).
const (
	gdtGPA      = 0x1000 // GDT: fixed descriptors, then one TSS descriptor per vCPU
	idtGPA      = 0x2000 // IDT: 32 exception gates
	tssGPA      = 0x3000 // TSS array: tssStride bytes per vCPU, four pages
	codeGPA     = 0x7000 // supervisor code page (byte listing below)
	stackGPA    = 0x8000 // per-vCPU exception stacks, one page each
	tssStride   = 256
	tssSize     = 104                       // the 64-bit TSS proper
	ioBitmapLen = portSyscall/8 + 1 + 1     // I/O permission bitmap up to the hypercall port, plus the 0xff terminator
	tssLimit    = tssSize + ioBitmapLen - 1 // descriptor limit: TSS and bitmap
	idtVectors  = 32
	excStubBase = 0x100 // offset of exception vector 0's stub in the code page
	excStubSize = 16    // bytes per exception stub

	// MaxVCPUs is the most vCPUs one VM may have.
	MaxVCPUs = 64

	// supervisorPages is the size of the supervisor area in pages.
	supervisorPages = stackGPA/pageSize + MaxVCPUs
)

// SupervisorBase is the guest-virtual address at which the supervisor area is mapped: the
// start of the last PML4 slot, far above anything a Linux user program can map.
const SupervisorBase uint64 = 0xffff_ff80_0000_0000

// Segment selectors (GDT index*8 | RPL). STAR makes sysretq load userCS/userSS.
const (
	kernelCS = 0x08
	kernelSS = 0x10
	userSS   = 0x18 | 3
	userCS   = 0x20 | 3
	tssSel0  = 0x28 // first TSS descriptor; each takes 16 bytes
	gdtFixed = 5    // null, kernel code, kernel data, user data, user code
)

// Hypercall ports. The syscall stub uses portSyscall; exception vector N uses portException+N.
const (
	portSyscall   = 0xe0
	portException = 0x80
)

// Supervisor code, the only guest code Isolator itself supplies. It runs at CPL0 on
// VT-x/AMD-V (at CPL3 for the syscall stub on kvm_pvm) and is a handful of instructions so
// that the kvm_pvm emulator, which interprets CPL0 code, has almost nothing to do.
//
// Syscall entry (MSR_LSTAR = SupervisorBase+codeGPA):
//
//	e6 e0       out  0xe0, al   ; hypercall: the VMM serves the call (RAX = number)
//	48 0f 07    sysretq         ; VT-x/AMD-V only: back to CPL3 at RCX with RFLAGS = R11
//
// Exception vector N (IDT gate N -> SupervisorBase+codeGPA+excStubBase+16*N), for vectors
// without an error code first:
//
//	6a 00       push 0          ; uniform frame: error code slot
//	e6 XX       out  0x80+N, al ; tell the VMM; it reads the frame at RSP and decides
//	f4          hlt             ; never resumed here: the VMM restores user state itself
//	eb fd       jmp  hlt
//
// TestSupervisorListing disassembles these bytes and checks them against this listing.
var syscallStub = []byte{0xe6, portSyscall, 0x48, 0x0f, 0x07}

// syscallExitOffset is the offset in the code page just past the hypercall `out`.
const syscallExitOffset = 2

// hasErrorCode reports whether the CPU pushes an error code for exception vector v.
func hasErrorCode(v int) bool {
	switch v {
	case 8, 10, 11, 12, 13, 14, 17, 21, 29, 30:
		return true
	}
	return false
}

// exceptionStub returns the stub bytes for vector v and the offset just past its `out`.
func exceptionStub(v int) (code []byte, exitOffset int) {
	if !hasErrorCode(v) {
		code = append(code, 0x6a, 0x00)
	}
	code = append(code, 0xe6, byte(portException+v))
	exitOffset = len(code)
	code = append(code, 0xf4, 0xeb, 0xfd)
	return code, exitOffset
}

// codePage builds the supervisor code page.
func codePage() []byte {
	p := make([]byte, pageSize)
	for i := range p {
		p[i] = 0xcc // int3 filler: never reached
	}
	copy(p, syscallStub)
	for v := 0; v < idtVectors; v++ {
		code, _ := exceptionStub(v)
		copy(p[excStubBase+excStubSize*v:], code)
	}
	return p
}

// Descriptor encodings.
const (
	descKernelCode64 = 0x00af9b000000ffff // P, DPL0, code exec/read accessed, L, G
	descKernelData   = 0x00cf93000000ffff // P, DPL0, data read/write accessed, D/B, G
	descUserData     = 0x00cff3000000ffff // P, DPL3, data read/write accessed
	descUserCode64   = 0x00affb000000ffff // P, DPL3, code exec/read accessed, L
)

// gdtBytes returns the GDT for a VM with n vCPU TSS descriptors.
func gdtBytes(n int) []byte {
	b := make([]byte, (gdtFixed+2*n)*8)
	binary.LittleEndian.PutUint64(b[8:], descKernelCode64)
	binary.LittleEndian.PutUint64(b[16:], descKernelData)
	binary.LittleEndian.PutUint64(b[24:], descUserData)
	binary.LittleEndian.PutUint64(b[32:], descUserCode64)
	for i := 0; i < n; i++ {
		base := uint64(SupervisorBase + tssGPA + tssStride*uint64(i))
		limit := uint64(tssLimit)
		lo := limit&0xffff | (base&0xffffff)<<16 | uint64(0x89)<<40 | (limit>>16&0xf)<<48 | (base>>24&0xff)<<56
		hi := base >> 32
		off := (gdtFixed + 2*i) * 8
		binary.LittleEndian.PutUint64(b[off:], lo)
		binary.LittleEndian.PutUint64(b[off+8:], hi)
	}
	return b
}

// idtBytes returns the IDT: one 64-bit interrupt gate per exception vector. Gates are DPL0,
// so `int N` from CPL3 raises #GP as on Linux, except int3 (vector 3), which Linux allows.
func idtBytes() []byte {
	b := make([]byte, idtVectors*16)
	for v := 0; v < idtVectors; v++ {
		off := uint64(SupervisorBase + codeGPA + excStubBase + excStubSize*uint64(v))
		attr := uint64(0x8e) // present, DPL0, 64-bit interrupt gate
		if v == 3 {
			attr = 0xee
		}
		lo := off&0xffff | uint64(kernelCS)<<16 | attr<<40 | (off>>16&0xffff)<<48
		hi := off >> 32
		binary.LittleEndian.PutUint64(b[v*16:], lo)
		binary.LittleEndian.PutUint64(b[v*16+8:], hi)
	}
	return b
}

// tssBytes returns the 64-bit TSS of vCPU i: RSP0 at the top of its exception stack, and an
// I/O permission bitmap that denies every port to CPL3 except the syscall hypercall port.
// On kvm_pvm the syscall stub's `out` runs at CPL3 and is checked against this bitmap; on
// VT-x/AMD-V it runs at CPL0. Either way an `out` anywhere else is caught: #GP, or an exit
// whose RIP is not the stub's, which the VMM treats as stray port I/O.
func tssBytes(i int) []byte {
	b := make([]byte, tssSize+ioBitmapLen)
	rsp0 := uint64(SupervisorBase + stackGPA + pageSize*uint64(i+1))
	binary.LittleEndian.PutUint64(b[4:], rsp0)
	binary.LittleEndian.PutUint16(b[102:], tssSize)
	bitmap := b[tssSize:]
	for j := range bitmap {
		bitmap[j] = 0xff
	}
	bitmap[portSyscall/8] &^= 1 << (portSyscall % 8)
	return b
}
