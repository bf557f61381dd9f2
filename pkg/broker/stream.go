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
	"bytes"
	"context"
	"io"
	"sync"
	"time"

	"github.com/isolator-dev/isolator/pkg/api"
)

// DefaultStreamLimit bounds the bytes of output a Stream keeps.
const DefaultStreamLimit = 4 << 20

const (
	// EventOverhead is what every kept output event costs against a Stream's limit besides
	// its data: the event's own memory and its framing on the wire and in a log file. A
	// program that writes one byte at a time cannot make a Stream keep more than the limit.
	EventOverhead = 256
	// MaxChunk bounds the data of one output event.
	MaxChunk = 64 << 10
	// FlushInterval is how long output waits in a Stream to be merged with the output
	// that follows it, before followers see it.
	FlushInterval = 20 * time.Millisecond
)

// Stream is the append-only event log of one task's output. It is safe for concurrent use.
//
// Output written through a Writer is merged: adjacent writes to the same Writer become one
// event of up to MaxChunk bytes, which is appended when it is full, when other output or an
// event comes, when the stream is read or closed, or FlushInterval after its first byte.
type Stream struct {
	limit    int
	interval time.Duration

	mu          sync.Mutex
	events      []api.Event   // guarded by mu
	size        int           // guarded by mu; bytes of Data kept, plus EventOverhead per event
	dropped     int64         // guarded by mu; bytes not kept because of limit
	closed      bool          // guarded by mu
	wake        chan struct{} // guarded by mu; closed and replaced on every append
	pending     []byte        // guarded by mu; output not appended yet
	pendingType api.EventType // guarded by mu
	pendingTime time.Time     // guarded by mu; when the first byte of pending came
	timer       *time.Timer   // guarded by mu; appends pending after interval
}

// NewStream returns an empty stream that keeps at most limit bytes of output, counting
// EventOverhead for every event (0 selects DefaultStreamLimit). Output beyond the limit is
// counted and reported by a notice, never dropped silently; once some output is dropped,
// all later output is too, so what is kept is the beginning of the output.
func NewStream(limit int) *Stream {
	if limit <= 0 {
		limit = DefaultStreamLimit
	}
	return &Stream{limit: limit, interval: FlushInterval, wake: make(chan struct{})}
}

// Append adds ev to the stream, after any output written before it. Appending to a closed
// stream does nothing.
func (s *Stream) Append(ev api.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.flushLocked()
	s.appendLocked(ev)
}

func (s *Stream) appendLocked(ev api.Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	if n := len(ev.Data); n > 0 {
		room := 0
		if s.dropped == 0 {
			room = max(s.limit-s.size-EventOverhead, 0)
		}
		if n > room {
			if s.dropped == 0 {
				if room > 0 {
					kept := ev
					kept.Data = bytes.Clone(ev.Data[:room])
					s.events = append(s.events, kept)
					s.size += room + EventOverhead
				}
				s.events = append(s.events, api.Event{Type: api.EventNotice, Time: ev.Time,
					Message: "output limit reached: further output is not kept"})
			}
			s.dropped += int64(n - room)
			s.notifyLocked()
			return
		}
		s.size += n + EventOverhead
	}
	s.events = append(s.events, ev)
	s.notifyLocked()
}

// write adds p to the pending output of type typ, appending what is pending when it is
// full or of another type.
func (s *Stream) write(typ api.EventType, p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for len(p) > 0 {
		if len(s.pending) > 0 && s.pendingType != typ {
			s.flushLocked()
		}
		if len(s.pending) == 0 {
			if s.pending == nil {
				s.pending = make([]byte, 0, MaxChunk)
			}
			s.pendingType, s.pendingTime = typ, time.Now()
		}
		n := min(len(p), MaxChunk-len(s.pending))
		s.pending = append(s.pending, p[:n]...)
		p = p[n:]
		if len(s.pending) == MaxChunk {
			s.flushLocked()
		}
	}
	if len(s.pending) > 0 && s.timer == nil {
		var t *time.Timer
		t = time.AfterFunc(s.interval, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.timer == t {
				s.flushLocked()
			}
		})
		s.timer = t
	}
}

// flushLocked appends the pending output as one event.
func (s *Stream) flushLocked() {
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if len(s.pending) == 0 {
		return
	}
	ev := api.Event{Type: s.pendingType, Time: s.pendingTime, Data: bytes.Clone(s.pending)}
	s.pending = s.pending[:0]
	s.appendLocked(ev)
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
		s.flushLocked()
		s.pending = nil
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

// Events returns a copy of the events so far, pending output included.
func (s *Stream) Events() []api.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.flushLocked()
	}
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

// Writer returns an io.Writer whose output becomes events of type typ (for example
// api.EventStdout), merged as the Stream's documentation says. Writes never fail, so a guest
// cannot stall on a slow client.
func (s *Stream) Writer(typ api.EventType) io.Writer {
	return &streamWriter{s: s, typ: typ}
}

type streamWriter struct {
	s   *Stream
	typ api.EventType
}

func (w *streamWriter) Write(p []byte) (int, error) {
	w.s.write(w.typ, p)
	return len(p), nil
}
