package interception

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// recordingSink records what it is given.
type recordingSink struct {
	mu       sync.Mutex
	isolated []FileInfo // guarded by mu
	events   []Event    // guarded by mu
}

func (s *recordingSink) Isolate(_ context.Context, f FileInfo, _ Verdict) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.isolated = append(s.isolated, f)
}

func (s *recordingSink) Notify(ev Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, ev)
}

func (s *recordingSink) isolations(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, f := range s.isolated {
		if f.Path == path {
			n++
		}
	}
	return n
}

func (s *recordingSink) eventCount(kind EventKind) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ev := range s.events {
		if ev.Kind == kind {
			n++
		}
	}
	return n
}

var _ Sink = (*recordingSink)(nil)

// nameDecider trusts files whose base name contains "trusted", denies those containing
// "denied" and isolates the others; it records every call.
type nameDecider struct {
	mu    sync.Mutex
	calls []FileInfo // guarded by mu
}

func (d *nameDecider) Decide(_ context.Context, f FileInfo) (Verdict, error) {
	d.mu.Lock()
	d.calls = append(d.calls, f)
	d.mu.Unlock()
	if err := checkFile(f); err != nil {
		return Verdict{}, err // the Gate falls back to deny, the Watcher reports an error
	}
	base := filepath.Base(f.Path)
	switch {
	case strings.Contains(base, "trusted"):
		return Verdict{Action: ActionTrust, Rule: "test-trusted", Reason: "name says trusted"}, nil
	case strings.Contains(base, "denied"):
		return Verdict{Action: ActionDeny, Rule: "test-denied", Reason: "name says denied"}, nil
	}
	return Verdict{Action: ActionIsolate, Rule: "test-untrusted", Reason: "downloaded file"}, nil
}

// checkFile checks that a Decider gets the observed file itself, open and readable.
func checkFile(f FileInfo) error {
	if f.File == nil {
		return fmt.Errorf("%s: FileInfo.File not set for Decide", f.Path)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.File.Fd()), &st); err != nil {
		return err
	}
	if st.Dev != f.Dev || st.Ino != f.Ino {
		return fmt.Errorf("%s: FileInfo.File is inode %d:%d, the observation %d:%d", f.Path, st.Dev, st.Ino, f.Dev, f.Ino)
	}
	if f.Size > 0 {
		if _, err := f.File.ReadAt(make([]byte, 1), 0); err != nil {
			return fmt.Errorf("%s: FileInfo.File: %w", f.Path, err)
		}
	}
	return nil
}

func (d *nameDecider) callsFor() []FileInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]FileInfo(nil), d.calls...)
}

var _ Decider = (*nameDecider)(nil)

// waitFor polls cond every 10 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// requireUserXattr skips the test if dir's file system refuses user.* attributes.
func requireUserXattr(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, ".xattr-probe")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(p)
	if err := unix.Setxattr(p, "user.probe", []byte("1"), 0); err != nil {
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM) {
			t.Skipf("file system of %s does not support user xattrs: %v", dir, err)
		}
		t.Fatal(err)
	}
}

// writeChunks creates path and writes n chunks of data with pause between them.
func writeChunks(t *testing.T, path string, data []byte, n int, pause time.Duration) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	step := (len(data) + n - 1) / n
	for off := 0; off < len(data); off += step {
		end := min(off+step, len(data))
		if _, err := f.Write(data[off:end]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(pause)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// putEvent encodes a fanotify_event_metadata record into b.
func putEvent(b []byte, n uint32, vers byte, meta uint16, mask uint64, fd, pid int32) {
	binary.NativeEndian.PutUint32(b[0:4], n)
	b[4] = vers
	binary.NativeEndian.PutUint16(b[6:8], meta)
	binary.NativeEndian.PutUint64(b[8:16], mask)
	binary.NativeEndian.PutUint32(b[16:20], uint32(fd))
	binary.NativeEndian.PutUint32(b[20:24], uint32(pid))
}

// nobodyUID is the second user the tests act as: the owner of the files, not the daemon.
const nobodyUID = 65534

// nobodyDir returns a new directory owned by nobody, reachable through its parents.
func nobodyDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(dir, nobodyUID, nobodyUID); err != nil {
		t.Fatal(err)
	}
	return dir
}

// writeNobody writes a file owned by nobody.
func writeNobody(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, nobodyUID, nobodyUID); err != nil {
		t.Fatal(err)
	}
}

// asNobody runs a program as nobody and returns its combined output and error.
func asNobody(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyUID, Gid: nobodyUID}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// refused reports whether a program's output and error are an EPERM refusal that
// printed none of content.
func refused(out string, err error, content string) bool {
	return err != nil && strings.Contains(out, "Operation not permitted") && !strings.Contains(out, content)
}

// kernelWatches returns how many inotify watches and fanotify inode marks of this process
// are on the inode at path, as /proc/self/fdinfo lists them: what the Watcher watches and
// the Gate marks, whatever their bookkeeping says.
func kernelWatches(t *testing.T, path string) int {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	// fdinfo shows the kernel's encoding of the device number.
	want := fmt.Sprintf(" ino:%x sdev:%x ", st.Ino, uint64(unix.Major(st.Dev))<<20|uint64(unix.Minor(st.Dev)))
	ents, err := os.ReadDir("/proc/self/fdinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc/self/fdinfo", e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		for line := range strings.Lines(string(b)) {
			if (strings.HasPrefix(line, "inotify wd:") || strings.HasPrefix(line, "fanotify ino:")) &&
				strings.Contains(" "+strings.TrimPrefix(line, "fanotify")+" ", want) {
				n++
			}
		}
	}
	return n
}

// exchange swaps the names a and b atomically (renameat2 RENAME_EXCHANGE).
func exchange(a, b string) error {
	return unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
}
