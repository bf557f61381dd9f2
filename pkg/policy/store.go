package policy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDir is where administrators put policy files.
const DefaultDir = "/etc/isolator/policies.d"

// DefaultDebounce is how long Watch waits after the last change in the directory before
// reloading, so that an editor's burst of events leads to one reload.
const DefaultDebounce = 150 * time.Millisecond

// ShippedLabel names the embedded shipped defaults in messages and Decision.File.
const ShippedLabel = "<shipped>"

// StoreConfig configures a Store.
type StoreConfig struct {
	// Dir is the administrator's policy directory on the host, e.g. DefaultDir; "" for
	// none. A missing directory counts as empty.
	Dir string
	// Defaults are the shipped default policy files (policies.FS), layered under Dir as
	// LoadConfig.Sources describes; nil for none.
	Defaults fs.FS
	// OnReload, if set, is called after every load attempt, including the first in
	// NewStore, in order, from the goroutine that loaded. It must not block for long. The
	// one exception is the check Watch makes when it starts (for changes made since
	// NewStore): it is not reported when it finds exactly what the attempt before it found
	// (no new policy, and the same error or none), so a rejected policy is reported once.
	OnReload func(ReloadResult)
	// Debounce overrides DefaultDebounce.
	Debounce time.Duration
	// Cache is shared by every policy the store loads; nil creates one.
	Cache *FactCache
}

// ReloadResult reports one load attempt.
type ReloadResult struct {
	Time     time.Time
	Duration time.Duration // time spent loading and compiling
	Version  string        // version of the policy in force after the attempt
	Previous string        // version in force before it
	Changed  bool          // a new policy was installed
	Err      error         // why the attempt failed (a *ValidationErrors for a bad policy); the previous policy stays
	Warnings []Issue       // warnings of the new policy
}

// Store holds the policy in force. Current is a single atomic load, so an evaluation
// always sees one whole policy; a reload compiles the new policy completely before
// swapping it in, and an invalid policy never replaces a valid one. Until a valid policy
// has been loaded, Current is a fail-closed policy that denies everything.
type Store struct {
	cfg StoreConfig
	cur atomic.Pointer[Policy]

	mu        sync.Mutex   // serializes reloads
	last      ReloadResult // guarded by mu
	listFiles []string     // guarded by mu: host paths of the list files the last load named

	loaded chan struct{} // tells Watch that a load attempt was made
}

// NewStore returns a Store holding the policy loaded from cfg. A policy that fails to load
// is not an error here (the daemon must still start, fail-closed): the outcome is passed
// to OnReload and available from Last. NewStore fails only if cfg names no policy source.
func NewStore(cfg StoreConfig) (*Store, error) {
	if cfg.Dir == "" && cfg.Defaults == nil {
		return nil, errors.New("policy: store needs a policy directory or shipped defaults")
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.Cache == nil {
		cfg.Cache = NewFactCache(0)
	}
	s := &Store{cfg: cfg, loaded: make(chan struct{}, 1)}
	s.cur.Store(FailClosed("no policy loaded yet"))
	s.Reload()
	return s, nil
}

// Current returns the policy in force. It never returns nil.
func (s *Store) Current() *Policy { return s.cur.Load() }

// Last returns the result of the latest load attempt.
func (s *Store) Last() ReloadResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Sources returns the policy sources the store loads, shipped defaults first.
func (s *Store) Sources() []Source {
	srcs, _ := s.sources()
	return srcs
}

// sources returns Sources and the index of the policy directory among them, or -1.
func (s *Store) sources() ([]Source, int) {
	var srcs []Source
	if s.cfg.Defaults != nil {
		srcs = append(srcs, Source{FS: s.cfg.Defaults, Dir: ".", Label: ShippedLabel})
	}
	if s.cfg.Dir != "" {
		if _, err := os.Stat(s.cfg.Dir); !errors.Is(err, fs.ErrNotExist) {
			srcs = append(srcs, Source{FS: os.DirFS(s.cfg.Dir), Dir: ".", Label: s.cfg.Dir})
			return srcs, len(srcs) - 1
		}
	}
	return srcs, -1
}

// Reload loads the policy now (the daemon calls it on SIGHUP) and installs it if it is
// valid and differs from the one in force.
func (s *Store) Reload() ReloadResult { return s.reload(false) }

// reload loads the policy; quiet leaves out OnReload when the outcome repeats the last one.
func (s *Store) reload(quiet bool) ReloadResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()
	prev := s.cur.Load()
	r := ReloadResult{Time: start, Previous: prev.Version(), Version: prev.Version()}
	srcs, dirIdx := s.sources()
	p, lists, err := load(LoadConfig{Sources: srcs, Cache: s.cfg.Cache})
	r.Duration = time.Since(start)
	s.listFiles = s.listFiles[:0:0]
	for _, l := range lists {
		if l.src == dirIdx {
			s.listFiles = append(s.listFiles, filepath.Join(s.cfg.Dir, filepath.FromSlash(l.name)))
		}
	}
	select {
	case s.loaded <- struct{}{}:
	default: // Watch has not yet seen the previous attempt; it looks at the latest
	}
	if err != nil {
		r.Err = err
	} else {
		r.Warnings = p.Warnings()
		if p.Version() != prev.Version() {
			s.cur.Store(p)
			r.Version, r.Changed = p.Version(), true
		}
	}
	repeat := !r.Changed && errText(r.Err) == errText(s.last.Err)
	s.last = r
	if s.cfg.OnReload != nil && !(quiet && repeat) {
		s.cfg.OnReload(r)
	}
	return r
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// watchedLists returns the host paths of the list files the last load named.
func (s *Store) watchedLists() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listFiles
}

// Watch reloads the policy whenever the directory changes, until ctx is done; then it
// returns nil. It notices files written in place, editors that write a new file and rename
// it over the old one (vim, sed -i), a symlink swapped to point at a new directory
// (configuration management), the directory being created (also with its parents),
// removed or replaced, edits to the targets of symlinked policy files, and edits to the
// SHA-256 list files the last load named (in subdirectories, or symlinks, too). Changes
// are picked up DefaultDebounce after the last event. Watch returns an error only if it
// cannot watch at all.
func (s *Store) Watch(ctx context.Context) error {
	if s.cfg.Dir == "" {
		<-ctx.Done()
		return nil
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy: watching %s: %w", s.cfg.Dir, err)
	}
	defer w.Close()
	dir, err := filepath.Abs(s.cfg.Dir)
	if err != nil {
		return fmt.Errorf("policy: watching %s: %w", s.cfg.Dir, err)
	}
	watched := map[string]bool{}
	var want watchSet
	// resync watches what the policy now depends on, and reports whether that changed:
	// then an event about a change made since the last load may have been missed (no
	// watch yet, or ignored as not mattering). The directory's parent is watched for the
	// directory being created, removed or swapped; when the parent does not exist either,
	// its nearest existing ancestor is, for the next directory down.
	resync := func() (changed bool) {
		prev := want
		want = watchDirs(dir, s.watchedLists())
		want.add(filepath.Dir(dir), filepath.Base(dir))
		changed = !maps.EqualFunc(prev, want, maps.Equal)
		for d := range watched {
			if _, ok := want[d]; !ok {
				_ = w.Remove(d) // may already be gone with the directory
				delete(watched, d)
			}
		}
		for d := range want {
			if !watched[d] && w.Add(d) == nil {
				watched[d], changed = true, true
			}
		}
		return changed
	}
	resync()
	// A change may have happened between the load in NewStore and the first watch.
	s.reload(true)

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	// A reload scheduled only because what is watched changed is quiet (see
	// StoreConfig.OnReload): it finds nothing new unless a change came before the watch.
	pending, quiet := false, false
	schedule := func(q bool) {
		quiet = q && (quiet || !pending)
		pending = true
		timer.Reset(s.cfg.Debounce)
	}
	for {
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if watched[ev.Name] && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				// A watched directory is gone from its path: watch the path afresh
				// when it is there again.
				_ = w.Remove(ev.Name)
				delete(watched, ev.Name)
			}
			if want.matters(ev.Name) {
				schedule(false)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				schedule(false) // events were lost: reload to be sure
			}
		case <-s.loaded:
			// A load, by this loop or by Reload, may depend on other files than before.
			if resync() {
				schedule(true)
			}
		case <-timer.C:
			pending = false
			resync()
			s.reload(quiet)
		}
	}
}

// watchSet maps each directory to watch to the names in it whose changes matter; nil
// means every name.
type watchSet map[string]map[string]bool

// all watches every name in dir.
func (ws watchSet) all(dir string) { ws[dir] = nil }

// add watches name in dir. When dir does not exist, it watches for the creation of dir
// in the nearest ancestor that does.
func (ws watchSet) add(dir, name string) {
	for {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			break
		}
		up := filepath.Dir(dir)
		if up == dir {
			return
		}
		dir, name = up, filepath.Base(dir)
	}
	names, ok := ws[dir]
	if ok && names == nil {
		return // all names already
	}
	if names == nil {
		names = map[string]bool{}
		ws[dir] = names
	}
	names[name] = true
}

// file watches the file p: its name in its directory and, if it is a symlink, every link
// on the way to its target. Each directory is also watched by its resolved path, the
// name under which events may come when it is reached through a symlink.
func (ws watchSet) file(p string) {
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	for range 40 { // as the kernel's limit on symlinks followed
		d, base := filepath.Dir(p), filepath.Base(p)
		ws.add(d, base)
		if rd, err := filepath.EvalSymlinks(d); err == nil && rd != d {
			ws.add(rd, base)
			d = rd
		}
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			return
		}
		target, err := os.Readlink(p)
		if err != nil {
			return
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(d, target)
		}
		p = target
	}
}

// matters reports whether an event about the path name can change the policy.
func (ws watchSet) matters(name string) bool {
	if names, ok := ws[filepath.Dir(name)]; ok && (names == nil || names[filepath.Base(name)]) {
		return true
	}
	_, ok := ws[name] // a watched directory itself was removed or moved
	return ok
}

// watchDirs returns what to watch for changes to the policy in dir: dir itself, the
// directory it resolves to if it is a symlink, the targets of symlinked policy files, and
// the list files (host paths) the last load named.
func watchDirs(dir string, lists []string) watchSet {
	out := watchSet{}
	for _, l := range lists {
		out.file(l)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return out
	}
	out.all(dir)
	if target, err := filepath.EvalSymlinks(dir); err == nil {
		out.all(target)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, e := range ents {
		if e.Type()&fs.ModeSymlink == 0 || !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		out.file(filepath.Join(dir, e.Name()))
	}
	return out
}
