package interception

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults of GateConfig.
const (
	DefaultDeadline        = time.Second
	DefaultCacheTTL        = 5 * time.Minute
	DefaultIsolateInterval = time.Minute
	defaultMaxConcurrent   = 64
	maxCacheEntries        = 1 << 16
	// maxIgnoreMarks bounds the trusted files given an ignore mark (and remembered, so
	// that Invalidate can take it away); beyond it trusted files are answered from the
	// cache until the next Invalidate.
	maxIgnoreMarks = 1 << 16
)

// gateMask is what every directory is marked for: permission to open or execute any of its
// children. The directories themselves (FAN_ONDIR) are not gated, so listing them is free.
const gateMask = unix.FAN_OPEN_PERM | unix.FAN_OPEN_EXEC_PERM | unix.FAN_EVENT_ON_CHILD

// GateConfig configures a Gate.
type GateConfig struct {
	// Dirs are the directories whose files are gated. Each is marked with an inode mark,
	// with its subdirectories unless NoRecursive; directories created later are marked
	// with AddDir (a Watcher's OnDir does this). Symbolic links are resolved; a system
	// directory (IsSystemDir) is refused, and so is a directory that cannot be marked.
	Dirs        []string
	NoRecursive bool
	Decider     Decider // evaluates the policy; required
	Sink        Sink    // receives isolation requests and events; required

	// Deadline bounds the time between reading a permission event and answering it.
	// Zero selects DefaultDeadline (1 s).
	Deadline time.Duration
	// Fallback is the answer when the Decider fails, misses the deadline or too many
	// decisions are running: ActionTrust allows the open, anything else denies it. The
	// zero value denies (fail closed).
	Fallback Action
	// AllowPrograms are executables (absolute paths, as in /proc/PID/exe) whose opens are
	// always allowed: backup and indexing tools named in the policy. The daemon's own
	// process is always allowed.
	AllowPrograms []string
	// CacheTTL bounds how long a verdict is reused. Zero selects DefaultCacheTTL.
	CacheTTL time.Duration
	// IsolateInterval is the minimum time between two Sink.Isolate calls (and denial
	// notifications) for the same file. Zero selects DefaultIsolateInterval.
	IsolateInterval time.Duration
	// MaxConcurrent bounds the Decider calls in flight; events beyond it get Fallback at
	// once. Zero selects 64.
	MaxConcurrent int
	// TempSuffixes and TempPrefixes name in-progress downloads. Their execution is always
	// refused; opening them is allowed without a decision to their writer only (a process
	// that already holds the file open for writing: the browser writing it), and decided
	// as for any other file for everyone else, an open that asks for write access
	// included. Nil selects DefaultTempSuffixes and DefaultTempPrefixes.
	TempSuffixes []string
	TempPrefixes []string
	// NoIgnoreMarks disables the kernel-side fast path for trusted files (see ignoreOpens);
	// every open then reaches the Gate and is answered from its cache.
	NoIgnoreMarks bool
	// MaxFileMarks bounds the untrusted files (isolate, deny or ask verdicts) the Gate
	// gives a mark of their own, which keeps them gated under any name on their file
	// system. When it is reached the least recently opened one loses its mark and verdict.
	// Zero selects DefaultMaxFileMarks.
	MaxFileMarks int
	// Logger receives diagnostics. Nil discards them.
	Logger *slog.Logger
}

// GateStats are counters of a Gate's answers.
type GateStats struct {
	Events    uint64 // permission events read
	Allowed   uint64 // answered FAN_ALLOW
	Denied    uint64 // answered FAN_DENY
	CacheHits uint64 // answered from the verdict cache or an untrusted file's verdict
	Fallbacks uint64 // answered with Fallback
	Writing   uint64 // refused without a decision: being written by another process

	FileMarks    uint64 // untrusted files carrying a mark of their own now
	MarksEvicted uint64 // file marks dropped because MaxFileMarks was reached
}

// Gate answers fanotify permission events for the files of a set of directories.
type Gate struct {
	cfg        GateConfig
	f          *os.File    // the fanotify group; closing it lets the kernel allow everything pending
	audit      bool        // the group was created with FAN_ENABLE_AUDIT
	evict      atomic.Bool // FAN_MARK_EVICTABLE is accepted for ignore marks
	noIgnore   atomic.Bool // ignore marks failed once; stop trying
	ignoreFull atomic.Bool // maxIgnoreMarks was reached once (logged)
	self       int32
	allow      map[string]bool
	sem        chan struct{}
	log        *slog.Logger
	ctx        context.Context // cancelled after the group is closed
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	stopOnce   sync.Once

	events, allowed, denied, hits, fallbacks, marksEvicted, writing atomic.Uint64

	// watcher is the Watcher that hands its verdicts to this Gate, if any: files it is
	// still waiting on are not decided here while another process writes them.
	watcher atomic.Pointer[Watcher]

	// ino watches the marked untrusted files for IN_DELETE_SELF (nil if inotify failed).
	ino                   *os.File
	markWarned, inoWarned atomic.Bool // a failure to mark or watch a file was logged
	recordWarned          atomic.Bool // a failure to write a record was logged

	// gen counts invalidations. A verdict decided in an older generation is not cached,
	// gives no ignore mark, and leaves an untrusted inode stale. Changed with mu held.
	gen atomic.Uint64

	mu          sync.Mutex
	cache       map[cacheKey]cacheEntry // guarded by mu
	ignored     map[inodeKey]*fileRef   // guarded by mu; trusted files given an ignore mark
	isolated    map[cacheKey]time.Time  // guarded by mu; last Isolate/notification per file
	execRefused map[cacheKey]time.Time  // guarded by mu; last notice of a refused exec of an in-progress download
	marked      map[string]inodeKey     // guarded by mu; directories marked, and their inodes
	files       map[inodeKey]*untrusted // guarded by mu; inodes with a verdict refusing opens
	wds         map[int]inodeKey        // guarded by mu; inotify watch -> inode in files
}

type cacheKey struct {
	dev, ino uint64
	ctime    int64 // nanoseconds
	size     int64
}

type cacheEntry struct {
	v       Verdict
	expires time.Time
}

// NewGate creates the fanotify group and marks cfg.Dirs. It needs CAP_SYS_ADMIN. Call Run
// to answer events; until then (and after Run returns) nothing is blocked for long: opens
// wait for Run or for Close.
func NewGate(cfg GateConfig) (*Gate, error) {
	if cfg.Decider == nil || cfg.Sink == nil {
		return nil, errors.New("new gate: Decider and Sink are required")
	}
	if cfg.Deadline <= 0 {
		cfg.Deadline = DefaultDeadline
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	if cfg.IsolateInterval <= 0 {
		cfg.IsolateInterval = DefaultIsolateInterval
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = defaultMaxConcurrent
	}
	if cfg.TempSuffixes == nil {
		cfg.TempSuffixes = DefaultTempSuffixes
	}
	if cfg.TempPrefixes == nil {
		cfg.TempPrefixes = DefaultTempPrefixes
	}
	if cfg.MaxFileMarks <= 0 {
		cfg.MaxFileMarks = DefaultMaxFileMarks
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	const initFlags = unix.FAN_CLASS_CONTENT | unix.FAN_CLOEXEC | unix.FAN_NONBLOCK
	const eventFlags = unix.O_RDONLY | unix.O_CLOEXEC | unix.O_LARGEFILE
	audit := true
	fd, err := unix.FanotifyInit(initFlags|unix.FAN_ENABLE_AUDIT, eventFlags)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPERM) {
		audit = false
		fd, err = unix.FanotifyInit(initFlags, eventFlags)
	}
	if err != nil {
		return nil, fmt.Errorf("new gate: fanotify_init: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Gate{
		cfg:         cfg,
		f:           os.NewFile(uintptr(fd), "fanotify"),
		audit:       audit,
		self:        int32(os.Getpid()),
		allow:       make(map[string]bool, len(cfg.AllowPrograms)),
		sem:         make(chan struct{}, cfg.MaxConcurrent),
		log:         log,
		ctx:         ctx,
		cancel:      cancel,
		cache:       make(map[cacheKey]cacheEntry),
		ignored:     make(map[inodeKey]*fileRef),
		isolated:    make(map[cacheKey]time.Time),
		execRefused: make(map[cacheKey]time.Time),
		marked:      make(map[string]inodeKey),
		files:       make(map[inodeKey]*untrusted),
		wds:         make(map[int]inodeKey),
	}
	if ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK); err == nil {
		g.ino = os.NewFile(uintptr(ifd), "inotify")
	} else {
		log.Warn("gate: no inotify instance to notice deleted untrusted files; their entries stay until evicted", "err", err)
	}
	g.evict.Store(true)
	g.noIgnore.Store(cfg.NoIgnoreMarks)
	for _, p := range cfg.AllowPrograms {
		g.allow[filepath.Clean(p)] = true
	}
	for _, d := range cfg.Dirs {
		root, err := resolveRoot(d)
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("new gate: mark %s: %w", d, err)
		}
		if root.Path != filepath.Clean(d) {
			log.Info("gate: directory resolved", "dir", d, "resolved", root.Path)
		}
		if err := g.AddTree(root); err != nil {
			g.Close()
			return nil, fmt.Errorf("new gate: %w", err)
		}
	}
	return g, nil
}

// Audit reports whether denials are sent to the audit log (FAN_ENABLE_AUDIT was accepted).
func (g *Gate) Audit() bool { return g.audit }

// AddTree marks the directory d and (unless NoRecursive) its subdirectories, through a
// descriptor of d checked to be the directory d describes (see Dir) and descriptors of
// its subdirectories opened from it: nothing outside d's tree is marked, whatever is
// swapped in meanwhile. It fails unless d itself ends up marked.
func (g *Gate) AddTree(d Dir) error {
	fd, err := d.open()
	if err != nil {
		return fmt.Errorf("mark %s: %w", d.Path, err)
	}
	defer unix.Close(fd)
	visit := func(fd int, p string) (bool, error) {
		err := g.markDir(fd, p)
		if err != nil && p != d.Path {
			g.log.Warn("gate: directory not marked", "dir", p, "err", err)
		}
		return !g.cfg.NoRecursive, err
	}
	return walkDirs(fd, d.Path, visit, nil)
}

// AddDir marks one more directory: opens and execs of its direct children are gated. The
// directory is reached without following symbolic links (see openDir), and a system
// directory is refused.
func (g *Gate) AddDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("mark %s: %w", dir, err)
	}
	fd, err := openDir(abs)
	if err != nil {
		return fmt.Errorf("mark %s: %w", abs, err)
	}
	defer unix.Close(fd)
	return g.markDir(fd, abs)
}

// markDir marks the directory open as fd, named path, unless it is marked already.
func (g *Gate) markDir(fd int, path string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("mark %s: %w", path, err)
	}
	ik := inodeKey{st.Dev, st.Ino}
	g.mu.Lock()
	done := g.marked[path] == ik
	g.mu.Unlock()
	if done {
		return nil
	}
	err := g.fan(func(gfd int) error {
		return unix.FanotifyMark(gfd, unix.FAN_MARK_ADD|unix.FAN_MARK_ONLYDIR, gateMask, fd, "")
	})
	if err != nil {
		return fmt.Errorf("mark %s: %w", path, err)
	}
	g.mu.Lock()
	g.marked[path] = ik
	g.mu.Unlock()
	return nil
}

// Invalidate forgets every verdict, for example after the policy was reloaded: the
// cache is cleared, the untrusted files' verdicts become stale (they keep their marks and
// are decided again at their next open, with the origins first observed) and the ignore
// marks of trusted files are removed, one by one, so that their next opens are asked
// about again. No mark that gates anything is ever removed: the directories and the
// untrusted files are gated throughout. A trusted file whose ignore mark is not removed
// yet opens as before for that instant. Verdicts decided before the call and answered
// after it are not cached (see gen).
func (g *Gate) Invalidate() error {
	g.mu.Lock()
	g.gen.Add(1)
	clear(g.cache)
	for _, u := range g.files {
		u.stale = true
	}
	ignored := g.ignored
	g.ignored = make(map[inodeKey]*fileRef)
	g.mu.Unlock()
	mounts := map[int]string{}
	var errs []error
	for _, ref := range ignored {
		err := g.withHandle(ref, mounts, func(path string) error {
			return g.fan(func(gfd int) error {
				return unix.FanotifyMark(gfd, unix.FAN_MARK_REMOVE|unix.FAN_MARK_IGNORED_MASK, unix.FAN_OPEN_PERM, unix.AT_FDCWD, path)
			})
		})
		// Gone: the file (ESTALE), or its ignore mark (ENOENT: cleared by a write,
		// evicted with the inode); or the Gate is closed.
		if err != nil && !errors.Is(err, unix.ESTALE) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalidate: remove %d ignore marks: %w", len(errs), errors.Join(errs...))
	}
	return nil
}

// InvalidateFile forgets the verdict of the file open as f, for example after it was
// released: its cached verdict is dropped and, if it is untrusted, its verdict becomes
// stale (it keeps its mark and is decided again at its next open). Unlike Invalidate it
// costs the same however many files the Gate knows, and touches no other file.
func (g *Gate) InvalidateFile(f *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("invalidate %s: %w", f.Name(), err)
	}
	key := cacheKey{dev: st.Dev, ino: st.Ino, ctime: st.Ctim.Nano(), size: st.Size}
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.cache, key)
	if u := g.files[inodeKey{st.Dev, st.Ino}]; u != nil {
		u.stale = true
	}
	return nil
}

// ignoreOpens adds an ignore mark for FAN_OPEN_PERM to the trusted file open as fd, so the
// kernel stops asking about its opens: a cached trusted open then costs nothing in user
// space. The kernel clears the ignore mark when the file is modified (the mark is added
// without FAN_MARK_IGNORED_SURV_MODIFY), and evicts it with the inode (FAN_MARK_EVICTABLE).
// Executions keep being asked (FAN_OPEN_EXEC_PERM is not ignored) so that a changed mode
// or name is seen by the Decider through the cache key. If the file changed between the
// decision and the mark, the mark is removed again.
//
// The file is remembered (its file handle, at most maxIgnoreMarks files), so that
// Invalidate can remove the mark; a file that cannot be remembered gets none. Nor does a
// verdict decided before the last invalidation (gen).
func (g *Gate) ignoreOpens(fd int, key cacheKey, gen uint64) {
	if g.noIgnore.Load() {
		return
	}
	ref, err := refOf(fd)
	if err != nil {
		g.log.Debug("gate: no file handle for an ignore mark", "err", err)
		return
	}
	ik := inodeKey{key.dev, key.ino}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gen.Load() != gen {
		return
	}
	if _, ok := g.ignored[ik]; !ok && len(g.ignored) >= maxIgnoreMarks {
		if !g.ignoreFull.Swap(true) {
			g.log.Warn("gate: too many trusted files with an ignore mark; more are answered from the cache until the next invalidation",
				"max", maxIgnoreMarks)
		}
		return
	}
	g.ignored[ik] = ref
	flags := uint(unix.FAN_MARK_ADD | unix.FAN_MARK_IGNORED_MASK)
	if g.evict.Load() {
		err := g.fan(func(gfd int) error {
			return unix.FanotifyMark(gfd, flags|unix.FAN_MARK_EVICTABLE, unix.FAN_OPEN_PERM, fd, "")
		})
		if err == nil {
			g.recheck(fd, key)
			return
		}
		if !errors.Is(err, unix.EINVAL) {
			g.ignoreFailed(err)
			return
		}
		g.evict.Store(false) // kernel older than 5.19
	}
	if err := g.fan(func(gfd int) error { return unix.FanotifyMark(gfd, flags, unix.FAN_OPEN_PERM, fd, "") }); err != nil {
		g.ignoreFailed(err)
		return
	}
	g.recheck(fd, key)
}

func (g *Gate) recheck(fd int, key cacheKey) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err == nil &&
		(cacheKey{dev: st.Dev, ino: st.Ino, ctime: st.Ctim.Nano(), size: st.Size}) == key {
		return
	}
	err := g.fan(func(gfd int) error {
		return unix.FanotifyMark(gfd, unix.FAN_MARK_REMOVE|unix.FAN_MARK_IGNORED_MASK, unix.FAN_OPEN_PERM, fd, "")
	})
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, os.ErrClosed) {
		g.log.Error("gate: remove ignore mark of changed file", "err", err)
	}
}

func (g *Gate) ignoreFailed(err error) {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) {
		if !g.noIgnore.Swap(true) {
			g.log.Warn("gate: ignore marks unavailable; trusted opens are answered from the cache", "err", err)
		}
		return
	}
	g.log.Debug("gate: ignore mark", "err", err)
}

// Stats returns the Gate's counters.
func (g *Gate) Stats() GateStats {
	g.mu.Lock()
	var marks uint64
	for _, u := range g.files {
		if u.marked {
			marks++
		}
	}
	g.mu.Unlock()
	return GateStats{
		Events:       g.events.Load(),
		Allowed:      g.allowed.Load(),
		Denied:       g.denied.Load(),
		CacheHits:    g.hits.Load(),
		Fallbacks:    g.fallbacks.Load(),
		Writing:      g.writing.Load(),
		FileMarks:    marks,
		MarksEvicted: g.marksEvicted.Load(),
	}
}

// Close closes the fanotify group, so that the kernel allows every pending open and asks
// no more, then cancels the decisions in flight. It is safe to call more than once.
func (g *Gate) Close() error {
	var err error
	g.stopOnce.Do(func() {
		err = g.f.Close()
		g.cancel()
		if g.ino != nil {
			g.ino.Close()
		}
	})
	return err
}

// Run answers permission events until ctx is cancelled, then closes the Gate, waits for
// the decisions in flight and returns nil. It returns an error if reading events fails.
func (g *Gate) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { g.Close() })
	defer stop()
	defer g.wg.Wait()
	defer g.Close()
	if g.ino != nil {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.watchDeletes()
		}()
	}
	buf := make([]byte, 64*unix.FAN_EVENT_METADATA_LEN)
	for {
		n, err := g.f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || g.ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			return fmt.Errorf("gate: read fanotify: %w", err)
		}
		evs, err := parseEvents(buf[:n])
		for _, ev := range evs {
			g.handle(ev)
		}
		if err != nil {
			g.log.Error("gate: malformed fanotify events", "err", err)
		}
	}
}

// permEvent is one fanotify event as read from the group.
type permEvent struct {
	mask uint64
	fd   int32
	pid  int32
}

// parseEvents decodes the fanotify_event_metadata records in buf. It returns the events
// decoded before any malformed record and an error describing it.
func parseEvents(buf []byte) ([]permEvent, error) {
	var evs []permEvent
	for len(buf) > 0 {
		if len(buf) < unix.FAN_EVENT_METADATA_LEN {
			return evs, fmt.Errorf("short event: %d bytes", len(buf))
		}
		n := binary.NativeEndian.Uint32(buf[0:4])
		vers := buf[4]
		metaLen := binary.NativeEndian.Uint16(buf[6:8])
		if vers != unix.FANOTIFY_METADATA_VERSION {
			return evs, fmt.Errorf("event version %d, want %d", vers, unix.FANOTIFY_METADATA_VERSION)
		}
		if n < unix.FAN_EVENT_METADATA_LEN || uint64(n) > uint64(len(buf)) ||
			metaLen < unix.FAN_EVENT_METADATA_LEN || uint32(metaLen) > n {
			return evs, fmt.Errorf("bad event length %d (metadata %d) in %d bytes", n, metaLen, len(buf))
		}
		evs = append(evs, permEvent{
			mask: binary.NativeEndian.Uint64(buf[8:16]),
			fd:   int32(binary.NativeEndian.Uint32(buf[16:20])),
			pid:  int32(binary.NativeEndian.Uint32(buf[20:24])),
		})
		buf = buf[n:]
	}
	return evs, nil
}

// handle answers ev, from the cache on the read goroutine when it can, else by starting a
// decision that answers before the deadline.
func (g *Gate) handle(ev permEvent) {
	if ev.fd < 0 {
		if ev.mask&unix.FAN_Q_OVERFLOW != 0 {
			g.log.Warn("gate: fanotify queue overflow")
		}
		return
	}
	fd := int(ev.fd)
	if ev.mask&(unix.FAN_OPEN_PERM|unix.FAN_OPEN_EXEC_PERM) == 0 {
		unix.Close(fd)
		return
	}
	g.events.Add(1)
	start := time.Now()
	gen := g.gen.Load()
	if ev.pid == g.self {
		g.respond(fd, true)
		return
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		g.fallback(fd, "stat", err, true)
		return
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		g.respond(fd, true) // no content to protect
		return
	}
	key := cacheKey{dev: st.Dev, ino: st.Ino, ctime: st.Ctim.Nano(), size: st.Size}
	if ev.mask&unix.FAN_OPEN_EXEC_PERM != 0 {
		// An in-progress download is never executed, whoever asks and whatever was decided.
		if path, err := fdPath(fd); err == nil && isTempName(path, g.cfg.TempSuffixes, g.cfg.TempPrefixes) {
			g.respond(fd, false)
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				g.tempExecRefused(key, path, &st, int(ev.pid))
			}()
			return
		}
	}
	if st.Size == 0 {
		g.respond(fd, true) // no content to protect
		return
	}
	// An inode with a verdict refusing opens is answered by that verdict, whatever it is
	// called now and wherever it is (its own mark brings its events here).
	u, known := g.untrustedOf(key, start)
	var v Verdict
	var cached bool
	if known {
		v, cached = u.v, u.current(key)
	} else {
		v, cached = g.lookup(key, start)
		if cached && v.Action == ActionTrust {
			g.hits.Add(1)
			if ev.mask&unix.FAN_OPEN_PERM != 0 {
				g.ignoreOpens(fd, key, gen) // the earlier ignore mark was evicted or cleared
			}
			g.respond(fd, true)
			return
		}
	}
	var program string
	if len(g.allow) > 0 || cached || known {
		program = exeOf(int(ev.pid))
		if g.allow[program] {
			g.respond(fd, true)
			return
		}
	}
	path, err := fdPath(fd)
	if err != nil {
		g.fallback(fd, "readlink", err, !known)
		return
	}
	fi := FileInfo{
		Path:    path,
		Trigger: TriggerOpen,
		Dev:     st.Dev,
		Ino:     st.Ino,
		Size:    st.Size,
		Mode:    fileMode(st.Mode),
		UID:     st.Uid,
		Ctime:   time.Unix(st.Ctim.Unix()),
		Mtime:   time.Unix(st.Mtim.Unix()),
		PID:     int(ev.pid),
		Program: program,
	}
	if ev.mask&unix.FAN_OPEN_EXEC_PERM != 0 {
		fi.Trigger = TriggerExec
	}
	if cached {
		g.hits.Add(1)
		g.respond(fd, false)
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.afterDeny(key, fi, v)
		}()
		return
	}
	select {
	case g.sem <- struct{}{}:
	default:
		g.fallback(fd, "decide", errors.New("too many decisions in flight"), !known)
		return
	}
	var prev *untrusted
	if known {
		prev = &u
	}
	temp := !known && isTempName(path, g.cfg.TempSuffixes, g.cfg.TempPrefixes)
	settling := g.settling(path, st.Mtim)
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if temp || settling {
			ws, ok := g.writeStateBy(fd, int(ev.pid), &st, start)
			if !ok {
				<-g.sem
				g.fallback(fd, "writers", context.DeadlineExceeded, !known && !settling)
				return
			}
			switch ws {
			case openerHolds:
				// A file being written is opened by its writer, the process that holds
				// it open for writing already, without a decision. A new open that asks
				// for write access is no writer: it could read (O_RDWR) what it did not
				// write. Nor is a file decided untrusted opened so: it is known or,
				// should the Gate have lost its verdict, its record may say so (the
				// record is the owner's to delete: an extra refusal, never a permission).
				if !known && !recordRefuses(fd) {
					<-g.sem
					g.respond(fd, true)
					return
				}
			case otherWrites:
				if settling {
					// Still being written: the Watcher decides it once it is complete.
					<-g.sem
					g.writing.Add(1)
					g.log.Debug("gate: open of a file being written refused", "path", path, "pid", ev.pid)
					g.respond(fd, false)
					return
				}
			}
		}
		g.decide(fd, key, fi, start, prev, gen)
	}()
}

// settling reports whether the file at path, with modification time mtim, is being
// written as far as the Gate can tell: the Watcher handed its verdicts to this Gate
// (WatcherConfig.Gate) and is waiting for it to stay unwritten or deciding it, or it was
// written less than the settle interval ago (its events may not have reached the Watcher).
func (g *Gate) settling(path string, mtim unix.Timespec) bool {
	w := g.watcher.Load()
	if w == nil {
		return false
	}
	return time.Since(time.Unix(mtim.Unix())) < w.cfg.Settle || w.settling(path)
}

// fdPath returns the path of the file open as fd in this process.
func fdPath(fd int) (string, error) {
	return os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
}

// writeState says who writes a file that is being opened.
type writeState int

const (
	noWriter    writeState = iota // nobody else has the file open for writing
	openerHolds                   // the opening process holds it open for writing already
	otherWrites                   // another process holds it open for writing
)

// writeStateBy is writeState, given up at the deadline counted from start (it reads
// /proc, which a hung file system could hold up): ok is false then.
func (g *Gate) writeStateBy(fd, pid int, st *unix.Stat_t, start time.Time) (ws writeState, ok bool) {
	// The check works on its own descriptor: fd is answered and closed at the deadline.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return noWriter, false
	}
	c := make(chan writeState, 1)
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer unix.Close(dup)
		c <- g.writeState(dup, pid, st.Dev, st.Ino)
	}()
	t := time.NewTimer(time.Until(start.Add(g.cfg.Deadline)))
	defer t.Stop()
	select {
	case ws := <-c:
		return ws, true
	case <-t.C:
		return noWriter, false
	}
}

// writeState tells who writes the file open as fd that process pid is opening: pid itself
// (it holds the file open for writing, in a descriptor it had before this open), or
// another process. The /proc scan for another writer is skipped when a read lease can be
// taken (nobody has the file open for writing; the kernel counts the write access of the
// open being asked about before it asks, so an open for writing always scans). Without
// leases (no CAP_LEASE, or a file system without them) the scan always runs.
func (g *Gate) writeState(fd, pid int, dev, ino uint64) writeState {
	if holdsForWriting(pid, dev, ino) {
		return openerHolds
	}
	if w, err := hasWriters(fd); err == nil && !w {
		return noWriter
	}
	if otherWriter(pid, dev, ino) {
		return otherWrites
	}
	return noWriter
}

// tempExecRefused reports the refused execution of an in-progress download, at most once
// per file version per IsolateInterval. It does not isolate anything: the download is
// decided when it completes.
func (g *Gate) tempExecRefused(key cacheKey, path string, st *unix.Stat_t, pid int) {
	if !g.firstInInterval(g.execRefused, key) {
		return
	}
	fi := FileInfo{Path: path, Trigger: TriggerExec, Dev: st.Dev, Ino: st.Ino, Size: st.Size,
		Mode: fileMode(st.Mode), UID: st.Uid, Ctime: time.Unix(st.Ctim.Unix()), Mtime: time.Unix(st.Mtim.Unix()),
		PID: pid, Program: exeOf(pid)}
	v := Verdict{Action: ActionDeny, Reason: "an in-progress download is never executed"}
	g.log.Info("gate: execution of an in-progress download refused", "path", path, "pid", pid, "program", fi.Program)
	g.cfg.Sink.Notify(Event{Kind: EventDenied, Time: time.Now(), File: fi, Verdict: v,
		Message: fmt.Sprintf("%s was not executed: it is an in-progress download", filepath.Base(path))})
}

// recordRefuses reports whether the file open as fd carries an Isolator record whose
// verdict refuses opens.
func recordRefuses(fd int) bool {
	v, _ := fgetxattr(fd, XattrVerdict)
	a := Action(v)
	return a.Valid() && a != ActionTrust
}

// decide asks the Decider for fi and answers fd before the deadline counted from start.
// The semaphore slot taken by handle is released when the Decider returns.
//
// prev is the state of the inode when it has a verdict refusing opens that does not answer
// this version by itself: a new version with the content prev was decided on (same size
// and SHA-256) keeps the verdict without asking the Decider; otherwise the Decider decides,
// with the origins observed when the inode was first decided. While the content is not
// known to differ from the untrusted one, a failure or a late answer denies the open
// whatever Fallback says.
func (g *Gate) decide(fd int, key cacheKey, fi FileInfo, start time.Time, prev *untrusted, gen uint64) {
	if fi.Program == "" {
		fi.Program = exeOf(fi.PID)
	}
	if prev != nil {
		fi.OriginURL, fi.ReferrerURL, fi.ObservedOrigin = prev.origins.url, prev.origins.referrer, prev.origins.observed
	} else {
		var err error
		if fi.OriginURL, err = fgetxattr(fd, XattrOriginURL); err == nil {
			fi.ReferrerURL, err = fgetxattr(fd, XattrReferrerURL)
		}
		if err != nil {
			g.log.Debug("gate: read origin", "path", fi.Path, "err", err)
		}
		if fi.ObservedOrigin, _ = fgetxattr(fd, XattrOrigin); fi.ObservedOrigin == "" {
			fi.ObservedOrigin = "dir:" + filepath.Dir(fi.Path)
		}
	}
	o := origins{url: fi.OriginURL, referrer: fi.ReferrerURL, observed: fi.ObservedOrigin}
	// changed: the content is known not to be the one prev was decided on.
	var changed atomic.Bool
	changed.Store(prev != nil && prev.size != key.size)
	mayTrust := func() bool { return prev == nil || changed.Load() }
	type result struct {
		v     Verdict
		err   error
		known bool     // prev's verdict, for the same content
		key   cacheKey // the version answered: key, or the one the record written made
	}
	// answered is closed once fd is answered (and a trusted file given its ignore mark,
	// which checks the version): a record written later changes the ctime.
	answered := make(chan struct{})
	defer close(answered)
	// The Decider reads the file through its own duplicate of the event's descriptor:
	// fd is answered and closed at the deadline, while a late decision may still read.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		<-g.sem
		g.fallback(fd, "dup", err, mayTrust())
		return
	}
	dfi := fi
	dfi.File = os.NewFile(uintptr(dup), fi.Path)
	done := make(chan result, 1)
	dctx, cancel := context.WithDeadline(g.ctx, start.Add(g.cfg.Deadline))
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer func() { <-g.sem }()
		defer cancel()
		defer dfi.File.Close()
		if prev != nil && !prev.stale && prev.sum != "" && !changed.Load() {
			// Renamed, linked, moved or chmod-ed: the same bytes keep their verdict. The
			// hash may outlast the deadline (the open is denied meanwhile); its result
			// still serves the next open.
			sum, err := hashFile(g.ctx, dfi.File)
			if err == nil && sum == prev.sum && sameVersion(dup, key) {
				g.recognised(key, fi.Path, prev.v)
				done <- result{v: prev.v, known: true, key: key}
				return
			}
			if err == nil {
				changed.Store(true)
			}
		}
		v, err := g.cfg.Decider.Decide(dctx, dfi)
		if err != nil {
			done <- result{err: err}
			return
		}
		if !v.Action.Valid() {
			v.Action = ActionDeny
		}
		g.store(key, v, gen) // a late verdict still serves the next open
		// The hash of the content keeps an untrusted one recognised under another name,
		// and goes into the record on the file. A small file is hashed before the answer.
		sum := v.SHA256
		if sum == "" && key.size <= inlineHashMax {
			if s, err := hashFile(dctx, dfi.File); err == nil && sameVersion(dup, key) {
				sum = s
			}
		}
		g.remember(dup, key, fi.Path, v, sum, o, gen)
		rkey := key
		if sum != "" {
			rkey = g.record(dup, key, fi, v, sum, gen)
		}
		done <- result{v: v, key: rkey}
		if sum != "" {
			return
		}
		s, err := hashFile(g.ctx, dfi.File)
		if err != nil || !sameVersion(dup, key) {
			return
		}
		if v.Action != ActionTrust {
			g.setSum(key, s)
		}
		<-answered
		g.record(dup, key, fi, v, s, gen)
	}()
	timer := time.NewTimer(time.Until(start.Add(g.cfg.Deadline)))
	defer timer.Stop()
	select {
	case r := <-done:
		if r.err != nil {
			g.fallback(fd, "decide", r.err, mayTrust())
			return
		}
		if r.v.Action == ActionTrust {
			g.ignoreOpens(fd, r.key, gen)
			g.respond(fd, true)
			return
		}
		if r.known {
			g.hits.Add(1)
		}
		g.respond(fd, false)
		g.afterDeny(r.key, fi, r.v)
	case <-timer.C:
		g.fallback(fd, "decide", context.DeadlineExceeded, mayTrust())
	}
}

// firstInInterval reports whether key was not seen in last (one of the Gate's maps guarded
// by mu) within IsolateInterval, and records it as seen now. last is cleared when it
// reaches maxCacheEntries.
func (g *Gate) firstInInterval(last map[cacheKey]time.Time, key cacheKey) bool {
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if t, ok := last[key]; ok && now.Sub(t) < g.cfg.IsolateInterval {
		return false
	}
	if len(last) >= maxCacheEntries {
		clear(last)
	}
	last[key] = now
	return true
}

// afterDeny starts the isolation (for ActionIsolate) and tells the owner, at most once per
// file per IsolateInterval.
func (g *Gate) afterDeny(key cacheKey, fi FileInfo, v Verdict) {
	if !g.firstInInterval(g.isolated, key) {
		return
	}
	msg := fmt.Sprintf("%s was not opened on the host: %s (%s)", filepath.Base(fi.Path), v.Action, v.Reason)
	if v.Action == ActionIsolate {
		msg = fmt.Sprintf("%s is untrusted: opening it in a micro VM (%s)", filepath.Base(fi.Path), v.Reason)
		g.cfg.Sink.Isolate(g.ctx, fi, v)
	}
	g.log.Info("gate: open denied", "path", fi.Path, "pid", fi.PID, "program", fi.Program,
		"action", v.Action, "rule", v.Rule)
	g.cfg.Sink.Notify(Event{Kind: EventDenied, Time: time.Now(), File: fi, Verdict: v, Message: msg})
}

func (g *Gate) lookup(key cacheKey, now time.Time) (Verdict, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	e, ok := g.cache[key]
	if !ok || now.After(e.expires) {
		return Verdict{}, false
	}
	return e.v, true
}

// store caches the verdict v decided for key in the generation gen, unless the Gate was
// invalidated since.
func (g *Gate) store(key cacheKey, v Verdict, gen uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.storeLocked(key, v, gen)
}

func (g *Gate) storeLocked(key cacheKey, v Verdict, gen uint64) {
	if g.gen.Load() != gen {
		return
	}
	if len(g.cache) >= maxCacheEntries {
		clear(g.cache)
	}
	g.cache[key] = cacheEntry{v: v, expires: time.Now().Add(g.cfg.CacheTTL)}
}

// inlineHashMax is the largest file the Gate hashes before answering the open it decided,
// to write the record with the answer; larger ones are hashed and recorded afterwards.
const inlineHashMax = 4 << 20

// record writes the verdict v decided for the version key of the file open as fd on the
// file, as the Watcher does (see Record), so that a Watcher finds it decided after a
// restart. The attributes change the ctime: the new version keeps the verdict, in the
// cache and in an untrusted inode's state, and is returned (key when nothing was written).
// gen is the generation v was decided in.
func (g *Gate) record(fd int, key cacheKey, fi FileInfo, v Verdict, sum string, gen uint64) cacheKey {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || (cacheKey{dev: st.Dev, ino: st.Ino, ctime: st.Ctim.Nano(), size: st.Size}) != key {
		return key
	}
	rec := Record{Origin: fi.Origin(), Verdict: v.Action, Rule: v.Rule, Time: time.Now(), SHA256: sum}
	if err := writeRecordFd(fd, fi.Path, rec); err != nil {
		if !g.recordWarned.Swap(true) {
			g.log.Warn("gate: cannot record verdicts as extended attributes", "path", fi.Path, "err", err)
		}
		return key
	}
	var after unix.Stat_t
	if unix.Fstat(fd, &after) != nil || after.Size != st.Size || after.Mtim != st.Mtim {
		return key // written meanwhile: a new content, decided afresh
	}
	nk := cacheKey{dev: after.Dev, ino: after.Ino, ctime: after.Ctim.Nano(), size: after.Size}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.storeLocked(nk, v, gen)
	if u := g.files[inodeKey{key.dev, key.ino}]; u != nil && u.v == v && u.ctime == key.ctime && u.size == key.size {
		u.ctime = nk.ctime
	}
	return nk
}

// fallback answers fd when no verdict could be had: with Fallback, or with a denial when
// mayTrust is false (the file is known untrusted and not known to have changed).
func (g *Gate) fallback(fd int, what string, err error, mayTrust bool) {
	g.fallbacks.Add(1)
	allow := mayTrust && g.cfg.Fallback == ActionTrust
	g.log.Warn("gate: answering with fallback", "fallback", g.cfg.Fallback, "allow", allow, "step", what, "err", err)
	g.respond(fd, allow)
}

// response is the answer written for an allowed or denied event: a denial asks the kernel
// to audit it (FAN_AUDIT) when the group was created with FAN_ENABLE_AUDIT; the kernel
// refuses FAN_AUDIT otherwise.
func (g *Gate) response(allow bool) uint32 {
	switch {
	case allow:
		return unix.FAN_ALLOW
	case g.audit:
		return unix.FAN_DENY | unix.FAN_AUDIT
	}
	return unix.FAN_DENY
}

// respond answers the permission event of fd and closes fd.
func (g *Gate) respond(fd int, allow bool) {
	defer unix.Close(fd)
	if allow {
		g.allowed.Add(1)
	} else {
		g.denied.Add(1)
	}
	var b [8]byte
	binary.NativeEndian.PutUint32(b[0:4], uint32(int32(fd)))
	binary.NativeEndian.PutUint32(b[4:8], g.response(allow))
	if _, err := g.f.Write(b[:]); err != nil && !errors.Is(err, os.ErrClosed) {
		g.log.Error("gate: answer fanotify event", "err", err)
	}
}

// isTempName reports whether the base name of p marks an in-progress download.
func isTempName(p string, suffixes, prefixes []string) bool {
	base := filepath.Base(p)
	for _, s := range suffixes {
		if len(base) >= len(s) && base[len(base)-len(s):] == s {
			return true
		}
	}
	for _, s := range prefixes {
		if len(base) >= len(s) && base[:len(s)] == s {
			return true
		}
	}
	return false
}
