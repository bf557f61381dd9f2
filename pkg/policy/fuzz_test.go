package policy

import (
	"errors"
	"io/fs"
	"path"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/isolator-dev/isolator/policies"
)

// FuzzLoad feeds arbitrary bytes to the loader as a policy file. It must never panic or
// hang; failures must be *ValidationErrors with positions; a policy that loads must
// normalize to one that loads too.
func FuzzLoad(f *testing.F) {
	ents, err := fs.ReadDir(policies.FS(), ".")
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range ents {
		b, err := fs.ReadFile(policies.FS(), e.Name())
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("rules:\n  - name: r\n    acton: trust\n"))
	f.Add([]byte(aliasBomb()))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("default: {action: deny, untrusted_action: deny}\nrules:\n  - {name: x, action: trust, match: {path: ['/a/{b,c}/**'], size: {min: 1K}}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fsys := fstest.MapFS{"a.yaml": {Data: data}}
		p, err := Load(fsys, ".")
		if err != nil {
			var ve *ValidationErrors
			if !errors.As(err, &ve) || len(ve.Errors()) == 0 {
				t.Fatalf("Load error is %T %v, want *ValidationErrors with errors", err, err)
			}
			for _, is := range ve.Issues {
				if is.File == "" || is.Line < 0 || is.Msg == "" {
					t.Fatalf("issue without position or message: %+v", is)
				}
			}
			return
		}
		out, err := p.Normalized()
		if err != nil {
			t.Fatal(err)
		}
		q, err := Load(fstest.MapFS{"n.yaml": {Data: out}}, ".")
		if err != nil {
			t.Fatalf("normalized policy does not load: %v\n%s", err, out)
		}
		if q.NumRules() != p.NumRules() {
			t.Fatalf("normalized policy has %d rules, want %d", q.NumRules(), p.NumRules())
		}
	})
}

// FuzzLoadWithLists is FuzzLoad with SHA-256 list files: the fuzzer writes a policy file
// and the contents of the list files it may name (l.sha256, and feeds/l.txt). Besides what
// FuzzLoad checks, a policy that loads must decide every digest of the list file the same
// way as its normalized form, in which the list files are inlined.
func FuzzLoadWithLists(f *testing.F) {
	const digest = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
	policies := []string{
		"default: {action: ask, untrusted_action: deny}\nlists:\n  l: {files: [l.sha256]}\nrules:\n  - {name: r, action: deny, match: {sha256_list: [l]}}\n",
		"default: {action: trust, untrusted_action: ask}\nlists:\n  a: {sha256: [" + digest + "], files: [l.sha256, feeds/l.txt]}\n  b: {files: feeds/l.txt}\n" +
			"rules:\n  - {name: a, action: deny, match: {sha256_list: [a], extension: [exe]}}\n  - {name: b, action: ask, match: {sha256_list: [b, a]}}\n",
		"lists:\n  l: {files: [../l.sha256, /etc/l, missing.txt, feeds]}\nrules:\n  - {name: r, action: deny, match: {sha256_list: [l, m]}}\n",
	}
	lists := []string{
		"",
		digest + "  eicar.com\n",
		"# known bad\n\n" + strings.ToUpper(digest) + " *eicar.com\r\n\\" + strings.Repeat("ab", 32) + "  a\\nb\n",
		"not-a-digest\n" + digest[:63] + "\n" + digest + "0\n  \t\n#",
		strings.Repeat("0", 1<<16) + "\n",
	}
	for _, p := range policies {
		for _, l := range lists {
			f.Add([]byte(p), []byte(l))
		}
	}
	f.Fuzz(func(t *testing.T, policy, list []byte) {
		fsys := fstest.MapFS{
			"a.yaml":      {Data: policy},
			"l.sha256":    {Data: list},
			"feeds/l.txt": {Data: list},
		}
		p, err := Load(fsys, ".")
		if err != nil {
			var ve *ValidationErrors
			if !errors.As(err, &ve) || len(ve.Errors()) == 0 {
				t.Fatalf("Load error is %T %v, want *ValidationErrors with errors", err, err)
			}
			for _, is := range ve.Issues {
				if is.File == "" || is.Line < 0 || is.Msg == "" {
					t.Fatalf("issue without position or message: %+v", is)
				}
				if (is.File == "l.sha256" || is.File == "feeds/l.txt") && is.Line < 1 {
					t.Fatalf("issue in a list file without a line: %+v", is)
				}
			}
			return
		}
		out, err := p.Normalized()
		if err != nil {
			t.Fatal(err)
		}
		q, err := Load(fstest.MapFS{"n.yaml": {Data: out}}, ".")
		if err != nil {
			t.Fatalf("normalized policy does not load: %v\n%s", err, out)
		}
		if q.NumRules() != p.NumRules() {
			t.Fatalf("normalized policy has %d rules, want %d", q.NumRules(), p.NumRules())
		}
		sums := []string{digest, strings.Repeat("ab", 32)}
		for _, line := range strings.Split(string(list), "\n") {
			if fields := strings.Fields(line); len(fields) > 0 && len(sums) < 64 {
				sums = append(sums, strings.ToLower(strings.TrimPrefix(fields[0], "\\")))
			}
		}
		for _, sum := range sums {
			if !isSHA256(sum) {
				continue
			}
			for _, name := range []string{"/x/a.exe", "/x/a.txt"} {
				req := &Request{Path: name, SHA256: sum, ContentType: "application/octet-stream", Size: 1}
				d1, err1 := p.Decide(req)
				d2, err2 := q.Decide(req)
				if err1 != nil || err2 != nil || d1.Rule != d2.Rule || d1.Action != d2.Action {
					t.Fatalf("%s %s: policy decides %+v (%v), normalized %+v (%v)\n%s", name, sum, d1, err1, d2, err2, out)
				}
			}
		}
	})
}

// matcherPolicy is a policy exercising every condition kind and every index dimension.
const matcherPolicy = `
default:
  action: ask
  untrusted_action: isolate
  handler: h
  trusted_domains: [corp.example]
handlers:
  h: {image: busybox, program: /usr/bin/busybox, args: [cat, "{input}"]}
lists:
  bad: {sha256: [aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]}
rules:
  - {name: by-list, action: deny, match: {sha256_list: [bad]}}
  - {name: by-hash, action: deny, match: {sha256: [bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb]}}
  - {name: ext-in-dl, action: isolate, handler: h, match: {extension: [pdf, tar.gz], path: ["~/Downloads/**"]}}
  - {name: name-lit, action: deny, match: {name: [setup.exe, "*.scr"]}}
  - {name: name-lit2, action: deny, match: {name: [autorun.inf]}}
  - {name: dom, action: trust, match: {origin: {domain: [corp.example]}, content_type: [text/*]}}
  - {name: host-lit, action: ask, match: {origin: {host: [files.example.org]}}}
  - {name: host-glob, action: ask, match: {origin: {host: ["*.cdn.example"]}}}
  - {name: ref, action: deny, match: {referrer: {url_regex: ["evil"], scheme: [http]}}}
  - {name: srv, action: trust, match: {path: ["/srv/data/**", "/srv/{a,b}/x/*"]}}
  - {name: home-docs, action: trust, match: {path: ["~/Documents/**"]}, unless: {origin: {present: true}}}
  - {name: ctype, action: isolate, handler: h, match: {content_type: [application/pdf, application/x-elf]}}
  - {name: ctype-text, action: ask, match: {content_type: ["text/*"], size: {max: 100}}}
  - {name: user, action: deny, match: {user: [mallory, "666"]}}
  - {name: group, action: trust, match: {group: [admins], path_regex: ["^/opt/"]}}
  - {name: opener, action: trust, match: {opener: ["/usr/bin/*sum"]}}
  - {name: big, action: deny, match: {size: {min: 1MiB}}}
  - {name: no-origin-tmp, action: trust, match: {path: ["/tmp/**"], origin: {present: false}}}
`

// FuzzDecide checks the indexed evaluator against trying every rule in order.
func FuzzDecide(f *testing.F) {
	p, err := Load(fstest.MapFS{"p.yaml": {Data: []byte(matcherPolicy)}}, ".")
	if err != nil {
		f.Fatal(err)
	}
	shipped, err := Load(policies.FS(), ".")
	if err != nil {
		f.Fatal(err)
	}
	f.Add("/home/u/Downloads/a.tar.gz", "/home/u", "https://x.corp.example/a", "", "", "u", "staff", "application/gzip", "", int64(10))
	f.Add("/home/u/Documents/setup.exe", "/home/u/", "", "http://evil.test/", "/usr/bin/sha256sum", "mallory", "admins", "application/x-executable", strings.Repeat("a", 64), int64(5<<20))
	f.Add("/srv/a/x/y", "", "https://files.example.org/", "", "", "666", "", "text/plain", strings.Repeat("b", 64), int64(1))
	f.Add("/opt/x.scr", "/", "blob:https://a.cdn.example/1", "", "/usr/bin/evince", "", "admins", "text/x-shellscript", "", int64(0))
	f.Add("/tmp/../srv/data", "/srv", "ftp://[::1]:21/x", "javascript:alert(1)", "rel/opener", "u", "", "application/pdf", "", int64(99))
	f.Fuzz(func(t *testing.T, pth, home, origin, referrer, opener, user, group, ctype, sum string, size int64) {
		if !strings.HasPrefix(pth, "/") {
			pth = "/" + pth
		}
		if baseType(ctype) == "" {
			ctype = "application/octet-stream" // no file behind the request: give every fact
		}
		if sum == "" {
			sum = strings.Repeat("c", 64)
		}
		if size <= 0 {
			size = 1
		}
		req := &Request{Path: pth, Home: home, Origin: origin, Referrer: referrer, Opener: opener, User: user,
			Groups: []string{group}, ContentType: ctype, SHA256: sum, Size: size, UID: len(user)}
		for _, pol := range []*Policy{p, shipped} {
			d, err := pol.Decide(req)
			if err != nil {
				t.Fatalf("Decide(%+v): %v", req, err)
			}
			if want := decideLinear(pol, req); d.Rule != want {
				t.Fatalf("indexed decision %q, linear %q for %+v", d.Rule, want, req)
			}
		}
	})
}

// decideLinear is the reference evaluator: every rule in order, no index.
func decideLinear(p *Policy, req *Request) string {
	e := evalCtx{req: req, cache: p.cache, path: path.Clean(req.Path)}
	e.base = path.Base(e.path)
	e.nExt = len(extensions(e.base, e.extBuf[:0]))
	for _, r := range p.rules {
		if _, ok := r.eval(&e, nil); ok {
			return r.name
		}
	}
	return p.defaultDecision(&e).Rule
}
