package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/broker"
	"github.com/isolator-dev/isolator/pkg/image"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
	"github.com/isolator-dev/isolator/pkg/microvm"
)

type runOptions struct {
	image     string
	inputs    []string
	outputDir string
	timeout   time.Duration
	memory    sizeFlag
	stats     bool
	env       []string
}

// Exit codes of isoctl run besides the program's own status.
const (
	exitTimeout     = 124 // the wall-clock or CPU limit stopped the program
	exitOutputsLost = 125 // the program ran, but its outputs could not be written to --output-dir
)

func newRunCmd() *cobra.Command {
	o := &runOptions{memory: microvm.DefaultMemory}
	cmd := &cobra.Command{
		Use:   "run --image FILE [flags] [--] GUESTPATH [ARGS...]",
		Short: "Run a program in a fresh micro VM (no daemon needed)",
		Long: `Run runs one Linux program from a guest image in a throwaway micro VM, streaming
its stdout and stderr. Inputs appear read-only as /input/<basename>; the program starts
in /work; files it writes under /output are copied into --output-dir after it exits.
--output-dir must not exist (it is made, mode 0700) or be an empty directory (used as it
is); it is checked before the program runs. Everything after GUESTPATH is the program's:
isoctl parses no flag there, so "--" before GUESTPATH is optional.

Exit status: the program's own; 128+N when it was killed by signal N (139 for a fault
that Linux would answer with SIGSEGV); 124 when --timeout or the CPU limit stopped it;
130 or 143 when isoctl got SIGINT or SIGTERM and stopped it; 125 when the program ran
but its outputs could not be written into --output-dir (isoctl then prints the program's
status on stderr); 1 when isoctl failed before the program ran.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, args) },
	}
	f := cmd.Flags()
	// Flags end at GUESTPATH: what follows is the program's command line.
	f.SetInterspersed(false)
	f.StringVar(&o.image, "image", "", "guest image file (see isoctl image build)")
	f.StringArrayVar(&o.inputs, "input", nil, "host file to expose as /input/<basename> (repeatable)")
	f.StringVar(&o.outputDir, "output-dir", "", "new or empty directory to receive the files written under /output")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "wall-clock limit; 0 means none")
	f.Var(&o.memory, "memory", fmt.Sprintf("guest memory limit, %d MiB to %d GiB, e.g. 256MiB", microvm.MinMemory>>20, microvm.MaxMemory>>30))
	f.BoolVar(&o.stats, "stats", false, "print the micro VM statistics as JSON on stderr")
	f.StringArrayVar(&o.env, "env", nil, "environment variable KEY=VALUE for the program (repeatable)")
	cmd.MarkFlagRequired("image")
	return cmd
}

// signalCause is why the run was stopped when isoctl got a signal.
type signalCause struct{ sig unix.Signal }

func (c *signalCause) Error() string { return "isoctl received " + unix.SignalName(c.sig) }

// check refuses flag values isoctl cannot honour, before anything is set up.
func (o *runOptions) check() error {
	if o.timeout < 0 {
		return fmt.Errorf("--timeout %v is negative: give a duration, or 0 for no limit", o.timeout)
	}
	if m := int64(o.memory); m < microvm.MinMemory || m > microvm.MaxMemory {
		return fmt.Errorf("--memory %s is out of range: a micro VM takes %d MiB to %d GiB", formatSize(m), microvm.MinMemory>>20, microvm.MaxMemory>>30)
	}
	return nil
}

func (o *runOptions) run(cmd *cobra.Command, args []string) error {
	if err := o.check(); err != nil {
		return err
	}
	// SIGINT and SIGTERM stop the program, and isoctl exits 128+N as if killed by them.
	ctx, cancel := context.WithCancelCause(cmd.Context())
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			cancel(&signalCause{s.(unix.Signal)})
		case <-ctx.Done():
		}
	}()

	var outDir *outputDir
	ran := false
	if o.outputDir != "" {
		var err error
		if outDir, err = checkOutputDir(o.outputDir); err != nil {
			return err
		}
		defer func() {
			if !ran && outDir.created {
				os.Remove(outDir.path) // made for a program that never ran
			}
		}()
	}
	// Opening /dev/kvm probes the host with a VM of its own; it overlaps with reading and
	// checking the image.
	type opened struct {
		sys *kvmhv.System
		err error
	}
	kvm := make(chan opened, 1)
	go func() {
		sys, err := kvmhv.Open()
		kvm <- opened{sys, err}
	}()
	im, imErr := image.Open(o.image)
	k := <-kvm
	if k.err == nil {
		defer k.sys.Close()
	}
	if imErr != nil {
		return imErr // "open image ...: ..." already
	}
	defer im.Close()
	if k.err != nil {
		return k.err
	}
	cfg := microvm.Config{
		KVM:     k.sys,
		Image:   im,
		Program: args[0],
		Args:    args,
		Env:     append([]string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/work", "LANG=C.UTF-8"}, o.env...),
		Stdin:   cmd.InOrStdin(),
		Stdout:  cmd.OutOrStdout(),
		Stderr:  cmd.ErrOrStderr(),
		Memory:  int64(o.memory),
		Timeout: o.timeout,
	}
	if cmd.InOrStdin() == os.Stdin {
		// Reading the terminal would block a guest that never asked for input: only pass
		// stdin through when it is a pipe or a file.
		if st, err := os.Stdin.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			cfg.Stdin = nil
		}
	}
	seen := map[string]bool{}
	for _, in := range o.inputs {
		name := filepath.Base(in)
		if seen[name] {
			return fmt.Errorf("two inputs named %q", name)
		}
		seen[name] = true
		cfg.Inputs = append(cfg.Inputs, microvm.Input{Name: name, HostPath: in})
	}
	res, err := microvm.Run(ctx, cfg)
	if err != nil {
		return err
	}
	ran = true

	stderr := cmd.ErrOrStderr()
	code, status := exitCode(res, context.Cause(ctx))
	outputsLost := false
	if outDir != nil {
		d, err := outDir.deliver(res.Outputs)
		if err != nil {
			fmt.Fprintf(stderr, "isoctl: outputs not written to %s: %v\n", o.outputDir, err)
			outputsLost = true
		} else {
			for _, w := range d.Written {
				fmt.Fprintf(stderr, "isoctl: output %s (%d bytes)\n", w.Path, w.Size)
			}
			for _, r := range d.Refused {
				fmt.Fprintf(stderr, "isoctl: output refused: %s: %s\n", r.Name, r.Reason)
			}
		}
	}
	for _, r := range res.Rejected {
		fmt.Fprintf(stderr, "isoctl: output refused: %s: %s\n", r.Name, r.Reason)
	}
	if o.stats {
		b, _ := json.Marshal(res.Stats)
		fmt.Fprintf(stderr, "%s\n", b)
	}
	switch {
	case res.TimedOut:
		fmt.Fprintf(stderr, "isoctl: %s: micro VM stopped\n", res.Reason)
	case res.Killed:
		fmt.Fprintf(stderr, "isoctl: %s\n", res.Reason)
	case res.Signal != 0:
		fmt.Fprintf(stderr, "isoctl: program killed by %s\n", res.Reason)
	}
	if outputsLost {
		fmt.Fprintf(stderr, "isoctl: the program %s (exit status %d); exiting with %d because its outputs were lost\n",
			status, code, exitOutputsLost)
		return &ExitError{Code: exitOutputsLost}
	}
	if code != 0 {
		return &ExitError{Code: code}
	}
	return nil
}

// exitCode is isoctl run's exit code for res, and how the program ended in words; cause is
// the run's context cause.
func exitCode(res *microvm.Result, cause error) (int, string) {
	var sc *signalCause
	switch {
	case res.TimedOut:
		return exitTimeout, "was stopped at its time limit"
	case res.Killed && errors.As(cause, &sc):
		return 128 + int(sc.sig), "was stopped because " + sc.Error()
	case res.Signal != 0:
		return res.ExitCode, "was killed by " + unix.SignalName(unix.Signal(res.Signal))
	}
	return res.ExitCode, "exited"
}

// outputDir is a checked --output-dir.
type outputDir struct {
	path    string // absolute, with symlinks resolved when it exists
	created bool   // isoctl made it
}

// checkOutputDir checks, before the program runs, that dir can take its outputs: it must
// not exist, and is then made (parents 0700, as Deliver makes them, and dir 0700), or be
// an empty directory, which is used as it is.
func checkOutputDir(dir string) (*outputDir, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("--output-dir %s: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, lerr := os.Lstat(abs); lerr == nil {
			return nil, fmt.Errorf("--output-dir %s is a symlink to nothing", dir)
		}
		if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
			return nil, fmt.Errorf("--output-dir %s: %w", dir, err)
		}
		if err := os.Mkdir(abs, 0o700); err != nil {
			return nil, fmt.Errorf("--output-dir %s: %w", dir, err)
		}
		return &outputDir{path: abs, created: true}, nil
	case err != nil:
		return nil, fmt.Errorf("--output-dir %s: %w", dir, err)
	case !fi.IsDir():
		return nil, fmt.Errorf("--output-dir %s is not a directory", dir)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("--output-dir %s: %w", dir, err)
	}
	ents, err := os.ReadDir(real)
	if err != nil {
		return nil, fmt.Errorf("--output-dir %s: %w", dir, err)
	}
	if len(ents) > 0 {
		return nil, fmt.Errorf("--output-dir %s is not empty (it holds %s): isoctl run writes only into a new or an empty directory", dir, ents[0].Name())
	}
	return &outputDir{path: real}, nil
}

// deliver writes the guest's outputs into the directory; nothing is overwritten and no
// symlink is followed (see broker.Deliver).
func (d *outputDir) deliver(outs []microvm.Output) (*broker.Delivery, error) {
	files := make([]api.File, len(outs))
	for i, o := range outs {
		files[i] = api.File{Name: o.Name, Mode: o.Mode, Data: o.Data}
	}
	return broker.Deliver(broker.DeliverConfig{Dir: filepath.Dir(d.path), TaskID: filepath.Base(d.path), Handler: "isoctl-run", Existing: true}, files)
}

// sizeFlag is a byte count flag that takes suffixes: 256MiB, 1GiB, 512K, 100M.
type sizeFlag int64

func (s *sizeFlag) String() string { return fmt.Sprintf("%d", int64(*s)) }
func (s *sizeFlag) Type() string   { return "size" }
func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = sizeFlag(n)
	return nil
}

// formatSize writes a byte count as parseSize reads it, in the largest unit that divides it.
func formatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return fmt.Sprintf("%d%s", n/u.mult, u.suffix)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// parseSize parses a byte count with an optional binary suffix (K, KiB, M, MiB, G, GiB).
func parseSize(v string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}}
	mult := int64(1)
	num := v
	for _, u := range units {
		if len(v) > len(u.suffix) && strings.EqualFold(v[len(v)-len(u.suffix):], u.suffix) {
			num, mult = v[:len(v)-len(u.suffix)], u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q: want a number of bytes with an optional K, M or G (KiB, MiB, GiB) suffix", v)
	}
	return n * mult, nil
}
