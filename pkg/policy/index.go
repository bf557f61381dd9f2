package policy

import (
	"sort"
	"strings"
)

// The index makes a decision cost about the number of rules that could match a request
// rather than the number of rules. Every rule is filed under exactly one dimension, the
// cheapest and most selective condition it has whose every alternative is a plain key:
//
//	extension   the extension ("pdf")
//	name        a literal base name ("setup.exe")
//	domain      an origin domain or literal origin host
//	path        the literal directory prefix of its path globs ("/usr", "~/Downloads")
//	ctype       a content type or "major/*" (needs the sniffed type)
//	sha256      a digest (needs the file's hash)
//
// or, lacking one, in the unindexed list. For a request, the candidate rules are the
// buckets of its keys in every dimension plus the unindexed list, visited in rule order;
// the first candidate that fully matches wins. That is the same answer as trying every
// rule in order, because a rule not among the candidates has a condition the request
// fails. Content dimensions are lazy: until the fact is known, all rules filed under the
// dimension are candidates, so no file is read before a rule that needs it is reached.
type index struct {
	unindexed []int32
	ext       map[string][]int32
	name      map[string][]int32
	domain    map[string][]int32
	path      map[string][]int32 // absolute directory prefix -> rules
	homePath  map[string][]int32 // prefix relative to the home directory ("" is ~) -> rules
	// Ranges of the number of "/" in path keys and "." in domain keys, so that a request
	// looks up only the ancestors that can be keys.
	pathMin, pathMax, homeMin, homeMax, domMin, domMax int
	ctype                                              map[string][]int32
	ctypeAll                                           []int32
	sha                                                map[string][]int32
	shaAll                                             []int32
}

func buildIndex(rules []*rule) *index {
	x := &index{
		ext: map[string][]int32{}, name: map[string][]int32{}, domain: map[string][]int32{},
		path: map[string][]int32{}, homePath: map[string][]int32{}, ctype: map[string][]int32{}, sha: map[string][]int32{},
	}
	for _, r := range rules {
		i := int32(r.index)
		if !x.file(r, i) {
			x.unindexed = append(x.unindexed, i)
		}
	}
	x.pathMin, x.pathMax = keyRange(x.path, '/')
	x.homeMin, x.homeMax = keyRange(x.homePath, '/')
	x.domMin, x.domMax = keyRange(x.domain, '.')
	return x
}

// keyRange returns the smallest and largest count of sep in the keys of m.
func keyRange(m map[string][]int32, sep byte) (lo, hi int) {
	lo = 1 << 30
	for k := range m {
		n := strings.Count(k, string(sep))
		lo, hi = min(lo, n), max(hi, n)
	}
	return lo, hi
}

func addUnique(m map[string][]int32, k string, i int32) {
	l := m[k]
	if len(l) > 0 && l[len(l)-1] == i {
		return
	}
	m[k] = append(l, i)
}

func (x *index) file(r *rule, i int32) bool {
	find := func(k condKind) *cond {
		for _, c := range r.match {
			if c.kind == k && !c.referrer {
				return c
			}
		}
		return nil
	}
	if c := find(kindExtension); c != nil {
		for _, k := range c.keys {
			addUnique(x.ext, k, i)
		}
		return true
	}
	if c := find(kindName); c != nil && allLiteral(c.keys) {
		for _, k := range c.keys {
			addUnique(x.name, k, i)
		}
		return true
	}
	if c := find(kindDomain); c != nil {
		for _, k := range c.keys {
			addUnique(x.domain, k, i)
		}
		return true
	}
	if c := find(kindHost); c != nil && allLiteral(c.keys) {
		for _, k := range c.keys {
			addUnique(x.domain, k, i)
		}
		return true
	}
	if c := find(kindPath); c != nil {
		deep := true
		for _, g := range c.globs {
			deep = deep && g.prefix != "/" && g.prefix != "~"
		}
		if deep {
			for _, g := range c.globs {
				if g.home {
					addUnique(x.homePath, strings.TrimPrefix(strings.TrimPrefix(g.prefix, "~"), "/"), i)
				} else {
					addUnique(x.path, g.prefix, i)
				}
			}
			return true
		}
	}
	if c := find(kindContentType); c != nil {
		for _, k := range c.keys {
			addUnique(x.ctype, k, i)
		}
		x.ctypeAll = append(x.ctypeAll, i)
		return true
	}
	if c := find(kindSHA256); c != nil {
		for _, k := range c.keys {
			addUnique(x.sha, k, i)
		}
		for _, l := range c.lists {
			for k := range l.hashes {
				addUnique(x.sha, k, i)
			}
		}
		x.shaAll = append(x.shaAll, i)
		return true
	}
	return false
}

func allLiteral(keys []string) bool {
	for _, k := range keys {
		if strings.ContainsAny(k, `*?[\`) {
			return false
		}
	}
	return true
}

// parentDir is path.Dir for a clean absolute path, without allocating.
func parentDir(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}

// parentRel is the parent of a relative path, "" at the top.
func parentRel(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return ""
	}
	return p[:i]
}

// cursor walks one sorted candidate list.
type cursor struct {
	list []int32
	pos  int
}

// candidates yields candidate rule indices in increasing order. The cursors live in a
// fixed array (spilling into extra) so that a decision allocates nothing for them.
type candidates struct {
	buf     [24]cursor
	n       int
	extra   []cursor
	ctLazy  int // index of the lazy content-type cursor, or -1
	shaLazy int // index of the lazy SHA-256 cursor, or -1
	last    int32
}

func (cs *candidates) at(i int) *cursor {
	if i < len(cs.buf) {
		return &cs.buf[i]
	}
	return &cs.extra[i-len(cs.buf)]
}

func (cs *candidates) add(l []int32) int {
	if len(l) == 0 {
		return -1
	}
	if cs.n < len(cs.buf) {
		cs.buf[cs.n] = cursor{list: l}
	} else {
		cs.extra = append(cs.extra, cursor{list: l})
	}
	cs.n++
	return cs.n - 1
}

// init collects the candidate lists for the request.
func (x *index) init(cs *candidates, e *evalCtx) {
	cs.last = -1
	cs.ctLazy, cs.shaLazy = -1, -1
	cs.add(x.unindexed)
	for _, ext := range e.exts() {
		cs.add(x.ext[ext])
	}
	cs.add(x.name[e.base])
	if len(x.domain) > 0 {
		o := e.getOrigin(false)
		dots := strings.Count(o.host, ".")
		for h := o.host; h != "" && dots >= x.domMin; dots-- {
			if dots <= x.domMax {
				cs.add(x.domain[h])
			}
			i := strings.IndexByte(h, '.')
			if i < 0 {
				break
			}
			h = h[i+1:]
		}
	}
	if len(x.path) > 0 {
		slashes := strings.Count(e.path, "/")
		for d := e.path; slashes >= x.pathMin && d != "/"; d, slashes = parentDir(d), slashes-1 {
			if slashes <= x.pathMax {
				cs.add(x.path[d])
			}
		}
		if x.pathMin <= 1 { // the key "/" itself (not filed, but cheap to keep exact)
			cs.add(x.path["/"])
		}
	}
	if len(x.homePath) > 0 {
		home := strings.TrimSuffix(e.req.Home, "/")
		if home != "" && len(e.path) > len(home) && e.path[len(home)] == '/' && strings.HasPrefix(e.path, home) {
			rel := e.path[len(home)+1:]
			slashes := strings.Count(rel, "/")
			for ; slashes >= x.homeMin && rel != ""; rel, slashes = parentRel(rel), slashes-1 {
				if slashes <= x.homeMax {
					cs.add(x.homePath[rel])
				}
			}
			if rel == "" {
				cs.add(x.homePath[""])
			}
		}
	}
	// Content facts the fact cache already holds cost nothing: use the precise buckets
	// rather than every rule of the dimension. The content type is worth sniffing now if
	// rules are filed under it (3 KiB read once per file version, then cached); a failure
	// here is not an error unless a rule needs the fact later.
	if (len(x.ctypeAll) > 0 && e.req.ContentType == "") || (len(x.shaAll) > 0 && e.req.SHA256 == "") {
		if e.stat() == nil {
			if e.facts.cached.sha256 != "" {
				e.sum = e.facts.cached.sha256
			}
			if len(x.ctypeAll) > 0 && e.req.ContentType == "" {
				saved := e.err
				if _, ok := e.contentType(); !ok {
					e.err = saved
				}
			}
		}
	}
	if len(x.ctypeAll) > 0 {
		if e.ctChain != nil {
			x.addCtype(cs, e)
		} else if e.req.ContentType != "" {
			x.addCtype(cs, e)
		} else {
			cs.ctLazy = cs.add(x.ctypeAll)
		}
	}
	if len(x.shaAll) > 0 {
		if e.sum != "" || e.req.SHA256 != "" {
			sum, _ := e.sha256()
			cs.add(x.sha[sum])
		} else {
			cs.shaLazy = cs.add(x.shaAll)
		}
	}
}

func (x *index) addCtype(cs *candidates, e *evalCtx) {
	chain, ok := e.contentType()
	if !ok {
		return
	}
	for j, t := range chain.types {
		cs.add(x.ctype[t])
		cs.add(x.ctype[chain.wild[j]])
	}
}

// next returns the next candidate rule index, or -1.
func (x *index) next(cs *candidates, e *evalCtx) int32 {
	// Once a lazy fact is known, replace the catch-all list by the precise buckets.
	if cs.ctLazy >= 0 && e.ctChain != nil {
		cs.at(cs.ctLazy).list = nil
		cs.ctLazy = -1
		x.addCtype(cs, e)
	}
	if cs.shaLazy >= 0 && e.sum != "" {
		cs.at(cs.shaLazy).list = nil
		cs.shaLazy = -1
		cs.add(x.sha[e.sum])
	}
	best := int32(-1)
	for i := 0; i < cs.n; i++ {
		c := cs.at(i)
		if len(c.list)-c.pos > 8 && c.list[c.pos] <= cs.last {
			c.pos += sort.Search(len(c.list)-c.pos, func(j int) bool { return c.list[c.pos+j] > cs.last })
		}
		for c.pos < len(c.list) && c.list[c.pos] <= cs.last {
			c.pos++
		}
		if c.pos < len(c.list) && (best < 0 || c.list[c.pos] < best) {
			best = c.list[c.pos]
		}
	}
	cs.last = best
	return best
}
