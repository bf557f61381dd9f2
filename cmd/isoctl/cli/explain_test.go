package cli

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/interception"
)

// TestPolicyExplainRecorded: explain shows the verdict isolatord recorded on a file, and
// does not read the content of a file whose record refuses opens.
func TestPolicyExplainRecorded(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "setup.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	when := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	rec := interception.Record{Origin: "https://example.com/setup.sh", Verdict: interception.ActionIsolate,
		Rule: "internet-scripts", Time: when, SHA256: strings.Repeat("ab", 32)}
	if err := interception.WriteRecord(script, rec); err != nil {
		t.Skipf("no user xattrs on %s: %v", dir, err)
	}
	code, out, errOut := runCLI(t, "policy", "explain", script)
	for _, want := range []string{
		"recorded:  isolate (rule internet-scripts) at " + when.Local().Format(time.RFC3339) + ", sha256 " + rec.SHA256,
		"content:   not read: the file's record says isolate",
		"decision:  none: the policy needs the file's content",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("explain of a refused file lacks %q:\n%s", want, out)
		}
	}
	if code != 1 || !strings.Contains(errOut, "no decision") {
		t.Errorf("explain of a refused file: exit %d, %s", code, errOut)
	}
	code, out, _ = runCLI(t, "policy", "explain", "--json", script)
	var got struct {
		Recorded struct{ Verdict, Rule, SHA256 string }
		Content  string
		Error    string
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 1 {
		t.Fatalf("explain --json: exit %d, %v\n%s", code, err, out)
	}
	if got.Recorded.Verdict != "isolate" || got.Recorded.Rule != "internet-scripts" || got.Recorded.SHA256 != rec.SHA256 ||
		!strings.HasPrefix(got.Content, "not read") || got.Error == "" {
		t.Errorf("explain --json = %+v", got)
	}

	// A trusted record: the content is read and the policy decides.
	rec.Verdict = interception.ActionTrust
	if err := interception.WriteRecord(script, rec); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runCLI(t, "policy", "explain", script)
	if code != 0 || !strings.Contains(out, "recorded:  trust") || strings.Contains(out, "content:") ||
		!strings.Contains(out, `content_type "text/x-shellscript"`) {
		t.Errorf("explain of a trusted file: exit %d\n%s%s", code, out, errOut)
	}
}

// gateSink counts what a Gate asks of the daemon.
type gateSink struct {
	mu                sync.Mutex
	isolated, notices int
}

func (s *gateSink) Isolate(context.Context, interception.FileInfo, interception.Verdict) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.isolated++
}

func (s *gateSink) Notify(interception.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notices++
}

// TestPolicyExplainGatedFile runs isoctl policy explain, as a process, on a file that
// isolatord's Gate (run in this test process) refuses: explain shows the record without
// opening the file, so the Gate is not even asked, and nothing is decided or isolated.
func TestPolicyExplainGatedFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("fanotify permission events need root")
	}
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC, unix.O_RDONLY)
	if err != nil {
		t.Skipf("fanotify permission events unavailable: %v", err)
	}
	unix.Close(fd)
	dl := t.TempDir()
	script := filepath.Join(dl, "setup.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A file without a record, in a directory isolatord's configuration lists.
	fresh := filepath.Join(dl, "fresh.sh")
	if err := os.WriteFile(fresh, []byte("#!/bin/sh\necho fresh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(t.TempDir(), "isolatord.yaml")
	if err := os.WriteFile(config, []byte("intercept: true\ndownload_dirs: ["+dl+"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := interception.WriteRecord(script, interception.Record{Verdict: interception.ActionIsolate,
		Rule: "internet-scripts", Time: time.Now(), SHA256: strings.Repeat("cd", 32)}); err != nil {
		t.Skipf("no user xattrs on %s: %v", dl, err)
	}
	var decisions int
	var mu sync.Mutex
	dec := interception.DeciderFunc(func(context.Context, interception.FileInfo) (interception.Verdict, error) {
		mu.Lock()
		defer mu.Unlock()
		decisions++
		return interception.Verdict{Action: interception.ActionIsolate, Rule: "test"}, nil
	})
	sink := &gateSink{}
	g, err := interception.NewGate(interception.GateConfig{Dirs: []string{dl}, Decider: dec, Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gate: %v", err)
		}
	}()
	// The Gate works: cat is refused (and decided, isolated: that is what explain must
	// not cause).
	if out, err := exec.Command("cat", script).CombinedOutput(); err == nil || !strings.Contains(string(out), "not permitted") {
		t.Fatalf("cat of the gated file: %q, %v", out, err)
	}
	// The Gate isolates after answering, on a goroutine of its own: wait for it.
	isolated := 0
	for deadline := time.Now().Add(5 * time.Second); isolated == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		sink.mu.Lock()
		isolated = sink.isolated
		sink.mu.Unlock()
	}
	if isolated != 1 {
		t.Fatalf("the refused cat started %d isolations, want 1", isolated)
	}
	st := g.Stats()
	mu.Lock()
	before := decisions
	mu.Unlock()

	bin := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(bin, "isoctl")); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(bin, "isoctl"), "policy", "explain", script).CombinedOutput()
	// The record is the Gate's now (it records what it decides).
	if !strings.Contains(string(out), "recorded:  isolate (rule test)") || !strings.Contains(string(out), "content:   not read") {
		t.Errorf("explain: %v\n%s", err, out)
	}
	out, err = exec.Command(filepath.Join(bin, "isoctl"), "policy", "explain", "--isolatord-config", config, fresh).CombinedOutput()
	if !strings.Contains(string(out), "content:   not read: the file is in the download directory "+dl) {
		t.Errorf("explain of a file without a record: %v\n%s", err, out)
	}
	if got := g.Stats(); got.Events != st.Events {
		t.Errorf("explain made %d permission events, want none", got.Events-st.Events)
	}
	mu.Lock()
	if decisions != before {
		t.Errorf("explain's opens were decided %d times", decisions-before)
	}
	mu.Unlock()
	sink.mu.Lock()
	if sink.isolated != isolated {
		t.Errorf("explain started %d isolations", sink.isolated-isolated)
	}
	sink.mu.Unlock()
}

// TestPolicyExplainDownloadDir: explain does not open the content of a file in a download
// directory (the requester's or the file owner's XDG one, or one of isolatord's
// download_dirs), where isolatord's gate may refuse the open and isolate the file, unless
// --read-content is given; it says so, and that content conditions could not be used.
func TestPolicyExplainDownloadDir(t *testing.T) {
	home := t.TempDir()
	dl := filepath.Join(home, "Downloads")
	listed := t.TempDir()
	for _, d := range []string{dl, filepath.Join(home, "elsewhere")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	config := filepath.Join(t.TempDir(), "isolatord.yaml")
	if err := os.WriteFile(config, []byte("download_dirs: ["+listed+"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A rule that needs the content decides first.
	site := t.TempDir()
	if err := os.WriteFile(filepath.Join(site, "05-scripts.yaml"), []byte(`
rules:
  - {name: no-scripts, action: deny, match: {content_type: [text/x-shellscript]}}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	const script = "#!/bin/sh\necho hello\n"
	const read = `content_type "text/x-shellscript"`
	for _, tt := range []struct {
		dir, notRead string // notRead: the directory named, "" if the content is read
	}{
		{dl, dl},
		{listed, listed},
		{filepath.Join(home, "elsewhere"), ""},
	} {
		p := filepath.Join(tt.dir, "setup.sh")
		if err := os.WriteFile(p, []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{"policy", "explain", "--policy-dir", site, "--home", home, "--isolatord-config", config}
		code, out, errOut := runCLI(t, append(args, p)...)
		if tt.notRead == "" {
			if code != 0 || strings.Contains(out, "content:") || !strings.Contains(out, read) {
				t.Errorf("explain of a file outside the download directories did not read it: exit %d\n%s%s", code, out, errOut)
			}
			continue
		}
		if code != 1 || !strings.Contains(out, "content:   not read: the file is in the download directory "+tt.notRead+",") ||
			!strings.Contains(out, "--read-content") || strings.Contains(out, read) ||
			!strings.Contains(out, "decision:  none: the policy needs the file's content, which was not read") {
			t.Errorf("explain of a file in %s: exit %d\n%s%s", tt.dir, code, out, errOut)
		}
		code, out, errOut = runCLI(t, append(args, "--read-content", p)...)
		if code != 0 || strings.Contains(out, "content:") || !strings.Contains(out, read) || !strings.Contains(out, "decision:  deny") {
			t.Errorf("explain --read-content of a file in %s did not read it: exit %d\n%s%s", tt.dir, code, out, errOut)
		}
	}
}
