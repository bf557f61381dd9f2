package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

func newRunCmd() *cobra.Command {
	o := &runOptions{memory: microvm.DefaultMemory}
	cmd := &cobra.Command{
		Use:   "run --image FILE [flags] -- GUESTPATH [ARGS...]",
		Short: "Run a program in a fresh micro VM (no daemon needed)",
		Long: `Run runs one Linux program from a guest image in a throwaway micro VM, streaming
its stdout and stderr. Inputs appear read-only as /input/<basename>; the program starts
in /work; files it writes under /output are copied into --output-dir after it exits.
The exit code is the program's (128+N when it was killed by signal N, 124 on timeout).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, args) },
	}
	f := cmd.Flags()
	f.StringVar(&o.image, "image", "", "guest image file (see isoctl image build)")
	f.StringArrayVar(&o.inputs, "input", nil, "host file to expose as /input/<basename> (repeatable)")
	f.StringVar(&o.outputDir, "output-dir", "", "directory to receive the files written under /output")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "wall-clock limit (0: none)")
	f.Var(&o.memory, "memory", "guest memory limit, e.g. 256MiB")
	f.BoolVar(&o.stats, "stats", false, "print the micro VM statistics as JSON on stderr")
	f.StringArrayVar(&o.env, "env", nil, "environment variable KEY=VALUE for the program (repeatable)")
	cmd.MarkFlagRequired("image")
	return cmd
}

func (o *runOptions) run(cmd *cobra.Command, args []string) error {
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
		return fmt.Errorf("open image: %w", imErr)
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
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, unix.SIGTERM)
	defer stop()
	res, err := microvm.Run(ctx, cfg)
	if err != nil {
		return err
	}
	stderr := cmd.ErrOrStderr()
	if o.outputDir != "" {
		d, err := deliverOutputs(o.outputDir, res.Outputs)
		if err != nil {
			return fmt.Errorf("write outputs: %w", err)
		}
		for _, w := range d.Written {
			fmt.Fprintf(stderr, "isoctl: output %s (%d bytes)\n", w.Path, w.Size)
		}
		for _, r := range d.Refused {
			fmt.Fprintf(stderr, "isoctl: output refused: %s: %s\n", r.Name, r.Reason)
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
		return &ExitError{Code: 124}
	case res.Killed:
		fmt.Fprintf(stderr, "isoctl: %s\n", res.Reason)
		if errors.Is(ctx.Err(), context.Canceled) {
			return &ExitError{Code: 130}
		}
	case res.Signal != 0:
		fmt.Fprintf(stderr, "isoctl: program killed by %s\n", res.Reason)
	}
	if res.ExitCode != 0 {
		return &ExitError{Code: res.ExitCode}
	}
	return nil
}

// deliverOutputs writes the guest's outputs into dir, which must not exist or be empty;
// nothing is overwritten and no symlink is followed (see broker.Deliver).
func deliverOutputs(dir string, outs []microvm.Output) (*broker.Delivery, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := unix.Rmdir(abs); err != nil && !errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("%s must be a new or empty directory: %w", dir, err)
	}
	files := make([]api.File, len(outs))
	for i, o := range outs {
		files[i] = api.File{Name: o.Name, Mode: o.Mode, Data: o.Data}
	}
	return broker.Deliver(broker.DeliverConfig{Dir: filepath.Dir(abs), TaskID: filepath.Base(abs), Handler: "isoctl-run"}, files)
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
