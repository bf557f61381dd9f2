package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/daemon"
)

// holdRunner is countRunner that holds the runs of inputs named *.hold until release is
// closed (or the task is killed).
type holdRunner struct {
	countRunner
	release chan struct{}
}

func (r *holdRunner) Run(ctx context.Context, job *daemon.Job) (*daemon.RunResult, error) {
	if strings.HasSuffix(job.InputName, ".hold") {
		if job.Started != nil {
			job.Started()
		}
		select {
		case <-r.release:
		case <-ctx.Done():
			return &daemon.RunResult{ExitCode: 137, Killed: true, Reason: "killed"}, nil
		}
	}
	return r.countRunner.Run(ctx, job)
}

// adminGroup returns an existing group, neither root's nor nogroup, to be the admin group.
func adminGroup(t *testing.T) (string, uint32) {
	t.Helper()
	for _, name := range []string{"adm", "staff", "users", "sys"} {
		if g, err := user.LookupGroup(name); err == nil {
			if gid, _ := strconv.Atoi(g.Gid); gid != 0 && gid != 65534 {
				return g.Name, uint32(gid)
			}
		}
	}
	t.Skip("no group to use as the admin group (adm, staff, users, sys)")
	return "", 0
}

func decode[T any](t *testing.T, r response) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.body), &v); err != nil {
		t.Fatalf("status %d, body %q: %v", r.status, r.body, err)
	}
	return v
}

// TestPermissions checks the route table's labels with real second callers: nobody, and
// nobody with the admin group as a supplementary group.
func TestPermissions(t *testing.T) {
	requireRoot(t)
	const nobody = 65534
	group, gid := adminGroup(t)
	r := &holdRunner{release: make(chan struct{})}
	defer close(r.release)
	in := start(t, daemon.Config{Runner: r, AdminGroup: group})
	admin := []uint32{gid} // nobody, with the admin group
	dir := t.TempDir()
	reachable(t, dir)

	// root's task, held running, and one of nobody's, finished.
	rootTask := make(chan string, 1)
	go in.c.Open(context.Background(), api.OpenRequest{Path: writeFile(t, dir, "root.hold", "root's")}, func(ev api.Event) error {
		if ev.Type == api.EventState && ev.Task.State == api.StateRunning {
			rootTask <- ev.Task.ID
		}
		return nil
	})
	var rootID string
	select {
	case rootID = <-rootTask:
	case <-time.After(10 * time.Second):
		t.Fatal("root's task did not start")
	}
	mine := writeFile(t, dir, "mine.bin", "nobody's")
	os.Chown(mine, nobody, nobody)
	if resp := as(t, in.socket, nobody, nil, "POST", api.PathOpen, api.OpenRequest{Path: mine}); resp.status != 200 ||
		!strings.Contains(resp.body, `"state":"done"`) {
		t.Fatalf("nobody's open: %d %s", resp.status, resp.body)
	}

	t.Run("metrics are for administrators", func(t *testing.T) {
		resp := as(t, in.socket, nobody, nil, "GET", api.PathMetrics, nil)
		want := fmt.Sprintf("GET /metrics is for administrators: root and members of group %s (gid %d); uid %d is not one", group, gid, nobody)
		if e := decode[api.Error](t, resp); resp.status != 403 || e.Code != api.CodeForbidden || e.Message != want {
			t.Errorf("nobody: %d %+v, want 403 %q", resp.status, e, want)
		}
		if resp := as(t, in.socket, nobody, admin, "GET", api.PathMetrics, nil); resp.status != 200 ||
			!strings.Contains(resp.body, "isolator_vms_active 1") {
			t.Errorf("a member of the admin group: %d %.200s", resp.status, resp.body)
		}
		if m, err := in.c.Metrics(context.Background()); err != nil || !strings.Contains(string(m), "isolator_vms_active") {
			t.Errorf("root: %v", err)
		}
	})

	t.Run("status counts the caller's own tasks", func(t *testing.T) {
		st := decode[api.Status](t, as(t, in.socket, nobody, nil, "GET", api.PathStatus, nil))
		if st.Admin || st.ActiveVMs != 0 || st.Queued != 0 || st.TasksTotal != 1 || st.PeakRunning != 0 || st.PeakQueued != 0 ||
			st.MaxConcurrent != 4 {
			t.Errorf("nobody's status: %+v; want only nobody's one finished task, no peaks", st)
		}
		st = decode[api.Status](t, as(t, in.socket, nobody, admin, "GET", api.PathStatus, nil))
		if !st.Admin || st.ActiveVMs != 1 || st.TasksTotal != 2 || st.PeakRunning < 1 {
			t.Errorf("an administrator's status: %+v; want the global counts", st)
		}
	})

	t.Run("read routes show the caller's own tasks", func(t *testing.T) {
		tasks := decode[[]api.Task](t, as(t, in.socket, nobody, nil, "GET", api.PathTasks+"?all=1", nil))
		if len(tasks) != 1 || tasks[0].UID != nobody {
			t.Errorf("nobody's tasks?all=1: %+v", tasks)
		}
		for _, path := range []string{"/v1/tasks/" + rootID, "/v1/tasks/" + rootID + "/logs", "/v1/tasks/" + rootID + "/results"} {
			resp := as(t, in.socket, nobody, nil, "GET", path, nil)
			if e := decode[api.Error](t, resp); resp.status != 404 || e.Message != "no such task: "+rootID {
				t.Errorf("nobody's GET %s: %d %+v", path, resp.status, e)
			}
		}
		tasks = decode[[]api.Task](t, as(t, in.socket, nobody, admin, "GET", api.PathTasks+"?all=1", nil))
		if len(tasks) != 2 {
			t.Errorf("an administrator's tasks?all=1: %+v", tasks)
		}
		if resp := as(t, in.socket, nobody, admin, "GET", "/v1/tasks/"+rootID, nil); resp.status != 200 {
			t.Errorf("an administrator's GET of root's task: %d %s", resp.status, resp.body)
		}
		if resp := as(t, in.socket, nobody, admin, "GET", "/v1/tasks/"+rootID+"/results", nil); resp.status != 409 {
			t.Errorf("an administrator's results of root's running task: %d %s", resp.status, resp.body)
		}
	})

	t.Run("events of others reach administrators only", func(t *testing.T) {
		plain := asAsync(t, in.socket, nobody, nil, "GET", api.PathEvents, 2*time.Second)
		adm := asAsync(t, in.socket, nobody, admin, "GET", api.PathEvents, 2*time.Second)
		time.Sleep(500 * time.Millisecond) // both subscribed
		evs, err := openAll(in.c, writeFile(t, dir, "quick.bin", "x"))
		if err != nil {
			t.Fatal(err)
		}
		id := evs[1].Task.ID // the decision, then the task's state
		p, a := <-plain, <-adm
		if p.status != 200 || strings.Contains(p.body, id) {
			t.Errorf("nobody's events: %d, include root's task %s: %s", p.status, id, p.body)
		}
		if a.status != 200 || !strings.Contains(a.body, `"id":"`+id+`"`) {
			t.Errorf("an administrator's events: %d, lack root's task %s: %s", a.status, id, a.body)
		}
	})

	t.Run("write routes act on the caller's own", func(t *testing.T) {
		resp := as(t, in.socket, nobody, nil, "POST", "/v1/tasks/"+rootID+"/kill", struct{}{})
		if e := decode[api.Error](t, resp); resp.status != 404 || e.Message != "no such task: "+rootID {
			t.Errorf("nobody killing root's task: %d %+v", resp.status, e)
		}
		if tk, err := in.c.Task(context.Background(), rootID); err != nil || tk.State != api.StateRunning {
			t.Fatalf("root's task after nobody's kill: %+v %v", tk, err)
		}
		rootFile := writeFile(t, dir, "root-notes.txt", "root's notes\n")
		resp = as(t, in.socket, nobody, nil, "POST", api.PathRelease, api.ReleaseRequest{Path: rootFile})
		want := "not permitted: only the file's owner or an administrator can release it"
		if e := decode[api.Error](t, resp); resp.status != 403 || e.Message != want {
			t.Errorf("nobody releasing root's file: %d %+v, want 403 %q", resp.status, e, want)
		}
		resp = as(t, in.socket, nobody, admin, "POST", "/v1/tasks/"+rootID+"/kill", struct{}{})
		if tk := decode[api.Task](t, resp); resp.status != 200 || tk.State != api.StateKilled || tk.Reason != "killed by uid 65534" {
			t.Errorf("an administrator killing root's task: %d %+v", resp.status, tk)
		}
	})
}

func TestAdminGroupUnknown(t *testing.T) {
	_, err := daemon.New(daemon.Config{StateDir: filepath.Join(t.TempDir(), "state"), Decider: extDecider{},
		Runner: &countRunner{}, AdminGroup: "no-such-group-here"})
	if err == nil || err.Error() != `daemon: admin group: "no-such-group-here": no such group` {
		t.Errorf("New with an unknown admin group: %v", err)
	}
}
