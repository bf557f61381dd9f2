package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// The raw structs below hold one decoded policy file before validation and compilation.

type rawFile struct {
	name     string // path shown in messages
	base     string // base name, the ordering key
	version  int
	def      *rawDefault
	handlers []*rawHandler
	lists    []*rawList
	rules    []*rawRule
	// refsLost: the file had errors outside its handlers and lists, so some of its
	// references to handlers and lists may be missing.
	refsLost bool
	// tooManyRules: the file alone has more than MaxRules rules, which is reported.
	tooManyRules bool
}

type rawDefault struct {
	line, col        int
	action           *sval
	handler          *sval
	untrustedAction  *sval
	untrustedHandler *sval
	trustedDomains   []sval
}

type rawHandler struct {
	name, image, program sval
	description          string
	args, env            []sval
	memory               int64
	memoryLine           int
	memoryCol            int
	timeout              time.Duration
	maxOutputBytes       int64
	maxOutputFiles       int
	returns              []sval
}

type rawList struct {
	name   sval
	sha256 []sval
	files  []sval
}

type rawRule struct {
	line, col   int
	name        sval
	description string
	action      sval
	handler     *sval
	hasHandler  bool // the handler key is there, valid or not
	match       *rawCond
	unless      *rawCond
	broken      bool // the rule had errors: what it matches is not what was written
}

type rawCond struct {
	line, col   int
	broken      bool // some of the conditions had errors and are missing
	path        []sval
	pathRegex   []sval
	name        []sval
	extension   []sval
	contentType []sval
	sizeMin     *int64
	sizeMax     *int64
	sizeLine    int
	sizeCol     int
	sha256      []sval
	sha256List  []sval
	origin      *rawOrigin
	referrer    *rawOrigin
	user        []sval
	group       []sval
	opener      []sval
}

type rawOrigin struct {
	keys     int // keys written, valid or not
	present  *bool
	urlRegex []sval
	host     []sval
	domain   []sval
	scheme   []sval
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

// parseFile decodes one policy file, appending problems to issues.
func parseFile(name, base string, data []byte, issues *[]Issue) *rawFile {
	d := &decoder{file: name, issues: issues}
	f := &rawFile{name: name, base: base}
	defErrs := 0 // errors in handler and list definitions
	defer func() { f.refsLost = d.errs > defErrs }()
	if len(data) > MaxFileSize {
		d.add(0, 0, false, "file is %d bytes, more than the limit of %d", len(data), MaxFileSize) // the whole file: no position
		return f
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return f // an empty file is a valid, empty policy (it can mask a shipped file)
		}
		line, col, msg := syntaxProblem(data, err)
		d.add(line, col, false, "%s", msg)
		return f
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		d.add(extra.Line, extra.Column, false, "a policy file holds one YAML document; found a second one")
	} else if !errors.Is(err, io.EOF) {
		line, col, msg := syntaxProblem(data, err)
		d.add(line, col, false, "%s", msg)
	}
	if expandedSize(&doc, 0, maxNodes, map[*yaml.Node]int{}) > maxNodes {
		d.add(1, 1, false, "document expands to more than %d YAML nodes or is nested deeper than %d (alias bomb?)", maxNodes, maxDepth)
		return f
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return f
		}
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		return f
	}
	d.fields(root, "the policy file", map[string]func(k, v *yaml.Node){
		"version": func(k, v *yaml.Node) {
			if n, ok := d.integer(v, "version", 1, 1); ok {
				f.version = int(n)
			}
		},
		"default": func(k, v *yaml.Node) { f.def = d.defaults(k, v) },
		"handlers": func(k, v *yaml.Node) {
			e := d.errs
			f.handlers = d.handlers(v)
			defErrs += d.errs - e
		},
		"lists": func(k, v *yaml.Node) {
			e := d.errs
			f.lists = d.lists(v)
			defErrs += d.errs - e
		},
		"rules": func(k, v *yaml.Node) {
			v = deref(v)
			if v.Kind != yaml.SequenceNode {
				d.errorf(v, "rules must be a list, not %s", nodeKind(v))
				return
			}
			for i, c := range v.Content {
				if i == MaxRules {
					d.errorf(c, "more than %d rules", MaxRules)
					f.tooManyRules = true
					break
				}
				if r := d.rule(c); r != nil {
					f.rules = append(f.rules, r)
				}
			}
		},
	})
	return f
}

// syntaxProblem turns a YAML syntax error about data into a position and a message. Two
// common mistakes are said plainly, where they are: a tab in indentation, and bytes that
// are not UTF-8 (the parser reports neither at its place).
func syntaxProblem(data []byte, err error) (line, col int, msg string) {
	line, col, msg = 1, 1, "invalid YAML: "+err.Error()
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
	}
	if strings.Contains(err.Error(), "UTF-8") {
		if off := invalidUTF8(data); off >= 0 {
			line, col = position(data, off)
			return line, col, fmt.Sprintf("invalid UTF-8 (byte 0x%02x): a policy file must be UTF-8 text", data[off])
		}
	}
	lines := bytes.Split(data, []byte("\n"))
	tabAt := func(i int) int { // column of a tab in the indentation of line i (0-based), or 0
		if i < 0 || i >= len(lines) {
			return 0
		}
		indent := len(lines[i]) - len(bytes.TrimLeft(lines[i], " \t"))
		if j := bytes.IndexByte(lines[i][:indent], '\t'); j >= 0 {
			return j + 1
		}
		return 0
	}
	if c := tabAt(line - 1); c > 0 {
		return line, c, "tabs are not allowed in YAML indentation; indent with spaces"
	}
	if strings.Contains(err.Error(), "tab") {
		for i := line - 1; i < len(lines); i++ {
			if c := tabAt(i); c > 0 {
				return i + 1, c, "tabs are not allowed in YAML indentation; indent with spaces"
			}
		}
	}
	return line, col, msg
}

// invalidUTF8 returns the offset of the first byte of data that is not valid UTF-8, or -1.
func invalidUTF8(data []byte) int {
	for off := 0; off < len(data); {
		r, n := utf8.DecodeRune(data[off:])
		if r == utf8.RuneError && n <= 1 {
			return off
		}
		off += n
	}
	return -1
}

// position returns the line and column (in characters, from 1) of offset off in data.
func position(data []byte, off int) (line, col int) {
	start := bytes.LastIndexByte(data[:off], '\n') + 1
	return bytes.Count(data[:off], []byte("\n")) + 1, utf8.RuneCount(data[start:off]) + 1
}

func (d *decoder) optStr(v *yaml.Node, what string) *sval {
	if s, ok := d.str(v, what); ok {
		return &s
	}
	return nil
}

func (d *decoder) defaults(k, v *yaml.Node) *rawDefault {
	def := &rawDefault{line: k.Line, col: k.Column}
	d.fields(v, "default", map[string]func(k, v *yaml.Node){
		"action":            func(k, v *yaml.Node) { def.action = d.optStr(v, "default.action") },
		"handler":           func(k, v *yaml.Node) { def.handler = d.optStr(v, "default.handler") },
		"untrusted_action":  func(k, v *yaml.Node) { def.untrustedAction = d.optStr(v, "default.untrusted_action") },
		"untrusted_handler": func(k, v *yaml.Node) { def.untrustedHandler = d.optStr(v, "default.untrusted_handler") },
		"trusted_domains":   func(k, v *yaml.Node) { def.trustedDomains = d.strs(v, "default.trusted_domains") },
	})
	return def
}

// namedMapping iterates over a mapping of names to definitions.
func (d *decoder) namedMapping(v *yaml.Node, what string, fn func(name sval, v *yaml.Node)) {
	v = deref(v)
	if v.Kind != yaml.MappingNode {
		d.errorf(v, "%s must be a mapping of names to definitions, not %s", what, nodeKind(v))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(v.Content); i += 2 {
		name, ok := d.str(v.Content[i], what+" names")
		if !ok {
			continue
		}
		if seen[name.s] {
			d.add(name.line, name.col, false, "duplicate %s name %q", what, name.s)
			continue
		}
		seen[name.s] = true
		fn(name, v.Content[i+1])
	}
}

func (d *decoder) handlers(v *yaml.Node) []*rawHandler {
	var out []*rawHandler
	d.namedMapping(v, "handler", func(name sval, v *yaml.Node) {
		h := &rawHandler{name: name}
		w := "handler " + strconv.Quote(name.s)
		d.fields(v, w, map[string]func(k, v *yaml.Node){
			"image":   func(k, v *yaml.Node) { h.image, _ = d.str(v, w+" image") },
			"program": func(k, v *yaml.Node) { h.program, _ = d.str(v, w+" program") },
			"description": func(k, v *yaml.Node) {
				s, _ := d.str(v, w+" description")
				h.description = s.s
			},
			"args": func(k, v *yaml.Node) {
				if vv := deref(v); vv.Kind == yaml.SequenceNode && len(vv.Content) == 0 {
					return // an explicit empty list is fine for arguments
				}
				h.args = d.strs(v, w+" args")
			},
			"env": func(k, v *yaml.Node) { h.env = d.strs(v, w+" env") },
			"memory": func(k, v *yaml.Node) {
				h.memory, _ = d.size(v, w+" memory")
				h.memoryLine, h.memoryCol = deref(v).Line, deref(v).Column
			},
			"timeout": func(k, v *yaml.Node) { h.timeout, _ = d.duration(v, w+" timeout") },
			"max_output_bytes": func(k, v *yaml.Node) {
				h.maxOutputBytes, _ = d.size(v, w+" max_output_bytes")
			},
			"max_output_files": func(k, v *yaml.Node) {
				n, _ := d.integer(v, w+" max_output_files", 0, math.MaxInt32)
				h.maxOutputFiles = int(n)
			},
			"returns": func(k, v *yaml.Node) { h.returns = d.strs(v, w+" returns") },
		})
		out = append(out, h)
	})
	return out
}

func (d *decoder) lists(v *yaml.Node) []*rawList {
	var out []*rawList
	d.namedMapping(v, "list", func(name sval, v *yaml.Node) {
		l := &rawList{name: name}
		w := "list " + strconv.Quote(name.s)
		d.fields(v, w, map[string]func(k, v *yaml.Node){
			"sha256": func(k, v *yaml.Node) { l.sha256 = d.strs(v, w+" sha256") },
			"files":  func(k, v *yaml.Node) { l.files = d.strs(v, w+" files") },
		})
		out = append(out, l)
	})
	return out
}

var ruleKeys = []string{"name", "description", "action", "handler", "match", "unless"}

func (d *decoder) rule(n *yaml.Node) *rawRule {
	n = deref(n)
	r := &rawRule{line: n.Line, col: n.Column}
	errs := d.errs
	defer func() { r.broken = d.errs > errs }()
	var hasName, hasAction bool // the keys are there, valid or not
	d.keyed(n, "rule", ruleKeys, func(key string, k, v *yaml.Node) {
		switch key {
		case "name":
			hasName = true
			if s, ok := d.str(v, "rule name"); ok && s.s == "" {
				d.errorf(v, "rule name must not be empty")
			} else {
				r.name = s
			}
		case "description":
			s, _ := d.str(v, "rule description")
			r.description = s.s
		case "action":
			hasAction = true
			if s, ok := d.str(v, "rule action"); ok && s.s == "" {
				d.errorf(v, "rule action must not be empty")
			} else {
				r.action = s
			}
		case "handler":
			r.hasHandler = true
			r.handler = d.optStr(v, "rule handler")
		case "match":
			r.match = d.cond(k, v, "match")
		case "unless":
			r.unless = d.cond(k, v, "unless")
		}
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	// A key that is there with a bad value is reported as such, and only that.
	if !hasName {
		d.errorf(n, "rule has no name")
	}
	if !hasAction {
		d.errorf(n, "rule %q has no action", r.name.s)
	}
	return r
}

var condKeys = []string{"path", "path_regex", "name", "extension", "content_type", "sha256", "sha256_list",
	"user", "group", "opener", "origin", "referrer", "size"}

var sizeKeys = []string{"min", "max"}

func (d *decoder) cond(k, v *yaml.Node, what string) *rawCond {
	c := &rawCond{line: k.Line, col: k.Column}
	errs := d.errs
	defer func() { c.broken = d.errs > errs }()
	d.keyed(v, what, condKeys, func(key string, k, v *yaml.Node) {
		w := what + "." + key
		switch key {
		case "path":
			c.path = d.strs(v, w)
		case "path_regex":
			c.pathRegex = d.strs(v, w)
		case "name":
			c.name = d.strs(v, w)
		case "extension":
			c.extension = d.strs(v, w)
		case "content_type":
			c.contentType = d.strs(v, w)
		case "sha256":
			c.sha256 = d.strs(v, w)
		case "sha256_list":
			c.sha256List = d.strs(v, w)
		case "user":
			c.user = d.strs(v, w)
		case "group":
			c.group = d.strs(v, w)
		case "opener":
			c.opener = d.strs(v, w)
		case "origin":
			c.origin = d.origin(v, w)
		case "referrer":
			c.referrer = d.origin(v, w)
		case "size":
			c.sizeLine, c.sizeCol = k.Line, k.Column
			d.keyed(v, w, sizeKeys, func(key string, _, v *yaml.Node) {
				if n, ok := d.size(v, w+"."+key); ok {
					if key == "min" {
						c.sizeMin = &n
					} else {
						c.sizeMax = &n
					}
				}
			})
			if c.sizeMin != nil && c.sizeMax != nil && *c.sizeMin > *c.sizeMax {
				d.errorf(k, "%s: min %d is larger than max %d", w, *c.sizeMin, *c.sizeMax)
			}
		}
	})
	return c
}

var originKeys = []string{"present", "url_regex", "host", "domain", "scheme"}

func (d *decoder) origin(v *yaml.Node, what string) *rawOrigin {
	o := &rawOrigin{}
	if vv := deref(v); vv.Kind == yaml.MappingNode {
		o.keys = len(vv.Content) / 2
	}
	d.keyed(v, what, originKeys, func(key string, _, v *yaml.Node) {
		w := what + "." + key
		switch key {
		case "present":
			if b, ok := d.boolean(v, w); ok {
				o.present = &b
			}
		case "url_regex":
			o.urlRegex = d.strs(v, w)
		case "host":
			o.host = d.strs(v, w)
		case "domain":
			o.domain = d.strs(v, w)
		case "scheme":
			o.scheme = d.strs(v, w)
		}
	})
	return o
}
