package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/isolator-dev/isolator/pkg/api"
)

// denyDecider denies every file: a fuzzed open that gets as far as a decision stops there.
type denyDecider struct{}

func (denyDecider) Version() string { return "fuzz" }

func (denyDecider) Decide(context.Context, *DecideRequest) (*Decision, error) {
	return &Decision{Decision: api.Decision{Action: api.ActionDeny, Rule: "fuzz", Explanation: "denied"}}, nil
}

// noRunner is never reached: nothing is isolated.
type noRunner struct{}

func (noRunner) Run(context.Context, *Job) (*RunResult, error) {
	return nil, errors.New("fuzz: no micro VMs")
}

// FuzzAPIRequest sends arbitrary bodies to the API routes that decode JSON from local
// users (POST /v1/open and /v1/release, through decodeBody) by the daemon's real
// handler. It must never panic; a body that is not one JSON object of the request type
// with an absolute path must be answered 400 with an API error; no body may get a 5xx.
//
// The caller is uid 65534 (nobody): as root the daemon opens, hashes and releases with
// that identity, so the fuzzer cannot reach more of the host than nobody can; as another
// uid the daemon refuses to act for it (403) once the request is decoded.
func FuzzAPIRequest(f *testing.F) {
	root := f.TempDir()
	dir := filepath.Join(root, "files")
	if err := os.Mkdir(dir, 0o755); err != nil {
		f.Fatal(err)
	}
	for d := root; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755) // the test's own directories, so that nobody can reach the files
	}
	file := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(file, []byte("hello\n"), 0o644); err != nil {
		f.Fatal(err)
	}
	loop, link := filepath.Join(dir, "loop"), filepath.Join(dir, "link")
	os.Symlink(loop, loop)
	os.Symlink(file, link)
	d, err := New(Config{StateDir: filepath.Join(root, "state"), Decider: denyDecider{}, Runner: noRunner{},
		MaxInputBytes: 1 << 20, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { d.audit.Close() })
	h := d.Handler()
	peer := &Peer{UID: 65534, GID: 65534, Groups: []int{65534}, User: "nobody", route: permWrite}

	for _, body := range []string{
		`{"path":"` + file + `"}`,
		`{"path":"` + file + `","opener":"/usr/bin/evince"}`,
		`{"path":"` + file + `","reason":"reviewed"}`,
		`{"path":"` + dir + `"}`,
		`{"path":"` + file + `/x"}`,
		`{"path":"/nonexistent/x"}`,
		`{"path":"` + loop + `"}`,
		`{"path":"` + link + `"}`,
		`{"path":"relative/x"}`,
		`{"path":""}`,
		`{"path":"` + file + `"} {"path":"/etc/shadow"}`,
		`{"path":"` + file + `"}trailing`,
		`{"path":"` + file + `","unknown":1}`,
		`{"path":1}`,
		`{"path":"\u0000"}`,
		`{"path":"/a\u0000b"}`,
		`{"path":"/` + strings.Repeat("a", 5000) + `"}`,
		`{"path":"/` + strings.Repeat("a/", 3000) + `"}`,
		`{"PATH":"` + file + `"}`,
		`null`, `[]`, `"x"`, `{`, ``, "\xff", `{"path":"\ud800"}`,
	} {
		f.Add(uint8(0), []byte(body))
		f.Add(uint8(1), []byte(body))
	}
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		path, want := api.PathOpen, any(&api.OpenRequest{})
		if route%2 == 1 {
			path, want = api.PathRelease, &api.ReleaseRequest{}
		}
		r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		r = r.WithContext(context.WithValue(r.Context(), peerKey{}, peer))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)

		bad := !wellFormed(body, want)
		if !bad {
			switch req := want.(type) {
			case *api.OpenRequest:
				bad = !filepath.IsAbs(req.Path)
			case *api.ReleaseRequest:
				bad = !filepath.IsAbs(req.Path)
			}
		}
		if bad && w.Code != http.StatusBadRequest {
			t.Fatalf("POST %s %q: status %d, want 400 for a bad request\n%s", path, body, w.Code, w.Body)
		}
		if w.Code >= 500 {
			t.Fatalf("POST %s %q: status %d\n%s", path, body, w.Code, w.Body)
		}
		if w.Code >= 400 {
			var e api.Error
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code == "" || e.Message == "" {
				t.Fatalf("POST %s %q: status %d with a body that is no API error: %q", path, body, w.Code, w.Body)
			}
		}
	})
}

// wellFormed reports whether body is exactly one JSON value that decodes into v with no
// unknown fields (white space around it allowed).
func wellFormed(body []byte, v any) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return false
	}
	_, err := dec.Token()
	return errors.Is(err, io.EOF)
}
