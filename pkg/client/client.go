// Package client is the Go client of isolatord's local API, used by isoctl. It speaks
// HTTP over the daemon's unix socket; the daemon identifies the caller from the socket's
// peer credentials, so there is nothing to authenticate here.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"

	"github.com/isolator-dev/isolator/pkg/api"
)

// ErrNotRunning reports that no daemon answers on the socket.
var ErrNotRunning = errors.New("isolatord is not running")

// ErrConnectionLost reports that a stream from the daemon broke off: the daemon stopped,
// crashed or was restarted while it was answering.
var ErrConnectionLost = errors.New("the connection to isolatord was lost")

// Client talks to one isolatord. It is safe for concurrent use.
type Client struct {
	socket string
	http   *http.Client
}

// Dial returns a client for the daemon listening on socket. It fails with an error wrapping
// ErrNotRunning when there is no socket or nobody listens on it.
func Dial(socket string) (*Client, error) {
	if _, err := os.Stat(socket); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w (no socket at %s)", ErrNotRunning, socket)
		}
		return nil, fmt.Errorf("isolatord socket %s: %w", socket, err)
	}
	c := &Client{socket: socket}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "unix", socket)
			if err != nil && (errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)) {
				return nil, fmt.Errorf("%w (nothing listens on %s)", ErrNotRunning, socket)
			}
			return conn, err
		},
		MaxIdleConnsPerHost: 4,
		DisableCompression:  true,
	}
	c.http = &http.Client{Transport: tr}
	return c, nil
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

func (c *Client) url(path string, q url.Values) string {
	u := "http://isolatord" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

func taskPath(pattern, id string) string {
	return strings.Replace(pattern, "{id}", url.PathEscape(id), 1)
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e api.Error
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e); err != nil || e.Message == "" {
			return nil, &api.Error{Code: api.CodeInternal, Message: resp.Status}
		}
		return nil, &e
	}
	return resp, nil
}

func (c *Client) getJSON(ctx context.Context, method, path string, q url.Values, body, out any) error {
	resp, err := c.do(ctx, method, path, q, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s response: %w", path, err)
	}
	return nil
}

// stream calls fn for every event of an NDJSON response. An error event ends the stream
// with that error.
func stream(resp *http.Response, fn func(api.Event) error) error {
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), api.MaxEventSize)
	for sc.Scan() {
		var ev api.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("decode event: %w", err)
		}
		if ev.Type == api.EventError && ev.Error != nil {
			return ev.Error
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if ctxErr := resp.Request.Context().Err(); ctxErr != nil {
			return ctxErr
		}
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("event over %d bytes: %w", api.MaxEventSize, err)
		}
		return fmt.Errorf("%w (%v)", ErrConnectionLost, err)
	}
	return nil
}

// Open asks the daemon to open path (made absolute by the caller) and calls fn for every
// event: the decision, then, for an isolated file, state changes, output and the result.
func (c *Client) Open(ctx context.Context, req api.OpenRequest, fn func(api.Event) error) error {
	resp, err := c.do(ctx, http.MethodPost, api.PathOpen, nil, req)
	if err != nil {
		return err
	}
	return stream(resp, fn)
}

// Tasks lists the caller's tasks, or every task when all is set and the caller is an
// administrator (root or a member of the daemon's admin group).
func (c *Client) Tasks(ctx context.Context, all bool) ([]api.Task, error) {
	var q url.Values
	if all {
		q = url.Values{"all": {"1"}}
	}
	var ts []api.Task
	return ts, c.getJSON(ctx, http.MethodGet, api.PathTasks, q, nil, &ts)
}

// Task returns one task.
func (c *Client) Task(ctx context.Context, id string) (*api.Task, error) {
	var t api.Task
	return &t, c.getJSON(ctx, http.MethodGet, taskPath(api.PathTask, id), nil, nil, &t)
}

// Logs calls fn with what task id printed, following it until it ends when follow is set.
func (c *Client) Logs(ctx context.Context, id string, follow bool, fn func(api.Event) error) error {
	var q url.Values
	if follow {
		q = url.Values{"follow": {"1"}}
	}
	resp, err := c.do(ctx, http.MethodGet, taskPath(api.PathLogs, id), q, nil)
	if err != nil {
		return err
	}
	return streamToEnd(resp, fn)
}

// Results calls fn with the results of a finished task: a result event that describes its
// files (and the task), then an EventFile for every chunk of their contents, in order, and
// notices. Save them with a broker.Deliverer.
func (c *Client) Results(ctx context.Context, id string, fn func(api.Event) error) error {
	resp, err := c.do(ctx, http.MethodGet, taskPath(api.PathResults, id), nil, nil)
	if err != nil {
		return err
	}
	return streamToEnd(resp, fn)
}

// Kill stops a task and returns it in its final state.
func (c *Client) Kill(ctx context.Context, id string) (*api.Task, error) {
	var t api.Task
	return &t, c.getJSON(ctx, http.MethodPost, taskPath(api.PathKill, id), nil, struct{}{}, &t)
}

// Status describes the daemon.
func (c *Client) Status(ctx context.Context) (*api.Status, error) {
	var s api.Status
	return &s, c.getJSON(ctx, http.MethodGet, api.PathStatus, nil, nil, &s)
}

// Release marks a file trusted after review.
func (c *Client) Release(ctx context.Context, req api.ReleaseRequest) (*api.ReleaseResponse, error) {
	var r api.ReleaseResponse
	return &r, c.getJSON(ctx, http.MethodPost, api.PathRelease, nil, req, &r)
}

// Events calls fn for every task event the caller may see until ctx is done.
func (c *Client) Events(ctx context.Context, fn func(api.Event) error) error {
	resp, err := c.do(ctx, http.MethodGet, api.PathEvents, nil, nil)
	if err != nil {
		return err
	}
	return stream(resp, fn)
}

// Metrics returns the daemon's metrics in Prometheus text format.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	resp, err := c.do(ctx, http.MethodGet, api.PathMetrics, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// streamToEnd is stream for the routes that mark their end with an EventEnd, which is not
// passed on to fn.
func streamToEnd(resp *http.Response, fn func(api.Event) error) error {
	return stream(resp, func(ev api.Event) error {
		if ev.Type == api.EventEnd {
			return nil
		}
		return fn(ev)
	})
}
