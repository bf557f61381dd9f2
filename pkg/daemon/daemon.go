// Package daemon is isolatord: it decides with the trust policy what to do with the files
// users open, runs the isolated ones in micro VMs as tasks, and serves the local API
// (HTTP over a unix socket, caller identity from SO_PEERCRED) that isoctl speaks.
//
// A Daemon is made by New from a Config and runs until its context ends with Serve. It
// depends on a Decider (the policy) and a Runner (the micro VM) through small interfaces, so
// the policy engine and the VM can be replaced in tests of the queue and the API; Main wires
// the real ones.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/broker"
)

// Version is the daemon's version string.
const Version = "0.1.0"

// Handler says how to isolate a file: which guest image and program, with which limits.
type Handler struct {
	Name           string
	Image          string // guest image name, looked up as <image-dir>/<Image>.img
	Program        string
	Args           []string // may contain {input} (the guest path of the file) and {output}
	Env            []string
	Returns        []string // what comes back: "files", "stdout", "stderr"
	Memory         int64
	Timeout        time.Duration
	MaxOutputBytes int64
	MaxOutputFiles int
}

// DecideRequest is what the daemon asks the policy about one file.
type DecideRequest struct {
	Path string // resolved absolute path of File; what path and name rules see
	// File is the file itself, open: for isoctl open the descriptor the daemon opened with
	// the caller's identity, for interception the one the kernel or the Watcher holds.
	// Every content fact (size, type, hash) must be read from it, never from Path, which
	// may name another file by the time the policy looks.
	File *os.File
	// Origin and Referrer are the download origin recorded on File (ReadOriginFile), read
	// by the daemon with the requester's identity.
	Origin, Referrer string
	// Release is the daemon's record of a release of File (by its owner or an
	// administrator), or nil. It applies only while File's content has its SHA256.
	Release *Release
	User    string
	UID     int
	Groups  []string
	Home    string
	Opener  string
}

// Decision is the policy's answer.
type Decision struct {
	api.Decision
	Handler *Handler // set when Action is isolate
	// SHA256 is the hash of the content the policy decided on, when it read it; the daemon
	// checks that what it stages or audits has this hash.
	SHA256 string
}

// Decider is the trust policy as the daemon sees it.
type Decider interface {
	Decide(ctx context.Context, req *DecideRequest) (*Decision, error)
	// Version identifies the policy in force, for status and audit records.
	Version() string
}

// Reloader is implemented by Deciders that can reread their policy on SIGHUP.
type Reloader interface {
	Reload() error
}

// PolicyStatus is implemented by Deciders that can say why their policy did not load; the
// daemon shows it in Status.PolicyError.
type PolicyStatus interface {
	// PolicyError is why the latest load attempt failed ("" when it succeeded). With no
	// valid policy loaded since the start, every file is denied (fail-closed).
	PolicyError() string
}

// Job is one handler run.
type Job struct {
	Task      string
	Handler   Handler
	Input     string // host path of a private snapshot of the file, readable by the daemon
	InputName string // base name the guest sees under /input
	Stdout    io.Writer
	Stderr    io.Writer
	// Started is called once the micro VM exists and the program is about to run; the
	// daemon measures spawn latency with it. Runners that cannot tell may not call it.
	Started func()
}

// RunResult is the outcome of a Job.
type RunResult struct {
	ExitCode int
	Signal   int
	TimedOut bool
	Killed   bool
	Reason   string
	Outputs  []api.File
	Rejected []api.Rejected
	Stats    api.VMStats
	// MaxOutputFiles and MaxOutputBytes are the bounds the VM applied to Outputs: the
	// handler's, or the VM's defaults where the handler sets none. 0: the handler's.
	MaxOutputFiles int
	MaxOutputBytes int64
}

// Runner runs jobs in micro VMs. Run returns when the guest ended or ctx was cancelled
// (the VM is then killed and Result.Killed set); an error means the VM could not run.
type Runner interface {
	Run(ctx context.Context, job *Job) (*RunResult, error)
}

// Config configures a Daemon.
type Config struct {
	Socket          string        // API socket path
	StateDir        string        // audit log, task history, staging; created 0700
	MaxConcurrent   int           // micro VMs at once; default 4
	Queue           int           // tasks waiting for a slot at most; default 32
	QueueWait       time.Duration // how long an open waits for queue space before it is refused; default 10s
	ShutdownTimeout time.Duration // how long running tasks may finish at shutdown; default 10s
	MaxInputBytes   int64         // largest file accepted for isolation; default DefaultMaxInputBytes (1 GiB)
	// AdminGroup names the group (or gid) whose members are administrators like root: they
	// see and control every user's tasks, the global status and /metrics. "" for none.
	// It is resolved once, by New.
	AdminGroup string
	Decider    Decider         // required
	Runner     Runner          // required
	Images     func() []string // names of the available guest images, for status; optional
	Logger     *slog.Logger    // default slog.Default()
}

// Daemon is a running isolatord.
type Daemon struct {
	cfg        Config
	adminGID   int    // -1: no admin group
	adminGroup string // its name
	log        *slog.Logger
	audit      *Audit
	store      *store
	releases   *releases
	icpt       atomic.Pointer[Interceptor] // the running interception, told about releases
	metrics    *metrics
	started    time.Time

	runSlots   chan struct{}  // a token per running VM
	queueSlots chan struct{}  // a token per queued task
	stopping   chan struct{}  // closed, with mu held, when shutdown starts
	wg         sync.WaitGroup // task goroutines; Add only with mu held and closed false

	mu          sync.Mutex
	tasks       map[string]*task         // guarded by mu
	peakRunning int                      // guarded by mu
	peakQueued  int                      // guarded by mu
	running     int                      // guarded by mu
	queued      int                      // guarded by mu
	subscribers map[chan api.Event]*Peer // guarded by mu; /v1/events listeners
	busyLogged  time.Time                // guarded by mu; when a busy refusal was last logged
	busyQuiet   int                      // guarded by mu; busy refusals not logged since
	// closed is set by shutdown before it cancels the queued tasks and waits for the task
	// goroutines; enqueue checks it together with wg.Add, so that no task starts after
	// shutdown has looked.
	closed bool // guarded by mu
}

// task is the daemon's record of one task.
type task struct {
	created time.Time
	cancel  context.CancelCauseFunc // nil once finished
	stream  *broker.Stream          // guarded by Daemon.mu; nil once the logs are saved
	done    chan struct{}           // closed when the task ends; nil for history

	// t is guarded by Daemon.mu; copies are handed out.
	t api.Task
	// unsaved, guarded by Daemon.mu, are the task's results when the contents of some of
	// their files could not be saved: those files keep their Data, in memory only, and are
	// streamed from it (see sendFiles).
	unsaved *api.Results
}

// DefaultMaxInputBytes is the default of Config.MaxInputBytes: 1 GiB.
const DefaultMaxInputBytes = 1 << 30

// Errors the daemon returns.
var (
	ErrBusy         = errors.New("isolatord is busy")
	ErrTooLarge     = errors.New("file too large to isolate")
	ErrShuttingDown = errors.New("isolatord is shutting down")
	ErrNotFound     = errors.New("no such task")
	// ErrChanged reports that a file changed between its decision and the copy or hash the
	// daemon took of it (409 Conflict over the API).
	ErrChanged = errors.New("file changed")
	// ErrNotFinished is wrapped by the error for the results of a task that is queued or
	// running (409 Conflict over the API).
	ErrNotFinished = errors.New("task has not finished")
	// ErrFinished is wrapped by the error for a kill of a task that has already ended
	// (409 Conflict over the API).
	ErrFinished = errors.New("task already finished")
)

// notFinishedError says that task id, in state, has no results yet.
type notFinishedError struct {
	id    string
	state api.State
}

func (e *notFinishedError) Error() string { return fmt.Sprintf("task %s is still %s", e.id, e.state) }

func (e *notFinishedError) Unwrap() error { return ErrNotFinished }

// finishedError says that task id, to be killed, had already ended in state.
type finishedError struct {
	id    string
	state api.State
}

func (e *finishedError) Error() string {
	return fmt.Sprintf("task %s already finished (%s); nothing was killed", e.id, e.state)
}

func (e *finishedError) Unwrap() error { return ErrFinished }

// New prepares a daemon: the state directory, the audit log and the task history. Tasks
// that were queued or running when a previous daemon died are marked killed.
func New(cfg Config) (*Daemon, error) {
	if cfg.Decider == nil || cfg.Runner == nil {
		return nil, errors.New("daemon: Config.Decider and Config.Runner are required")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("daemon: Config.StateDir is required")
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 4
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 32
	}
	if cfg.QueueWait <= 0 {
		cfg.QueueWait = 10 * time.Second
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	if cfg.MaxInputBytes <= 0 {
		cfg.MaxInputBytes = DefaultMaxInputBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	adminGID, adminGroup := -1, ""
	if cfg.AdminGroup != "" {
		g, err := lookupGroup(cfg.AdminGroup)
		if err != nil {
			return nil, fmt.Errorf("daemon: admin group: %w", err)
		}
		adminGID, _ = strconv.Atoi(g.Gid)
		adminGroup = g.Name
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("daemon: state dir: %w", err)
	}
	st, err := newStore(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "staging"), 0o700); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	au, err := OpenAudit(filepath.Join(cfg.StateDir, "audit.log"))
	if err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	rel, errs := openReleases(filepath.Join(cfg.StateDir, "releases.jsonl"))
	for _, err := range errs {
		cfg.Logger.Warn("skipping unreadable releases", "err", err)
	}
	d := &Daemon{
		cfg:         cfg,
		adminGID:    adminGID,
		adminGroup:  adminGroup,
		log:         cfg.Logger,
		audit:       au,
		store:       st,
		releases:    rel,
		metrics:     newMetrics(),
		started:     time.Now(),
		runSlots:    make(chan struct{}, cfg.MaxConcurrent),
		queueSlots:  make(chan struct{}, cfg.Queue),
		stopping:    make(chan struct{}),
		tasks:       make(map[string]*task),
		subscribers: make(map[chan api.Event]*Peer),
	}
	d.loadHistory()
	return d, nil
}

// lookupGroup resolves a group name, or a gid given as digits.
func lookupGroup(name string) (*user.Group, error) {
	if _, err := strconv.Atoi(name); err == nil {
		if g, err := user.LookupGroupId(name); err == nil {
			return g, nil
		}
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return nil, fmt.Errorf("%q: no such group", name)
	}
	return g, nil
}

// heartbeatInterval is how often a serving daemon touches <state_dir>/heartbeat, whose
// modification time then says, at the next start, when the previous daemon was last alive.
const heartbeatInterval = 5 * time.Second

// heartbeat sets the modification time of <state_dir>/heartbeat to now.
func (d *Daemon) heartbeat() {
	path := filepath.Join(d.cfg.StateDir, "heartbeat")
	now := time.Now()
	err := os.Chtimes(path, now, now)
	if errors.Is(err, fs.ErrNotExist) {
		err = os.WriteFile(path, nil, 0o600)
	}
	if err != nil {
		d.log.Warn("heartbeat not recorded", "err", err)
	}
}

func (d *Daemon) loadHistory() {
	tasks, errs := d.store.loadAll()
	for _, err := range errs {
		d.log.Warn("skipping unreadable task history", "err", err)
	}
	// Tasks the previous daemon left unfinished ended, at the latest, when it was last seen
	// alive: their time does not include the downtime.
	now := time.Now()
	lastAlive := now
	if fi, err := os.Stat(filepath.Join(d.cfg.StateDir, "heartbeat")); err == nil && fi.ModTime().Before(now) {
		lastAlive = fi.ModTime()
	}
	d.heartbeat()
	var killed []*api.Task
	for _, t := range tasks {
		if !t.State.Final() {
			t.State = api.StateKilled
			t.Reason = "daemon restarted"
			if t.Finished.IsZero() {
				t.Finished = lastAlive
				if t.Finished.Before(t.Started) {
					t.Finished = t.Started
				}
				if t.Finished.Before(t.Created) {
					t.Finished = t.Created
				}
			}
			killed = append(killed, t)
			if err := d.store.saveTask(t); err != nil {
				d.log.Error("cannot update task history", "task", t.ID, "err", err)
			}
		}
		d.tasks[t.ID] = &task{created: t.Created, t: *t}
	}
	// The start itself, naming the tasks the previous run left unfinished, then each of
	// them as killed.
	rec := &AuditRecord{Event: "restart", UID: os.Geteuid(), PolicyVersion: d.cfg.Decider.Version(),
		Reason: fmt.Sprintf("isolatord %s started (pid %d); %d task(s) of the previous run interrupted", Version, os.Getpid(), len(killed))}
	for _, t := range killed {
		rec.Tasks = append(rec.Tasks, t.ID)
	}
	d.writeAudit(rec)
	for _, t := range killed {
		d.auditTask(t)
	}
	// Staged inputs of tasks that will never run.
	os.RemoveAll(filepath.Join(d.cfg.StateDir, "staging"))
	os.MkdirAll(filepath.Join(d.cfg.StateDir, "staging"), 0o700)
	if len(tasks) > 0 {
		d.log.Info("task history loaded", "tasks", len(tasks), "killed_by_restart", len(killed))
	}
}

// ReopenAudit closes the audit log and opens it again at its path (after log rotation).
func (d *Daemon) ReopenAudit() error { return d.audit.Reopen() }

// Reload reopens the audit log and rereads the policy when the Decider can.
func (d *Daemon) Reload() error {
	var errs []error
	if err := d.audit.Reopen(); err != nil {
		errs = append(errs, err)
	}
	if r, ok := d.cfg.Decider.(Reloader); ok {
		if err := r.Reload(); err != nil {
			errs = append(errs, fmt.Errorf("policy: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Status returns the daemon's state as p sees it: an administrator gets the global counts,
// anyone else only the counts of their own tasks (and no peaks).
func (d *Daemon) Status(p *Peer) api.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := api.Status{
		Version:       Version,
		PID:           os.Getpid(),
		Started:       d.started,
		PolicyVersion: d.cfg.Decider.Version(),
		MaxConcurrent: d.cfg.MaxConcurrent,
		QueueLimit:    d.cfg.Queue,
		You:           p.UID,
		Admin:         p.IsAdmin(),
	}
	if st.Admin {
		st.ActiveVMs, st.Queued = d.running, d.queued
		st.PeakRunning, st.PeakQueued = d.peakRunning, d.peakQueued
	}
	for _, t := range d.tasks {
		if !st.Admin && t.t.UID != p.UID {
			continue
		}
		st.TasksTotal++
		if !st.Admin {
			switch t.t.State {
			case api.StateRunning:
				st.ActiveVMs++
			case api.StateQueued:
				st.Queued++
			}
		}
	}
	if ps, ok := d.cfg.Decider.(PolicyStatus); ok {
		st.PolicyError = ps.PolicyError()
	}
	if d.cfg.Images != nil {
		st.Images = d.cfg.Images()
	}
	return st
}

func (d *Daemon) auditTask(t *api.Task) {
	rec := &AuditRecord{Event: "task", UID: t.UID, User: t.User, Path: t.File, SHA256: t.SHA256,
		Action: string(t.Decision.Action), Rule: t.Decision.Rule, Handler: t.Handler, Task: t.ID,
		State: string(t.State), Reason: t.Reason, PolicyVersion: t.Decision.PolicyVersion}
	if t.State.Final() && t.State != api.StateKilled {
		code := t.ExitCode
		rec.ExitCode = &code
	}
	d.writeAudit(rec)
}

func (d *Daemon) writeAudit(rec *AuditRecord) {
	if err := d.audit.Write(rec); err != nil {
		d.log.Error("audit log write failed", "err", err)
	}
}

// publish sends ev to the /v1/events subscribers allowed to see task owner uid: the owner
// and the administrators; uid -1 reaches administrators only.
func (d *Daemon) publishLocked(ev api.Event, uid int) {
	for ch, p := range d.subscribers {
		if !p.IsAdmin() && p.UID != uid {
			continue
		}
		select {
		case ch <- ev:
		default: // a slow subscriber misses events rather than stalling tasks
		}
	}
}
