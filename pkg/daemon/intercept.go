package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/interception"
	"github.com/isolator-dev/isolator/pkg/policy"
)

// InterceptConfig configures transparent interception: the download Watcher and the
// fanotify permission Gate of package interception, run by the daemon on the download
// directories. See docs/INTERCEPTION.md.
type InterceptConfig struct {
	// Dirs are the download directories, watched and gated recursively.
	Dirs []string
	// Passwd, if set, adds the XDG download directory of every regular user (uid 1000 and
	// up) listed in this passwd file (see interception.UserDownloadDirs): a directory a
	// user points outside their home, at somebody else's or at a system directory is
	// refused, and the refusal logged. Dirs or Passwd is required. The file is read again
	// every RescanInterval and at Rescan (SIGHUP), so that users created later and
	// download directories made later are intercepted without a restart.
	Passwd string
	// RescanInterval is how often Passwd is read again. Zero selects one minute.
	RescanInterval time.Duration
	// NoGate runs the Watcher only: downloads are decided, tagged and isolated, but opens
	// are not gated.
	NoGate bool
	// GateDeadline bounds the answer to one permission event. Zero selects
	// interception.DefaultDeadline (1 s).
	GateDeadline time.Duration
	// GateFallback answers the opens the policy could not decide before the deadline:
	// interception.ActionTrust allows them, anything else (the default) denies them.
	GateFallback interception.Action
	// AllowPrograms are executables whose opens the Gate always allows (backup and indexing
	// tools). Symbolic links are resolved, since the kernel reports the real executable.
	AllowPrograms []string
	// Settle is how long a file must stay unwritten before the Watcher decides it. Zero
	// selects interception.DefaultSettle.
	Settle time.Duration
	// TempIdle is how long a file with an in-progress download name must stay unwritten
	// before the Watcher decides it. Zero selects interception.DefaultTempIdle.
	TempIdle time.Duration
	// MaxFileMarks bounds the untrusted files the Gate follows under any name with a mark
	// of their own. Zero selects interception.DefaultMaxFileMarks.
	MaxFileMarks int
}

// ownerTTL bounds how long a user's passwd and group entries are reused.
const ownerTTL = time.Minute

// Interceptor connects package interception to a Daemon. It is the Decider of the Watcher
// and the Gate, adapting the daemon's policy so that intercepted files get the same
// verdicts and audit records as isoctl open, and their Sink: an isolate verdict starts a
// task for the file's owner through the daemon's task queue, and events go to the owner's
// /v1/events stream (isoctl watch).
//
// Each content of a file (device, inode, size and modification time) is audited once per
// verdict and isolated at most once per daemon run, however many times the Watcher and the
// Gate see it; later opens are refused and point the owner at the existing task.
type Interceptor struct {
	d       *Daemon
	cfg     InterceptConfig
	log     *slog.Logger
	gate    *interception.Gate // nil with NoGate
	watcher *interception.Watcher
	ctx     context.Context // cancelled when Run stops, ends isolations being staged
	cancel  context.CancelFunc
	wg      sync.WaitGroup // isolations being staged and queued

	mu     sync.Mutex
	seen   map[contentKey]*seenFile // guarded by mu
	owners map[uint32]ownerEntry    // guarded by mu

	rescanMu sync.Mutex        // serializes Rescan
	refused  map[string]string // guarded by rescanMu; user -> the refusal logged last
}

// contentKey names one content of one file. Unlike the Gate's cache key it leaves out
// the ctime, which the Watcher's verdict record changes.
type contentKey struct {
	dev, ino uint64
	size     int64
	mtime    int64
}

type seenFile struct {
	dec  *Decision
	sum  string // SHA-256 of the content decided on, when known
	task string // task started for this content; "" if none
}

type ownerEntry struct {
	p  *Peer
	at time.Time
}

const maxSeen = 1 << 16

var (
	_ interception.Decider = (*Interceptor)(nil)
	_ interception.Sink    = (*Interceptor)(nil)
)

// NewInterceptor creates the Gate (unless cfg.NoGate), which marks the directories at
// once, and the Watcher for d. Opens in the directories wait for Run from then on, so
// call Run promptly; it needs CAP_SYS_ADMIN for the Gate.
func NewInterceptor(d *Daemon, cfg InterceptConfig) (*Interceptor, error) {
	if len(cfg.Dirs) == 0 && cfg.Passwd == "" {
		return nil, errors.New("interception: no download directories")
	}
	allow := make([]string, 0, len(cfg.AllowPrograms))
	for _, p := range cfg.AllowPrograms {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		allow = append(allow, p)
	}
	cfg.AllowPrograms = allow
	ctx, cancel := context.WithCancel(context.Background())
	ic := &Interceptor{
		d:       d,
		cfg:     cfg,
		log:     d.log.With("component", "interception"),
		ctx:     ctx,
		cancel:  cancel,
		seen:    make(map[contentKey]*seenFile),
		owners:  make(map[uint32]ownerEntry),
		refused: make(map[string]string),
	}
	// The explicit directories are resolved by the Gate and the Watcher; the users'
	// directories, checked by UserDownloadDirs, are added to both once they exist, as
	// checked (see addUserDirs).
	var users []interception.Dir
	if cfg.Passwd != "" {
		var err error
		if users, err = ic.userDirs(); err != nil {
			cancel()
			return nil, fmt.Errorf("interception: %w", err)
		}
		if len(cfg.Dirs)+len(users) == 0 {
			ic.log.Warn("no user has a download directory yet; nothing is intercepted until one appears")
		}
	}
	var onDir func(string)
	if !cfg.NoGate {
		g, err := interception.NewGate(interception.GateConfig{
			Dirs: cfg.Dirs, Decider: ic, Sink: ic, Deadline: cfg.GateDeadline,
			Fallback: cfg.GateFallback, AllowPrograms: cfg.AllowPrograms, MaxFileMarks: cfg.MaxFileMarks,
			Logger: ic.log,
		})
		if err != nil {
			cancel()
			return nil, fmt.Errorf("interception: %w", err)
		}
		ic.gate = g
		onDir = func(dir string) {
			if err := g.AddDir(dir); err != nil {
				ic.log.Warn("new directory not gated", "dir", dir, "err", err)
			}
		}
	}
	w, err := interception.NewWatcher(interception.WatcherConfig{
		Dirs: cfg.Dirs, Decider: ic, Sink: ic, Settle: cfg.Settle, TempIdle: cfg.TempIdle, OnDir: onDir, Gate: ic.gate,
		Logger: ic.log,
	})
	if err != nil {
		if ic.gate != nil {
			ic.gate.Close()
		}
		cancel()
		return nil, fmt.Errorf("interception: %w", err)
	}
	ic.watcher = w
	ic.addUserDirs(users)
	d.icpt.Store(ic)
	return ic, nil
}

// Gate returns the permission Gate, or nil when it is disabled.
func (ic *Interceptor) Gate() *interception.Gate { return ic.gate }

// Run answers permission events and decides downloads until ctx is done. It then stops
// the components in the reverse order of their creation, the Watcher first and the Gate
// second (closing the fanotify group, so no process stays blocked in open), and waits for
// the isolations being queued.
func (ic *Interceptor) Run(ctx context.Context) error {
	gctx, stopGate := context.WithCancel(context.Background())
	defer stopGate()
	gateDone := make(chan error, 1)
	if ic.gate != nil {
		go func() { gateDone <- ic.gate.Run(gctx) }()
	} else {
		gateDone <- nil
	}
	ic.log.Info("interception running", "dirs", ic.watcher.Dirs(), "gate", ic.gate != nil,
		"audit", ic.gate != nil && ic.gate.Audit())
	if ic.cfg.Passwd != "" {
		every := ic.cfg.RescanInterval
		if every <= 0 {
			every = time.Minute
		}
		ic.wg.Add(1)
		go func() {
			defer ic.wg.Done()
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					ic.Rescan()
				}
			}
		}()
	}
	werr := ic.watcher.Run(ctx)
	if werr != nil {
		ic.log.Error("download watcher stopped", "err", werr)
		<-ctx.Done() // keep the Gate answering until the daemon stops
	}
	stopGate()
	gerr := <-gateDone
	ic.d.icpt.CompareAndSwap(ic, nil)
	ic.cancel()
	ic.wg.Wait()
	return errors.Join(werr, gerr)
}

// userDirs returns the users' download directories of cfg.Passwd, as they were checked,
// logging each refusal once (again when its reason changes).
func (ic *Interceptor) userDirs() ([]interception.Dir, error) {
	users, err := interception.UserDownloadDirs(ic.cfg.Passwd, 1000, false)
	if err != nil {
		return nil, err
	}
	ic.rescanMu.Lock()
	defer ic.rescanMu.Unlock()
	var dirs []interception.Dir
	for _, u := range users {
		if u.Err != nil {
			if ic.refused[u.User] != u.Err.Error() {
				ic.refused[u.User] = u.Err.Error()
				ic.log.Warn("download directory refused", "user", u.User, "uid", u.UID, "err", u.Err)
			}
			continue
		}
		delete(ic.refused, u.User)
		dirs = append(dirs, u.Dir)
	}
	return dirs, nil
}

// Rescan reads InterceptConfig.Passwd again and intercepts in the download directories
// that appeared since (a new user, a directory made later, or made again): it marks them
// for the Gate and watches them. isolatord calls it on SIGHUP; Run calls it every
// RescanInterval. Without Passwd it does nothing.
func (ic *Interceptor) Rescan() {
	if ic.cfg.Passwd == "" {
		return
	}
	dirs, err := ic.userDirs()
	if err != nil {
		ic.log.Error("rescan of the users' download directories", "err", err)
		return
	}
	ic.addUserDirs(dirs)
}

// addUserDirs marks and watches the users' download directories not watched yet. Each is
// used only if it is still the directory UserDownloadDirs checked (same device, inode and
// owner, reached without following a symbolic link): a user who swaps it for a symbolic
// link meanwhile gets it refused, not followed.
func (ic *Interceptor) addUserDirs(dirs []interception.Dir) {
	ic.rescanMu.Lock()
	defer ic.rescanMu.Unlock()
	for _, d := range dirs {
		if ic.watcher.Watching(d) {
			continue
		}
		if ic.gate != nil {
			if err := ic.gate.AddTree(d); err != nil {
				ic.log.Error("new download directory not intercepted", "dir", d.Path, "err", err)
				continue
			}
		}
		if err := ic.watcher.AddDir(d); err != nil {
			ic.log.Error("new download directory not watched", "dir", d.Path, "err", err)
			continue
		}
		ic.log.Info("download directory added", "dir", d.Path)
	}
}

// Invalidate forgets the Gate's cached verdicts and ignore marks, after the policy changed.
func (ic *Interceptor) Invalidate() {
	if ic.gate == nil {
		return
	}
	if err := ic.gate.Invalidate(); err != nil {
		ic.log.Error("gate: invalidate after policy reload", "err", err)
	}
}

// InvalidateFile forgets the Gate's verdict about the file open as f, after it was
// released. It touches no other file, so a user releasing files in a loop costs the Gate
// nothing more than those files.
func (ic *Interceptor) InvalidateFile(f *os.File) {
	if ic.gate == nil {
		return
	}
	if err := ic.gate.InvalidateFile(f); err != nil {
		ic.log.Error("gate: invalidate after release", "err", err)
	}
}

func keyOf(f interception.FileInfo) contentKey {
	return contentKey{dev: f.Dev, ino: f.Ino, size: f.Size, mtime: f.Mtime.UnixNano()}
}

// owner returns the identity tasks for uid run with: the user's passwd entry and groups,
// or the bare uid with group nogroup when the user is unknown.
func (ic *Interceptor) owner(uid uint32) *Peer {
	now := time.Now()
	ic.mu.Lock()
	e, ok := ic.owners[uid]
	ic.mu.Unlock()
	if ok && now.Sub(e.at) < ownerTTL {
		return e.p
	}
	p := &Peer{UID: int(uid), GID: 65534}
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		p.User, p.Home = u.Username, u.HomeDir
		if gid, err := strconv.Atoi(u.Gid); err == nil {
			p.GID = gid
		}
		if ids, err := u.GroupIds(); err == nil {
			for _, s := range ids {
				if g, err := strconv.Atoi(s); err == nil {
					p.Groups = append(p.Groups, g)
				}
			}
		}
	}
	ic.mu.Lock()
	if len(ic.owners) >= 1024 {
		clear(ic.owners)
	}
	ic.owners[uid] = ownerEntry{p: p, at: now}
	ic.mu.Unlock()
	return p
}

// Decide evaluates the daemon's policy for f on behalf of its owner. The opening program
// is not part of the request: the Gate caches verdicts per file, so they must not depend
// on who opens it (allow-listed openers are InterceptConfig.AllowPrograms). A verdict new
// for this content is written to the audit log.
func (ic *Interceptor) Decide(ctx context.Context, f interception.FileInfo) (interception.Verdict, error) {
	start := time.Now()
	if f.File == nil {
		return interception.Verdict{}, fmt.Errorf("policy: %s: no open file to decide on", f.Path)
	}
	p := ic.owner(f.UID)
	// The facts come from the descriptor the Gate or the Watcher holds, so the verdict (and
	// the Gate's cache entry, keyed by that descriptor's inode) is about that file.
	origin, referrer, _ := policy.ReadOriginFile(f.File)
	var rel *Release
	var st unix.Stat_t
	if unix.Fstat(int(f.File.Fd()), &st) == nil {
		rel = ic.d.releases.lookup(&st)
	}
	dec, err := ic.d.cfg.Decider.Decide(ctx, &DecideRequest{Path: f.Path, File: f.File, Origin: origin,
		Referrer: referrer, Release: rel, User: p.User, UID: p.UID, Groups: groupNames(p.Groups), Home: p.Home})
	if err != nil {
		return interception.Verdict{}, fmt.Errorf("policy: %w", err)
	}
	sum := f.SHA256 // the Watcher's hash; at the Gate, the policy's when it hashed
	if sum == "" {
		sum = dec.SHA256
	} else if dec.SHA256 != "" && dec.SHA256 != sum {
		return interception.Verdict{}, fmt.Errorf("%w: %s changed while it was being decided", ErrChanged, f.Path)
	}
	if dec.Action == api.ActionIsolate && dec.Handler == nil {
		dec.Action = api.ActionDeny
		dec.Explanation += " (isolate rule without a handler: denied)"
	}
	if dec.Handler != nil {
		dec.Decision.Handler = dec.Handler.Name
	}
	ic.d.metrics.decisionTime.Observe(time.Since(start).Seconds())
	ic.d.metrics.decisions.WithLabelValues(string(dec.Action)).Inc()

	key := keyOf(f)
	ic.mu.Lock()
	prev := ic.seen[key]
	fresh := prev == nil || prev.dec.Action != dec.Action || prev.dec.Rule != dec.Rule ||
		prev.dec.PolicyVersion != dec.PolicyVersion
	if fresh {
		e := &seenFile{dec: dec, sum: sum}
		if prev != nil && prev.dec.Action == dec.Action {
			e.task = prev.task // the same verdict under a new policy: still isolated once
		}
		if len(ic.seen) >= maxSeen {
			clear(ic.seen)
		}
		ic.seen[key] = e
	}
	ic.mu.Unlock()
	if fresh {
		how := "intercepted download"
		if f.Trigger != interception.TriggerDownload {
			how = fmt.Sprintf("intercepted %s by %s (pid %d)", f.Trigger, orUnknown(f.Program), f.PID)
		}
		ic.d.writeAudit(&AuditRecord{Event: "decision", UID: p.UID, User: p.User, Path: f.Path,
			SHA256: sum, Action: string(dec.Action), Rule: dec.Rule, RuleFile: dec.File,
			RuleLine: dec.Line, Explanation: dec.Explanation, PolicyVersion: dec.PolicyVersion,
			Handler: dec.Decision.Handler, Reason: how})
		ic.log.Info("decision", "uid", p.UID, "path", f.Path, "trigger", f.Trigger,
			"action", dec.Action, "rule", dec.Rule)
	}
	return interception.Verdict{Action: interception.Action(dec.Action), Rule: dec.Rule, Reason: dec.Explanation,
		SHA256: sum}, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "an unknown program"
	}
	return s
}

// Isolate starts f's handler in a micro VM as a task of f's owner, unless this content was
// isolated already. Staging and queueing happen on another goroutine.
func (ic *Interceptor) Isolate(_ context.Context, f interception.FileInfo, _ interception.Verdict) {
	key := keyOf(f)
	ic.mu.Lock()
	e := ic.seen[key]
	if e == nil || e.dec.Action != api.ActionIsolate || e.dec.Handler == nil || e.task != "" {
		ic.mu.Unlock()
		return
	}
	id := newTaskID()
	e.task = id
	dec, sum := e.dec, e.sum
	ic.mu.Unlock()
	ic.wg.Add(1)
	go func() {
		defer ic.wg.Done()
		err := ic.isolate(id, f, dec, sum)
		if err == nil {
			return
		}
		ic.mu.Lock()
		if e.task == id {
			e.task = "" // let a later open try again
		}
		ic.mu.Unlock()
		if errors.Is(err, ErrShuttingDown) || errors.Is(err, context.Canceled) {
			return
		}
		ic.log.Error("isolation not started", "path", f.Path, "uid", f.UID, "err", err)
		ic.publish(api.Event{Type: api.EventNotice, Time: time.Now(), Path: f.Path,
			Message: "could not isolate " + filepath.Base(f.Path) + ": " + err.Error()}, int(f.UID))
	}()
}

// isolate stages the content that was decided and queues task id for the file's owner.
// The file is opened again, with the owner's identity; it must be the same inode and
// version, and when the decision's hash sum is known, the staged copy must have it.
func (ic *Interceptor) isolate(id string, f interception.FileInfo, dec *Decision, sum string) error {
	select {
	case <-ic.d.stopping:
		return ErrShuttingDown
	default:
	}
	start := time.Now()
	p := ic.owner(f.UID)
	o, err := openAsPeer(p, f.Path)
	if err != nil {
		return err
	}
	defer o.f.Close()
	st := &o.st
	if st.Dev != f.Dev || st.Ino != f.Ino || st.Size != f.Size || st.Mtim.Nano() != f.Mtime.UnixNano() {
		return fmt.Errorf("%s changed after it was decided; it will be decided again", f.Path)
	}
	if err := ic.d.checkSize(o.f, o.real); err != nil {
		return err
	}
	if err := ic.d.admit(ic.ctx); err != nil {
		return err
	}
	staged, got, err := ic.d.stage(id, o.f, o.real)
	if err != nil {
		ic.d.unadmit()
		return err
	}
	if sum != "" && got != sum {
		os.RemoveAll(filepath.Dir(staged))
		ic.d.unadmit()
		return fmt.Errorf("%s changed while it was staged; it will be decided again", f.Path)
	}
	if _, err := ic.d.enqueue(p, id, o.real, got, staged, dec, start); err != nil {
		os.RemoveAll(filepath.Dir(staged))
		return err
	}
	ic.log.Info("intercepted file isolated", "task", id, "uid", p.UID, "path", o.real, "handler", dec.Decision.Handler)
	return nil
}

// Notify forwards ev to the owner's event streams (administrators see all of them). Events
// about the watcher itself go to administrators only.
func (ic *Interceptor) Notify(ev interception.Event) {
	var typ api.EventType
	switch ev.Kind {
	case interception.EventDownload:
		typ = api.EventDownload
	case interception.EventDenied:
		typ = api.EventDenied
	default:
		ic.log.Warn("interception", "event", ev.Kind, "path", ev.File.Path, "message", ev.Message, "err", ev.Err)
		msg := string(ev.Kind) + ": " + ev.Message
		if ev.Err != nil {
			msg += ": " + ev.Err.Error()
		}
		ic.publish(api.Event{Type: api.EventNotice, Time: ev.Time, Path: ev.File.Path, Message: msg}, -1)
		return
	}
	out := api.Event{Type: typ, Time: ev.Time, Path: ev.File.Path, Message: ev.Message,
		Decision: &api.Decision{Action: api.Action(ev.Verdict.Action), Rule: ev.Verdict.Rule, Explanation: ev.Verdict.Reason}}
	ic.mu.Lock()
	var task string
	if e := ic.seen[keyOf(ev.File)]; e != nil {
		dec := e.dec.Decision
		out.Decision = &dec
		task = e.task
	}
	ic.mu.Unlock()
	if task != "" {
		t, err := ic.d.Task(&Peer{UID: 0}, task)
		if err != nil {
			t = api.Task{ID: task, UID: int(ev.File.UID), File: ev.File.Path, State: api.StateQueued}
		}
		out.Task = &t
		out.Message += "; task " + task + " (isoctl results " + task + ")"
	}
	ic.publish(out, int(ev.File.UID))
}

// publish sends ev to the event streams of uid and of the administrators; uid -1 means
// administrators only.
func (ic *Interceptor) publish(ev api.Event, uid int) {
	ic.d.mu.Lock()
	defer ic.d.mu.Unlock()
	ic.d.publishLocked(ev, uid)
}
