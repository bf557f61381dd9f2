package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Tests that need a caller other than root run a client as another uid: this test binary
// again (copied where that uid can execute it), in client mode, selected by the
// environment in TestMain. The daemon tells callers apart by SO_PEERCRED, so only a real
// process with the other credentials makes a real second caller.

const (
	envClient = "ISOLATOR_TEST_CLIENT" // "METHOD PATH": be a client and exit
	envSocket = "ISOLATOR_TEST_SOCKET"
	envBody   = "ISOLATOR_TEST_BODY"
	envFor    = "ISOLATOR_TEST_FOR" // read a stream for this long (a Go duration), then stop
)

func TestMain(m *testing.M) {
	if req := os.Getenv(envClient); req != "" {
		os.Exit(clientMain(req))
	}
	code := m.Run()
	if helperDir != "" {
		os.RemoveAll(helperDir)
	}
	os.Exit(code)
}

// clientMain does one HTTP request on the socket and prints the status code on the first
// line, then the body.
func clientMain(req string) int {
	method, path, _ := strings.Cut(req, " ")
	sock := os.Getenv(envSocket)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", sock)
	}}}
	if d, err := time.ParseDuration(os.Getenv(envFor)); err == nil {
		hc.Timeout = d
	}
	var body io.Reader
	if b := os.Getenv(envBody); b != "" {
		body = strings.NewReader(b)
	}
	r, err := http.NewRequest(method, "http://isolatord"+path, body)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	resp, err := hc.Do(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer resp.Body.Close()
	fmt.Println(resp.StatusCode)
	io.Copy(os.Stdout, resp.Body) // a stream read for ISOLATOR_TEST_FOR ends with a timeout
	return 0
}

var (
	helperOnce sync.Once
	helperDir  string
	helperBin  string
	helperErr  error
)

// helper returns a copy of the test binary that any uid can execute.
func helper(t *testing.T) string {
	t.Helper()
	helperOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			helperErr = err
			return
		}
		if helperDir, helperErr = os.MkdirTemp("", "isolator-daemon-test-"); helperErr != nil {
			return
		}
		os.Chmod(helperDir, 0o755)
		data, err := os.ReadFile(self)
		if err != nil {
			helperErr = err
			return
		}
		helperBin = filepath.Join(helperDir, "client")
		helperErr = os.WriteFile(helperBin, data, 0o755)
	})
	if helperErr != nil {
		t.Fatalf("test client binary: %v", helperErr)
	}
	return helperBin
}

// requireRoot skips tests that need a second uid.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
}

// reachable lets every uid search the directories from path up to the root, so another
// uid can reach the socket or a file under t.TempDir().
func reachable(t *testing.T, path string) {
	t.Helper()
	for p := path; p != "/"; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() && fi.Mode().Perm()&0o005 != 0o005 {
			if err := os.Chmod(p, fi.Mode().Perm()|0o005); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// response is what a client as another uid got.
type response struct {
	status int
	body   string
}

// events decodes an NDJSON body.
func (r response) events(t *testing.T) []map[string]any {
	t.Helper()
	var evs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(r.body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("event %q: %v", sc.Text(), err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// as does method path (with a JSON body when body is not nil) on socket as uid, with gid
// uid and the supplementary groups given.
func as(t *testing.T, socket string, uid int, groups []uint32, method, path string, body any) response {
	t.Helper()
	return asFor(t, socket, uid, groups, method, path, body, 0)
}

// asFor is as, reading the answer for at most d (0: to its end).
func asFor(t *testing.T, socket string, uid int, groups []uint32, method, path string, body any, d time.Duration) response {
	t.Helper()
	reachable(t, filepath.Dir(socket))
	r, err := runAs(helper(t), socket, uid, groups, method, path, body, d)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// asAsync is asFor in the background; the error of a failed run is in the response's body
// with status -1.
func asAsync(t *testing.T, socket string, uid int, groups []uint32, method, path string, d time.Duration) <-chan response {
	t.Helper()
	reachable(t, filepath.Dir(socket))
	bin := helper(t)
	ch := make(chan response, 1)
	go func() {
		r, err := runAs(bin, socket, uid, groups, method, path, nil, d)
		if err != nil {
			r = response{status: -1, body: err.Error()}
		}
		ch <- r
	}()
	return ch
}

func runAs(bin, socket string, uid int, groups []uint32, method, path string, body any, d time.Duration) (response, error) {
	cmd := exec.Command(bin, "-test.run=^$")
	// GORACE: a -race binary otherwise sleeps a second at exit.
	cmd.Env = append(os.Environ(), envClient+"="+method+" "+path, envSocket+"="+socket, "GORACE=atexit_sleep_ms=0")
	if d > 0 {
		cmd.Env = append(cmd.Env, envFor+"="+d.String())
	}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return response{}, err
		}
		cmd.Env = append(cmd.Env, envBody+"="+string(b))
	}
	if groups == nil {
		groups = []uint32{}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: groups}}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return response{}, fmt.Errorf("client as uid %d: %v: %s", uid, err, errb.String())
	}
	first, rest, _ := strings.Cut(out.String(), "\n")
	status, err := strconv.Atoi(first)
	if err != nil {
		return response{}, fmt.Errorf("client as uid %d: output %q", uid, out.String())
	}
	return response{status: status, body: rest}, nil
}
