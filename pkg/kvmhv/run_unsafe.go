package kvmhv

import "unsafe"

// sync returns the register-synchronization part of the vCPU's kvm_run.
func (r *runArea) sync() *runSync {
	return (*runSync)(unsafe.Pointer(&r.mem[runSyncOffset]))
}
