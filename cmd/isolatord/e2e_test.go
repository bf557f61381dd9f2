package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/client"
)

// The end-to-end tests build isolatord and isoctl, start the daemon as a process on a
// private socket and state directory, and drive it with isoctl (also as another uid) and
// the client package. They need root and /dev/kvm.

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "isolator-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755)
	// go test puts its own GOROOT/bin first on the PATH of the test binary.
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/isolator-dev/isolator/cmd/isolatord", "github.com/isolator-dev/isolator/cmd/isoctl")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireKVM(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (the daemon reads files with the caller's credentials)")
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("end-to-end tests need /dev/kvm: %v", err)
	}
	f.Close()
	for _, p := range []string{"/usr/bin/busybox"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s (make deps): %v", p, err)
		}
	}
}

// env is one test's world: directories for files, policy, state and results.
type env struct {
	t      testing.TB
	root   string
	socket string
	state  string
	policy string
	images string
	d      *exec.Cmd
	wrap   []string // command that execs isolatord (setpriv ...), if any
	env    []string // added to isolatord's environment
	log    *bytes.Buffer
	logMu  *sync.Mutex
	waited chan error
}

const testPolicy = `version: 1
rules:
  - name: test-archives
    action: isolate
    handler: archive
    match:
      path: ["ROOT/untrusted/**"]
      extension: [tar]
  - name: test-scripts
    action: isolate
    handler: script
    match:
      path: ["ROOT/untrusted/**", "ROOT/nobody/**"]
      extension: [sh]
  - name: test-trusted
    action: trust
    match:
      path: ["ROOT/trusted/**"]
  - name: test-denied
    action: deny
    match:
      path: ["ROOT/denied/**"]
`

func newEnv(t testing.TB) *env {
	t.Helper()
	requireKVM(t)
	root := t.TempDir()
	// Let a second uid reach the socket and its own files.
	os.Chmod(root, 0o755)
	for p := filepath.Dir(root); p != "/"; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o005 != 0o005 {
			os.Chmod(p, fi.Mode().Perm()|0o005)
		}
	}
	e := &env{t: t, root: root, socket: filepath.Join(root, "run", "isolator.sock"),
		state: filepath.Join(root, "state"), policy: filepath.Join(root, "policy"),
		images: sharedImages(t)}
	for _, d := range []string{"untrusted", "trusted", "denied", "run", "policy"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(e.policy, "00-test.yaml"), []byte(strings.ReplaceAll(testPolicy, "ROOT", root)), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

var (
	imagesOnce sync.Once
	imagesDir  string
)

// sharedImages is one image directory for all tests, so the images are built once.
func sharedImages(t testing.TB) string {
	imagesOnce.Do(func() { imagesDir = filepath.Join(binDir, "images") })
	return imagesDir
}

func (e *env) start(extra ...string) {
	e.t.Helper()
	args := append([]string{"--socket", e.socket, "--state-dir", e.state, "--policy-dir", e.policy,
		"--image-dir", e.images, "--log-level", "debug", "--shutdown-timeout", "3s"}, extra...)
	e.d = exec.Command(filepath.Join(binDir, "isolatord"), args...)
	if len(e.wrap) > 0 {
		e.d = exec.Command(e.wrap[0], append(append(e.wrap[1:], filepath.Join(binDir, "isolatord")), args...)...)
	}
	if len(e.env) > 0 {
		e.d.Env = append(os.Environ(), e.env...)
	}
	e.log, e.logMu = &bytes.Buffer{}, &sync.Mutex{}
	e.d.Stderr = &lockedWriter{mu: e.logMu, w: e.log}
	if err := e.d.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.waited = make(chan error, 1)
	go func(c *exec.Cmd, ch chan error) { ch <- c.Wait() }(e.d, e.waited)
	e.t.Cleanup(func() { e.stop(syscall.SIGKILL) })
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := client.Dial(e.socket); err == nil {
			_, err := c.Status(context.Background())
			c.Close()
			if err == nil {
				return
			}
		}
		select {
		case err := <-e.waited:
			e.d = nil // nothing left to stop
			e.t.Fatalf("isolatord exited: %v\n%s", err, e.logs())
		case <-time.After(20 * time.Millisecond):
		}
	}
	e.t.Fatalf("isolatord did not come up:\n%s", e.logs())
}

// stop signals the daemon and waits for it; it returns the exit error.
func (e *env) stop(sig syscall.Signal) error {
	if e.d == nil {
		return nil
	}
	e.d.Process.Signal(sig)
	var err error
	select {
	case err = <-e.waited:
	case <-time.After(30 * time.Second):
		e.d.Process.Kill()
		err = <-e.waited
		e.t.Errorf("isolatord did not stop on %v", sig)
	}
	e.d = nil
	return err
}

func (e *env) logs() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.log.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// spin starts, as root through the client package, a task whose script loops forever
// (file rel under the test root) and returns its ID once it runs, with the client that
// holds its stream open; the caller closes the client.
func (e *env) spin(t testing.TB, rel string) (string, *client.Client) {
	t.Helper()
	c, err := client.Dial(e.socket)
	if err != nil {
		t.Fatal(err)
	}
	running := make(chan string, 1)
	go c.Open(context.Background(), api.OpenRequest{Path: e.file(rel, "while true; do :; done\n", 0o644)},
		func(ev api.Event) error {
			if ev.Type == api.EventState && ev.Task.State == api.StateRunning {
				running <- ev.Task.ID
			}
			return nil
		})
	select {
	case id := <-running:
		return id, c
	case <-time.After(30 * time.Second):
		c.Close()
		t.Fatalf("the task of %s did not start", rel)
		return "", nil
	}
}

func (e *env) file(rel, content string, mode os.FileMode) string {
	e.t.Helper()
	p := filepath.Join(e.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		e.t.Fatal(err)
	}
	os.Chmod(p, mode)
	return p
}

// isoctl runs the isoctl binary, as uid when uid >= 0, and returns stdout, stderr, exit code.
func (e *env) isoctl(uid int, args ...string) (string, string, int) {
	e.t.Helper()
	out, errOut, code, err := e.runIsoctl(uid, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out, errOut, code
}

// runIsoctl is isoctl for any goroutine: it reports a failure to run the binary as an
// error instead of failing the test.
func (e *env) runIsoctl(uid int, args ...string) (stdout, stderr string, code int, err error) {
	return e.runIsoctlGroups(uid, nil, args...)
}

// isoctlGroups is isoctl as uid with the supplementary groups given.
func (e *env) isoctlGroups(uid int, groups []uint32, args ...string) (string, string, int) {
	e.t.Helper()
	out, errOut, code, err := e.runIsoctlGroups(uid, groups, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out, errOut, code
}

func (e *env) runIsoctlGroups(uid int, groups []uint32, args ...string) (stdout, stderr string, code int, err error) {
	cmd := exec.Command(filepath.Join(binDir, "isoctl"), append([]string{"--socket", e.socket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), "HOME="+e.root)
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: groups}}
	}
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode(), nil
	}
	return out.String(), errb.String(), 0, err
}

func (e *env) openJSON(uid int, args ...string) (openReport, string, int) {
	e.t.Helper()
	out, errOut, code := e.isoctl(uid, append([]string{"open", "--no-launch", "--json"}, args...)...)
	var rep openReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		e.t.Fatalf("isoctl open %v: exit %d, bad JSON %q: %v\nstderr: %s", args, code, out, err, errOut)
	}
	return rep, errOut, code
}

type openReport struct {
	Path       string         `json:"path"`
	Decision   *api.Decision  `json:"decision"`
	Task       *api.Task      `json:"task"`
	Stdout     string         `json:"stdout"`
	Stderr     string         `json:"stderr"`
	ResultsDir string         `json:"results_dir"`
	Written    []string       `json:"written"`
	Refused    []api.Rejected `json:"refused"`
	Error      string         `json:"error"`
}

// makeTar writes a tar archive of files with the host's tar.
func (e *env) makeTar(rel string, files map[string]string) string {
	e.t.Helper()
	src := e.t.TempDir()
	var names []string
	for name, content := range files {
		p := filepath.Join(src, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			e.t.Fatal(err)
		}
		names = append(names, name)
	}
	out := filepath.Join(e.root, rel)
	cmd := exec.Command("tar", append([]string{"-cf", out, "-C", src}, names...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("tar: %v: %s", err, b)
	}
	return out
}

const script = `echo hello from the guest
echo "args: $0"
echo result-of-script > /output/report.txt
echo to-stderr >&2
`

func TestEndToEnd(t *testing.T) {
	e := newEnv(t)
	e.start()
	results := filepath.Join(e.root, "Isolated")

	t.Run("untrusted archive", func(t *testing.T) {
		tarPath := e.makeTar("untrusted/photos.tar", map[string]string{"a.txt": "alpha\n", "dir/b.txt": "bravo\n"})
		rep, stderr, code := e.openJSON(-1, "--results-dir", results, tarPath)
		if code != 0 || rep.Decision.Action != api.ActionIsolate || rep.Decision.Rule != "test-archives" {
			t.Fatalf("exit %d, report %+v\n%s", code, rep, stderr)
		}
		if rep.Task.State != api.StateDone || rep.Task.Stats == nil || rep.Task.Stats.Syscalls == 0 {
			t.Errorf("task %+v", rep.Task)
		}
		for name, want := range map[string]string{"a.txt": "alpha\n", "dir/b.txt": "bravo\n"} {
			got, err := os.ReadFile(filepath.Join(results, rep.Task.ID, name))
			if err != nil || string(got) != want {
				t.Errorf("result %s = %q, %v", name, got, err)
			}
		}
		buf := make([]byte, 128)
		n, err := unix.Getxattr(filepath.Join(results, rep.Task.ID, "a.txt"), "user.isolator.task", buf)
		if err != nil || string(buf[:n]) != rep.Task.ID {
			t.Errorf("user.isolator.task = %q, %v", buf[:n], err)
		}
		n, err = unix.Getxattr(filepath.Join(results, rep.Task.ID, "a.txt"), "user.isolator.source-sha256", buf)
		if err != nil || string(buf[:n]) != rep.Task.SHA256 || len(rep.Task.SHA256) != 64 {
			t.Errorf("user.isolator.source-sha256 = %q, %v (task sha %s)", buf[:n], err, rep.Task.SHA256)
		}
		// The text output names the files too.
		out, _, code := e.isoctl(-1, "open", "--no-launch", "--results-dir", results, tarPath)
		if code != 0 || !strings.Contains(out, "2 result file(s)") || !strings.Contains(out, "dir/b.txt") {
			t.Errorf("text output (exit %d):\n%s", code, out)
		}
	})

	t.Run("archive of more files than the broker's defaults", func(t *testing.T) {
		// The archive handler may return 4096 files; isoctl saves as many as it may.
		files := map[string]string{}
		for i := range 300 {
			files[fmt.Sprintf("f%03d.txt", i)] = fmt.Sprintf("file %d\n", i)
		}
		rep, stderr, code := e.openJSON(-1, "--results-dir", results, e.makeTar("untrusted/many.tar", files))
		if code != 0 || rep.Task == nil || len(rep.Written) != 300 || len(rep.Refused) != 0 {
			t.Fatalf("exit %d, %d written, refused %v\n%s", code, len(rep.Written), rep.Refused, stderr)
		}
		if got, err := os.ReadFile(filepath.Join(results, rep.Task.ID, "f299.txt")); err != nil || string(got) != "file 299\n" {
			t.Errorf("f299.txt = %q, %v", got, err)
		}
	})

	t.Run("untrusted script", func(t *testing.T) {
		p := e.file("untrusted/run-me.sh", script, 0o644)
		rep, stderr, code := e.openJSON(-1, "--results-dir", results, p)
		if code != 0 || rep.Decision.Rule != "test-scripts" {
			t.Fatalf("exit %d, report %+v\n%s", code, rep, stderr)
		}
		if !strings.Contains(rep.Stdout, "hello from the guest") || !strings.Contains(rep.Stdout, "args: /input/run-me.sh") ||
			!strings.Contains(rep.Stderr, "to-stderr") {
			t.Errorf("stdout %q stderr %q", rep.Stdout, rep.Stderr)
		}
		got, err := os.ReadFile(filepath.Join(results, rep.Task.ID, "report.txt"))
		if err != nil || string(got) != "result-of-script\n" {
			t.Errorf("report.txt = %q, %v", got, err)
		}
		logs, _, code := e.isoctl(-1, "logs", rep.Task.ID)
		if code != 0 || !strings.Contains(logs, "hello from the guest") {
			t.Errorf("isoctl logs: exit %d %q", code, logs)
		}
		logs, _, code = e.isoctl(-1, "logs", "--json", rep.Task.ID)
		var gotOut, gotErr string
		for line := range strings.Lines(logs) {
			var ev api.Event
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("isoctl logs --json: line %q: %v", line, err)
			}
			switch ev.Type {
			case api.EventStdout:
				gotOut += string(ev.Data)
			case api.EventStderr:
				gotErr += string(ev.Data)
			}
		}
		if code != 0 || gotOut != rep.Stdout || gotErr != rep.Stderr {
			t.Errorf("isoctl logs --json: exit %d, stdout %q, stderr %q; want %q and %q", code, gotOut, gotErr, rep.Stdout, rep.Stderr)
		}
		logs, _, code = e.isoctl(-1, "logs", "--json", "0123456789abcdef")
		var ev api.Event
		if err := json.Unmarshal([]byte(logs), &ev); err != nil || code != 1 || ev.Type != api.EventError || ev.Error == nil ||
			ev.Error.Code != api.CodeNotFound {
			t.Errorf("isoctl logs --json of a missing task: exit %d, %q, %v", code, logs, err)
		}
	})

	t.Run("trusted", func(t *testing.T) {
		p := e.file("trusted/readme.txt", "fine\n", 0o644)
		rep, _, code := e.openJSON(-1, p)
		if code != 0 || rep.Decision.Action != api.ActionTrust || rep.Task != nil {
			t.Errorf("exit %d, %+v", code, rep)
		}
		out, _, _ := e.isoctl(-1, "open", "--no-launch", p)
		if !strings.Contains(out, "trusted (rule test-trusted)") {
			t.Errorf("text output %q", out)
		}
	})

	t.Run("denied", func(t *testing.T) {
		p := e.file("denied/evil.bin", "MZ\x90\x00", 0o644)
		rep, _, code := e.openJSON(-1, p)
		if code != 2 || rep.Decision.Action != api.ActionDeny || rep.Decision.Rule != "test-denied" {
			t.Errorf("exit %d, %+v", code, rep)
		}
	})

	t.Run("second user", func(t *testing.T) {
		const nobody = 65534
		// Root's task, still running, and finished ones.
		id, c := e.spin(t, "untrusted/loop.sh")
		defer c.Close()
		out, _, code := e.isoctl(nobody, "ps", "--all", "--json")
		var tasks []api.Task
		if err := json.Unmarshal([]byte(out), &tasks); code != 0 || err != nil || len(tasks) != 0 {
			t.Errorf("nobody's ps --all: exit %d, %q, %v", code, out, err)
		}
		for _, args := range [][]string{{"kill", id}, {"logs", id}, {"results", "--dir", filepath.Join(e.root, "nobody-results"), id}} {
			_, errOut, code := e.isoctl(nobody, args...)
			if code == 0 || !strings.Contains(errOut, "no such task") {
				t.Errorf("nobody's %v: exit %d, %q", args, code, errOut)
			}
		}
		// nobody's kill did not touch root's task.
		if st, err := c.Task(context.Background(), id); err != nil || st.State != api.StateRunning {
			t.Errorf("root's task after nobody's kill: %+v, %v", st, err)
		}
		// nobody cannot get a root-only file isolated (the daemon reads it as nobody).
		secret := e.file("untrusted/secret.sh", "echo secret\n", 0o600)
		_, errOut, code := e.isoctl(nobody, "open", "--no-launch", "--results-dir", filepath.Join(e.root, "nobody-res"), secret)
		if code != 1 || !strings.Contains(errOut, "permission denied") {
			t.Errorf("nobody opening root's 0600 file: exit %d, %q", code, errOut)
		}
		// nobody's own task works and is nobody's.
		os.MkdirAll(filepath.Join(e.root, "nobody"), 0o755)
		os.Chown(filepath.Join(e.root, "nobody"), nobody, nobody)
		mine := e.file("nobody/mine.sh", script, 0o644)
		os.Chown(mine, nobody, nobody)
		rep, stderr, code := e.openJSON(nobody, "--results-dir", filepath.Join(e.root, "nobody", "Isolated"), mine)
		if code != 0 || rep.Task == nil || rep.Task.UID != nobody {
			t.Fatalf("nobody's own open: exit %d %+v\n%s", code, rep, stderr)
		}
		fi, err := os.Stat(filepath.Join(e.root, "nobody", "Isolated", rep.Task.ID, "report.txt"))
		if err != nil || fi.Sys().(*syscall.Stat_t).Uid != nobody {
			t.Errorf("nobody's results not written as nobody: %v", err)
		}
		// root sees both with --all, only its own without.
		out, _, _ = e.isoctl(-1, "ps", "--json")
		if strings.Contains(out, rep.Task.ID) {
			t.Error("root's ps without --all lists nobody's task")
		}
		out, _, _ = e.isoctl(-1, "ps", "--all")
		if !strings.Contains(out, rep.Task.ID) || !strings.Contains(out, id) {
			t.Errorf("root's ps --all:\n%s", out)
		}
		// root kills its own task.
		out, _, code = e.isoctl(-1, "kill", id)
		if code != 0 || !strings.Contains(out, "killed") {
			t.Errorf("kill: exit %d %q", code, out)
		}
	})

	t.Run("status and metrics", func(t *testing.T) {
		out, _, code := e.isoctl(-1, "status")
		if code != 0 || !strings.Contains(out, "micro VMs:") || !strings.Contains(out, "busybox") {
			t.Errorf("status: exit %d\n%s", code, out)
		}
		c, err := client.Dial(e.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		m, err := c.Metrics(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`isolator_tasks_total{outcome="done"}`, `isolator_tasks_total{outcome="killed"} 1`,
			"isolator_decision_duration_seconds_count", "isolator_vm_spawn_duration_seconds_count", "isolator_vms_active 0"} {
			if !strings.Contains(string(m), want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})

	t.Run("results of a running task", func(t *testing.T) {
		id, c := e.spin(t, "untrusted/busy.sh")
		defer c.Close()
		out, errOut, code := e.isoctl(-1, "results", "--dir", filepath.Join(e.root, "early"), id)
		want := "isoctl: task " + id + " is still running; it has no results yet: wait for it with isoctl logs -f " + id +
			", then run isoctl results " + id + " again\n"
		if code != 1 || errOut != want || out != "" {
			t.Errorf("isoctl results of a running task: exit %d, stdout %q, stderr %q\nwant %q", code, out, errOut, want)
		}
		if _, err := os.Stat(filepath.Join(e.root, "early")); !os.IsNotExist(err) {
			t.Errorf("results directory created for a running task: %v", err)
		}
		out, _, code = e.isoctl(-1, "kill", "--json", id)
		var rep struct {
			ID    string    `json:"id"`
			Task  *api.Task `json:"task"`
			Error string    `json:"error"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 0 || rep.ID != id || rep.Task == nil ||
			rep.Task.State != api.StateKilled || rep.Task.Reason != "killed by uid 0" {
			t.Errorf("kill --json: exit %d, %q, %v", code, out, err)
		}
		// Again: it has ended, nothing is killed, and isoctl says so.
		out, errOut, code = e.isoctl(-1, "kill", id)
		if want := "isoctl: " + id + ": task " + id + " already finished (killed); nothing was killed (conflict)\n"; code != 1 || out != "" || errOut != want {
			t.Errorf("kill of a finished task: exit %d, stdout %q, stderr %q, want %q", code, out, errOut, want)
		}
		out, _, code = e.isoctl(-1, "kill", "--json", id)
		rep.Task, rep.Error = nil, ""
		if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 1 || rep.Task != nil ||
			rep.Error != "task "+id+" already finished (killed); nothing was killed (conflict)" {
			t.Errorf("kill --json of a finished task: exit %d, %q, %v", code, out, err)
		}
	})

	t.Run("reload on SIGHUP", func(t *testing.T) {
		audit := filepath.Join(e.state, "audit.log")
		if err := os.Rename(audit, audit+".1"); err != nil {
			t.Fatal(err)
		}
		e.d.Process.Signal(syscall.SIGHUP)
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(e.logs(), "SIGHUP") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		e.openJSON(-1, e.file("trusted/after-hup.txt", "x", 0o644))
		data, err := os.ReadFile(audit)
		if err != nil || !strings.Contains(string(data), "after-hup.txt") {
			t.Errorf("audit log not reopened after SIGHUP: %q, %v", data, err)
		}
	})

	t.Run("second daemon refused", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(binDir, "isolatord"), "--socket", e.socket, "--state-dir", t.TempDir(),
			"--policy-dir", e.policy, "--image-dir", e.images)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "already running") {
			t.Errorf("second daemon: %v %s", err, out)
		}
	})

	if err := e.stop(syscall.SIGTERM); err != nil {
		t.Errorf("isolatord exit after SIGTERM: %v\n%s", err, e.logs())
	}
	if _, err := os.Stat(e.socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	_, errOut, code := e.isoctl(-1, "ps")
	if code != 1 || !strings.Contains(errOut, "isolatord is not running (no socket at") {
		t.Errorf("isoctl without daemon: exit %d %q", code, errOut)
	}
	// Scripts that asked for JSON get it, with the error, for every file.
	p := e.file("trusted/while-down.txt", "x", 0o644)
	out, errOut, code := e.isoctl(-1, "open", "--json", p)
	var rep openReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 1 || rep.Path != p ||
		!strings.HasPrefix(rep.Error, "isolatord is not running (no socket at") || errOut != "" {
		t.Errorf("isoctl open --json without daemon: exit %d, stdout %q (%v), stderr %q", code, out, err, errOut)
	}
}

func TestRestartKeepsHistory(t *testing.T) {
	e := newEnv(t)
	e.start()
	done, _, code := e.openJSON(-1, "--results-dir", filepath.Join(e.root, "res"), e.file("untrusted/ok.sh", script, 0o644))
	if code != 0 {
		t.Fatalf("first open: exit %d", code)
	}
	spin, c := e.spin(t, "untrusted/spin.sh")
	// isoctl open waits for a task of its own, which runs too.
	waiting := exec.Command(filepath.Join(binDir, "isoctl"), "--socket", e.socket, "open", "--no-launch",
		e.file("untrusted/spin2.sh", "while true; do :; done\n", 0o644))
	var waitOut bytes.Buffer
	waiting.Stderr = &waitOut
	if err := waiting.Start(); err != nil {
		t.Fatal(err)
	}
	var spin2 string
	for deadline := time.Now().Add(30 * time.Second); spin2 == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		tasks, err := c.Tasks(context.Background(), false)
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range tasks {
			if tk.ID != spin && tk.ID != done.Task.ID && tk.State == api.StateRunning {
				spin2 = tk.ID
			}
		}
	}
	if spin2 == "" {
		t.Fatal("isoctl open's task did not start")
	}
	// The daemon dies hard in the middle of the tasks.
	killedAt := time.Now()
	e.stop(syscall.SIGKILL)
	c.Close()
	err := waiting.Wait()
	want := "the connection to isolatord was lost while task " + spin2 + " was running; isolatord may have stopped or restarted: " +
		"see isoctl ps and isoctl logs " + spin2 + "\n"
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.HasSuffix(waitOut.String(), want) {
		t.Errorf("isoctl open when the daemon died: %v, stderr %q, want it to end with %q", err, waitOut.String(), want)
	}
	e.start()
	out, _, code := e.isoctl(-1, "ps", "--json")
	var tasks []api.Task
	if err := json.Unmarshal([]byte(out), &tasks); err != nil || code != 0 {
		t.Fatalf("ps: exit %d %q %v", code, out, err)
	}
	states := map[string]api.Task{}
	for _, tk := range tasks {
		states[tk.ID] = tk
	}
	if tk := states[done.Task.ID]; tk.State != api.StateDone {
		t.Errorf("finished task after restart: %+v", tk)
	}
	if tk := states[spin]; tk.State != api.StateKilled || tk.Reason != "daemon restarted" {
		t.Errorf("running task after restart: %+v", tk)
	}
	// Its time ends when the dead daemon was last alive, not at the restart.
	if tk := states[spin]; tk.Finished.Before(tk.Started) || tk.Finished.After(killedAt) {
		t.Errorf("task killed by the restart: started %v, finished %v, the daemon was killed at %v", tk.Started, tk.Finished, killedAt)
	}
	logs, _, _ := e.isoctl(-1, "logs", done.Task.ID)
	if !strings.Contains(logs, "hello from the guest") {
		t.Errorf("logs after restart: %q", logs)
	}
	audit, _ := os.ReadFile(filepath.Join(e.state, "audit.log"))
	if !strings.Contains(string(audit), `"reason":"daemon restarted"`) {
		t.Error("restart kill not audited")
	}
	// Both starts are audited; the second names the task the first left running.
	var restarts []string
	for _, line := range strings.Split(string(audit), "\n") {
		if strings.Contains(line, `"event":"restart"`) {
			restarts = append(restarts, line)
		}
	}
	if len(restarts) != 2 || strings.Contains(restarts[0], `"tasks"`) ||
		(!strings.Contains(restarts[1], `"tasks":["`+spin+`","`+spin2+`"]`) && !strings.Contains(restarts[1], `"tasks":["`+spin2+`","`+spin+`"]`)) ||
		!strings.Contains(restarts[1], "2 task(s) of the previous run interrupted") {
		t.Errorf("restart records:\n%s", strings.Join(restarts, "\n"))
	}
}

// TestCompressedArchives opens downloaded compressed tar archives under the shipped
// policy: busybox tar cannot unpack them in a micro VM (it starts its decompressor as a
// second process), so the shipped rules send them to gunzip, bunzip2 or unxz, whose output,
// the archive, is the task's; isoctl open does not print it, being binary, and says how to
// save it; saved and opened in turn, the archive is unpacked by the archive handler.
func TestCompressedArchives(t *testing.T) {
	e := newEnv(t)
	e.start()
	results := filepath.Join(e.root, "Isolated")
	download := func(path string, data []byte) string {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := unix.Setxattr(path, "user.xdg.origin.url", []byte("https://downloads.example.org/"+filepath.Base(path)), 0); err != nil {
			t.Skipf("no user xattrs here: %v", err)
		}
		return path
	}
	os.Mkdir(filepath.Join(e.root, "web"), 0o755)
	tarPath := e.makeTar("web/photos.tar", map[string]string{"a.txt": "alpha\n", "dir/b.txt": "bravo\n"})
	tarData, err := os.ReadFile(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ compressor, ext, rule, handler string }{
		{"gzip", "gz", "internet-gzip", "gunzip"},
		{"bzip2", "bz2", "internet-bzip2", "bunzip2"},
		{"xz", "xz", "internet-xz", "unxz"},
	} {
		t.Run(tt.ext, func(t *testing.T) {
			if _, err := exec.LookPath(tt.compressor); err != nil {
				t.Skipf("needs %s to make the archive", tt.compressor)
			}
			cmd := exec.Command(tt.compressor, "-c", tarPath)
			compressed, err := cmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			p := download(filepath.Join(e.root, "web", "photos.tar."+tt.ext), compressed)
			rep, stderr, code := e.openJSON(-1, "--results-dir", results, p)
			if code != 0 || rep.Decision == nil || rep.Decision.Rule != tt.rule || rep.Decision.Handler != tt.handler ||
				rep.Task == nil || rep.Task.State != api.StateDone || rep.Task.ExitCode != 0 {
				t.Fatalf("exit %d, %+v\n%s", code, rep, stderr)
			}
			// The decompressed archive is the task's output, whole.
			logs, _, code := e.isoctl(-1, "logs", rep.Task.ID)
			if code != 0 || logs != string(tarData) {
				t.Fatalf("isoctl logs: exit %d, %d bytes, want the %d bytes of the tar", code, len(logs), len(tarData))
			}
			// isoctl open does not print it, and says how to save it.
			out, _, code := e.isoctl(-1, "open", "--no-launch", "--results-dir", results, p)
			if code != 0 || strings.ContainsRune(out, 0) ||
				!regexp.MustCompile(`binary output \(`+strconv.Itoa(len(tarData))+` bytes\) not shown: isoctl logs [0-9a-f]{16} > FILE saves it`).MatchString(out) {
				t.Errorf("isoctl open: exit %d\n%q", code, out)
			}
			// Saved (a download too), it is a tar archive the archive handler unpacks.
			saved := download(filepath.Join(e.root, "web", tt.ext, "photos.tar"), []byte(logs))
			rep, stderr, code = e.openJSON(-1, "--results-dir", results, saved)
			if code != 0 || rep.Decision == nil || rep.Decision.Handler != "archive" || len(rep.Written) != 2 {
				t.Fatalf("the saved archive: exit %d, %+v\n%s", code, rep, stderr)
			}
			for name, want := range map[string]string{"a.txt": "alpha\n", "dir/b.txt": "bravo\n"} {
				if got, err := os.ReadFile(filepath.Join(results, rep.Task.ID, name)); err != nil || string(got) != want {
					t.Errorf("%s = %q, %v", name, got, err)
				}
			}
		})
	}
}

// TestSystemdNotify runs the daemon as systemd's Type=notify does, with $NOTIFY_SOCKET
// naming a datagram socket the test listens on: it says READY=1 (with its STATUS) once it
// serves, RELOADING=1 with the monotonic time and READY=1 again around a SIGHUP reload, and
// STOPPING=1 when SIGTERM stops it.
func TestSystemdNotify(t *testing.T) {
	e := newEnv(t)
	sock := filepath.Join(e.root, "run", "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	e.env = []string{"NOTIFY_SOCKET=" + sock}
	next := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		ln.SetReadDeadline(time.Now().Add(30 * time.Second)) // only so that a missing message fails the test
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v\n%s", err, e.logs())
		}
		return string(buf[:n])
	}
	monotonic := func() int64 {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			t.Fatal(err)
		}
		return ts.Nano() / 1000
	}

	e.start()
	if got, want := next(), "READY=1\nSTATUS=serving on "+e.socket; got != want {
		t.Errorf("after start: %q, want %q", got, want)
	}
	before := monotonic()
	e.d.Process.Signal(syscall.SIGHUP)
	reloading := next()
	after := monotonic()
	usec, ok := strings.CutPrefix(reloading, "RELOADING=1\nMONOTONIC_USEC=")
	if n, err := strconv.ParseInt(usec, 10, 64); !ok || err != nil || n < before || n > after {
		t.Errorf("on SIGHUP: %q, want RELOADING=1 and MONOTONIC_USEC between %d and %d", reloading, before, after)
	}
	if got := next(); got != "READY=1" {
		t.Errorf("after the reload: %q, want READY=1", got)
	}
	// The reload was done when READY=1 came: the daemon answers.
	if _, _, code := e.isoctl(-1, "status"); code != 0 {
		t.Errorf("isoctl status after the reload: exit %d", code)
	}
	e.d.Process.Signal(syscall.SIGTERM)
	if got := next(); got != "STOPPING=1" {
		t.Errorf("on SIGTERM: %q, want STOPPING=1", got)
	}
	if err := e.stop(syscall.SIGTERM); err != nil {
		t.Errorf("isolatord exit: %v\n%s", err, e.logs())
	}
}

// TestShutdownEndsTasks stops the daemon with SIGTERM while one task runs (a script that
// never ends) and another waits for the single micro VM slot: the queued one is cancelled
// and the running one killed when the shutdown deadline passes, both with the reason, in
// the history, the audit log and the waiting client's report; nothing is left in staging,
// and the daemon exits by itself, cleanly.
func TestShutdownEndsTasks(t *testing.T) {
	e := newEnv(t)
	e.start("--max-concurrent", "1")
	running, c := e.spin(t, "untrusted/forever.sh")
	defer c.Close()
	queuedOpen := exec.Command(filepath.Join(binDir, "isoctl"), "--socket", e.socket, "open", "--no-launch", "--json",
		"--results-dir", filepath.Join(e.root, "Isolated"), e.file("untrusted/waits.sh", "echo never\n", 0o644))
	var out bytes.Buffer
	queuedOpen.Stdout = &out
	if err := queuedOpen.Start(); err != nil {
		t.Fatal(err)
	}
	var queued string
	for deadline := time.Now().Add(30 * time.Second); queued == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		tasks, err := c.Tasks(context.Background(), false)
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range tasks {
			if tk.ID != running && tk.State == api.StateQueued {
				queued = tk.ID
			}
		}
	}
	if queued == "" {
		t.Fatalf("the second task was never queued\n%s", e.logs())
	}

	if err := e.stop(syscall.SIGTERM); err != nil {
		t.Errorf("isolatord exit after SIGTERM: %v\n%s", err, e.logs())
	}
	for _, want := range []string{"shutdown deadline reached: killing running tasks", "isolatord stopped"} {
		if !strings.Contains(e.logs(), want) {
			t.Errorf("the log lacks %q:\n%s", want, e.logs())
		}
	}
	reasons := map[string]string{running: "daemon shutting down: not finished within 3s", queued: "daemon shutting down"}
	for id, reason := range reasons {
		data, err := os.ReadFile(filepath.Join(e.state, "tasks", id, "task.json"))
		var tk api.Task
		if err == nil {
			err = json.Unmarshal(data, &tk)
		}
		if err != nil || tk.State != api.StateKilled || tk.Reason != reason || tk.Finished.IsZero() {
			t.Errorf("history of task %s: %+v, %v; want killed, %q", id, tk, err, reason)
		}
	}
	audit, err := os.ReadFile(filepath.Join(e.state, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for id, reason := range reasons {
		if !strings.Contains(string(audit), `"task":"`+id+`","state":"killed","reason":"`+reason+`"`) {
			t.Errorf("audit log lacks the end of task %s (%s):\n%s", id, reason, audit)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(e.state, "staging")); err != nil || len(ents) != 0 {
		t.Errorf("staging after shutdown: %v, %v", ents, err)
	}
	err = queuedOpen.Wait()
	var rep openReport
	if jerr := json.Unmarshal(out.Bytes(), &rep); jerr != nil || rep.Task == nil || rep.Task.ID != queued ||
		rep.Task.State != api.StateKilled || rep.Task.Reason != "daemon shutting down" {
		t.Errorf("the waiting isoctl open: %v, report %s (%v)", err, out.Bytes(), jerr)
	}
}

// TestFailClosedStart starts the daemon on a policy that does not load: it denies every
// file, isoctl status says why, and the rejection is logged once (and once more per
// SIGHUP), until a valid policy is written.
func TestFailClosedStart(t *testing.T) {
	e := newEnv(t)
	bad := filepath.Join(e.policy, "00-test.yaml")
	if err := os.WriteFile(bad, []byte("rules:\n  - {name: x, acton: trust}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.start()
	rejections := func() int { return strings.Count(e.logs(), "policy rejected") }
	waitLog := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for rejections() < n && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond) // and no more come
		if got := rejections(); got != n {
			t.Errorf("the rejected policy is logged %d times, want %d:\n%s", got, n, e.logs())
		}
	}
	waitLog(1)
	if !strings.Contains(e.logs(), "no valid policy is loaded, so every file is denied (fail-closed)") {
		t.Errorf("the log does not say the daemon is fail-closed:\n%s", e.logs())
	}
	out, _, code := e.isoctl(65534, "status")
	for _, want := range []string{
		"policy:     fail-closed: no valid policy is loaded, every file is denied\n",
		"rejected:   " + bad + `:2:5: rule "x" has no action` + "\n",
		"            " + bad + `:2:15: unknown key "acton" in rule (did you mean "action"?)` + "\n",
	} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("isoctl status: exit %d, lacks %q:\n%s", code, want, out)
		}
	}
	rep, _, code := e.openJSON(-1, e.file("trusted/a.txt", "a\n", 0o644))
	if code != 2 || rep.Decision == nil || rep.Decision.Rule != "fail-closed" {
		t.Errorf("open while fail-closed: exit %d, %+v", code, rep)
	}
	e.d.Process.Signal(syscall.SIGHUP)
	waitLog(2)

	if err := os.WriteFile(bad, []byte(strings.ReplaceAll(testPolicy, "ROOT", e.root)), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.logs(), "policy loaded") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	out, _, _ = e.isoctl(-1, "status")
	if strings.Contains(out, "fail-closed") || strings.Contains(out, "rejected:") {
		t.Errorf("isoctl status after a valid policy loaded:\n%s", out)
	}
}

// TestMaxInputBytes checks that max_input_bytes in the configuration file, and the flag
// over it, bound what is isolated, with a clear message for a file over the limit.
func TestMaxInputBytes(t *testing.T) {
	e := newEnv(t)
	conf := e.file("isolatord.yaml", "max_input_bytes: 64\n", 0o644)
	e.start("--config", conf)
	big := e.file("untrusted/big.sh", "echo big\n"+strings.Repeat("#", 100)+"\n", 0o644)
	small := e.file("untrusted/small.sh", "echo small\n", 0o644)
	results := filepath.Join(e.root, "Isolated")
	_, errOut, code := e.isoctl(-1, "open", "--no-launch", "--results-dir", results, big)
	want := "isoctl: " + big + ": file too large to isolate: " + big + " is 110 bytes; the limit is 64 bytes (max_input_bytes, --max-input-bytes) (too_large)"
	if code != 1 || !strings.Contains(errOut, want) {
		t.Errorf("open of a file over max_input_bytes: exit %d, stderr %q\nwant %q", code, errOut, want)
	}
	if rep, stderr, code := e.openJSON(-1, "--results-dir", results, small); code != 0 || rep.Task == nil || rep.Task.State != api.StateDone {
		t.Errorf("open of a file under the limit: exit %d, %+v\n%s", code, rep, stderr)
	}
	if !strings.Contains(e.logs(), "max_input_bytes=64") {
		t.Errorf("the ready line does not show the limit:\n%s", e.logs())
	}
	e.stop(syscall.SIGTERM)

	// The flag overrides the file.
	e.start("--config", conf, "--max-input-bytes", "200")
	if rep, stderr, code := e.openJSON(-1, "--results-dir", results, big); code != 0 || rep.Task == nil || rep.Task.State != api.StateDone {
		t.Errorf("open with --max-input-bytes 200: exit %d, %+v\n%s", code, rep, stderr)
	}
}

// TestOpenWithoutDACOverride runs the daemon with the unit's capabilities minus
// CAP_DAC_OVERRIDE (and without CAP_DAC_READ_SEARCH): it reads a caller's file only
// through the descriptor it opened as the caller, so a file in a 0700 home, which the
// policy must hash (the shipped known-bad list), is decided, not refused.
func TestOpenWithoutDACOverride(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux) to drop capabilities")
	}
	const nobody = 65534
	e := newEnv(t)
	e.wrap = []string{setpriv, "--bounding-set", "-all,+setuid,+setgid,+sys_admin,+sys_ptrace,+audit_write", "--"}
	e.start()
	home := filepath.Join(e.root, "nobody")
	os.Mkdir(home, 0o700)
	os.Chown(home, nobody, nobody)
	notes := e.file("nobody/notes.txt", "my notes\n", 0o600)
	os.Chown(notes, nobody, nobody)
	rep, stderr, code := e.openJSON(nobody, notes)
	if rep.Error != "" || rep.Decision == nil || rep.Decision.Rule != "default" {
		t.Fatalf("nobody's open of its own file in a 0700 home: exit %d, %+v\n%s\n%s", code, rep, stderr, e.logs())
	}
	audit, _ := os.ReadFile(filepath.Join(e.state, "audit.log"))
	if !strings.Contains(string(audit), `"sha256":"`+fmt.Sprintf("%x", sha256.Sum256([]byte("my notes\n")))+`"`) {
		t.Errorf("the decision is not audited with the file's hash:\n%s", audit)
	}
	// root's own file in the same situation: root has no DAC override now either, and
	// nobody still cannot get it decided.
	secret := e.file("untrusted/secret.sh", "echo secret\n", 0o600)
	_, errOut, code := e.isoctl(nobody, "open", "--no-launch", secret)
	if code != 1 || !strings.Contains(errOut, "open "+secret+": permission denied (forbidden)") {
		t.Errorf("nobody opening root's 0600 file: exit %d, %q", code, errOut)
	}
}

// TestAdminGroup runs the daemon with --admin-group: isoctl as nobody sees and controls only
// its own tasks and gets its own counts, nobody with the group as a supplementary group is
// an administrator, and /metrics is refused to non-administrators.
func TestAdminGroup(t *testing.T) {
	const nobody = 65534
	e := newEnv(t)
	var group string
	var gid uint32
	for _, name := range []string{"adm", "staff", "users"} {
		if out, err := exec.Command("getent", "group", name).Output(); err == nil {
			if f := strings.Split(strings.TrimSpace(string(out)), ":"); len(f) >= 3 {
				if n, err := strconv.Atoi(f[2]); err == nil && n != 0 {
					group, gid = name, uint32(n)
					break
				}
			}
		}
	}
	if group == "" {
		t.Skip("no group to use as the admin group")
	}
	e.start("--admin-group", group)
	if !strings.Contains(e.logs(), fmt.Sprintf(`admins="root and members of group %s (gid %d)"`, group, gid)) {
		t.Errorf("the ready line does not name the administrators:\n%s", e.logs())
	}
	admin := []uint32{gid}
	id, c := e.spin(t, "untrusted/spin.sh")
	defer c.Close()

	out, _, code := e.isoctl(nobody, "status")
	for _, want := range []string{"micro VMs:  0 of yours running (limit 4 for everyone)\n",
		"queue:      0 of yours waiting (limit 32 for everyone)\n", "tasks:      0 of uid 65534\n"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("nobody's isoctl status lacks %q:\n%s", want, out)
		}
	}
	out, _, code = e.isoctlGroups(nobody, admin, "status")
	if code != 0 || !strings.Contains(out, "micro VMs:  1 running (limit 4, peak 1)\n") ||
		!strings.Contains(out, "uid 65534 is an administrator") {
		t.Errorf("an administrator's isoctl status:\n%s", out)
	}
	out, _, _ = e.isoctl(nobody, "ps", "--all")
	if strings.Contains(out, id) {
		t.Errorf("nobody's ps --all lists root's task:\n%s", out)
	}
	out, _, _ = e.isoctlGroups(nobody, admin, "ps", "--all")
	if !strings.Contains(out, id) {
		t.Errorf("an administrator's ps --all lacks root's task:\n%s", out)
	}
	_, errOut, code := e.isoctl(nobody, "kill", id)
	if code != 1 || errOut != "isoctl: "+id+": no such task: "+id+" (not_found)\n" {
		t.Errorf("nobody's kill of root's task: exit %d %q", code, errOut)
	}
	if curl, err := exec.LookPath("curl"); err == nil {
		cmd := exec.Command(curl, "-s", "--unix-socket", e.socket, "http://isolatord/metrics")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		body, _ := cmd.Output()
		want := fmt.Sprintf(`{"code":"forbidden","message":"GET /metrics is for administrators: root and members of group %s (gid %d); uid 65534 is not one"}`, group, gid)
		if strings.TrimSpace(string(body)) != want {
			t.Errorf("nobody's curl of /metrics: %s\nwant %s", body, want)
		}
	}
	out, _, code = e.isoctlGroups(nobody, admin, "kill", id)
	if code != 0 || !strings.Contains(out, "killed") {
		t.Errorf("an administrator's kill of root's task: exit %d %q", code, out)
	}
}

// TestRelease: isoctl release makes the daemon trust the file's current content, for its
// owner's opens and after a restart; a changed file is isolated again; attributes the user
// sets alone release nothing; a deny rule still denies released content.
func TestRelease(t *testing.T) {
	const nobody = 65534
	e := newEnv(t)
	const badText = "echo known bad\n"
	badSum := fmt.Sprintf("%x", sha256.Sum256([]byte(badText)))
	// After 00-test.yaml, so that test-scripts decides first and the deny rule is only
	// reached for a released file.
	e.file("policy/50-deny.yaml", "rules:\n  - {name: known-bad, action: deny, match: {sha256: ["+badSum+"]}}\n", 0o644)
	e.start()
	home := filepath.Join(e.root, "nobody")
	os.Mkdir(home, 0o755)
	os.Chown(home, nobody, nobody)
	own := func(name, content string) string {
		p := e.file("nobody/"+name, content, 0o644)
		os.Chown(p, nobody, nobody)
		return p
	}
	results := filepath.Join(home, "Isolated")
	open := func(p string) openReport {
		t.Helper()
		rep, _, _ := e.openJSON(nobody, "--results-dir", results, p)
		if rep.Decision == nil {
			t.Fatalf("no decision for %s: %+v", p, rep)
		}
		return rep
	}

	reviewed := own("reviewed.sh", "echo reviewed\n")
	if rep := open(reviewed); rep.Decision.Action != api.ActionIsolate || rep.Decision.Rule != "test-scripts" {
		t.Fatalf("before the release: %+v", rep.Decision)
	}
	out, errOut, code := e.isoctl(nobody, "release", "--reason", "read it, harmless", reviewed)
	if code != 0 || !strings.Contains(out, reviewed+": released by uid 65534 (sha256 ") {
		t.Fatalf("isoctl release: exit %d %q %q", code, out, errOut)
	}
	checkReleased := func(step string) {
		t.Helper()
		rep := open(reviewed)
		d := rep.Decision
		if d.Action != api.ActionTrust || d.Rule != "released" || rep.Task != nil ||
			!strings.Contains(d.Explanation, `trust: released by nobody (uid 65534) at `) ||
			!strings.Contains(d.Explanation, `("read it, harmless"); the content is the one released`) ||
			!strings.HasSuffix(d.Explanation, "without the release: isolate (rule test-scripts)") {
			t.Errorf("%s: %+v", step, d)
		}
		text, _, _ := e.isoctl(nobody, "open", "--no-launch", reviewed)
		if !strings.Contains(text, reviewed+": trusted (rule released): trust: released by nobody (uid 65534)") {
			t.Errorf("%s: isoctl open says %q", step, text)
		}
	}
	checkReleased("after the release")
	audit, _ := os.ReadFile(filepath.Join(e.state, "audit.log"))
	if !strings.Contains(string(audit), `"event":"release","uid":65534,"user":"nobody","path":"`+reviewed+`"`) ||
		!strings.Contains(string(audit), `"rule":"released"`) {
		t.Errorf("release and released decision not audited:\n%s", audit)
	}

	t.Run("survives a restart", func(t *testing.T) {
		e.stop(syscall.SIGTERM)
		e.start()
		checkReleased("after a restart")
	})

	t.Run("changed file is isolated again", func(t *testing.T) {
		changed := own("changed.sh", "echo v1\n")
		if _, _, code := e.isoctl(nobody, "release", changed); code != 0 {
			t.Fatal("release failed")
		}
		if rep := open(changed); rep.Decision.Rule != "released" {
			t.Fatalf("released: %+v", rep.Decision)
		}
		f, _ := os.OpenFile(changed, os.O_WRONLY|os.O_APPEND, 0)
		f.WriteString("echo v2\n")
		f.Close()
		rep := open(changed)
		if rep.Decision.Action != api.ActionIsolate || rep.Decision.Rule != "test-scripts" || rep.Task == nil ||
			!strings.HasSuffix(rep.Decision.Explanation, `(the release by nobody (uid 65534) at `+
				releasedAt(t, changed)+` does not apply: the content has changed since)`) {
			t.Errorf("after a change: %+v", rep.Decision)
		}
	})

	t.Run("attributes alone release nothing", func(t *testing.T) {
		setfattr, err := exec.LookPath("setfattr")
		if err != nil {
			t.Skip("needs setfattr (package attr)")
		}
		const text = "echo self-released\n"
		self := own("self.sh", text)
		for _, kv := range [][2]string{{"user.isolator.sha256", fmt.Sprintf("%x", sha256.Sum256([]byte(text)))},
			{"user.isolator.released-by", "65534"}, {"user.isolator.verdict", "trust"}} {
			cmd := exec.Command(setfattr, "-n", kv[0], "-v", kv[1], self)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Skipf("setfattr as nobody: %v %s", err, out)
			}
		}
		if rep := open(self); rep.Decision.Action != api.ActionIsolate || rep.Decision.Rule != "test-scripts" {
			t.Errorf("a file the user tagged trusted itself: %+v", rep.Decision)
		}
	})

	t.Run("deny wins over a release", func(t *testing.T) {
		bad := own("bad.sh", badText)
		if rep := open(bad); rep.Decision.Rule != "test-scripts" {
			t.Fatalf("before the release: %+v", rep.Decision)
		}
		if _, _, code := e.isoctl(nobody, "release", bad); code != 0 {
			t.Fatal("release failed")
		}
		rep := open(bad)
		if rep.Decision.Action != api.ActionDeny || rep.Decision.Rule != "known-bad" ||
			!strings.Contains(rep.Decision.Explanation, "does not override a deny rule") {
			t.Errorf("released known-bad content: %+v", rep.Decision)
		}
	})

	t.Run("only the owner or an administrator", func(t *testing.T) {
		other := own("other.sh", "echo other\n")
		_, errOut, code := e.isoctl(1, "release", other)
		want := "isoctl: not permitted: only the file's owner or an administrator can release it (forbidden)\n"
		if code != 1 || errOut != want {
			t.Errorf("uid 1 releasing nobody's file: exit %d %q, want %q", code, errOut, want)
		}
		if rep := open(other); rep.Decision.Rule != "test-scripts" {
			t.Errorf("after a refused release: %+v", rep.Decision)
		}
		// root (an administrator) may.
		if _, _, code := e.isoctl(-1, "release", other); code != 0 {
			t.Fatal("root's release failed")
		}
		if rep := open(other); rep.Decision.Rule != "released" || !strings.Contains(rep.Decision.Explanation, "released by root (uid 0)") {
			t.Errorf("after root's release: %+v", rep.Decision)
		}
	})
}

// releasedAt reads the release time the daemon tagged path with.
func releasedAt(t *testing.T, path string) string {
	t.Helper()
	buf := make([]byte, 64)
	n, err := unix.Getxattr(path, "user.isolator.released-at", buf)
	if err != nil {
		t.Fatalf("released-at of %s: %v", path, err)
	}
	return string(buf[:n])
}
