package xdg

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/gabriel-vasile/mimetype"
	"golang.org/x/sys/unix"
)

// sniffLen is how much of a file is sniffed, as in pkg/policy.
const sniffLen = 3 << 10

// MIMEDB is the part of the shared-mime-info database this package uses, read from the
// text files update-mime-database writes into each <data dir>/mime: globs2 (or globs),
// aliases, subclasses and types. A directory without them contributes nothing; with no
// database at all, types come from content sniffing alone.
type MIMEDB struct {
	globs   []glob              // most important directory first, file order within one
	aliases map[string]string   // alias → canonical type
	parents map[string][]string // type → its explicit parent types
	known   map[string]bool     // every type of the types files
}

type glob struct {
	weight  int
	typ     string
	pattern string // lowercased unless caseSensitive
	cs      bool   // case-sensitive
	literal bool   // no wildcard
	suffix  string // for "*.ext" patterns: ".ext"
}

// LoadMIMEDB reads the database of the data directories (most important first, as
// $XDG_DATA_HOME then $XDG_DATA_DIRS).
func LoadMIMEDB(dataDirs []string) *MIMEDB {
	db := &MIMEDB{aliases: map[string]string{}, parents: map[string][]string{}, known: map[string]bool{}}
	// Least important first, so that __NOGLOBS__ and aliases of a more important
	// directory override what came before.
	var perDir [][]glob
	var all []glob
	for i := len(dataDirs) - 1; i >= 0; i-- {
		dir := filepath.Join(dataDirs[i], "mime")
		var gs []glob
		if data, err := readSmallFile(filepath.Join(dir, "globs2")); err == nil {
			gs = parseGlobs2(data)
		} else if data, err := readSmallFile(filepath.Join(dir, "globs")); err == nil {
			gs = parseGlobs1(data)
		}
		var kept []glob
		for _, g := range gs {
			if g.pattern == "__noglobs__" || g.pattern == "__NOGLOBS__" {
				// Drop this type's globs of the less important directories.
				for j := range perDir {
					perDir[j] = slices.DeleteFunc(perDir[j], func(o glob) bool { return o.typ == g.typ })
				}
				continue
			}
			kept = append(kept, g)
		}
		perDir = append(perDir, kept)
		eachPair(filepath.Join(dir, "aliases"), func(alias, canon string) { db.aliases[alias] = canon })
		eachPair(filepath.Join(dir, "subclasses"), func(child, parent string) {
			if !slices.Contains(db.parents[child], parent) {
				db.parents[child] = append(db.parents[child], parent)
			}
		})
		if data, err := readSmallFile(filepath.Join(dir, "types")); err == nil {
			for _, t := range strings.Fields(string(data)) {
				db.known[strings.ToLower(t)] = true
			}
		}
	}
	for i := len(perDir) - 1; i >= 0; i-- {
		all = append(all, perDir[i]...)
	}
	db.globs = all
	return db
}

// parseGlobs2 parses "weight:type:pattern[:flags]" lines.
func parseGlobs2(data []byte) []glob {
	var gs []glob
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		parts := strings.SplitN(line, ":", 4)
		if len(parts) < 3 {
			continue
		}
		w, err := strconv.Atoi(parts[0])
		if err != nil {
			continue
		}
		cs := len(parts) == 4 && slices.Contains(strings.Split(parts[3], ","), "cs")
		if g, ok := newGlob(w, parts[1], parts[2], cs); ok {
			gs = append(gs, g)
		}
	}
	// update-mime-database writes a case-sensitive glob twice, with the cs flag and
	// without it for older readers: the copy without the flag would make a.c both C and
	// C++ (*.C), so it is dropped.
	type key struct{ typ, pattern string }
	cs := map[key]bool{}
	for _, g := range gs {
		if g.cs {
			cs[key{g.typ, strings.ToLower(g.pattern)}] = true
		}
	}
	return slices.DeleteFunc(gs, func(g glob) bool { return !g.cs && cs[key{g.typ, g.pattern}] })
}

// parseGlobs1 parses the older "type:pattern" lines, weight 50.
func parseGlobs1(data []byte) []glob {
	var gs []glob
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		t, p, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if g, ok := newGlob(50, t, p, false); ok {
			gs = append(gs, g)
		}
	}
	return gs
}

func newGlob(weight int, typ, pattern string, cs bool) (glob, bool) {
	typ = strings.ToLower(strings.TrimSpace(typ))
	if !strings.ContainsRune(typ, '/') || pattern == "" {
		return glob{}, false
	}
	if pattern == "__NOGLOBS__" {
		return glob{typ: typ, pattern: pattern}, true
	}
	if !cs {
		pattern = strings.ToLower(pattern)
	}
	g := glob{weight: weight, typ: typ, pattern: pattern, cs: cs}
	if !strings.ContainsAny(pattern, "*?[\\") {
		g.literal = true
	} else if strings.HasPrefix(pattern, "*.") && !strings.ContainsAny(pattern[1:], "*?[\\") {
		g.suffix = pattern[1:]
	} else if _, err := filepath.Match(pattern, ""); err != nil {
		return glob{}, false // a malformed pattern matches nothing
	}
	return g, true
}

func (g *glob) match(name, lower string) bool {
	if !g.cs {
		name = lower
	}
	switch {
	case g.literal:
		return name == g.pattern
	case g.suffix != "":
		return strings.HasSuffix(name, g.suffix)
	}
	ok, _ := filepath.Match(g.pattern, name)
	return ok
}

// eachPair calls fn for each "a b" line of a shared-mime-info aliases or subclasses file.
func eachPair(path string, fn func(a, b string)) {
	data, err := readSmallFile(path)
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && !strings.HasPrefix(f[0], "#") {
			fn(strings.ToLower(f[0]), strings.ToLower(f[1]))
		}
	}
}

// GlobTypes returns the types the globs give for a file name, as the specification's
// recommended checking order has it: literal patterns before wildcards, then only the
// highest weight, then only the longest pattern, then case-sensitive patterns before the
// others; each type once, in database order.
func (db *MIMEDB) GlobTypes(name string) []string {
	lower := strings.ToLower(name)
	var best []glob
	better := func(a, b glob) int { // >0 when a beats b
		switch {
		case a.literal != b.literal:
			if a.literal {
				return 1
			}
			return -1
		case a.weight != b.weight:
			return a.weight - b.weight
		case len(a.pattern) != len(b.pattern):
			return len(a.pattern) - len(b.pattern)
		case a.cs != b.cs: // main.C is C++ (*.C, case-sensitive) rather than C (*.c)
			if a.cs {
				return 1
			}
			return -1
		}
		return 0
	}
	for _, g := range db.globs {
		if !g.match(name, lower) {
			continue
		}
		if len(best) == 0 {
			best = append(best, g)
			continue
		}
		switch c := better(g, best[0]); {
		case c > 0:
			best = append(best[:0], g)
		case c == 0:
			best = append(best, g)
		}
	}
	var types []string
	for _, g := range best {
		t := db.Canonical(g.typ)
		if !slices.Contains(types, t) {
			types = append(types, t)
		}
	}
	return types
}

// Canonical returns the canonical name of a MIME type: lowercased, without parameters,
// and the target of an alias (application/x-pdf → application/pdf).
func (db *MIMEDB) Canonical(t string) string {
	if i := strings.IndexByte(t, ';'); i >= 0 {
		t = t[:i]
	}
	t = strings.ToLower(strings.TrimSpace(t))
	if c, ok := db.aliases[t]; ok {
		return c
	}
	return t
}

// parentsOf returns the direct parents of t, explicit and implicit (text/plain for text/*,
// application/octet-stream for every type but inode/* when withOctet).
func (db *MIMEDB) parentsOf(t string, withOctet bool) []string {
	ps := slices.Clone(db.parents[t])
	if strings.HasPrefix(t, "text/") && t != "text/plain" && !slices.Contains(ps, "text/plain") {
		ps = append(ps, "text/plain")
	}
	if withOctet && t != "application/octet-stream" && !strings.HasPrefix(t, "inode/") && !slices.Contains(ps, "application/octet-stream") {
		ps = append(ps, "application/octet-stream")
	}
	return ps
}

// IsA reports whether t is parent or one of its subclasses.
func (db *MIMEDB) IsA(t, parent string) bool {
	t, parent = db.Canonical(t), db.Canonical(parent)
	seen := map[string]bool{}
	queue := []string{t}
	for len(queue) > 0 {
		x := queue[0]
		queue = queue[1:]
		if x == parent {
			return true
		}
		if seen[x] {
			continue
		}
		seen[x] = true
		for _, p := range db.parentsOf(x, true) {
			queue = append(queue, db.Canonical(p))
		}
	}
	return false
}

// Ancestors returns t (canonical) followed by its parent types, nearest first, for the
// application lookup: the explicit parents of the subclasses files and text/plain for
// text/*. application/octet-stream, which every type implicitly is, is left out: a
// viewer of the type's parents is a fair substitute, whatever opens arbitrary bytes is not.
func (db *MIMEDB) Ancestors(t string) []string {
	t = db.Canonical(t)
	out := []string{t}
	for i := 0; i < len(out) && len(out) < 64; i++ {
		for _, p := range db.parentsOf(out[i], false) {
			if p = db.Canonical(p); p != "application/octet-stream" && !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// fromSniffer maps a type of the content sniffer to the database's name for it: its
// canonical name if the database knows it, else the first name the database knows among
// the sniffer's aliases for it, else the nearest ancestor in the sniffer's tree that the
// database knows. Without a types file the sniffer's name is taken as it is.
func (db *MIMEDB) fromSniffer(m *mimetype.MIME) string {
	t := db.Canonical(m.String())
	if len(db.known) == 0 || db.known[t] {
		return t
	}
	known := make([]string, 0, len(db.known))
	for k := range db.known {
		known = append(known, k)
	}
	sort.Strings(known)
	for _, k := range known {
		if m.Is(k) {
			return k
		}
	}
	for p := m.Parent(); p != nil; p = p.Parent() {
		if pt := db.Canonical(p.String()); db.known[pt] {
			return pt
		}
	}
	return t
}

// SniffType returns the type of content read from r (up to 3 KiB of it).
func (db *MIMEDB) SniffType(r io.Reader) (string, error) {
	buf := make([]byte, sniffLen)
	n, err := io.ReadFull(r, buf)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return "", err
	}
	return db.fromSniffer(mimetype.Detect(buf[:n])), nil
}

// TypeOfFile returns the MIME type of the regular file at path, in the shared-mime-info
// specification's recommended order: when the globs of its name agree on one type,
// that type, without reading the file; otherwise the content is sniffed, and with no
// glob the sniffed type is the answer, else the glob type that is, or is a subclass of,
// the sniffed type, else the first glob type.
func (db *MIMEDB) TypeOfFile(path string) (string, error) {
	globs := db.GlobTypes(filepath.Base(path))
	if len(globs) == 1 {
		return globs[0], nil
	}
	// O_NONBLOCK: opening a FIFO put in the file's place must not hang.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file", path)
	}
	sniffed, err := db.SniffType(f)
	if err != nil {
		return "", err
	}
	if len(globs) == 0 {
		return sniffed, nil
	}
	for _, g := range globs {
		if db.IsA(g, sniffed) {
			return g, nil
		}
	}
	return globs[0], nil
}
