package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/isolator-dev/isolator/policies"
)

// TestValidation loads broken policies and checks that every problem is reported with
// its position. Each case's want lists "line:col: substring" for every error, in order.
func TestValidation(t *testing.T) {
	const handlers = `handlers:
  h:
    image: busybox
    program: /usr/bin/busybox
    args: [cat, "{input}"]
default: {handler: h, action: ask}
`
	tests := []struct {
		name  string
		files map[string]string
		want  []string // "file:line:col: substring" of every error, in order
		warn  []string // substrings of warnings
	}{
		{
			name: "typo in a key, with a suggestion",
			files: map[string]string{"a.yaml": handlers + `rules:
  - name: r
    acton: trust
`},
			want: []string{`a.yaml:8:5: rule "r" has no action`, `a.yaml:9:5: unknown key "acton" in rule (did you mean "action"?)`},
		},
		{
			name: "wrong types",
			files: map[string]string{"a.yaml": handlers + `rules:
  - name: r
    action: [trust]
    match:
      size: {min: lots}
      extension: {pdf: true}
      origin: {present: maybe}
`},
			want: []string{
				"a.yaml:9:13: rule action must be a string, not a list",
				"a.yaml:11:19: match.size.min must be a size",
				"a.yaml:12:18: match.extension must be a list of strings, not a mapping",
				"a.yaml:13:25: match.origin.present must be true or false",
			},
		},
		{
			name: "bad glob, regex, content type and domain",
			files: map[string]string{"a.yaml": handlers + `rules:
  - name: r
    action: deny
    match:
      path: ["/tmp/[x", "relative/**", "/a/b**c"]
      path_regex: ["(unclosed"]
      content_type: [pdf]
      origin: {domain: ["exa mple.com"]}
`},
			want: []string{
				"a.yaml:11:14: match.path: pattern \"/tmp/[x\"",
				"a.yaml:11:25: match.path: pattern \"relative/**\" must be absolute",
				"a.yaml:11:40: ** must be a whole path segment",
				"a.yaml:12:20: bad path regex \"(unclosed\"",
				"a.yaml:13:22: match.content_type: \"pdf\" is not a MIME type",
				"a.yaml:14:25: match.origin.domain: bad domain",
			},
		},
		{
			name: "unknown handler, handler on trust, isolate without handler",
			files: map[string]string{"a.yaml": handlers + `rules:
  - name: r1
    action: isolate
    handler: hh
  - name: r2
    action: trust
    handler: h
  - name: r3
    action: isolate
`},
			want: []string{
				`a.yaml:10:14: unknown handler "hh" (did you mean "h"?)`,
				`a.yaml:13:14: rule "r2": handler is only used with action isolate`,
				`a.yaml:15:13: rule "r3": action isolate needs a handler`,
			},
		},
		{
			name: "duplicate rule names across files, duplicate keys",
			files: map[string]string{
				"10-a.yaml": handlers + "rules:\n  - {name: same, action: deny, match: {extension: [exe]}}\n",
				"20-b.yaml": "rules:\n  - name: same\n    action: trust\n    action: deny\n    match: {extension: [txt]}\n",
			},
			want: []string{
				`20-b.yaml:2:11: duplicate rule name "same" (first defined at`,
				`20-b.yaml:4:5: duplicate key "action" in rule`,
			},
		},
		{
			name: "duplicate name of a rule with errors",
			files: map[string]string{"a.yaml": handlers + `rules:
  - {name: same, action: isolate, handler: nope}
  - {name: same, action: deny, match: {extension: [exe]}}
  - {name: other, action: isolat}
  - {name: other, action: deny}
`},
			want: []string{
				`a.yaml:8:44: unknown handler "nope"`,
				`a.yaml:9:12: duplicate rule name "same" (first defined at `,
				`a.yaml:10:27: unknown action "isolat" (did you mean "isolate"?)`,
				`a.yaml:11:12: duplicate rule name "other" (first defined at `,
			},
		},
		{
			name: "shadowed rules are warnings, not errors",
			files: map[string]string{"a.yaml": handlers + `rules:
  - name: all-downloads
    action: isolate
    handler: h
    match: {path: ["~/Downloads/**"]}
  - name: pdf-downloads
    action: trust
    match: {path: ["~/Downloads/*.pdf"], content_type: [application/pdf]}
  - name: anything
    action: ask
  - name: never
    action: trust
    match: {extension: [txt]}
`},
			warn: []string{
				`rule "pdf-downloads" can never match: rule "all-downloads"`,
				`rule "never" can never match: rule "anything"`,
			},
		},
		{
			name: "a problem in an aliased node is reported once",
			files: map[string]string{"a.yaml": handlers + `rules:
  - {name: a, action: deny, match: &m {extension: ["["], size: {min: lots}}}
  - {name: b, action: deny, match: *m}
  - {name: c, action: deny, match: *m}
`},
			want: []string{
				`a.yaml:8:52: match.extension: "[" is not an extension`,
				`a.yaml:8:70: match.size.min must be a size`,
			},
		},
		{
			name:  "alias bomb",
			files: map[string]string{"a.yaml": aliasBomb()},
			want:  []string{"a.yaml:1:1: document expands to more than"},
		},
		{
			name:  "oversized file",
			files: map[string]string{"a.yaml": "# " + strings.Repeat("x", MaxFileSize) + "\n"},
			want:  []string{"a.yaml: file is larger than the limit"},
		},
		{
			name:  "invalid YAML syntax",
			files: map[string]string{"a.yaml": handlers + "rules:\n  - name: [unclosed\n"},
			want:  []string{"a.yaml:7:1: invalid YAML"},
		},
		{
			name:  "tab in indentation",
			files: map[string]string{"a.yaml": handlers + "rules:\n  - name: a\n\taction: deny\n"},
			want:  []string{"a.yaml:9:1: tabs are not allowed in YAML indentation"},
		},
		{
			name:  "tab at the start of a line",
			files: map[string]string{"a.yaml": handlers + "rules:\n\t- name: a\n"},
			want:  []string{"a.yaml:8:1: tabs are not allowed in YAML indentation"},
		},
		{
			name:  "tab after spaces in indentation",
			files: map[string]string{"a.yaml": handlers + "rules:\n  - name: a\n    action: deny\n    match:\n      extension: [a]\n  \t \n"},
			want:  []string{"a.yaml:12:3: tabs are not allowed in YAML indentation"},
		},
		{
			name:  "invalid UTF-8",
			files: map[string]string{"a.yaml": handlers + "rules:\n  - name: a\n    action: deny\n    description: \"caf\xe9\"\n"},
			want:  []string{"a.yaml:10:22: invalid UTF-8 (byte 0xe9)"},
		},
		{
			name:  "invalid UTF-8 after other characters",
			files: map[string]string{"a.yaml": handlers + "rules:\n  - name: a\n    action: deny\n    description: \"\u00e9\u00e9\xff\"\n"},
			want:  []string{"a.yaml:10:21: invalid UTF-8 (byte 0xff)"},
		},
		{
			name:  "invalid UTF-8 in a comment",
			files: map[string]string{"a.yaml": "# caf\xe9\n" + handlers},
			want:  []string{"a.yaml:1:6: invalid UTF-8 (byte 0xe9)"},
		},
		{
			name: "handler problems",
			files: map[string]string{"a.yaml": `default: {action: deny, untrusted_action: deny}
handlers:
  bad:
    image: ../etc/x
    program: usr/bin/x
    args: ["{inptu}"]
    memory: 10
    timeout: soon
    returns: [everything]
rules:
  - {name: r, action: isolate, handler: bad}
`},
			want: []string{
				`a.yaml:4:12: handler "bad": image "../etc/x" must be a plain image name`,
				`a.yaml:5:14: program "usr/bin/x" must be a clean absolute guest path`,
				`a.yaml:6:12: unknown placeholder {inptu}`,
				`a.yaml:7:13: handler "bad": memory 10 is not between 16MiB and 64GiB`,
				`a.yaml:8:14: handler "bad" timeout must be a duration`,
				`a.yaml:9:15: unknown returns value "everything"`,
			},
		},
		{
			name: "a file from an untrusted origin is never trusted by default",
			files: map[string]string{
				"10-a.yaml": handlers,
				"20-b.yaml": "default: {untrusted_action: ask}\n",
				"30-c.yaml": "default:\n  untrusted_action: Trust\n",
			},
			want: []string{"30-c.yaml:2:21: default.untrusted_action must not be trust: a file from an untrusted origin is never trusted by default (want isolate, deny or ask"},
		},
		{
			name:  "isolate default needs a handler",
			files: map[string]string{"a.yaml": "rules: []\n"},
			want: []string{
				"a.yaml:1:1: default.action is isolate (the built-in default) but no policy file sets default.handler",
				"a.yaml:1:1: default.untrusted_action is isolate (the built-in default) but no policy file sets default.untrusted_handler",
			},
		},
		{
			name: "bad hash list file",
			files: map[string]string{
				"a.yaml": handlers + "lists:\n  l: {files: [l.txt, ../x]}\nrules:\n  - {name: r, action: deny, match: {sha256_list: [l, m]}}\n",
				"l.txt":  "# comment\n\nnot-a-hash\n",
			},
			want: []string{
				"a.yaml:8:22: list \"l\": file \"../x\" must be a relative path",
				"a.yaml:10:54: unknown list \"m\"",
				"l.txt:3:1: not a SHA-256 digest",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			p, err := loadDir(t, dir)
			var issues []Issue
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected errors:\n%v", err)
				}
				issues = p.Warnings()
			} else {
				var ve *ValidationErrors
				if !errors.As(err, &ve) {
					t.Fatalf("Load = %v, want *ValidationErrors", err)
				}
				errs := ve.Errors()
				if len(errs) != len(tt.want) {
					t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(tt.want), err)
				}
				for i, w := range tt.want {
					pos, msg, _ := strings.Cut(w, ": ")
					if got := strings.TrimPrefix(errs[i].String(), dir+"/"); !strings.HasPrefix(got, pos+": ") || !strings.Contains(got, msg) {
						t.Errorf("error %d:\n got %s\nwant %s", i, got, w)
					}
				}
				issues = ve.Warnings()
			}
			for _, w := range tt.warn {
				found := false
				for _, is := range issues {
					found = found || (is.Warning && strings.Contains(is.Msg, w))
				}
				if !found {
					t.Errorf("no warning containing %q in %v", w, issues)
				}
			}
		})
	}
}

func aliasBomb() string {
	var b strings.Builder
	b.WriteString("a: &a [x, x, x, x, x, x, x, x, x, x]\n")
	prev := "a"
	for i := 0; i < 8; i++ {
		name := fmt.Sprintf("b%d", i)
		fmt.Fprintf(&b, "%s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]\n", name, name, prev, prev, prev, prev, prev, prev, prev, prev, prev, prev)
		prev = name
	}
	return b.String()
}

func TestEmptyDirFailsClosed(t *testing.T) {
	_, err := loadDir(t, t.TempDir())
	if !errors.Is(err, ErrNoPolicy) {
		t.Fatalf("empty directory: %v, want ErrNoPolicy", err)
	}
}

func TestShippedPolicyIsValid(t *testing.T) {
	p := loadWithShipped(t, t.TempDir())
	for _, w := range p.Warnings() {
		t.Errorf("shipped policy warning: %s", w)
	}
	if p.NumRules() < 10 {
		t.Errorf("shipped policy has %d rules", p.NumRules())
	}
}

// TestMasking checks that a site file with the name of a shipped one replaces it.
func TestMasking(t *testing.T) {
	site := t.TempDir()
	writeFiles(t, site, map[string]string{"30-system.yaml": ""})
	p := loadWithShipped(t, site)
	d, err := p.Decide(&Request{Path: "/usr/share/doc/x", SHA256: strings.Repeat("0", 64), ContentType: "text/plain"})
	if err != nil {
		t.Fatal(err)
	}
	if d.Rule == "trust-system" {
		t.Fatalf("masked shipped file still decides: %+v", d)
	}
	for _, f := range p.Files() {
		if strings.HasSuffix(f, "30-system.yaml") && !strings.HasPrefix(f, site) {
			t.Errorf("shipped 30-system.yaml still loaded: %v", p.Files())
		}
	}
}

// TestNormalizedRoundTrip checks that `policy show` output is itself a policy that
// decides the same way.
func TestNormalizedRoundTrip(t *testing.T) {
	site := t.TempDir()
	writeFiles(t, site, map[string]string{"45-x.yaml": `
default: {trusted_domains: [corp.example]}
rules:
  - name: sized
    action: ask
    match: {size: {min: 1KiB, max: 2MB}, user: ["1000", bob], group: [staff], name: ["*.{doc,xls}"]}
    unless: {referrer: {host: ["*.corp.example"], scheme: [https], url_regex: ["^https://"]}}
`})
	p := loadWithShipped(t, site)
	out, err := p.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"all.yaml": string(out)})
	q, err := loadDir(t, dir)
	if err != nil {
		t.Fatalf("normalized policy does not load: %v\n%s", err, out)
	}
	if q.NumRules() != p.NumRules() {
		t.Fatalf("normalized policy has %d rules, want %d", q.NumRules(), p.NumRules())
	}
	out2, err := q.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	strip := func(b []byte) string { // comments name the files, lines and version
		var keep []string
		for _, l := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(strings.TrimSpace(l), "#") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
	if strip(out) != strip(out2) {
		t.Errorf("normalizing twice differs:\n%s\n---\n%s", out, out2)
	}
	reqs := []Request{
		{Path: "/home/bob/Downloads/a.doc", Home: "/home/bob", User: "bob", Groups: []string{"staff"}, Size: 4096, SHA256: strings.Repeat("1", 64), ContentType: "application/msword"},
		{Path: "/home/bob/Downloads/a.doc", Home: "/home/bob", UID: 1000, Groups: []string{"staff"}, Size: 4096, Referrer: "https://x.corp.example/", SHA256: strings.Repeat("1", 64), ContentType: "text/plain"},
		{Path: "/usr/bin/x", SHA256: strings.Repeat("1", 64), ContentType: "application/x-executable"},
		{Path: "/srv/x.pdf", Origin: "https://corp.example/x", SHA256: strings.Repeat("1", 64), ContentType: "application/pdf"},
	}
	for _, r := range reqs {
		d1, err1 := p.Decide(&r)
		d2, err2 := q.Decide(&r)
		if err1 != nil || err2 != nil || d1.Rule != d2.Rule || d1.Action != d2.Action {
			t.Errorf("%s: original %+v %v, normalized %+v %v", r.Path, d1, err1, d2, err2)
		}
	}
}

func TestSymlinkedPolicyFiles(t *testing.T) {
	real := t.TempDir()
	writeFiles(t, real, map[string]string{"site.yaml": "default: {action: deny, untrusted_action: deny}\n"})
	dir := t.TempDir()
	if err := os.Symlink(filepath.Join(real, "site.yaml"), filepath.Join(dir, "10-site.yaml")); err != nil {
		t.Fatal(err)
	}
	p, err := loadDir(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Files()) != 1 {
		t.Fatalf("files %v", p.Files())
	}
}

// TestNoShadowingByBrokenRules: a rule whose match or unless did not compile is not
// analysed for shadowing, neither as the rule that covers nor as the one covered: what
// it would match is unknown, so any warning about it would be invented.
func TestNoShadowingByBrokenRules(t *testing.T) {
	site := t.TempDir()
	writeFiles(t, site, map[string]string{"05-broken.yaml": `rules:
  - name: bad-glob
    action: deny
    match: {path: ["/x/[y"]}
  - name: bad-type
    action: deny
    match: {extension: {pdf: true}}
  - name: bad-regex
    action: trust
    match: {path_regex: ["(a"], extension: [txt]}
  - name: typo-match
    action: trust
    mach: {extension: [doc]}
  - name: bad-unless
    action: ask
    match: {extension: [odt]}
    unless: {path: ["relative"]}
  - name: after-bad-glob
    action: trust
    match: {extension: [txt]}
  - name: partly-bad
    action: deny
    match: {extension: [md, "*"]}
  - name: narrower-than-partly-bad
    action: deny
    match: {extension: [md], path: ["/srv/**"]}
  - name: valid-broad
    action: deny
    match: {extension: [rtf]}
  - name: valid-narrow
    action: deny
    match: {extension: [rtf], path: ["/srv/**"]}
`})
	_, err := LoadSources(Source{FS: policies.FS(), Dir: ".", Label: ShippedLabel}, Source{FS: os.DirFS(site), Dir: ".", Label: site})
	var ve *ValidationErrors
	if !errors.As(err, &ve) {
		t.Fatalf("Load = %v, want *ValidationErrors", err)
	}
	shadowed := 0
	for _, w := range ve.Warnings() {
		if !strings.Contains(w.Msg, "can never match") {
			continue
		}
		shadowed++
		// Between valid rules the analysis still runs.
		if !strings.Contains(w.Msg, `rule "valid-narrow" can never match: rule "valid-broad"`) {
			t.Errorf("shadowing warning about a broken rule: %s", w)
		}
	}
	if shadowed != 1 {
		t.Errorf("%d shadowing warnings, want 1 (valid-narrow)", shadowed)
	}
	for _, e := range ve.Errors() {
		if strings.Contains(e.Msg, "unless has no conditions") {
			t.Errorf("invented error: %s", e)
		}
	}
	if n := len(ve.Errors()); n != 6 {
		t.Errorf("%d errors, want 6 (one per broken condition):\n%v", n, err)
	}
}

// TestUnusedWarningsNeedValidReferences: a handler or list is reported unused only when
// every rule and default was read; a rule with errors may be the one that uses it.
func TestUnusedWarningsNeedValidReferences(t *testing.T) {
	const defs = `default: {action: deny, untrusted_action: deny}
handlers:
  hh: {image: busybox, program: /usr/bin/busybox}
lists:
  ll: {sha256: [` + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" + `]}
`
	unused := func(issues []Issue) (n int) {
		for _, is := range issues {
			if strings.Contains(is.Msg, "is not used") {
				n++
			}
		}
		return n
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.yaml": defs + "rules:\n  - {name: r, action: deny, match: {extension: [x]}}\n"})
	p, err := loadDir(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := unused(p.Warnings()); n != 2 {
		t.Errorf("valid policy: %d unused warnings, want 2: %v", n, p.Warnings())
	}
	writeFiles(t, dir, map[string]string{"a.yaml": defs + `rules:
  - name: r
    action: isolate
    handler: hh
    mach: {sha256_list: [ll]}
`, "b.yaml": "rules:\n  - {name: s, action: isolate, handler: [hh]}\n"})
	_, err = loadDir(t, dir)
	var ve *ValidationErrors
	if !errors.As(err, &ve) {
		t.Fatalf("Load = %v, want *ValidationErrors", err)
	}
	if n := unused(ve.Warnings()); n != 0 {
		t.Errorf("%d unused warnings with broken rules, want none:\n%v", n, err)
	}
}

// TestMessages checks the wording of messages that used to say too much or too little.
func TestMessages(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"40-x.yaml": `version: 2
default: {action: deny, untrusted_action: deny}
handlers:
  h: {image: busybox, program: /usr/bin/busybox}
rules:
  - name: r
    action: [trust]
  - name: [x]
    action: deny
  - name: s
    action: isolate
    handler: [h]
  - name: t
`})
	if err := os.Symlink(filepath.Join(dir, "missing.yaml"), filepath.Join(dir, "30-dangling.yaml")); err != nil {
		t.Fatal(err)
	}
	_, err := loadDir(t, dir)
	var ve *ValidationErrors
	if !errors.As(err, &ve) {
		t.Fatalf("Load = %v, want *ValidationErrors", err)
	}
	want := []string{
		dir + "/30-dangling.yaml: dangling symlink to " + dir + "/missing.yaml",
		dir + "/40-x.yaml:1:10: version must be 1, not 2",
		dir + "/40-x.yaml:7:13: rule action must be a string, not a list",
		dir + "/40-x.yaml:8:11: rule name must be a string, not a list",
		dir + "/40-x.yaml:12:14: rule handler must be a string, not a list",
		dir + `/40-x.yaml:13:5: rule "t" has no action`,
	}
	var got []string
	for _, is := range ve.Errors() {
		got = append(got, is.String())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestNormalizedEmptyList: a list whose files hold no digest normalizes to a list that
// loads (found by FuzzLoadWithLists: "sha256: []" is an error).
func TestNormalizedEmptyList(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.yaml":   "default: {action: deny, untrusted_action: deny}\nlists:\n  l: {files: [l.sha256]}\nrules:\n  - {name: r, action: deny, match: {sha256_list: [l]}}\n",
		"l.sha256": "# nothing yet\n",
	})
	p, err := loadDir(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	norm := t.TempDir()
	writeFiles(t, norm, map[string]string{"all.yaml": string(out)})
	if _, err := loadDir(t, norm); err != nil {
		t.Fatalf("normalized policy does not load: %v\n%s", err, out)
	}
}

// largeOverlappingPolicy is a legal policy of n rules whose every pair shares 100
// extensions: the shadowed-rule analysis would compare about 50·n² keys. Its first two
// rules are a shadowed pair the analysis finds before it gives up.
func largeOverlappingPolicy(n int) string {
	exts := make([]string, 100)
	for i := range exts {
		exts[i] = fmt.Sprintf("e%d", i)
	}
	common := strings.Join(exts, ", ")
	var b strings.Builder
	b.WriteString("default: {action: ask, untrusted_action: deny}\nrules:\n")
	b.WriteString("  - {name: broad, action: deny, match: {extension: [zz]}}\n")
	b.WriteString("  - {name: narrow, action: deny, match: {extension: [zz], path: [\"/srv/**\"]}}\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {name: r%d, action: deny, match: {extension: [%s, x%d]}}\n", i, common, i)
	}
	return b.String()
}

// TestShadowingBudget: on a large policy the shadowed-rule analysis stops after its
// budget of comparisons, with one warning saying where, instead of keeping the loader
// busy for minutes; what it found before stopping is still reported.
func TestShadowingBudget(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"50-large.yaml": largeOverlappingPolicy(1500)})
	if fi, err := os.Stat(filepath.Join(dir, "50-large.yaml")); err != nil || fi.Size() > MaxFileSize {
		t.Fatalf("generated policy: %v, %d bytes (limit %d)", err, fi.Size(), MaxFileSize)
	}
	p, err := loadDir(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	var stopped, shadowed []Issue
	for _, w := range p.Warnings() {
		switch {
		case strings.Contains(w.Msg, "shadowed-rule analysis stopped"):
			stopped = append(stopped, w)
		case strings.Contains(w.Msg, "can never match"):
			shadowed = append(shadowed, w)
		}
	}
	if len(stopped) != 1 || !strings.Contains(stopped[0].Msg, "were not checked") || stopped[0].Line < 5 {
		t.Errorf("want one warning that the analysis stopped, at a rule after the first ones; got %v", stopped)
	}
	if len(shadowed) != 1 || !strings.Contains(shadowed[0].Msg, `rule "narrow" can never match: rule "broad"`) {
		t.Errorf("want the shadowed rule found before the analysis stopped; got %v", shadowed)
	}
	if p.NumRules() != 1502 {
		t.Errorf("%d rules, want 1502", p.NumRules())
	}
}

// TestTooManyRules: a policy of more than MaxRules rules is an error reported once, at
// the first rule past the limit, however many files follow.
func TestTooManyRules(t *testing.T) {
	rules := func(prefix string, n int) string {
		var b strings.Builder
		b.WriteString("rules:\n")
		for i := range n {
			fmt.Fprintf(&b, "  - {name: %s%d, action: deny, match: {extension: [%s%d]}}\n", prefix, i, prefix, i)
		}
		return b.String()
	}
	for _, tt := range []struct {
		name  string
		files map[string]string
		want  string // file:line of the one error
	}{
		{"across files", map[string]string{
			"10-a.yaml": "default: {action: ask, untrusted_action: deny}\n" + rules("a", 6000),
			"20-b.yaml": rules("b", 6000), "30-c.yaml": rules("c", 10), "40-d.yaml": rules("d", 10),
		}, "20-b.yaml:4002"},
		{"in one file", map[string]string{
			"10-a.yaml": "default: {action: ask, untrusted_action: deny}\n" + rules("a", MaxRules+5),
			"20-b.yaml": rules("b", 10),
		}, fmt.Sprintf("10-a.yaml:%d", MaxRules+3)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			_, err := loadDir(t, dir)
			var ve *ValidationErrors
			if !errors.As(err, &ve) {
				t.Fatalf("Load = %v, want *ValidationErrors", err)
			}
			errs := ve.Errors()
			if len(errs) != 1 || !strings.Contains(errs[0].Msg, fmt.Sprintf("more than %d rules", MaxRules)) ||
				fmt.Sprintf("%s:%d", filepath.Base(errs[0].File), errs[0].Line) != tt.want {
				t.Errorf("errors %v, want one at %s", errs, tt.want)
			}
		})
	}
}

// TestIgnoredYAMLNames: files that look like policy files but do not end in .yaml are
// not read, and one warning names them all.
func TestIgnoredYAMLNames(t *testing.T) {
	dir := t.TempDir()
	deny := "default: {action: ask, untrusted_action: deny}\nrules:\n  - {name: %s, action: deny, match: {extension: [x]}}\n"
	writeFiles(t, dir, map[string]string{
		"10-site.yml":     fmt.Sprintf(deny, "yml"),
		"20-upper.YAML":   fmt.Sprintf(deny, "upper"),
		"30-mixed.Yml":    fmt.Sprintf(deny, "mixed"),
		"40-read.yaml":    fmt.Sprintf(deny, "read"),
		".50-swap.yml":    fmt.Sprintf(deny, "hidden"),
		"60-old.yaml.bak": fmt.Sprintf(deny, "backup"),
		"notes.txt":       "not a policy",
		"feeds.yml/x":     "a directory, not a file",
	})
	p, err := loadDir(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := p.Decide(&Request{Path: "/x/a.x"}); err != nil || d.Rule != "read" {
		t.Errorf("decided by %+v, %v; want rule read, of the only file read", d, err)
	}
	want := dir + `: warning: ignored "10-site.yml", "20-upper.YAML", "30-mixed.Yml": only files whose names end in .yaml are read`
	var got []string
	for _, w := range p.Warnings() {
		got = append(got, w.String())
	}
	if len(got) != 1 || got[0] != want {
		t.Errorf("warnings %q, want only %q", got, want)
	}
}
