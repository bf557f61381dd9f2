package daemon_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/daemon"
	"github.com/isolator-dev/isolator/pkg/policy"
)

// hookDecider is the real policy with a hook that runs first: a stand-in for a caller
// racing the daemon between its open of a file and the decision.
type hookDecider struct {
	daemon.Decider
	calls  atomic.Int32
	before atomic.Pointer[func(req *daemon.DecideRequest)]
}

func (h *hookDecider) Decide(ctx context.Context, req *daemon.DecideRequest) (*daemon.Decision, error) {
	h.calls.Add(1)
	if fn := h.before.Load(); fn != nil {
		(*fn)(req)
	}
	return h.Decider.Decide(ctx, req)
}

func (h *hookDecider) setBefore(fn func(req *daemon.DecideRequest)) { h.before.Store(&fn) }

// policyDecider loads the policy text (no shipped defaults) into a store.
func policyDecider(t *testing.T, text string) *hookDecider {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "00-test.yaml"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(policy.StoreConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if r := store.Last(); r.Err != nil {
		t.Fatalf("test policy: %v", r.Err)
	}
	return &hookDecider{Decider: daemon.NewPolicyDecider(store)}
}

func sum(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }

// TestDecidesOnTheOpenedFile: the daemon decides on, hashes and stages the file it opened
// with the caller's identity, whatever the path names by the time the policy looks; a file
// the caller cannot read is refused without a decision.
func TestDecidesOnTheOpenedFile(t *testing.T) {
	requireRoot(t)
	const nobody = 65534
	root := t.TempDir()
	reachable(t, root)
	// root's secret, which nobody cannot read, and a policy that trusts exactly its content.
	secretDir := filepath.Join(root, "secret")
	os.Mkdir(secretDir, 0o700)
	const secretText = "echo the secret\n"
	secret := writeFile(t, secretDir, "secret.sh", secretText)
	os.Chmod(secret, 0o600)
	hd := policyDecider(t, `default: {action: deny, untrusted_action: deny}
handlers:
  count: {image: none, program: /count}
rules:
  - {name: secret-content, action: trust, match: {sha256: [`+sum(secretText)+`]}}
  - {name: scripts, action: isolate, handler: count, match: {extension: [sh]}}
`)
	in := start(t, daemon.Config{Decider: hd})
	home := filepath.Join(root, "nobody")
	os.Mkdir(home, 0o755)
	os.Chown(home, nobody, nobody)

	t.Run("symlink swapped in after the open", func(t *testing.T) {
		const mineText = "echo mine\n"
		mine := writeFile(t, home, "mine.sh", mineText)
		os.Chown(mine, nobody, nobody)
		// Between the daemon's open and the decision, the path becomes a symlink to the
		// secret (done here as root; nobody could do the same in its own directory).
		hd.setBefore(func(req *daemon.DecideRequest) {
			if req.Path == mine {
				os.Rename(mine, mine+".orig")
				os.Symlink(secret, mine)
			}
		})
		defer hd.setBefore(nil)
		resp := as(t, in.socket, nobody, nil, "POST", api.PathOpen, api.OpenRequest{Path: mine})
		evs := resp.events(t)
		if resp.status != 200 || len(evs) == 0 {
			t.Fatalf("open: %d %s", resp.status, resp.body)
		}
		dec, _ := evs[0]["decision"].(map[string]any)
		if dec["rule"] != "scripts" || dec["action"] != "isolate" {
			t.Fatalf("decided %v; want the opened file's rule scripts, not the secret's", dec)
		}
		// The result event, then the one chunk of the one result file.
		result, chunk := evs[len(evs)-2], evs[len(evs)-1]
		task, _ := result["task"].(map[string]any)
		res, _ := result["results"].(map[string]any)
		files, _ := res["files"].([]any)
		if result["type"] != "result" || task["state"] != "done" || task["sha256"] != sum(mineText) || len(files) != 1 {
			t.Fatalf("result %v", result)
		}
		// countRunner returns the size of the staged input: the opened file's bytes.
		file, _ := chunk["file"].(map[string]any)
		if chunk["type"] != "file" || file["data"] != "MTAK" { // base64 of "10\n"
			t.Errorf("the guest saw a %v-byte input (base64 of its size), want the 10 bytes of %s", file["data"], mine)
		}
		for _, rec := range auditRecords(t, in.state) {
			if rec.Event == "decision" && rec.Path == mine && (rec.SHA256 != sum(mineText) || rec.Rule != "scripts") {
				t.Errorf("audit record %+v; want the opened file's hash and rule", rec)
			}
		}
	})

	t.Run("unreadable file refused, not decided", func(t *testing.T) {
		calls := hd.calls.Load()
		resp := as(t, in.socket, nobody, nil, "POST", api.PathOpen, api.OpenRequest{Path: secret})
		want := `{"code":"forbidden","message":"open ` + secret + `: permission denied"}`
		if resp.status != 403 || strings.TrimSpace(resp.body) != want {
			t.Errorf("nobody's open of root's 0600 file: %d %s, want 403 %s", resp.status, resp.body, want)
		}
		if n := hd.calls.Load(); n != calls {
			t.Errorf("the policy was asked about a file the caller cannot read")
		}
		for _, rec := range auditRecords(t, in.state) {
			if rec.Path == secret {
				t.Errorf("audit record about the unreadable file: %+v", rec)
			}
		}
	})

	t.Run("changed while decided", func(t *testing.T) {
		p := writeFile(t, t.TempDir(), "grows.sh", "echo one\n")
		hd.setBefore(func(req *daemon.DecideRequest) {
			if req.Path == p {
				f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
				f.WriteString("echo two\n")
				f.Close()
			}
		})
		defer hd.setBefore(nil)
		before, _ := in.c.Tasks(context.Background(), false)
		evs, err := openAll(in.c, p)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeConflict ||
			ae.Message != "file changed: "+p+" changed while it was being decided; nothing was run, open it again" {
			t.Errorf("open of a file written during the decision: %v (events %+v)", err, evs)
		}
		if after, _ := in.c.Tasks(context.Background(), false); len(after) != len(before) {
			t.Errorf("a task was started for a file that changed")
		}
		var found bool
		for _, rec := range auditRecords(t, in.state) {
			if rec.Event == "decision" && rec.Path == p {
				found = rec.SHA256 == "" && strings.Contains(rec.Reason, "changed while it was being decided")
			}
		}
		if !found {
			t.Error("the refused decision is not audited with the reason")
		}
	})
}

// TestInterceptorDecidesOnTheOpenedFile: the Gate's verdict is about the inode that was
// opened, even when another file is renamed over its name before the policy looks; so a
// trusted file's verdict cannot be cached for an untrusted inode.
func TestInterceptorDecidesOnTheOpenedFile(t *testing.T) {
	requireFanotify(t)
	const harmless = "harmless text\n"
	hd := policyDecider(t, `default: {action: deny, untrusted_action: deny}
rules:
  - {name: harmless, action: trust, match: {sha256: [`+sum(harmless)+`]}}
`)
	in := start(t, daemon.Config{Decider: hd})
	dl := t.TempDir()
	runInterceptor(t, in.d, daemon.InterceptConfig{Dirs: []string{dl}, Settle: time.Hour})
	evil := writeFile(t, dl, "evil.txt", "evil content\n")
	swapIn := writeFile(t, t.TempDir(), "harmless.txt", harmless)
	hd.setBefore(func(req *daemon.DecideRequest) {
		if req.Path == evil {
			os.Rename(swapIn, evil) // cat has the evil inode open already
		}
	})
	out, errOut, err := catFile(evil)
	if err == nil || out != "" || !strings.Contains(errOut, "Operation not permitted") {
		t.Errorf("cat of the untrusted file read %q (%v, %q): the verdict was about the file renamed over it", out, err, errOut)
	}
	if n := auditCount(t, in.state, "decision", evil); n != 1 {
		t.Errorf("%d decisions audited, want 1", n)
	}
	for _, rec := range auditRecords(t, in.state) {
		if rec.Event == "decision" && rec.Path == evil && (rec.Action != "deny" || rec.Rule != policy.RuleDefault) {
			t.Errorf("audit %+v, want deny by the default", rec)
		}
	}
}

// TestReleaseAtTheGate: a release reaches the Gate at once, although the Gate had cached
// the file's isolate verdict, for that file only (the Gate forgets that file's verdict,
// wherever it was moved, and nothing else).
func TestReleaseAtTheGate(t *testing.T) {
	requireFanotify(t)
	hd := policyDecider(t, `default: {action: deny, untrusted_action: deny}
handlers:
  count: {image: none, program: /count}
rules:
  - {name: downloads, action: isolate, handler: count, match: {extension: [bin]}}
`)
	in := start(t, daemon.Config{Decider: hd})
	dl := t.TempDir()
	runInterceptor(t, in.d, daemon.InterceptConfig{Dirs: []string{dl}, Settle: time.Hour})
	p := writeFile(t, dl, "tool.bin", "reviewed bytes\n")
	if _, _, err := catFile(p); err == nil {
		t.Fatal("cat of an isolated file succeeded")
	}
	if _, err := in.c.Release(context.Background(), api.ReleaseRequest{Path: p, Reason: "reviewed"}); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := catFile(p)
	if err != nil || out != "reviewed bytes\n" {
		t.Errorf("cat after the release: %v %q %q", err, out, errOut)
	}
	// An untrusted file moved out of the directory, still followed by its own mark; and
	// another one, not released.
	elsewhere := t.TempDir()
	moved, other := writeFile(t, dl, "moved.bin", "moved bytes\n"), writeFile(t, dl, "other.bin", "other bytes\n")
	for _, f := range []string{moved, other} {
		if _, _, err := catFile(f); err == nil {
			t.Fatalf("cat of isolated %s succeeded", f)
		}
	}
	if err := os.Rename(moved, filepath.Join(elsewhere, "moved.bin")); err != nil {
		t.Fatal(err)
	}
	moved = filepath.Join(elsewhere, "moved.bin")
	if _, _, err := catFile(moved); err == nil {
		t.Fatal("cat of the isolated file moved out succeeded")
	}
	if _, err := in.c.Release(context.Background(), api.ReleaseRequest{Path: moved, Reason: "reviewed"}); err != nil {
		t.Fatal(err)
	}
	if out, errOut, err := catFile(moved); err != nil || out != "moved bytes\n" {
		t.Errorf("cat after the release of the file moved out: %v %q %q", err, out, errOut)
	}
	if out, _, err := catFile(other); err == nil {
		t.Errorf("cat of a file not released: %q", out)
	}
	var released bool
	for _, rec := range auditRecords(t, in.state) {
		released = released || (rec.Event == "decision" && rec.Path == p && rec.Rule == policy.RuleReleased &&
			strings.Contains(rec.Reason, "intercepted open by"))
	}
	if !released {
		t.Error("the Gate's released decision is not audited")
	}
}
