package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/isolator-dev/isolator/pkg/api"
)

// heldDecider isolates every file, but holds each decision until release is closed; entered
// receives a value when a decision has begun.
type heldDecider struct {
	entered chan struct{}
	release chan struct{}
}

func (heldDecider) Version() string { return "held" }

func (h heldDecider) Decide(context.Context, *DecideRequest) (*Decision, error) {
	h.entered <- struct{}{}
	<-h.release
	return &Decision{
		Decision: api.Decision{Action: api.ActionIsolate, Rule: "all"},
		Handler:  &Handler{Name: "count", Image: "none", Program: "/count"},
	}, nil
}

// runsRunner counts the jobs it is given and ends each at once.
type runsRunner struct{ runs atomic.Int32 }

func (r *runsRunner) Run(context.Context, *Job) (*RunResult, error) {
	r.runs.Add(1)
	return &RunResult{}, nil
}

// TestNoTaskAfterShutdown opens a file whose decision is still being made when shutdown
// begins (the open got past its own check of the daemon's state): once the decision is
// made, the file must be refused with ErrShuttingDown, no micro VM may start, no task may
// exist and nothing may be left in staging. Before enqueue checked again, such a task ran
// after shutdown had stopped waiting for tasks, and was abandoned.
func TestNoTaskAfterShutdown(t *testing.T) {
	dec := heldDecider{entered: make(chan struct{}, 1), release: make(chan struct{})}
	r := &runsRunner{}
	d, err := New(Config{StateDir: filepath.Join(t.TempDir(), "state"), Decider: dec, Runner: r,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer d.audit.Close()
	path := filepath.Join(t.TempDir(), "late.bin")
	if err := os.WriteFile(path, []byte("late"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &Peer{UID: os.Getuid(), GID: os.Getgid()}
	var events []api.Event
	errc := make(chan error, 1)
	go func() {
		errc <- d.Open(context.Background(), p, &api.OpenRequest{Path: path}, func(ev api.Event) error {
			events = append(events, ev)
			return nil
		})
	}()
	<-dec.entered
	d.shutdown(0) // no task exists yet: returns at once
	close(dec.release)
	if err := <-errc; !errors.Is(err, ErrShuttingDown) {
		t.Errorf("open decided during shutdown: %v, want ErrShuttingDown", err)
	}
	for _, ev := range events {
		if ev.Type != api.EventDecision {
			t.Errorf("event %s after the decision; want none", ev.Type)
		}
	}
	if n := r.runs.Load(); n != 0 {
		t.Errorf("%d micro VM(s) started after shutdown", n)
	}
	if tasks := d.Tasks(p, true); len(tasks) != 0 {
		t.Errorf("tasks after shutdown: %+v", tasks)
	}
	if ents, err := os.ReadDir(filepath.Join(d.cfg.StateDir, "staging")); err != nil || len(ents) != 0 {
		t.Errorf("staging after a refused open: %v, %v", ents, err)
	}
}
