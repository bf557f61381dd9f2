package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/api"
)

// The interception tests run isolatord with --watch-dir on a download directory owned by
// nobody, with the real inotify Watcher, the real fanotify Gate and real micro VMs, and
// play the browsers and programs of a desktop against it.

const interceptPolicy = `version: 1
rules:
  - name: dl-notes
    action: trust
    match:
      path: ["ROOT/dl/**"]
      extension: [txt]
  - name: dl-scripts
    action: isolate
    handler: script
    match:
      path: ["ROOT/dl/**"]
`

const nobodyUID = 65534

// downloadScript is the content of every simulated download: the script handler runs it
// in the micro VM and it returns one file.
const downloadScript = "echo running in the micro VM\necho isolated-result > /output/report.txt\n"

type interceptEnv struct {
	*env
	dl string

	watchMu  sync.Mutex
	watchOut bytes.Buffer // nobody's isoctl watch --json
	otherOut bytes.Buffer // uid 1's isoctl watch --json
}

func newInterceptEnv(t *testing.T) *interceptEnv {
	e := &interceptEnv{env: newEnv(t)}
	e.dl = filepath.Join(e.root, "dl")
	if err := os.Mkdir(e.dl, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(e.dl, nobodyUID, nobodyUID)
	for _, d := range []string{"nobody-results", "nobody-saved"} {
		os.Mkdir(filepath.Join(e.root, d), 0o755)
		os.Chown(filepath.Join(e.root, d), nobodyUID, nobodyUID)
	}
	pol := strings.ReplaceAll(interceptPolicy, "ROOT", e.root)
	if err := os.WriteFile(filepath.Join(e.policy, "01-intercept.yaml"), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	e.start("--watch-dir", e.dl, "--download-settle", "300ms", "--gate-allow", "/usr/bin/tail")
	return e
}

// watch starts isoctl watch --json as nobody (saving results into nobody-saved) and as
// uid 1 for the rest of the test.
func (e *interceptEnv) watch() {
	e.t.Helper()
	for uid, out := range map[uint32]*bytes.Buffer{nobodyUID: &e.watchOut, 1: &e.otherOut} {
		args := []string{"--socket", e.socket, "watch", "--json"}
		if uid == nobodyUID {
			args = append(args, "--save", "--results-dir", filepath.Join(e.root, "nobody-saved"))
		}
		cmd := exec.Command(filepath.Join(binDir, "isoctl"), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		cmd.Stdout = &lockedWriter{mu: &e.watchMu, w: out}
		if err := cmd.Start(); err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
		// The subscription is confirmed by the daemon's first event.
		waitUntil(e.t, 10*time.Second, "isoctl watch subscribed", func() bool {
			e.watchMu.Lock()
			defer e.watchMu.Unlock()
			return strings.Contains(out.String(), "subscribed")
		})
	}
}

// watched returns the events nobody's (or, with other, uid 1's) isoctl watch printed
// for path.
func (e *interceptEnv) watched(path string, other bool) []api.Event {
	e.watchMu.Lock()
	defer e.watchMu.Unlock()
	buf := &e.watchOut
	if other {
		buf = &e.otherOut
	}
	var evs []api.Event
	sc := bufio.NewScanner(bytes.NewReader(buf.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var ev api.Event
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		if ev.Path == path || (ev.Task != nil && ev.Task.File == path) {
			evs = append(evs, ev)
		}
	}
	return evs
}

func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tasksFor returns nobody's tasks for path, as isoctl ps shows them to nobody.
func (e *interceptEnv) tasksFor(path string) []api.Task {
	e.t.Helper()
	out, errOut, code := e.isoctl(nobodyUID, "ps", "--json")
	var tasks []api.Task
	if err := json.Unmarshal([]byte(out), &tasks); code != 0 || err != nil {
		e.t.Fatalf("isoctl ps as nobody: exit %d %q %v: %s", code, out, err, errOut)
	}
	var mine []api.Task
	for _, tk := range tasks {
		if tk.File == path {
			mine = append(mine, tk)
		}
	}
	return mine
}

// auditDecisions returns the audit log's decision records for path.
func (e *interceptEnv) auditDecisions(path string) []map[string]any {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(e.state, "audit.log"))
	if err != nil {
		e.t.Fatal(err)
	}
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["event"] == "decision" && rec["path"] == path {
			recs = append(recs, rec)
		}
	}
	return recs
}

func getxattr(t testing.TB, path, name string) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(path, name, buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

// writeChunks writes content to f in pieces with short pauses, as a download arrives.
func writeChunks(t *testing.T, f *os.File, content string) {
	t.Helper()
	for len(content) > 0 {
		n := min(len(content), 16)
		if _, err := f.WriteString(content[:n]); err != nil {
			t.Fatal(err)
		}
		content = content[n:]
		time.Sleep(20 * time.Millisecond)
	}
}

// run runs a program and returns its output, stderr and exit code.
func run(t *testing.T, name string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

// checkIsolatedOnce waits for path's task and checks that path was tagged, decided once
// and isolated once for its owner, that cat is refused and that the owner gets the results.
func (e *interceptEnv) checkIsolatedOnce(t *testing.T, path, origin string) {
	t.Helper()
	var task api.Task
	waitUntil(t, 60*time.Second, "the task of "+path, func() bool {
		tasks := e.tasksFor(path)
		if len(tasks) == 1 && tasks[0].State.Final() {
			task = tasks[0]
			return true
		}
		return false
	})
	if task.UID != nobodyUID || task.State != api.StateDone || task.ExitCode != 0 || task.Decision.Rule != "dl-scripts" {
		t.Errorf("task %+v", task)
	}
	sum := sha256.Sum256([]byte(downloadScript))
	if task.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("task sha256 %s, want that of the download", task.SHA256)
	}
	// The record on the file.
	waitUntil(t, 10*time.Second, "the verdict record on "+path, func() bool {
		return getxattr(t, path, "user.isolator.verdict") != ""
	})
	if v, r, h := getxattr(t, path, "user.isolator.verdict"), getxattr(t, path, "user.isolator.rule"),
		getxattr(t, path, "user.isolator.sha256"); v != "isolate" || r != "dl-scripts" || h != task.SHA256 {
		t.Errorf("record: verdict %q rule %q sha256 %q", v, r, h)
	}
	if got := getxattr(t, path, "user.isolator.origin"); !strings.Contains(got, origin) {
		t.Errorf("user.isolator.origin = %q, want it to contain %q", got, origin)
	}
	// A host program cannot read it.
	out, errOut, code := run(t, "cat", path)
	if code == 0 || out != "" || !strings.Contains(errOut, "Operation not permitted") {
		t.Errorf("cat of an isolated file: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// The owner gets the handler's results.
	dir := filepath.Join(e.root, "nobody-results")
	res, errOut, code := e.isoctl(nobodyUID, "results", "--dir", dir, "--json", task.ID)
	var rep struct {
		ResultsDir string   `json:"results_dir"`
		Written    []string `json:"written"`
	}
	if err := json.Unmarshal([]byte(res), &rep); code != 0 || err != nil || len(rep.Written) != 1 {
		t.Fatalf("isoctl results as nobody: exit %d %q %v: %s", code, res, err, errOut)
	}
	report := filepath.Join(dir, task.ID, "report.txt")
	got, err := os.ReadFile(report)
	if err != nil || string(got) != "isolated-result\n" {
		t.Errorf("result %s = %q, %v", report, got, err)
	}
	if fi, err := os.Stat(report); err != nil || fi.Sys().(*syscall.Stat_t).Uid != nobodyUID {
		t.Errorf("result not written as its owner: %v", err)
	}
	// nobody's isoctl watch --save saved them too.
	saved := filepath.Join(e.root, "nobody-saved", task.ID, "report.txt")
	waitUntil(t, 10*time.Second, "isoctl watch --save to save "+saved, func() bool {
		got, err := os.ReadFile(saved)
		return err == nil && string(got) == "isolated-result\n"
	})
	// Another user cannot fetch them.
	if _, errOut, code := e.isoctl(1, "results", "--dir", t.TempDir(), task.ID); code == 0 || !strings.Contains(errOut, "no such task") {
		t.Errorf("isoctl results as uid 1: exit %d %q", code, errOut)
	}
	// Still one task and one audited decision, after the Watcher, the Gate and cat.
	time.Sleep(time.Second)
	if tasks := e.tasksFor(path); len(tasks) != 1 {
		t.Errorf("%d tasks for %s, want 1: %+v", len(tasks), path, tasks)
	}
	if recs := e.auditDecisions(path); len(recs) != 1 || recs[0]["action"] != "isolate" || recs[0]["uid"] != float64(nobodyUID) {
		t.Errorf("audit decisions for %s: %v", path, recs)
	}
	// nobody's isoctl watch saw the download decided, the refused open and the task.
	kinds := map[api.EventType]bool{}
	for _, ev := range e.watched(path, false) {
		kinds[ev.Type] = true
		if ev.Type == api.EventDenied && (ev.Task == nil || ev.Task.ID != task.ID) {
			t.Errorf("open-denied event without the task: %+v", ev)
		}
	}
	for _, k := range []api.EventType{api.EventDownload, api.EventDenied, api.EventState} {
		if !kinds[k] {
			t.Errorf("isoctl watch showed no %s event for %s (saw %v)", k, path, kinds)
		}
	}
	if evs := e.watched(path, true); len(evs) != 0 {
		t.Errorf("uid 1's isoctl watch showed nobody's events: %+v", evs)
	}
}

func TestInterception(t *testing.T) {
	e := newInterceptEnv(t)
	e.watch()

	t.Run("chromium download", func(t *testing.T) {
		const origin = "https://downloads.example.com/setup.sh"
		tmp := filepath.Join(e.dl, "Unconfirmed 4242.crdownload")
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		half := len(downloadScript) / 2
		writeChunks(t, f, downloadScript[:half])
		named := filepath.Join(e.dl, "setup.sh.crdownload")
		if err := os.Rename(tmp, named); err != nil {
			t.Fatal(err)
		}
		writeChunks(t, f, downloadScript[half:])
		for name, v := range map[string]string{"user.xdg.origin.url": origin, "user.xdg.referrer.url": "https://example.com/"} {
			if err := unix.Fsetxattr(int(f.Fd()), name, []byte(v), 0); err != nil {
				t.Fatal(err)
			}
		}
		f.Chown(nobodyUID, nobodyUID)
		f.Close()
		final := filepath.Join(e.dl, "setup.sh")
		if err := os.Rename(named, final); err != nil {
			t.Fatal(err)
		}
		e.checkIsolatedOnce(t, final, origin)
		if tasks := e.tasksFor(tmp); len(tasks) != 0 {
			t.Errorf("the temporary file was isolated: %+v", tasks)
		}
		// An allow-listed opener reads it.
		out, errOut, code := run(t, "/usr/bin/tail", "-c", "+1", final)
		if code != 0 || out != downloadScript {
			t.Errorf("allow-listed tail: exit %d %q %q", code, out, errOut)
		}
	})

	t.Run("firefox download", func(t *testing.T) {
		final := filepath.Join(e.dl, "tool.sh")
		if err := os.WriteFile(final, nil, 0o644); err != nil { // Firefox's empty placeholder
			t.Fatal(err)
		}
		os.Chown(final, nobodyUID, nobodyUID)
		part := final + ".part"
		f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		writeChunks(t, f, downloadScript)
		f.Chown(nobodyUID, nobodyUID)
		f.Close()
		if err := os.Rename(part, final); err != nil {
			t.Fatal(err)
		}
		e.checkIsolatedOnce(t, final, "dir:"+e.dl)
	})

	t.Run("plain copy", func(t *testing.T) {
		src := filepath.Join(e.root, "copied.sh") // readable by nobody
		if err := os.WriteFile(src, []byte(downloadScript), 0o644); err != nil {
			t.Fatal(err)
		}
		final := filepath.Join(e.dl, "copied.sh")
		cmd := exec.Command("cp", src, final)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyUID, Gid: nobodyUID}}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cp as nobody: %v %s", err, out)
		}
		e.checkIsolatedOnce(t, final, "dir:"+e.dl)
	})

	t.Run("renamed, linked and moved out by the owner", func(t *testing.T) {
		// The isolated copy.sh of the previous step, and a fresh download in a
		// subdirectory: what the owner does to them keeps them unreadable on the host.
		copied := filepath.Join(e.dl, "copied.sh")
		sub := filepath.Join(e.dl, "sub")
		elsewhere := filepath.Join(e.root, "elsewhere") // same file system, not watched
		for _, d := range []string{sub, elsewhere} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
			os.Chown(d, nobodyUID, nobodyUID)
		}
		time.Sleep(100 * time.Millisecond) // the new subdirectory is watched and gated
		inSub := filepath.Join(sub, "setup.sh")
		if err := os.WriteFile(inSub, []byte(downloadScript), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chown(inSub, nobodyUID, nobodyUID)
		waitUntil(t, 60*time.Second, "the task of "+inSub, func() bool {
			tasks := e.tasksFor(inSub)
			return len(tasks) == 1 && tasks[0].State.Final()
		})
		asNobody := func(name string, args ...string) (string, int) {
			cmd := exec.Command(name, args...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyUID, Gid: nobodyUID}}
			out, err := cmd.CombinedOutput()
			if ee, ok := err.(*exec.ExitError); ok {
				return string(out), ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			return string(out), 0
		}
		steps := []struct {
			name string
			cmd  []string // as nobody, must succeed
			open string   // then cat as nobody: refused
		}{
			{"rename to .part", []string{"mv", copied, copied + ".part"}, copied + ".part"},
			{"hard link outside", []string{"ln", copied + ".part", filepath.Join(elsewhere, "hl.sh")}, filepath.Join(elsewhere, "hl.sh")},
			{"move out of the tree", []string{"mv", inSub, elsewhere + "/"}, filepath.Join(elsewhere, "setup.sh")},
			{"rename to .crdownload outside", []string{"mv", filepath.Join(elsewhere, "setup.sh"), filepath.Join(elsewhere, "setup.sh.crdownload")},
				filepath.Join(elsewhere, "setup.sh.crdownload")},
		}
		for _, st := range steps {
			if out, code := asNobody(st.cmd[0], st.cmd[1:]...); code != 0 {
				t.Fatalf("%s: %v as nobody: exit %d %s", st.name, st.cmd, code, out)
			}
			if out, code := asNobody("cat", st.open); code == 0 || strings.Contains(out, "micro VM") ||
				!strings.Contains(out, "Operation not permitted") {
				t.Errorf("%s: cat %s as its owner: exit %d %q; want EPERM", st.name, st.open, code, out)
			}
		}
		if out, code := asNobody("cp", filepath.Join(elsewhere, "hl.sh"), filepath.Join(elsewhere, "copy.sh")); code == 0 ||
			!strings.Contains(out, "Operation not permitted") {
			t.Errorf("cp of an isolated file as its owner: exit %d %q; want EPERM", code, out)
		}
		if b, err := os.ReadFile(filepath.Join(elsewhere, "copy.sh")); err == nil && len(b) > 0 {
			t.Errorf("cp wrote %q", b)
		}
		// Each content was decided and isolated once, under its download name.
		time.Sleep(500 * time.Millisecond)
		for _, p := range []string{copied, inSub} {
			if recs := e.auditDecisions(p); len(recs) != 1 {
				t.Errorf("audit decisions for %s: %v", p, recs)
			}
			if tasks := e.tasksFor(p); len(tasks) != 1 {
				t.Errorf("%d tasks for %s, want 1", len(tasks), p)
			}
		}
		for _, st := range steps {
			if recs := e.auditDecisions(st.open); len(recs) != 0 {
				t.Errorf("%s: decided again under its new name: %v", st.name, recs)
			}
			if tasks := e.tasksFor(st.open); len(tasks) != 0 {
				t.Errorf("%s: isolated again under its new name: %+v", st.name, tasks)
			}
		}
	})

	t.Run("trusted file", func(t *testing.T) {
		p := filepath.Join(e.dl, "notes.txt")
		if err := os.WriteFile(p, []byte("just notes\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			out, errOut, code := run(t, "cat", p)
			if code != 0 || out != "just notes\n" {
				t.Fatalf("cat of a trusted file: exit %d %q %q", code, out, errOut)
			}
		}
		waitUntil(t, 10*time.Second, "the trust record", func() bool {
			return getxattr(t, p, "user.isolator.verdict") == "trust"
		})
		if tasks := e.tasksFor(p); len(tasks) != 0 {
			t.Errorf("trusted file isolated: %+v", tasks)
		}
	})

	t.Run("policy reload", func(t *testing.T) {
		// notes.txt is trusted and its inode carries the Gate's ignore mark. A policy that
		// isolates everything in dl must reach its next open.
		p := filepath.Join(e.dl, "notes.txt")
		if out, _, code := run(t, "cat", p); code != 0 || out != "just notes\n" {
			t.Fatalf("cat before the reload: exit %d %q", code, out)
		}
		loaded := strings.Count(e.logs(), "policy loaded")
		pol := strings.ReplaceAll(interceptPolicy, "ROOT", e.root)
		pol = pol[:strings.Index(pol, "  - name: dl-notes")] + pol[strings.Index(pol, "  - name: dl-scripts"):]
		tmp := filepath.Join(e.root, "policy.tmp")
		if err := os.WriteFile(tmp, []byte(pol), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(e.policy, "01-intercept.yaml")); err != nil {
			t.Fatal(err)
		}
		e.d.Process.Signal(syscall.SIGHUP)
		waitUntil(t, 10*time.Second, "the policy reload", func() bool {
			return strings.Count(e.logs(), "policy loaded") > loaded
		})
		out, errOut, code := run(t, "cat", p)
		if code == 0 || !strings.Contains(errOut, "Operation not permitted") {
			t.Errorf("cat of a file the new policy isolates: exit %d %q %q", code, out, errOut)
		}
	})

	t.Run("daemon stopped mid-way", func(t *testing.T) {
		// A fresh untrusted file, so that cat's open must wait for the Gate.
		p := filepath.Join(e.dl, "late.sh")
		if err := os.WriteFile(p, []byte(downloadScript), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := e.d.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		cat := exec.Command("cat", p)
		var out bytes.Buffer
		cat.Stdout = &out
		if err := cat.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cat.Wait() }()
		select {
		case err := <-exited:
			t.Fatalf("cat finished while the daemon was stopped (%v): the open was not gated", err)
		case <-time.After(500 * time.Millisecond):
		}
		// The daemon dies without answering; the kernel lets the open through.
		e.stop(syscall.SIGKILL)
		select {
		case err := <-exited:
			if err != nil || out.String() != downloadScript {
				t.Errorf("cat after the daemon died: %v %q", err, out.String())
			}
		case <-time.After(10 * time.Second):
			cat.Process.Kill()
			t.Fatal("cat stayed blocked after the daemon was killed")
		}
	})
}

func TestInterceptionStopsCleanly(t *testing.T) {
	e := newInterceptEnv(t)
	p := filepath.Join(e.dl, "pending.sh")
	if err := os.WriteFile(p, []byte(downloadScript), 0o644); err != nil {
		t.Fatal(err)
	}
	// cat is waiting in open() for the stopped daemon when it is told to terminate.
	if err := e.d.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cat := exec.Command("cat", p)
	if err := cat.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cat.Wait() }()
	time.Sleep(300 * time.Millisecond)
	e.d.Process.Signal(syscall.SIGTERM)
	e.d.Process.Signal(syscall.SIGCONT)
	if err := e.stop(syscall.SIGTERM); err != nil {
		t.Errorf("isolatord exit after SIGTERM: %v\n%s", err, e.logs())
	}
	select {
	case <-exited: // allowed or denied, but answered
	case <-time.After(10 * time.Second):
		cat.Process.Kill()
		t.Fatal("cat stayed blocked after isolatord stopped")
	}
	// With the daemon gone nothing is gated.
	if out, errOut, code := run(t, "cat", p); code != 0 || out != downloadScript {
		t.Errorf("cat after the daemon stopped: exit %d %q %q", code, out, errOut)
	}
	if !strings.Contains(e.logs(), "interception running") {
		t.Errorf("interception did not run:\n%s", e.logs())
	}
}
