package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/isolator-dev/isolator/policies"
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

// BenchmarkReloadPickup measures, with real files and real fsnotify, how long a change
// to the policy directory takes to be in force: from the write to Store.Current deciding
// by the new rule. The store is isolatord's: the shipped defaults with the directory on
// top, DefaultDebounce (150 ms after the last event), which is most of the figure. The
// ways of changing a policy are those Watch handles: a file written in place, a new file
// renamed over the old one (vim, sed -i), and the directory a symlink swapped to a new
// target (configuration management); in-place-1000-rules edits one file of a policy of
// 1,000 more rules (policy1000). ms/pickup is the mean, max-ms the slowest.
func BenchmarkReloadPickup(b *testing.B) {
	site := func(i int) string {
		return fmt.Sprintf("rules:\n  - {name: pick-%d, action: deny, match: {extension: [marker]}}\n", i)
	}
	write := func(b *testing.B, path, content string) {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("in-place", func(b *testing.B) {
		dir := b.TempDir()
		f := filepath.Join(dir, "50-site.yaml")
		benchPickup(b, dir, nil, func(i int) { write(b, f, site(i)) })
	})
	b.Run("in-place-1000-rules", func(b *testing.B) {
		dir := b.TempDir()
		for name, f := range policy1000(1000) { // 00-handlers.yaml to 10-rules.yaml
			write(b, filepath.Join(dir, name), string(f.Data))
		}
		f := filepath.Join(dir, "50-site.yaml")
		benchPickup(b, dir, nil, func(i int) { write(b, f, site(i)) })
	})
	b.Run("rename-over", func(b *testing.B) {
		dir := b.TempDir()
		f, tmp := filepath.Join(dir, "50-site.yaml"), filepath.Join(dir, ".50-site.yaml.swp")
		benchPickup(b, dir, nil, func(i int) {
			write(b, tmp, site(i))
			if err := os.Rename(tmp, f); err != nil {
				b.Fatal(err)
			}
		})
	})
	b.Run("symlink-swap", func(b *testing.B) {
		root := b.TempDir()
		dir, targets := filepath.Join(root, "policies.d"), []string{filepath.Join(root, "a"), filepath.Join(root, "b")}
		for _, t := range targets {
			if err := os.Mkdir(t, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.Symlink(targets[1], dir); err != nil {
			b.Fatal(err)
		}
		benchPickup(b, dir, func(i int) {
			// The new version is written in full, untimed, in the directory not in force.
			write(b, filepath.Join(targets[i%2], "50-site.yaml"), site(i))
		}, func(i int) {
			tmp := filepath.Join(root, "policies.d.new")
			if err := os.Symlink(targets[i%2], tmp); err != nil {
				b.Fatal(err)
			}
			if err := os.Rename(tmp, dir); err != nil {
				b.Fatal(err)
			}
		})
	})
}

// benchPickup runs a watching Store on dir and times change(i), after the untimed
// prepare(i) if any, until the policy decides a .marker file by rule pick-i.
func benchPickup(b *testing.B, dir string, prepare, change func(i int)) {
	reloaded := make(chan struct{}, 1)
	s, err := NewStore(StoreConfig{Dir: dir, Defaults: policies.FS(), OnReload: func(r ReloadResult) {
		select {
		case reloaded <- struct{}{}:
		default:
		}
	}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	req := &Request{Path: "/nowhere/x.marker", Size: 1, SHA256: strings.Repeat("0", 64), ContentType: "text/plain"}
	step := func(i int) time.Duration {
		if prepare != nil {
			prepare(i)
		}
		start := time.Now()
		change(i)
		want := fmt.Sprintf("pick-%d", i)
		deadline := time.NewTimer(10 * time.Second)
		defer deadline.Stop()
		for {
			d, err := s.Current().Decide(req)
			if err != nil {
				b.Fatal(err)
			}
			if d.Rule == want {
				return time.Since(start)
			}
			select {
			case <-reloaded:
			case <-deadline.C:
				b.Fatalf("change %d not in force after 10s: decided by %s; last reload %+v", i, d.Rule, s.Last())
			}
		}
	}
	// Untimed between changes: the watch is up (the first change was seen), and the
	// events of one change are over before the next.
	settle := func() { time.Sleep(DefaultDebounce + 50*time.Millisecond) }
	step(0)
	settle()
	var times []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		times = append(times, step(i+1))
		b.StopTimer()
		settle()
		b.StartTimer()
	}
	b.StopTimer()
	var sum time.Duration
	for _, t := range times {
		sum += t
	}
	b.ReportMetric(float64(sum.Microseconds())/1000/float64(len(times)), "ms/pickup")
	b.ReportMetric(float64(slices.Max(times).Microseconds())/1000, "max-ms")
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
