package microvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/guestfs"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// Defaults for Config's zero values.
const (
	DefaultMemory         = 256 << 20
	DefaultMaxVCPUs       = 16
	DefaultScratchBytes   = 64 << 20
	DefaultMaxOutputBytes = 64 << 20
	DefaultMaxOutputFiles = 256
	DefaultDir            = "/work"
)

// Bounds of Config.Memory.
const (
	// MinMemory is the smallest guest memory budget: memory is charged when it is mapped,
	// and the program's 8 MiB stack is mapped before it starts.
	MinMemory = 16 << 20
	// MaxMemory is the largest guest memory budget. Guest memory is reserved, not
	// committed, but KVM keeps metadata for every page of the VM's memory slot, allocated
	// when the VM is made, which takes the longer the larger the slot (see MICROVM.md).
	MaxMemory = 64 << 30
)

// ErrInvalidConfig is wrapped by errors for a Config that cannot describe a micro VM.
var ErrInvalidConfig = errors.New("invalid micro VM config")

// guestPID is the process ID the guest sees for itself.
const guestPID = 1

// VM is one micro VM. Create it with New, run it once with Run, release it with Close.
type VM struct {
	cfg    Config
	sys    *kvmhv.System
	ownSys bool
	hv     *kvmhv.VM
	shell  *shell // made ahead of need by cfg.Pool, until the first thread starts on it
	fs     *guestfs.FS
	mm     *memory
	vdso   bool // the guest has the vDSO (set by load)
	fds    *fdTable
	stdin  *stdinReader
	start  time.Time

	sigMu      sync.Mutex    // guards sigactions
	sigactions [65]sigaction // by signal number

	futex futexTable
	poll  pollHub

	threadMu sync.Mutex       // guards threads, nextTID, cwd and umask
	threads  map[int]*thread  // live guest threads by TID
	idle     []chan<- runFunc // vCPUs of exited threads, waiting for threads to run (serve)
	nextTID  int
	cwd      string
	umask    uint32         // applied to the mode of files and directories the program makes
	wg       sync.WaitGroup // thread goroutines

	exitOnce sync.Once
	done     chan struct{} // closed when the guest program has ended
	result   Result        // written once under exitOnce, read after done

	stats statsCounter
	ran   atomic.Bool

	// exitHook, when set (by tests, before Run), sees every exit of every thread before it
	// is handled and may replace it: a CPL3 program cannot cause the fatal exits a broken
	// supervisor would, so TestFatalExit injects them.
	exitHook func(kvmhv.Exit) kvmhv.Exit
}

// New builds a micro VM from cfg: guest memory, the file namespace, and the program loaded
// with its initial stack. Nothing runs until Run.
func New(cfg Config) (*VM, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	vm := &VM{cfg: cfg, threads: map[int]*thread{}, nextTID: guestPID, cwd: cfg.Dir, umask: 0o022, done: make(chan struct{})}
	vm.start = time.Now()
	vm.stats.init()
	if err := vm.init(); err != nil {
		vm.Close()
		return nil, err
	}
	return vm, nil
}

func (c *Config) normalize() error {
	if c.Image == nil {
		return fmt.Errorf("%w: no guest image", ErrInvalidConfig)
	}
	if c.Program == "" || c.Program[0] != '/' {
		return fmt.Errorf("%w: program %q must be an absolute guest path", ErrInvalidConfig, c.Program)
	}
	if len(c.Args) == 0 {
		c.Args = []string{c.Program}
	}
	if c.Dir == "" {
		c.Dir = DefaultDir
	}
	if c.Memory == 0 {
		c.Memory = DefaultMemory
	}
	if c.Memory < MinMemory || c.Memory > MaxMemory {
		return fmt.Errorf("%w: memory %d bytes is not between %d MiB and %d GiB", ErrInvalidConfig, c.Memory, MinMemory>>20, MaxMemory>>30)
	}
	if c.MaxVCPUs == 0 {
		c.MaxVCPUs = DefaultMaxVCPUs
	}
	if c.MaxVCPUs < 1 || c.MaxVCPUs > kvmhv.MaxVCPUs {
		return fmt.Errorf("%w: max vCPUs %d not in 1..%d", ErrInvalidConfig, c.MaxVCPUs, kvmhv.MaxVCPUs)
	}
	if c.ScratchBytes == 0 {
		c.ScratchBytes = DefaultScratchBytes
	}
	if c.MaxOutputBytes == 0 {
		c.MaxOutputBytes = DefaultMaxOutputBytes
	}
	if c.MaxOutputFiles == 0 {
		c.MaxOutputFiles = DefaultMaxOutputFiles
	}
	if c.Stdout == nil {
		c.Stdout = io.Discard
	}
	if c.Stderr == nil {
		c.Stderr = io.Discard
	}
	return nil
}

func (vm *VM) init() error {
	var err error
	switch {
	case vm.cfg.Pool != nil:
		vm.sys = vm.cfg.Pool.cfg.KVM
		if sh := vm.cfg.Pool.take(vm.cfg.Memory, vm.cfg.MaxVCPUs); sh != nil {
			vm.shell, vm.hv = sh, sh.hv
			vm.stats.pooled = true
			if err := vm.hv.LimitMemory(uint64(vm.cfg.Memory)); err != nil {
				return err
			}
		}
	case vm.cfg.KVM != nil:
		vm.sys = vm.cfg.KVM
	default:
		if vm.sys, err = kvmhv.Open(); err != nil {
			return err
		}
		vm.ownSys = true
	}
	if vm.hv == nil {
		if vm.hv, err = vm.sys.NewVM(kvmhv.Config{Memory: uint64(vm.cfg.Memory), MaxVCPUs: vm.cfg.MaxVCPUs}); err != nil {
			return err
		}
	}
	inputs := make([]guestfs.Input, len(vm.cfg.Inputs))
	for i, in := range vm.cfg.Inputs {
		inputs[i] = guestfs.Input{Name: in.Name, HostPath: in.HostPath}
	}
	vm.fds = newFDTable()
	vm.fs, err = guestfs.New(guestfs.Config{
		Image:        vm.cfg.Image,
		Inputs:       inputs,
		ScratchBytes: vm.cfg.ScratchBytes,
		Exe:          vm.cfg.Program,
		Cmdline:      vm.cfg.Args,
		PID:          guestPID,
		FDPath:       vm.fds.path,
		ProcFiles:    vm.procFiles(),
	})
	if err != nil {
		return fmt.Errorf("guest files: %w", err)
	}
	vm.stdin = newStdinReader(vm.cfg.Stdin, &vm.poll, vm.done)
	vm.fds.installStdio(vm.stdin, vm.cfg.Stdout, vm.cfg.Stderr, &vm.poll)
	vm.mm = newMemory(vm.hv)
	return nil
}

// Run runs the guest program to its end and returns the result. It returns early, with
// Result.Killed, when ctx is done or Kill is called, and with Result.TimedOut when the
// Config's time limits are reached. A VM runs once.
func (vm *VM) Run(ctx context.Context) (*Result, error) {
	if !vm.ran.CompareAndSwap(false, true) {
		return nil, errors.New("micro VM already ran")
	}
	entry, err := vm.load()
	if err != nil {
		return nil, err
	}
	var first func(*thread, *kvmhv.VCPU) error
	if vm.vdso {
		var ahead *kvmhv.TSCReading
		if vm.shell != nil {
			ahead = vm.shell.tsc // read before the first thread takes the shell
		}
		first = func(_ *thread, v *kvmhv.VCPU) error {
			vm.startClock(v, ahead) // without a clock, the vDSO makes system calls
			return nil
		}
	}
	if _, err := vm.startThread(entry, first); err != nil {
		return nil, err
	}
	var timeout <-chan time.Time
	if vm.cfg.Timeout > 0 {
		t := time.NewTimer(vm.cfg.Timeout - time.Since(vm.start))
		defer t.Stop()
		timeout = t.C
	}
	var cpuTick <-chan time.Time
	if vm.cfg.CPUTime > 0 {
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		cpuTick = tk.C
	}
	for waiting := true; waiting; {
		select {
		case <-vm.done:
			waiting = false
		case <-ctx.Done():
			vm.terminate(exitStatus{killed: true, reason: "killed: " + context.Cause(ctx).Error()})
		case <-timeout:
			vm.terminate(exitStatus{timedOut: true, reason: fmt.Sprintf("wall-clock limit %v reached", vm.cfg.Timeout)})
		case <-cpuTick:
			if cpu := vm.cpuTime(); cpu > vm.cfg.CPUTime {
				vm.terminate(exitStatus{timedOut: true, reason: fmt.Sprintf("CPU time limit %v reached", vm.cfg.CPUTime)})
			}
		}
	}
	vm.wg.Wait()
	res := vm.result
	res.Outputs, res.Rejected = vm.outputs()
	res.Stats = vm.snapshotStats()
	return &res, nil
}

// Kill ends the guest program as if by SIGKILL.
func (vm *VM) Kill() {
	vm.terminate(exitStatus{killed: true, signal: int(unix.SIGKILL), reason: "killed"})
}

// exitStatus is how the guest program ended.
type exitStatus struct {
	code     int
	signal   int
	timedOut bool
	killed   bool
	reason   string
}

// terminate records how the program ended (the first call wins) and stops every thread.
func (vm *VM) terminate(st exitStatus) {
	vm.exitOnce.Do(func() {
		r := &vm.result
		r.ExitCode, r.Signal, r.TimedOut, r.Killed, r.Reason = st.code, st.signal, st.timedOut, st.killed, st.reason
		if st.signal != 0 {
			r.ExitCode = 128 + st.signal
		} else if st.timedOut || st.killed {
			r.ExitCode = 128 + int(unix.SIGKILL)
			r.Signal = int(unix.SIGKILL)
		}
		// Every thread is stopped before done is closed: a thread blocked in a system
		// call wakes on done (EINTR) and must find itself stopped, not enter the guest
		// again with the result. startThread checks done under threadMu too, so no thread
		// slips in between.
		vm.threadMu.Lock()
		for _, t := range vm.threads {
			t.stop()
		}
		close(vm.done)
		vm.threadMu.Unlock()
		vm.futex.wakeAll()
		vm.poll.notify()
	})
}

// stopping reports whether the program has ended.
func (vm *VM) stopping() bool {
	select {
	case <-vm.done:
		return true
	default:
		return false
	}
}

// Close destroys the VM and releases everything it holds. It is safe to call more than
// once and after a failed New.
func (vm *VM) Close() error {
	vm.terminate(exitStatus{killed: true, reason: "closed"})
	vm.wg.Wait()
	if sh := vm.takeShell(); sh != nil {
		// Never started: end the parked thread before its VM goes.
		close(sh.start)
		<-sh.done
	}
	var errs []error
	if vm.fds != nil {
		vm.fds.closeAll()
	}
	if vm.fs != nil {
		errs = append(errs, vm.fs.Close())
		vm.fs = nil
	}
	if vm.hv != nil {
		errs = append(errs, vm.hv.Close())
		vm.hv = nil
	}
	if vm.ownSys && vm.sys != nil {
		errs = append(errs, vm.sys.Close())
		vm.sys = nil
	}
	return errors.Join(errs...)
}

// Run creates a micro VM from cfg, runs it and destroys it. With cfg.Pool, the VM is
// destroyed in the background after Run returns (Pool.Close waits for that).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	vm, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Pool != nil {
		defer cfg.Pool.Release(vm)
	} else {
		defer vm.Close()
	}
	return vm.Run(ctx)
}

// takeShell returns the VM's ready-made shell the first time it is called, or nil.
func (vm *VM) takeShell() *shell {
	vm.threadMu.Lock()
	defer vm.threadMu.Unlock()
	sh := vm.shell
	vm.shell = nil
	return sh
}

// startThread starts a guest thread: on the vCPU of a thread that has exited when one is
// idle, else on a new vCPU on its own locked OS thread. init runs on that thread before
// the first instruction (to copy registers for clone); if it fails, the thread does not
// start.
func (vm *VM) startThread(regs kvmhv.Regs, init func(t *thread, v *kvmhv.VCPU) error) (*thread, error) {
	vm.threadMu.Lock()
	if vm.stopping() {
		vm.threadMu.Unlock()
		return nil, errStopping
	}
	tid := vm.nextTID
	vm.nextTID++
	t := &thread{vm: vm, tid: tid}
	vm.threads[tid] = t
	var idle chan<- runFunc
	if n := len(vm.idle); n > 0 {
		idle = vm.idle[n-1]
		vm.idle = vm.idle[:n-1]
	}
	vm.threadMu.Unlock()

	ready := make(chan error, 1)
	run := func(v *kvmhv.VCPU, park func()) {
		hostTID := unix.Gettid()
		cpuBase := threadCPU(hostTID)
		vm.threadMu.Lock() // cpuTime reads them
		t.hostTID, t.cpuBase = hostTID, cpuBase
		vm.threadMu.Unlock()
		v.Regs = regs
		t.setVCPU(v)
		if init != nil {
			if err := init(t, v); err != nil {
				ready <- err
				park() // the vCPU is free for another thread
				return
			}
		}
		ready <- nil
		t.loop()
		if t.exitCalled {
			t.exitThread(park)
		}
	}
	switch sh := vm.takeShell(); {
	case idle != nil:
		idle <- run // buffered: the parked vCPU takes it, or leaves when the VM stops
	case sh != nil:
		vm.wg.Add(1)
		sh.start <- func(v *kvmhv.VCPU) { vm.serve(v, run) } // the first thread, on the vCPU made ahead of need
	default:
		vm.wg.Add(1)
		go func() {
			runtime.LockOSThread()
			v, err := vm.hv.NewVCPU(regs.RIP, regs.RSP)
			if err != nil {
				vm.wg.Done()
				ready <- err
				return
			}
			vm.serve(v, run)
		}()
	}
	var err error
	if idle == nil {
		err = <-ready
	} else {
		select {
		case err = <-ready:
		case <-vm.done:
			// The parked vCPU may have left without taking the thread.
			err = errStopping
		}
	}
	if err != nil {
		vm.removeThread(t)
		return nil, err
	}
	vm.stats.threads.Add(1) // a thread that failed to start is not counted
	return t, nil
}

var errStopping = errors.New("micro VM is stopping")

// runFunc runs a guest thread on v, on v's OS thread, until the thread exits (then it
// calls park before the exit is visible to other threads) or the VM stops.
type runFunc func(v *kvmhv.VCPU, park func())

// serve runs guest threads on v, on its locked OS thread, which it never unlocks (it exits
// with the goroutine, taking any state KVM attached to it along): first run, then, while
// the VM runs, each thread startThread hands it after a thread on it exited and parked it.
// KVM cannot destroy a single vCPU, and a VM has at most Config.MaxVCPUs, so a program
// that starts and joins threads, more than that in all, needs its threads' vCPUs reused.
func (vm *VM) serve(v *kvmhv.VCPU, run runFunc) {
	defer vm.wg.Done()
	next := make(chan runFunc, 1)
	park := func() {
		vm.threadMu.Lock()
		if !vm.stopping() {
			vm.idle = append(vm.idle, next)
		}
		vm.threadMu.Unlock()
	}
	for {
		run(v, park)
		select {
		case run = <-next:
			v.ReturnToUser() // from wherever the last thread left it, to user mode at run's registers
		case <-vm.done:
			return
		}
	}
}

func (vm *VM) removeThread(t *thread) (last bool) {
	vm.threadMu.Lock()
	defer vm.threadMu.Unlock()
	delete(vm.threads, t.tid)
	return len(vm.threads) == 0
}
