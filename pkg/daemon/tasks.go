package daemon

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/broker"
	"github.com/isolator-dev/isolator/pkg/policy"
)

func newTaskID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// opened is a file the daemon opened with a caller's file-system identity, with what was
// read from it with that identity. Everything the daemon decides, hashes and stages comes
// from f, never from the path again: the path may name another file a moment later.
type opened struct {
	f                *os.File
	real             string      // the path of the open file, as the kernel names it
	st               unix.Stat_t // at the open
	origin, referrer string      // recorded download origin (policy.ReadOriginFile)
}

// openAsPeer opens path for reading with p's file-system identity. Only regular files are
// accepted. The origin attributes are read from the descriptor with the same identity (the
// kernel checks read permission on user.* attributes as the calling thread).
func openAsPeer(p *Peer, path string) (*opened, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("path %q is not absolute", path)
	}
	o := &opened{}
	err := asUser(p, func() error {
		// O_NONBLOCK: a FIFO must not hang the daemon; it is refused below anyway.
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: path, Err: err}
		}
		o.f = os.NewFile(uintptr(fd), path)
		if err := unix.Fstat(fd, &o.st); err != nil {
			return &os.PathError{Op: "stat", Path: path, Err: err}
		}
		if o.st.Mode&unix.S_IFMT != unix.S_IFREG {
			return fmt.Errorf("%w: %s is not a regular file: only regular files can be opened in a micro VM", errBadRequest, path)
		}
		o.origin, o.referrer, _ = policy.ReadOriginFile(o.f) // none recorded, or unreadable: no origin
		return nil
	})
	if err != nil {
		if o.f != nil {
			o.f.Close()
		}
		return nil, err
	}
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", o.f.Fd()))
	if err != nil || !filepath.IsAbs(real) {
		real = filepath.Clean(path)
	}
	o.real = real
	return o, nil
}

// unchanged checks that the open file still has the content that was decided on: the same
// size and modification time as at the open (the change time is not compared: a rename,
// chmod or xattr changes it, not the content), and, when the decision hashed the content,
// that hash is the decided hash.
func (o *opened) unchanged(decided, hash string) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(o.f.Fd()), &st); err != nil {
		return fmt.Errorf("stat %s: %w", o.real, err)
	}
	if st.Size != o.st.Size || st.Mtim != o.st.Mtim ||
		(decided != "" && hash != "" && decided != hash) {
		return fmt.Errorf("%w: %s changed while it was being decided; nothing was run, open it again", ErrChanged, o.real)
	}
	return nil
}

// inputName is the base name the guest sees: the file's own name when it is plain.
func inputName(path string) string {
	name := filepath.Base(path)
	if _, err := broker.SanitizeName(name); err != nil || strings.HasPrefix(name, ".") || len(name) > 200 {
		return "input"
	}
	return name
}

// decide opens and decides on req for p. The returned file is open when err is nil.
func (d *Daemon) decide(ctx context.Context, p *Peer, req *api.OpenRequest) (*opened, *Decision, error) {
	start := time.Now()
	o, err := openAsPeer(p, req.Path)
	if err != nil {
		return nil, nil, err
	}
	dr := &DecideRequest{Path: o.real, File: o.f, Origin: o.origin, Referrer: o.referrer,
		Release: d.releases.lookup(&o.st), User: p.User, UID: p.UID, Groups: groupNames(p.Groups),
		Home: p.Home, Opener: req.Opener}
	dec, err := d.cfg.Decider.Decide(ctx, dr)
	if err != nil {
		o.f.Close()
		return nil, nil, fmt.Errorf("policy: %w", err)
	}
	d.metrics.decisionTime.Observe(time.Since(start).Seconds())
	if dec.Action == api.ActionAsk {
		// isoctl open is the user's explicit request: an "ask" verdict runs the handler
		// when the rule names one and is refused otherwise.
		if dec.Handler != nil {
			dec.Action = api.ActionIsolate
			dec.Explanation += " (ask: isolated on the user's explicit request)"
		} else {
			dec.Action = api.ActionDeny
			dec.Explanation += " (ask: no handler to isolate with)"
		}
	}
	if dec.Action == api.ActionIsolate && dec.Handler == nil {
		dec.Action = api.ActionDeny
		dec.Explanation += " (isolate rule without a handler: denied)"
	}
	if dec.Handler != nil {
		dec.Decision.Handler = dec.Handler.Name
	}
	d.metrics.decisions.WithLabelValues(string(dec.Action)).Inc()
	return o, dec, nil
}

// Open decides on req for p and, when the file is to be isolated, queues a task and streams
// its events to emit until it ends or ctx is done (the task goes on if the client leaves).
func (d *Daemon) Open(ctx context.Context, p *Peer, req *api.OpenRequest, emit func(api.Event) error) error {
	if err := p.mayWrite(); err != nil {
		return err
	}
	select {
	case <-d.stopping:
		return ErrShuttingDown
	default:
	}
	start := time.Now()
	o, dec, err := d.decide(ctx, p, req)
	if err != nil {
		return err
	}
	defer o.f.Close()
	real := o.real

	d.log.Info("decision", "uid", p.UID, "path", real, "action", dec.Action, "rule", dec.Rule)
	// The decision goes out at once; staging and waiting for queue space come after.
	if err := emit(api.Event{Type: api.EventDecision, Path: real, Decision: &dec.Decision}); err != nil {
		return err
	}
	// The bytes staged for the guest and the hash in the audit record come from the
	// descriptor that was decided on, and must be the version that was decided on.
	var sum, staged, reason string
	id := newTaskID()
	if dec.Action == api.ActionIsolate {
		// A place in the queue before the copy: what is staged is bounded by the queue.
		// A refused isolation's record has the hash only if the policy computed it.
		sum = dec.SHA256
		if err = d.checkSize(o.f, real); err == nil {
			err = d.admit(ctx)
		}
		if err == nil {
			if staged, sum, err = d.stage(id, o.f, real); err != nil {
				d.unadmit()
			}
		}
	} else if sum = dec.SHA256; sum == "" {
		h := sha256.New()
		if _, herr := io.Copy(h, io.NewSectionReader(o.f, 0, d.cfg.MaxInputBytes)); herr == nil {
			sum = hex.EncodeToString(h.Sum(nil))
		}
	}
	if err == nil {
		if err = o.unchanged(dec.SHA256, sum); err != nil {
			sum, reason = "", "refused: the file changed while it was being decided"
			if staged != "" {
				os.RemoveAll(filepath.Dir(staged))
				d.unadmit()
			}
		}
	}
	d.writeAudit(&AuditRecord{Event: "decision", UID: p.UID, User: p.User, Path: real, SHA256: sum,
		Action: string(dec.Action), Rule: dec.Rule, RuleFile: dec.File, RuleLine: dec.Line,
		Explanation: dec.Explanation, PolicyVersion: dec.PolicyVersion, Handler: dec.Decision.Handler,
		Reason: reason})
	if err != nil || dec.Action != api.ActionIsolate {
		return err
	}
	tk, err := d.enqueue(p, id, real, sum, staged, dec, start)
	if err != nil {
		os.RemoveAll(filepath.Dir(staged))
		return err
	}
	d.mu.Lock()
	stream := tk.stream
	d.mu.Unlock()
	// The stream starts with the task's queued state and ends with its result, which the
	// contents of the result files follow.
	return stream.Follow(ctx, func(ev api.Event) error {
		if err := emit(ev); err != nil {
			return err
		}
		if ev.Type == api.EventResult && ev.Results != nil {
			return d.sendFiles(d.contents(tk, ev.Results), emit)
		}
		return nil
	})
}

// contents returns the results whose files' contents are streamed after the result event
// that described them as desc: the task's results kept in memory when some contents could
// not be saved, else desc, whose files are read from the store.
func (d *Daemon) contents(tk *task, desc *api.Results) *api.Results {
	d.mu.Lock()
	defer d.mu.Unlock()
	if tk.unsaved != nil {
		return tk.unsaved
	}
	return desc
}

// sendFiles emits the contents of the files of r as EventFile events, in chunks of at most
// api.FileChunk bytes: a file's Data when it has them in memory (it could not be saved),
// else the file in the store, of which only one chunk is in memory at a time.
func (d *Daemon) sendFiles(r *api.Results, emit func(api.Event) error) error {
	for i, f := range r.Files {
		if err := d.sendFile(r.Task, i, f, emit); err != nil {
			return err
		}
	}
	return nil
}

func (d *Daemon) sendFile(task string, i int, f api.File, emit func(api.Event) error) error {
	var src io.Reader = bytes.NewReader(f.Data)
	if f.Data == nil {
		file, err := d.store.openResult(task, i)
		if err != nil {
			return emit(api.Event{Type: api.EventNotice, Message: fmt.Sprintf("result file %s is not available: %v", f.Name, err)})
		}
		defer file.Close()
		src = file
	}
	for off := int64(0); ; {
		data := make([]byte, min(max(f.Size-off, 0), api.FileChunk))
		n, err := io.ReadFull(src, data)
		if n > 0 || off == 0 {
			chunk := &api.File{Name: f.Name, Mode: f.Mode, Size: f.Size, Offset: off, Data: data[:n]}
			if err := emit(api.Event{Type: api.EventFile, File: chunk}); err != nil {
				return err
			}
			off += int64(n)
		}
		switch {
		case off >= f.Size || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return nil
		case err != nil:
			return fmt.Errorf("result file %s: %w", f.Name, err)
		}
	}
}

// stage copies the file into a private staging directory, so the guest sees exactly the
// bytes that were decided on and hashed, whatever happens to the original afterwards. The
// caller has checked the size (checkSize, before taking a place in the queue); a file that
// grows past MaxInputBytes while it is copied is refused with ErrTooLarge.
func (d *Daemon) stage(id string, f *os.File, real string) (string, string, error) {
	limit := d.cfg.MaxInputBytes
	dir := filepath.Join(d.cfg.StateDir, "staging", id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("stage input: %w", err)
	}
	path := filepath.Join(dir, inputName(real))
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		os.RemoveAll(dir)
		return "", "", fmt.Errorf("stage input: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.NewSectionReader(f, 0, limit+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", "", fmt.Errorf("stage input: %w", err)
	}
	if n > limit {
		os.RemoveAll(dir)
		return "", "", tooLarge(real, -1, limit)
	}
	return path, hex.EncodeToString(h.Sum(nil)), nil
}

// checkSize refuses a file over MaxInputBytes with ErrTooLarge.
func (d *Daemon) checkSize(f *os.File, real string) error {
	if fi, err := f.Stat(); err == nil && fi.Size() > d.cfg.MaxInputBytes {
		return tooLarge(real, fi.Size(), d.cfg.MaxInputBytes)
	}
	return nil
}

// tooLarge is the error for a file over the isolation limit; n < 0 means the file grew
// past the limit while it was copied.
func tooLarge(path string, n, limit int64) error {
	if n < 0 {
		return fmt.Errorf("%w: %s grew past the limit of %d bytes while it was copied (max_input_bytes, --max-input-bytes)",
			ErrTooLarge, path, limit)
	}
	return fmt.Errorf("%w: %s is %d bytes; the limit is %d bytes (max_input_bytes, --max-input-bytes)",
		ErrTooLarge, path, n, limit)
}

// busyLogInterval is how often, at most, a busy refusal is logged; refused_unlogged in the
// next line counts those in between (isolator_open_refused_total counts them all).
const busyLogInterval = 10 * time.Second

// admit takes a place in the queue for a task about to be staged, waiting up to QueueWait
// for one when the queue is full (ErrBusy then). The place is given back by unadmit when no
// task is queued after all, or by the task when it gets a micro VM slot.
func (d *Daemon) admit(ctx context.Context) error {
	select {
	case d.queueSlots <- struct{}{}:
	default:
		timer := time.NewTimer(d.cfg.QueueWait)
		defer timer.Stop()
		select {
		case d.queueSlots <- struct{}{}:
		case <-timer.C:
			d.metrics.refused.Inc()
			d.mu.Lock()
			running, queued := d.running, d.queued
			logIt, quiet := d.busyLogged.IsZero() || time.Since(d.busyLogged) >= busyLogInterval, d.busyQuiet
			if logIt {
				d.busyLogged, d.busyQuiet = time.Now(), 0
			} else {
				d.busyQuiet++
			}
			d.mu.Unlock()
			if logIt {
				d.log.Warn("request refused: isolatord is busy", "running", running, "queued", queued,
					"max_concurrent", d.cfg.MaxConcurrent, "queue", d.cfg.Queue, "queue_wait", d.cfg.QueueWait,
					"refused_unlogged", quiet)
			}
			return fmt.Errorf("%w: %d micro VMs running and %d tasks queued (limits %d and %d) for %v; try again later",
				ErrBusy, running, queued, d.cfg.MaxConcurrent, d.cfg.Queue, d.cfg.QueueWait)
		case <-ctx.Done():
			return ctx.Err()
		case <-d.stopping:
			return ErrShuttingDown
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		<-d.queueSlots
		return ErrShuttingDown
	}
	d.queued++
	d.peakQueued = max(d.peakQueued, d.queued)
	d.metrics.queued.Set(float64(d.queued))
	return nil
}

// unadmit gives back a place taken by admit for a task that was not queued.
func (d *Daemon) unadmit() {
	d.mu.Lock()
	d.queued--
	d.metrics.queued.Set(float64(d.queued))
	d.mu.Unlock()
	<-d.queueSlots
}

// enqueue queues task id in the place admit took for it and starts its goroutine. It fails
// only when shutdown has begun since, and then gives the place back.
func (d *Daemon) enqueue(p *Peer, id, real, sum, staged string, dec *Decision, start time.Time) (*task, error) {
	h := dec.Handler
	tctx, cancel := context.WithCancelCause(context.Background())
	tk := &task{
		created: start,
		cancel:  cancel,
		stream:  broker.NewStream(0),
		done:    make(chan struct{}),
		t: api.Task{ID: id, UID: p.UID, User: p.User, File: real, SHA256: sum, Decision: dec.Decision,
			Handler: h.Name, Image: h.Image, State: api.StateQueued, Created: start},
	}
	d.mu.Lock()
	if d.closed {
		// Shutdown began while this request was staged: it has already cancelled the
		// queued tasks and may have stopped waiting for task goroutines.
		d.mu.Unlock()
		cancel(nil)
		d.unadmit()
		return nil, ErrShuttingDown
	}
	d.tasks[id] = tk
	d.wg.Add(1)
	snap := tk.t
	d.mu.Unlock()
	if err := d.store.saveTask(&snap); err != nil {
		d.log.Error("task history", "err", err)
	}
	d.auditTask(&snap)
	d.changed(tk)
	job := &Job{Task: id, Handler: *h, Input: staged, InputName: filepath.Base(staged),
		Stdout: tk.stream.Writer(api.EventStdout), Stderr: tk.stream.Writer(api.EventStderr)}
	go d.run(tctx, tk, job)
	return tk, nil
}

// changed announces tk's current state on its stream and to event subscribers.
func (d *Daemon) changed(tk *task) {
	d.mu.Lock()
	snap := tk.t
	stream := tk.stream
	ev := api.Event{Type: api.EventState, Time: time.Now(), Task: &snap}
	d.publishLocked(ev, snap.UID)
	d.mu.Unlock()
	if stream != nil {
		stream.Append(ev)
	}
}

func (d *Daemon) run(ctx context.Context, tk *task, job *Job) {
	defer d.wg.Done()
	defer tk.cancel(nil)

	var res *RunResult
	var runErr error
	gotSlot := false
	select {
	case d.runSlots <- struct{}{}:
		gotSlot = true
	case <-ctx.Done():
	}
	d.mu.Lock()
	d.queued--
	d.metrics.queued.Set(float64(d.queued))
	d.mu.Unlock()
	<-d.queueSlots
	if gotSlot && ctx.Err() != nil {
		<-d.runSlots
		gotSlot = false
	}

	if gotSlot {
		slot := time.Now()
		d.mu.Lock()
		d.running++
		d.peakRunning = max(d.peakRunning, d.running)
		d.metrics.activeVMs.Set(float64(d.running))
		tk.t.State = api.StateRunning
		tk.t.Started = slot
		snap := tk.t
		d.mu.Unlock()
		d.store.saveTask(&snap)
		d.changed(tk)
		job.Started = func() { d.metrics.spawnTime.Observe(time.Since(slot).Seconds()) }
		res, runErr = d.cfg.Runner.Run(ctx, job)
		d.mu.Lock()
		d.running--
		d.metrics.activeVMs.Set(float64(d.running))
		d.mu.Unlock()
		<-d.runSlots
	}
	// The staged input is gone before anyone is told the task ended.
	os.RemoveAll(filepath.Dir(job.Input))

	d.mu.Lock()
	t := &tk.t
	t.Finished = time.Now()
	switch {
	case runErr != nil && ctx.Err() == nil:
		t.State = api.StateFailed
		t.Reason = runErr.Error()
	case ctx.Err() != nil || (res != nil && res.Killed):
		t.State = api.StateKilled
		t.Reason = "killed"
		if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
			t.Reason = c.Error()
		} else if res != nil && res.Reason != "" {
			t.Reason = res.Reason
		}
	default:
		t.State = api.StateDone
	}
	var results *api.Results
	if res != nil {
		t.ExitCode, t.Signal, t.TimedOut = res.ExitCode, res.Signal, res.TimedOut
		if res.Reason != "" && t.Reason == "" {
			t.Reason = res.Reason
		}
		stats := res.Stats
		t.Stats = &stats
		if n := len(res.Rejected); n > api.MaxRejected {
			res.Rejected = append(res.Rejected[:api.MaxRejected:api.MaxRejected],
				api.Rejected{Name: "...", Reason: fmt.Sprintf("%d more outputs were not returned", n-api.MaxRejected)})
		}
		t.Rejected = res.Rejected
		for _, o := range res.Outputs {
			t.Outputs = append(t.Outputs, o.Name)
		}
		results = &api.Results{Task: t.ID, SHA256: t.SHA256, Handler: t.Handler, Files: res.Outputs, Rejected: res.Rejected,
			MaxFiles: cmp.Or(res.MaxOutputFiles, job.Handler.MaxOutputFiles), MaxBytes: cmp.Or(res.MaxOutputBytes, job.Handler.MaxOutputBytes)}
		for name, n := range res.Stats.Denied {
			d.metrics.deniedSyscalls.WithLabelValues(name).Add(float64(n))
		}
	}
	snap := *t
	d.mu.Unlock()

	var desc *api.Results // what the result event says of the files, without their contents
	if results != nil {
		// From here the files' contents are on disk only, read back in chunks; those that
		// could not be saved stay in memory, with the task.
		if err := d.store.saveResults(results); err != nil {
			d.log.Error("results not saved", "task", snap.ID, "err", err)
		}
		desc = describe(results)
		if slices.ContainsFunc(results.Files, func(f api.File) bool { return f.Data != nil }) {
			d.mu.Lock()
			tk.unsaved = results
			d.mu.Unlock()
		}
		res.Outputs = nil
	}
	if err := d.store.saveTask(&snap); err != nil {
		d.log.Error("task history", "err", err)
	}
	d.auditTask(&snap)
	d.metrics.tasks.WithLabelValues(string(snap.State)).Inc()
	d.metrics.openToResult.Observe(time.Since(snap.Created).Seconds())
	d.log.Info("task finished", "task", snap.ID, "uid", snap.UID, "state", snap.State, "exit", snap.ExitCode, "reason", snap.Reason)

	d.changed(tk)
	tk.stream.Append(api.Event{Type: api.EventResult, Task: &snap, Results: desc})
	var logs []api.Event
	for _, ev := range tk.stream.Events() {
		if ev.Type == api.EventStdout || ev.Type == api.EventStderr || ev.Type == api.EventNotice {
			logs = append(logs, ev)
		}
	}
	if err := d.store.saveLogs(snap.ID, logs); err != nil {
		d.log.Error("logs not saved", "task", snap.ID, "err", err)
	}
	tk.stream.Close()
	d.mu.Lock()
	tk.stream = nil
	tk.cancel = nil
	d.mu.Unlock()
	close(tk.done)
}

// lookup returns the task id if p may see it.
func (d *Daemon) lookup(p *Peer, id string) (*task, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	tk, ok := d.tasks[id]
	if !ok || (!p.IsAdmin() && tk.t.UID != p.UID) {
		// A task of another user is reported exactly like a missing one.
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return tk, nil
}

// Task returns a copy of task id if p may see it.
func (d *Daemon) Task(p *Peer, id string) (api.Task, error) {
	tk, err := d.lookup(p, id)
	if err != nil {
		return api.Task{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return tk.t, nil
}

// Tasks lists the tasks p may see, oldest first. all is honoured for administrators only:
// other users always see their own tasks.
func (d *Daemon) Tasks(p *Peer, all bool) []api.Task {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []api.Task
	for _, tk := range d.tasks {
		if tk.t.UID == p.UID || (p.IsAdmin() && all) {
			out = append(out, tk.t)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Kill stops task id on behalf of p (its owner or an administrator) and waits until it has
// ended. A task that had already ended is an error wrapping ErrFinished.
func (d *Daemon) Kill(ctx context.Context, p *Peer, id string) (api.Task, error) {
	if err := p.mayWrite(); err != nil {
		return api.Task{}, err
	}
	tk, err := d.lookup(p, id)
	if err != nil {
		return api.Task{}, err
	}
	d.mu.Lock()
	cancel, done, state := tk.cancel, tk.done, tk.t.State
	d.mu.Unlock()
	if cancel == nil || state.Final() {
		return api.Task{}, &finishedError{id: id, state: state}
	}
	cancel(fmt.Errorf("killed by uid %d", p.UID))
	d.writeAudit(&AuditRecord{Event: "kill", UID: p.UID, User: p.User, Task: id})
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return api.Task{}, ctx.Err()
		}
	}
	return d.Task(p, id)
}

// Logs calls fn with the output events of task id, following a running task to its end
// when follow is set.
func (d *Daemon) Logs(ctx context.Context, p *Peer, id string, follow bool, fn func(api.Event) error) error {
	tk, err := d.lookup(p, id)
	if err != nil {
		return err
	}
	d.mu.Lock()
	stream := tk.stream
	d.mu.Unlock()
	keep := func(ev api.Event) error {
		if ev.Type == api.EventStdout || ev.Type == api.EventStderr || ev.Type == api.EventNotice {
			return fn(ev)
		}
		return nil
	}
	if stream != nil {
		if follow {
			return stream.Follow(ctx, keep)
		}
		for _, ev := range stream.Events() {
			if err := keep(ev); err != nil {
				return err
			}
		}
		return nil
	}
	evs, err := d.store.loadLogs(id)
	if err != nil {
		return err
	}
	for _, ev := range evs {
		if err := keep(ev); err != nil {
			return err
		}
	}
	return nil
}

// Results returns the output files of task id; for a task that has not finished, an
// error wrapping ErrNotFinished. Files whose contents are not in the store (they could not
// be saved, or an older daemon kept them in results.json) carry them in Data: describe
// the results without them before sending the description.
func (d *Daemon) Results(p *Peer, id string) (*api.Results, error) {
	tk, err := d.lookup(p, id)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	state, unsaved := tk.t.State, tk.unsaved
	d.mu.Unlock()
	if !state.Final() {
		return nil, &notFinishedError{id: id, state: state}
	}
	if unsaved != nil {
		return unsaved, nil
	}
	r, err := d.store.loadResults(id)
	if errors.Is(err, os.ErrNotExist) {
		return &api.Results{Task: id}, nil
	}
	return r, err
}

// shutdown cancels queued tasks, lets running ones finish until the deadline, then kills
// them and waits for them to end.
func (d *Daemon) shutdown(deadline time.Duration) {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		close(d.stopping)
	}
	for _, tk := range d.tasks {
		if tk.cancel != nil && tk.t.State == api.StateQueued {
			tk.cancel(errors.New("daemon shutting down"))
		}
	}
	d.mu.Unlock()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	select {
	case <-done:
		return
	case <-timer.C:
	}
	d.mu.Lock()
	n := 0
	for _, tk := range d.tasks {
		if tk.cancel != nil {
			tk.cancel(fmt.Errorf("daemon shutting down: not finished within %v", deadline))
			n++
		}
	}
	d.mu.Unlock()
	d.log.Warn("shutdown deadline reached: killing running tasks", "tasks", n)
	<-done
}
