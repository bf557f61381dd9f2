package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/client"
	"github.com/isolator-dev/isolator/pkg/daemon"
)

// These tests run an Interceptor inside the test process with the stand-in policy and
// runner of daemon_test.go, against the real inotify and fanotify. The test process is the
// daemon, so its own opens are not gated: opens under test are made by cat.

func requireFanotify(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("interception needs root (fanotify permission events)")
	}
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT, unix.O_RDONLY)
	if err != nil {
		t.Skipf("fanotify permission events unavailable: %v", err)
	}
	unix.Close(fd)
}

type eventLog struct {
	mu  sync.Mutex
	evs []api.Event
}

func (l *eventLog) add(ev api.Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, ev)
	return nil
}

func (l *eventLog) about(path string) []api.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []api.Event
	for _, ev := range l.evs {
		if ev.Path == path || (ev.Task != nil && ev.Task.File == path) {
			out = append(out, ev)
		}
	}
	return out
}

func catFile(path string) (string, string, error) {
	cmd := exec.Command("cat", path)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func auditCount(t *testing.T, state, event, path string) int {
	t.Helper()
	f, err := os.Open(filepath.Join(state, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec daemon.AuditRecord
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Event == event && rec.Path == path {
			n++
		}
	}
	return n
}

func TestInterceptor(t *testing.T) {
	requireFanotify(t)
	in := start(t, daemon.Config{})
	dl := t.TempDir()
	// The owner, nobody, must reach its file: isolation reads it with the owner's identity.
	for _, d := range []string{dl, filepath.Dir(dl)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ic, err := daemon.NewInterceptor(in.d, daemon.InterceptConfig{Dirs: []string{dl}, Settle: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ic.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}
	defer stop()

	ec, err := client.Dial(in.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	var log eventLog
	subscribed := make(chan struct{})
	var once sync.Once
	go ec.Events(ctx, func(ev api.Event) error {
		once.Do(func() { close(subscribed) })
		return log.add(ev)
	})
	<-subscribed

	tasksFor := func(path string) []api.Task {
		var out []api.Task
		for _, tk := range in.d.Tasks(&daemon.Peer{UID: 0}, true) {
			if tk.File == path {
				out = append(out, tk)
			}
		}
		return out
	}

	t.Run("isolated once for the owner", func(t *testing.T) {
		p := writeFile(t, dl, "report.bin", "untrusted bytes")
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool {
			tasks := tasksFor(p)
			return len(tasks) == 1 && tasks[0].State.Final()
		})
		// cat is refused; the cached verdict points at the same task.
		out, errOut, err := catFile(p)
		if err == nil || out != "" || !strings.Contains(errOut, "Operation not permitted") {
			t.Errorf("cat: %v %q %q", err, out, errOut)
		}
		waitFor(t, func() bool {
			for _, ev := range log.about(p) {
				if ev.Type == api.EventDenied {
					return true
				}
			}
			return false
		})
		tasks := tasksFor(p)
		if len(tasks) != 1 || tasks[0].UID != 65534 || tasks[0].State != api.StateDone || tasks[0].Decision.Rule != "other" {
			t.Fatalf("tasks %+v", tasks)
		}
		if n := auditCount(t, in.state, "decision", p); n != 1 {
			t.Errorf("%d audited decisions, want 1", n)
		}
		res, err := in.d.Results(&daemon.Peer{UID: 65534}, tasks[0].ID)
		if err != nil || len(res.Files) != 1 || res.Files[0].Name != "count.txt" || res.Files[0].Size != 3 {
			t.Errorf("owner's results: %+v, %v", res, err)
		}
		if _, files, err := resultFiles(in.c, tasks[0].ID); err != nil || files["count.txt"] != "15\n" {
			t.Errorf("results as root: %q, %v", files, err)
		}
		if _, err := in.d.Results(&daemon.Peer{UID: 1000}, tasks[0].ID); err == nil {
			t.Error("another user fetched the results")
		}
		var download, denied bool
		for _, ev := range log.about(p) {
			switch ev.Type {
			case api.EventDownload:
				download = ev.Decision != nil && ev.Decision.Action == api.ActionIsolate
			case api.EventDenied:
				denied = ev.Task != nil && ev.Task.ID == tasks[0].ID
			}
		}
		if !download || !denied {
			t.Errorf("events: download %v, denied with task %v: %+v", download, denied, log.about(p))
		}
	})

	t.Run("trusted opens", func(t *testing.T) {
		p := writeFile(t, dl, "notes.txt", "plain notes\n")
		out, errOut, err := catFile(p)
		if err != nil || out != "plain notes\n" {
			t.Errorf("cat: %v %q %q", err, out, errOut)
		}
	})

	t.Run("denied is not isolated", func(t *testing.T) {
		p := writeFile(t, dl, "setup.exe", "MZ")
		if _, _, err := catFile(p); err == nil {
			t.Error("cat of a denied file succeeded")
		}
		waitFor(t, func() bool { return auditCount(t, in.state, "decision", p) == 1 })
		time.Sleep(300 * time.Millisecond) // past the settle interval: the Watcher decided it too
		if tasks := tasksFor(p); len(tasks) != 0 {
			t.Errorf("denied file isolated: %+v", tasks)
		}
		if n := auditCount(t, in.state, "decision", p); n != 1 {
			t.Errorf("%d audited decisions, want 1", n)
		}
	})

	t.Run("an open mid-write waits for the download", func(t *testing.T) {
		// curl writing in place while another program opens the file: the open is
		// refused without a decision; the complete download is decided and isolated once.
		p := filepath.Join(dl, "stream.bin")
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Chown(65534, 65534); err != nil {
			t.Fatal(err)
		}
		const first, second = "first half; ", "second half"
		if _, err := f.WriteString(first); err != nil {
			t.Fatal(err)
		}
		if out, errOut, err := catFile(p); err == nil || !strings.Contains(errOut, "Operation not permitted") {
			t.Errorf("cat mid-write: %v %q %q", err, out, errOut)
		}
		if n := auditCount(t, in.state, "decision", p); n != 0 {
			t.Errorf("the partial file was decided (%d audit records)", n)
		}
		if _, err := f.WriteString(second); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool {
			tasks := tasksFor(p)
			return len(tasks) == 1 && tasks[0].State.Final()
		})
		if _, _, err := catFile(p); err == nil {
			t.Error("cat of the decided download succeeded")
		}
		time.Sleep(300 * time.Millisecond) // past the settle interval: a second decision would show
		if n := auditCount(t, in.state, "decision", p); n != 1 {
			t.Errorf("%d audited decisions, want 1", n)
		}
		tasks := tasksFor(p)
		if len(tasks) != 1 {
			t.Fatalf("tasks %+v, want 1", tasks)
		}
		res, files, err := resultFiles(in.c, tasks[0].ID)
		if want := fmt.Sprintf("%d\n", len(first+second)); err != nil || len(res.Files) != 1 || files["count.txt"] != want {
			t.Errorf("results %+v %q, %v; want the whole file's size %q", res, files, err, want)
		}
		for _, ev := range log.about(p) {
			if ev.Type == api.EventDenied && ev.Time.Before(tasks[0].Created) {
				t.Errorf("the refused open mid-write was notified: %+v", ev)
			}
		}
	})

	t.Run("stopped", func(t *testing.T) {
		stop()
		p := filepath.Join(dl, "report.bin")
		if out, _, err := catFile(p); err != nil || out != "untrusted bytes" {
			t.Errorf("cat after the interceptor stopped: %v %q", err, out)
		}
	})
}

// TestInterceptorRescansUsers: with the users' download directories (InterceptConfig.Passwd),
// a directory that appears after the start is intercepted after Rescan (isolatord's
// SIGHUP), or by itself after RescanInterval; one a user points outside their home is
// not.
func TestInterceptorRescansUsers(t *testing.T) {
	requireFanotify(t)
	in := start(t, daemon.Config{})
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	const alice, bob, mallory = 4201, 4202, 4203 // users of this test only
	mkOwned := func(dir string, uid int) string {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, uid); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	var lines []string
	for name, uid := range map[string]int{"alice": alice, "bob": bob, "mallory": mallory} {
		home := mkOwned(filepath.Join(root, name), uid)
		lines = append(lines, fmt.Sprintf("%s:x:%d:%d::%s:/bin/sh", name, uid, uid, home))
	}
	passwd := writeFile(t, root, "passwd", strings.Join(lines, "\n")+"\n")
	// mallory's Downloads is a directory of theirs outside their home: refused.
	elsewhere := mkOwned(filepath.Join(root, "elsewhere"), mallory)
	if err := os.Symlink(elsewhere, filepath.Join(root, "mallory", "Downloads")); err != nil {
		t.Fatal(err)
	}
	outside := writeFile(t, elsewhere, "report.bin", "untrusted bytes")

	// download writes an untrusted file of the user into dir and waits for its decision;
	// cat is refused then.
	download := func(t *testing.T, dir string, uid int) {
		t.Helper()
		p := writeFile(t, dir, "report.bin", "untrusted bytes")
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return auditCount(t, in.state, "decision", p) == 1 })
		if out, _, err := catFile(p); err == nil {
			t.Errorf("cat of a download in a directory found by the rescan: %q", out)
		}
	}

	t.Run("SIGHUP", func(t *testing.T) {
		ic := runInterceptor(t, in.d, daemon.InterceptConfig{Passwd: passwd, Settle: 100 * time.Millisecond, RescanInterval: time.Hour})
		dl := mkOwned(filepath.Join(root, "alice", "Downloads"), alice)
		p := writeFile(t, dl, "before.bin", "not yet watched")
		time.Sleep(300 * time.Millisecond) // past the settle interval: not decided, not gated
		if n := auditCount(t, in.state, "decision", p); n != 0 {
			t.Fatalf("%d decisions before the rescan", n)
		}
		ic.Rescan()
		// The file already there is decided too.
		waitFor(t, func() bool { return auditCount(t, in.state, "decision", p) == 1 })
		download(t, mkOwned(filepath.Join(dl, "sub"), alice), alice)
	})
	t.Run("every RescanInterval", func(t *testing.T) {
		runInterceptor(t, in.d, daemon.InterceptConfig{Passwd: passwd, Settle: 100 * time.Millisecond, RescanInterval: 100 * time.Millisecond})
		download(t, mkOwned(filepath.Join(root, "bob", "Downloads"), bob), bob)
	})
	if out, _, err := catFile(outside); err != nil || auditCount(t, in.state, "decision", outside) != 0 {
		t.Errorf("a file in the directory mallory pointed at is gated or decided: %q, %v", out, err)
	}
}

// TestInterceptorUserDirSwappedForSymlink: a user exchanges their download directory with
// a symbolic link to a directory of another user (/home, /srv, /root, ...) again and
// again (RENAME_EXCHANGE) while the rescan checks and adds it. The Gate and the Watcher use
// only the directory that was checked: the other user's file is never gated nor decided,
// and the user's own directory, once left in place, is intercepted as usual.
func TestInterceptorUserDirSwappedForSymlink(t *testing.T) {
	requireFanotify(t)
	in := start(t, daemon.Config{})
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	const attacker, victim = 4301, 4302 // users of this test only
	home := filepath.Join(root, "attacker")
	other := filepath.Join(root, "victim") // stands for /home, /srv, /root, ...
	for dir, uid := range map[string]int{home: attacker, other: victim, filepath.Join(other, "sub"): victim} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	secret := writeFile(t, filepath.Join(other, "sub"), "work.doc", "the victim's own document")
	if err := os.Chown(secret, victim, victim); err != nil {
		t.Fatal(err)
	}
	passwd := writeFile(t, root, "passwd", fmt.Sprintf("attacker:x:%d:%d::%s:/bin/sh\n", attacker, attacker, home))
	dl, link := filepath.Join(home, "Downloads"), filepath.Join(home, "link")
	if err := os.Mkdir(dl, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dl, attacker, attacker); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, link); err != nil {
		t.Fatal(err)
	}
	ic := runInterceptor(t, in.d, daemon.InterceptConfig{Passwd: passwd, Settle: 100 * time.Millisecond,
		RescanInterval: time.Hour})

	var stop atomic.Bool
	swapped := make(chan int)
	go func() {
		n := 0
		for !stop.Load() {
			if unix.Renameat2(unix.AT_FDCWD, dl, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE) == nil {
				n++
			}
		}
		swapped <- n
	}()
	for range 3000 {
		ic.Rescan()
	}
	stop.Store(true)
	n := <-swapped
	if n%2 == 1 { // leave the real directory at its name
		if err := unix.Renameat2(unix.AT_FDCWD, dl, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d exchanges during 3000 rescans", n)
	if out, errOut, err := catFile(secret); err != nil || out != "the victim's own document" {
		t.Errorf("the victim's file, outside every download directory, is gated: cat: %q %q %v", out, errOut, err)
	}
	if got := auditCount(t, in.state, "decision", secret); got != 0 {
		t.Errorf("%d decisions about the victim's file, want none", got)
	}
	// The attacker's own directory is still theirs to have intercepted.
	ic.Rescan()
	p := writeFile(t, dl, "report.bin", "untrusted bytes")
	if err := os.Chown(p, attacker, attacker); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return auditCount(t, in.state, "decision", p) == 1 })
	if out, _, err := catFile(p); err == nil {
		t.Errorf("cat of a download in the attacker's directory: %q", out)
	}
	if out, errOut, err := catFile(secret); err != nil || auditCount(t, in.state, "decision", secret) != 0 {
		t.Errorf("the victim's file is gated after all: cat: %q %q %v", out, errOut, err)
	}
}

// runInterceptor makes an Interceptor for d and runs it until the test ends.
func runInterceptor(t *testing.T, d *daemon.Daemon, cfg daemon.InterceptConfig) *daemon.Interceptor {
	t.Helper()
	ic, err := daemon.NewInterceptor(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ic.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return ic
}
