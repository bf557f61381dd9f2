package kvmhv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
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

// testFile writes a file of n bytes, byte i being a function of i, and opens it.
func testFile(t *testing.T, n int) (*os.File, []byte) {
	t.Helper()
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i/pageSize*7 + i%251 + 1)
	}
	name := filepath.Join(t.TempDir(), "file")
	must(t, os.WriteFile(name, data, 0o644))
	f, err := os.Open(name)
	must(t, err)
	t.Cleanup(func() { f.Close() })
	return f, data
}

func readGuest(t *testing.T, vm *VM, va uint64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	for i := 0; i < n; i += pageSize {
		gpa, _, ok := vm.as.translate(va + uint64(i))
		if !ok {
			t.Fatalf("%#x not mapped", va+uint64(i))
		}
		copy(b[i:], vm.mem.mem[gpa:gpa+pageSize])
	}
	return b
}

// TestMapFileCopyOnWrite maps a file into a running guest: the guest reads the file's bytes,
// zeros past its end, and its writes stay private to the VM.
func TestMapFileCopyOnWrite(t *testing.T) {
	const fileVA = 0x10000000
	f, data := testFile(t, 3*pageSize+100)
	code := cat(
		movRBXImm(fileVA+pageSize+8),
		asmLoadRDI, movEAX(1), asmSyscall, // report a word of the file's second page
		movRBXImm(fileVA+3*pageSize+100),
		asmLoadRDI, movEAX(2), asmSyscall, // report the word just past the end of the file
		movRBXImm(fileVA+pageSize+8),
		movEAX(0x5a5a5a5a), asmStoreRAX, // write to the second page
		asmLoadRDI, movEAX(3), asmSyscall, // report what the guest reads back
		movEAX(60), asmSyscall,
		asmUD2,
	)
	vm := newTestVM(t, code)
	must(t, vm.MapFile(fileVA, 5*pageSize, ProtRead|ProtWrite, f, 0))
	if vm.as.hostMaps != 1 || !vm.as.fileBacked.has(mustTranslate(t, vm, fileVA)/pageSize) {
		t.Errorf("%d host mappings, first frame file-backed %v: want the file mapped, not copied",
			vm.as.hostMaps, vm.as.fileBacked.has(mustTranslate(t, vm, fileVA)/pageSize))
	}
	if used, _ := vm.MemoryStats(); used < 5*pageSize {
		t.Errorf("%d bytes used after mapping 5 pages", used)
	}
	want := append(slices.Clone(data), make([]byte, 5*pageSize-len(data))...)
	if got := readGuest(t, vm, fileVA, 5*pageSize); !bytes.Equal(got, want) {
		t.Fatal("mapped pages differ from the file followed by zeros")
	}
	var seen []uint64
	exit, _ := runUntil(t, vm, func(v *VCPU) bool {
		if v.Regs.RAX == 60 {
			return false
		}
		seen = append(seen, v.Regs.RDI)
		v.CompleteSyscall(0)
		return true
	})
	wantWord := binary.LittleEndian.Uint64(data[pageSize+8:])
	if exit.Kind != ExitSyscall || len(seen) != 3 || seen[0] != wantWord || seen[1] != 0 || seen[2] != 0x5a5a5a5a {
		t.Fatalf("exit %v, guest saw %#x, want [%#x 0 0x5a5a5a5a]", exit.Kind, seen, wantWord)
	}
	// The VMM sees the guest's write; the file does not.
	if got := binary.LittleEndian.Uint64(readGuest(t, vm, fileVA+pageSize, 16)[8:]); got != 0x5a5a5a5a {
		t.Errorf("VMM reads %#x after the guest's write", got)
	}
	if _, err := vm.WriteAt([]byte("vmm write"), fileVA); err != nil {
		t.Fatal(err)
	}
	disk, err := os.ReadFile(f.Name())
	must(t, err)
	if !bytes.Equal(disk, data) {
		t.Error("writes to the mapping reached the file")
	}
	// Another VM mapping the same file sees the original bytes.
	vm2 := newTestVM(t, []byte{0xf4})
	must(t, vm2.MapFile(fileVA, 5*pageSize, ProtRead, f, 0))
	if got := readGuest(t, vm2, fileVA, 5*pageSize); !bytes.Equal(got, want) {
		t.Error("a second VM does not see the file's bytes")
	}
	// From an offset, and a range that starts past the end of the file.
	must(t, vm2.MapFile(fileVA, 2*pageSize, ProtRead, f, 2*pageSize))
	if got := readGuest(t, vm2, fileVA, 2*pageSize); !bytes.Equal(got, want[2*pageSize:4*pageSize]) {
		t.Error("mapping from an offset")
	}
	must(t, vm2.MapFile(fileVA, pageSize, ProtRead, f, 8*pageSize))
	if got := readGuest(t, vm2, fileVA, pageSize); !bytes.Equal(got, make([]byte, pageSize)) {
		t.Error("a page past the end of the file is not zero")
	}
	if err := vm2.MapFile(fileVA, pageSize, ProtRead, f, 100); err == nil {
		t.Error("MapFile at an unaligned offset succeeded")
	}
}

func mustTranslate(t *testing.T, vm *VM, va uint64) uint64 {
	t.Helper()
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	gpa, _, ok := vm.as.translate(va)
	if !ok {
		t.Fatalf("%#x not mapped", va)
	}
	return gpa
}

// TestRecycledFileFrameReadsZero frees frames a file backed and checks that they read as
// zero when handed out again, both when they are mapped anonymous again and, past
// maxHostMaps, when they are zeroed in place; and that a file is read in, not mapped, past
// maxHostMaps.
func TestRecycledFileFrameReadsZero(t *testing.T) {
	const fileVA, anonVA = 0x10000000, 0x20000000
	f, data := testFile(t, 4*pageSize)
	vm := newTestVM(t, []byte{0xf4})
	zero := make([]byte, 4*pageSize)
	framesAt := func(va uint64) []uint64 {
		var fr []uint64
		for i := uint64(0); i < 4; i++ {
			fr = append(fr, mustTranslate(t, vm, va+i*pageSize))
		}
		slices.Sort(fr)
		return fr
	}
	// Page tables for anonVA first, so that mapping it later takes only the freed frames.
	must(t, vm.Map(anonVA, pageSize, ProtRead))
	must(t, vm.Unmap(anonVA, pageSize))
	recycle := func(what string) {
		t.Helper()
		freed := framesAt(fileVA)
		must(t, vm.Unmap(fileVA, 4*pageSize))
		must(t, vm.Map(anonVA, 4*pageSize, ProtRead|ProtWrite))
		if got := framesAt(anonVA); !slices.Equal(got, freed) {
			t.Fatalf("%s: frames %#x not reused (got %#x)", what, freed, got)
		}
		if got := readGuest(t, vm, anonVA, 4*pageSize); !bytes.Equal(got, zero) {
			t.Errorf("%s: recycled frames do not read as zero", what)
		}
		// Dirty them and free them again: anonymous or not, they must come back zero.
		_, err := vm.WriteAt(bytes.Repeat([]byte{0xee}, 4*pageSize), anonVA)
		must(t, err)
		must(t, vm.Unmap(anonVA, 4*pageSize))
		must(t, vm.Map(anonVA, 4*pageSize, ProtRead|ProtWrite))
		if got := readGuest(t, vm, anonVA, 4*pageSize); !bytes.Equal(got, zero) {
			t.Errorf("%s: frames freed a second time do not read as zero", what)
		}
		must(t, vm.Unmap(anonVA, 4*pageSize))
	}

	must(t, vm.MapFile(fileVA, 4*pageSize, ProtRead|ProtWrite, f, 0))
	_, err := vm.WriteAt([]byte("private"), fileVA+pageSize) // one copied page, three file pages
	must(t, err)
	frame := mustTranslate(t, vm, fileVA) / pageSize
	recycle("mapped anonymous again")
	if vm.as.fileBacked.has(frame) || vm.as.hostMaps != 2 {
		t.Errorf("after release: frame file-backed %v, %d host mappings; want remapped anonymous, 2",
			vm.as.fileBacked.has(frame), vm.as.hostMaps)
	}

	must(t, vm.MapFile(fileVA, 4*pageSize, ProtRead|ProtWrite, f, 0))
	vm.as.hostMaps = maxHostMaps // as if the guest had used them all up
	frame = mustTranslate(t, vm, fileVA) / pageSize
	recycle("zeroed in place")
	if !vm.as.fileBacked.has(frame) {
		t.Error("a frame zeroed in place is no longer marked file-backed")
	}

	// Past the bound MapFile reads the bytes in.
	must(t, vm.MapFile(fileVA, 4*pageSize, ProtRead, f, 0))
	if got := readGuest(t, vm, fileVA, 4*pageSize); !bytes.Equal(got, data) {
		t.Error("file read in past maxHostMaps differs")
	}
	if vm.as.hostMaps != maxHostMaps {
		t.Errorf("%d host mappings, bound %d", vm.as.hostMaps, maxHostMaps)
	}
}

// TestMapFileBudgetAndMappings checks that file-backed pages count against the budget and
// that closing a VM removes every host mapping MapFile made.
func TestMapFileBudgetAndMappings(t *testing.T) {
	s := requireKVM(t)
	f, _ := testFile(t, 64*pageSize)
	before := hostMappings(t)
	vm, err := s.NewVM(Config{Memory: 1 << 20})
	must(t, err)
	used, _ := vm.MemoryStats()
	if err := vm.MapFile(0x10000000, 512*pageSize, ProtRead, f, 0); !errors.Is(err, ErrNoMemory) {
		t.Errorf("mapping 2 MiB of file in a 1 MiB budget: %v, want ErrNoMemory", err)
	}
	if now, _ := vm.MemoryStats(); now > used+4*pageSize {
		t.Errorf("a failed MapFile left %d bytes in use (from %d)", now, used)
	}
	// Many small mappings at scattered places: frames of different runs, one host mapping each.
	for i := uint64(0); i < 40; i++ {
		must(t, vm.MapFile(0x10000000+i*0x10000, 2*pageSize, ProtRead, f, int64(i%30)*pageSize))
	}
	for i := uint64(0); i < 40; i += 2 {
		must(t, vm.Unmap(0x10000000+i*0x10000, pageSize))
	}
	if during := hostMappings(t); during <= before {
		t.Errorf("%d host mappings with file mappings in place, %d before: not mapped?", during, before)
	}
	must(t, vm.Close())
	if after := hostMappings(t); after > before {
		t.Errorf("%d host mappings after Close, %d before", after, before)
	}
}

func hostMappings(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	must(t, err)
	return bytes.Count(b, []byte("\n"))
}

// TestTruncatedFileDoesNotCrashTheVMM maps a file, truncates it under the VM (an image
// file must never change in place, but a mistake must not take the VMM down) and checks
// that the VMM's accesses to the pages it no longer backs fail with ErrFault and
// ErrBackingLost instead of killing the process with SIGBUS, and that freeing those
// frames still works.
func TestTruncatedFileDoesNotCrashTheVMM(t *testing.T) {
	const fileVA = 0x10000000
	f, data := testFile(t, 4*pageSize)
	vm := newTestVM(t, nil)
	must(t, vm.MapFile(fileVA, 4*pageSize, ProtRead|ProtWrite, f, 0))
	buf := make([]byte, 16)
	if _, err := vm.ReadAt(buf, fileVA+2*pageSize); err != nil || !bytes.Equal(buf, data[2*pageSize:2*pageSize+16]) {
		t.Fatalf("read before the truncation: %v", err)
	}
	must(t, os.Truncate(f.Name(), pageSize))
	for _, access := range []struct {
		name string
		do   func() error
	}{
		{"read", func() error { _, err := vm.ReadAt(buf, fileVA+3*pageSize); return err }},
		{"write", func() error { _, err := vm.WriteAt(buf, fileVA+3*pageSize); return err }},
	} {
		if err := access.do(); !errors.Is(err, ErrFault) || !errors.Is(err, ErrBackingLost) {
			t.Errorf("%s of a page past the new end of the file: %v, want ErrFault and ErrBackingLost", access.name, err)
		}
	}
	if _, err := vm.ReadAt(buf, fileVA); err != nil {
		t.Errorf("read of the page the file still backs: %v", err)
	}
	must(t, vm.Unmap(fileVA, 4*pageSize))
}
