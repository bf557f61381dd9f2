package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/isolator-dev/isolator/pkg/image"
	"github.com/isolator-dev/isolator/pkg/microvm"
)

// workload is a busybox command line run in every sandbox.
type workload struct {
	name      string
	hostArgs  []string // argv on the host and in sandboxes that see the host's files
	guestArgs []string // argv in a micro VM
	inputs    []microvm.Input
	want      string // expected output (a substring), checked once before timing
}

// sandbox runs workloads.
type sandbox struct {
	name string
	// prepare checks the sandbox can run w and returns its runner; the error, if any, is
	// printed in the table instead of a time.
	prepare func(ctx context.Context, w workload) (measure, error)
	ours    bool // an Isolator sandbox: failing to run is a failure of the benchmark
	pooled  bool // runs take micro VMs from b.pool
	strace  bool // count the workload's system calls with strace -f (host only)
}

func (b *bench) workloads() []workload {
	return []workload{
		{
			name:      "`busybox true`",
			hostArgs:  []string{b.busybox, "true"},
			guestArgs: []string{b.busybox, "true"},
		},
		{
			name:      "`busybox sha256sum` 1 MiB",
			hostArgs:  []string{b.busybox, "sha256sum", b.inputPath},
			guestArgs: []string{b.busybox, "sha256sum", "/input/" + inputName},
			inputs:    []microvm.Input{{Name: inputName, HostPath: b.inputPath}},
			want:      b.inputSum,
		},
	}
}

// execSandbox is a sandbox that runs a host command line with prefix before the workload.
func (b *bench) execSandbox(name string, prefix ...string) sandbox {
	return sandbox{name: name, prepare: func(ctx context.Context, w workload) (measure, error) {
		argv := append(append([]string{}, prefix...), w.hostArgs...)
		if err := checkOutput(ctx, argv, w.want); err != nil {
			return nil, err
		}
		return b.timed(argv, false), nil
	}}
}

// runscDo is the gVisor command line prefix: as root, without networking, on gVisor's
// default platform (ptrace; the Debian 12 runsc has no systrap, see probeRunsc).
var runscDo = []string{"runsc", "--rootless=false", "--network=none", "do"}

func (b *bench) sandboxes() []sandbox {
	host := b.execSandbox("host (exec)")
	host.strace = true
	return []sandbox{
		host,
		b.execSandbox("bwrap --unshare-all", "bwrap", "--unshare-all", "--ro-bind", "/", "/"),
		b.execSandbox("gVisor `runsc do` (ptrace)", runscDo...),
		{name: "isolator microvm.Run (in process)", prepare: b.prepareInProcess, ours: true},
		{name: "isolator microvm.Run with a Pool (in process)", prepare: b.prepareInProcessPooled, ours: true, pooled: true},
		{name: "isolator `isoctl run`", prepare: b.prepareIsoctl, ours: true},
	}
}

// inProcessRunner runs one micro VM per call with the shared KVM system.
func (b *bench) inProcessRunner(cfg microvm.Config) runner {
	return func(ctx context.Context) (sample, error) {
		start := time.Now()
		res, err := microvm.Run(ctx, cfg)
		wall := time.Since(start)
		if err != nil {
			return sample{}, fmt.Errorf("microvm.Run %s: %w", strings.Join(cfg.Args, " "), err)
		}
		if res.ExitCode != 0 {
			return sample{}, fmt.Errorf("microvm.Run %s: exit status %d %s", strings.Join(cfg.Args, " "), res.ExitCode, res.Reason)
		}
		return sample{wall: wall, counted: true, exits: totalExits(res.Stats), syscalls: res.Stats.SyscallCount, vmWall: res.Stats.Wall, pooled: res.Stats.Pooled}, nil
	}
}

func (b *bench) vmConfig(im *image.Image, args []string, inputs []microvm.Input, stdout, stderr io.Writer) microvm.Config {
	return microvm.Config{
		KVM:     b.kvm,
		Image:   im,
		Program: args[0],
		Args:    args,
		Env:     []string{"PATH=/usr/bin:/bin", "HOME=/work"},
		Inputs:  inputs,
		Stdout:  stdout,
		Stderr:  stderr,
		Timeout: time.Minute,
	}
}

func (b *bench) prepareInProcess(ctx context.Context, w workload) (measure, error) {
	var stdout, stderr bytes.Buffer
	res, err := microvm.Run(ctx, b.vmConfig(b.bbImage, w.guestArgs, w.inputs, &stdout, &stderr))
	if err != nil {
		return nil, fmt.Errorf("microvm.Run %s: %w", strings.Join(w.guestArgs, " "), err)
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("microvm.Run %s: exit status %d %s: %s", strings.Join(w.guestArgs, " "), res.ExitCode, res.Reason, lastLine(stderr.String()))
	}
	if !strings.Contains(stdout.String(), w.want) {
		return nil, fmt.Errorf("microvm.Run %s printed %q, want %q", strings.Join(w.guestArgs, " "), lastLine(stdout.String()), w.want)
	}
	return repeated(b.inProcessRunner(b.vmConfig(b.bbImage, w.guestArgs, w.inputs, nil, nil))), nil
}

// prepareInProcessPooled is prepareInProcess with micro VMs made ahead of need by b.pool,
// as isolatord runs them.
func (b *bench) prepareInProcessPooled(ctx context.Context, w workload) (measure, error) {
	if _, err := b.prepareInProcess(ctx, w); err != nil {
		return nil, err
	}
	cfg := b.vmConfig(b.bbImage, w.guestArgs, w.inputs, nil, nil)
	cfg.Pool = b.pool
	return repeated(b.inProcessRunner(cfg)), nil
}

func (b *bench) prepareIsoctl(ctx context.Context, w workload) (measure, error) {
	argv := []string{b.isoctl, "run", "--image", b.bbImagePath}
	for _, in := range w.inputs {
		argv = append(argv, "--input", in.HostPath)
	}
	argv = append(argv, "--stats", "--")
	argv = append(argv, w.guestArgs...)
	if err := checkOutput(ctx, argv, w.want); err != nil {
		return nil, err
	}
	return b.timed(argv, true), nil
}

// spawn measures spawn-to-exit of every workload in every sandbox and prints the table.
func (b *bench) spawn(ctx context.Context) {
	b.printf("### Spawn to exit\n\n")
	b.printf("%s, median and p90 of %d runs after one warm-up run. Each sandbox's output is checked once before timing. For micro VMs, \"VM wall\" is the VM's own time from its statistics, from New to the program's end (creation included, teardown not; with a Pool the VM was created ahead of need and is destroyed in the background, as in isolatord), and the counts are medians of VM exits and system calls served by the VMM; for the host, the system calls are counted once with `strace -f -c` (execve included).\n\n", b.timing(), b.n)
	b.printf("| workload | sandbox | median | p90 | VM wall | VM exits | syscalls |\n")
	b.printf("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n")
	for _, w := range b.workloads() {
		for _, s := range b.sandboxes() {
			b.progress("spawn: %s in %s", w.name, s.name)
			m, err := s.prepare(ctx, w)
			var ser series
			if err == nil {
				ser, err = m(ctx, b.n)
			}
			if err != nil {
				b.printf("| %s | %s | cannot run: %s | | | | |\n", w.name, s.name, errCell(err))
				if s.ours {
					b.fail("spawn %s in %s: %v", w.name, s.name, err)
				}
				continue
			}
			vmWall, exits, calls := "", "", ""
			if ser.counted {
				vmWall, exits, calls = ms(ser.vmWall), fmt.Sprint(ser.exits), fmt.Sprint(ser.syscalls)
			}
			if s.strace {
				if n, err := straceCount(ctx, b.dir, w.hostArgs); err != nil {
					calls = "strace failed: " + errCell(err)
				} else {
					calls = fmt.Sprintf("%d (strace)", n)
				}
			}
			name := s.name
			if s.pooled {
				name += fmt.Sprintf(", %d of %d runs found a ready VM", ser.pooled, ser.n)
			}
			b.printf("| %s | %s | %s | %s | %s | %s | %s |\n", w.name, name, ms(ser.median), ms(ser.p90), vmWall, exits, calls)
		}
	}
	b.printf("\n")
}
