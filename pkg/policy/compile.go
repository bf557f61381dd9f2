package policy

import (
	"fmt"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/gabriel-vasile/mimetype"
)

// Built-in defaults, used when no policy file sets them. Fail closed: a file with an
// untrusted origin is isolated, and so is anything else nothing matched.
const (
	builtinAction          = ActionIsolate
	builtinUntrustedAction = ActionIsolate
)

// Bounds of a handler's memory, those of a micro VM's guest memory (microvm.MinMemory and
// MaxMemory; the daemon's tests check they agree): a policy asking for more or less fails
// validation instead of every isolation with that handler.
const (
	MinHandlerMemory = 16 << 20
	MaxHandlerMemory = 64 << 30
)

// Names of the pseudo-rules that decide when no rule matches.
const (
	RuleDefault          = "default"
	RuleUntrustedDefault = "default-untrusted-origin"
	RuleFailClosed       = "fail-closed"
	RuleReleased         = "released" // a valid Request.Release trusted the file
)

// rule is a compiled rule.
type rule struct {
	index       int
	name        string
	description string
	action      Action
	handler     *Handler
	file        string
	line, col   int
	match       []*cond
	unless      []*cond
	explain     string // start of every explanation: "isolate with handler h: rule r at f:12"
	broken      bool   // the rule had errors (a condition did not compile): never analysed
}

// defaultAction is a compiled default decision.
type defaultAction struct {
	action  Action
	handler *Handler
	file    string // "" for built in
	line    int
	head    string // explanation before the reason: "isolate with handler h: "
	tail    string // explanation after it: " (default at f:3)"
}

// explain precomputes the fixed parts of the default's explanations.
func (d *defaultAction) explain(rule string) {
	d.head = string(d.action)
	if d.handler != nil {
		d.head += " with handler " + d.handler.Name
	}
	d.head += ": "
	where := "built-in default"
	if d.file != "" {
		where = d.file + ":" + strconv.Itoa(d.line)
	}
	d.tail = " (" + rule + " at " + where + ")"
}

type compiler struct {
	issues    []Issue
	errs      int // errors added by errAt, reported or not (past maxIssues)
	files     []*policyFile
	listData  [][]byte
	listFiles []sourceFile // every list file named, read or not

	handlers    map[string]*Handler
	handlerPos  map[string]sval
	usedHandler map[string]bool
	lists       map[string]*hashList
	usedList    map[string]bool
	hadErrors   bool // errors were found before defaults were resolved
}

func (c *compiler) errAt(file string, line, col int, format string, args ...any) {
	c.errs++
	if len(c.issues) < maxIssues {
		c.issues = append(c.issues, Issue{File: file, Line: line, Col: col, Msg: fmt.Sprintf(format, args...)})
	}
}

func (c *compiler) warnAt(file string, line, col int, format string, args ...any) {
	if len(c.issues) < maxIssues {
		c.issues = append(c.issues, Issue{File: file, Line: line, Col: col, Msg: fmt.Sprintf(format, args...), Warning: true})
	}
}

func (c *compiler) compile(raws []*rawFile) *Policy {
	p := &Policy{handlers: map[string]*Handler{}, lists: map[string]*hashList{}}
	c.handlers = p.handlers
	c.lists = p.lists
	c.handlerPos = map[string]sval{}
	c.usedHandler = map[string]bool{}
	c.usedList = map[string]bool{}
	for _, f := range c.files {
		p.files = append(p.files, f.name)
	}

	// Handlers and lists first: rules and defaults refer to them across files.
	for i, rf := range raws {
		for _, rh := range rf.handlers {
			c.handler(rf, rh)
		}
		for _, rl := range rf.lists {
			c.list(rf, c.files[i], rl)
		}
	}

	for _, is := range c.issues {
		c.hadErrors = c.hadErrors || !is.Warning
	}
	// Defaults: later files override field by field; trusted domains accumulate.
	p.def = defaultAction{action: builtinAction}
	p.untrusted = defaultAction{action: builtinUntrustedAction}
	var defHandler, untrustedHandler *sval
	var defHandlerFile, untrustedHandlerFile string
	for _, rf := range raws {
		d := rf.def
		if d == nil {
			continue
		}
		if d.action != nil {
			if a, ok := c.action(rf.name, *d.action); ok {
				p.def = defaultAction{action: a, file: rf.name, line: d.action.line}
			}
		}
		if d.untrustedAction != nil {
			if a, ok := c.action(rf.name, *d.untrustedAction); ok && a == ActionTrust {
				ua := d.untrustedAction
				c.errAt(rf.name, ua.line, ua.col, "default.untrusted_action must not be trust: a file from an untrusted origin "+
					"is never trusted by default (want isolate, deny or ask; trust such files with a rule, or their domain with default.trusted_domains)")
			} else if ok {
				p.untrusted = defaultAction{action: a, file: rf.name, line: d.untrustedAction.line}
			}
		}
		if d.handler != nil {
			defHandler, defHandlerFile = d.handler, rf.name
		}
		if d.untrustedHandler != nil {
			untrustedHandler, untrustedHandlerFile = d.untrustedHandler, rf.name
		}
		for _, td := range d.trustedDomains {
			dom, err := normalizeDomain(td.s)
			if err != nil {
				c.errAt(rf.name, td.line, td.col, "default.trusted_domains: %v", err)
				continue
			}
			p.trustedDomains = append(p.trustedDomains, dom)
		}
	}
	if untrustedHandler == nil {
		untrustedHandler, untrustedHandlerFile = defHandler, defHandlerFile
	}
	p.def.handler = c.defaultHandler(&p.def, defHandler, defHandlerFile, "default.handler", "default.action")
	p.untrusted.handler = c.defaultHandler(&p.untrusted, untrustedHandler, untrustedHandlerFile, "default.untrusted_handler", "default.untrusted_action")
	p.def.explain(RuleDefault)
	p.untrusted.explain(RuleUntrustedDefault)

	// Rules, in file order then written order. A name is taken by its first rule, with
	// errors or not.
	type where struct {
		file string
		line int
	}
	names := map[string]where{}
	tooMany := false // more than MaxRules rules: reported once
	for _, rf := range raws {
		tooMany = tooMany || rf.tooManyRules
	}
	for _, rf := range raws {
		for _, rr := range rf.rules {
			r := c.rule(rf, rr)
			if name := rr.name.s; name != "" {
				if prev, ok := names[name]; ok {
					c.errAt(rf.name, rr.name.line, rr.name.col, "duplicate rule name %q (first defined at %s:%d)", name, prev.file, prev.line)
					continue
				}
				names[name] = where{rf.name, rr.line}
			}
			if r == nil {
				continue
			}
			if len(p.rules) == MaxRules {
				if !tooMany {
					c.errAt(rf.name, rr.line, rr.col, "more than %d rules in the policy", MaxRules)
					tooMany = true
				}
				break
			}
			r.explain = string(r.action)
			if r.handler != nil {
				r.explain += " with handler " + r.handler.Name
			}
			r.explain += ": rule " + r.name + " at " + r.file + ":" + strconv.Itoa(r.line)
			r.index = len(p.rules)
			p.rules = append(p.rules, r)
		}
	}
	c.shadowing(p.rules)

	// A file with errors in its rules or defaults may have lost the reference that uses a
	// handler or list: do not guess.
	refsLost := false
	for _, rf := range raws {
		refsLost = refsLost || rf.refsLost
	}
	for name, h := range c.handlers {
		if !c.usedHandler[name] && !refsLost {
			c.warnAt(h.File, h.Line, c.handlerPos[name].col, "handler %q is not used by any rule or default", name)
		}
	}
	for name, l := range c.lists {
		if !c.usedList[name] && !refsLost {
			c.warnAt(l.file, l.line, 1, "list %q is not used by any rule", name)
		}
	}
	p.idx = buildIndex(p.rules)
	return p
}

func (c *compiler) action(file string, s sval) (Action, bool) {
	a := Action(strings.ToLower(s.s))
	if !a.Valid() {
		msg := fmt.Sprintf("unknown action %q (want trust, isolate, deny or ask)", s.s)
		if sug := suggest(s.s, []string{"trust", "isolate", "deny", "ask"}); sug != "" {
			msg = fmt.Sprintf("unknown action %q (did you mean %q?)", s.s, sug)
		}
		c.errAt(file, s.line, s.col, "%s", msg)
		return "", false
	}
	return a, true
}

func (c *compiler) lookupHandler(file string, s sval) *Handler {
	h, ok := c.handlers[s.s]
	if !ok {
		names := make([]string, 0, len(c.handlers))
		for n := range c.handlers {
			names = append(names, n)
		}
		if sug := suggest(s.s, names); sug != "" {
			c.errAt(file, s.line, s.col, "unknown handler %q (did you mean %q?)", s.s, sug)
		} else {
			sort.Strings(names)
			c.errAt(file, s.line, s.col, "unknown handler %q (defined handlers: %s)", s.s, strings.Join(names, ", "))
		}
		return nil
	}
	c.usedHandler[s.s] = true
	return h
}

func (c *compiler) defaultHandler(d *defaultAction, s *sval, file, hkey, akey string) *Handler {
	if d.action != ActionIsolate {
		return nil
	}
	if s == nil && c.hadErrors {
		return nil // a broken file may be the one that sets the handler; do not guess
	}
	if s == nil {
		f, line := d.file, d.line
		if f == "" {
			if len(c.files) == 0 {
				return nil // no files at all is reported already
			}
			f, line = c.files[0].name, 1
			c.errAt(f, line, 1, "%s is isolate (the built-in default) but no policy file sets %s", akey, hkey)
			return nil
		}
		c.errAt(f, line, 1, "%s is isolate but no policy file sets %s", akey, hkey)
		return nil
	}
	return c.lookupHandler(file, *s)
}

var schemeRE = regexp.MustCompile(`^[a-z][a-z0-9+.-]*$`)

var placeholderRE = regexp.MustCompile(`\{[^{}]*\}`)

var validImage = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func (c *compiler) handler(rf *rawFile, rh *rawHandler) {
	f := rf.name
	name := rh.name
	if prev, ok := c.handlers[name.s]; ok {
		c.errAt(f, name.line, name.col, "handler %q is already defined at %s:%d", name.s, prev.File, prev.Line)
		return
	}
	h := &Handler{
		Name: name.s, Image: rh.image.s, Program: rh.program.s, Summary: rh.description,
		Memory: rh.memory, Timeout: rh.timeout, MaxOutputBytes: rh.maxOutputBytes, MaxOutputFiles: rh.maxOutputFiles,
		File: f, Line: name.line,
	}
	if rh.image.s == "" {
		c.errAt(f, name.line, name.col, "handler %q has no image", name.s)
	} else if !validImage.MatchString(rh.image.s) {
		c.errAt(f, rh.image.line, rh.image.col, "handler %q: image %q must be a plain image name (letters, digits, . _ -)", name.s, rh.image.s)
	}
	if rh.program.s == "" {
		c.errAt(f, name.line, name.col, "handler %q has no program", name.s)
	} else if rh.program.s != "{input}" && (!path.IsAbs(rh.program.s) || path.Clean(rh.program.s) != rh.program.s) {
		c.errAt(f, rh.program.line, rh.program.col, "handler %q: program %q must be a clean absolute guest path or {input}", name.s, rh.program.s)
	}
	for _, a := range rh.args {
		bad := false
		for _, ph := range placeholderRE.FindAllString(strings.NewReplacer("{{", "", "}}", "").Replace(a.s), -1) {
			switch ph {
			case "{input}", "{output}", "{name}", "{stem}":
			default:
				c.errAt(f, a.line, a.col, "handler %q: unknown placeholder %s in argument %q (known: {input} {output} {name} {stem}; write {{ for a literal brace)", name.s, ph, a.s)
				bad = true
			}
		}
		if !bad {
			h.Args = append(h.Args, a.s)
		}
	}
	for _, e := range rh.env {
		if k, _, ok := strings.Cut(e.s, "="); !ok || k == "" {
			c.errAt(f, e.line, e.col, "handler %q: env entry %q must be KEY=value", name.s, e.s)
			continue
		}
		h.Env = append(h.Env, e.s)
	}
	if rh.memory != 0 && (rh.memory < MinHandlerMemory || rh.memory > MaxHandlerMemory) {
		c.errAt(f, rh.memoryLine, rh.memoryCol, "handler %q: memory %d is not between 16MiB and 64GiB", name.s, rh.memory)
	}
	seen := map[Output]bool{}
	for _, r := range rh.returns {
		o := Output(strings.ToLower(r.s))
		switch o {
		case OutputFiles, OutputStdout, OutputStderr:
			if seen[o] {
				c.errAt(f, r.line, r.col, "handler %q: %q listed twice in returns", name.s, r.s)
			}
			seen[o] = true
			h.Returns = append(h.Returns, o)
		default:
			c.errAt(f, r.line, r.col, "handler %q: unknown returns value %q (want files, stdout or stderr)", name.s, r.s)
		}
	}
	if len(rh.returns) == 0 {
		h.Returns = []Output{OutputFiles, OutputStdout}
	}
	c.handlers[name.s] = h
	c.handlerPos[name.s] = name
}

func (c *compiler) list(rf *rawFile, pf *policyFile, rl *rawList) {
	f := rf.name
	if prev, ok := c.lists[rl.name.s]; ok {
		c.errAt(f, rl.name.line, rl.name.col, "list %q is already defined at %s:%d", rl.name.s, prev.file, prev.line)
		return
	}
	l := &hashList{name: rl.name.s, file: f, line: rl.name.line, hashes: map[string]struct{}{}}
	for _, s := range rl.sha256 {
		h := strings.ToLower(s.s)
		if !isSHA256(h) {
			c.errAt(f, s.line, s.col, "list %q: not a SHA-256 digest (64 hex digits): %q", rl.name.s, s.s)
			continue
		}
		l.hashes[h] = struct{}{}
	}
	for _, lf := range rl.files {
		if path.IsAbs(lf.s) || !fsValidPath(lf.s) {
			c.errAt(f, lf.line, lf.col, "list %q: file %q must be a relative path inside the policy directory", rl.name.s, lf.s)
			continue
		}
		name := path.Join(pf.src.Dir, lf.s)
		c.listFiles = append(c.listFiles, sourceFile{src: pf.srcIdx, name: name})
		data, err := readLimited(pf.src.FS, name, MaxListFileSize)
		if err != nil {
			c.errAt(f, lf.line, lf.col, "list %q: %v", rl.name.s, err)
			continue
		}
		c.listData = append(c.listData, data)
		readHashFile(data, path.Join(pf.src.Label, lf.s), l.hashes, &c.issues)
	}
	c.lists[rl.name.s] = l
}

func fsValidPath(p string) bool {
	return p != "" && !strings.HasPrefix(p, "../") && p != ".." && path.Clean(p) == p
}

func (c *compiler) rule(rf *rawFile, rr *rawRule) *rule {
	f := rf.name
	r := &rule{name: rr.name.s, description: rr.description, file: f, line: rr.line, col: rr.col}
	errs := c.errs
	ok := r.name != "" && rr.action.s != ""
	if r.name != "" && strings.TrimSpace(r.name) != r.name {
		c.errAt(f, rr.name.line, rr.name.col, "rule name %q has leading or trailing space", r.name)
	}
	if rr.action.s != "" {
		a, good := c.action(f, rr.action)
		ok = ok && good
		r.action = a
	}
	switch {
	case rr.handler != nil && r.action != ActionIsolate && r.action != "":
		c.errAt(f, rr.handler.line, rr.handler.col, "rule %q: handler is only used with action isolate, not %s", r.name, r.action)
		ok = false
	case rr.handler != nil:
		r.handler = c.lookupHandler(f, *rr.handler)
		ok = ok && r.handler != nil
	case r.action == ActionIsolate && !rr.hasHandler: // a bad handler value is reported already
		c.errAt(f, rr.action.line, rr.action.col, "rule %q: action isolate needs a handler", r.name)
		ok = false
	case r.action == ActionIsolate:
		ok = false
	}
	if rr.match != nil {
		r.match = c.conds(f, rr.match, "match")
	}
	if rr.unless != nil {
		before := c.errs
		r.unless = c.conds(f, rr.unless, "unless")
		if len(r.unless) == 0 && c.errs == before && !rr.unless.broken {
			c.errAt(f, rr.unless.line, rr.unless.col, "rule %q: unless has no conditions", r.name)
		}
	}
	if !ok {
		return nil
	}
	r.broken = rr.broken || c.errs > errs
	return r
}

func (c *compiler) conds(f string, rc *rawCond, what string) []*cond {
	var out []*cond
	add := func(k *cond) {
		if k != nil && len(k.descs) > 0 {
			out = append(out, k)
		}
	}
	add(c.pathCond(f, kindPath, rc.path, what+".path"))
	add(c.regexCond(f, kindPathRegex, rc.pathRegex, "path", false))
	if len(rc.name) > 0 {
		k := &cond{kind: kindName, set: map[string]int{}}
		for _, s := range rc.name {
			if strings.Contains(s.s, "/") {
				c.errAt(f, s.line, s.col, "%s.name: %q is a base name pattern and cannot contain /; use path", what, s.s)
				continue
			}
			alts, err := expandPattern(s.s)
			if err != nil {
				c.errAt(f, s.line, s.col, "%s.name: %v", what, err)
				continue
			}
			for _, a := range alts {
				k.set[a] = len(k.descs)
				k.keys = append(k.keys, a)
				k.descs = append(k.descs, "name "+strconv.Quote(s.s))
			}
		}
		add(k)
	}
	if len(rc.extension) > 0 {
		k := &cond{kind: kindExtension, set: map[string]int{}}
		for _, s := range rc.extension {
			x := strings.ToLower(strings.TrimPrefix(s.s, "."))
			if x == "" || strings.ContainsAny(x, "/*?[]{},\\") || strings.HasSuffix(x, ".") {
				hint := ""
				if strings.ContainsAny(x, "*?[]{},") {
					hint = " (extensions are plain names, not patterns: list alternatives, as in [exe, msi])"
				}
				c.errAt(f, s.line, s.col, "%s.extension: %q is not an extension such as pdf or tar.gz%s", what, s.s, hint)
				continue
			}
			k.set[x] = len(k.descs)
			k.keys = append(k.keys, x)
			k.descs = append(k.descs, "extension "+strconv.Quote(x))
		}
		add(k)
	}
	if len(rc.contentType) > 0 {
		k := &cond{kind: kindContentType, set: map[string]int{}}
		for _, s := range rc.contentType {
			t := baseType(s.s)
			major, minor, okT := strings.Cut(t, "/")
			if !okT || major == "" || minor == "" || strings.Contains(major, "*") || strings.Contains(minor, "/") || (strings.Contains(minor, "*") && minor != "*") ||
				strings.ContainsAny(t, "{},?[]") {
				c.errAt(f, s.line, s.col, "%s.content_type: %q is not a MIME type such as application/pdf or text/*", what, s.s)
				continue
			}
			if minor != "*" {
				if m := mimetype.Lookup(t); m != nil {
					t = baseType(m.String()) // canonical name for aliases like application/x-pdf
				} else {
					c.warnAt(f, s.line, s.col, "%s.content_type: %q is never reported by the content sniffer (see docs/POLICY.md for the types it knows)", what, s.s)
				}
			}
			k.set[t] = len(k.descs)
			k.keys = append(k.keys, t)
			k.descs = append(k.descs, "content_type "+strconv.Quote(t))
		}
		add(k)
	}
	if rc.sizeMin != nil || rc.sizeMax != nil {
		k := &cond{kind: kindSize, max: -1}
		if rc.sizeMin != nil {
			k.min = *rc.sizeMin
		}
		if rc.sizeMax != nil {
			k.max = *rc.sizeMax
		}
		desc := "size >= " + strconv.FormatInt(k.min, 10)
		if k.max >= 0 {
			desc += " and <= " + strconv.FormatInt(k.max, 10)
		}
		k.descs = []string{desc}
		add(k)
	}
	if len(rc.sha256) > 0 || len(rc.sha256List) > 0 {
		k := &cond{kind: kindSHA256, set: map[string]int{}}
		for _, s := range rc.sha256 {
			h := strings.ToLower(s.s)
			if !isSHA256(h) {
				c.errAt(f, s.line, s.col, "%s.sha256: not a SHA-256 digest (64 hex digits): %q", what, s.s)
				continue
			}
			k.set[h] = len(k.descs)
			k.keys = append(k.keys, h)
			k.descs = append(k.descs, "sha256 "+h)
		}
		for _, s := range rc.sha256List {
			l, ok := c.lists[s.s]
			if !ok {
				names := make([]string, 0, len(c.lists))
				for n := range c.lists {
					names = append(names, n)
				}
				if sug := suggest(s.s, names); sug != "" {
					c.errAt(f, s.line, s.col, "%s.sha256_list: unknown list %q (did you mean %q?)", what, s.s, sug)
				} else {
					c.errAt(f, s.line, s.col, "%s.sha256_list: unknown list %q", what, s.s)
				}
				continue
			}
			c.usedList[s.s] = true
			k.lists = append(k.lists, l)
			k.descs = append(k.descs, "sha256 in list "+strconv.Quote(l.name)) // placeholder; eval reports the digest
		}
		if len(k.set) == 0 && len(k.lists) == 0 {
			k.descs = nil
		}
		add(k)
	}
	for _, ug := range []struct {
		kind condKind
		vals []sval
	}{{kindUser, rc.user}, {kindGroup, rc.group}} {
		if len(ug.vals) == 0 {
			continue
		}
		k := &cond{kind: ug.kind, set: map[string]int{}}
		for _, s := range ug.vals {
			key := s.s
			if key == "" || strings.ContainsAny(key, " \t:/") {
				c.errAt(f, s.line, s.col, "%s.%s: %q is not a valid name", what, ug.kind, s.s)
				continue
			}
			if strings.ContainsAny(key, "*?[]{},") {
				c.errAt(f, s.line, s.col, "%s.%s: %q is not a valid name (names are not patterns: list them, as in [alice, bob])", what, ug.kind, s.s)
				continue
			}
			if ug.kind == kindUser && isDigits(key) {
				key = "#" + key // a numeric user is a uid
			}
			k.set[key] = len(k.descs)
			k.keys = append(k.keys, key)
			k.descs = append(k.descs, string(ug.kind)+" "+strconv.Quote(s.s))
		}
		add(k)
	}
	add(c.pathCond(f, kindOpener, rc.opener, what+".opener"))
	for _, o := range []struct {
		name     string
		referrer bool
		raw      *rawOrigin
	}{{"origin", false, rc.origin}, {"referrer", true, rc.referrer}} {
		if o.raw == nil {
			continue
		}
		w := what + "." + o.name
		n := len(out)
		if o.raw.present != nil {
			desc := o.name + " present"
			if !*o.raw.present {
				desc = "no " + o.name
			}
			add(&cond{kind: kindPresent, referrer: o.referrer, present: *o.raw.present, descs: []string{desc}})
		}
		add(c.regexCond(f, kindURLRegex, o.raw.urlRegex, o.name+" url", o.referrer))
		if len(o.raw.host) > 0 {
			k := &cond{kind: kindHost, referrer: o.referrer, set: map[string]int{}}
			for _, s := range o.raw.host {
				h := strings.ToLower(s.s)
				alts, err := expandPattern(h)
				if err != nil {
					c.errAt(f, s.line, s.col, "%s.host: %v", w, err)
					continue
				}
				bad := strings.ContainsAny(h, "/:@ ")
				for i, a := range alts {
					alts[i] = strings.TrimSuffix(a, ".")
					bad = bad || alts[i] == ""
				}
				if bad {
					c.errAt(f, s.line, s.col, "%s.host: bad host pattern %q", w, s.s)
					continue
				}
				for _, a := range alts {
					k.set[a] = len(k.descs)
					k.keys = append(k.keys, a)
					k.descs = append(k.descs, o.name+" host "+strconv.Quote(strings.TrimSuffix(h, ".")))
				}
			}
			add(k)
		}
		if len(o.raw.domain) > 0 {
			k := &cond{kind: kindDomain, referrer: o.referrer, set: map[string]int{}}
			for _, s := range o.raw.domain {
				d, err := normalizeDomain(s.s)
				if err != nil {
					c.errAt(f, s.line, s.col, "%s.domain: %v", w, err)
					continue
				}
				k.set[d] = len(k.descs)
				k.keys = append(k.keys, d)
				k.descs = append(k.descs, o.name+" domain "+strconv.Quote(d))
			}
			add(k)
		}
		if len(o.raw.scheme) > 0 {
			k := &cond{kind: kindScheme, referrer: o.referrer, set: map[string]int{}}
			for _, s := range o.raw.scheme {
				sc := strings.ToLower(strings.TrimSuffix(s.s, ":"))
				if !schemeRE.MatchString(sc) {
					c.errAt(f, s.line, s.col, "%s.scheme: bad URL scheme %q", w, s.s)
					continue
				}
				k.set[sc] = len(k.descs)
				k.keys = append(k.keys, sc)
				k.descs = append(k.descs, o.name+" scheme "+strconv.Quote(sc))
			}
			add(k)
		}
		if len(out) == n && o.raw.keys == 0 {
			c.errAt(f, rc.line, rc.col, "%s has no conditions", w)
		}
	}
	// Cheap conditions first: a rule fails as soon as one condition fails, so a file is
	// read only if everything that can be decided without reading it holds.
	sort.SliceStable(out, func(i, j int) bool { return condCost(out[i].kind) < condCost(out[j].kind) })
	return out
}

// expandPattern expands the {a,b} alternatives of a pattern matched with path.Match (a
// name or host glob) and checks that every alternative is a valid, non-empty pattern.
func expandPattern(p string) ([]string, error) {
	alts, err := expandBraces(p, 0)
	if err != nil {
		return nil, err
	}
	for _, a := range alts {
		if a == "" {
			return nil, fmt.Errorf("pattern %q has an empty alternative", p)
		}
		if _, err := path.Match(a, ""); err != nil {
			return nil, fmt.Errorf("bad pattern %q: %w", p, err)
		}
	}
	return alts, nil
}

func condCost(k condKind) int {
	switch k {
	case kindPathRegex, kindURLRegex:
		return 1
	case kindSize:
		return 2
	case kindContentType:
		return 3
	case kindSHA256:
		return 4
	}
	return 0
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func normalizeDomain(s string) (string, error) {
	d := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(s, "*."), "."))
	if d == "" || strings.ContainsAny(d, "/:@ *?[]{},\\") || strings.HasPrefix(d, ".") || strings.Contains(d, "..") {
		return "", fmt.Errorf("bad domain %q (want a name such as example.com, which also covers its subdomains)", s)
	}
	return d, nil
}

func (c *compiler) pathCond(f string, kind condKind, vals []sval, what string) *cond {
	if len(vals) == 0 {
		return nil
	}
	k := &cond{kind: kind}
	for _, s := range vals {
		gs, err := compileGlobs(s.s)
		if err != nil {
			c.errAt(f, s.line, s.col, "%s: %v", what, err)
			continue
		}
		for _, g := range gs {
			k.globs = append(k.globs, g)
			k.keys = append(k.keys, g.pattern)
			k.descs = append(k.descs, string(kind)+" "+strconv.Quote(s.s))
		}
	}
	return k
}

// maxRegexLen bounds written regular expressions; Go's RE2 engine runs in linear time, so
// only their size needs a bound.
const maxRegexLen = 4096

func (c *compiler) regexCond(f string, kind condKind, vals []sval, what string, referrer bool) *cond {
	if len(vals) == 0 {
		return nil
	}
	k := &cond{kind: kind, referrer: referrer}
	for _, s := range vals {
		if len(s.s) > maxRegexLen {
			c.errAt(f, s.line, s.col, "%s regex is longer than %d bytes", what, maxRegexLen)
			continue
		}
		re, err := regexp.Compile(s.s)
		if err != nil {
			c.errAt(f, s.line, s.col, "bad %s regex %q: %v", what, s.s, err)
			continue
		}
		k.regexps = append(k.regexps, re)
		k.keys = append(k.keys, s.s)
		k.descs = append(k.descs, what+" matches "+strconv.Quote(s.s))
	}
	return k
}

// shadowingBudget bounds the work of the shadowed-rule analysis, in keys and pattern
// segments compared. The analysis compares rules pairwise, so a large policy whose rules
// share many alternatives could otherwise keep a reload (and the Store's lock) busy for
// minutes; past the budget the rest of the analysis is skipped, with a warning.
const shadowingBudget = 20_000_000

// shadowing warns about rules that can never match because an earlier rule without an
// unless block matches everything they match.
func (c *compiler) shadowing(all []*rule) {
	budget := shadowingBudget
	// A rule with errors matches less or more than was written (a condition that did not
	// compile is missing): any warning about it, or because of it, would be invented.
	rules := make([]*rule, 0, len(all))
	for _, r := range all {
		if !r.broken {
			rules = append(rules, r)
		}
	}
	// A rule can only cover another if the other has a condition of every kind it has:
	// compare kind masks first, which makes the quadratic scan cheap.
	// For kinds matched by plain key equality, a Bloom signature of the keys per kind
	// rejects most pairs without comparing strings: a covers b only if b's keys of that
	// kind are among a's.
	masks := make([]uint64, len(rules))
	blooms := make([][len(bloomKinds)]uint64, len(rules))
	exact := make([][len(bloomKinds)]bool, len(rules)) // the bloom of that kind is usable for a
	for i, r := range rules {
		for _, c := range r.match {
			masks[i] |= kindBit(c)
			for bk, kind := range bloomKinds {
				if c.kind != kind || c.referrer {
					continue
				}
				exact[i][bk] = len(c.lists) == 0
				for _, key := range c.keys {
					exact[i][bk] = exact[i][bk] && !strings.Contains(key, "*")
					blooms[i][bk] |= 1 << (strhash(key) % 64)
				}
			}
		}
	}
	for j, b := range rules {
	pairs:
		for i, a := range rules[:j] {
			if masks[i]&^masks[j] != 0 || len(a.unless) > 0 {
				continue
			}
			for bk := range bloomKinds {
				if exact[i][bk] && blooms[j][bk]&^blooms[i][bk] != 0 {
					continue pairs
				}
			}
			budget-- // the pair itself
			covered := condsCover(a.match, b.match, &budget)
			if budget < 0 {
				c.warnAt(b.file, b.line, b.col, "the shadowed-rule analysis stopped here, at rule %q, after %d comparisons: "+
					"the policy is too large to compare every pair of rules, so this rule and the later ones were not checked for being shadowed",
					b.name, shadowingBudget)
				return
			}
			if !covered {
				continue
			}
			what := "matches everything it matches"
			if len(a.match) == 0 {
				what = "has no conditions and matches every file"
			}
			c.warnAt(b.file, b.line, b.col, "rule %q can never match: rule %q at %s:%d %s", b.name, a.name, a.file, a.line, what)
			break
		}
	}
}

// bloomKinds are the kinds whose covering is plain key set inclusion.
var bloomKinds = [...]condKind{kindExtension, kindSHA256, kindUser, kindGroup, kindContentType, kindName, kindHost}

// strhash is FNV-1a.
func strhash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

var kindBits = map[condKind]uint{
	kindPath: 0, kindPathRegex: 1, kindName: 2, kindExtension: 3, kindContentType: 4, kindSize: 5,
	kindSHA256: 6, kindUser: 7, kindGroup: 8, kindOpener: 9, kindPresent: 10, kindURLRegex: 11,
	kindHost: 12, kindDomain: 13, kindScheme: 14,
}

func kindBit(c *cond) uint64 {
	b := kindBits[c.kind]
	if c.referrer {
		b += 16
	}
	return 1 << b
}

// condsCover reports whether every request satisfying all of bs satisfies all of as,
// spending budget as cond.covers does.
func condsCover(as, bs []*cond, budget *int) bool {
	for _, a := range as {
		ok := false
		for _, b := range bs {
			if a.covers(b, budget) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}
