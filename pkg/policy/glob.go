package policy

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// glob is a compiled path pattern. Patterns are split at "/" into segments; a segment "**"
// matches any number of whole segments (including none), any other segment is matched
// against one path segment with path.Match syntax (*, ?, [a-z], \ escapes). "{a,b}"
// alternatives are expanded when the pattern is compiled. A pattern starting with "~/" is
// relative to the requester's home directory.
type glob struct {
	pattern string   // as written
	home    bool     // starts with ~/
	segs    []string // segments after the leading "/" or "~/"
	literal []bool   // segs[i] has no metacharacters
	prefix  string   // literal directory prefix, the index key: "/usr" or "~/Downloads"
	litDirs int      // number of segments in prefix
}

const maxBraceExpansion = 64

// compileGlobs compiles one written pattern into the globs its braces expand to.
func compileGlobs(pattern string) ([]*glob, error) {
	alts, err := expandBraces(pattern, 0)
	if err != nil {
		return nil, err
	}
	out := make([]*glob, 0, len(alts))
	for _, a := range alts {
		g, err := compileGlob(a)
		if err != nil {
			return nil, err
		}
		g.pattern = pattern
		out = append(out, g)
	}
	return out, nil
}

func compileGlob(p string) (*glob, error) {
	g := &glob{pattern: p}
	if strings.HasPrefix(p, "~") && p != "~" && !strings.HasPrefix(p, "~/") {
		return nil, fmt.Errorf("pattern %q: ~user is not supported, only ~/ for the requester's home", p)
	}
	var rest string
	switch {
	case p == "~" || strings.HasPrefix(p, "~/"):
		g.home = true
		rest = strings.TrimPrefix(strings.TrimPrefix(p, "~"), "/")
	case strings.HasPrefix(p, "/"):
		rest = p[1:]
	default:
		return nil, fmt.Errorf("pattern %q must be absolute (start with / or ~/)", p)
	}
	if rest != "" {
		g.segs = strings.Split(rest, "/")
	}
	g.literal = make([]bool, len(g.segs))
	prefix := []string{"/"}
	if g.home {
		prefix = []string{"~"}
	}
	inPrefix := true
	for i, s := range g.segs {
		if s == "" && i == len(g.segs)-1 {
			return nil, fmt.Errorf("pattern %q ends with /; write %s** for everything under the directory", p, p)
		}
		if s == "" {
			return nil, fmt.Errorf("pattern %q has an empty segment (//)", p)
		}
		if s == "." || s == ".." {
			return nil, fmt.Errorf("pattern %q has a %q segment", p, s)
		}
		if s == "**" {
			inPrefix = false
			continue
		}
		if strings.Contains(s, "**") {
			return nil, fmt.Errorf("pattern %q: ** must be a whole path segment", p)
		}
		if _, err := path.Match(s, ""); err != nil {
			return nil, fmt.Errorf("pattern %q: bad segment %q: %w", p, s, err)
		}
		g.literal[i] = !strings.ContainsAny(s, `*?[\`)
		if inPrefix && g.literal[i] && i < len(g.segs)-1 {
			prefix = append(prefix, s)
		} else {
			inPrefix = false
		}
	}
	g.prefix = joinPrefix(prefix)
	g.litDirs = len(prefix) - 1
	return g, nil
}

func joinPrefix(parts []string) string {
	if len(parts) == 1 {
		return parts[0]
	}
	return strings.TrimSuffix(parts[0], "/") + "/" + strings.Join(parts[1:], "/")
}

// expandBraces expands {a,b} alternatives, which may nest.
func expandBraces(p string, depth int) ([]string, error) {
	if depth > 8 {
		return nil, errors.New("braces nested too deeply")
	}
	open := -1
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '\\':
			i++
		case '{':
			open = i
		}
		if open >= 0 {
			break
		}
	}
	if open < 0 {
		if strings.ContainsRune(p, '}') && !strings.Contains(p, `\}`) {
			return nil, fmt.Errorf("pattern %q has an unmatched }", p)
		}
		return []string{p}, nil
	}
	level, start := 0, open+1
	var alts []string
	for i := open; i < len(p); i++ {
		switch p[i] {
		case '\\':
			i++
		case '{':
			level++
		case ',':
			if level == 1 {
				alts = append(alts, p[start:i])
				start = i + 1
			}
		case '}':
			level--
			if level == 0 {
				alts = append(alts, p[start:i])
				var out []string
				for _, a := range alts {
					sub, err := expandBraces(p[:open]+a+p[i+1:], depth+1)
					if err != nil {
						return nil, err
					}
					out = append(out, sub...)
					if len(out) > maxBraceExpansion {
						return nil, fmt.Errorf("pattern %q expands to more than %d alternatives", p, maxBraceExpansion)
					}
				}
				return out, nil
			}
		}
	}
	return nil, fmt.Errorf("pattern %q has an unmatched {", p)
}

// match reports whether the cleaned absolute path p matches; home is the requester's home.
func (g *glob) match(p, home string) bool {
	if g.home {
		if home == "" || home == "/" {
			return false
		}
		home = strings.TrimSuffix(home, "/")
		if p == home {
			p = ""
		} else if strings.HasPrefix(p, home+"/") {
			p = p[len(home)+1:]
		} else {
			return false
		}
	} else {
		if !strings.HasPrefix(p, "/") {
			return false
		}
		p = strings.TrimPrefix(p, "/")
	}
	return matchSegs(g.segs, g.literal, p)
}

// matchSegs matches path p (no leading slash) against segs. "**" is a star over
// segments: the classic greedy wildcard algorithm with one backtracking point, O(n·m).
func matchSegs(segs []string, literal []bool, p string) bool {
	var parts [64]string
	ps := splitPath(p, parts[:0])
	si, pi := 0, 0
	starSi, starPi := -1, 0
	for pi < len(ps) {
		if si < len(segs) {
			s := segs[si]
			if s == "**" {
				starSi, starPi = si, pi
				si++
				continue
			}
			if segMatch(s, literal[si], ps[pi]) {
				si++
				pi++
				continue
			}
		}
		if starSi < 0 {
			return false
		}
		starPi++
		si, pi = starSi+1, starPi
	}
	for si < len(segs) && segs[si] == "**" {
		si++
	}
	return si == len(segs)
}

func segMatch(pattern string, literal bool, s string) bool {
	if literal {
		return pattern == s
	}
	ok, _ := path.Match(pattern, s)
	return ok
}

func splitPath(p string, buf []string) []string {
	if p == "" {
		return buf
	}
	for {
		i := strings.IndexByte(p, '/')
		if i < 0 {
			return append(buf, p)
		}
		buf = append(buf, p[:i])
		p = p[i+1:]
	}
}
