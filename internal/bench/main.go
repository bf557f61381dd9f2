// Command bench measures Isolator's micro VMs side by side with the host, bubblewrap and
// gVisor in one run, and prints the results as markdown on stdout (progress goes to stderr
// with -v). It is run by `make bench` as `go run ./internal/bench`, as root, from the
// repository root, after `make build` has put isoctl in ./bin.
//
// It measures:
//   - spawn-to-exit of `busybox true` and of `busybox sha256sum` over a 1 MiB file, on the
//     host, under `bwrap --unshare-all`, under `runsc do`, in an in-process micro VM and with
//     `isoctl run`, with the VM exits and system calls the micro VMs needed;
//   - the cost of one system call (getpid) on the host, under gVisor and in a micro VM;
//   - the VMM's memory per micro VM beyond the guest's own memory;
//   - how many micro VMs two workers create and destroy per second.
//
// On machines whose /dev/kvm is nested (kvm_pvm, see ../shared/PLATFORM.md) a VM exit costs
// about 100 times what it costs with VT-x, so the counts matter more than the times.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/isolator-dev/isolator/pkg/image"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
	"github.com/isolator-dev/isolator/pkg/microvm"
)

const (
	inputName   = "in-1MiB.bin"           // base name of the input file, also under /input in the guest
	guestGetpid = "/usr/local/bin/getpid" // guest path of the getpid program
)

// bench holds the configuration and the shared state of one benchmark run.
type bench struct {
	n       int           // runs per spawn-to-exit series
	calls   int           // getpid calls in the syscall-cost runs
	reps    int           // runs per syscall-cost series
	vms     int           // concurrent VMs in the memory measurement
	workers int           // concurrent workers in the rate measurement
	rateFor time.Duration // length of the rate measurement
	verbose bool

	busybox   string // host path of busybox, also its guest path
	isoctl    string // isoctl binary
	hyperfine string // hyperfine binary, or "" to time runs in this program

	dir         string       // temporary directory, removed at the end
	inputPath   string       // 1 MiB input file
	inputSum    string       // its SHA-256 in hex
	bbImagePath string       // guest image holding busybox
	bbImage     *image.Image // the same, open
	getpid      string       // host path of the getpid program
	getpidImage *image.Image // guest image holding it
	kvm         *kvmhv.System
	pool        *microvm.Pool // micro VMs made ahead of need, for the pooled rows; see withPool

	failures []string // Isolator measurements that could not run
}

func main() {
	b := &bench{}
	flag.IntVar(&b.n, "n", 20, "runs per spawn-to-exit measurement")
	flag.IntVar(&b.calls, "syscalls", 20000, "getpid calls (and time reads) per run in the system call and time read measurements")
	flag.IntVar(&b.reps, "reps", 3, "runs per point of the system call and time read measurements")
	flag.IntVar(&b.vms, "k", 16, "concurrent micro VMs in the memory measurement")
	flag.IntVar(&b.workers, "workers", 2, "concurrent workers in the VMs-per-second measurement")
	flag.DurationVar(&b.rateFor, "rate-duration", 5*time.Second, "length of the VMs-per-second measurement")
	flag.StringVar(&b.busybox, "busybox", "/usr/bin/busybox", "static busybox binary")
	flag.StringVar(&b.isoctl, "isoctl", "bin/isoctl", "isoctl binary (make build)")
	flag.BoolVar(&b.verbose, "v", false, "print progress on stderr")
	flag.Parse()
	if b.n < 1 || b.calls < 1 || b.reps < 1 || b.vms < 1 || b.workers < 1 {
		fmt.Fprintln(os.Stderr, "bench: -n, -syscalls, -reps, -k and -workers must be at least 1")
		os.Exit(2)
	}
	if err := b.run(context.Background()); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func (b *bench) run(ctx context.Context) error {
	start := time.Now()
	if err := b.setup(ctx); err != nil {
		b.cleanup()
		return err
	}
	defer b.cleanup()
	b.header(start)
	b.withPool(func() { b.spawn(ctx) })
	b.syscallCost(ctx)
	b.timeCost(ctx)
	b.memoryOverhead(ctx)
	b.withPool(func() { b.rate(ctx) })
	b.printf("Whole run: %.0f s; load average after it: %s.\n", time.Since(start).Seconds(), loadAverage())
	if len(b.failures) > 0 {
		return fmt.Errorf("%d Isolator measurements failed:\n\t%s", len(b.failures), strings.Join(b.failures, "\n\t"))
	}
	return nil
}

// fail records that an Isolator measurement could not run; the run then ends with an error
// after the whole report is printed.
func (b *bench) fail(format string, args ...any) {
	b.failures = append(b.failures, fmt.Sprintf(format, args...))
}

func (b *bench) setup(ctx context.Context) error {
	var err error
	if b.isoctl, err = filepath.Abs(b.isoctl); err != nil {
		return err
	}
	if p, err := exec.LookPath("hyperfine"); err == nil {
		b.hyperfine = p
	}
	if b.dir, err = os.MkdirTemp("", "isolator-bench-"); err != nil {
		return err
	}
	// A fixed pseudo-random input, so that its checksum is the same on every run.
	data := make([]byte, 1<<20)
	rng := rand.NewChaCha8([32]byte{'i', 's', 'o', 'l', 'a', 't', 'o', 'r'})
	rng.Read(data)
	sum := sha256.Sum256(data)
	b.inputSum = hex.EncodeToString(sum[:])
	b.inputPath = filepath.Join(b.dir, inputName)
	if err := os.WriteFile(b.inputPath, data, 0o644); err != nil {
		return err
	}

	b.progress("setup: building images")
	b.bbImagePath = filepath.Join(b.dir, "busybox.img")
	if _, err := image.BuildFile(b.bbImagePath, image.BuildConfig{Programs: []string{b.busybox}}); err != nil {
		return err
	}
	if b.bbImage, err = image.Open(b.bbImagePath); err != nil {
		return err
	}
	b.getpid = filepath.Join(b.dir, "getpid")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", b.getpid, "github.com/isolator-dev/isolator/internal/bench/getpid")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build getpid program: %w: %s", err, out)
	}
	// The guest sees scratch space at /tmp, so the program goes elsewhere in its image.
	if _, err := image.BuildFile(filepath.Join(b.dir, "getpid.img"), image.BuildConfig{
		Files: []image.FileSpec{{HostPath: b.getpid, GuestPath: guestGetpid}},
	}); err != nil {
		return err
	}
	if b.getpidImage, err = image.Open(filepath.Join(b.dir, "getpid.img")); err != nil {
		return err
	}
	if b.kvm, err = kvmhv.Open(); err != nil {
		return err
	}

	return nil
}

// withPool runs fn with b.pool open. The pool is closed before the memory measurement,
// whose accounting would count its ready VMs.
func (b *bench) withPool(fn func()) {
	p, err := microvm.NewPool(microvm.PoolConfig{KVM: b.kvm})
	if err != nil {
		b.fail("micro VM pool: %v", err)
		fn()
		return
	}
	b.pool = p
	defer func() {
		p.Close()
		b.pool = nil
	}()
	fn()
}

func (b *bench) cleanup() {
	if b.kvm != nil {
		b.kvm.Close()
	}
	if b.bbImage != nil {
		b.bbImage.Close()
	}
	if b.getpidImage != nil {
		b.getpidImage.Close()
	}
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
}

// header describes the machine and the versions of the sandboxes compared.
func (b *bench) header(start time.Time) {
	b.printf("Run %s UTC: `%s`\n\n", start.UTC().Format("2006-01-02 15:04"), strings.Join(os.Args, " "))
	b.printf("- machine: %d CPUs, %s, %s, /dev/kvm from %s, guest `syscall` %s\n", runtime.NumCPU(), firstLine(readFile("/proc/sys/kernel/osrelease")), runtime.Version(), kvmModule(), b.kvm.SyscallMode())
	b.printf("- load average before the run: %s\n", loadAverage())
	b.printf("- sandboxes: %s; %s; busybox %s\n", commandVersion("bwrap", "--version"), commandVersion("runsc", "--version"), firstWord(commandVersion(b.busybox, "--help"), 1))
	b.printf("- gVisor platforms: ptrace (the default) is used below; %s\n\n", b.probeRunsc())
}

// probeRunsc tries gVisor's other platforms once with `busybox true` and says why they
// are not in the tables.
func (b *bench) probeRunsc() string {
	var notes []string
	for _, p := range []struct {
		name, why string
		timeout   time.Duration
	}{
		{"systrap", "", 10 * time.Second},
		{"kvm", "the kvm platform runs gVisor's Sentry in guest ring 0, which kvm_pvm emulates instruction by instruction (PLATFORM.md)", 10 * time.Second},
	} {
		b.progress("probe: runsc --platform=%s", p.name)
		ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
		argv := append([]string{"runsc", "--rootless=false", "--network=none", "--platform=" + p.name, "do"}, b.busybox, "true")
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		// runsc starts a sandbox and a gofer process: on timeout, stop the whole group
		// gently so that runsc tears its sandbox down, then make sure none is left.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.CombinedOutput()
		timedOut := ctx.Err() != nil
		cancel()
		if timedOut && cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		switch {
		case timedOut:
			notes = append(notes, fmt.Sprintf("`--platform=%s`: `busybox true` did not finish within %v (%s)", p.name, p.timeout, p.why))
		case err != nil:
			notes = append(notes, fmt.Sprintf("`--platform=%s` cannot run: %s", p.name, lastLine(string(out))))
		default:
			notes = append(notes, fmt.Sprintf("`--platform=%s` runs `busybox true` but is not measured", p.name))
		}
	}
	return strings.Join(notes, "; ")
}

// loadAverage returns the 1, 5 and 15 minute load averages of the machine.
func loadAverage() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func (b *bench) timing() string {
	if b.hyperfine != "" {
		return "timed with hyperfine (--shell=none) for host commands, in process for microvm.Run"
	}
	return "hyperfine is not installed: timed by this program (fork/exec to exit)"
}

func kvmModule() string {
	for _, m := range []string{"kvm_pvm", "kvm_intel", "kvm_amd"} {
		if _, err := os.Stat("/sys/module/" + m); err == nil {
			return m
		}
	}
	return "an unknown module"
}

func readFile(name string) string {
	data, _ := os.ReadFile(name)
	return string(data)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(line)
}

// firstWord returns word i (from 0) of s, or s.
func firstWord(s string, i int) string {
	f := strings.Fields(s)
	if i < len(f) {
		return f[i]
	}
	return s
}

func commandVersion(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return name + " (not found: " + err.Error() + ")"
	}
	return firstLine(string(out))
}

// printf writes to the report on stdout.
func (b *bench) printf(format string, args ...any) {
	fmt.Printf(format, args...)
}

// progress reports a step on stderr with -v.
func (b *bench) progress(format string, args ...any) {
	if b.verbose {
		fmt.Fprintf(os.Stderr, "bench: %s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}
}
