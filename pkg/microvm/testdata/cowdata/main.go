// Command cowdata checks that the pages a program gets from its image are its own copies:
// its initialized data, and private and read-only shared mappings of an image file (the
// first argument). It prints what it read before writing, so two runs print the same lines,
// then waits for the end of its standard input (the test runs a second micro VM meanwhile)
// and prints "done".
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"syscall"
)

// table is initialized data: the linker stores it in the file, in whole pages.
var table = [4 * 4096]byte{0: 'A', 4096: 'B', 8192: 'C', 12288: 'D', 16383: 'E'}

func fail(format string, args ...any) {
	fmt.Printf("FAIL "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	fmt.Printf("data %c%c%c%c%c\n", table[0], table[4096], table[8192], table[12288], table[16383])
	for i := range table {
		table[i] = 'x'
	}
	if table[4096] != 'x' || table[16383] != 'x' {
		fail("data not writable")
	}

	f, err := os.Open(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	want, err := io.ReadAll(f)
	if err != nil {
		fail("%v", err)
	}
	fd := int(f.Fd())
	mmap := func(off int64, n, prot, flags int) []byte {
		m, err := syscall.Mmap(fd, off, n, prot, flags)
		if err != nil {
			fail("mmap %d+%d: %v", off, n, err)
		}
		return m
	}
	// Private, writable, one page longer than the file: zeros past its end.
	m := mmap(0, len(want)+4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE)
	if !bytes.Equal(m[:len(want)], want) {
		fail("private mapping differs from the file")
	}
	if !bytes.Equal(m[len(want):], make([]byte, len(m)-len(want))) {
		fail("private mapping not zero past the end of the file")
	}
	for i := range m {
		m[i] ^= 0xff
	}
	// The writes stay in m: a new mapping and read see the file.
	m2 := mmap(0, len(want), syscall.PROT_READ, syscall.MAP_PRIVATE)
	if !bytes.Equal(m2, want) {
		fail("second mapping sees the first one's writes")
	}
	again := make([]byte, len(want))
	if _, err := f.ReadAt(again, 0); err != nil || !bytes.Equal(again, want) {
		fail("pread after writing to a mapping: %v", err)
	}
	if m[0] != want[0]^0xff {
		fail("private mapping lost its write")
	}
	// At an offset; PROT_NONE then mprotect; read-only shared.
	if m3 := mmap(4096, 4096, syscall.PROT_READ, syscall.MAP_PRIVATE); !bytes.Equal(m3, want[4096:8192]) {
		fail("mapping at an offset differs")
	}
	m4 := mmap(0, 8192, syscall.PROT_NONE, syscall.MAP_PRIVATE)
	if err := syscall.Mprotect(m4, syscall.PROT_READ); err != nil || !bytes.Equal(m4, want[:8192]) {
		fail("PROT_NONE mapping after mprotect differs: %v", err)
	}
	if m5 := mmap(0, len(want), syscall.PROT_READ, syscall.MAP_SHARED); !bytes.Equal(m5, want) {
		fail("shared mapping differs")
	}
	syscall.Munmap(m)
	syscall.Munmap(m2)
	fmt.Printf("mmap ok %d %x\n", len(want), want[:8])
	os.Stdout.Sync()

	io.Copy(io.Discard, os.Stdin)
	fmt.Println("done")
}
