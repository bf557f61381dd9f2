package policy

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Policy is a compiled, validated policy. It is immutable once loaded and safe for
// concurrent use by any number of goroutines.
type Policy struct {
	version        string
	files          []string // display names in evaluation order
	rules          []*rule
	handlers       map[string]*Handler
	lists          map[string]*hashList
	def            defaultAction // nothing matched, origin not untrusted
	untrusted      defaultAction // nothing matched, origin untrusted
	trustedDomains []string
	idx            *index
	cache          *FactCache
	warnings       []Issue
	failReason     string // non-empty for a fail-closed policy
}

// ErrBadRequest is returned by Decide for a request it cannot evaluate.
var ErrBadRequest = errors.New("bad policy request")

// FailClosed returns a policy that denies every file, saying why. A Store holds it until a
// valid policy has been loaded.
func FailClosed(reason string) *Policy {
	return &Policy{
		version:    "fail-closed",
		failReason: reason,
		handlers:   map[string]*Handler{},
		lists:      map[string]*hashList{},
		idx:        buildIndex(nil),
		cache:      NewFactCache(1),
		def:        defaultAction{action: ActionDeny},
		untrusted:  defaultAction{action: ActionDeny},
	}
}

// Version is a content hash identifying the policy: the same files give the same version.
func (p *Policy) Version() string { return p.version }

// Files returns the policy files in evaluation order.
func (p *Policy) Files() []string { return append([]string(nil), p.files...) }

// Warnings returns the warnings found while loading (for example shadowed rules).
func (p *Policy) Warnings() []Issue { return append([]Issue(nil), p.warnings...) }

// NumRules returns the number of rules.
func (p *Policy) NumRules() int { return len(p.rules) }

// Handler returns the handler with the given name.
func (p *Policy) Handler(name string) (*Handler, bool) {
	h, ok := p.handlers[name]
	return h, ok
}

// FailClosedReason returns why the policy denies everything, or "" for a loaded policy.
func (p *Policy) FailClosedReason() string { return p.failReason }

// Decide evaluates the policy for req: rules in order, first match wins; if none matches,
// the untrusted-origin default for a file with an untrusted origin, the default otherwise.
// Content facts (size, SHA-256, content type) are read from the file only when a rule
// that needs them is reached, and cached. An error (the file cannot be read when a rule
// needs its content, or a bad request) means no decision; callers must then not trust the
// file.
//
// A request with a Release is then looked at once more: a deny stays a deny, and so does a
// trust; otherwise, when the content's SHA-256 is the released one, every deny rule of the
// policy is tried in order (also those after the rule that decided, which first-match
// never reached): the first that matches denies the file; if none does, the file is
// trusted (rule RuleReleased) with an explanation naming the release. A release of
// another content is ignored and the explanation says so.
func (p *Policy) Decide(req *Request) (*Decision, error) {
	if req == nil || req.Path == "" || !path.IsAbs(req.Path) {
		return nil, fmt.Errorf("%w: path must be absolute", ErrBadRequest)
	}
	e := evalCtx{req: req, cache: p.cache, path: cleanPath(req.Path)}
	e.base = path.Base(e.path)
	e.nExt = len(extensions(e.base, e.extBuf[:0]))
	d, err := p.decide(&e)
	if err != nil || req.Release == nil {
		return d, err
	}
	return p.released(&e, d)
}

// released applies e's Release to the decision d, as Decide describes.
func (p *Policy) released(e *evalCtx, d *Decision) (*Decision, error) {
	rel := e.req.Release
	if d.Action == ActionDeny || d.Action == ActionTrust {
		return d, nil
	}
	sum, ok := e.sha256()
	if !ok {
		return nil, e.err
	}
	d.SHA256 = sum
	if sum != lowerASCII(rel.SHA256) {
		d.Explanation += " (the release " + rel.what() + " does not apply: the content has changed since)"
		return d, nil
	}
	for _, r := range p.rules {
		if r.action != ActionDeny {
			continue
		}
		m, ok := r.eval(e, nil)
		if e.err != nil {
			return nil, e.err
		}
		if ok {
			dd := p.decision(r, m, e)
			dd.SHA256 = sum
			dd.Explanation += " (the release " + rel.what() + " does not override a deny rule)"
			return dd, nil
		}
	}
	return &Decision{
		Action:  ActionTrust,
		Rule:    RuleReleased,
		Matched: []string{"released by " + rel.By, "sha256 " + sum},
		Explanation: "trust: released " + rel.what() + "; the content is the one released (sha256 " + sum +
			") and no deny rule matches it; without the release: " + string(d.Action) + " (rule " + d.Rule + ")",
		PolicyVersion: p.version,
		SHA256:        sum,
	}, nil
}

func (p *Policy) decide(e *evalCtx) (*Decision, error) {
	if p.failReason != "" {
		return &Decision{
			Action:        ActionDeny,
			Rule:          RuleFailClosed,
			Explanation:   "deny: no valid policy is in force (" + p.failReason + "), so nothing is trusted",
			PolicyVersion: p.version,
		}, nil
	}
	var matched [8]string
	var cs candidates
	p.idx.init(&cs, e)
	for i := p.idx.next(&cs, e); i >= 0; i = p.idx.next(&cs, e) {
		r := p.rules[i]
		m, ok := r.eval(e, matched[:0])
		if e.err != nil {
			return nil, e.err
		}
		if ok {
			d := p.decision(r, m, e)
			d.SHA256 = e.sum
			return d, nil
		}
	}
	if e.err != nil {
		return nil, e.err
	}
	d := p.defaultDecision(e)
	d.SHA256 = e.sum
	return d, nil
}

// eval reports whether the rule matches, appending what matched to m.
func (r *rule) eval(e *evalCtx, m []string) ([]string, bool) {
	for _, c := range r.match {
		d, ok := c.eval(e)
		if !ok {
			return nil, false
		}
		m = append(m, d)
	}
	if len(r.unless) > 0 {
		all := true
		for _, c := range r.unless {
			if _, ok := c.eval(e); !ok {
				all = false
				break
			}
		}
		if all {
			return nil, false
		}
		m = append(m, "unless-conditions did not all hold")
	}
	return m, true
}

func (p *Policy) decision(r *rule, m []string, e *evalCtx) *Decision {
	// One allocation for the decision and a short Matched list.
	a := &struct {
		d Decision
		m [4]string
	}{}
	d := &a.d
	*d = Decision{
		Action: r.action, Handler: r.handler, Rule: r.name, File: r.file, Line: r.line,
		PolicyVersion: p.version,
	}
	if len(m) > len(a.m) {
		d.Matched = append([]string(nil), m...)
	} else if len(m) > 0 {
		d.Matched = a.m[:copy(a.m[:], m)]
	}
	n := len(r.explain) + len(" matches every file") + len(r.description) + 3
	for _, s := range m {
		n += len(s) + 2
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(r.explain)
	if len(m) == 0 {
		b.WriteString(" matches every file")
	} else {
		b.WriteString(" matched ")
		for i, s := range m {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(s)
		}
	}
	if r.description != "" {
		b.WriteString(" (")
		b.WriteString(r.description)
		b.WriteByte(')')
	}
	d.Explanation = b.String()
	return d
}

// UntrustedOrigin reports whether a file with this origin (or, without one, referrer)
// counts as coming from an untrusted origin: it has one and its host is not in the
// policy's default.trusted_domains.
func (p *Policy) UntrustedOrigin(origin, referrer string) bool {
	o := parseOrigin(origin)
	if !o.present {
		o = parseOrigin(referrer)
	}
	return p.untrustedOrigin(&o)
}

func (p *Policy) untrustedOrigin(o *originInfo) bool {
	if !o.present {
		return false
	}
	if o.host == "" {
		return true
	}
	for _, d := range p.trustedDomains {
		if inDomain(o.host, d) {
			return false
		}
	}
	return true
}

func (p *Policy) defaultDecision(e *evalCtx) *Decision {
	o := e.getOrigin(false)
	which := "origin "
	if !o.present {
		o = e.getOrigin(true)
		which = "referrer "
	}
	def, rule := &p.def, RuleDefault
	var expl string
	switch {
	case p.untrustedOrigin(o):
		def, rule = &p.untrusted, RuleUntrustedDefault
		expl = def.head + "no rule matched and the file's " + which + o.raw + " is not in a trusted domain" + def.tail
	case o.present:
		expl = def.head + "no rule matched; the file's " + which + o.raw + " is in a trusted domain" + def.tail
	default:
		expl = def.head + "no rule matched and the file has no recorded origin" + def.tail
	}
	return &Decision{
		Action: def.action, Handler: def.handler, Rule: rule, File: def.file, Line: def.line,
		Explanation: expl, PolicyVersion: p.version,
	}
}
