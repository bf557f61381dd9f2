package xdg

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// App is an installed, launchable application: its desktop entry and the program its
// Exec= line runs.
type App struct {
	Entry   *Entry
	Program string // absolute path of the Exec= program
	dir     int    // index of the applications directory it was found in
}

// Skipped is an application Find passed over, and why.
type Skipped struct {
	ID     string
	File   string // desktop file, "" if none was found
	Reason string
}

// Resolver answers which application opens a MIME type, from the mimeapps.list files,
// desktop entries and MIME database of one Env. It reads the mimeapps.list files and the
// MIME database when created, and applications directories and desktop files only as far
// as a lookup needs them. It is not safe for concurrent use.
type Resolver struct {
	env    Env
	db     *MIMEDB
	levels []level
	dirs   []*appDir
	loaded map[string]*loadedApp // by desktop file ID
}

// level is one step of the specification's precedence order: a configuration directory
// (mimeapps.list files only) or the applications directory of a data directory
// (mimeapps.list files and desktop files).
type level struct {
	lists []*mimeList // the desktop-specific lists, then mimeapps.list, then (legacy) defaults.list
	main  *mimeList   // the mimeapps.list, the only one whose associations count; nil if absent
	apps  int         // index in Resolver.dirs; -1 for a configuration directory
}

// mimeList is one parsed mimeapps.list, keys canonical MIME types.
type mimeList struct {
	path     string
	defaults map[string][]string
	added    map[string][]string
	removed  map[string][]string
}

// appDir is an applications directory: its desktop files by ID and its mimeinfo.cache.
type appDir struct {
	path  string
	ids   map[string]string // desktop file ID → path; nil until walked
	order []string          // the IDs, sorted
	cache map[string][]string
}

type loadedApp struct {
	app *App
	why string // why it cannot be used, "" if it can
}

// NewResolver prepares lookups in env.
func NewResolver(env Env) *Resolver {
	r := &Resolver{env: env, loaded: map[string]*loadedApp{}}
	data := env.dataDirs()
	r.db = LoadMIMEDB(data)
	listsIn := func(dir string, legacy bool) level {
		var l level
		for _, d := range env.Desktops {
			if ml := r.readList(filepath.Join(dir, d+"-mimeapps.list"), false); ml != nil {
				l.lists = append(l.lists, ml)
			}
		}
		if ml := r.readList(filepath.Join(dir, "mimeapps.list"), true); ml != nil {
			l.lists = append(l.lists, ml)
			l.main = ml
		}
		if legacy {
			if ml := r.readList(filepath.Join(dir, "defaults.list"), false); ml != nil {
				l.lists = append(l.lists, ml)
			}
		}
		return l
	}
	var config []string
	if env.ConfigHome != "" {
		config = append(config, env.ConfigHome)
	}
	for _, dir := range append(config, env.ConfigDirs...) {
		l := listsIn(dir, false)
		l.apps = -1
		r.levels = append(r.levels, l)
	}
	for _, dir := range data {
		apps := filepath.Join(dir, "applications")
		l := listsIn(apps, true)
		l.apps = len(r.dirs)
		r.dirs = append(r.dirs, &appDir{path: apps})
		r.levels = append(r.levels, l)
	}
	return r
}

// MIMEDB returns the MIME database of the resolver's data directories.
func (r *Resolver) MIMEDB() *MIMEDB { return r.db }

// readList reads a mimeapps.list (or defaults.list); only a mimeapps.list proper
// (associations) may add and remove associations. It returns nil if there is no file.
func (r *Resolver) readList(path string, associations bool) *mimeList {
	data, err := readSmallFile(path)
	if err != nil {
		return nil
	}
	return parseMimeList(data, path, associations, r.db.Canonical)
}

// parseMimeList parses a mimeapps.list. canonical maps its keys to canonical MIME types;
// invalid desktop file IDs are dropped.
func parseMimeList(data []byte, path string, associations bool, canonical func(string) string) *mimeList {
	kf := parseKeyFile(data)
	ml := &mimeList{path: path}
	group := func(name string) map[string][]string {
		// Sorted keys, so that two aliases of one type merge in a stable order.
		keys := make([]string, 0, len(kf.groups[name]))
		for k := range kf.groups[name] {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		m := idLists{}
		for _, k := range keys {
			m.add(canonical(k), splitList(kf.groups[name][k]))
		}
		return m.lists
	}
	ml.defaults = group("Default Applications")
	if associations {
		ml.added = group("Added Associations")
		ml.removed = group("Removed Associations")
	}
	return ml
}

// validID reports whether id can be a desktop file ID: a name ending in .desktop, with no
// path separator (subdirectories are spelled with '-') and nothing else odd.
func validID(id string) bool {
	return strings.HasSuffix(id, ".desktop") && len(id) > len(".desktop") && !strings.ContainsAny(id, "/\x00") && id[0] != '.'
}

// walk indexes the desktop files of the directory by ID: the path below it with '/'
// replaced by '-'. Symbolic links to files are followed, to directories not.
func (d *appDir) walk() {
	if d.ids != nil {
		return
	}
	d.ids = map[string]string{}
	filepath.WalkDir(d.path, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			if p == d.path {
				return err
			}
			return nil
		}
		rel, _ := filepath.Rel(d.path, p)
		if de.IsDir() {
			if strings.Count(rel, string(filepath.Separator)) >= 8 {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".desktop") {
			return nil
		}
		id := strings.ReplaceAll(rel, string(filepath.Separator), "-")
		if _, dup := d.ids[id]; !dup && validID(id) {
			d.ids[id] = p
			d.order = append(d.order, id)
		}
		return nil
	})
	sort.Strings(d.order)
}

// mimeCache returns the directory's mimeinfo.cache: type → desktop file IDs.
func (d *appDir) mimeCache(canonical func(string) string) map[string][]string {
	if d.cache != nil {
		return d.cache
	}
	d.cache = map[string][]string{}
	data, err := readSmallFile(filepath.Join(d.path, "mimeinfo.cache"))
	if err != nil {
		return d.cache
	}
	m := idLists{lists: d.cache}
	for k, v := range parseKeyFile(data).groups["MIME Cache"] {
		m.add(canonical(k), splitList(v))
	}
	return d.cache
}

// idLists collects desktop file IDs by MIME type: valid IDs only, each once per type, in
// the order added.
type idLists struct {
	lists map[string][]string
	seen  map[[2]string]bool
}

func (m *idLists) add(t string, ids []string) {
	if m.lists == nil {
		m.lists = map[string][]string{}
	}
	if m.seen == nil {
		m.seen = map[[2]string]bool{}
	}
	for _, id := range ids {
		if k := [2]string{t, id}; validID(id) && !m.seen[k] {
			m.seen[k] = true
			m.lists[t] = append(m.lists[t], id)
		}
	}
}

// resolve finds the desktop file of id: in the first applications directory, in
// precedence order, that has one. It returns the directory's index, or -1.
func (r *Resolver) resolve(id string) (int, string) {
	for i, d := range r.dirs {
		d.walk()
		if p, ok := d.ids[id]; ok {
			return i, p
		}
	}
	return -1, ""
}

// load reads and checks the desktop entry of id, once.
func (r *Resolver) load(id string) *loadedApp {
	if la, ok := r.loaded[id]; ok {
		return la
	}
	la := &loadedApp{}
	r.loaded[id] = la
	dir, path := r.resolve(id)
	if dir < 0 {
		la.why = "not installed (no desktop file)"
		return la
	}
	e, err := ReadEntry(path, id)
	if err != nil {
		la.app = &App{Entry: &Entry{ID: id, File: path}, dir: dir}
		la.why = fmt.Sprintf("unreadable: %v", err)
		return la
	}
	la.app = &App{Entry: e, dir: dir}
	la.app.Program, la.why = e.usable(r.env.Path)
	return la
}

// declares reports whether the application's desktop file lists type t in MimeType=.
func (r *Resolver) declares(a *App, t string) bool {
	for _, m := range a.Entry.MIMETypes {
		if r.db.Canonical(m) == t {
			return true
		}
	}
	return false
}

// Find returns the application the desktop opens mimeType with, passing over those
// reject refuses (reject returns why, or "" to accept; nil accepts all; it also sees
// entries that cannot be launched, with an empty Program) and those that
// cannot be launched: not installed, Hidden, TryExec or Exec program missing, an invalid
// Exec line, Terminal=true. It returns nil when there is none, and in any case what it
// passed over, in order.
//
// The order is that of the XDG MIME Applications specification, for the type and then
// each of its parent types (MIMEDB.Ancestors):
//
//  1. The defaults: the [Default Applications] list of every mimeapps.list, in precedence
//     order ($XDG_CONFIG_HOME, $XDG_CONFIG_DIRS, $XDG_DATA_HOME/applications,
//     $XDG_DATA_DIRS/applications; in each, the $desktop-mimeapps.list of every
//     $XDG_CURRENT_DESKTOP name, then mimeapps.list, then in applications directories the
//     legacy defaults.list), each list in its order. A default whose association with
//     the type was removed ([Removed Associations]) at its level or a more important one
//     is skipped. (Specification 1.0.1 also wants a default to be associated with the
//     type; like xdg-mime, Find does not insist, so that a default set by hand works.)
//  2. The associations, level by level: a level's [Added Associations] (for an
//     applications directory only those whose desktop file is in it or a less important
//     one), then its [Removed Associations] are added to those removed, then, for an
//     applications directory, its desktop files whose MimeType= lists the type (in
//     mimeinfo.cache order, then by ID), except removed ones and those shadowed by a
//     desktop file of the same ID in a more important directory.
//
// Desktop-specific lists only give defaults, as the specification says.
func (r *Resolver) Find(mimeType string, reject func(*App) string) (*App, []Skipped) {
	var skipped []Skipped
	noted := map[Skipped]bool{}
	judged := map[string]bool{}
	note := func(id, file, why string) {
		if s := (Skipped{ID: id, File: file, Reason: why}); !noted[s] {
			noted[s] = true
			skipped = append(skipped, s)
		}
	}
	try := func(id string) *App {
		if judged[id] {
			return nil
		}
		judged[id] = true
		la := r.load(id)
		why := la.why
		if la.app != nil && reject != nil {
			// Asked first, so that Isolator's own handler is reported as such even
			// where it could not run. The App's Program is "" when why is set.
			if w := reject(la.app); w != "" {
				why = w
			}
		}
		if why != "" {
			file := ""
			if la.app != nil {
				file = la.app.Entry.File
			}
			note(id, file, why)
			return nil
		}
		return la.app
	}
	for _, t := range r.db.Ancestors(mimeType) {
		// 1. Defaults.
		removed := map[string]string{} // ID → the list that removed it
		for _, l := range r.levels {
			if l.main != nil {
				for _, id := range l.main.removed[t] {
					if _, ok := removed[id]; !ok {
						removed[id] = l.main.path
					}
				}
			}
			for _, ml := range l.lists {
				for _, id := range ml.defaults[t] {
					if by, ok := removed[id]; ok {
						note(id, "", fmt.Sprintf("default for %s in %s, but its association was removed in %s", t, ml.path, by))
						continue
					}
					if a := try(id); a != nil {
						return a, skipped
					}
				}
			}
		}
		// 2. Associations.
		removed = map[string]string{}
		for _, l := range r.levels {
			if l.main != nil {
				for _, id := range l.main.added[t] {
					if _, ok := removed[id]; ok {
						continue
					}
					if l.apps >= 0 {
						if dir, _ := r.resolve(id); dir >= 0 && dir < l.apps {
							continue // the added association is for a desktop file this one shadows
						}
					}
					if a := try(id); a != nil {
						return a, skipped
					}
				}
				for _, id := range l.main.removed[t] {
					if _, ok := removed[id]; !ok {
						removed[id] = l.main.path
					}
				}
			}
			if l.apps < 0 {
				continue
			}
			d := r.dirs[l.apps]
			d.walk()
			ids := slices.Concat(d.mimeCache(r.db.Canonical)[t], d.order) // repeats are judged already
			for _, id := range ids {
				if _, ok := removed[id]; ok || judged[id] {
					continue
				}
				if dir, _ := r.resolve(id); dir != l.apps {
					continue // not in this directory, or shadowed by a more important one
				}
				la := r.load(id)
				if la.app == nil || !r.declares(la.app, t) {
					continue
				}
				if a := try(id); a != nil {
					return a, skipped
				}
			}
		}
	}
	return nil, skipped
}
