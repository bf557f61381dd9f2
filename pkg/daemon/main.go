package daemon

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/isolator-dev/isolator/pkg/interception"
	"github.com/isolator-dev/isolator/pkg/microvm"
	"github.com/isolator-dev/isolator/pkg/policy"
	"github.com/isolator-dev/isolator/policies"
)

// Defaults of the system service.
const (
	DefaultSocket    = "/run/isolator/isolator.sock"
	DefaultStateDir  = "/var/lib/isolator"
	DefaultPolicyDir = "/etc/isolator/policies.d"
	DefaultConfig    = "/etc/isolator/isolatord.yaml"
)

// failClosedVersion is the version of policy.FailClosed, in force until a policy loads.
var failClosedVersion = policy.FailClosed("").Version()

// FileConfig is the YAML configuration file. Unknown keys are errors.
type FileConfig struct {
	Socket          string        `yaml:"socket"`
	StateDir        string        `yaml:"state_dir"`
	PolicyDir       string        `yaml:"policy_dir"`
	ImageDir        string        `yaml:"image_dir"`
	LogLevel        string        `yaml:"log_level"`
	MaxConcurrent   int           `yaml:"max_concurrent"`
	Queue           int           `yaml:"queue"`
	QueueWait       time.Duration `yaml:"queue_wait"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	MaxInputBytes   int64         `yaml:"max_input_bytes"`
	PoolSize        int           `yaml:"pool_size"`    // micro VMs made ahead of need
	AdminGroup      string        `yaml:"admin_group"`  // members are administrators like root; default none
	BuildImages     *bool         `yaml:"build_images"` // build missing default images at start; default true

	// Transparent interception (docs/INTERCEPTION.md). Intercept enables it on every
	// regular user's XDG download directory; DownloadDirs lists the directories instead
	// and enables it too.
	Intercept      bool          `yaml:"intercept"`
	DownloadDirs   []string      `yaml:"download_dirs"`
	Gate           *bool         `yaml:"gate"`            // fanotify permission gate; default true
	GateDeadline   time.Duration `yaml:"gate_deadline"`   // answer to one open; default 1s
	GateFallback   string        `yaml:"gate_fallback"`   // deny (default) or trust
	GateAllow      []string      `yaml:"gate_allow"`      // executables whose opens are always allowed
	DownloadSettle time.Duration `yaml:"download_settle"` // quiet time before a download is decided; default 2s

	// DownloadTempIdle is the quiet time before an in-progress download (.part,
	// .crdownload, ...) is decided; default 5m.
	DownloadTempIdle time.Duration `yaml:"download_temp_idle"`
}

// LoadFileConfig reads a configuration file strictly: unknown keys and trailing documents
// are errors.
func LoadFileConfig(path string) (*FileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var fc FileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: only one YAML document is allowed", path)
	}
	return &fc, nil
}

// RunnerConfig is what the daemon hands its RunnerFactory.
type RunnerConfig struct {
	Images   *Images // the guest images
	PoolSize int     // micro VMs to keep made ahead of need (pool_size, --pool-size)
}

// RunnerFactory makes the micro VM runner. A runner that is also an io.Closer is closed at
// shutdown, after the last task.
type RunnerFactory func(cfg RunnerConfig) (Runner, error)

// Main is isolatord: it parses args, loads the configuration, and runs the daemon until
// SIGINT or SIGTERM; SIGHUP reloads the policy, reopens the audit log and rescans the
// users' download directories. It returns the process exit code.
func Main(args []string, stderr io.Writer, newRunner RunnerFactory) int {
	// Signals first, so that a signal during start-up is not lost.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	if err := run(ctx, args, stderr, hup, newRunner); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "isolatord: %v\n", err)
		return 1
	}
	return 0
}

type options struct {
	config          string
	socket          string
	stateDir        string
	policyDir       string
	imageDir        string
	logLevel        string
	maxConcurrent   int
	queue           int
	queueWait       time.Duration
	shutdownTimeout time.Duration
	maxInputBytes   int64
	poolSize        int
	adminGroup      string
	noBuildImages   bool

	intercept      bool
	watchDirs      stringList
	noGate         bool
	gateDeadline   time.Duration
	gateFallback   string
	gateAllow      stringList
	downloadSettle time.Duration

	downloadTempIdle time.Duration
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// interceptConfig returns the interception configuration, or nil when it is disabled.
// Without explicit directories it uses every regular user's XDG download directory.
func (o *options) interceptConfig(passwd string) (*InterceptConfig, error) {
	if !o.intercept && len(o.watchDirs) == 0 {
		return nil, nil
	}
	var fallback interception.Action
	switch o.gateFallback {
	case "", "deny":
		fallback = interception.ActionDeny
	case "trust":
		fallback = interception.ActionTrust
	default:
		return nil, fmt.Errorf("--gate-fallback: %q is neither deny nor trust", o.gateFallback)
	}
	var users string
	if len(o.watchDirs) == 0 {
		users = passwd
	}
	return &InterceptConfig{Dirs: o.watchDirs, Passwd: users, NoGate: o.noGate, GateDeadline: o.gateDeadline,
		GateFallback: fallback, AllowPrograms: o.gateAllow, Settle: o.downloadSettle, TempIdle: o.downloadTempIdle}, nil
}

func parseOptions(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("isolatord", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.config, "config", "", "YAML configuration file (default "+DefaultConfig+" when it exists)")
	fs.StringVar(&o.socket, "socket", DefaultSocket, "API socket path")
	fs.StringVar(&o.stateDir, "state-dir", DefaultStateDir, "state directory: audit log, task history, staging")
	fs.StringVar(&o.policyDir, "policy-dir", DefaultPolicyDir, "administrator's policy directory, layered over the shipped defaults")
	fs.StringVar(&o.imageDir, "image-dir", "", "guest image directory (default <state-dir>/images)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.IntVar(&o.maxConcurrent, "max-concurrent", 4, "micro VMs running at once")
	fs.IntVar(&o.queue, "queue", 32, "tasks waiting for a micro VM at most")
	fs.DurationVar(&o.queueWait, "queue-wait", 10*time.Second, "how long a request waits for queue space before it is refused")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long running tasks may finish at shutdown")
	fs.Int64Var(&o.maxInputBytes, "max-input-bytes", DefaultMaxInputBytes, "largest file, in bytes, accepted for isolation")
	fs.IntVar(&o.poolSize, "pool-size", microvm.DefaultPoolSize, "micro VMs kept made ahead of need, so that a task does not wait for its VM to be created")
	fs.StringVar(&o.adminGroup, "admin-group", "", "`GROUP` (name or gid) whose members are administrators like root: every user's tasks, the global status, /metrics")
	fs.BoolVar(&o.noBuildImages, "no-build-images", false, "do not build missing default guest images at start")
	fs.BoolVar(&o.intercept, "intercept", false, "intercept downloads and opens in every regular user's XDG download directory")
	fs.Var(&o.watchDirs, "watch-dir", "intercept downloads and opens in `DIR` (repeatable; enables interception)")
	fs.BoolVar(&o.noGate, "no-gate", false, "watch downloads only; do not gate opens with fanotify")
	fs.DurationVar(&o.gateDeadline, "gate-deadline", interception.DefaultDeadline, "answer each gated open within this time, with --gate-fallback if the policy is late")
	fs.StringVar(&o.gateFallback, "gate-fallback", "deny", "answer to opens the policy could not decide in time: deny or trust")
	fs.Var(&o.gateAllow, "gate-allow", "executable `PATH` whose opens the gate always allows (repeatable)")
	fs.DurationVar(&o.downloadSettle, "download-settle", interception.DefaultSettle, "how long a download must stay unwritten before it is decided")
	fs.DurationVar(&o.downloadTempIdle, "download-temp-idle", interception.DefaultTempIdle, "how long an in-progress download (.part, .crdownload, ...) must stay unwritten before it is decided")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	path := o.config
	if path == "" {
		if _, err := os.Stat(DefaultConfig); err == nil {
			path = DefaultConfig
		}
	}
	if path == "" {
		return o, nil
	}
	fc, err := LoadFileConfig(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	// Flags override the file.
	str := func(flagName string, dst *string, v string) {
		if v != "" && !set[flagName] {
			*dst = v
		}
	}
	str("socket", &o.socket, fc.Socket)
	str("state-dir", &o.stateDir, fc.StateDir)
	str("policy-dir", &o.policyDir, fc.PolicyDir)
	str("image-dir", &o.imageDir, fc.ImageDir)
	str("log-level", &o.logLevel, fc.LogLevel)
	str("admin-group", &o.adminGroup, fc.AdminGroup)
	if fc.MaxConcurrent > 0 && !set["max-concurrent"] {
		o.maxConcurrent = fc.MaxConcurrent
	}
	if fc.Queue > 0 && !set["queue"] {
		o.queue = fc.Queue
	}
	if fc.QueueWait > 0 && !set["queue-wait"] {
		o.queueWait = fc.QueueWait
	}
	if fc.ShutdownTimeout > 0 && !set["shutdown-timeout"] {
		o.shutdownTimeout = fc.ShutdownTimeout
	}
	if fc.MaxInputBytes > 0 && !set["max-input-bytes"] {
		o.maxInputBytes = fc.MaxInputBytes
	}
	if fc.PoolSize > 0 && !set["pool-size"] {
		o.poolSize = fc.PoolSize
	}
	if fc.BuildImages != nil && !*fc.BuildImages && !set["no-build-images"] {
		o.noBuildImages = true
	}
	if fc.Intercept && !set["intercept"] {
		o.intercept = true
	}
	if len(fc.DownloadDirs) > 0 && !set["watch-dir"] {
		o.watchDirs = fc.DownloadDirs
	}
	if fc.Gate != nil && !*fc.Gate && !set["no-gate"] {
		o.noGate = true
	}
	if fc.GateDeadline > 0 && !set["gate-deadline"] {
		o.gateDeadline = fc.GateDeadline
	}
	str("gate-fallback", &o.gateFallback, fc.GateFallback)
	if len(fc.GateAllow) > 0 && !set["gate-allow"] {
		o.gateAllow = fc.GateAllow
	}
	if fc.DownloadSettle > 0 && !set["download-settle"] {
		o.downloadSettle = fc.DownloadSettle
	}
	if fc.DownloadTempIdle > 0 && !set["download-temp-idle"] {
		o.downloadTempIdle = fc.DownloadTempIdle
	}
	return o, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(strings.ToUpper(s)))
	return l, err
}

func run(ctx context.Context, args []string, stderr io.Writer, hup <-chan os.Signal, newRunner RunnerFactory) error {
	o, err := parseOptions(args, stderr)
	if err != nil {
		return err
	}
	level, err := parseLevel(o.logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if o.imageDir == "" {
		o.imageDir = filepath.Join(o.stateDir, "images")
	}
	icfg, err := o.interceptConfig("/etc/passwd")
	if err != nil {
		return fmt.Errorf("interception: %w", err)
	}

	// Start-up, in dependency order; shutdown runs in reverse.
	var icpt atomic.Pointer[Interceptor] // set once interception runs
	store, err := policy.NewStore(policy.StoreConfig{
		Dir:      o.policyDir,
		Defaults: policies.FS(),
		OnReload: func(r policy.ReloadResult) {
			switch {
			case r.Err != nil && r.Version == failClosedVersion:
				log.Error("policy rejected; no valid policy is loaded, so every file is denied (fail-closed)", "err", r.Err)
			case r.Err != nil:
				log.Error("policy rejected; the last good policy stays in force", "version", r.Version, "err", r.Err)
			case r.Changed:
				log.Info("policy loaded", "version", r.Version, "took", r.Duration, "warnings", len(r.Warnings))
				if ic := icpt.Load(); ic != nil {
					ic.Invalidate() // cached verdicts are the old policy's
				}
			}
		},
	})
	if err != nil {
		return err
	}
	// The state directory first, so that nothing made inside it (the images) creates it
	// with other permissions.
	if err := os.MkdirAll(o.stateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	images := NewImages(o.imageDir)
	if !o.noBuildImages {
		if err := EnsureImages(o.imageDir, DefaultImages(), log); err != nil {
			log.Error("building default guest images", "err", err)
		}
	}
	if o.poolSize <= 0 {
		o.poolSize = microvm.DefaultPoolSize
	}
	runner, err := newRunner(RunnerConfig{Images: images, PoolSize: o.poolSize})
	if err != nil {
		return fmt.Errorf("micro VM runner: %w", err)
	}
	// The runner goes last: after the tasks, at the end or on a failed start.
	closeRunner := func() {}
	if c, ok := runner.(io.Closer); ok {
		closeRunner = sync.OnceFunc(func() {
			if err := c.Close(); err != nil {
				log.Error("closing the micro VM runner", "err", err)
			}
		})
	}
	defer closeRunner()
	d, err := New(Config{
		Socket: o.socket, StateDir: o.stateDir, MaxConcurrent: o.maxConcurrent, Queue: o.queue,
		QueueWait: o.queueWait, ShutdownTimeout: o.shutdownTimeout, MaxInputBytes: o.maxInputBytes,
		AdminGroup: o.adminGroup,
		Decider:    NewPolicyDecider(store), Runner: runner, Images: images.Names, Logger: log,
	})
	if err != nil {
		return err
	}
	l, err := Listen(o.socket)
	if err != nil {
		return err
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		if err := store.Watch(watchCtx); err != nil {
			log.Error("policy hot reload disabled", "err", err)
		}
	}()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				Notify(reloadingState())
				log.Info("SIGHUP: reloading policy, reopening audit log, forgetting cached images")
				images.Forget()
				if err := d.ReopenAudit(); err != nil {
					log.Error("SIGHUP: audit log not reopened", "err", err)
				}
				store.Reload() // OnReload logs the outcome
				if ic := icpt.Load(); ic != nil {
					ic.Rescan() // users' download directories made since
				}
				Notify("READY=1")
			}
		}
	}()
	// Interception last: from here on opens in the download directories wait for answers.
	icCtx, stopIC := context.WithCancel(ctx)
	defer stopIC()
	icDone := make(chan struct{})
	switch {
	case icfg == nil:
		close(icDone)
	default:
		ic, err := NewInterceptor(d, *icfg)
		if err != nil {
			stopWatch()
			<-watchDone
			l.Close()
			return err
		}
		icpt.Store(ic)
		go func() {
			defer close(icDone)
			if err := ic.Run(icCtx); err != nil {
				log.Error("interception", "err", err)
			}
		}()
	}
	log.Info("isolatord ready", "socket", o.socket, "state_dir", o.stateDir, "policy_dir", o.policyDir,
		"image_dir", o.imageDir, "policy", store.Current().Version(), "max_concurrent", o.maxConcurrent, "queue", o.queue, "pool_size", o.poolSize,
		"max_input_bytes", d.cfg.MaxInputBytes, "admins", d.admins())
	if err := Notify("READY=1\nSTATUS=serving on " + o.socket); err != nil {
		log.Warn("sd_notify", "err", err)
	}
	go func() {
		<-ctx.Done()
		Notify("STOPPING=1")
	}()
	// Shutdown in reverse: interception (no process is left waiting on the gate), then the
	// API and the tasks, then the policy watch.
	serveCtx, stopServe := context.WithCancel(context.Background())
	defer stopServe()
	go func() {
		select {
		case <-ctx.Done():
		case <-serveCtx.Done():
		}
		stopIC()
		<-icDone
		stopServe()
	}()
	serveErr := d.Serve(serveCtx, l)
	stopIC()
	<-icDone
	stopWatch()
	<-watchDone
	closeRunner()
	log.Info("isolatord stopped")
	return serveErr
}
