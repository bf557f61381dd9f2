package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/api"
)

// ErrAlreadyRunning reports that another daemon answers on the socket.
var ErrAlreadyRunning = errors.New("another isolatord is already running")

// perm is what a route lets a caller do, the label of each route in the table:
//   - permRead: GET, no change; the caller sees its own tasks, files and counts, an
//     administrator (root or a member of Config.AdminGroup) everyone's;
//   - permWrite: POST; the caller acts on its own tasks and files only, an administrator on
//     everyone's;
//   - permAdmin: administrators only, anyone else gets 403.
//
// The label travels with the request's Peer: the methods behind a read route refuse to
// change anything (Peer.mayWrite), and every read of a task checks its owner.
type perm int

const (
	permNone perm = iota // not an API request: the Go API (the Interceptor, tests)
	permRead
	permWrite
	permAdmin
)

func (p perm) String() string {
	switch p {
	case permRead:
		return "read"
	case permWrite:
		return "write"
	case permAdmin:
		return "admin"
	}
	return "none"
}

type route struct {
	pattern string // net/http ServeMux pattern
	perm    perm
	handler func(w http.ResponseWriter, r *http.Request, p *Peer)
}

func (d *Daemon) routes() []route {
	return []route{
		{"POST " + api.PathOpen, permWrite, d.handleOpen},
		{"GET " + api.PathTasks, permRead, d.handleTasks},
		{"GET " + api.PathTask, permRead, d.handleTask},
		{"GET " + api.PathLogs, permRead, d.handleLogs},
		{"GET " + api.PathResults, permRead, d.handleResults},
		{"POST " + api.PathKill, permWrite, d.handleKill},
		{"GET " + api.PathStatus, permRead, d.handleStatus},
		{"POST " + api.PathRelease, permWrite, d.handleRelease},
		{"GET " + api.PathEvents, permRead, d.handleEvents},
		{"GET " + api.PathMetrics, permAdmin, d.handleMetrics},
	}
}

// Handler returns the API's http.Handler. Requests must come through a listener whose
// connections carry SO_PEERCRED (see Serve); others are refused.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range d.routes() {
		mux.HandleFunc(rt.pattern, func(w http.ResponseWriter, r *http.Request) {
			// Browsers send Origin or Referer; local tools do not. Refusing both keeps web
			// pages (CSRF, DNS rebinding through a proxy) away from the API.
			if r.Header.Get("Origin") != "" || r.Header.Get("Referer") != "" {
				writeError(w, http.StatusForbidden, api.CodeForbidden, "requests with Origin or Referer headers are refused")
				return
			}
			conn, ok := peerFrom(r.Context())
			if !ok {
				writeError(w, http.StatusForbidden, api.CodeForbidden, "caller credentials unavailable")
				return
			}
			p := *conn // this request's view: the route's label and the caller's rank
			p.route = rt.perm
			p.Admin = d.adminGID >= 0 && p.inGroup(d.adminGID)
			if rt.perm == permAdmin && !p.IsAdmin() {
				writeError(w, http.StatusForbidden, api.CodeForbidden,
					fmt.Sprintf("%s %s is for administrators: %s; uid %d is not one", r.Method, r.URL.Path, d.admins(), p.UID))
				return
			}
			rt.handler(w, r, &p)
		})
	}
	// What no route serves is answered in JSON like everything else: a known path with
	// another method 405, any other path 404.
	allowed := map[string][]string{}
	var paths []string
	for _, rt := range d.routes() {
		method, path, _ := strings.Cut(rt.pattern, " ")
		if allowed[path] == nil {
			paths = append(paths, path)
		}
		allowed[path] = append(allowed[path], method)
	}
	for _, path := range paths {
		allow := strings.Join(allowed[path], ", ")
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, api.CodeBadRequest,
				fmt.Sprintf("%s %s: method not allowed (allowed: %s)", r.Method, r.URL.Path, allow))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("%s %s: no such API route", r.Method, r.URL.Path))
	})
	return mux
}

// admins says who the administrators are.
func (d *Daemon) admins() string {
	if d.adminGID < 0 {
		return "root (no admin_group is configured)"
	}
	return fmt.Sprintf("root and members of group %s (gid %d)", d.adminGroup, d.adminGID)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, &api.Error{Code: code, Message: msg})
}

// errorStatus maps an error to an HTTP status and API code.
func errorStatus(err error) (int, string) {
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return http.StatusNotFound, api.CodeNotFound
	case errors.Is(err, ErrNotPermitted), errors.Is(err, fs.ErrPermission):
		return http.StatusForbidden, api.CodeForbidden
	case errors.Is(err, ErrNotFinished), errors.Is(err, ErrFinished), errors.Is(err, ErrChanged):
		return http.StatusConflict, api.CodeConflict
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge, api.CodeTooLarge
	case errors.Is(err, ErrBusy):
		return http.StatusServiceUnavailable, api.CodeBusy
	case errors.Is(err, ErrShuttingDown):
		return http.StatusServiceUnavailable, api.CodeShuttingDown
	case errors.Is(err, errBadRequest), badPath(err):
		return http.StatusBadRequest, api.CodeBadRequest
	}
	return http.StatusInternalServerError, api.CodeInternal
}

// badPath reports whether err is the open of a caller's path failing because of the path
// itself: a NUL byte in it, too long, through a non-directory, or a symlink loop (or a
// symlink where none is followed).
func badPath(err error) bool {
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Op != "open" {
		return false
	}
	return errors.Is(pe.Err, syscall.EINVAL) || errors.Is(pe.Err, syscall.ENAMETOOLONG) ||
		errors.Is(pe.Err, syscall.ENOTDIR) || errors.Is(pe.Err, syscall.ELOOP)
}

var errBadRequest = errors.New("bad request")

func fail(w http.ResponseWriter, err error) {
	status, code := errorStatus(err)
	writeError(w, status, code, err.Error())
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBadRequest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) { // one request, nothing after it
		return fmt.Errorf("%w: data after the JSON request", errBadRequest)
	}
	return nil
}

// ndjson writes a stream of events, flushing each.
type ndjson struct {
	w       http.ResponseWriter
	enc     *json.Encoder
	started bool
}

func newNDJSON(w http.ResponseWriter) *ndjson { return &ndjson{w: w, enc: json.NewEncoder(w)} }

func (n *ndjson) emit(ev api.Event) error {
	if !n.started {
		n.w.Header().Set("Content-Type", api.ContentTypeNDJSON)
		n.w.WriteHeader(http.StatusOK)
		n.started = true
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	if err := n.enc.Encode(ev); err != nil {
		return err
	}
	http.NewResponseController(n.w).Flush()
	return nil
}

// finish reports err: as an HTTP error before the stream started, as an error event after.
func (n *ndjson) finish(err error) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	status, code := errorStatus(err)
	if !n.started {
		writeError(n.w, status, code, err.Error())
		return
	}
	n.emit(api.Event{Type: api.EventError, Error: &api.Error{Code: code, Message: err.Error()}})
}

func (d *Daemon) handleOpen(w http.ResponseWriter, r *http.Request, p *Peer) {
	var req api.OpenRequest
	if err := decodeBody(r, &req); err != nil {
		fail(w, err)
		return
	}
	if !filepath.IsAbs(req.Path) {
		fail(w, fmt.Errorf("%w: path %q is not absolute", errBadRequest, req.Path))
		return
	}
	out := newNDJSON(w)
	out.finish(d.Open(r.Context(), p, &req, out.emit))
}

func (d *Daemon) handleTasks(w http.ResponseWriter, r *http.Request, p *Peer) {
	all, _ := strconv.ParseBool(r.URL.Query().Get("all"))
	tasks := d.Tasks(p, all)
	if tasks == nil {
		tasks = []api.Task{}
	}
	writeJSON(w, http.StatusOK, tasks)
}

func (d *Daemon) handleTask(w http.ResponseWriter, r *http.Request, p *Peer) {
	t, err := d.Task(p, r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (d *Daemon) handleLogs(w http.ResponseWriter, r *http.Request, p *Peer) {
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	out := newNDJSON(w)
	err := d.Logs(r.Context(), p, r.PathValue("id"), follow, out.emit)
	if err == nil {
		err = out.emit(api.Event{Type: api.EventEnd})
	}
	out.finish(err)
}

func (d *Daemon) handleResults(w http.ResponseWriter, r *http.Request, p *Peer) {
	id := r.PathValue("id")
	out := newNDJSON(w)
	res, err := d.Results(p, id)
	if err == nil {
		var t api.Task
		if t, err = d.Task(p, id); err == nil {
			err = out.emit(api.Event{Type: api.EventResult, Task: &t, Results: describe(res)})
		}
	}
	if err == nil {
		err = d.sendFiles(res, out.emit)
	}
	if err == nil {
		err = out.emit(api.Event{Type: api.EventEnd})
	}
	out.finish(err)
}

func (d *Daemon) handleKill(w http.ResponseWriter, r *http.Request, p *Peer) {
	t, err := d.Kill(r.Context(), p, r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (d *Daemon) handleStatus(w http.ResponseWriter, r *http.Request, p *Peer) {
	writeJSON(w, http.StatusOK, d.Status(p))
}

func (d *Daemon) handleRelease(w http.ResponseWriter, r *http.Request, p *Peer) {
	var req api.ReleaseRequest
	if err := decodeBody(r, &req); err != nil {
		fail(w, err)
		return
	}
	res, err := d.Release(p, &req)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (d *Daemon) handleEvents(w http.ResponseWriter, r *http.Request, p *Peer) {
	ch := make(chan api.Event, 64)
	d.mu.Lock()
	d.subscribers[ch] = p
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.subscribers, ch)
		d.mu.Unlock()
	}()
	out := newNDJSON(w)
	out.emit(api.Event{Type: api.EventNotice, Message: "subscribed"})
	for {
		select {
		case ev := <-ch:
			if err := out.emit(ev); err != nil {
				return
			}
		case <-r.Context().Done():
			return
		case <-d.stopping:
			return
		}
	}
}

func (d *Daemon) handleMetrics(w http.ResponseWriter, r *http.Request, p *Peer) {
	promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

// Listen creates the API socket at path, mode 0666 (callers are told apart by SO_PEERCRED,
// not by file permissions). A socket file left by a dead daemon is removed; one a live
// daemon answers on is an ErrAlreadyRunning error.
func Listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%w on %s", ErrAlreadyRunning, path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("probe existing socket %s: %w", path, err)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// Create the socket with no permissions for others during bind, then open it up.
	old := unix.Umask(0o177)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return l, nil
}

// Serve serves the API on l until ctx is done, then shuts down in reverse order: stop
// accepting, cancel queued tasks, let running tasks finish within ShutdownTimeout (then kill
// them), end the streams, close the audit log.
func (d *Daemon) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           d.Handler(),
		ConnContext:       withPeer,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	// Until the last task has ended: a daemon that dies in the shutdown leaves the time.
	beatCtx, stopBeat := context.WithCancel(context.Background())
	defer stopBeat()
	go func() {
		tick := time.NewTicker(heartbeatInterval)
		defer tick.Stop()
		for {
			select {
			case <-beatCtx.Done():
				return
			case <-tick.C:
				d.heartbeat()
			}
		}
	}()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	d.log.Info("shutting down", "deadline", d.cfg.ShutdownTimeout)
	shutCtx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout+5*time.Second)
	defer cancel()
	go srv.Shutdown(shutCtx) // stops accepting; waits for open streams below
	d.shutdown(d.cfg.ShutdownTimeout)
	if err := srv.Shutdown(shutCtx); err != nil {
		srv.Close()
	}
	if err := d.audit.Close(); err != nil {
		d.log.Error("closing audit log", "err", err)
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}
