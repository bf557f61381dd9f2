package policy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/isolator-dev/isolator/policies"
)

// policyText is a small valid policy whose default action is act.
func policyText(act Action) string {
	return fmt.Sprintf("default: {action: %s, untrusted_action: deny}\nrules:\n  - {name: marker-%s, action: %s, match: {extension: [marker]}}\n", act, act, act)
}

// storeHarness runs a Store's Watch on dir and records reload results.
type storeHarness struct {
	t     *testing.T
	store *Store

	mu      sync.Mutex
	results []ReloadResult // guarded by mu
}

func newStoreHarness(t *testing.T, cfg StoreConfig) *storeHarness {
	h := &storeHarness{t: t}
	cfg.OnReload = func(r ReloadResult) {
		h.mu.Lock()
		h.results = append(h.results, r)
		h.mu.Unlock()
	}
	cfg.Debounce = 50 * time.Millisecond
	s, err := NewStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.store = s
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	return h
}

// decideMarker returns the rule deciding a .marker file under the current policy.
func (h *storeHarness) decideMarker() string {
	d, err := h.store.Current().Decide(&Request{Path: "/nowhere/x.marker", Size: 1, SHA256: "00", ContentType: "text/plain"})
	if err != nil {
		h.t.Fatal(err)
	}
	return d.Rule
}

// waitRule waits (up to a generous bound, for slow CI machines) until a .marker file is
// decided by want.
func (h *storeHarness) waitRule(step, want string) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := h.decideMarker()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: policy decides .marker by %q, want %q; last reload %+v", step, got, want, h.store.Last())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitError waits until a reload attempt has failed after n results.
func (h *storeHarness) waitError(step string, after int) ReloadResult {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		for _, r := range h.results[min(after, len(h.results)):] {
			if r.Err != nil {
				h.mu.Unlock()
				return r
			}
		}
		h.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	h.t.Fatalf("%s: no failed reload reported", step)
	return ReloadResult{}
}

func (h *storeHarness) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.results)
}

func TestStoreReload(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "policies.d")
	writeFiles(t, dir, map[string]string{"50-site.yaml": policyText(ActionTrust)})
	h := newStoreHarness(t, StoreConfig{Dir: dir})
	h.waitRule("initial", "marker-trust")
	site := filepath.Join(dir, "50-site.yaml")

	// Edit in place.
	if err := os.WriteFile(site, []byte(policyText(ActionDeny)), 0o644); err != nil {
		t.Fatal(err)
	}
	h.waitRule("edit in place", "marker-deny")

	// Break it: the last good policy stays, and the errors are reported.
	n := h.count()
	if err := os.WriteFile(site, []byte("rules:\n  - name: x\n    acton: trust\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := h.waitError("break", n)
	var ve *ValidationErrors
	if !errors.As(r.Err, &ve) || len(ve.Errors()) == 0 || ve.Errors()[0].Line != 2 {
		t.Fatalf("broken policy reported as %v", r.Err)
	}
	if got := h.decideMarker(); got != "marker-deny" {
		t.Fatalf("after a bad edit the policy decides by %q; the last good policy must stay", got)
	}

	// Fix it the way vim and sed -i do: write a new file, rename it over the old one.
	tmp := filepath.Join(dir, ".50-site.yaml.swp")
	if err := os.WriteFile(tmp, []byte(policyText(ActionAsk)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, site); err != nil {
		t.Fatal(err)
	}
	h.waitRule("rename over", "marker-ask")

	// A new drop-in file that sorts later adds rules after the existing ones, and an
	// earlier one takes precedence.
	writeFiles(t, dir, map[string]string{"10-early.yaml": "rules:\n  - {name: early, action: deny, match: {extension: [marker]}}\n"})
	h.waitRule("drop-in", "early")
	if err := os.Remove(filepath.Join(dir, "10-early.yaml")); err != nil {
		t.Fatal(err)
	}
	h.waitRule("remove drop-in", "marker-ask")
}

// TestStoreSymlinkSwap swaps the policy directory the way configuration management does:
// the directory is a symlink, replaced atomically by renaming a new symlink over it.
func TestStoreSymlinkSwap(t *testing.T) {
	root := t.TempDir()
	v1, v2 := filepath.Join(root, "v1"), filepath.Join(root, "v2")
	writeFiles(t, v1, map[string]string{"50-site.yaml": policyText(ActionTrust)})
	writeFiles(t, v2, map[string]string{"50-site.yaml": policyText(ActionDeny)})
	dir := filepath.Join(root, "policies.d")
	if err := os.Symlink(v1, dir); err != nil {
		t.Fatal(err)
	}
	h := newStoreHarness(t, StoreConfig{Dir: dir})
	h.waitRule("initial", "marker-trust")

	swap := func(target string) {
		tmp := filepath.Join(root, "policies.d.new")
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, dir); err != nil {
			t.Fatal(err)
		}
	}
	swap(v2)
	h.waitRule("swap to v2", "marker-deny")
	// An edit inside the directory now in force is noticed too.
	if err := os.WriteFile(filepath.Join(v2, "50-site.yaml"), []byte(policyText(ActionAsk)), 0o644); err != nil {
		t.Fatal(err)
	}
	h.waitRule("edit in v2", "marker-ask")
	// Edits to the directory no longer in force are not.
	if err := os.WriteFile(filepath.Join(v1, "50-site.yaml"), []byte(policyText(ActionIsolate)), 0o644); err != nil {
		t.Fatal(err)
	}
	swap(v1)
	n := h.count()
	h.waitError("swap to a broken v1 (isolate default without handler)", n)
	if got := h.decideMarker(); got != "marker-ask" {
		t.Fatalf("after swapping to a broken directory the policy decides by %q", got)
	}
}

// TestStoreFileSymlinkSwap swaps a symlinked policy file and edits its target.
func TestStoreFileSymlinkSwap(t *testing.T) {
	root := t.TempDir()
	data := filepath.Join(root, "data")
	writeFiles(t, data, map[string]string{"a.yaml": policyText(ActionTrust), "b.yaml": policyText(ActionDeny)})
	dir := filepath.Join(root, "policies.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "50-site.yaml")
	if err := os.Symlink(filepath.Join(data, "a.yaml"), link); err != nil {
		t.Fatal(err)
	}
	h := newStoreHarness(t, StoreConfig{Dir: dir})
	h.waitRule("initial", "marker-trust")
	tmp := filepath.Join(dir, ".tmp-link")
	if err := os.Symlink(filepath.Join(data, "b.yaml"), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
	h.waitRule("swap file symlink", "marker-deny")
	if err := os.WriteFile(filepath.Join(data, "b.yaml"), []byte(policyText(ActionAsk)), 0o644); err != nil {
		t.Fatal(err)
	}
	h.waitRule("edit symlink target", "marker-ask")
}

// TestStoreFailClosed starts with no valid policy: everything is denied until one is written.
func TestStoreFailClosed(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "policies.d") // does not exist yet
	h := newStoreHarness(t, StoreConfig{Dir: dir})
	if got := h.decideMarker(); got != RuleFailClosed {
		t.Fatalf("no policy: decided by %q", got)
	}
	if err := h.store.Last().Err; !errors.Is(err, ErrNoPolicy) {
		t.Fatalf("Last().Err = %v, want ErrNoPolicy", err)
	}
	writeFiles(t, dir, map[string]string{"50-site.yaml": policyText(ActionTrust)})
	h.waitRule("directory created", "marker-trust")
}

// TestStoreMissingParent: the policy directory and its parent do not exist when the store
// starts; creating them brings the policy in force, and so does creating them again after
// they were removed.
func TestStoreMissingParent(t *testing.T) {
	root := t.TempDir()
	top := filepath.Join(root, "etc", "isolator")
	dir := filepath.Join(top, "policies.d")
	h := newStoreHarness(t, StoreConfig{Dir: dir})
	if got := h.decideMarker(); got != RuleFailClosed {
		t.Fatalf("no policy: decided by %q", got)
	}
	writeFiles(t, dir, map[string]string{"50-site.yaml": policyText(ActionTrust)})
	h.waitRule("directory and parents created", "marker-trust")

	n := h.count()
	if err := os.RemoveAll(filepath.Join(root, "etc")); err != nil {
		t.Fatal(err)
	}
	if r := h.waitError("directory and parents removed", n); !errors.Is(r.Err, ErrNoPolicy) {
		t.Fatalf("after removing the directory: %v, want ErrNoPolicy", r.Err)
	}
	if got := h.decideMarker(); got != "marker-trust" {
		t.Fatalf("the last good policy must stay; decided by %q", got)
	}
	writeFiles(t, dir, map[string]string{"50-site.yaml": policyText(ActionDeny)})
	h.waitRule("directory and parents created again", "marker-deny")

	// Removed and created again at once, within one debounce: the new directory is
	// watched, so an edit in it is noticed.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"50-site.yaml": policyText(ActionAsk)})
	h.waitRule("directory replaced", "marker-ask")
	writeFiles(t, dir, map[string]string{"50-site.yaml": policyText(ActionTrust)})
	h.waitRule("edit in the replaced directory", "marker-trust")
}

// TestStoreDefaults layers the admin directory over the shipped defaults.
func TestStoreDefaults(t *testing.T) {
	dir := t.TempDir()
	h := newStoreHarness(t, StoreConfig{Dir: dir, Defaults: policies.FS()})
	d, err := h.store.Current().Decide(&Request{Path: "/usr/bin/ls"})
	if err != nil || d.Rule != "trust-system" {
		t.Fatalf("shipped defaults: %+v %v", d, err)
	}
	writeFiles(t, dir, map[string]string{"05-first.yaml": "rules:\n  - {name: marker-first, action: deny, match: {extension: [marker]}}\n"})
	h.waitRule("site file over defaults", "marker-first")
	if _, err := NewStore(StoreConfig{}); err == nil {
		t.Error("NewStore with no sources succeeded")
	}
}

// TestStoreAtomic evaluates continuously while the policy directory is swapped, by
// symlink, through versions whose every file carries the version in its rule names: all
// decisions made with one Policy from Current must come from one version, the one its
// PolicyVersion names, and versions never go back.
func TestStoreAtomic(t *testing.T) {
	root := t.TempDir()
	const versions = 12
	exts := []string{"a", "b", "c"}
	for v := range versions {
		files := map[string]string{}
		for i, ext := range exts {
			// The defaults are in the last file: a policy missing it would not load.
			text := fmt.Sprintf("rules:\n  - {name: %s-v%d, action: %s, match: {extension: [%s]}}\n", ext, v, []string{"trust", "ask", "deny"}[(v+i)%3], ext)
			if i == len(exts)-1 {
				text = "default: {action: ask, untrusted_action: deny}\n" + text
			}
			files[fmt.Sprintf("%d0-%s.yaml", i+1, ext)] = text
		}
		writeFiles(t, filepath.Join(root, fmt.Sprint(v)), files)
	}
	dir := filepath.Join(root, "policies.d")
	swap := func(v int) {
		t.Helper()
		tmp := filepath.Join(root, "policies.d.new")
		if err := os.Symlink(filepath.Join(root, fmt.Sprint(v)), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, dir); err != nil {
			t.Fatal(err)
		}
	}
	swap(0)
	h := newStoreHarness(t, StoreConfig{Dir: dir})

	// check decides a file of every extension with one Policy and returns the version
	// all the decisions came from.
	check := func(p *Policy) (int, error) {
		version := -1
		for _, ext := range exts {
			d, err := p.Decide(&Request{Path: "/x/y." + ext, Size: 1, SHA256: strings.Repeat("0", 64), ContentType: "text/plain"})
			if err != nil {
				return 0, err
			}
			var v int
			if _, err := fmt.Sscanf(d.Rule, ext+"-v%d", &v); err != nil {
				return 0, fmt.Errorf("a .%s file decided by %q", ext, d.Rule)
			}
			if version >= 0 && v != version {
				return 0, fmt.Errorf("one policy decided with rules of versions %d and %d", version, v)
			}
			if d.PolicyVersion != p.Version() {
				return 0, fmt.Errorf("a decision of policy %s names policy %s", p.Version(), d.PolicyVersion)
			}
			version = v
		}
		return version, nil
	}

	stop := make(chan struct{})
	errs := make(chan error, 4)
	seen := make([]map[int]bool, 4)
	var wg sync.WaitGroup
	for i := range seen {
		seen[i] = map[int]bool{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := -1
			byHash := map[string]int{}
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				p := h.store.Current()
				v, err := check(p)
				if err == nil && v < last {
					err = fmt.Errorf("version %d in force after version %d", v, last)
				}
				if prev, ok := byHash[p.Version()]; err == nil && ok && prev != v {
					err = fmt.Errorf("policy %s decided as version %d and as version %d", p.Version(), prev, v)
				}
				if err != nil {
					errs <- err
					return
				}
				last, byHash[p.Version()] = v, v
				seen[i][v] = true
			}
		}()
	}
	wait := func(v int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, err := check(h.store.Current())
			if err == nil && got == v {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("version %d not in force: version %d, %v; last reload %+v", v, got, err, h.store.Last())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait(0)
	for v := 1; v < versions; v++ {
		swap(v)
		wait(v)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range seen {
		if len(s) < 2 {
			t.Errorf("reader %d saw only versions %v: it did not evaluate across a reload", i, s)
		}
	}
}

// TestStoreReportsRejectionOnce: a policy that does not load is reported once at start,
// not again by the check Watch makes when it starts; a later attempt is reported again.
func TestStoreReportsRejectionOnce(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"50-bad.yaml": "rules:\n  - {name: x, acton: trust}\n"})
	h := newStoreHarness(t, StoreConfig{Dir: dir})
	h.mu.Lock()
	first := h.results[0].Time // NewStore's attempt; Watch's may have come already
	h.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for h.store.Last().Time.Equal(first) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // until Watch has made its check
	}
	if h.store.Last().Time.Equal(first) {
		t.Fatal("Watch made no load attempt at start")
	}
	if n := h.count(); n != 1 {
		t.Errorf("%d reports of the rejected policy, want 1", n)
	}
	if r := h.store.Reload(); r.Err == nil || h.count() != 2 {
		t.Errorf("an explicit reload: %v, %d reports, want 2", r.Err, h.count())
	}
}

// waitSHA256 waits until a file with content sum is decided by want.
func (h *storeHarness) waitSHA256(step, sum, want string) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := h.store.Current().Decide(&Request{Path: "/nowhere/x", Size: 1, SHA256: sum, ContentType: "text/plain"})
		if err != nil {
			h.t.Fatal(err)
		}
		if d.Rule == want {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: content %.8s… is decided by %q, want %q; last reload %+v", step, sum, d.Rule, want, h.store.Last())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// listPolicy is a policy denying the digests of the list files named.
func listPolicy(files ...string) string {
	return "default: {action: ask, untrusted_action: deny}\nlists:\n  l: {files: [" + strings.Join(files, ", ") + "]}\n" +
		"rules:\n  - {name: listed, action: deny, match: {sha256_list: [l]}}\n"
}

// TestStoreListFiles: edits to SHA-256 list files are picked up wherever the files are:
// in a subdirectory of the policy directory, behind a symlink, in a directory created
// after the policy named it, or named only by a later version of the policy.
func TestStoreListFiles(t *testing.T) {
	sum := func(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }
	a, b, c, d := sum("a"), sum("b"), sum("c"), sum("d")
	root := t.TempDir()
	dir := filepath.Join(root, "policies.d")
	other := filepath.Join(root, "elsewhere")
	writeFiles(t, dir, map[string]string{
		"50-site.yaml":     listPolicy("feeds/vendor.txt", "linked.sha256"),
		"feeds/vendor.txt": "# nothing yet\n",
	})
	writeFiles(t, other, map[string]string{"v1.sha256": "# nothing yet\n", "v2.sha256": b + "  b\n"})
	if err := os.Symlink(filepath.Join(other, "v1.sha256"), filepath.Join(dir, "linked.sha256")); err != nil {
		t.Fatal(err)
	}
	h := newStoreHarness(t, StoreConfig{Dir: dir})
	h.waitSHA256("initial", a, RuleDefault)

	writeFiles(t, dir, map[string]string{"feeds/vendor.txt": a + "  a\n"})
	h.waitSHA256("list file in a subdirectory edited in place", a, "listed")

	tmp := filepath.Join(dir, "feeds", ".vendor.txt.new")
	if err := os.WriteFile(tmp, []byte("# emptied\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "feeds", "vendor.txt")); err != nil {
		t.Fatal(err)
	}
	h.waitSHA256("list file in a subdirectory renamed over", a, RuleDefault)

	writeFiles(t, other, map[string]string{"v1.sha256": c + "  c\n"})
	h.waitSHA256("target of a symlinked list file edited", c, "listed")

	link := filepath.Join(dir, "linked.sha256")
	if err := os.Symlink(filepath.Join(other, "v2.sha256"), link+".new"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(link+".new", link); err != nil {
		t.Fatal(err)
	}
	h.waitSHA256("symlinked list file swapped", b, "listed")
	h.waitSHA256("symlinked list file swapped (old target)", c, RuleDefault)

	// The policy names a list in directories that do not exist yet: it does not load, the
	// last good policy stays, and creating the file makes it load.
	n := h.count()
	writeFiles(t, dir, map[string]string{"50-site.yaml": listPolicy("later/deeper/new.txt")})
	h.waitError("list file missing", n)
	h.waitSHA256("list file missing: last good policy", b, "listed")
	writeFiles(t, dir, map[string]string{"later/deeper/new.txt": d + "  d\n"})
	h.waitSHA256("missing list file created", d, "listed")
	writeFiles(t, dir, map[string]string{"later/deeper/new.txt": a + "  a\n"})
	h.waitSHA256("list file named by the new policy edited", a, "listed")
	h.waitSHA256("list file named by the new policy edited (old digest)", d, RuleDefault)
}
