package policy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestConditions decides, for every kind of condition, real files with real extended
// attributes against a policy of one rule: each case says whether the rule matches, and
// what it reports as matched when it does.
func TestConditions(t *testing.T) {
	// A file of the test: its name under the test directory, its size in bytes (its content
	// is that many x's) and the attributes Chromium (xdg) or Isolator (for Firefox) wrote.
	type file struct {
		name             string
		size             int
		origin, referrer string
		firefox          bool // the isolator.* attributes instead of the xdg ones
	}
	tests := []struct {
		name   string
		rule   string // the rule's match (and unless) block
		file   file
		req    Request // who asks: User, UID, Groups, Home, Opener
		match  bool
		reason string // a substring of a Matched entry when the rule matches
	}{
		{"user by name", `match: {user: [alice, "1001"]}`, file{name: "a"}, Request{User: "alice", UID: 1000}, true, `user "alice"`},
		{"user by uid", `match: {user: [alice, "1001"]}`, file{name: "a"}, Request{User: "bob", UID: 1001}, true, `user "1001"`},
		{"user neither", `match: {user: [alice, "1001"]}`, file{name: "a"}, Request{User: "bob", UID: 1002}, false, ""},
		{"user name is not a uid", `match: {user: ["1001"]}`, file{name: "a"}, Request{User: "1001", UID: 5}, false, ""},
		{"group among several", `match: {group: [staff]}`, file{name: "a"}, Request{User: "bob", Groups: []string{"users", "staff"}}, true, `group "staff"`},
		{"group absent", `match: {group: [staff]}`, file{name: "a"}, Request{User: "bob", Groups: []string{"users"}}, false, ""},

		{"size at min", `match: {size: {min: 10, max: 20}}`, file{name: "a", size: 10}, Request{}, true, "size >= 10 and <= 20 (10 bytes)"},
		{"size at max", `match: {size: {min: 10, max: 20}}`, file{name: "a", size: 20}, Request{}, true, "(20 bytes)"},
		{"size below min", `match: {size: {min: 10, max: 20}}`, file{name: "a", size: 9}, Request{}, false, ""},
		{"size above max", `match: {size: {min: 10, max: 20}}`, file{name: "a", size: 21}, Request{}, false, ""},
		{"size in KiB", `match: {size: {min: 1KiB}}`, file{name: "a", size: 1024}, Request{}, true, "size >= 1024"},
		{"size under 1KiB", `match: {size: {min: 1KiB}}`, file{name: "a", size: 1023}, Request{}, false, ""},
		{"size in KB", `match: {size: {max: 1KB}}`, file{name: "a", size: 1001}, Request{}, false, ""},
		{"empty file", `match: {size: {max: 0}}`, file{name: "a", size: 0}, Request{}, true, "size >= 0 and <= 0"},

		{"path_regex", `match: {path_regex: ["/incoming/[^/]+\\.csv$"]}`, file{name: "incoming/a.csv"}, Request{}, true, "path matches"},
		{"path_regex deeper", `match: {path_regex: ["/incoming/[^/]+\\.csv$"]}`, file{name: "incoming/sub/a.csv"}, Request{}, false, ""},

		{"host glob, port and case", `match: {origin: {host: ["*.cdn.example"]}}`, file{name: "a", origin: "https://A.CDN.Example:8443/x"}, Request{}, true, `origin host "*.cdn.example"`},
		{"host glob, not the bare domain", `match: {origin: {host: ["*.cdn.example"]}}`, file{name: "a", origin: "https://cdn.example/x"}, Request{}, false, ""},
		{"host of a Firefox download", `match: {origin: {host: ["files.example.org"]}}`, file{name: "a", origin: "https://files.example.org/f", firefox: true}, Request{}, true, `origin host "files.example.org"`},
		{"host braces", `match: {origin: {host: ["{files,dl}.example.org"]}}`, file{name: "a", origin: "https://dl.example.org/f"}, Request{}, true, `origin host "{files,dl}.example.org"`},
		{"host without origin", `match: {origin: {host: ["*"]}}`, file{name: "a"}, Request{}, false, ""},

		{"scheme", `match: {origin: {scheme: [https]}}`, file{name: "a", origin: "HTTPS://x.example/"}, Request{}, true, `origin scheme "https"`},
		{"other scheme", `match: {origin: {scheme: [https]}}`, file{name: "a", origin: "http://x.example/"}, Request{}, false, ""},
		{"scheme of the referrer", `match: {referrer: {scheme: [http]}}`, file{name: "a", origin: "https://x.example/", referrer: "http://y.example/"}, Request{}, true, `referrer scheme "http"`},

		{"url_regex", `match: {origin: {url_regex: ["/download/[0-9]+$"]}}`, file{name: "a", origin: "https://x.example/download/42"}, Request{}, true, "origin url matches"},
		{"url_regex no match", `match: {origin: {url_regex: ["/download/[0-9]+$"]}}`, file{name: "a", origin: "https://x.example/download/42/x"}, Request{}, false, ""},

		{"referrer domain", `match: {referrer: {domain: [bad.example]}}`, file{name: "a", origin: "https://cdn.example/f", referrer: "https://www.bad.example/page"}, Request{}, true, `referrer domain "bad.example"`},
		{"referrer domain, origin there", `match: {referrer: {domain: [bad.example]}}`, file{name: "a", origin: "https://bad.example/f"}, Request{}, false, ""},
		{"referrer of a Firefox download", `match: {referrer: {domain: [bad.example]}}`, file{name: "a", origin: "https://cdn.example/f", referrer: "https://bad.example/", firefox: true}, Request{}, true, `referrer domain`},
		{"no referrer", `match: {referrer: {present: false}, origin: {present: true}}`, file{name: "a", origin: "https://x.example/"}, Request{}, true, "no referrer"},
		{"no referrer, but there is one", `match: {referrer: {present: false}}`, file{name: "a", origin: "https://x.example/", referrer: "https://y.example/"}, Request{}, false, ""},

		{"unless does not hold", `{match: {extension: [zz]}, unless: {user: [alice]}}`, file{name: "a.zz"}, Request{User: "bob"}, true, "unless-conditions did not all hold"},
		{"unless holds", `{match: {extension: [zz]}, unless: {user: [alice]}}`, file{name: "a.zz"}, Request{User: "alice"}, false, ""},
		{"unless needs all of its conditions", `{match: {extension: [zz]}, unless: {user: [alice], origin: {domain: [corp.example]}}}`, file{name: "a.zz", origin: "https://other.example/"}, Request{User: "alice"}, true, `extension "zz"`},
		{"unless with all of them", `{match: {extension: [zz]}, unless: {user: [alice], origin: {domain: [corp.example]}}}`, file{name: "a.zz", origin: "https://www.corp.example/"}, Request{User: "alice"}, false, ""},

		{"name braces", `match: {name: ["*.{scr,pif}"]}`, file{name: "holiday.pif"}, Request{}, true, `name "*.{scr,pif}"`},
		{"name braces, other extension", `match: {name: ["*.{scr,pif}"]}`, file{name: "holiday.exe"}, Request{}, false, ""},
		{"name braces, literal alternatives", `match: {name: ["{setup,install}.exe"]}`, file{name: "install.exe"}, Request{}, true, `name "{setup,install}.exe"`},
		{"path braces", `match: {path: ["/**/{in,out}/*.txt"]}`, file{name: "out/a.txt"}, Request{}, true, `path "/**/{in,out}/*.txt"`},
		{"opener braces", `match: {opener: ["/usr/bin/{sha256,md5}sum"]}`, file{name: "a"}, Request{Opener: "/usr/bin/md5sum"}, true, `opener "/usr/bin/{sha256,md5}sum"`},
		{"opener unknown", `match: {opener: ["/**"]}`, file{name: "a"}, Request{}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			rule := tt.rule
			if !strings.HasPrefix(rule, "{") {
				rule = "{" + rule + "}"
			}
			rule = strings.Replace(rule, "{", "{name: hit, action: deny, ", 1)
			writeFiles(t, filepath.Join(dir, "policy"), map[string]string{"p.yaml": "default: {action: ask, untrusted_action: ask}\nrules:\n  - " + rule + "\n"})
			p, err := loadDir(t, filepath.Join(dir, "policy"))
			if err != nil {
				t.Fatal(err)
			}
			name := filepath.Join(dir, "files", tt.file.name)
			writeFiles(t, filepath.Dir(name), map[string]string{filepath.Base(name): strings.Repeat("x", tt.file.size)})
			attrs := [2]string{XattrOrigin, XattrReferrer}
			if tt.file.firefox {
				attrs = [2]string{XattrIsolatorOrigin, XattrIsolatorReferrer}
			}
			for i, v := range []string{tt.file.origin, tt.file.referrer} {
				if v == "" {
					continue
				}
				if err := unix.Setxattr(name, attrs[i], []byte(v), 0); err != nil {
					t.Skipf("file system of %s has no user xattrs: %v", name, err)
				}
			}
			f, err := os.Open(name)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			req := tt.req
			req.Path, req.File = name, f
			if req.Origin, req.Referrer, err = ReadOriginFile(f); err != nil {
				t.Fatal(err)
			}
			if req.Origin != tt.file.origin || req.Referrer != tt.file.referrer {
				t.Fatalf("read origin %q, referrer %q back; wrote %q, %q", req.Origin, req.Referrer, tt.file.origin, tt.file.referrer)
			}
			d, err := p.Decide(&req)
			if err != nil {
				t.Fatal(err)
			}
			if got := d.Rule == "hit"; got != tt.match {
				t.Fatalf("rule matches: %v, want %v (%s)", got, tt.match, d.Explanation)
			}
			if tt.match && !slices.ContainsFunc(d.Matched, func(m string) bool { return strings.Contains(m, tt.reason) }) {
				t.Errorf("Matched %q has nothing containing %q", d.Matched, tt.reason)
			}
			lin := req
			if got := decideLinear(p, &lin); got != d.Rule {
				t.Errorf("indexed decision %q, trying every rule in order %q", d.Rule, got)
			}
		})
	}
}
