package microvm

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// statsCounter accumulates a VM's statistics while it runs.
type statsCounter struct {
	mu       sync.Mutex // guards the maps and retiredCPU
	exits    map[string]uint64
	syscalls map[uint64]uint64
	denied   map[uint64]uint64

	retiredCPU time.Duration // CPU time of threads that have exited
	threads    atomic.Int64
	copiedIn   atomic.Int64
	copiedOut  atomic.Int64
	dropped    atomic.Int64
	nextIno    atomic.Int64
	pooled     bool        // set by New, before any thread runs
	guestClock atomic.Bool // the vDSO's clock was started
}

func (s *statsCounter) init() {
	s.exits = map[string]uint64{}
	s.syscalls = map[uint64]uint64{}
	s.denied = map[uint64]uint64{}
	s.nextIno.Store(1000)
}

func (s *statsCounter) exit(e kvmhv.Exit) {
	key := e.Kind.String()
	if e.Kind == kvmhv.ExitException {
		key = fmt.Sprintf("exception-%d", e.Vector)
	}
	s.mu.Lock()
	s.exits[key]++
	s.mu.Unlock()
}

func (s *statsCounter) serve(nr uint64) {
	s.mu.Lock()
	s.syscalls[nr]++
	s.mu.Unlock()
}

func (s *statsCounter) deny(nr uint64) {
	s.mu.Lock()
	s.denied[nr]++
	s.mu.Unlock()
}

func (s *statsCounter) droppedSignal() { s.dropped.Add(1) }

// threadCPU reads the CPU time of the host thread running a guest thread.
func threadCPU(hostTID int) time.Duration {
	var ts unix.Timespec
	clock := int32(^hostTID<<3 | 6) // MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)
	if unix.ClockGettime(clock, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// retire adds an exiting thread's CPU time to the total.
func (s *statsCounter) retire(t *thread) {
	if t.retired.Swap(true) {
		return
	}
	d := threadCPU(t.hostTID) - t.cpuBase
	s.mu.Lock()
	s.retiredCPU += d
	s.mu.Unlock()
}

// cpu is the CPU time of all guest threads so far.
func (vm *VM) cpuTime() time.Duration {
	vm.threadMu.Lock()
	var live time.Duration
	for _, t := range vm.threads {
		// A thread not started yet has no OS thread (and tid 0 would be the caller's).
		if t.hostTID != 0 && !t.retired.Load() {
			live += threadCPU(t.hostTID) - t.cpuBase
		}
	}
	vm.threadMu.Unlock()
	vm.stats.mu.Lock()
	defer vm.stats.mu.Unlock()
	return live + vm.stats.retiredCPU
}

func (vm *VM) snapshotStats() Stats {
	s := &vm.stats
	st := Stats{
		Exits:          map[string]uint64{},
		Syscalls:       map[string]uint64{},
		Denied:         map[string]uint64{},
		Wall:           time.Since(vm.start),
		CPU:            vm.cpuTime(),
		Threads:        int(s.threads.Load()),
		BytesCopiedIn:  s.copiedIn.Load(),
		BytesCopiedOut: s.copiedOut.Load(),
		SignalsDropped: s.dropped.Load(),
		Pooled:         s.pooled,
		GuestClock:     s.guestClock.Load(),
	}
	s.mu.Lock()
	for k, v := range s.exits {
		st.Exits[k] = v
	}
	for nr, v := range s.syscalls {
		st.Syscalls[syscallName(nr)] += v
		st.SyscallCount += v
	}
	for nr, v := range s.denied {
		st.Denied[syscallName(nr)] += v
		st.DeniedCount += v
	}
	s.mu.Unlock()
	if vm.hv != nil {
		_, st.PeakMemory = vm.hv.MemoryStats()
	}
	return st
}
