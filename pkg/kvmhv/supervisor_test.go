package kvmhv

import (
	"encoding/binary"
	"errors"
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

// TestSyscallReturnBothModes covers how a completed system call returns on both kinds of
// host, with register states recorded at the syscall stub's hypercall after `syscall` at
// 0x401000 (RCX = next RIP, R11 = RFLAGS). The VT-x/AMD-V branches cannot run on the
// kvm_pvm hosts the tests run on.
func TestSyscallReturnBothModes(t *testing.T) {
	stub := SupervisorBase + codeGPA + syscallExitOffset
	recorded := Regs{RAX: 39, RCX: 0x401002, R11: 0x246 | 0x3000 | 0x100, RIP: stub, RFLAGS: 0x2}
	for _, c := range []struct {
		name        string
		mode        SyscallMode
		sregsNeeded bool
		wantRIP     uint64
		wantSregs   bool
	}{
		{"VT-x: the stub's sysretq returns", SyscallEntersCPL0, false, stub, false},
		{"VT-x with new system registers: the VMM returns", SyscallEntersCPL0, true, 0x401002, true},
		{"kvm_pvm: the VMM returns", SyscallStaysCPL3, false, 0x401002, false},
		{"kvm_pvm with new system registers", SyscallStaysCPL3, true, 0x401002, true},
	} {
		r := recorded
		r.RAX = 1234 // the result
		writeSregs := finishSyscall(c.mode, &r, c.sregsNeeded)
		if r.RIP != c.wantRIP || writeSregs != c.wantSregs || r.RAX != 1234 {
			t.Errorf("%s: RIP %#x, write sregs %v, RAX %d; want RIP %#x, write sregs %v, RAX 1234",
				c.name, r.RIP, writeSregs, r.RAX, c.wantRIP, c.wantSregs)
		}
		if r.RIP == 0x401002 && (r.RFLAGS&0x3000 != 0 || r.RFLAGS&0x100 != 0 || r.RFLAGS&0x200 == 0 || r.RFLAGS&0x46 != 0x46) {
			t.Errorf("%s: RFLAGS %#x: want IOPL and TF cleared, IF set, ZF/PF kept", c.name, r.RFLAGS)
		}
		if r.RIP == stub && r.RFLAGS != recorded.RFLAGS {
			t.Errorf("%s: RFLAGS changed to %#x although the stub returns", c.name, r.RFLAGS)
		}
	}
	if canonical(0x8000_0000_0000_0000) || !canonical(0x7fff_ffff_f000) {
		t.Error("canonical misjudges addresses")
	}
}

// TestModeFromExit checks how the probe's outcome is read on both kinds of host.
func TestModeFromExit(t *testing.T) {
	stub := SupervisorBase + codeGPA
	for _, c := range []struct {
		name string
		exit Exit
		rip  uint64
		want SyscallMode
		err  error
	}{
		{"VT-x: the stub's hypercall", Exit{Kind: ExitSyscall}, stub + syscallExitOffset, SyscallEntersCPL0, nil},
		{"kvm_pvm: user fetch of the stub", Exit{Kind: ExitException, Vector: VectorPageFault, ErrorCode: 0x15, Address: stub}, stub, SyscallStaysCPL3, nil},
		{"supervisor fault", Exit{Kind: ExitException, Vector: VectorPageFault, ErrorCode: 0x11, Address: stub}, stub, 0, ErrUnsupportedHost},
		{"#UD at the syscall", Exit{Kind: ExitException, Vector: VectorInvalidOp}, 0x10000, 0, ErrUnsupportedHost},
		{"fault elsewhere", Exit{Kind: ExitException, Vector: VectorPageFault, ErrorCode: 0x15, Address: 0x1000}, 0x1000, 0, ErrUnsupportedHost},
	} {
		got, err := modeFromExit(c.exit, Regs{RIP: c.rip})
		if got != c.want || !errors.Is(err, c.err) {
			t.Errorf("%s: %v, %v; want %v, %v", c.name, got, err, c.want, c.err)
		}
	}
}

// recordedVCPU is a vCPU that never ran, on a host with the given syscall mode, with Regs
// and an I/O exit in its run area as KVM reported them once on such a host.
func recordedVCPU(mode SyscallMode, regs Regs, port uint16) *VCPU {
	run := &runArea{mem: make([]byte, pageSize)}
	binary.LittleEndian.PutUint32(run.mem[8:], exitIO)
	binary.LittleEndian.PutUint16(run.mem[32+2:], port)
	return &VCPU{vm: &VM{sys: &System{mode: mode}}, run: run, Regs: regs}
}

// TestDecodeRecorded decodes exits recorded on VT-x: the syscall stub's hypercall at CPL0
// is a system call, and the same ports used from anywhere else are stray port I/O.
func TestDecodeRecorded(t *testing.T) {
	stub := SupervisorBase + codeGPA
	for _, c := range []struct {
		name string
		rip  uint64
		port uint16
		want ExitKind
	}{
		{"the stub's hypercall", stub + syscallExitOffset, portSyscall, ExitSyscall},
		{"the hypercall port from the program", 0x401002, portSyscall, ExitPortIO},
		{"an exception port from the program", 0x401002, portException + VectorInvalidOp, ExitPortIO},
		{"another port from the stub page", stub + syscallExitOffset, 0x42, ExitPortIO},
	} {
		v := recordedVCPU(SyscallEntersCPL0, Regs{RAX: 39, RCX: 0x401002, RIP: c.rip}, c.port)
		exit, again, err := v.decode()
		if err != nil || again || exit.Kind != c.want {
			t.Errorf("%s: %v (again %v, err %v), want %v", c.name, exit.Kind, again, err, c.want)
		}
	}
}
