package cli

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/isolator-dev/isolator/pkg/api"
)

// serveEvents serves the given events as the NDJSON stream of api.PathEvents on a unix
// socket and returns the socket path.
func serveEvents(t *testing.T, events []api.Event) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "isolator.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathEvents, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", api.ContentTypeNDJSON)
		enc := json.NewEncoder(w)
		for _, ev := range events {
			if err := enc.Encode(ev); err != nil {
				return
			}
		}
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestWatch(t *testing.T) {
	when := time.Date(2026, 12, 3, 10, 0, 0, 0, time.Local)
	events := []api.Event{
		{Type: api.EventDecision, Time: when, Path: "/home/a/Downloads/x.pdf",
			Decision: &api.Decision{Action: api.ActionIsolate, Rule: "downloads", Explanation: "downloaded from the web"},
			Task:     &api.Task{ID: "t1"}},
		{Type: api.EventState, Time: when, Task: &api.Task{ID: "t1", State: api.StateRunning, File: "/home/a/Downloads/x.pdf"}},
		{Type: api.EventNotice, Time: when, Path: "/home/a/Downloads/y.sh", Message: "open refused"},
		{Type: api.EventDownload, Time: when, Path: "/home/a/Downloads/z.sh", Message: "z.sh: isolate (a script)",
			Decision: &api.Decision{Action: api.ActionIsolate, Rule: "scripts", Explanation: "a script"}},
		{Type: api.EventState, Time: when, Task: &api.Task{ID: "t2", State: api.StateDone, File: "/home/a/Downloads/z.sh",
			Outputs: []string{"report.txt"}}},
		{Type: api.EventDenied, Time: when, Path: "/home/a/Downloads/z.sh", Task: &api.Task{ID: "t2"},
			Message:  "z.sh is untrusted: opening it in a micro VM (a script); task t2 (isoctl results t2)",
			Decision: &api.Decision{Action: api.ActionIsolate, Rule: "scripts", Explanation: "a script"}},
	}
	sock := serveEvents(t, events)
	var out, errb bytes.Buffer
	if code := run([]string{"--socket", sock, "watch"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	want := []string{
		"10:00:00 decision /home/a/Downloads/x.pdf: isolate (rule downloads): downloaded from the web, task t1",
		"10:00:00 state    task t1 running: /home/a/Downloads/x.pdf",
		"10:00:00 notice   /home/a/Downloads/y.sh: open refused",
		"10:00:00 download /home/a/Downloads/z.sh: isolate (rule scripts): z.sh: isolate (a script)",
		"10:00:00 state    task t2 done: /home/a/Downloads/z.sh; 1 result file(s): isoctl results t2",
		"10:00:00 open-denied /home/a/Downloads/z.sh: isolate (rule scripts): z.sh is untrusted: opening it in a micro VM (a script); task t2 (isoctl results t2)",
	}
	if got := strings.Split(strings.TrimSpace(out.String()), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("output:\n%s\nwant:\n%s", out.String(), strings.Join(want, "\n"))
	}

	out.Reset()
	if code := run([]string{"--socket", sock, "watch", "--json"}, &out, &errb); code != 0 {
		t.Fatalf("--json exit %d: %s", code, errb.String())
	}
	dec := json.NewDecoder(&out)
	for i := range events {
		var ev api.Event
		if err := dec.Decode(&ev); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if ev.Type != events[i].Type || ev.Path != events[i].Path {
			t.Errorf("event %d = %+v, want %+v", i, ev, events[i])
		}
	}
}

func TestWatchNoDaemon(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "watch"}, &out, &errb)
	if code == 0 || !strings.Contains(errb.String(), "no socket") {
		t.Errorf("exit %d, stderr %q; want a not-running error", code, errb.String())
	}
}

func TestWatchSave(t *testing.T) {
	isolate := &api.Decision{Action: api.ActionIsolate, Rule: "scripts"}
	events := []api.Event{
		{Type: api.EventDownload, Path: "/d/a.sh", Decision: isolate},
		{Type: api.EventState, Task: &api.Task{ID: "t1", File: "/d/a.sh", State: api.StateQueued}},
		{Type: api.EventState, Task: &api.Task{ID: "t9", File: "/d/other.sh", State: api.StateDone, Outputs: []string{"x"}}},
		{Type: api.EventState, Task: &api.Task{ID: "t1", File: "/d/a.sh", State: api.StateDone, Outputs: []string{"out.txt"}}},
		{Type: api.EventDenied, Path: "/d/b.sh", Decision: isolate, Task: &api.Task{ID: "t2", File: "/d/b.sh", State: api.StateDone}},
		{Type: api.EventDenied, Path: "/d/b.sh", Decision: isolate, Task: &api.Task{ID: "t2", File: "/d/b.sh", State: api.StateDone}},
		{Type: api.EventDenied, Path: "/d/a.sh", Decision: isolate, Task: &api.Task{ID: "t1", File: "/d/a.sh", State: api.StateDone}},
	}
	sock := filepath.Join(t.TempDir(), "isolator.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	fetched := map[string]int{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathEvents, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", api.ContentTypeNDJSON)
		enc := json.NewEncoder(w)
		for _, ev := range events {
			enc.Encode(ev)
			http.NewResponseController(w).Flush()
		}
	})
	mux.HandleFunc("GET "+api.PathResults, func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		mu.Lock()
		fetched[id]++
		mu.Unlock()
		writeResults(w, &api.Results{Task: id, Handler: "script",
			Files: []api.File{{Name: "out.txt", Mode: 0o644, Data: []byte("from " + id)}}})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	dir := t.TempDir()
	var out, errb bytes.Buffer
	if code := run([]string{"--socket", sock, "watch", "--save", "--results-dir", dir}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, id := range []string{"t1", "t2"} {
		got, err := os.ReadFile(filepath.Join(dir, id, "out.txt"))
		if err != nil || string(got) != "from "+id {
			t.Errorf("%s: %q, %v", id, got, err)
		}
		if !strings.Contains(out.String(), "saved    1 result file(s) of task "+id) {
			t.Errorf("output does not report %s saved:\n%s", id, out.String())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if fetched["t1"] != 1 || fetched["t2"] != 1 || fetched["t9"] != 0 {
		t.Errorf("results fetched %v; want t1 and t2 once, t9 (not intercepted) never", fetched)
	}
	if errb.Len() != 0 {
		t.Errorf("stderr: %s", errb.String())
	}
}
