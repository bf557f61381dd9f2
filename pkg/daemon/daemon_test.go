package daemon_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/client"
	"github.com/isolator-dev/isolator/pkg/daemon"
	"github.com/isolator-dev/isolator/pkg/policy"
)

// extDecider decides by file extension: .txt trusted, .exe denied, anything else isolated
// with the "count" handler.
type extDecider struct{}

func (extDecider) Version() string { return "test-1" }

func (extDecider) Decide(_ context.Context, req *daemon.DecideRequest) (*daemon.Decision, error) {
	switch filepath.Ext(req.Path) {
	case ".txt":
		return &daemon.Decision{Decision: api.Decision{Action: api.ActionTrust, Rule: "text", Explanation: "text is trusted"}}, nil
	case ".exe":
		return &daemon.Decision{Decision: api.Decision{Action: api.ActionDeny, Rule: "exe", Explanation: "executables are denied"}}, nil
	}
	return &daemon.Decision{
		Decision: api.Decision{Action: api.ActionIsolate, Rule: "other", Explanation: "isolate the rest"},
		Handler:  &daemon.Handler{Name: "count", Image: "none", Program: "/count"},
	}, nil
}

// countRunner stands in for the micro VM in queue tests: it reads the staged input, prints
// its size, returns one output file, and holds each run until gate lets it go.
type countRunner struct {
	gate    chan struct{} // nil: no waiting
	running atomic.Int32
	peak    atomic.Int32
}

func (r *countRunner) Run(ctx context.Context, job *daemon.Job) (*daemon.RunResult, error) {
	data, err := os.ReadFile(job.Input)
	if err != nil {
		return nil, err
	}
	n := r.running.Add(1)
	defer r.running.Add(-1)
	for {
		p := r.peak.Load()
		if n <= p || r.peak.CompareAndSwap(p, n) {
			break
		}
	}
	if job.Started != nil {
		job.Started()
	}
	fmt.Fprintf(job.Stdout, "%s: %d bytes\n", job.InputName, len(data))
	fmt.Fprintf(job.Stderr, "warning from guest\n")
	if r.gate != nil {
		select {
		case <-r.gate:
		case <-ctx.Done():
			return &daemon.RunResult{ExitCode: 137, Killed: true, Reason: "killed"}, nil
		}
	}
	return &daemon.RunResult{
		Outputs:  []api.File{{Name: "count.txt", Mode: 0o644, Data: fmt.Appendf(nil, "%d\n", len(data))}},
		Rejected: []api.Rejected{{Name: "link", Reason: "not a regular file"}},
		Stats:    api.VMStats{Syscalls: 3, Denied: map[string]uint64{"socket": 1}},
	}, nil
}

type instance struct {
	d      *daemon.Daemon
	c      *client.Client
	socket string
	state  string
	stop   func()
}

func start(t *testing.T, cfg daemon.Config) *instance {
	t.Helper()
	dir := t.TempDir()
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(dir, "state")
	}
	if cfg.Decider == nil {
		cfg.Decider = extDecider{}
	}
	if cfg.Runner == nil {
		cfg.Runner = &countRunner{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	d, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "isolator.sock")
	l, err := daemon.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, l) }()
	c, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	in := &instance{d: d, c: c, socket: sock, state: cfg.StateDir}
	in.stop = func() {
		once.Do(func() {
			c.Close()
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(in.stop)
	return in
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// openAll collects the events of one open.
func openAll(c *client.Client, path string) ([]api.Event, error) {
	var evs []api.Event
	err := c.Open(context.Background(), api.OpenRequest{Path: path}, func(ev api.Event) error {
		evs = append(evs, ev)
		return nil
	})
	return evs, err
}

// assemble puts together the result files carried by the file events in evs, which must
// come after the result event and in order.
func assemble(evs []api.Event) (map[string]string, error) {
	files := map[string]string{}
	result := false
	for _, ev := range evs {
		switch ev.Type {
		case api.EventResult:
			result = true
		case api.EventFile:
			f := ev.File
			switch {
			case !result:
				return files, fmt.Errorf("a chunk of %s before the result event", f.Name)
			case f.Offset != int64(len(files[f.Name])):
				return files, fmt.Errorf("a chunk of %s at %d after %d bytes", f.Name, f.Offset, len(files[f.Name]))
			}
			files[f.Name] += string(f.Data)
		}
	}
	return files, nil
}

// resultFiles fetches the results of task id and puts their files together.
func resultFiles(c *client.Client, id string) (*api.Results, map[string]string, error) {
	var evs []api.Event
	var res *api.Results
	err := c.Results(context.Background(), id, func(ev api.Event) error {
		if ev.Type == api.EventResult {
			res = ev.Results
		}
		evs = append(evs, ev)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	files, err := assemble(evs)
	return res, files, err
}

func TestOpenDecisions(t *testing.T) {
	in := start(t, daemon.Config{})
	dir := t.TempDir()
	tests := []struct {
		file, content string
		action        api.Action
		wantOut       string
	}{
		{"notes.txt", "hello", api.ActionTrust, ""},
		{"setup.exe", "MZ", api.ActionDeny, ""},
		{"archive.tar", "0123456789", api.ActionIsolate, "archive.tar: 10 bytes\n"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			evs, err := openAll(in.c, writeFile(t, dir, tt.file, tt.content))
			if err != nil {
				t.Fatal(err)
			}
			if evs[0].Type != api.EventDecision || evs[0].Decision.Action != tt.action {
				t.Fatalf("first event %+v, want decision %s", evs[0], tt.action)
			}
			if tt.action != api.ActionIsolate {
				if len(evs) != 1 {
					t.Errorf("%d events for a %s decision, want 1", len(evs), tt.action)
				}
				return
			}
			var stdout, stderr string
			var result *api.Event
			for i, ev := range evs {
				switch ev.Type {
				case api.EventStdout:
					stdout += string(ev.Data)
				case api.EventStderr:
					stderr += string(ev.Data)
				case api.EventResult:
					result = &evs[i]
				}
			}
			if stdout != tt.wantOut || stderr != "warning from guest\n" {
				t.Errorf("stdout %q stderr %q", stdout, stderr)
			}
			if result == nil || result.Task.State != api.StateDone || len(result.Results.Files) != 1 ||
				result.Results.Files[0].Size != 3 || result.Results.SHA256 == "" {
				t.Fatalf("bad result event %+v", result)
			}
			// The file's contents follow the result event.
			if files, err := assemble(evs); err != nil || files["count.txt"] != "10\n" {
				t.Errorf("result files after the result event: %q, %v", files, err)
			}
			id := result.Task.ID
			// History: the task, its logs and results are there after the fact.
			task, err := in.c.Task(context.Background(), id)
			if err != nil || task.State != api.StateDone || task.Stats == nil || task.Handler != "count" {
				t.Errorf("Task(%s) = %+v, %v", id, task, err)
			}
			var logged string
			if err := in.c.Logs(context.Background(), id, false, func(ev api.Event) error {
				if ev.Type == api.EventStdout {
					logged += string(ev.Data)
				}
				return nil
			}); err != nil || logged != tt.wantOut {
				t.Errorf("Logs = %q, %v", logged, err)
			}
			res, files, err := resultFiles(in.c, id)
			if err != nil || len(res.Files) != 1 || res.Files[0].Name != "count.txt" || files["count.txt"] != "10\n" {
				t.Errorf("Results = %+v, %q, %v", res, files, err)
			}
		})
	}
	// Every decision and task outcome is in the audit log.
	audit, err := os.ReadFile(filepath.Join(in.state, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"action":"trust"`, `"action":"deny"`, `"state":"queued"`, `"state":"done"`} {
		if !strings.Contains(string(audit), want) {
			t.Errorf("audit log lacks %s:\n%s", want, audit)
		}
	}
	metrics, err := in.c.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`isolator_tasks_total{outcome="done"} 1`, `isolator_decisions_total{action="deny"} 1`,
		`isolator_denied_syscalls_total{syscall="socket"} 1`, "isolator_vm_spawn_duration_seconds_count 1"} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	in := start(t, daemon.Config{})
	dir := t.TempDir()
	for _, tt := range []struct {
		path, code string
	}{
		{"relative/path", api.CodeBadRequest},
		{filepath.Join(dir, "missing"), api.CodeNotFound},
		{dir, api.CodeBadRequest}, // a directory is not a regular file
	} {
		_, err := openAll(in.c, tt.path)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != tt.code {
			t.Errorf("open %s: %v, want code %s", tt.path, err, tt.code)
		}
	}
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestQueueBound(t *testing.T) {
	r := &countRunner{gate: make(chan struct{})}
	var log syncBuffer
	in := start(t, daemon.Config{Runner: r, MaxConcurrent: 2, Queue: 3, QueueWait: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	dir := t.TempDir()
	const n = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	var done, busy int
	admitted := make(chan string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := in.c.Open(context.Background(), api.OpenRequest{Path: writeFile(t, dir, fmt.Sprintf("f%d.bin", i), "x")}, func(ev api.Event) error {
				if ev.Type == api.EventState && ev.Task.State == api.StateQueued {
					admitted <- ev.Task.ID
				}
				if ev.Type == api.EventResult && ev.Task.State == api.StateDone {
					mu.Lock()
					done++
					mu.Unlock()
				}
				return nil
			})
			var ae *api.Error
			if errors.As(err, &ae) && ae.Code == api.CodeBusy {
				mu.Lock()
				busy++
				mu.Unlock()
			} else if err != nil {
				t.Errorf("open: %v", err)
			}
		}()
	}
	// 2 running + 3 queued are admitted; the other 3 are refused after QueueWait.
	for range 5 {
		<-admitted
	}
	time.Sleep(400 * time.Millisecond) // let the refusals happen before any slot frees
	close(r.gate)
	wg.Wait()
	if done != 5 || busy != 3 {
		t.Errorf("done=%d busy=%d, want 5 and 3", done, busy)
	}
	st, err := in.c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.PeakRunning > 2 || st.PeakQueued > 3 || r.peak.Load() > 2 {
		t.Errorf("limits exceeded: peak running %d (runner saw %d), peak queued %d", st.PeakRunning, r.peak.Load(), st.PeakQueued)
	}
	if st.ActiveVMs != 0 || st.Queued != 0 {
		t.Errorf("after the load: %d active, %d queued", st.ActiveVMs, st.Queued)
	}
	// The refusals are logged, a burst of them once.
	if lines := strings.Count(log.String(), `msg="request refused: isolatord is busy" running=2 queued=3 max_concurrent=2 queue=3 queue_wait=200ms refused_unlogged=0`); lines != 1 {
		t.Errorf("%d log lines for a burst of 3 busy refusals, want 1:\n%s", lines, log.String())
	}
}

// TestStagingBoundedByQueue opens 8 files at once on a daemon that runs 1 micro VM and
// queues 1 task: a file is copied into staging only once its request has a place in the
// queue, so exactly the 2 admitted files are ever staged (an inotify watch on the staging
// directory counts every copy made), and the other 6 are refused as busy without a copy.
func TestStagingBoundedByQueue(t *testing.T) {
	r := &countRunner{gate: make(chan struct{})}
	in := start(t, daemon.Config{Runner: r, MaxConcurrent: 1, Queue: 1, QueueWait: 100 * time.Millisecond})
	ino, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ino)
	if _, err := unix.InotifyAddWatch(ino, filepath.Join(in.state, "staging"), unix.IN_CREATE); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	const n = 8
	var wg sync.WaitGroup
	var done, busy atomic.Int32
	for i := range n {
		wg.Go(func() {
			err := in.c.Open(context.Background(), api.OpenRequest{Path: writeFile(t, dir, fmt.Sprintf("f%d.bin", i), strings.Repeat("x", 1<<16))},
				func(ev api.Event) error {
					if ev.Type == api.EventResult && ev.Task.State == api.StateDone {
						done.Add(1)
					}
					return nil
				})
			var ae *api.Error
			switch {
			case errors.As(err, &ae) && ae.Code == api.CodeBusy:
				busy.Add(1)
			case err != nil:
				t.Errorf("open: %v", err)
			}
		})
	}
	// The runner holds the first task, so nothing leaves the queue until every request
	// but the 2 admitted ones has been refused.
	waitFor(t, func() bool { return busy.Load() == n-2 })
	close(r.gate)
	wg.Wait()
	if done.Load() != 2 || busy.Load() != n-2 {
		t.Errorf("%d done and %d busy, want 2 and %d", done.Load(), busy.Load(), n-2)
	}
	buf := make([]byte, 64<<10)
	staged := 0
	for {
		m, err := unix.Read(ino, buf)
		if err != nil {
			break // EAGAIN: every event read
		}
		for off := 0; off < m; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			if ev.Mask&unix.IN_CREATE != 0 {
				staged++
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
	if staged != 2 {
		t.Errorf("%d inputs staged for %d requests with room for 2", staged, n)
	}
}

func TestKillAndEvents(t *testing.T) {
	r := &countRunner{gate: make(chan struct{})}
	in := start(t, daemon.Config{Runner: r})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	states := make(chan api.State, 16)
	subscribed := make(chan struct{})
	go in.c.Events(ctx, func(ev api.Event) error {
		switch ev.Type {
		case api.EventNotice:
			if ev.Message == "subscribed" {
				close(subscribed)
			}
		case api.EventState:
			states <- ev.Task.State
		}
		return nil
	})
	<-subscribed // the daemon registers the subscriber before it says so
	ids := make(chan string, 1)
	openDone := make(chan []api.Event)
	go func() {
		var evs []api.Event
		in.c.Open(context.Background(), api.OpenRequest{Path: writeFile(t, t.TempDir(), "slow.sh", "sleep")}, func(ev api.Event) error {
			if ev.Type == api.EventStdout {
				ids <- "" // running
			}
			evs = append(evs, ev)
			return nil
		})
		openDone <- evs
	}()
	<-ids
	tasks, err := in.c.Tasks(context.Background(), false)
	if err != nil || len(tasks) != 1 || tasks[0].State != api.StateRunning {
		t.Fatalf("Tasks = %+v, %v", tasks, err)
	}
	killed, err := in.c.Kill(context.Background(), tasks[0].ID)
	if err != nil || killed.State != api.StateKilled || !strings.Contains(killed.Reason, "killed by uid") {
		t.Fatalf("Kill = %+v, %v", killed, err)
	}
	evs := <-openDone
	if last := evs[len(evs)-1]; last.Type != api.EventResult || last.Task.State != api.StateKilled {
		t.Errorf("open stream ended with %+v", last)
	}
	var seen []api.State
	for len(seen) < 3 {
		select {
		case s := <-states:
			seen = append(seen, s)
		case <-time.After(5 * time.Second):
			t.Fatalf("events seen: %v", seen)
		}
	}
	if fmt.Sprint(seen) != "[queued running killed]" {
		t.Errorf("events %v", seen)
	}
	if _, err := in.c.Kill(context.Background(), "0000000000000000"); err == nil {
		t.Error("killing a missing task succeeded")
	}
	// A task that has ended is not killed again, and the caller is told.
	_, err = in.c.Kill(context.Background(), tasks[0].ID)
	var ae *api.Error
	if want := "task " + tasks[0].ID + " already finished (killed); nothing was killed"; !errors.As(err, &ae) ||
		ae.Code != api.CodeConflict || ae.Message != want {
		t.Errorf("killing a finished task: %v, want %s %q", err, api.CodeConflict, want)
	}
	kills := 0
	for _, rec := range auditRecords(t, in.state) {
		if rec.Event == "kill" {
			kills++
		}
	}
	if kills != 1 {
		t.Errorf("%d kill records, want 1", kills)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not reached")
}

func TestRestartMarksUnfinishedKilled(t *testing.T) {
	r := &countRunner{gate: make(chan struct{})}
	in := start(t, daemon.Config{Runner: r})
	go openAll(in.c, writeFile(t, t.TempDir(), "a.sh", "x"))
	waitFor(t, func() bool { return r.running.Load() == 1 })
	// A second daemon on the same state dir sees what a restart after a crash sees.
	crashed := time.Now()
	d2, err := daemon.New(daemon.Config{StateDir: in.state, Decider: extDecider{}, Runner: &countRunner{},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	tasks := d2.Tasks(&daemon.Peer{UID: os.Getuid()}, true)
	if len(tasks) != 1 || tasks[0].State != api.StateKilled || tasks[0].Reason != "daemon restarted" {
		t.Fatalf("after restart: %+v", tasks)
	}
	// It ended when the first daemon was last seen alive, at the latest: the time between
	// the crash and the restart is not the task's.
	if tk := tasks[0]; tk.Finished.Before(tk.Started) || tk.Finished.After(crashed) {
		t.Errorf("task killed by the restart: started %v, finished %v; want it finished by %v", tk.Started, tk.Finished, crashed)
	}
	close(r.gate)
	// Each start is audited, the second with the task the first left unfinished.
	var restarts []daemon.AuditRecord
	for _, rec := range auditRecords(t, in.state) {
		if rec.Event == "restart" {
			restarts = append(restarts, rec)
		}
	}
	if len(restarts) != 2 || len(restarts[0].Tasks) != 0 || len(tasks) != 1 ||
		fmt.Sprint(restarts[1].Tasks) != "["+tasks[0].ID+"]" || restarts[1].PolicyVersion != "test-1" ||
		!strings.Contains(restarts[1].Reason, "1 task(s) of the previous run interrupted") {
		t.Errorf("restart records %+v", restarts)
	}
}

// auditRecords reads the audit log of a state directory.
func auditRecords(t *testing.T, state string) []daemon.AuditRecord {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(state, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	var recs []daemon.AuditRecord
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var rec daemon.AuditRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		recs = append(recs, rec)
	}
	return recs
}

func TestStatusPolicyError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "50-bad.yaml"), []byte("rules:\n  - {name: x, acton: trust}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(policy.StoreConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	in := start(t, daemon.Config{Decider: daemon.NewPolicyDecider(store)})
	st, err := in.c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.PolicyVersion != "fail-closed" || !strings.Contains(st.PolicyError, `50-bad.yaml:2:15: unknown key "acton" in rule`) {
		t.Errorf("status of a fail-closed start: version %q, policy error %q", st.PolicyVersion, st.PolicyError)
	}
	if err := os.WriteFile(filepath.Join(dir, "50-bad.yaml"), []byte("default: {action: deny, untrusted_action: deny}\nrules:\n  - {name: x, action: trust}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	store.Reload()
	if st, err := in.c.Status(context.Background()); err != nil || st.PolicyError != "" || st.PolicyVersion == "fail-closed" {
		t.Errorf("status after a good reload: %+v, %v", st, err)
	}
}

func TestRefusesBrowsers(t *testing.T) {
	in := start(t, daemon.Config{})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", in.socket)
	}}}
	for _, h := range []string{"Origin", "Referer"} {
		req, _ := http.NewRequest("GET", "http://localhost/v1/status", nil)
		req.Header.Set(h, "http://evil.example")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s header: status %d, want 403", h, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest("GET", "http://localhost/v1/status", nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("plain request: status %d", resp.StatusCode)
	}
}

// TestUnknownRoutes: what no route serves is answered in JSON like every other error: 404
// for a path the API does not have, 405 with Allow for a method a path does not take.
func TestUnknownRoutes(t *testing.T) {
	in := start(t, daemon.Config{})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", in.socket)
	}}}
	for _, tt := range []struct {
		method, path string
		status       int
		code, msg    string
		allow        string
	}{
		{"GET", "/v1/nothing", 404, api.CodeNotFound, "GET /v1/nothing: no such API route", ""},
		{"GET", "/", 404, api.CodeNotFound, "GET /: no such API route", ""},
		{"POST", "/v2/open", 404, api.CodeNotFound, "POST /v2/open: no such API route", ""},
		{"GET", "/v1/tasks/0123456789abcdef/nothing", 404, api.CodeNotFound, "GET /v1/tasks/0123456789abcdef/nothing: no such API route", ""},
		{"DELETE", "/v1/status", 405, api.CodeBadRequest, "DELETE /v1/status: method not allowed (allowed: GET)", "GET"},
		{"GET", "/v1/open", 405, api.CodeBadRequest, "GET /v1/open: method not allowed (allowed: POST)", "POST"},
	} {
		req, _ := http.NewRequest(tt.method, "http://isolatord"+tt.path, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e api.Error
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tt.status || resp.Header.Get("Content-Type") != "application/json" ||
			e.Code != tt.code || e.Message != tt.msg || resp.Header.Get("Allow") != tt.allow {
			t.Errorf("%s %s: %d %s %+v (%v), Allow %q; want %d %s %q", tt.method, tt.path, resp.StatusCode,
				resp.Header.Get("Content-Type"), e, err, resp.Header.Get("Allow"), tt.status, tt.code, tt.msg)
		}
	}
	// The routes themselves still answer.
	if _, err := in.c.Status(context.Background()); err != nil {
		t.Errorf("status: %v", err)
	}
}

func TestListenStaleAndLive(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	// A stale socket file: bound, then the listener gone without unlinking.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	l2, err := daemon.Listen(sock)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l2.Close()
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o666 {
		t.Errorf("socket mode %v, %v", fi.Mode(), err)
	}
	if _, err := daemon.Listen(sock); !errors.Is(err, daemon.ErrAlreadyRunning) {
		t.Errorf("Listen over a live socket: %v, want ErrAlreadyRunning", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "plain"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := daemon.Listen(filepath.Join(dir, "plain")); err == nil {
		t.Error("Listen replaced a regular file")
	}
	if _, err := client.Dial(filepath.Join(dir, "none.sock")); !errors.Is(err, client.ErrNotRunning) {
		t.Errorf("Dial with no socket: %v", err)
	}
}

func TestRelease(t *testing.T) {
	in := start(t, daemon.Config{})
	p := writeFile(t, t.TempDir(), "reviewed.sh", "echo ok\n")
	res, err := in.c.Release(context.Background(), api.ReleaseRequest{Path: p, Reason: "reviewed"})
	if err != nil {
		if strings.Contains(err.Error(), "operation not supported") {
			t.Skipf("file system without user xattrs: %v", err)
		}
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%x", sha256.Sum256([]byte("echo ok\n"))); res.SHA256 != want {
		t.Errorf("sha256 %q, want %q", res.SHA256, want)
	}
	buf := make([]byte, 64)
	n, err := getxattr(p, daemon.XattrVerdict, buf)
	if err != nil || string(buf[:n]) != "trust" {
		t.Errorf("verdict xattr %q, %v", buf[:n], err)
	}
	audit, _ := os.ReadFile(filepath.Join(in.state, "audit.log"))
	if !strings.Contains(string(audit), `"event":"release"`) {
		t.Errorf("release not audited: %s", audit)
	}
}

func TestMaxInputBytes(t *testing.T) {
	in := start(t, daemon.Config{MaxInputBytes: 8})
	dir := t.TempDir()
	evs, err := openAll(in.c, writeFile(t, dir, "small.bin", "12345678"))
	if last := evs[len(evs)-2]; err != nil || last.Type != api.EventResult || last.Task.State != api.StateDone { // then the file
		t.Fatalf("a file at the limit: %v, %+v", err, evs)
	}
	big := writeFile(t, dir, "big.bin", "123456789")
	evs, err = openAll(in.c, big)
	var ae *api.Error
	want := "file too large to isolate: " + big + " is 9 bytes; the limit is 8 bytes (max_input_bytes, --max-input-bytes)"
	if !errors.As(err, &ae) || ae.Code != api.CodeTooLarge || ae.Message != want {
		t.Fatalf("a file over the limit: %v, want code %s and %q", err, api.CodeTooLarge, want)
	}
	if len(evs) != 1 || evs[0].Type != api.EventDecision || evs[0].Decision.Action != api.ActionIsolate {
		t.Errorf("events before the refusal: %+v", evs)
	}
	if tasks, _ := in.c.Tasks(context.Background(), false); len(tasks) != 1 {
		t.Errorf("%d tasks, want 1 (none for the refused file)", len(tasks))
	}
	if ents, _ := os.ReadDir(filepath.Join(in.state, "staging")); len(ents) != 0 {
		t.Errorf("staging not cleaned up: %v", ents)
	}
}

func TestResultsOfUnfinishedTask(t *testing.T) {
	r := &countRunner{gate: make(chan struct{})}
	in := start(t, daemon.Config{Runner: r})
	done := make(chan struct{})
	go func() {
		defer close(done)
		openAll(in.c, writeFile(t, t.TempDir(), "slow.bin", "x"))
	}()
	waitFor(t, func() bool { return r.running.Load() == 1 })
	tasks, err := in.c.Tasks(context.Background(), false)
	if err != nil || len(tasks) != 1 {
		t.Fatalf("Tasks = %+v, %v", tasks, err)
	}
	id := tasks[0].ID
	_, _, err = resultFiles(in.c, id)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeConflict || ae.Message != "task "+id+" is still running" {
		t.Errorf("results of a running task: %v, want %s %q", err, api.CodeConflict, "task "+id+" is still running")
	}
	// The status is 409 on the wire.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", in.socket)
	}}}
	resp, err := hc.Get("http://isolatord/v1/tasks/" + id + "/results")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("status %d, want 409", resp.StatusCode)
	}
	close(r.gate)
	<-done
	if res, files, err := resultFiles(in.c, id); err != nil || len(res.Files) != 1 || files["count.txt"] != "1\n" {
		t.Errorf("results after the task finished: %+v, %q, %v", res, files, err)
	}
}

// TestResultsNotSaved: when the results of a task cannot be saved (here its files/
// directory is a regular file), the result event still describes the files without their
// contents, which follow in chunks from memory, to the open that ran the task and to a
// later results request: a description carrying them could exceed api.MaxEventSize and
// lose every result.
func TestResultsNotSaved(t *testing.T) {
	r := &countRunner{gate: make(chan struct{})}
	in := start(t, daemon.Config{Runner: r})
	p := writeFile(t, t.TempDir(), "a.bin", "12345")
	ids := make(chan string, 1)
	var evs []api.Event
	opened := make(chan error, 1)
	go func() {
		opened <- in.c.Open(context.Background(), api.OpenRequest{Path: p}, func(ev api.Event) error {
			if ev.Task != nil {
				select {
				case ids <- ev.Task.ID:
				default:
				}
			}
			evs = append(evs, ev)
			return nil
		})
	}()
	id := <-ids
	if err := os.WriteFile(filepath.Join(in.state, "tasks", id, "files"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	close(r.gate)
	if err := <-opened; err != nil {
		t.Fatal(err)
	}
	check := func(step string, evs []api.Event) {
		t.Helper()
		for _, ev := range evs {
			if ev.Type != api.EventResult {
				continue
			}
			if ev.Results == nil || len(ev.Results.Files) != 1 {
				t.Fatalf("%s: result event %+v", step, ev)
			}
			if f := ev.Results.Files[0]; f.Data != nil || f.Size != 2 {
				t.Errorf("%s: the result event describes %s with %d bytes of contents and size %d; want none and 2",
					step, f.Name, len(f.Data), f.Size)
			}
		}
		files, err := assemble(evs)
		if err != nil || files["count.txt"] != "5\n" {
			t.Errorf("%s: files %q, %v", step, files, err)
		}
	}
	check("open", evs)
	evs = nil
	if err := in.c.Results(context.Background(), id, func(ev api.Event) error {
		evs = append(evs, ev)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	check("results", evs)
}
