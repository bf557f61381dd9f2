package policy

import (
	"errors"
	"path"
	"slices"
	"strings"
	"testing"
)

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern string
		home    string
		match   []string
		noMatch []string
	}{
		{"/usr/**", "", []string{"/usr", "/usr/bin", "/usr/share/doc/x/y"}, []string{"/usrx", "/opt/usr", "/"}},
		{"/home/*/Downloads/*.pdf", "", []string{"/home/a/Downloads/x.pdf"}, []string{"/home/a/b/Downloads/x.pdf", "/home/a/Downloads/sub/x.pdf", "/home/a/Downloads/x.pdfx"}},
		{"/srv/**/secret/*", "", []string{"/srv/secret/a", "/srv/x/y/secret/a"}, []string{"/srv/secret", "/srv/secret/a/b"}},
		{"/a/**/**/b", "", []string{"/a/b", "/a/x/b", "/a/x/y/z/b"}, []string{"/a/b/c"}},
		{"~/Downloads/**", "/home/al", []string{"/home/al/Downloads", "/home/al/Downloads/x/y"}, []string{"/home/alice/Downloads/x", "/home/bo/Downloads/x"}},
		{"~/**", "/home/al/", []string{"/home/al/x", "/home/al"}, []string{"/home/alx", "/etc/x"}},
		{"/tmp/{a,b{1,2}}.txt", "", []string{"/tmp/a.txt", "/tmp/b1.txt", "/tmp/b2.txt"}, []string{"/tmp/b.txt", "/tmp/{a,b}.txt"}},
		{"/tmp/[ab]?.txt", "", []string{"/tmp/a1.txt", "/tmp/bz.txt"}, []string{"/tmp/c1.txt", "/tmp/a.txt"}},
		{`/tmp/\*`, "", []string{"/tmp/*"}, []string{"/tmp/x"}},
	}
	for _, tt := range tests {
		gs, err := compileGlobs(tt.pattern)
		if err != nil {
			t.Errorf("compile %q: %v", tt.pattern, err)
			continue
		}
		m := func(p string) bool {
			return slices.ContainsFunc(gs, func(g *glob) bool { return g.match(p, tt.home) })
		}
		for _, p := range tt.match {
			if !m(p) {
				t.Errorf("%q does not match %q", tt.pattern, p)
			}
		}
		for _, p := range tt.noMatch {
			if m(p) {
				t.Errorf("%q matches %q", tt.pattern, p)
			}
		}
	}
	// A home-relative pattern never matches without a home.
	gs, _ := compileGlobs("~/**")
	if gs[0].match("/x", "") || gs[0].match("/x", "/") {
		t.Error("~/** matched without a home")
	}
}

func TestGlobErrors(t *testing.T) {
	for _, p := range []string{"", "rel/x", "~bob/x", "/a//b", "/a/", "/a/b**", "/a/[x", "/a/{b", "/a/b}", "/a/../b", "/a/{" + string(make([]byte, 0)) + "a,b}{c,d}{e,f}{g,h}{i,j}{k,l}{m,n}"} {
		if _, err := compileGlobs(p); err == nil {
			t.Errorf("compileGlobs(%q) succeeded", p)
		}
	}
}

func TestExtensionsAndDomains(t *testing.T) {
	if got := extensions("Report.Tar.GZ", make([]string, 0, 8)); !slices.Equal(got, []string{"gz", "tar.gz"}) {
		t.Errorf("extensions = %q", got)
	}
	if got := extensions(".bashrc", make([]string, 0, 8)); len(got) != 0 {
		t.Errorf("extensions(.bashrc) = %q", got)
	}
	for _, tt := range []struct {
		host, domain string
		in           bool
	}{
		{"example.com", "example.com", true},
		{"a.b.example.com", "example.com", true},
		{"badexample.com", "example.com", false},
		{"example.com.evil.net", "example.com", false},
		{"com", "example.com", false},
	} {
		if got := inDomain(tt.host, tt.domain); got != tt.in {
			t.Errorf("inDomain(%q, %q) = %v", tt.host, tt.domain, got)
		}
	}
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]int64{"0": 0, "10": 10, "1KiB": 1024, "1K": 1024, "1KB": 1000, "1.5MiB": 1572864, "2 GB": 2e9, "1Gi": 1 << 30} {
		if got, err := parseSize(s); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "x", "1XB", "-1", "1i", "1e99GB"} {
		if _, err := parseSize(s); err == nil {
			t.Errorf("parseSize(%q) succeeded", s)
		}
	}
}

func TestExpandArgs(t *testing.T) {
	h := &Handler{Program: "{input}", Args: []string{"-o", "{output}/{stem}.txt", "{input}", "{{literal}}", "{name}"}}
	got := h.ExpandArgs("report.v2.pdf")
	want := []string{"-o", "/output/report.v2.txt", "/input/report.v2.pdf", "{literal}", "report.v2.pdf"}
	if !slices.Equal(got, want) {
		t.Errorf("ExpandArgs = %q, want %q", got, want)
	}
	if p := h.ExpandProgram("x"); p != "/input/x" {
		t.Errorf("ExpandProgram = %q", p)
	}
}

func TestCleanPathAndLower(t *testing.T) {
	for _, p := range []string{"/", "/a", "/a/b", "/a/", "/a//b", "/a/./b", "/a/../b", "/a/.", "/a/..", "/..", "/.a/..b/c.", "/a/b.../c"} {
		if got, want := cleanPath(p), path.Clean(p); got != want {
			t.Errorf("cleanPath(%q) = %q, want %q", p, got, want)
		}
	}
	for _, s := range []string{"", "abc", "ABC", "0123456789abcdefABCDEF", strings.Repeat("ab", 32), strings.Repeat("ab", 31) + "Ab", "text/Plain", "ÄÖ", "a_b@c[d]^e"} {
		if got, want := lowerASCII(s), strings.ToLower(s); got != want {
			t.Errorf("lowerASCII(%q) = %q, want %q", s, got, want)
		}
	}
}

// TestBracePatterns loads rules whose name, host, path and opener patterns have {a,b}
// alternatives and checks which requests they match, through the index and through
// trying every rule in order: a deny rule written with braces must deny what it names.
func TestBracePatterns(t *testing.T) {
	tests := []struct {
		cond    string // the rule's match block
		req     func(s string) Request
		match   []string
		noMatch []string
	}{
		{
			cond:    `{name: ["*.{scr,pif}"]}`,
			req:     func(s string) Request { return Request{Path: "/x/" + s} },
			match:   []string{"a.scr", "b.pif", ".scr"},
			noMatch: []string{"a.exe", "a.{scr,pif}", "a.SCR", "a.scrx", "a.pi"},
		},
		{
			cond:    `{name: ["Setup*.{exe,msi}", "{install,update}.sh"]}`,
			req:     func(s string) Request { return Request{Path: "/x/" + s} },
			match:   []string{"Setup1.msi", "Setup.exe", "install.sh", "update.sh"},
			noMatch: []string{"setup1.msi", "Setup1.zip", "{install,update}.sh", "install.shx"},
		},
		{
			cond:    `{name: ["{a,b{1,2}}.txt", "lit\\{x\\}"]}`,
			req:     func(s string) Request { return Request{Path: "/x/" + s} },
			match:   []string{"a.txt", "b1.txt", "b2.txt", "lit{x}"},
			noMatch: []string{"b.txt", "litx"},
		},
		{
			cond:    `{origin: {host: ["{files,dl}.example.org", "*.{cdn,edge}.example"]}}`,
			req:     func(s string) Request { return Request{Path: "/x/y", Origin: "https://" + s + "/f"} },
			match:   []string{"files.example.org", "DL.example.org", "a.cdn.example", "b.c.edge.example"},
			noMatch: []string{"www.example.org", "cdn.example", "a.other.example", "{files,dl}.example.org"},
		},
		{
			cond:    `{referrer: {host: ["{a,b}.example"]}}`,
			req:     func(s string) Request { return Request{Path: "/x/y", Referrer: "https://" + s + "/"} },
			match:   []string{"a.example", "b.example"},
			noMatch: []string{"c.example"},
		},
		{
			cond:    `{path: ["/srv/{in,out}/*.{doc,xls}"]}`,
			req:     func(s string) Request { return Request{Path: s} },
			match:   []string{"/srv/in/a.doc", "/srv/out/b.xls"},
			noMatch: []string{"/srv/tmp/a.doc", "/srv/in/a.pdf"},
		},
		{
			cond:    `{opener: ["/usr/bin/{sha,md5}*sum"]}`,
			req:     func(s string) Request { return Request{Path: "/x/y", Opener: s} },
			match:   []string{"/usr/bin/sha256sum", "/usr/bin/md5sum"},
			noMatch: []string{"/usr/bin/b2sum"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.cond, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, map[string]string{"p.yaml": "default: {action: ask, untrusted_action: ask}\n" +
				"rules:\n  - {name: hit, action: deny, match: " + tt.cond + "}\n"})
			p, err := loadDir(t, dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range append(tt.match, tt.noMatch...) {
				req := tt.req(s)
				want := "hit"
				if !slices.Contains(tt.match, s) {
					want = RuleDefault
					if p.UntrustedOrigin(req.Origin, req.Referrer) {
						want = RuleUntrustedDefault
					}
				}
				req.Size, req.SHA256, req.ContentType = 1, strings.Repeat("0", 64), "text/plain"
				d, err := p.Decide(&req)
				if err != nil {
					t.Fatalf("%s: %v", s, err)
				}
				lin := req
				if d.Rule != want || decideLinear(p, &lin) != want {
					t.Errorf("%s: decided by %q (in order: %q), want %q", s, d.Rule, decideLinear(p, &lin), want)
				}
			}
		})
	}
}

// TestBracePatternErrors: patterns whose braces are malformed, and conditions that are
// not patterns but were given braces, are errors rather than rules that never match.
func TestBracePatternErrors(t *testing.T) {
	for _, cond := range []string{
		`{name: ["*.{scr,pif"]}`,
		`{name: ["*.scr}"]}`,
		`{name: ["{a,}"]}`,
		`{name: ["{a,[b}"]}`,
		`{origin: {host: ["{a,b.example"]}}`,
		`{origin: {host: ["{a,}"]}}`,
		`{extension: ["{exe,msi}"]}`,
		`{origin: {domain: ["{a,b}.example"]}}`,
		`{content_type: ["application/{pdf,zip}"]}`,
		`{user: ["{alice,bob}"]}`,
		`{group: ["adm*"]}`,
		`{content_type: ["app*/pdf"]}`,
	} {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{"p.yaml": "default: {action: ask, untrusted_action: ask}\n" +
			"rules:\n  - {name: r, action: deny, match: " + cond + "}\n"})
		_, err := loadDir(t, dir)
		var ve *ValidationErrors
		if !errors.As(err, &ve) || len(ve.Errors()) != 1 || ve.Errors()[0].Line != 3 {
			t.Errorf("%s: Load = %v, want one error on line 3", cond, err)
		}
	}
}

// TestGlobCovers checks the shadowing analysis's glob comparison on pairs of patterns, and
// that its cheap pre-check never rejects a pair the full comparison accepts.
func TestGlobCovers(t *testing.T) {
	patterns := []string{
		"/**", "/srv/**", "/srv/x", "/srv/x/**", "/srv/*/in/**", "/srv/a/in/x", "/srv/a/in/**",
		"/srv/*.txt", "/srv/a.txt", "/srv/[ab].txt", "/srv/**/x", "/srv/x/y/z", "/usr/bin/*sum",
		"/usr/bin/sha256sum", "~/**", "~/Downloads/**", "~/Downloads/a.pdf", "~/Downloads/*.pdf", "~",
	}
	covers := map[[2]string]bool{ // c covers a
		{"/**", "/srv/x"}: true, {"/srv/**", "/srv/x/y/z"}: true, {"/srv/x/**", "/srv/x"}: true,
		{"/srv/*/in/**", "/srv/a/in/x"}: true, {"/srv/*.txt", "/srv/a.txt"}: true,
		{"/usr/bin/*sum", "/usr/bin/sha256sum"}: true, {"~/**", "~/Downloads/a.pdf"}: true,
		{"~/Downloads/**", "~/Downloads/*.pdf"}: true, {"~/**", "~"}: true,
	}
	compile := func(p string) *glob {
		gs, err := compileGlobs(p)
		if err != nil || len(gs) != 1 {
			t.Fatalf("compileGlobs(%q) = %v, %v", p, gs, err)
		}
		return gs[0]
	}
	for _, cp := range patterns {
		for _, ap := range patterns {
			c, a := compile(cp), compile(ap)
			got := globCovers(c, a)
			if want := covers[[2]string{cp, ap}]; want && !got {
				t.Errorf("%q does not cover %q", cp, ap)
			}
			if cp == ap && !got {
				t.Errorf("%q does not cover itself", cp)
			}
			if !mayCover(c, a) && got {
				t.Errorf("mayCover(%q, %q) is false, but it covers it", cp, ap)
			}
		}
	}
	for _, pair := range [][2]string{{"/srv/x", "/srv/**"}, {"/srv/a.txt", "/srv/*.txt"}, {"~/**", "/home/**"}, {"/srv/x/**", "/srv/xy"}, {"/srv/*/in/**", "/srv/**/in/x"}} {
		if globCovers(compile(pair[0]), compile(pair[1])) {
			t.Errorf("%q covers %q", pair[0], pair[1])
		}
	}
}
