package kvmhv

import (
	"testing"
	"unsafe"
)

// TestABISizes checks that the Go mirrors have the sizes of the kernel's structs, which the
// ioctl numbers encode.
func TestABISizes(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"kvm_segment", unsafe.Sizeof(segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(dtable{}), 16},
		{"kvm_sregs", unsafe.Sizeof(sregs{}), 312},
		{"kvm_userspace_memory_region", unsafe.Sizeof(userspaceMemoryRegion{}), 32},
		{"kvm_msr_entry", unsafe.Sizeof(msrEntry{}), 16},
		{"kvm_cpuid_entry2", unsafe.Sizeof(cpuidEntry2{}), 40},
		{"kvm_xcrs", unsafe.Sizeof(xcrs{}), 392},
		{"kvm_fpu", unsafe.Sizeof(fpuRegs{}), 416},
		{"kvm_xsave", unsafe.Sizeof(xsaveArea{}), 4096},
		{"kvm_run header", unsafe.Sizeof(runHeader{}), 32},
		{"kvm_run io", unsafe.Sizeof(runIO{}), 16},
		{"offsetof kvm_run s.regs.regs - kvm_valid_regs", unsafe.Offsetof(runSync{}.Regs), 304 - runSyncOffset},
		{"offsetof kvm_run s.regs.sregs - kvm_valid_regs", unsafe.Offsetof(runSync{}.Sregs), 448 - runSyncOffset},
	} {
		if c.got != c.want {
			t.Errorf("sizeof %s = %d, want %d", c.name, c.got, c.want)
		}
	}
	for _, c := range []struct {
		name string
		req  uintptr
		size uintptr
	}{
		{"KVM_GET_REGS", kvmGetRegs, unsafe.Sizeof(Regs{})},
		{"KVM_SET_SREGS", kvmSetSregs, unsafe.Sizeof(sregs{})},
		{"KVM_SET_USER_MEMORY_REGION", kvmSetUserMemoryRegion, unsafe.Sizeof(userspaceMemoryRegion{})},
		{"KVM_SET_XCRS", kvmSetXCRS, unsafe.Sizeof(xcrs{})},
		{"KVM_GET_FPU", kvmGetFPU, unsafe.Sizeof(fpuRegs{})},
		{"KVM_SET_FPU", kvmSetFPU, unsafe.Sizeof(fpuRegs{})},
		{"KVM_GET_XSAVE", kvmGetXSave, unsafe.Sizeof(xsaveArea{})},
		{"KVM_SET_XSAVE", kvmSetXSave, unsafe.Sizeof(xsaveArea{})},
	} {
		if got := (c.req >> 16) & 0x3fff; got != c.size {
			t.Errorf("%s encodes size %d, struct is %d", c.name, got, c.size)
		}
	}
}
