package microvm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// Defaults for PoolConfig's zero values.
const (
	DefaultPoolSize   = 2
	DefaultPoolMemory = 1 << 30
)

// PoolConfig configures a Pool.
type PoolConfig struct {
	KVM      *kvmhv.System // required; shared by every VM of the pool
	Size     int           // VMs kept ready; default 2
	Memory   int64         // the largest Config.Memory a ready VM can take; default 1 GiB
	MaxVCPUs int           // the largest Config.MaxVCPUs a ready VM can take; default 16
}

// Pool takes the creation and the destruction of micro VMs off the path of a request.
//
// In the background it keeps Size VMs created ahead of need: the KVM VM with its guest
// memory slot, supervisor and page tables, and its first vCPU on its own OS thread, parked
// before its first instruction. New with Config.Pool takes one of them (a VM is never used
// twice: each ready VM runs one program and is destroyed), and Run (or Release) hands the
// finished VM back to the pool, which destroys it in the background. When no ready VM is left, or the
// Config does not fit one (Memory or MaxVCPUs above the pool's), New creates the VM itself,
// as without a pool; Stats.Pooled tells which happened.
//
// A Pool is safe for concurrent use. Close destroys the ready VMs and waits for every VM
// handed back to be destroyed.
type Pool struct {
	cfg   PoolConfig
	ready chan *shell // VMs created ahead of need

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	fill   sync.WaitGroup // the filler goroutine
	reap   sync.WaitGroup // VMs handed back and not yet destroyed
	closed atomic.Bool

	errMu sync.Mutex // guards err
	err   error      // the filler's last error, reported by Err
}

// NewPool starts a pool. The first ready VMs are created in the background.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.KVM == nil {
		return nil, fmt.Errorf("%w: pool without a KVM system", ErrInvalidConfig)
	}
	if cfg.Size == 0 {
		cfg.Size = DefaultPoolSize
	}
	if cfg.Memory == 0 {
		cfg.Memory = DefaultPoolMemory
	}
	if cfg.MaxVCPUs == 0 {
		cfg.MaxVCPUs = DefaultMaxVCPUs
	}
	if cfg.Size < 1 || cfg.Memory < MinMemory || cfg.Memory > MaxMemory || cfg.MaxVCPUs < 1 || cfg.MaxVCPUs > kvmhv.MaxVCPUs {
		return nil, fmt.Errorf("%w: pool size %d, memory %d, max vCPUs %d", ErrInvalidConfig, cfg.Size, cfg.Memory, cfg.MaxVCPUs)
	}
	p := &Pool{cfg: cfg, ready: make(chan *shell, cfg.Size)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.fill.Add(1)
	go p.filler()
	return p, nil
}

// filler keeps the ready channel full until Close.
func (p *Pool) filler() {
	defer p.fill.Done()
	for {
		sh, err := newShell(p.cfg.KVM, p.cfg.Memory, p.cfg.MaxVCPUs)
		p.errMu.Lock()
		p.err = err
		p.errMu.Unlock()
		if err != nil {
			// Requests still get VMs, created on their path; try again a little later.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(time.Second):
				continue
			}
		}
		select {
		case p.ready <- sh:
		case <-p.ctx.Done():
			sh.destroy()
			return
		}
	}
}

// Err reports why the pool last failed to create a VM ahead of need, or nil.
func (p *Pool) Err() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}

// take returns a ready VM for a Config with this memory budget and vCPU bound, or nil.
func (p *Pool) take(memory int64, maxVCPUs int) *shell {
	if p.closed.Load() || memory > p.cfg.Memory || maxVCPUs > p.cfg.MaxVCPUs {
		return nil
	}
	select {
	case sh := <-p.ready:
		return sh
	default:
		return nil
	}
}

// Release destroys vm, which New took from p or made for a Config with Pool p, in the
// background; Close waits for it. The caller must not use vm afterwards.
func (p *Pool) Release(vm *VM) {
	p.reap.Add(1)
	go func() {
		defer p.reap.Done()
		vm.Close()
	}()
}

// Close stops making VMs, destroys the ready ones and waits until every VM handed back to
// the pool is destroyed. VMs taken and not yet handed back are their owners' to close.
func (p *Pool) Close() error {
	if !p.closed.CompareAndSwap(false, true) {
		return errors.New("micro VM pool already closed")
	}
	p.cancel()
	p.fill.Wait()
	close(p.ready)
	for sh := range p.ready {
		sh.destroy()
	}
	p.reap.Wait()
	return nil
}

// shell is a VM created ahead of need: guest memory and supervisor set up, and the first
// vCPU created on a locked OS thread that waits for the program's first thread.
type shell struct {
	hv    *kvmhv.VM
	tsc   *kvmhv.TSCReading      // the first vCPU's TSC, read ahead for the vDSO; nil if none
	start chan func(*kvmhv.VCPU) // the parked thread runs what it receives, then exits
	done  chan struct{}          // closed when the parked goroutine has returned
}

func newShell(sys *kvmhv.System, memory int64, maxVCPUs int) (*shell, error) {
	hv, err := sys.NewVM(kvmhv.Config{Memory: uint64(memory), MaxVCPUs: maxVCPUs})
	if err != nil {
		return nil, err
	}
	sh := &shell{hv: hv, start: make(chan func(*kvmhv.VCPU)), done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		defer close(sh.done)
		// The thread stays locked: it exits with the goroutine, taking any state KVM
		// attached to it along.
		runtime.LockOSThread()
		v, err := hv.NewVCPU(0, 0)
		if err != nil {
			ready <- err
			return
		}
		if r, err := v.ReadTSC(); err == nil {
			sh.tsc = &r // no reading where the host's TSC is no clock: startClock says so
		}
		ready <- nil
		if fn, ok := <-sh.start; ok {
			fn(v)
		}
	}()
	if err := <-ready; err != nil {
		<-sh.done
		hv.Close()
		return nil, err
	}
	return sh, nil
}

// destroy releases a shell that was never used.
func (sh *shell) destroy() {
	close(sh.start)
	<-sh.done
	sh.hv.Close()
}
