package policy

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Limits on what a policy file may contain. They bound the memory and time a hostile or
// broken file can cost the daemon.
const (
	MaxFileSize     = 1 << 20   // bytes per policy file
	MaxListFileSize = 16 << 20  // bytes per hash list file
	MaxFiles        = 1000      // policy files per policy
	maxNodes        = 1_000_000 // YAML nodes of one file after alias expansion
	maxDepth        = 64        // YAML nesting depth
	maxIssues       = 1000      // issues reported before giving up
	MaxRules        = 10000     // rules per policy
)

// sval is a string with the position it came from.
type sval struct {
	s         string
	line, col int
}

// decoder turns the YAML node tree of one policy file into raw structs, reporting every
// problem with its position.
type decoder struct {
	file   string
	issues *[]Issue
	errs   int // errors found so far, reported or not (past maxIssues)
}

func (d *decoder) add(line, col int, warn bool, format string, args ...any) {
	if !warn {
		d.errs++
	}
	if len(*d.issues) >= maxIssues {
		return
	}
	*d.issues = append(*d.issues, Issue{File: d.file, Line: line, Col: col, Msg: fmt.Sprintf(format, args...), Warning: warn})
}

func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	d.add(n.Line, n.Column, false, format, args...)
}

// deref follows aliases.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < maxDepth; i++ {
		n = n.Alias
	}
	return n
}

// expandedSize counts the nodes of the tree under n with aliases expanded, giving up
// past limit. memo caches the size of anchored nodes so that the count itself is linear.
func expandedSize(n *yaml.Node, depth int, limit int, memo map[*yaml.Node]int) int {
	if n == nil {
		return 0
	}
	if depth > maxDepth {
		return limit + 1
	}
	if n.Kind == yaml.AliasNode {
		return expandedSize(n.Alias, depth+1, limit, memo)
	}
	if v, ok := memo[n]; ok {
		return v
	}
	total := 1
	for _, c := range n.Content {
		total += expandedSize(c, depth+1, limit, memo)
		if total > limit {
			total = limit + 1
			break
		}
	}
	if n.Anchor != "" {
		memo[n] = total
	}
	return total
}

func nodeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!bool":
			return "a boolean"
		case "!!int":
			return "an integer"
		case "!!float":
			return "a number"
		}
		return "a string"
	}
	return "a document"
}

// keyed iterates over the mapping n like fields, for hot paths: known lists the keys and
// one handler switches on them, which allocates far less than a map of closures.
func (d *decoder) keyed(n *yaml.Node, what string, known []string, handle func(key string, k, v *yaml.Node)) {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		d.errorf(n, "%s must be a mapping, not %s", what, nodeKind(n))
		return
	}
	var seenBuf [16]string
	seen := seenBuf[:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, "keys of %s must be strings", what)
			continue
		}
		if k.Value == "<<" {
			d.errorf(k, "YAML merge keys (<<) are not supported; use an alias as the whole value instead")
			continue
		}
		dup := false
		for _, s := range seen {
			dup = dup || s == k.Value
		}
		if dup {
			d.errorf(k, "duplicate key %q in %s", k.Value, what)
			continue
		}
		seen = append(seen, k.Value)
		ok := false
		for _, kk := range known {
			ok = ok || kk == k.Value
		}
		if !ok {
			if s := suggest(k.Value, known); s != "" {
				d.errorf(k, "unknown key %q in %s (did you mean %q?)", k.Value, what, s)
			} else {
				sorted := append([]string(nil), known...)
				sort.Strings(sorted)
				d.errorf(k, "unknown key %q in %s (known keys: %s)", k.Value, what, strings.Join(sorted, ", "))
			}
			continue
		}
		handle(k.Value, k, v)
	}
}

// fields iterates over the mapping n, calling the handler registered for each key, and
// reports unknown keys (with a suggestion) and duplicate keys.
func (d *decoder) fields(n *yaml.Node, what string, handlers map[string]func(k, v *yaml.Node)) {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		d.errorf(n, "%s must be a mapping, not %s", what, nodeKind(n))
		return
	}
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, "keys of %s must be strings", what)
			continue
		}
		if k.Value == "<<" {
			d.errorf(k, "YAML merge keys (<<) are not supported; use an alias as the whole value instead")
			continue
		}
		if seen[k.Value] {
			d.errorf(k, "duplicate key %q in %s", k.Value, what)
			continue
		}
		seen[k.Value] = true
		h, ok := handlers[k.Value]
		if !ok {
			keys := make([]string, 0, len(handlers))
			for key := range handlers {
				keys = append(keys, key)
			}
			if s := suggest(k.Value, keys); s != "" {
				d.errorf(k, "unknown key %q in %s (did you mean %q?)", k.Value, what, s)
			} else {
				sort.Strings(keys)
				d.errorf(k, "unknown key %q in %s (known keys: %s)", k.Value, what, strings.Join(keys, ", "))
			}
			continue
		}
		h(k, v)
	}
}

// suggest returns the candidate closest to s if it is a plausible typo.
func suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if dd := editDistance(s, c); dd < bestD || (dd == bestD && c < best) {
			best, bestD = c, dd
		}
	}
	if bestD > 2 || bestD >= len(s) {
		return ""
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			c = min(c, prev[j]+1, cur[j-1]+1)
			cur[j] = c
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// str decodes a non-null scalar as a string.
func (d *decoder) str(n *yaml.Node, what string) (sval, bool) {
	n = deref(n)
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		d.errorf(n, "%s must be a string, not %s", what, nodeKind(n))
		return sval{}, false
	}
	return sval{s: n.Value, line: n.Line, col: n.Column}, true
}

// strs decodes a list of strings; a single string is accepted as a list of one.
func (d *decoder) strs(n *yaml.Node, what string) []sval {
	n = deref(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() != "!!null" {
		s, _ := d.str(n, what)
		return []sval{s}
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, "%s must be a list of strings, not %s", what, nodeKind(n))
		return nil
	}
	out := make([]sval, 0, len(n.Content))
	for _, c := range n.Content {
		if s, ok := d.str(c, what+" entries"); ok {
			out = append(out, s)
		}
	}
	if len(out) == 0 && len(n.Content) == 0 {
		d.errorf(n, "%s must not be empty", what)
	}
	return out
}

func (d *decoder) boolean(n *yaml.Node, what string) (bool, bool) {
	n = deref(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool" {
		var b bool
		if err := n.Decode(&b); err == nil {
			return b, true
		}
	}
	d.errorf(n, "%s must be true or false, not %s", what, nodeKind(n))
	return false, false
}

func (d *decoder) integer(n *yaml.Node, what string, lo, hi int64) (int64, bool) {
	n = deref(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
		v, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
		if err == nil && v >= lo && v <= hi {
			return v, true
		}
		if lo == hi {
			d.errorf(n, "%s must be %d, not %s", what, lo, n.Value)
		} else {
			d.errorf(n, "%s must be an integer between %d and %d", what, lo, hi)
		}
		return 0, false
	}
	if lo == hi {
		d.errorf(n, "%s must be %d, not %s", what, lo, nodeKind(n))
	} else {
		d.errorf(n, "%s must be an integer, not %s", what, nodeKind(n))
	}
	return 0, false
}

var sizeRE = regexp.MustCompile(`^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTkmgt]?)(i?)([Bb]?)\s*$`)

// size decodes a byte count: an integer, or a number with a unit such as 512KiB, 10MB
// or 1.5G (binary units for Ki/Mi/Gi/Ti and for bare K/M/G/T; decimal for KB/MB/GB/TB).
func (d *decoder) size(n *yaml.Node, what string) (int64, bool) {
	n = deref(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
		return d.integer(n, what, 0, math.MaxInt64)
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
		if v, err := parseSize(n.Value); err == nil {
			return v, true
		}
	}
	d.errorf(n, "%s must be a size such as 4096, 512KiB or 10MB, not %q", what, n.Value)
	return 0, false
}

func parseSize(s string) (int64, error) {
	m := sizeRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("bad size %q", s)
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("bad size %q", s)
	}
	base := 1024.0
	if m[2] != "" && m[3] == "" && m[4] != "" {
		base = 1000 // KB, MB: decimal
	}
	if m[2] == "" && m[3] != "" {
		return 0, fmt.Errorf("bad size %q", s)
	}
	exp := 0
	if m[2] != "" {
		exp = strings.Index("KMGT", strings.ToUpper(m[2])) + 1
	}
	v := f * math.Pow(base, float64(exp))
	if v > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q too large", s)
	}
	return int64(v), nil
}

func (d *decoder) duration(n *yaml.Node, what string) (time.Duration, bool) {
	n = deref(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
		if v, err := time.ParseDuration(n.Value); err == nil && v >= 0 {
			return v, true
		}
	}
	d.errorf(n, "%s must be a duration such as 30s or 2m, not %q", what, n.Value)
	return 0, false
}
