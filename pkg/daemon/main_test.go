package daemon

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	for _, msg := range []string{"READY=1", reloadingState(), "STOPPING=1"} {
		if err := Notify(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 256)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:n]) != msg {
			t.Errorf("got %q, want %q", buf[:n], msg)
		}
	}
	if !strings.Contains(reloadingState(), "MONOTONIC_USEC=") {
		t.Error("RELOADING=1 without MONOTONIC_USEC")
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify("READY=1"); err != nil {
		t.Errorf("Notify outside systemd: %v", err)
	}
	t.Setenv("NOTIFY_SOCKET", "relative")
	if err := Notify("READY=1"); err == nil {
		t.Error("Notify to a relative NOTIFY_SOCKET succeeded")
	}
}

func TestOptions(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yaml", "socket: /tmp/x.sock\nstate_dir: /tmp/state\npolicy_dir: /tmp/policies\nmax_concurrent: 7\nqueue_wait: 3s\nlog_level: debug\n"+
		"build_images: false\nmax_input_bytes: 4096\nadmin_group: adm\npool_size: 5\n")
	tests := []struct {
		name    string
		args    []string
		check   func(*options) bool
		wantErr string
	}{
		{"defaults", []string{"--config", write("empty.yaml", "")}, func(o *options) bool {
			return o.socket == DefaultSocket && o.stateDir == DefaultStateDir && o.policyDir == DefaultPolicyDir && o.logLevel == "info" &&
				o.maxConcurrent == 4 && o.queue == 32 && o.maxInputBytes == DefaultMaxInputBytes && o.poolSize == 2
		}, ""},
		{"file", []string{"--config", good}, func(o *options) bool {
			return o.socket == "/tmp/x.sock" && o.stateDir == "/tmp/state" && o.policyDir == "/tmp/policies" && o.maxConcurrent == 7 &&
				o.queueWait == 3*time.Second && o.logLevel == "debug" && o.noBuildImages && o.maxInputBytes == 4096 && o.adminGroup == "adm" &&
				o.poolSize == 5
		}, ""},
		{"flags override file", []string{"--config", good, "--socket", "/s", "--state-dir", "/st", "--policy-dir", "/pol", "--log-level", "warn",
			"--max-concurrent", "2", "--max-input-bytes", "100", "--admin-group", "wheel", "--pool-size", "1"}, func(o *options) bool {
			return o.socket == "/s" && o.stateDir == "/st" && o.policyDir == "/pol" && o.logLevel == "warn" && o.maxConcurrent == 2 &&
				o.queueWait == 3*time.Second && o.maxInputBytes == 100 && o.adminGroup == "wheel" && o.poolSize == 1
		}, ""},
		{"typo", []string{"--config", write("typo.yaml", "sockett: /x\n")}, nil, "field sockett not found"},
		{"wrong type", []string{"--config", write("type.yaml", "queue: many\n")}, nil, "cannot unmarshal"},
		{"two documents", []string{"--config", write("two.yaml", "queue: 1\n---\nqueue: 2\n")}, nil, "one YAML document"},
		{"missing file", []string{"--config", filepath.Join(dir, "none.yaml")}, nil, "no such file"},
		{"stray argument", []string{"extra"}, nil, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseOptions(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(o) {
				t.Errorf("options %+v", o)
			}
		})
	}
}

// closeRecorder is a Runner that writes "runner closed" to w when it is closed.
type closeRecorder struct {
	runsRunner
	w io.Writer
}

func (c *closeRecorder) Close() error {
	fmt.Fprintln(c.w, "runner closed")
	return nil
}

// lockedBuffer is a bytes.Buffer for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestMainStops runs isolatord's Main in this process and stops it with SIGTERM: it exits 0,
// and "isolatord stopped" is the last thing it logs, after the micro VM runner was closed.
func TestMainStops(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "isolator.sock")
	var stderr lockedBuffer
	code := make(chan int, 1)
	go func() {
		code <- Main([]string{"--config", "/dev/null", "--socket", socket, "--state-dir", filepath.Join(dir, "state"),
			"--policy-dir", filepath.Join(dir, "policies"), "--image-dir", filepath.Join(dir, "images"), "--no-build-images"},
			&stderr, func(RunnerConfig) (Runner, error) { return &closeRecorder{w: &stderr}, nil })
	}()
	for !strings.Contains(stderr.String(), "isolatord ready") {
		select {
		case c := <-code:
			t.Fatalf("Main returned %d before it was ready:\n%s", c, stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if c := <-code; c != 0 {
		t.Errorf("Main returned %d after SIGTERM:\n%s", c, stderr.String())
	}
	log := stderr.String()
	closed, stopped := strings.Index(log, "runner closed\n"), strings.Index(log, `msg="isolatord stopped"`)
	if closed < 0 || stopped < closed || !strings.HasSuffix(strings.TrimSpace(log), `msg="isolatord stopped"`) {
		t.Errorf("\"isolatord stopped\" is not logged last, after the runner was closed:\n%s", log)
	}
}
