package kvmhv

import (
	"fmt"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// disasm decodes code in 64-bit mode into Intel-syntax lines.
func disasm(t *testing.T, code []byte) []string {
	t.Helper()
	var out []string
	for len(code) > 0 {
		inst, err := x86asm.Decode(code, 64)
		if err != nil {
			t.Fatalf("decode % x: %v", code, err)
		}
		out = append(out, strings.ToLower(x86asm.IntelSyntax(inst, 0, nil)))
		code = code[inst.Len:]
	}
	return out
}

// TestSupervisorListing checks the supervisor code against the listing in supervisor.go.
func TestSupervisorListing(t *testing.T) {
	page := codePage()
	if got, want := disasm(t, page[:len(syscallStub)]), []string{"out 0xe0, al", "sysret"}; strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("syscall stub: %q, want %q", got, want)
	}
	for v := 0; v < idtVectors; v++ {
		code, exitOff := exceptionStub(v)
		if len(code) > excStubSize {
			t.Fatalf("vector %d stub is %d bytes, slot is %d", v, len(code), excStubSize)
		}
		// x86asm prints a jump's displacement from the end of the jmp: -3 is the hlt.
		want := []string{fmt.Sprintf("out 0x%x, al", portException+v), "hlt", "jmp .-0x3"}
		if !hasErrorCode(v) {
			want = append([]string{"push 0x0"}, want...)
		}
		slot := page[excStubBase+excStubSize*v:][:len(code)]
		got := disasm(t, slot)
		if strings.Join(got, "; ") != strings.Join(want, "; ") {
			t.Errorf("vector %d stub: %q, want %q", v, got, want)
		}
		if d := disasm(t, code[:exitOff]); !strings.HasPrefix(d[len(d)-1], "out ") {
			t.Errorf("vector %d: exit offset %d is not just past the out", v, exitOff)
		}
	}
}

// TestIDTPointsAtStubs decodes every gate and checks it targets its vector's stub at CPL0.
func TestIDTPointsAtStubs(t *testing.T) {
	idt := idtBytes()
	for v := 0; v < idtVectors; v++ {
		g := idt[v*16:]
		off := uint64(g[0]) | uint64(g[1])<<8 | uint64(g[6])<<16 | uint64(g[7])<<24 |
			uint64(g[8])<<32 | uint64(g[9])<<40 | uint64(g[10])<<48 | uint64(g[11])<<56
		sel := uint16(g[2]) | uint16(g[3])<<8
		want := SupervisorBase + codeGPA + excStubBase + excStubSize*uint64(v)
		if off != want || sel != kernelCS {
			t.Errorf("gate %d -> %#x:%#x, want %#x:%#x", v, sel, off, kernelCS, want)
		}
		dpl := g[5] >> 5 & 3
		if wantDPL := map[bool]byte{true: 3, false: 0}[v == 3]; dpl != wantDPL {
			t.Errorf("gate %d DPL %d, want %d", v, dpl, wantDPL)
		}
	}
}

// TestSyscallReturnBothModes covers the two ways a syscall is completed with register
// states recorded at the hypercall: the CPL0 branch cannot run on kvm_pvm hosts.
func TestSyscallReturnBothModes(t *testing.T) {
	if modeFromCS(kernelCS) != SyscallEntersCPL0 || modeFromCS(userCS) != SyscallStaysCPL3 {
		t.Fatal("modeFromCS misclassifies selectors")
	}
	// Recorded at the hypercall after `syscall` at 0x401000 (RCX = next RIP, R11 = RFLAGS).
	r := Regs{RAX: 39, RCX: 0x401002, R11: 0x246 | 0x3000 | 0x100, RIP: SupervisorBase + codeGPA + 2, RFLAGS: 0x2}
	userReturn(&r)
	if r.RIP != 0x401002 {
		t.Errorf("RIP %#x, want %#x", r.RIP, 0x401002)
	}
	if r.RFLAGS&0x3000 != 0 || r.RFLAGS&0x100 != 0 || r.RFLAGS&0x200 == 0 || r.RFLAGS&0x46 != 0x46 {
		t.Errorf("RFLAGS %#x: want IOPL and TF cleared, IF set, ZF/PF kept", r.RFLAGS)
	}
	if canonical(0x8000_0000_0000_0000) || !canonical(0x7fff_ffff_f000) {
		t.Error("canonical misjudges addresses")
	}
}
