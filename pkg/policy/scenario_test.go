package policy

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestScenarios decides realistic desktop cases with the shipped policy plus a site file,
// on real files with real xattrs.
func TestScenarios(t *testing.T) {
	home := t.TempDir()
	dl := filepath.Join(home, "Downloads")
	site := t.TempDir()

	busybox, err := os.ReadFile("/usr/bin/busybox")
	if err != nil {
		t.Skipf("needs an ELF executable at /usr/bin/busybox (apt-get install busybox-static): %v", err)
	}
	badContent := "this text is known to be malicious\n"
	badSum := sha256.Sum256([]byte(badContent))

	writeFiles(t, dl, map[string]string{
		"report.pdf":       samplePDF,
		"intranet.pdf":     samplePDF,
		"install.sh":       "#!/bin/sh\necho pwned > ~/.bashrc\n",
		"holiday.jpg":      badContent,
		"eicar.com":        eicar,
		"notes.txt":        "plain words\n",
		"archive-from-web": "", // replaced below by a real tar
		"checksum-me.iso":  "not really an iso",
	})
	writeFiles(t, home, map[string]string{
		"Documents/own.txt": "my own notes\n",
	})
	if err := os.WriteFile(filepath.Join(dl, "readme.txt"), busybox, 0o644); err != nil {
		t.Fatal(err)
	}
	// The script is executable, as after chmod +x: the mode must not make it trusted.
	if err := os.Chmod(filepath.Join(dl, "install.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dl, "install.sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("install.sh: %v, %v; want mode 0755", fi, err)
	}
	// A real tar archive.
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	if err := tw.WriteHeader(&tar.Header{Name: "hello.txt", Mode: 0o644, Size: 6}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dl, "archive-from-web"), tb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, home, map[string]string{"Desktop/unknown.dat": "\x00\x01\x02\x03 some bytes that are no known format \xff\xfe"})
	setOrigin(t, filepath.Join(dl, "report.pdf"), "https://files.unknown-site.example/report.pdf", "https://unknown-site.example/")
	setOrigin(t, filepath.Join(dl, "intranet.pdf"), "https://docs.intranet.example.com/q3.pdf", "https://wiki.intranet.example.com/")
	setOrigin(t, filepath.Join(dl, "readme.txt"), "https://mirror.example.net/readme.txt", "")
	setOrigin(t, filepath.Join(dl, "holiday.jpg"), "https://docs.intranet.example.com/holiday.jpg", "")
	setOrigin(t, filepath.Join(home, "Desktop/unknown.dat"), "https://cdn.example.org/unknown.bin", "")
	setOrigin(t, filepath.Join(dl, "archive-from-web"), "https://cdn.example.org/a", "")

	writeFiles(t, site, map[string]string{
		"05-site-deny.yaml": `
lists:
  site-bad:
    files: [bad.sha256]
rules:
  - name: deny-site-bad
    action: deny
    match:
      sha256_list: [site-bad]
`,
		"bad.sha256": "# site list, sha256sum format\n" + hex.EncodeToString(badSum[:]) + "  holiday.jpg\n",
		"45-intranet.yaml": `
default:
  trusted_domains: [intranet.example.com]
rules:
  - name: trust-intranet-documents
    description: documents from our own web servers
    action: trust
    match:
      origin: {domain: [intranet.example.com]}
      content_type: [application/pdf, text/*]
`,
	})
	p := loadWithShipped(t, site)

	tests := []struct {
		name    string
		req     Request
		action  Action
		rule    string
		handler string
		matched []string // substrings, each of some Matched entry
	}{
		{
			name:   "pdf from an unknown site is isolated with the document handler",
			req:    Request{Path: filepath.Join(dl, "report.pdf")},
			action: ActionIsolate, rule: "internet-pdf", handler: "documents",
			matched: []string{"origin present", `content_type "application/pdf"`},
		},
		{
			name:   "the same pdf from the intranet domain is trusted",
			req:    Request{Path: filepath.Join(dl, "intranet.pdf")},
			action: ActionTrust, rule: "trust-intranet-documents",
			matched: []string{`origin domain "intranet.example.com"`, "application/pdf"},
		},
		{
			name:   "an executable script in Downloads is isolated",
			req:    Request{Path: filepath.Join(dl, "install.sh")},
			action: ActionIsolate, rule: "outside-scripts", handler: "script",
			matched: []string{`path "~/Downloads/**"`, "text/x-shellscript"},
		},
		{
			name:   "content on the site deny list is denied whatever its name and origin",
			req:    Request{Path: filepath.Join(dl, "holiday.jpg")},
			action: ActionDeny, rule: "deny-site-bad",
			matched: []string{`in list "site-bad"`},
		},
		{
			name:   "the EICAR test file is denied by the shipped list",
			req:    Request{Path: filepath.Join(dl, "eicar.com")},
			action: ActionDeny, rule: "deny-known-bad",
		},
		{
			name:   "a renamed executable with a .txt name is classified by content",
			req:    Request{Path: filepath.Join(dl, "readme.txt")},
			action: ActionIsolate, rule: "internet-executables", handler: "executable",
			matched: []string{"application/x-elf"},
		},
		{
			name:   "a file opened by an allow-listed program is trusted",
			req:    Request{Path: filepath.Join(dl, "checksum-me.iso"), Opener: "/usr/bin/sha256sum"},
			action: ActionTrust, rule: "trust-byte-readers",
			matched: []string{`opener "/usr/bin/sha256sum"`},
		},
		{
			name:   "a tar archive from the web is unpacked in isolation",
			req:    Request{Path: filepath.Join(dl, "archive-from-web")},
			action: ActionIsolate, rule: "internet-tar", handler: "archive",
		},
		{
			name:   "an unknown download falls to the untrusted-origin default",
			req:    Request{Path: filepath.Join(home, "Desktop/unknown.dat")},
			action: ActionIsolate, rule: RuleUntrustedDefault, handler: "inspect",
		},
		{
			name:   "a system file is trusted",
			req:    Request{Path: "/usr/bin/busybox"},
			action: ActionTrust, rule: "trust-system",
		},
		{
			name:   "the user's own file is trusted",
			req:    Request{Path: filepath.Join(home, "Documents/own.txt")},
			action: ActionTrust, rule: "trust-own-files",
		},
		{
			name:   "text without origin in Downloads is isolated",
			req:    Request{Path: filepath.Join(dl, "notes.txt")},
			action: ActionIsolate, rule: "outside-other", handler: "inspect",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.req
			req.Home, req.User, req.UID = home, "alice", 1000
			if req.Origin == "" {
				o, r, err := ReadOrigin(req.Path)
				if err != nil {
					t.Fatal(err)
				}
				req.Origin, req.Referrer = o, r
			}
			d, err := p.Decide(&req)
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if d.Action != tt.action || d.Rule != tt.rule {
				t.Fatalf("got %s by %q, want %s by %q\n%s", d.Action, d.Rule, tt.action, tt.rule, d.Explanation)
			}
			gotHandler := ""
			if d.Handler != nil {
				gotHandler = d.Handler.Name
			}
			if gotHandler != tt.handler {
				t.Errorf("handler %q, want %q", gotHandler, tt.handler)
			}
			for _, m := range tt.matched {
				if !slices.ContainsFunc(d.Matched, func(s string) bool { return strings.Contains(s, m) }) {
					t.Errorf("Matched %q has nothing containing %q", d.Matched, m)
				}
			}
			lreq := req
			if lin := decideLinear(p, &lreq); lin != d.Rule {
				t.Errorf("linear evaluation decides by %q", lin)
			}
			if d.File == "" || d.Line == 0 || !strings.Contains(d.Explanation, d.File) || d.PolicyVersion != p.Version() {
				t.Errorf("decision does not say where it came from: %+v", d)
			}
		})
	}
}

func TestDecideErrors(t *testing.T) {
	p := loadWithShipped(t, t.TempDir())
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		req  *Request
		want error
	}{
		{"relative path", &Request{Path: "x.pdf"}, ErrBadRequest},
		{"missing file needing content facts", &Request{Path: filepath.Join(dir, "gone.pdf")}, os.ErrNotExist},
		{"directory", &Request{Path: dir}, ErrNotRegular},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, err := p.Decide(tt.req)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decide = %+v, %v; want error %v", d, err, tt.want)
			}
		})
	}
}

func TestFailClosed(t *testing.T) {
	p := FailClosed("policy directory is empty")
	d, err := p.Decide(&Request{Path: "/usr/bin/ls"})
	if err != nil {
		t.Fatal(err)
	}
	if d.Action != ActionDeny || d.Rule != RuleFailClosed || !strings.Contains(d.Explanation, "empty") {
		t.Fatalf("fail-closed policy decided %+v", d)
	}
}

func TestContentFactsCache(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"p.yaml": `
default: {action: ask, untrusted_action: deny}
rules:
  - name: pdf
    action: trust
    match: {content_type: [application/pdf]}
  - name: big
    action: deny
    match: {size: {min: 1KiB}}
`})
	p, err := loadDir(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "doc")
	decide := func() string {
		t.Helper()
		d, err := p.Decide(&Request{Path: f})
		if err != nil {
			t.Fatal(err)
		}
		return d.Rule
	}
	writeFiles(t, dir, map[string]string{"doc": samplePDF})
	if got := decide(); got != "pdf" {
		t.Fatalf("pdf decided by %q", got)
	}
	if p.cache.Len() != 1 {
		t.Fatalf("cache holds %d files, want 1", p.cache.Len())
	}
	// Rewriting the file in place changes its ctime: the cached type must not be reused.
	writeFiles(t, dir, map[string]string{"doc": strings.Repeat("just text ", 200)})
	if got := decide(); got != "big" {
		t.Fatalf("rewritten file decided by %q, want big", got)
	}
	// Facts given in the request are used without reading the file.
	d, err := p.Decide(&Request{Path: filepath.Join(dir, "absent"), ContentType: "application/pdf"})
	if err != nil || d.Rule != "pdf" {
		t.Fatalf("preset content type: %+v, %v", d, err)
	}
}

func TestReadOrigin(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"chromium": "x", "firefox": "x", "none": "x"})
	setOrigin(t, filepath.Join(dir, "chromium"), "https://a.example/f", "https://a.example/")
	long := "https://b.example/" + strings.Repeat("x", 3000)
	if err := unixSetxattr(filepath.Join(dir, "firefox"), XattrIsolatorOrigin, long); err != nil {
		t.Skip(err)
	}
	for _, tt := range []struct{ file, origin, referrer string }{
		{"chromium", "https://a.example/f", "https://a.example/"},
		{"firefox", long, ""},
		{"none", "", ""},
	} {
		o, r, err := ReadOrigin(filepath.Join(dir, tt.file))
		if err != nil || o != tt.origin || r != tt.referrer {
			t.Errorf("%s: ReadOrigin = %q, %q, %v; want %q, %q", tt.file, o, r, err, tt.origin, tt.referrer)
		}
		f, err := os.Open(filepath.Join(dir, tt.file))
		if err != nil {
			t.Fatal(err)
		}
		o, r, err = ReadOriginFile(f)
		f.Close()
		if err != nil || o != tt.origin || r != tt.referrer {
			t.Errorf("%s: ReadOriginFile = %q, %q, %v; want %q, %q", tt.file, o, r, err, tt.origin, tt.referrer)
		}
	}
	if _, _, err := ReadOrigin(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}
}

// TestDecideOnFile: with Request.File, every content fact comes from the open file, never
// from the path, which may name another file by the time the policy looks.
func TestDecideOnFile(t *testing.T) {
	dir := t.TempDir()
	bad := "known bad content\n"
	badSum := fmt.Sprintf("%x", sha256.Sum256([]byte(bad)))
	writeFiles(t, dir, map[string]string{
		"policy/p.yaml": "default: {action: deny, untrusted_action: deny}\nrules:\n" +
			"  - {name: bad, action: deny, match: {sha256: [" + badSum + "]}}\n" +
			"  - {name: pdf, action: trust, match: {content_type: [application/pdf]}}\n" +
			"  - {name: big, action: trust, match: {size: {min: 1000}}}\n",
		"opened.pdf": samplePDF,
		"other":      bad,
	})
	p, err := loadDir(t, filepath.Join(dir, "policy"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "opened.pdf"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The path now names the known-bad file (a rename or symlink swap after the open).
	other := filepath.Join(dir, "other")
	d, err := p.Decide(&Request{Path: other, File: f})
	if err != nil || d.Rule != "pdf" {
		t.Fatalf("decided on %+v, %v; want the opened PDF (rule pdf)", d, err)
	}
	pdfSum := fmt.Sprintf("%x", sha256.Sum256([]byte(samplePDF)))
	if d.SHA256 != pdfSum {
		t.Errorf("decision sha256 %q, want the opened file's %q", d.SHA256, pdfSum)
	}
	if off, _ := f.Seek(0, io.SeekCurrent); off != 0 {
		t.Errorf("the decision moved the file offset to %d", off)
	}
	// Without File the path decides: the known-bad file.
	if d, err := p.Decide(&Request{Path: other}); err != nil || d.Rule != "bad" || d.SHA256 != badSum {
		t.Errorf("by path: %+v, %v", d, err)
	}
	// An unreadable path does not matter when the file is open.
	if d, err := p.Decide(&Request{Path: filepath.Join(dir, "nowhere", "x"), File: f}); err != nil || d.Rule != "pdf" {
		t.Errorf("with a missing path: %+v, %v", d, err)
	}
	// A directory as File is not a regular file.
	df, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	if _, err := p.Decide(&Request{Path: filepath.Join(dir, "opened.pdf"), File: df}); !errors.Is(err, ErrNotRegular) {
		t.Errorf("directory as File: %v, want ErrNotRegular", err)
	}
}

// TestDecideRelease: a release of the file's current content trusts it, unless the policy
// denies it or any deny rule matches it (also one first-match never reached); a release of
// another content changes nothing.
func TestDecideRelease(t *testing.T) {
	dir := t.TempDir()
	const good, bad = "echo reviewed\n", "echo known bad\n"
	writeFiles(t, dir, map[string]string{
		"policy/p.yaml": "default: {action: ask, untrusted_action: deny}\n" +
			"handlers:\n  script: {image: busybox, program: /bin/sh, args: [\"{input}\"]}\n" +
			"rules:\n" +
			"  - {name: scripts, action: isolate, handler: script, match: {extension: [sh]}}\n" +
			"  - {name: known-bad, action: deny, match: {sha256: [" + fmt.Sprintf("%x", sha256.Sum256([]byte(bad))) + "]}}\n" +
			"  - {name: no-exe, action: deny, match: {extension: [exe]}}\n",
		"good.sh":  good,
		"bad.sh":   bad,
		"tool.exe": good,
		"notes":    good,
	})
	p, err := loadDir(t, filepath.Join(dir, "policy"))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 4, 3, 56, 47, 0, time.UTC)
	rel := func(content string) *Release {
		return &Release{SHA256: fmt.Sprintf("%x", sha256.Sum256([]byte(content))), By: "alice (uid 1000)", At: at, Reason: "reviewed"}
	}
	decide := func(name string, r *Release) *Decision {
		t.Helper()
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		d, err := p.Decide(&Request{Path: filepath.Join(dir, name), File: f, Release: r})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	d := decide("good.sh", rel(good))
	want := `trust: released by alice (uid 1000) at 2026-12-04T03:56:47Z ("reviewed"); the content is the one released (sha256 ` +
		rel(good).SHA256 + `) and no deny rule matches it; without the release: isolate (rule scripts)`
	if d.Action != ActionTrust || d.Rule != RuleReleased || d.Explanation != want || d.SHA256 != rel(good).SHA256 {
		t.Errorf("released content: %+v\nwant explanation %q", d, want)
	}
	if d := decide("notes", rel(good)); d.Action != ActionTrust || d.Rule != RuleReleased {
		t.Errorf("released content asked about by default: %+v", d)
	}
	if d := decide("good.sh", rel("other content")); d.Action != ActionIsolate || d.Rule != "scripts" ||
		!strings.HasSuffix(d.Explanation, `(the release by alice (uid 1000) at 2026-12-04T03:56:47Z ("reviewed") does not apply: the content has changed since)`) {
		t.Errorf("a release of another content: %+v", d)
	}
	if d := decide("bad.sh", rel(bad)); d.Action != ActionDeny || d.Rule != "known-bad" ||
		!strings.Contains(d.Explanation, "does not override a deny rule") {
		t.Errorf("released known-bad content (behind the isolate rule): %+v", d)
	}
	if d := decide("tool.exe", rel(good)); d.Action != ActionDeny || d.Rule != "no-exe" {
		t.Errorf("released content denied by a rule: %+v", d)
	}
	if d := decide("good.sh", nil); d.Action != ActionIsolate || d.Rule != "scripts" {
		t.Errorf("without a release: %+v", d)
	}
	if d, err := FailClosed("test").Decide(&Request{Path: filepath.Join(dir, "good.sh"), Release: rel(good)}); err != nil || d.Action != ActionDeny {
		t.Errorf("fail-closed with a release: %+v, %v", d, err)
	}
}
