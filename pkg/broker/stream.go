// Package broker carries a task's results from the micro VM back to the user who asked for
// them.
//
// On the daemon's side a Stream records what a running task prints (stdout and stderr
// chunks, notices) and lets any number of readers follow it live from the start, so a
// client that connects late still sees everything. On the user's side Deliver writes the
// task's output files into a per-task directory with the user's own credentials, refusing
// symlinks, overwrites, unsafe names and anything over its bounds, and tags every file with
// user.isolator.* extended attributes so the results stay traceable to the task, the
// source file and the handler. The daemon never writes into a user's home.
package broker

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/isolator-dev/isolator/pkg/api"
)

// DefaultStreamLimit bounds the bytes of output a Stream keeps.
const DefaultStreamLimit = 4 << 20

// Stream is the append-only event log of one task's output. It is safe for concurrent use.
type Stream struct {
	limit int

	mu      sync.Mutex
	events  []api.Event   // guarded by mu
	size    int           // guarded by mu; bytes of Data kept
	dropped int64         // guarded by mu; bytes not kept because of limit
	closed  bool          // guarded by mu
	wake    chan struct{} // guarded by mu; closed and replaced on every append
}

// NewStream returns an empty stream that keeps at most limit bytes of output (0 selects
// DefaultStreamLimit). Output beyond the limit is counted and reported by a notice, never
// dropped silently.
func NewStream(limit int) *Stream {
	if limit <= 0 {
		limit = DefaultStreamLimit
	}
	return &Stream{limit: limit, wake: make(chan struct{})}
}

// Append adds ev to the stream. Appending to a closed stream does nothing.
func (s *Stream) Append(ev api.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	if n := len(ev.Data); n > 0 {
		if s.size+n > s.limit {
			if s.dropped == 0 {
				s.events = append(s.events, api.Event{Type: api.EventNotice, Time: ev.Time,
					Message: "output limit reached: further output is not kept"})
			}
			s.dropped += int64(n)
			s.notifyLocked()
			return
		}
		s.size += n
	}
	s.events = append(s.events, ev)
	s.notifyLocked()
}

func (s *Stream) notifyLocked() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// Close ends the stream: followers return after the last event.
func (s *Stream) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.notifyLocked()
	}
}

// Dropped returns how many bytes of output were not kept.
func (s *Stream) Dropped() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// Events returns a copy of the events so far.
func (s *Stream) Events() []api.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]api.Event(nil), s.events...)
}

// Follow calls fn for every event from the first, waiting for new ones until the stream is
// closed, ctx is done, or fn returns an error. It returns ctx's error or fn's error, or nil
// when the stream was closed and fully read.
func (s *Stream) Follow(ctx context.Context, fn func(api.Event) error) error {
	next := 0
	for {
		s.mu.Lock()
		batch := s.events[next:len(s.events):len(s.events)]
		closed := s.closed
		wake := s.wake
		s.mu.Unlock()
		for _, ev := range batch {
			if err := fn(ev); err != nil {
				return err
			}
		}
		next += len(batch)
		if len(batch) > 0 {
			continue
		}
		if closed {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

// Writer returns an io.Writer that appends each write as an event of type typ (for example
// api.EventStdout). Writes never fail, so a guest cannot stall on a slow client.
func (s *Stream) Writer(typ api.EventType) io.Writer {
	return &streamWriter{s: s, typ: typ}
}

type streamWriter struct {
	s   *Stream
	typ api.EventType
}

func (w *streamWriter) Write(p []byte) (int, error) {
	if len(p) > 0 {
		w.s.Append(api.Event{Type: w.typ, Data: append([]byte(nil), p...)})
	}
	return len(p), nil
}
