// Command pieprog reports where it was loaded and what its auxiliary vector says, for
// TestStaticPIE. testdata/pieprog.c prints the same lines; the test builds this one when
// the Go toolchain can make a static PIE of it, and the C one with gcc -static-pie otherwise.
package main

import (
	"fmt"
	"os"
	"reflect"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	auxv, err := unix.Auxv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "auxv:", err)
		os.Exit(1)
	}
	get := func(key uintptr) uintptr {
		for _, kv := range auxv {
			if kv[0] == key {
				return kv[1]
			}
		}
		return 0
	}
	const atPhdr, atPagesz, atBase, atEntry, atRandom = 3, 6, 7, 9, 25
	fmt.Println("hello from a static PIE")
	fmt.Printf("main %#x\n", reflect.ValueOf(main).Pointer())
	fmt.Printf("AT_PHDR %#x\n", get(atPhdr))
	fmt.Printf("AT_ENTRY %#x\n", get(atEntry))
	fmt.Printf("AT_BASE %#x\n", get(atBase))
	fmt.Printf("AT_RANDOM %#x\n", get(atRandom))
	fmt.Printf("AT_PAGESZ %d\n", get(atPagesz))
	fmt.Printf("phdr0 %d\n", *(*uint32)(unsafe.Pointer(get(atPhdr))))
	fmt.Printf("pagesize %d\n", os.Getpagesize())
}
