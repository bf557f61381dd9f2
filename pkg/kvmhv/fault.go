package kvmhv

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// ErrBackingLost means that guest memory the VMM touched is no longer backed by the host:
// its pages are mapped from a file (VM.MapFile) that shrank while the VM was using it, so
// the access faulted (SIGBUS) and was abandoned. An image file must never change in place;
// this keeps the VMM alive when one does.
var ErrBackingLost = errors.New("guest memory no longer backed by its file")

// guarded runs fn, which touches guest memory, and turns a memory fault in it into
// ErrBackingLost instead of a crash of the whole process.
func guarded(fn func()) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(interface{ Addr() uintptr })
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("%w (fault at host address %#x)", ErrBackingLost, f.Addr())
		}
	}()
	fn()
	return nil
}
