package kvmhv

// The KVM ioctl table this package uses, from include/uapi/linux/kvm.h. Numbers are
// _IO/_IOR/_IOW(KVMIO=0xAE, nr, size) with the sizes of the structs below.
const (
	kvmGetAPIVersion       = 0xAE00     // _IO(KVMIO, 0x00)
	kvmCreateVM            = 0xAE01     // _IO(KVMIO, 0x01)
	kvmCheckExtension      = 0xAE03     // _IO(KVMIO, 0x03)
	kvmGetVCPUMmapSize     = 0xAE04     // _IO(KVMIO, 0x04)
	kvmGetSupportedCPUID   = 0xC008AE05 // _IOWR(KVMIO, 0x05, struct kvm_cpuid2)
	kvmCreateVCPU          = 0xAE41     // _IO(KVMIO, 0x41)
	kvmSetUserMemoryRegion = 0x4020AE46 // _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)
	kvmSetTSSAddr          = 0xAE47     // _IO(KVMIO, 0x47)
	kvmRun                 = 0xAE80     // _IO(KVMIO, 0x80)
	kvmGetRegs             = 0x8090AE81 // _IOR(KVMIO, 0x81, struct kvm_regs)
	kvmSetRegs             = 0x4090AE82 // _IOW(KVMIO, 0x82, struct kvm_regs)
	kvmGetSregs            = 0x8138AE83 // _IOR(KVMIO, 0x83, struct kvm_sregs)
	kvmSetSregs            = 0x4138AE84 // _IOW(KVMIO, 0x84, struct kvm_sregs)
	kvmGetMSRs             = 0xC008AE88 // _IOWR(KVMIO, 0x88, struct kvm_msrs)
	kvmSetMSRs             = 0x4008AE89 // _IOW(KVMIO, 0x89, struct kvm_msrs)
	kvmGetFPU              = 0x81A0AE8C // _IOR(KVMIO, 0x8c, struct kvm_fpu)
	kvmSetFPU              = 0x41A0AE8D // _IOW(KVMIO, 0x8d, struct kvm_fpu)
	kvmGetXSave            = 0x9000AEA4 // _IOR(KVMIO, 0xa4, struct kvm_xsave)
	kvmSetXSave            = 0x5000AEA5 // _IOW(KVMIO, 0xa5, struct kvm_xsave)
	kvmSetCPUID2           = 0x4008AE90 // _IOW(KVMIO, 0x90, struct kvm_cpuid2)
	kvmGetTSCKHz           = 0xAEA3     // _IO(KVMIO, 0xa3): the vCPU's TSC frequency in kHz
	kvmSetXCRS             = 0x4188AEA7 // _IOW(KVMIO, 0xa7, struct kvm_xcrs)
)

// KVM API version this package speaks (KVM_API_VERSION).
const kvmAPIVersion = 12

// Capabilities checked with KVM_CHECK_EXTENSION.
const (
	capUserMemory    = 3   // KVM_CAP_USER_MEMORY
	capImmediateExit = 136 // KVM_CAP_IMMEDIATE_EXIT
	capXSave         = 55  // KVM_CAP_XSAVE
	capXCRS          = 56  // KVM_CAP_XCRS
	capSyncRegs      = 74  // KVM_CAP_SYNC_REGS: answers the KVM_SYNC_X86_* fields it supports
	capGetTSCKHz     = 61  // KVM_CAP_GET_TSC_KHZ
)

// Fields of kvm_run.kvm_valid_regs and kvm_dirty_regs (KVM_SYNC_X86_*).
const (
	syncX86Regs  = 1 << 0 // s.regs.regs
	syncX86Sregs = 1 << 1 // s.regs.sregs
)

// Exit reasons in kvm_run.exit_reason.
const (
	exitUnknown       = 0
	exitException     = 1
	exitIO            = 2
	exitHypercall     = 3
	exitDebug         = 4
	exitHLT           = 5
	exitMMIO          = 6
	exitShutdown      = 8
	exitFailEntry     = 9
	exitIntr          = 10
	exitInternalError = 17
)

// Regs mirrors struct kvm_regs: the general-purpose registers of a vCPU.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// segment mirrors struct kvm_segment.
type segment struct {
	Base                           uint64
	Limit                          uint32
	Selector                       uint16
	Type                           uint8
	Present, DPL, DB, S, L, G, AVL uint8
	Unusable                       uint8
	_                              uint8
}

// dtable mirrors struct kvm_dtable.
type dtable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// sregs mirrors struct kvm_sregs.
type sregs struct {
	CS, DS, ES, FS, GS, SS  segment
	TR, LDT                 segment
	GDT, IDT                dtable
	CR0, CR2, CR3, CR4, CR8 uint64
	EFER                    uint64
	APICBase                uint64
	InterruptBitmap         [4]uint64
}

// userspaceMemoryRegion mirrors struct kvm_userspace_memory_region.
type userspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// msrEntry mirrors struct kvm_msr_entry.
type msrEntry struct {
	Index    uint32
	Reserved uint32
	Data     uint64
}

// msrs mirrors struct kvm_msrs with room for a fixed number of entries.
type msrs struct {
	NMSRs   uint32
	Pad     uint32
	Entries [8]msrEntry
}

// cpuidEntry2 mirrors struct kvm_cpuid_entry2.
type cpuidEntry2 struct {
	Function, Index, Flags uint32
	EAX, EBX, ECX, EDX     uint32
	_                      [3]uint32
}

// maxCPUIDEntries bounds the table passed to KVM_GET_SUPPORTED_CPUID.
const maxCPUIDEntries = 256

// cpuid2 mirrors struct kvm_cpuid2 with a fixed array of entries.
type cpuid2 struct {
	NEnt    uint32
	Padding uint32
	Entries [maxCPUIDEntries]cpuidEntry2
}

// xcr mirrors struct kvm_xcr.
type xcr struct {
	XCR      uint32
	Reserved uint32
	Value    uint64
}

// fpuRegs mirrors struct kvm_fpu: the x87 and SSE registers in the layout of fxsave,
// without MXCSR, which KVM_GET_FPU and KVM_SET_FPU leave out.
type fpuRegs struct {
	FPR        [8][16]byte // x87 registers ST0-ST7
	FCW, FSW   uint16      // x87 control and status words
	FTWX       uint8       // abridged x87 tag word
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]byte
	MXCSR      uint32
	_          uint32
}

// xsaveArea mirrors struct kvm_xsave: the guest's XSAVE area (x87, SSE with MXCSR, AVX
// and the rest the guest's XCR0 enables, but no dynamically enabled state such as AMX).
type xsaveArea struct {
	Region [1024]uint32
}

// xcrs mirrors struct kvm_xcrs.
type xcrs struct {
	NrXCRs  uint32
	Flags   uint32
	XCRs    [16]xcr
	Padding [16]uint64
}

// runSyncOffset is offsetof(struct kvm_run, kvm_valid_regs): after the 32-byte header and
// the 256-byte exit union.
const runSyncOffset = 288

// runSync mirrors struct kvm_run from kvm_valid_regs on: the two masks and the start of
// the s union, struct kvm_sync_regs on x86 (its events member is not used). With
// KVM_CAP_SYNC_REGS, KVM_RUN stores the registers named in ValidRegs here when it returns
// and loads those named in DirtyRegs before it enters the guest, which saves a
// KVM_GET_REGS and a KVM_SET_REGS per exit (each costs about 5 µs on kvm_pvm).
type runSync struct {
	ValidRegs uint64
	DirtyRegs uint64
	Regs      Regs
	Sregs     sregs
}

// runHeader mirrors the start of struct kvm_run (the fields before the exit union).
type runHeader struct {
	RequestInterruptWindow     uint8
	ImmediateExit              uint8
	_                          [6]uint8
	ExitReason                 uint32
	ReadyForInterruptInjection uint8
	IFFlag                     uint8
	Flags                      uint16
	CR8                        uint64
	APICBase                   uint64
}

// runIO mirrors the io member of the kvm_run exit union (at offset 32).
type runIO struct {
	Direction  uint8
	Size       uint8
	Port       uint16
	Count      uint32
	DataOffset uint64
}

// runInternal mirrors the internal member of the kvm_run exit union.
type runInternal struct {
	Suberror uint32
	NData    uint32
	Data     [16]uint64
}

// runFailEntry mirrors the fail_entry member of the kvm_run exit union.
type runFailEntry struct {
	HardwareEntryFailureReason uint64
	CPU                        uint32
}

// Model-specific registers.
const (
	msrTSC          = 0x00000010 // IA32_TIME_STAMP_COUNTER: what rdtsc reads
	msrEFER         = 0xC0000080
	msrSTAR         = 0xC0000081
	msrLSTAR        = 0xC0000082
	msrCSTAR        = 0xC0000083
	msrSFMASK       = 0xC0000084
	msrFSBase       = 0xC0000100
	msrGSBase       = 0xC0000101
	msrKernelGSBase = 0xC0000102
)

// Control register and EFER bits.
const (
	cr0PE = 1 << 0
	cr0MP = 1 << 1
	cr0ET = 1 << 4
	cr0NE = 1 << 5
	cr0WP = 1 << 16
	cr0AM = 1 << 18
	cr0PG = 1 << 31

	cr4PAE        = 1 << 5
	cr4OSFXSR     = 1 << 9
	cr4OSXMMEXCPT = 1 << 10
	cr4OSXSAVE    = 1 << 18

	eferSCE = 1 << 0
	eferLME = 1 << 8
	eferLMA = 1 << 10
	eferNXE = 1 << 11
)
