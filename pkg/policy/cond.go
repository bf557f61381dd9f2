package policy

import (
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// evalCtx is the state of one decision: the request, derived keys computed once, and
// content facts computed lazily.
type evalCtx struct {
	req    *Request
	cache  *FactCache
	path   string    // cleaned absolute path
	base   string    // base name
	extBuf [8]string // lower-case extensions, see extensions
	nExt   int

	facts   facts
	ctChain *typeChain
	sum     string

	origin, referrer originInfo
	err              error // first error computing a fact
}

// exts returns the extensions of the base name. (They live in an array in evalCtx, not in
// a slice of it, so that evalCtx stays on the stack.)
func (e *evalCtx) exts() []string { return e.extBuf[:e.nExt] }

func (e *evalCtx) fail(err error) {
	if e.err == nil {
		e.err = err
	}
}

// extensions returns the lower-case extensions of a base name, longest last:
// "Report.Tar.GZ" has "gz" and "tar.gz". A leading dot (".bashrc") does not start one.
func extensions(base string, buf []string) []string {
	lower := lowerASCII(base)
	for i := len(lower) - 1; i > 0 && len(buf) < cap(buf); i-- {
		if lower[i] == '.' && i+1 < len(lower) {
			buf = append(buf, lower[i+1:])
		}
	}
	return buf
}

// lowerASCII is strings.ToLower with a fast path for strings without upper-case ASCII.
func lowerASCII(s string) string {
	i := 0
	// Eight bytes at a time: ASCII bytes with bit 0x20 set (digits, lower case, most
	// punctuation) are never upper case.
	for ; i+8 <= len(s); i += 8 {
		w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		if w&0x8080808080808080 != 0 || w&0x2020202020202020 != 0x2020202020202020 {
			break
		}
	}
	for ; i < len(s); i++ {
		if c := s[i]; c-'A' < 26 || c >= 0x80 {
			return strings.ToLower(s)
		}
	}
	return s
}

// cleanPath is path.Clean with a fast path for paths that are already clean.
func cleanPath(p string) string {
	if len(p) > 1 && (p[len(p)-1] == '/' || strings.HasSuffix(p, "/.") || strings.HasSuffix(p, "/..")) ||
		strings.Contains(p, "//") || strings.Contains(p, "/./") || strings.Contains(p, "/../") {
		return path.Clean(p)
	}
	return p
}

// originInfo is a parsed origin or referrer URL.
type originInfo struct {
	done    bool
	present bool
	raw     string
	scheme  string
	host    string // lower case, without port and trailing dot
}

func parseOrigin(raw string) originInfo {
	o := originInfo{done: true, raw: raw, present: raw != ""}
	if raw == "" {
		return o
	}
	u, err := url.Parse(raw)
	if err != nil {
		return o
	}
	o.scheme = strings.ToLower(u.Scheme)
	o.host = strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	return o
}

func (e *evalCtx) getOrigin(referrer bool) *originInfo {
	if referrer {
		if !e.referrer.done {
			e.referrer = e.cache.origin(e.req.Referrer)
		}
		return &e.referrer
	}
	if !e.origin.done {
		e.origin = e.cache.origin(e.req.Origin)
	}
	return &e.origin
}

// inDomain reports whether host is domain or one of its subdomains.
func inDomain(host, domain string) bool {
	if host == domain {
		return true
	}
	return len(host) > len(domain) && strings.HasSuffix(host, domain) && host[len(host)-len(domain)-1] == '.'
}

// condKind names a condition type; it is what Matched descriptions and shadowing
// analysis are keyed by.
type condKind string

const (
	kindPath        condKind = "path"
	kindPathRegex   condKind = "path_regex"
	kindName        condKind = "name"
	kindExtension   condKind = "extension"
	kindContentType condKind = "content_type"
	kindSize        condKind = "size"
	kindSHA256      condKind = "sha256"
	kindUser        condKind = "user"
	kindGroup       condKind = "group"
	kindOpener      condKind = "opener"
	kindPresent     condKind = "present"
	kindURLRegex    condKind = "url_regex"
	kindHost        condKind = "host"
	kindDomain      condKind = "domain"
	kindScheme      condKind = "scheme"
)

// cond is one compiled condition of a rule: a list of alternatives of one kind, of which
// one must match.
type cond struct {
	kind     condKind
	referrer bool     // origin conditions: about the referrer rather than the origin
	keys     []string // normalized alternatives, for shadowing analysis and the index
	descs    []string // description of each alternative for Decision.Matched

	globs   []*glob
	regexps []*regexp.Regexp
	set     map[string]int // key -> index into descs
	lists   []*hashList    // sha256: named lists
	min     int64
	max     int64 // -1: no upper bound
	present bool
}

type hashList struct {
	name   string
	file   string
	line   int
	hashes map[string]struct{}
}

// eval reports whether the condition holds, and a description of what matched.
func (c *cond) eval(e *evalCtx) (string, bool) {
	switch c.kind {
	case kindPath:
		for i, g := range c.globs {
			if g.match(e.path, e.req.Home) {
				return c.descs[i], true
			}
		}
	case kindPathRegex:
		for i, re := range c.regexps {
			if re.MatchString(e.path) {
				return c.descs[i], true
			}
		}
	case kindName:
		for i, k := range c.keys {
			if ok, _ := path.Match(k, e.base); ok {
				return c.descs[i], true
			}
		}
	case kindExtension:
		for _, x := range e.exts() {
			if i, ok := c.set[x]; ok {
				return c.descs[i], true
			}
		}
	case kindContentType:
		chain, ok := e.contentType()
		if !ok {
			return "", false
		}
		for j, t := range chain.types {
			if i, ok := c.set[t]; ok {
				return c.descs[i] + " (sniffed " + chain.types[0] + ")", true
			}
			if i, ok := c.set[chain.wild[j]]; ok {
				return c.descs[i] + " (sniffed " + chain.types[0] + ")", true
			}
		}
	case kindSize:
		n, ok := e.size()
		if ok && n >= c.min && (c.max < 0 || n <= c.max) {
			return c.descs[0] + " (" + strconv.FormatInt(n, 10) + " bytes)", true
		}
	case kindSHA256:
		sum, ok := e.sha256()
		if !ok {
			return "", false
		}
		if i, ok := c.set[sum]; ok {
			return c.descs[i], true
		}
		for _, l := range c.lists {
			if _, ok := l.hashes[sum]; ok {
				return "sha256 " + sum + " in list " + strconv.Quote(l.name), true
			}
		}
	case kindUser:
		if i, ok := c.set[e.req.User]; ok && e.req.User != "" {
			return c.descs[i], true
		}
		if i, ok := c.set["#"+strconv.Itoa(e.req.UID)]; ok {
			return c.descs[i], true
		}
	case kindGroup:
		for _, g := range e.req.Groups {
			if i, ok := c.set[g]; ok {
				return c.descs[i], true
			}
		}
	case kindOpener:
		if e.req.Opener == "" {
			return "", false
		}
		op := path.Clean(e.req.Opener)
		for i, g := range c.globs {
			if g.match(op, e.req.Home) {
				return c.descs[i], true
			}
		}
	case kindPresent:
		o := e.getOrigin(c.referrer)
		if o.present == c.present {
			return c.descs[0], true
		}
	case kindURLRegex:
		o := e.getOrigin(c.referrer)
		if !o.present {
			return "", false
		}
		for i, re := range c.regexps {
			if re.MatchString(o.raw) {
				return c.descs[i], true
			}
		}
	case kindHost:
		o := e.getOrigin(c.referrer)
		if o.host == "" {
			return "", false
		}
		for i, k := range c.keys {
			if ok, _ := path.Match(k, o.host); ok {
				return c.descs[i], true
			}
		}
	case kindDomain:
		o := e.getOrigin(c.referrer)
		if o.host == "" {
			return "", false
		}
		for i, k := range c.keys {
			if inDomain(o.host, k) {
				return c.descs[i], true
			}
		}
	case kindScheme:
		o := e.getOrigin(c.referrer)
		if i, ok := c.set[o.scheme]; ok && o.present {
			return c.descs[i], true
		}
	}
	return "", false
}

// covers reports whether every value a matches is certainly matched by c (conservative:
// false when unsure). It is the basis of the shadowed-rule warning. Every key or pattern
// looked at is spent from budget; once budget is spent the answer is false and means
// nothing.
func (c *cond) covers(a *cond, budget *int) bool {
	if c.kind != a.kind || c.referrer != a.referrer {
		return false
	}
	switch c.kind {
	case kindSize:
		return c.min <= a.min && (c.max < 0 || (a.max >= 0 && a.max <= c.max))
	case kindPresent:
		return c.present == a.present
	case kindSHA256:
		if len(c.lists) > 0 || len(a.lists) > 0 {
			return false
		}
	case kindPath, kindOpener:
		for _, ag := range a.globs {
			ok := false
			for _, cg := range c.globs {
				if *budget--; *budget < 0 {
					return false
				}
				if !mayCover(cg, ag) {
					continue
				}
				if *budget -= len(ag.segs); *budget < 0 {
					return false
				}
				if globCovers(cg, ag) {
					ok = true
					break
				}
			}
			if !ok {
				return false
			}
		}
		return true
	case kindPathRegex, kindURLRegex:
		// Only the same expression is certain: compare the written keys.
		for _, ak := range a.keys {
			if *budget -= len(c.keys); *budget < 0 || !slices.Contains(c.keys, ak) {
				return false
			}
		}
		return true
	}
	if c.kind == kindName {
		if _, ok := c.set["*"]; ok {
			return true
		}
	}
	// Sets of keys: each of a's must be one of c's, or for domains under one of c's, for
	// content types under c's "major/*".
	for _, ak := range a.keys {
		if *budget--; *budget < 0 {
			return false
		}
		if _, ok := c.set[ak]; ok {
			continue
		}
		switch c.kind {
		case kindContentType:
			if major, _, _ := strings.Cut(ak, "/"); hasKey(c.set, major+"/*") {
				continue
			}
		case kindDomain:
			if parentInSet(ak, c.set, budget) {
				continue
			}
		}
		return false
	}
	return true
}

func hasKey(m map[string]int, k string) bool {
	_, ok := m[k]
	return ok
}

// parentInSet reports whether a domain that domain is a subdomain of is in set.
func parentInSet(domain string, set map[string]int, budget *int) bool {
	for i := strings.IndexByte(domain, '.'); i >= 0; i = strings.IndexByte(domain, '.') {
		domain = domain[i+1:]
		if *budget--; *budget < 0 {
			return false
		}
		if hasKey(set, domain) {
			return true
		}
	}
	return false
}

// mayCover is a cheap necessary condition for globCovers(c, a): a starts with c's
// literal leading directories, literally.
func mayCover(c, a *glob) bool {
	if c.home != a.home || len(a.segs) < c.litDirs {
		return false
	}
	for i := 0; i < c.litDirs; i++ {
		if !a.literal[i] || a.segs[i] != c.segs[i] {
			return false
		}
	}
	return true
}

// globCovers reports whether glob c certainly matches everything a matches: the same
// pattern, a literal path c matches, or c is "<prefix>/**" and a lies under prefix.
func globCovers(c, a *glob) bool {
	if c.home != a.home {
		return false
	}
	if slicesEqual(c.segs, a.segs) {
		return true
	}
	n := len(c.segs)
	if n > 0 && c.segs[n-1] == "**" {
		if n-1 > len(a.segs) {
			return false
		}
		for i := 0; i < n-1; i++ {
			if !c.literal[i] || !a.literal[i] || c.segs[i] != a.segs[i] {
				if !(!c.literal[i] && c.segs[i] == "*" && a.segs[i] != "**") {
					return false
				}
			}
		}
		return true
	}
	allLit := true
	for _, l := range a.literal {
		allLit = allLit && l
	}
	if allLit {
		return matchSegs(c.segs, c.literal, strings.Join(a.segs, "/"))
	}
	return false
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
