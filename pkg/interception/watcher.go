package interception

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
)

// Defaults of WatcherConfig.
const (
	DefaultSettle        = 2 * time.Second
	DefaultTempIdle      = 5 * time.Minute
	DefaultDecideTimeout = 30 * time.Second
	defaultWorkers       = 2
	maxRemembered        = 1 << 16
)

// DefaultTempSuffixes are the name suffixes of files that are still being downloaded:
// Chromium's .crdownload, Firefox's .part, Safari's .download and the .partial of others.
var DefaultTempSuffixes = []string{".crdownload", ".part", ".download", ".partial"}

// DefaultTempPrefixes are the name prefixes of Chromium's hidden temporary files.
var DefaultTempPrefixes = []string{".com.google.Chrome.", ".org.chromium.Chromium."}

// ErrWatchLimit is wrapped by the error reported when inotify refuses a watch because
// fs.inotify.max_user_watches is exhausted.
var ErrWatchLimit = errors.New("inotify watch limit reached (raise fs.inotify.max_user_watches)")

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	// Dirs are the download directories, watched recursively; see DefaultDownloadDirs
	// for the per-user XDG defaults. Symbolic links are resolved; a system directory
	// (IsSystemDir) is refused, and so is a directory that cannot be watched. It may be
	// empty, to watch nothing (the owner logs so).
	Dirs    []string
	Decider Decider // evaluates the policy; required
	Sink    Sink    // receives isolation requests and events; required

	// Settle is how long a file written in place must stay unwritten before it counts as
	// complete. Files renamed into place from a temporary name settle the same way.
	// Zero selects DefaultSettle.
	Settle time.Duration
	// DecideTimeout bounds one Decider call. Zero selects DefaultDecideTimeout.
	DecideTimeout time.Duration
	// TempSuffixes and TempPrefixes name in-progress downloads. They are decided only
	// when they stay unwritten for TempIdle (an abandoned or stalled download), once;
	// normally the browser renames them first and the final name is decided. Nil selects
	// DefaultTempSuffixes and DefaultTempPrefixes.
	TempSuffixes []string
	TempPrefixes []string
	// TempIdle is how long a file with a temporary name must stay unwritten before it is
	// decided. Zero selects DefaultTempIdle.
	TempIdle time.Duration
	// Workers is how many files are hashed and decided at once. Zero selects 2.
	Workers int
	// SkipExisting leaves files that are already in the directories when Run starts
	// undecided; by default those without an up-to-date record are decided.
	SkipExisting bool
	// NoWriterLookup disables the /proc scan that finds the program writing a new file.
	NoWriterLookup bool
	// OnDir, if set, is called with every directory the Watcher starts watching, for
	// example to mark it in a Gate. It runs on the Watcher's event goroutine.
	OnDir func(dir string)
	// Gate, if set, is handed every verdict the Watcher records, for the version of the
	// file it decided: an untrusted file gets its own mark at once (so it stays gated
	// when it is moved or linked out of the directories before anyone opened it), and the
	// first open is answered from the verdict instead of asking the Decider again.
	Gate *Gate
	// Logger receives diagnostics. Nil discards them.
	Logger *slog.Logger
}

// Watcher recognises completed downloads in a set of directories and decides each one once.
type Watcher struct {
	cfg  WatcherConfig
	fsw  *fsnotify.Watcher
	work chan string
	done chan struct{}
	log  *slog.Logger

	mu        sync.Mutex
	roots     []Dir                  // guarded by mu; the download directories, resolved and checked
	pending   map[string]*time.Timer // guarded by mu; settle timers by path
	queued    map[string]int         // guarded by mu; paths whose timer fired, waiting for a worker
	inflight  map[string]bool        // guarded by mu; paths being processed
	again     map[string]bool        // guarded by mu; paths that changed while in flight
	watched   map[string]fileID      // guarded by mu; directories watched, by the path they were watched under
	watchedAs map[fileID]string      // guarded by mu; the path each watched directory was watched under
	writers   map[string]writer      // guarded by mu; writer seen when the path was created
	decided   map[fileID]decided     // guarded by mu; what was decided in this run
	warnLimit bool                   // guarded by mu; the watch-limit event was sent
	noXattr   bool                   // guarded by mu; xattr failure was logged
	lookupsAt time.Time              // guarded by mu; start of the current writer-lookup second
	lookups   int                    // guarded by mu; writer lookups in that second
}

type writer struct {
	pid     int
	program string
}

type fileID struct{ dev, ino uint64 }

type decided struct {
	size  int64
	mtime unix.Timespec
}

// NewWatcher validates cfg and starts watching its directories. Events are only processed
// once Run is called; call Close if Run is never called.
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	if cfg.Decider == nil || cfg.Sink == nil {
		return nil, errors.New("new watcher: Decider and Sink are required")
	}
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultSettle
	}
	if cfg.DecideTimeout <= 0 {
		cfg.DecideTimeout = DefaultDecideTimeout
	}
	if cfg.TempSuffixes == nil {
		cfg.TempSuffixes = DefaultTempSuffixes
	}
	if cfg.TempPrefixes == nil {
		cfg.TempPrefixes = DefaultTempPrefixes
	}
	if cfg.TempIdle <= 0 {
		cfg.TempIdle = DefaultTempIdle
	}
	if cfg.Workers <= 0 {
		cfg.Workers = defaultWorkers
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dirs := make([]Dir, 0, len(cfg.Dirs))
	for _, d := range cfg.Dirs {
		root, err := resolveRoot(d)
		if err != nil {
			return nil, fmt.Errorf("new watcher: watch %s: %w", d, err)
		}
		if root.Path != filepath.Clean(d) {
			log.Info("download directory resolved", "dir", d, "resolved", root.Path)
		}
		dirs = append(dirs, root)
	}
	cfg.Dirs = nil // the roots are w.roots, which AddDir extends
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("new watcher: %w", err)
	}
	w := &Watcher{
		cfg:       cfg,
		roots:     dirs,
		fsw:       fsw,
		work:      make(chan string, 1024),
		done:      make(chan struct{}),
		log:       log,
		pending:   make(map[string]*time.Timer),
		queued:    make(map[string]int),
		inflight:  make(map[string]bool),
		again:     make(map[string]bool),
		watched:   make(map[string]fileID),
		watchedAs: make(map[fileID]string),
		writers:   make(map[string]writer),
		decided:   make(map[fileID]decided),
	}
	for _, d := range dirs {
		if err := w.addRoot(d, !cfg.SkipExisting); err != nil {
			fsw.Close()
			return nil, fmt.Errorf("new watcher: %w", err)
		}
	}
	if cfg.Gate != nil {
		cfg.Gate.watcher.Store(w)
	}
	return w, nil
}

// Dirs returns the download directories, resolved.
func (w *Watcher) Dirs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	dirs := make([]string, len(w.roots))
	for i, d := range w.roots {
		dirs[i] = d.Path
	}
	return dirs
}

// AddDir adds a download directory while the Watcher runs (a user's directory that
// appeared later, as DownloadDir checked it): its tree is watched (through OnDir, marked)
// from a descriptor of d checked to be the directory d describes (see Dir), and its files
// are scheduled unless SkipExisting. A directory watched already is left alone; one that
// was removed and made again is watched again.
func (w *Watcher) AddDir(d Dir) error {
	if w.Watching(d) {
		return nil
	}
	if err := w.addRoot(d, !w.cfg.SkipExisting); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if i := slices.IndexFunc(w.roots, func(r Dir) bool { return r.Path == d.Path }); i >= 0 {
		w.roots[i] = d // made again: the old directory is gone
	} else {
		w.roots = append(w.roots, d)
	}
	return nil
}

// Watching reports whether the directory d is watched, under its path.
func (w *Watcher) Watching(d Dir) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	id, ok := w.watched[d.Path]
	return ok && id == fileID{dev: d.Dev, ino: d.Ino}
}

// Close releases the inotify instance. It is called by Run on return.
func (w *Watcher) Close() error {
	if w.cfg.Gate != nil {
		w.cfg.Gate.watcher.CompareAndSwap(w, nil)
	}
	w.mu.Lock()
	for p, t := range w.pending {
		t.Stop()
		delete(w.pending, p)
	}
	w.mu.Unlock()
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	return w.fsw.Close()
}

// Run processes events until ctx is cancelled, then waits for files being decided, closes
// the Watcher and returns nil. It returns an error if the inotify instance fails.
func (w *Watcher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range w.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case p := <-w.work:
					w.process(ctx, p)
				}
			}
		}()
	}
	err := w.loop(ctx)
	w.Close()
	wg.Wait()
	return err
}

func (w *Watcher) loop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return errors.New("watcher: inotify closed")
			}
			w.handle(ev)
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return errors.New("watcher: inotify closed")
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				w.log.Warn("inotify queue overflow; rescanning", "dirs", w.Dirs())
				w.cfg.Sink.Notify(Event{Kind: EventOverflow, Time: time.Now(),
					Message: "inotify queue overflowed; download directories rescanned"})
				w.rescan()
				continue
			}
			w.log.Error("inotify", "err", err)
			w.cfg.Sink.Notify(Event{Kind: EventError, Time: time.Now(), Message: "inotify error", Err: err})
		}
	}
}

// rescan walks every directory again, adding missing watches and scheduling every file;
// files with an up-to-date record are skipped cheaply by process.
func (w *Watcher) rescan() {
	w.mu.Lock()
	roots := slices.Clone(w.roots)
	w.mu.Unlock()
	for _, d := range roots {
		if err := w.addRoot(d, true); err != nil {
			w.log.Error("rescan", "dir", d.Path, "err", err)
		}
	}
}

func (w *Watcher) handle(ev fsnotify.Event) {
	p := ev.Name
	switch {
	case ev.Has(fsnotify.Create):
		st, err := os.Lstat(p)
		if err != nil {
			return // already gone
		}
		if st.IsDir() {
			if err := w.addPath(p); err != nil {
				w.log.Error("watch new directory", "dir", p, "err", err)
			}
			return
		}
		if !st.Mode().IsRegular() {
			return
		}
		if w.lookupAllowed() {
			if pid, exe := findWriter(p); pid != 0 {
				w.mu.Lock()
				if len(w.writers) >= maxRemembered {
					clear(w.writers)
				}
				w.writers[p] = writer{pid: pid, program: exe}
				w.mu.Unlock()
			}
		}
		w.schedule(p)
	case ev.Has(fsnotify.Write):
		w.schedule(p)
	case ev.Has(fsnotify.Remove), ev.Has(fsnotify.Rename):
		w.mu.Lock()
		if t, ok := w.pending[p]; ok {
			t.Stop()
			delete(w.pending, p)
		}
		delete(w.writers, p)
		w.mu.Unlock()
		w.unwatchTree(p)
	}
	// Chmod (IN_ATTRIB) is ignored: it is what our own attribute writes produce.
}

// unwatchTree drops the watches of dir and of the directories below it, if dir was
// watched, after it was renamed, moved or removed. fsnotify keeps naming the events of a
// moved directory by its old path, and removes its watch when it reads the kernel's
// IN_MOVE_SELF, even when the directory was watched again under its new name meanwhile
// (inotify gives the same inode the same watch): files written there would never be seen.
// Removing the watches here, before the Create event of the new name is handled, makes
// that event watch the directory and its subdirectories afresh, under their new paths,
// and schedule the files already in them; the stale IN_MOVE_SELF then names no watch.
func (w *Watcher) unwatchTree(dir string) {
	w.mu.Lock()
	if _, ok := w.watched[dir]; !ok {
		w.mu.Unlock()
		return
	}
	var gone []string
	for p, id := range w.watched {
		if p == dir || strings.HasPrefix(p, dir+string(filepath.Separator)) {
			gone = append(gone, p)
			delete(w.watched, p)
			if w.watchedAs[id] == p {
				delete(w.watchedAs, id)
			}
		}
	}
	w.mu.Unlock()
	for _, p := range gone {
		// The kernel removed the watch of a deleted directory already.
		if err := w.fsw.Remove(p); err != nil && !errors.Is(err, fsnotify.ErrNonExistentWatch) {
			w.log.Debug("unwatch moved directory", "dir", p, "err", err)
		}
	}
}

// maxLookupsPerSecond bounds the /proc scans for writers, so that a burst of new files
// (an archive extracted into Downloads) does not slow the event loop down.
const maxLookupsPerSecond = 20

func (w *Watcher) lookupAllowed() bool {
	if w.cfg.NoWriterLookup {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if now := time.Now(); now.Sub(w.lookupsAt) >= time.Second {
		w.lookupsAt, w.lookups = now, 0
	}
	w.lookups++
	return w.lookups <= maxLookupsPerSecond
}

// isTemp reports whether the base name of p is an in-progress download.
func (w *Watcher) isTemp(p string) bool {
	base := filepath.Base(p)
	for _, s := range w.cfg.TempSuffixes {
		if strings.HasSuffix(base, s) {
			return true
		}
	}
	for _, s := range w.cfg.TempPrefixes {
		if strings.HasPrefix(base, s) {
			return true
		}
	}
	return false
}

// schedule (re)starts the settle timer of p: Settle, or TempIdle for a temporary name.
func (w *Watcher) schedule(p string) {
	d := w.cfg.Settle
	if w.isTemp(p) {
		d = w.cfg.TempIdle
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if t, ok := w.pending[p]; ok && t.Stop() {
		t.Reset(d)
		return
	}
	// A new timer, or the old one fired meanwhile: its callback hands p to a worker.
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		w.mu.Lock()
		if w.pending[p] == t {
			delete(w.pending, p)
		}
		w.queued[p]++
		w.mu.Unlock()
		select {
		case w.work <- p:
		case <-w.done:
			w.dequeue(p)
		}
	})
	w.pending[p] = t
}

func (w *Watcher) dequeue(p string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.queued[p]--; w.queued[p] <= 0 {
		delete(w.queued, p)
	}
}

// settling reports whether the Watcher is waiting for the file at p to stay unwritten, or
// deciding it: an open of it meanwhile is not decided by the Gate (see Gate.busy).
func (w *Watcher) settling(p string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.pending[p]
	return ok || w.queued[p] > 0 || w.inflight[p]
}

// addRoot watches the download directory d and the directories below it and, if
// scanFiles, schedules their files; d must still be the directory that was checked (see
// Dir).
func (w *Watcher) addRoot(d Dir, scanFiles bool) error {
	fd, err := d.open()
	if err != nil {
		return fmt.Errorf("watch %s: %w", d.Path, err)
	}
	defer unix.Close(fd)
	return w.addTree(fd, d.Path, scanFiles)
}

// addPath watches the new directory at p, reached without following a symbolic link, and
// the directories below it, and schedules their files.
func (w *Watcher) addPath(p string) error {
	fd, err := openDir(p)
	if err != nil {
		return fmt.Errorf("watch %s: %w", p, err)
	}
	defer unix.Close(fd)
	return w.addTree(fd, p, true)
}

// addTree watches the directory open as fd, named dir, and the directories below it (see
// walkDirs: each is opened from its parent's descriptor) and, if scanFiles, schedules
// their files. It fails unless dir itself ends up watched.
func (w *Watcher) addTree(fd int, dir string, scanFiles bool) error {
	full := false // the watch limit was reached: watch nothing more in this walk
	visit := func(fd int, p string) (bool, error) {
		if full {
			return false, nil
		}
		err := w.watchDir(fd, p)
		if errors.Is(err, unix.ENOSPC) {
			w.watchLimit(p, err)
			full = true
			return false, fmt.Errorf("watch %s: %w: %w", p, ErrWatchLimit, err)
		}
		if err != nil {
			if p != dir {
				w.log.Warn("directory not watched", "dir", p, "err", err)
			}
			return false, fmt.Errorf("watch %s: %w", p, err)
		}
		if w.cfg.OnDir != nil {
			w.cfg.OnDir(p)
		}
		return true, nil
	}
	var file func(string)
	if scanFiles {
		file = w.schedule
	}
	return walkDirs(fd, dir, visit, file)
}

// watchDir adds the inotify watch of the directory open as fd, named p. fsnotify names a
// watch's events by the path it was added with, so the watch is added by that path, which
// the kernel resolves again, following symbolic links: p may have been swapped for a
// symbolic link, or another directory renamed onto it, since fd was opened. So the watch
// is then checked to be on fd's directory: the kernel gives an inode one watch per
// inotify instance, and adding fd's directory again through /proc/self/fd/N makes no new
// watch (fsnotify knows none by that name) exactly when p's watch is on it. Otherwise both
// are removed and the error wraps ErrDirReplaced.
func (w *Watcher) watchDir(fd int, p string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	id := fileID{dev: st.Dev, ino: st.Ino}
	// fd's directory watched under another name (moved here, its Rename not handled
	// yet): that watch would answer the check below; drop it as unwatchTree does.
	w.mu.Lock()
	old, moved := w.watchedAs[id]
	moved = moved && old != p && w.watched[old] == id
	w.mu.Unlock()
	if moved {
		w.unwatchTree(old)
	}
	if err := w.fsw.Add(p); err != nil {
		return err
	}
	byFD := "/proc/self/fd/" + strconv.Itoa(fd)
	if err := w.fsw.Add(byFD); err != nil {
		w.fsw.Remove(p)
		return err
	}
	if err := w.fsw.Remove(byFD); !errors.Is(err, fsnotify.ErrNonExistentWatch) {
		w.fsw.Remove(p)
		return fmt.Errorf("%s: %w", p, ErrDirReplaced)
	}
	w.mu.Lock()
	w.watched[p] = id
	w.watchedAs[id] = p
	w.mu.Unlock()
	return nil
}

func (w *Watcher) watchLimit(dir string, err error) {
	// The limit that applies is the one of this user namespace; in the initial namespace
	// it is the same as fs.inotify.max_user_watches.
	limit := "unknown"
	for _, f := range []string{"/proc/sys/user/max_inotify_watches", "/proc/sys/fs/inotify/max_user_watches"} {
		if b, rerr := os.ReadFile(f); rerr == nil {
			limit = strings.TrimSpace(string(b))
			break
		}
	}
	werr := fmt.Errorf("watch %s: %w (fs.inotify.max_user_watches=%s): %w", dir, ErrWatchLimit, limit, err)
	w.log.Error("inotify watch limit", "err", werr)
	w.mu.Lock()
	first := !w.warnLimit
	w.warnLimit = true
	w.mu.Unlock()
	if first {
		w.cfg.Sink.Notify(Event{Kind: EventWatchLimit, Time: time.Now(),
			Message: "some download directories are not watched", Err: werr})
	}
}

// process decides p if it is a complete regular file without an up-to-date decision.
func (w *Watcher) process(ctx context.Context, p string) {
	w.mu.Lock()
	if w.queued[p]--; w.queued[p] <= 0 {
		delete(w.queued, p)
	}
	if w.inflight[p] {
		w.again[p] = true
		w.mu.Unlock()
		return
	}
	w.inflight[p] = true
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		again := w.again[p]
		delete(w.again, p)
		w.mu.Unlock()
		if again {
			w.schedule(p)
		}
		// Only now: the Gate sees p settling throughout (see settling).
		w.mu.Lock()
		delete(w.inflight, p)
		w.mu.Unlock()
	}()
	if err := w.decide(ctx, p); err != nil && !errors.Is(err, context.Canceled) {
		w.log.Error("decide download", "path", p, "err", err)
		w.cfg.Sink.Notify(Event{Kind: EventError, Time: time.Now(), File: FileInfo{Path: p},
			Message: "download could not be decided", Err: err})
	}
}

func (w *Watcher) decide(ctx context.Context, p string) error {
	fd, err := openNoSymlinks(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return nil // renamed away, or a symlink (here or on the way): not ours to decide
		}
		return err
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size == 0 {
		return nil // nothing to decide (Firefox's empty placeholder, a fifo, ...)
	}
	for _, s := range []string{".part", ".crdownload"} {
		if _, err := os.Lstat(p + s); err == nil {
			return nil // a download to this name is still running; its rename will come
		}
	}
	id := fileID{dev: st.Dev, ino: st.Ino}
	now := decided{size: st.Size, mtime: st.Mtim}
	w.mu.Lock()
	prev, seen := w.decided[id]
	w.mu.Unlock()
	if seen && prev == now {
		return nil
	}
	rec, recErr := readRecord(func(name string) (string, error) { return fgetxattr(fd, name) })
	hasRec := recErr == nil && rec.Verdict.Valid() && rec.SHA256 != ""
	mtime := time.Unix(st.Mtim.Unix())
	if hasRec && mtime.Add(time.Second).Before(rec.Time) {
		w.remember(id, now) // decided in an earlier run and not written since
		return nil
	}

	sum, err := hashFile(ctx, f)
	if err != nil {
		return fmt.Errorf("hash %s: %w", p, err)
	}
	var st2 unix.Stat_t
	if err := unix.Fstat(fd, &st2); err != nil {
		return fmt.Errorf("stat %s: %w", p, err)
	}
	if st2.Size != st.Size || st2.Mtim != st.Mtim {
		w.schedule(p) // still being written: decide once it settles
		return nil
	}
	if hasRec && rec.SHA256 == sum {
		w.remember(id, now) // same content as already decided
		return nil
	}

	fi := FileInfo{
		Path:    p,
		Trigger: TriggerDownload,
		Dev:     st.Dev,
		Ino:     st.Ino,
		Size:    st.Size,
		Mode:    fileMode(st.Mode),
		UID:     st.Uid,
		Ctime:   time.Unix(st.Ctim.Unix()),
		Mtime:   time.Unix(st.Mtim.Unix()),
		SHA256:  sum,
	}
	if fi.OriginURL, err = fgetxattr(fd, XattrOriginURL); err != nil {
		return err
	}
	if fi.ReferrerURL, err = fgetxattr(fd, XattrReferrerURL); err != nil {
		return err
	}
	w.mu.Lock()
	wr := w.writers[p]
	delete(w.writers, p)
	w.mu.Unlock()
	fi.PID, fi.Program = wr.pid, wr.program
	fi.ObservedOrigin = "dir:" + filepath.Dir(p)
	if wr.program != "" {
		fi.ObservedOrigin += " prog:" + wr.program
	}

	var gen uint64 // the Gate's generation the verdict is decided in
	if w.cfg.Gate != nil {
		gen = w.cfg.Gate.gen.Load()
	}
	dctx, cancel := context.WithTimeout(ctx, w.cfg.DecideTimeout)
	dfi := fi
	dfi.File = f // decide on the file that was hashed, whatever p names now
	v, err := w.cfg.Decider.Decide(dctx, dfi)
	cancel()
	if err != nil {
		return fmt.Errorf("decide %s: %w", p, err)
	}
	if !v.Action.Valid() {
		v.Reason = fmt.Sprintf("unknown action %q treated as deny; %s", v.Action, v.Reason)
		v.Action = ActionDeny
	}
	rec = Record{Origin: fi.Origin(), Verdict: v.Action, Rule: v.Rule, Time: time.Now(), SHA256: sum}
	if err := writeRecordFd(fd, p, rec); err != nil {
		w.mu.Lock()
		first := !w.noXattr
		w.noXattr = true
		w.mu.Unlock()
		if first {
			w.log.Warn("cannot record verdicts as extended attributes", "path", p, "err", err)
		}
	}
	if w.cfg.Gate != nil {
		w.cfg.Gate.seed(fd, &st, fi, v, gen)
	}
	w.remember(id, now)
	w.log.Info("download decided", "path", p, "action", v.Action, "rule", v.Rule, "origin", fi.Origin())
	w.cfg.Sink.Notify(Event{Kind: EventDownload, Time: time.Now(), File: fi, Verdict: v,
		Message: fmt.Sprintf("%s: %s (%s)", filepath.Base(p), v.Action, v.Reason)})
	if v.Action == ActionIsolate {
		w.cfg.Sink.Isolate(ctx, fi, v)
	}
	return nil
}

func (w *Watcher) remember(id fileID, d decided) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.decided) >= maxRemembered {
		clear(w.decided)
	}
	w.decided[id] = d
}

// fileMode converts a stat mode to an fs.FileMode.
func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		mode |= fs.ModeSocket
	case unix.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		mode |= fs.ModeDevice
	}
	if m&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	return mode
}
