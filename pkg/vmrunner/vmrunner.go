// Package vmrunner runs isolatord's handler jobs in micro VMs: it turns a daemon.Job (a
// handler and a staged input file) into a microvm.Config with the handler's guest image,
// program, arguments and limits, runs it and reports the result.
package vmrunner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/daemon"
	"github.com/isolator-dev/isolator/pkg/image"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
	"github.com/isolator-dev/isolator/pkg/microvm"
	"github.com/isolator-dev/isolator/pkg/policy"
)

// Config configures a Runner.
type Config struct {
	// Image returns the guest image called name; required.
	Image func(name string) (*image.Image, error)
	// PoolSize is how many micro VMs are kept made ahead of need (microvm.Pool); default
	// microvm.DefaultPoolSize.
	PoolSize int
}

// Runner runs jobs in micro VMs. It opens /dev/kvm once and keeps a microvm.Pool, so that
// a job does not wait for its VM to be created or destroyed.
type Runner struct {
	cfg  Config
	kvm  *kvmhv.System
	pool *microvm.Pool
}

var (
	_ daemon.Runner = (*Runner)(nil)
	_ io.Closer     = (*Runner)(nil)
)

// New opens /dev/kvm and returns a Runner; Close releases it.
func New(cfg Config) (*Runner, error) {
	if cfg.Image == nil {
		return nil, errors.New("vmrunner: no image lookup")
	}
	sys, err := kvmhv.Open()
	if err != nil {
		return nil, err
	}
	pool, err := microvm.NewPool(microvm.PoolConfig{KVM: sys, Size: cfg.PoolSize})
	if err != nil {
		sys.Close()
		return nil, err
	}
	return &Runner{cfg: cfg, kvm: sys, pool: pool}, nil
}

// Close destroys the micro VMs made ahead of need, waits for finished ones to be destroyed
// and closes /dev/kvm. Jobs must have ended.
func (r *Runner) Close() error {
	return errors.Join(r.pool.Close(), r.kvm.Close())
}

// Run runs job in a fresh micro VM; the VM is destroyed in the background after it ends.
func (r *Runner) Run(ctx context.Context, job *daemon.Job) (*daemon.RunResult, error) {
	h := job.Handler
	img, err := r.cfg.Image(h.Image)
	if err != nil {
		return nil, err
	}
	ph := &policy.Handler{Program: h.Program, Args: h.Args}
	prog := ph.ExpandProgram(job.InputName)
	stdout, stderr := job.Stdout, job.Stderr
	if len(h.Returns) > 0 {
		if !slices.Contains(h.Returns, "stdout") {
			stdout = io.Discard
		}
		if !slices.Contains(h.Returns, "stderr") {
			stderr = io.Discard
		}
	}
	vm, err := microvm.New(microvm.Config{
		Pool:           r.pool,
		Image:          img,
		Program:        prog,
		Args:           append([]string{prog}, ph.ExpandArgs(job.InputName)...),
		Env:            h.Env,
		Inputs:         []microvm.Input{{Name: job.InputName, HostPath: job.Input}},
		Stdout:         stdout,
		Stderr:         stderr,
		Memory:         h.Memory,
		Timeout:        h.Timeout,
		MaxOutputBytes: h.MaxOutputBytes,
		MaxOutputFiles: h.MaxOutputFiles,
	})
	if err != nil {
		return nil, fmt.Errorf("create micro VM: %w", err)
	}
	defer r.pool.Release(vm)
	if job.Started != nil {
		job.Started()
	}
	res, err := vm.Run(ctx)
	if err != nil {
		return nil, fmt.Errorf("micro VM: %w", err)
	}
	out := &daemon.RunResult{
		ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut, Killed: res.Killed, Reason: res.Reason,
		Stats:          stats(res.Stats),
		MaxOutputFiles: cmp.Or(h.MaxOutputFiles, microvm.DefaultMaxOutputFiles),
		MaxOutputBytes: cmp.Or(h.MaxOutputBytes, microvm.DefaultMaxOutputBytes),
	}
	if len(h.Returns) == 0 || slices.Contains(h.Returns, "files") {
		for _, o := range res.Outputs {
			out.Outputs = append(out.Outputs, api.File{Name: o.Name, Mode: o.Mode, Data: o.Data})
		}
	}
	for _, rj := range res.Rejected {
		out.Rejected = append(out.Rejected, api.Rejected{Name: rj.Name, Reason: rj.Reason})
	}
	return out, nil
}

func stats(s microvm.Stats) api.VMStats {
	st := api.VMStats{Wall: s.Wall, CPU: s.CPU, PeakMemory: s.PeakMemory, Threads: s.Threads,
		Denied: s.Denied, BytesCopiedIn: s.BytesCopiedIn, BytesCopiedOut: s.BytesCopiedOut}
	for _, n := range s.Syscalls {
		st.Syscalls += n
	}
	for _, n := range s.Exits {
		st.Exits += n
	}
	return st
}
