package kvmhv

import (
	"encoding/binary"
	"testing"
)

// TestShootdownOnlyWhenStale checks which address-space changes bump the TLB generation:
// making pages present must not (not-present entries are never cached), while removing a
// translation, changing its permissions or pointing it at another frame must.
func TestShootdownOnlyWhenStale(t *testing.T) {
	s := requireKVM(t)
	vm, err := s.NewVM(Config{Memory: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	const a, b = 0x10000000, 0x20000000
	rw := ProtRead | ProtWrite
	steps := []struct {
		name  string
		do    func() error
		flush bool
	}{
		{"map fresh pages", func() error { return vm.Map(a, 4*pageSize, rw) }, false},
		{"map them again unchanged", func() error { return vm.Map(a, 4*pageSize, rw) }, false},
		{"map fresh pages next to present ones", func() error { return vm.Map(a+4*pageSize, 4*pageSize, ProtRead) }, false},
		{"unmap what was never mapped", func() error { return vm.Unmap(b, 16*pageSize) }, false},
		{"map PROT_NONE pages", func() error { return vm.Map(b, 2*pageSize, ProtNone) }, false},
		{"make PROT_NONE pages present", func() error { return vm.Map(b, 2*pageSize, rw) }, false},
		{"protect absent pages", func() error { return vm.Protect(b+8*pageSize, 2*pageSize, ProtRead) }, false},
		{"protect unchanged", func() error { return vm.Protect(a, 4*pageSize, rw) }, false},
		{"remove write permission", func() error { return vm.Protect(a, pageSize, ProtRead) }, true},
		{"add write permission to a present page", func() error { return vm.Map(a, pageSize, rw) }, true},
		{"add execute permission", func() error { return vm.Protect(a+pageSize, pageSize, rw|ProtExec) }, true},
		{"map present pages PROT_NONE", func() error { return vm.Map(a+2*pageSize, pageSize, ProtNone) }, true},
		{"unmap a not-present page that holds a frame", func() error { return vm.Unmap(a+2*pageSize, pageSize) }, false},
		{"unmap a present page", func() error { return vm.Unmap(a+3*pageSize, pageSize) }, true},
		{"move present pages", func() error { return vm.Move(a+4*pageSize, b+4*pageSize, 2*pageSize) }, true},
		{"move absent pages", func() error { return vm.Move(a+12*pageSize, b+12*pageSize, 2*pageSize) }, false},
	}
	for _, st := range steps {
		before := vm.tlbGen.Load()
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := vm.tlbGen.Load() != before; got != st.flush {
			t.Errorf("%s: shot down TLBs %v, want %v", st.name, got, st.flush)
		}
	}
}

// TestAdditionVisibleWithoutFlush checks on a running vCPU that a page the VMM maps between
// two guest accesses is seen by the second one although no TLB flush happened, next to a page
// the guest already used (so the paging-structure caches hold the page table), and that a
// permission reduction is still seen at once.
func TestAdditionVisibleWithoutFlush(t *testing.T) {
	next := uint64(testData + pageSize)
	code := cat(
		movRBXImm(testData),
		asmLoadRDI, movEAX(1), asmSyscall, // warm up the TLB on testData
		movRBXImm(next),
		asmLoadRDI, movEAX(2), asmSyscall, // read the page mapped during call 1
		asmStoreRAX, // write to it: it was made read-only during call 2, so this faults
		asmUD2,
	)
	vm := newTestVM(t, code)
	gen := vm.tlbGen.Load()
	var seen []uint64
	var genAfterMap uint64
	exit, _ := runUntil(t, vm, func(v *VCPU) bool {
		seen = append(seen, v.Regs.RDI)
		switch v.Regs.RAX {
		case 1:
			must(t, vm.Map(next, pageSize, ProtRead|ProtWrite))
			b := make([]byte, 8)
			binary.LittleEndian.PutUint64(b, 777)
			if _, err := vm.WriteAt(b, next); err != nil {
				t.Fatal(err)
			}
			genAfterMap = vm.tlbGen.Load()
		case 2:
			must(t, vm.Protect(next, pageSize, ProtRead))
		}
		v.CompleteSyscall(0)
		return true
	})
	if genAfterMap != gen {
		t.Errorf("mapping a fresh page bumped the TLB generation from %d to %d", gen, genAfterMap)
	}
	if len(seen) != 2 || seen[1] != 777 {
		t.Errorf("guest read %v, want [_ 777]", seen)
	}
	if exit.Kind != ExitException || exit.Vector != VectorPageFault || exit.Address != next {
		t.Errorf("write after the page became read-only: exit %v vector %d addr %#x, want a page fault at %#x",
			exit.Kind, exit.Vector, exit.Address, next)
	}
}
