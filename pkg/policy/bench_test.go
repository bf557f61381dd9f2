package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

var benchTypes = []string{
	"application/pdf", "application/zip", "application/x-tar", "application/gzip", "text/html",
	"image/png", "image/jpeg", "application/x-executable", "text/x-shellscript", "text/x-python",
	"application/msword", "application/vnd.ms-excel", "video/mp4", "audio/mpeg", "application/json",
	"text/csv", "application/x-7z-compressed", "application/vnd.rar", "image/gif", "application/x-xz",
}

// policy1000 is a realistic-looking policy of n rules of every kind, split into files of
// 100 rules like a site's drop-ins.
func policy1000(n int) fstest.MapFS {
	fsys := fstest.MapFS{"00-handlers.yaml": {Data: []byte(`
default: {action: ask, untrusted_action: isolate, handler: h, trusted_domains: [corp.example]}
handlers:
  h: {image: busybox, program: /usr/bin/busybox, args: [hexdump, -C, "{input}"], memory: 128MiB, timeout: 10s}
`)}}
	var b strings.Builder
	acts := []string{"trust", "deny", "ask", "isolate"}
	for i := 0; i < n; i++ {
		if i%100 == 0 {
			if b.Len() > 0 {
				fsys[fmt.Sprintf("%02d-rules.yaml", i/100)] = &fstest.MapFile{Data: []byte(b.String())}
			}
			b.Reset()
			b.WriteString("rules:\n")
		}
		act := acts[i%len(acts)]
		fmt.Fprintf(&b, "  - name: r%04d\n    action: %s\n", i, act)
		if act == "isolate" {
			b.WriteString("    handler: h\n")
		}
		b.WriteString("    match:\n")
		switch i % 8 {
		case 0:
			fmt.Fprintf(&b, "      extension: [x%d, y%d]\n      origin: {present: true}\n", i, i)
		case 1:
			fmt.Fprintf(&b, "      path: [\"/srv/project%d/**\", \"~/work/p%d/*.{c,h}\"]\n", i, i)
		case 2:
			fmt.Fprintf(&b, "      origin: {domain: [host%d.example.org]}\n      content_type: [application/pdf]\n", i)
		case 3:
			fmt.Fprintf(&b, "      name: [installer-%d.exe]\n", i)
		case 4:
			sum := sha256.Sum256([]byte(fmt.Sprint(i)))
			fmt.Fprintf(&b, "      sha256: [%s]\n", hex.EncodeToString(sum[:]))
		case 5:
			fmt.Fprintf(&b, "      content_type: [%s]\n      size: {min: %d}\n", benchTypes[i%len(benchTypes)], 1<<20+i)
		case 6:
			fmt.Fprintf(&b, "      path: [\"/data/%d/**\"]\n      user: [user%d]\n      opener: [/usr/bin/app%d]\n", i, i, i)
		case 7:
			fmt.Fprintf(&b, "      origin: {host: [\"cdn%d.example.net\"], scheme: [https]}\n      referrer: {url_regex: [\"^https://site%d\\\\.example/\"]}\n", i, i)
		}
	}
	fsys[fmt.Sprintf("%02d-rules.yaml", n/100)] = &fstest.MapFile{Data: []byte(b.String())}
	return fsys
}

// benchRequests are requests with their content facts known, as after the first decision
// about each file.
func benchRequests() []*Request {
	sum := strings.Repeat("ab", 32)
	return []*Request{
		// A PDF from an unknown site: nothing matches, the untrusted-origin default decides.
		{Path: "/home/alice/Downloads/report.pdf", Home: "/home/alice", User: "alice", Origin: "https://files.unknown.example/report.pdf", ContentType: "application/pdf", SHA256: sum, Size: 200 << 10},
		// Matches the extension rule near the end.
		{Path: "/home/alice/Downloads/a.y992", Home: "/home/alice", User: "alice", Origin: "https://a.example/", ContentType: "application/octet-stream", SHA256: sum, Size: 10},
		// Matches a path rule near the end.
		{Path: "/srv/project993/src/main.go", Home: "/home/alice", User: "alice", ContentType: "text/plain", SHA256: sum, Size: 4096},
		// Matches a domain rule.
		{Path: "/home/alice/Downloads/q.pdf", Home: "/home/alice", User: "alice", Origin: "https://www.host994.example.org/q.pdf", ContentType: "application/pdf", SHA256: sum, Size: 4096},
		// A local file matching nothing: the default decides.
		{Path: "/home/alice/notes.txt", Home: "/home/alice", User: "alice", ContentType: "text/plain", SHA256: sum, Size: 100},
	}
}

// BenchmarkDecide1000Rules measures decisions on a 1,000-rule policy. "cached-facts" is
// the steady state the target is about: the content type and hash are known (the daemon
// passes what the fact cache holds). "cache-hit" decides about a real file, paying one
// stat(2) to look its facts up in the cache. "linear" tries every rule in order without
// the index, for comparison.
func BenchmarkDecide1000Rules(b *testing.B) {
	p, err := Load(policy1000(1000), ".")
	if err != nil {
		b.Fatal(err)
	}
	if p.NumRules() != 1000 {
		b.Fatalf("%d rules", p.NumRules())
	}
	reqs := benchRequests()
	report := func(b *testing.B) {
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
	}
	b.Run("cached-facts", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := p.Decide(reqs[i%len(reqs)]); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("cached-facts-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				if _, err := p.Decide(reqs[i%len(reqs)]); err != nil {
					b.Error(err)
					return
				}
			}
		})
		report(b)
	})
	b.Run("cache-hit", func(b *testing.B) {
		dir := b.TempDir()
		f := filepath.Join(dir, "report.pdf")
		if err := os.WriteFile(f, []byte(samplePDF), 0o644); err != nil {
			b.Fatal(err)
		}
		req := &Request{Path: f, Home: dir, User: "alice", Origin: "https://unknown.example/report.pdf"}
		if _, err := p.Decide(req); err != nil { // fills the cache
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := p.Decide(req); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("linear", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			decideLinear(p, reqs[i%len(reqs)])
		}
		report(b)
	})
}

// BenchmarkReload1000Rules measures loading, validating and compiling (including the
// shadowed-rule analysis and the index) a 1,000-rule policy from files on disk.
func BenchmarkReload1000Rules(b *testing.B) {
	dir := b.TempDir()
	for name, f := range policy1000(1000) {
		if err := os.WriteFile(filepath.Join(dir, name), f.Data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	cache := NewFactCache(0)
	b.ReportAllocs()
	for b.Loop() {
		p, err := LoadWith(LoadConfig{Sources: []Source{{FS: os.DirFS(dir), Dir: "."}}, Cache: cache})
		if err != nil {
			b.Fatal(err)
		}
		if p.NumRules() != 1000 {
			b.Fatalf("%d rules", p.NumRules())
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()*1000/float64(b.N), "ms/reload")
}

// TestBenchPolicyAgrees checks the benchmark policy itself: indexed and linear evaluation
// agree on the benchmark requests, and they decide what the benchmark claims.
func TestBenchPolicyAgrees(t *testing.T) {
	p, err := Load(policy1000(1000), ".")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{RuleUntrustedDefault, "r0992", "r0993", "r0994", RuleDefault}
	for i, r := range benchRequests() {
		d, err := p.Decide(r)
		if err != nil {
			t.Fatal(err)
		}
		if lin := decideLinear(p, r); d.Rule != lin || d.Rule != want[i] {
			t.Errorf("%s: indexed %q, linear %q, want %q", r.Path, d.Rule, lin, want[i])
		}
	}
}
