package kvmhv

import (
	"encoding/binary"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"
)

const (
	testCode  = 0x400000
	testData  = 0x600000
	testStack = 0x7ff000
)

// newTestVM returns a VM with code mapped read/exec at testCode, one data page and a stack.
func newTestVM(t testing.TB, code []byte) *VM {
	t.Helper()
	return newTestVMOn(t, requireKVM(t), code)
}

// newTestVMOn is newTestVM on the given System.
func newTestVMOn(t testing.TB, s *System, code []byte) *VM {
	t.Helper()
	vm, err := s.NewVM(Config{Memory: 4 << 20, MaxVCPUs: 4})
	if err != nil {
		t.Fatalf("NewVM: %v", err)
	}
	t.Cleanup(func() { vm.Close() })
	must(t, vm.Map(testCode, pageSize, ProtRead|ProtExec))
	must(t, vm.Poke(code, testCode))
	must(t, vm.Map(testData, pageSize, ProtRead|ProtWrite))
	must(t, vm.Map(testStack, pageSize, ProtRead|ProtWrite))
	return vm
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// onThread runs fn on a goroutine locked to its OS thread, as vCPUs require.
func onThread(fn func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(done)
		fn()
	}()
	<-done
}

// runUntil runs a vCPU at testCode, answering syscalls with serve, until an exit that is not
// a syscall or serve returns false.
func runUntil(t *testing.T, vm *VM, serve func(v *VCPU) bool) (exit Exit, regs Regs) {
	t.Helper()
	var err error
	onThread(func() {
		var v *VCPU
		v, err = vm.NewVCPU(testCode, testStack+pageSize)
		if err != nil {
			return
		}
		for {
			exit, err = v.Run()
			if err != nil || exit.Kind != ExitSyscall || !serve(v) {
				regs = v.Regs
				return
			}
		}
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return exit, regs
}

// Guest code fragments.
var (
	asmSyscall = []byte{0x0f, 0x05}
	asmUD2     = []byte{0x0f, 0x0b}
)

func movEAX(n uint32) []byte {
	b := []byte{0xb8, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(b[1:], n)
	return b
}

func movRBXImm(n uint64) []byte { // mov rbx, imm64
	b := []byte{0x48, 0xbb, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.LittleEndian.PutUint64(b[2:], n)
	return b
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

var (
	asmLoadRDI  = []byte{0x48, 0x8b, 0x3b}       // mov rdi, [rbx]
	asmStoreRAX = []byte{0x48, 0x89, 0x03}       // mov [rbx], rax
	asmJmpSelf  = []byte{0xeb, 0xfe}             // jmp $
	asmHLT      = []byte{0xf4}                   // hlt
	asmInt3     = []byte{0xcc}                   // int3
	asmInt80    = []byte{0xcd, 0x80}             // int 0x80
	asmOut42    = []byte{0xe6, 0x42}             // out 0x42, al
	asmOutE0    = []byte{0xe6, 0xe0}             // out 0xe0, al (the hypercall port, outside the stub)
	asmDivZero  = []byte{0x31, 0xc9, 0xf7, 0xf1} // xor ecx, ecx ; div ecx
)

// registerPaths runs test with registers passed in kvm_run (KVM_CAP_SYNC_REGS, where the
// host has it) and with KVM_GET_REGS/KVM_SET_REGS/KVM_SET_SREGS, the fallback.
func registerPaths(t *testing.T, test func(t *testing.T, s *System)) {
	s := requireKVM(t)
	if !s.syncRegs {
		t.Log("this host lacks KVM_CAP_SYNC_REGS: only the ioctl path runs")
	}
	t.Run("sync-regs="+map[bool]string{true: "yes", false: "unsupported"}[s.syncRegs], func(t *testing.T) { test(t, s) })
	ioctls := requireKVM(t)
	ioctls.syncRegs = false
	t.Run("ioctls", func(t *testing.T) { test(t, ioctls) })
}

func TestSyscallRoundTrip(t *testing.T) { registerPaths(t, testSyscallRoundTrip) }

func testSyscallRoundTrip(t *testing.T, s *System) {
	// Loop: rax = 39; syscall; store the result at [testData]; repeat 100 times; then exit(60).
	code := cat(
		movRBXImm(testData),
		[]byte{0x41, 0xbc, 100, 0, 0, 0}, // mov r12d, 100
		movEAX(39), asmSyscall, asmStoreRAX,
		[]byte{0x41, 0xff, 0xcc}, // dec r12d
		[]byte{0x75, 0xf1},       // jnz back to mov eax
		movEAX(60), asmSyscall, asmUD2,
	)
	vm := newTestVMOn(t, s, code)
	calls := 0
	exit, regs := runUntil(t, vm, func(v *VCPU) bool {
		if v.Regs.RAX == 60 {
			return false
		}
		calls++
		v.CompleteSyscall(uint64(1000 + calls))
		return true
	})
	if exit.Kind != ExitSyscall || regs.RAX != 60 {
		t.Fatalf("exit %v rax %d, want exit syscall", exit.Kind, regs.RAX)
	}
	if calls != 100 {
		t.Errorf("served %d syscalls, want 100", calls)
	}
	buf := make([]byte, 8)
	if _, err := vm.ReadAt(buf, testData); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(buf); got != 1100 {
		t.Errorf("guest stored %d, want 1100", got)
	}
}

// TestRemapVisible checks that the guest sees page-table changes the VMM makes between two
// of its accesses: a changed frame, then an unmapped page.
func TestRemapVisible(t *testing.T) { registerPaths(t, testRemapVisible) }

func testRemapVisible(t *testing.T, s *System) {
	code := cat(
		movRBXImm(testData),
		asmLoadRDI, movEAX(1), asmSyscall, // report [testData]
		asmLoadRDI, movEAX(2), asmSyscall, // report again after remap
		asmLoadRDI, movEAX(3), asmSyscall, // after unmap: must fault
		asmUD2,
	)
	vm := newTestVMOn(t, s, code)
	put := func(v uint64) {
		b := make([]byte, 8)
		binary.LittleEndian.PutUint64(b, v)
		if _, err := vm.WriteAt(b, testData); err != nil {
			t.Fatal(err)
		}
	}
	put(111)
	var seen []uint64
	exit, _ := runUntil(t, vm, func(v *VCPU) bool {
		seen = append(seen, v.Regs.RDI)
		switch v.Regs.RAX {
		case 1:
			// Replace the page by a fresh frame with other contents.
			must(t, vm.Unmap(testData, pageSize))
			must(t, vm.Map(testData, pageSize, ProtRead|ProtWrite))
			put(222)
		case 2:
			must(t, vm.Unmap(testData, pageSize))
		}
		v.CompleteSyscall(0)
		return true
	})
	if len(seen) != 2 || seen[0] != 111 || seen[1] != 222 {
		t.Errorf("guest saw %v, want [111 222]", seen)
	}
	if exit.Kind != ExitException || exit.Vector != VectorPageFault || exit.Address != testData {
		t.Errorf("after unmap: exit %v vector %d addr %#x, want page fault at %#x", exit.Kind, exit.Vector, exit.Address, testData)
	}
}

func TestContainment(t *testing.T) {
	for _, c := range []struct {
		name   string
		code   []byte
		kind   ExitKind
		vector int
		errc   uint64
		addr   uint64
	}{
		{"ud2", asmUD2, ExitException, VectorInvalidOp, 0, 0},
		{"unmapped read", cat(movRBXImm(0x1000), asmLoadRDI), ExitException, VectorPageFault, 4, 0x1000},
		{"write to code", cat(movRBXImm(testCode), asmStoreRAX), ExitException, VectorPageFault, 7, testCode},
		{"read supervisor GDT", cat(movRBXImm(SupervisorBase+gdtGPA), asmLoadRDI), ExitException, VectorPageFault, 5, SupervisorBase + gdtGPA},
		{"write supervisor code", cat(movRBXImm(SupervisorBase+codeGPA), asmStoreRAX), ExitException, VectorPageFault, 7, SupervisorBase + codeGPA},
		{"execute data", cat(movRBXImm(testData), []byte{0xff, 0xe3}), ExitException, VectorPageFault, 0x15, testData},
		{"non-canonical", cat(movRBXImm(0x8000_0000_0000_0000), asmLoadRDI), ExitException, VectorGP, 0, 0},
		{"hlt", asmHLT, ExitException, VectorGP, 0, 0},
		{"int3", asmInt3, ExitException, VectorBreakpoint, 0, 0},
		{"divide by zero", asmDivZero, ExitException, VectorDivide, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			vm := newTestVM(t, c.code)
			exit, _ := runUntil(t, vm, func(*VCPU) bool { return false })
			if exit.Kind != c.kind || exit.Vector != c.vector || exit.ErrorCode != c.errc || exit.Address != c.addr {
				t.Errorf("exit %v vector %d error %#x addr %#x (%s), want %v vector %d error %#x addr %#x",
					exit.Kind, exit.Vector, exit.ErrorCode, exit.Address, exit.Reason, c.kind, c.vector, c.errc, c.addr)
			}
		})
	}
}

// TestInt80 checks that the 32-bit system call gate is closed: #GP with the IDT error code
// on VT-x/AMD-V; kvm_pvm reports #UD for it. Either way no system call reaches the VMM.
func TestInt80(t *testing.T) {
	vm := newTestVM(t, asmInt80)
	exit, _ := runUntil(t, vm, func(*VCPU) bool { return false })
	gp := exit.Vector == VectorGP && exit.ErrorCode == 0x80*8+2
	ud := exit.Vector == VectorInvalidOp
	if exit.Kind != ExitException || !gp && !ud {
		t.Errorf("exit %v vector %d error %#x, want #GP(0x402) or #UD", exit.Kind, exit.Vector, exit.ErrorCode)
	}
}

// TestStrayPortIO checks that `out` outside the syscall stub never looks like a hypercall.
func TestStrayPortIO(t *testing.T) {
	for _, code := range [][]byte{asmOut42, asmOutE0} {
		vm := newTestVM(t, code)
		exit, _ := runUntil(t, vm, func(*VCPU) bool { return false })
		ok := exit.Kind == ExitPortIO || exit.Kind == ExitException && exit.Vector == VectorGP
		if !ok {
			t.Errorf("out %#x: exit %v vector %d, want port-io or #GP", code[1], exit.Kind, exit.Vector)
		}
	}
}

func TestResumeAfterException(t *testing.T) {
	// int3, then report rax=7 via syscall: the VMM resumes after the breakpoint.
	code := cat(asmInt3, movEAX(7), asmSyscall, asmUD2)
	vm := newTestVM(t, code)
	var got []string
	onThread(func() {
		v, err := vm.NewVCPU(testCode, testStack+pageSize)
		if err != nil {
			t.Error(err)
			return
		}
		for i := 0; i < 3; i++ {
			exit, err := v.Run()
			if err != nil {
				t.Error(err)
				return
			}
			got = append(got, exit.Kind.String())
			if exit.Kind == ExitException && exit.Vector == VectorBreakpoint {
				v.ReturnToUser() // RIP is already past int3, as the CPU reports it
				continue
			}
			if exit.Kind == ExitSyscall {
				if v.Regs.RAX != 7 {
					t.Errorf("syscall rax %d, want 7", v.Regs.RAX)
				}
				return
			}
		}
	})
	if len(got) != 2 || got[0] != "exception" || got[1] != "syscall" {
		t.Errorf("exits %v, want [exception syscall]", got)
	}
}

func TestTripleFault(t *testing.T) {
	vm := newTestVM(t, asmUD2)
	// Break the exception stack: RSP0 of vCPU 0 points at an unmapped supervisor address,
	// so delivering #UD faults, then #DF faults, and the CPU shuts down.
	copy(vm.mem.mem[tssGPA+4:], make([]byte, 8))
	exit, _ := runUntil(t, vm, func(*VCPU) bool { return false })
	if exit.Kind != ExitFatal || exit.Reason != "triple fault" {
		t.Errorf("exit %v (%q), want fatal (\"triple fault\")", exit.Kind, exit.Reason)
	}
}

func TestStopInfiniteLoop(t *testing.T) {
	vm := newTestVM(t, asmJmpSelf)
	var v *VCPU
	ready := make(chan struct{})
	var exit Exit
	var err error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		v, err = vm.NewVCPU(testCode, testStack+pageSize)
		close(ready)
		if err != nil {
			return
		}
		exit, err = v.Run()
	}()
	<-ready
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	v.Stop()
	wg.Wait()
	if err != nil || exit.Kind != ExitStopped {
		t.Errorf("exit %v err %v, want stopped", exit.Kind, err)
	}
}

func TestMemoryBudget(t *testing.T) {
	s := requireKVM(t)
	vm, err := s.NewVM(Config{Memory: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	err = vm.Map(0x10000000, 2<<20, ProtRead|ProtWrite)
	if !errors.Is(err, ErrNoMemory) {
		t.Fatalf("mapping 2 MiB in a 1 MiB budget: %v, want ErrNoMemory", err)
	}
	must(t, vm.Unmap(0x10000000, 2<<20))
	if used, _ := vm.MemoryStats(); used > 8*pageSize {
		t.Errorf("after unmap %d bytes used, want only page tables", used)
	}
	must(t, vm.Map(0x20000000, 512<<10, ProtRead|ProtWrite))
}

func TestLimitMemory(t *testing.T) {
	s := requireKVM(t)
	vm, err := s.NewVM(Config{Memory: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.LimitMemory(128 << 20); err == nil {
		t.Error("LimitMemory raised the budget")
	}
	must(t, vm.LimitMemory(1<<20))
	if got := vm.MemoryBudget(); got != 1<<20 {
		t.Errorf("budget %d, want %d", got, 1<<20)
	}
	if err := vm.Map(0x10000000, 2<<20, ProtRead|ProtWrite); !errors.Is(err, ErrNoMemory) {
		t.Errorf("mapping 2 MiB after limiting the budget to 1 MiB: %v, want ErrNoMemory", err)
	}
	if err := vm.LimitMemory(4096); !errors.Is(err, ErrNoMemory) {
		t.Errorf("limiting below the memory in use: %v, want ErrNoMemory", err)
	}
}

// TestFPUState copies the floating-point state of one vCPU to another: a guest sets MXCSR,
// the x87 control word and XMM0 on the first, the second stores what it starts with. With
// KVM_GET_XSAVE/KVM_SET_XSAVE all three travel; with the KVM_GET_FPU/KVM_SET_FPU fallback
// of hosts without KVM_CAP_XSAVE, MXCSR does not (KVM leaves it out of struct kvm_fpu).
// The fallback runs only on such hosts: where the guest state is an XSAVE area (here),
// KVM_SET_FPU writes its legacy region without marking x87 and SSE state in use, and the
// vCPU starts with their initial values instead.
func TestFPUState(t *testing.T) {
	abs := func(op []byte, addr uint32) []byte { // op with a [disp32] operand (ModRM mod 00, r/m SIB, SIB 0x25)
		b := binary.LittleEndian.AppendUint32(append([]byte(nil), op...), addr)
		return b
	}
	const mxcsr, cw = 0x5f80, 0x0b7f
	set := cat(
		abs([]byte{0x0f, 0xae, 0x14, 0x25}, testData),          // ldmxcsr [testData]
		abs([]byte{0xd9, 0x2c, 0x25}, testData+4),              // fldcw [testData+4]
		abs([]byte{0xf3, 0x0f, 0x6f, 0x04, 0x25}, testData+16), // movdqu xmm0, [testData+16]
		[]byte{0x0f, 0x05}) // syscall
	get := cat(
		abs([]byte{0x0f, 0xae, 0x1c, 0x25}, testData+0x100),       // stmxcsr [testData+0x100]
		abs([]byte{0xd9, 0x3c, 0x25}, testData+0x104),             // fnstcw [testData+0x104]
		abs([]byte{0xf3, 0x0f, 0x7f, 0x04, 0x25}, testData+0x110), // movdqu [testData+0x110], xmm0
		[]byte{0x0f, 0x05})
	xmm := []byte("0123456789abcdef")
	for _, xsave := range []bool{true, false} {
		t.Run(map[bool]string{true: "xsave", false: "fpu"}[xsave], func(t *testing.T) {
			s := requireKVM(t)
			if xsave != s.hasXSave {
				t.Skipf("skipping: this host has KVM_CAP_XSAVE %v", s.hasXSave)
			}
			vm := newTestVMOn(t, s, cat(set, get))
			init := binary.LittleEndian.AppendUint32(nil, mxcsr)
			init = binary.LittleEndian.AppendUint16(init, cw)
			must(t, vm.Poke(append(append(init, make([]byte, 10)...), xmm...), testData))
			var st FPUState
			var err error
			run := func(rip uint64, before func(v *VCPU) error, after func(v *VCPU) error) {
				onThread(func() {
					var v *VCPU
					if v, err = vm.NewVCPU(rip, testStack+pageSize); err != nil {
						return
					}
					if before != nil {
						if err = before(v); err != nil {
							return
						}
					}
					var exit Exit
					if exit, err = v.Run(); err == nil && exit.Kind != ExitSyscall {
						err = errors.New("exit " + exit.Kind.String())
					}
					if err == nil && after != nil {
						err = after(v)
					}
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			run(testCode, nil, func(v *VCPU) (err error) { st, err = v.FPUState(); return err })
			run(testCode+uint64(len(set)), func(v *VCPU) error { return v.SetFPUState(st) }, nil)
			got := readGuest(t, vm, testData+0x100, 0x20)
			wantMXCSR := uint32(mxcsr)
			if !xsave {
				wantMXCSR = 0x1f80 // the second vCPU's own, from reset
			}
			if m := binary.LittleEndian.Uint32(got); m != wantMXCSR {
				t.Errorf("MXCSR %#x, want %#x", m, wantMXCSR)
			}
			if c := binary.LittleEndian.Uint16(got[4:]); c != cw {
				t.Errorf("x87 control word %#x, want %#x", c, cw)
			}
			if x := got[0x10:0x20]; string(x) != string(xmm) {
				t.Errorf("XMM0 %q, want %q", x, xmm)
			}
		})
	}
}
