// Command mmapstress checks that guest threads never see memory through a stale TLB entry.
//
// Goroutines, free to migrate between guest threads (vCPUs), repeatedly map a few pages,
// fill them through the CPU, have the VMM read them back with pwrite to a scratch file (the
// VMM walks the page tables, not the TLB), compare, and unmap. Unmapped frames are recycled
// at once, so a vCPU that kept a stale translation after munmap would write into a frame that
// another mapping now owns, and the comparison would fail. It prints "ok N" on success.
package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
)

func main() {
	workers, iters := 8, 300
	if len(os.Args) == 3 {
		workers, _ = strconv.Atoi(os.Args[1])
		iters, _ = strconv.Atoi(os.Args[2])
	}
	const size = 4 * 4096
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.Create(fmt.Sprintf("/tmp/stress-%d", w))
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			back := make([]byte, size)
			for i := range iters {
				m, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
				if err != nil {
					errs <- fmt.Errorf("mmap: %w", err)
					return
				}
				for j := range m {
					m[j] = byte(w*31 + i*7 + j)
				}
				if _, err := f.WriteAt(m, 0); err != nil {
					errs <- err
					return
				}
				if _, err := f.ReadAt(back, 0); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(m, back) {
					errs <- fmt.Errorf("worker %d iteration %d: the VMM sees other bytes than the CPU wrote", w, i)
					return
				}
				if err := syscall.Munmap(m); err != nil {
					errs <- fmt.Errorf("munmap: %w", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fmt.Fprintln(os.Stderr, "mmapstress:", err)
		os.Exit(1)
	}
	fmt.Println("ok", workers*iters)
}
