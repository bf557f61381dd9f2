package interception

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireFanotify skips the test unless this process may create fanotify permission groups.
func requireFanotify(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("fanotify permission events need root (CAP_SYS_ADMIN)")
	}
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC, unix.O_RDONLY)
	if err != nil {
		t.Skipf("fanotify_init(FAN_CLASS_CONTENT) refused: %v", err)
	}
	unix.Close(fd)
}

// startGate runs a Gate until the test ends and returns it with the function that stops it.
func startGate(t testing.TB, cfg GateConfig) (*Gate, func()) {
	t.Helper()
	g, err := NewGate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- g.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return g, stop
}

// writeFiles creates the named files in dir, each containing its own name.
func writeFiles(t testing.TB, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("content of "+n+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// catFile runs the real cat on path and returns its output and error.
func catFile(path string) (string, error) {
	var out, errb bytes.Buffer
	cmd := exec.Command("cat", path)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return errb.String(), err
	}
	return out.String(), nil
}

// execFile executes path through sh, so that the gated exec happens in a process other
// than the test (Go's fork uses vfork: the test process would stay frozen, unable even to
// stop for the garbage collector, until the Gate it runs answered the child's exec). It
// returns the combined output and the error.
func execFile(path string) (string, error) {
	out, err := exec.Command("/bin/sh", "-c", `exec "$0"`, path).CombinedOutput()
	return string(out), err
}

func TestGateOpens(t *testing.T) {
	requireFanotify(t)
	dir := t.TempDir()
	writeFiles(t, dir, "evil.pdf", "trusted.txt", "denied.bin")
	sink := &recordingSink{}
	dec := &nameDecider{}
	g, _ := startGate(t, GateConfig{Dirs: []string{dir}, Decider: dec, Sink: sink})

	tests := []struct {
		name      string
		wantOK    bool
		isolation int // Isolate calls expected after the opens
	}{
		{"evil.pdf", false, 1},
		{"trusted.txt", true, 0},
		{"denied.bin", false, 0},
		{"evil.pdf", false, 1}, // again: answered from the cache, no second isolation
	}
	for _, tt := range tests {
		p := filepath.Join(dir, tt.name)
		out, err := catFile(p)
		if tt.wantOK {
			if err != nil || out != "content of "+tt.name+"\n" {
				t.Errorf("cat %s = %q, %v; want its content", tt.name, out, err)
			}
		} else if err == nil || !strings.Contains(out, "Operation not permitted") {
			t.Errorf("cat %s = %q, %v; want EPERM", tt.name, out, err)
		}
		waitFor(t, 5*time.Second, "isolations of "+tt.name, func() bool { return sink.isolations(p) == tt.isolation })
	}
	// Each file was decided once; the repeated open came from the cache.
	n := map[string]int{}
	for _, c := range dec.callsFor() {
		n[filepath.Base(c.Path)]++
		if c.Program != "/usr/bin/cat" && c.Program != "/bin/cat" {
			t.Errorf("opener program %q, want cat", c.Program)
		}
		if c.PID == 0 || c.Trigger != TriggerOpen {
			t.Errorf("decision input %+v lacks PID or trigger", c)
		}
	}
	for _, name := range []string{"evil.pdf", "trusted.txt", "denied.bin"} {
		if n[name] != 1 {
			t.Errorf("%s decided %d times, want 1", name, n[name])
		}
	}
	if got := sink.eventCount(EventDenied); got != 2 {
		t.Errorf("%d denial events, want 2 (evil.pdf once per interval, denied.bin)", got)
	}
	st := g.Stats()
	if st.Denied < 3 || st.Allowed < 1 || st.CacheHits < 1 {
		t.Errorf("stats %+v", st)
	}
	// A changed file is a different cache key: writing it (as this process, which is
	// never gated) and reading it again asks the Decider anew.
	writeFiles(t, dir, "trusted.txt")
	if err := os.WriteFile(filepath.Join(dir, "trusted.txt"), []byte("longer new content\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := catFile(filepath.Join(dir, "trusted.txt")); err != nil || out != "longer new content\n" {
		t.Errorf("cat of rewritten trusted file = %q, %v", out, err)
	}
	n = map[string]int{}
	for _, c := range dec.callsFor() {
		n[filepath.Base(c.Path)]++
	}
	if n["trusted.txt"] != 2 {
		t.Errorf("rewritten file decided %d times in all, want 2", n["trusted.txt"])
	}
}

func TestGateExec(t *testing.T) {
	requireFanotify(t)
	dir := t.TempDir()
	bin, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Skipf("no /bin/true: %v", err)
	}
	for _, name := range []string{"evil-true", "trusted-true"} {
		if err := os.WriteFile(filepath.Join(dir, name), bin, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sink := &recordingSink{}
	dec := &nameDecider{}
	startGate(t, GateConfig{Dirs: []string{dir}, Decider: dec, Sink: sink})
	if out, err := execFile(filepath.Join(dir, "evil-true")); err == nil || !strings.Contains(out, "not permitted") {
		t.Errorf("exec of untrusted program: %v %q, want EPERM", err, out)
	}
	if out, err := execFile(filepath.Join(dir, "trusted-true")); err != nil {
		t.Errorf("exec of trusted program: %v %q", err, out)
	}
	calls := dec.callsFor()
	if len(calls) == 0 || calls[0].Trigger != TriggerExec {
		t.Errorf("first decision %+v, want trigger exec", calls)
	}
	waitFor(t, 5*time.Second, "isolation", func() bool { return sink.isolations(filepath.Join(dir, "evil-true")) == 1 })
}

func TestGateAllowedOpener(t *testing.T) {
	requireFanotify(t)
	dir := t.TempDir()
	writeFiles(t, dir, "evil.pdf")
	cat, err := filepath.EvalSymlinks("/bin/cat")
	if err != nil {
		t.Fatal(err)
	}
	sink := &recordingSink{}
	startGate(t, GateConfig{Dirs: []string{dir}, Decider: &nameDecider{}, Sink: sink, AllowPrograms: []string{cat}})
	p := filepath.Join(dir, "evil.pdf")
	// First through the Decider path, then through the cached-deny path.
	for range 2 {
		if out, err := catFile(p); err != nil || out != "content of evil.pdf\n" {
			t.Errorf("allow-listed cat = %q, %v", out, err)
		}
	}
	if err := exec.Command("head", "-c1", p).Run(); err == nil {
		t.Error("head (not allow-listed) opened the untrusted file")
	}
	if out, err := catFile(p); err != nil || out != "content of evil.pdf\n" {
		t.Errorf("allow-listed cat after a cached deny = %q, %v", out, err)
	}
}

// TestGateOwnProcess checks the daemon's own opens are never gated nor decided.
func TestGateOwnProcess(t *testing.T) {
	requireFanotify(t)
	dir := t.TempDir()
	writeFiles(t, dir, "evil.pdf")
	dec := &nameDecider{}
	startGate(t, GateConfig{Dirs: []string{dir}, Decider: dec, Sink: &recordingSink{}})
	if b, err := os.ReadFile(filepath.Join(dir, "evil.pdf")); err != nil || string(b) != "content of evil.pdf\n" {
		t.Errorf("own read = %q, %v", b, err)
	}
	if n := len(dec.callsFor()); n != 0 {
		t.Errorf("own open decided %d times", n)
	}
}

// slowDecider answers after delay, ignoring its context, and counts its calls.
type slowDecider struct {
	delay time.Duration
	calls atomic.Int32
}

func (d *slowDecider) Decide(context.Context, FileInfo) (Verdict, error) {
	d.calls.Add(1)
	time.Sleep(d.delay)
	return Verdict{Action: ActionTrust}, nil
}

func TestGateDeadlineFallback(t *testing.T) {
	requireFanotify(t)
	for _, tt := range []struct {
		fallback Action
		wantOK   bool
	}{
		{"", false},
		{ActionDeny, false},
		{ActionTrust, true},
	} {
		t.Run("fallback="+string(tt.fallback), func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, "slow.bin")
			dec := &slowDecider{delay: time.Second}
			g, _ := startGate(t, GateConfig{Dirs: []string{dir}, Decider: dec, Sink: &recordingSink{},
				Deadline: 100 * time.Millisecond, Fallback: tt.fallback})
			out, err := catFile(filepath.Join(dir, "slow.bin"))
			if ok := err == nil; ok != tt.wantOK {
				t.Errorf("cat with fallback %q: %q, %v; want success %v", tt.fallback, out, err, tt.wantOK)
			}
			if st := g.Stats(); st.Fallbacks != 1 {
				t.Errorf("stats %+v, want one fallback", st)
			}
		})
	}
}

// TestGateStopUnblocks stops the Gate while cat is blocked in open() waiting for a
// decision: closing the group must let the kernel allow the open.
func TestGateStopUnblocks(t *testing.T) {
	requireFanotify(t)
	dir := t.TempDir()
	writeFiles(t, dir, "evil.pdf")
	called := make(chan struct{}, 1)
	dec := DeciderFunc(func(ctx context.Context, _ FileInfo) (Verdict, error) {
		called <- struct{}{}
		<-ctx.Done()
		return Verdict{}, ctx.Err()
	})
	// The fallback is deny: if Stop answered the pending event instead of closing the
	// group, cat would fail.
	_, stop := startGate(t, GateConfig{Dirs: []string{dir}, Decider: dec, Sink: &recordingSink{},
		Deadline: time.Minute, Fallback: ActionDeny})
	var out bytes.Buffer
	cmd := exec.Command("cat", filepath.Join(dir, "evil.pdf"))
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case <-called:
	case <-time.After(10 * time.Second):
		t.Fatal("the Decider was never asked")
	}
	select {
	case err := <-exited:
		t.Fatalf("cat returned before the gate stopped: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	stop()
	select {
	case err := <-exited:
		if err != nil || out.String() != "content of evil.pdf\n" {
			t.Errorf("cat after stop = %q, %v; want the content", out.String(), err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("cat still blocked 10s after the gate stopped")
	}
}

// TestWatcherAndGate wires a Watcher to a Gate as the daemon does: a download into a
// subdirectory created after the start is decided once and then cannot be opened.
func TestWatcherAndGate(t *testing.T) {
	requireFanotify(t)
	dir := t.TempDir()
	requireUserXattr(t, dir)
	sink := &recordingSink{}
	dec := &nameDecider{}
	g, _ := startGate(t, GateConfig{Dirs: []string{dir}, Decider: dec, Sink: sink})
	startWatcher(t, WatcherConfig{Dirs: []string{dir}, Decider: dec, Sink: sink,
		OnDir: func(d string) {
			if err := g.AddDir(d); err != nil {
				t.Errorf("AddDir: %v", err)
			}
		}})
	sub := filepath.Join(dir, "new")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	p := filepath.Join(sub, "invoice.pdf")
	writeChunks(t, p+".part", bytes.Repeat([]byte("x"), 1<<16), 4, 10*time.Millisecond)
	if err := os.Rename(p+".part", p); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "download decision", func() bool { return sink.eventCount(EventDownload) == 1 })
	if out, err := catFile(p); err == nil || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("cat of isolated download = %q, %v; want EPERM", out, err)
	}
	rec, err := ReadRecord(p)
	if err != nil || rec.Verdict != ActionIsolate {
		t.Errorf("record %+v, %v", rec, err)
	}
	// One isolation when the download completed, one when cat tried to open it: the
	// Watcher and the Gate each start one per file, the Gate at most once per interval.
	waitFor(t, 5*time.Second, "isolations", func() bool { return sink.isolations(p) == 2 })
}

func TestParseEvents(t *testing.T) {
	ev := func(n uint32, vers byte, meta uint16, mask uint64, fd, pid int32) []byte {
		b := make([]byte, 24)
		putEvent(b, n, vers, meta, mask, fd, pid)
		return b
	}
	good := ev(24, unix.FANOTIFY_METADATA_VERSION, 24, unix.FAN_OPEN_PERM, 7, 1234)
	tests := []struct {
		name    string
		buf     []byte
		want    int
		wantErr bool
	}{
		{"one", good, 1, false},
		{"two", append(append([]byte{}, good...), good...), 2, false},
		{"empty", nil, 0, false},
		{"short", good[:20], 0, true},
		{"bad version", ev(24, 1, 24, 0, 1, 1), 0, true},
		{"length too small", ev(8, unix.FANOTIFY_METADATA_VERSION, 24, 0, 1, 1), 0, true},
		{"length past buffer", ev(48, unix.FANOTIFY_METADATA_VERSION, 24, 0, 1, 1), 0, true},
		{"good then garbage", append(append([]byte{}, good...), 1, 2, 3), 1, true},
	}
	for _, tt := range tests {
		evs, err := parseEvents(tt.buf)
		if len(evs) != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("%s: %d events, err %v; want %d, error %v", tt.name, len(evs), err, tt.want, tt.wantErr)
		}
	}
	evs, _ := parseEvents(good)
	if evs[0] != (permEvent{mask: unix.FAN_OPEN_PERM, fd: 7, pid: 1234}) {
		t.Errorf("decoded %+v", evs[0])
	}
}

func FuzzParseEvents(f *testing.F) {
	b := make([]byte, 48)
	putEvent(b, 24, unix.FANOTIFY_METADATA_VERSION, 24, unix.FAN_OPEN_PERM, 3, 1)
	putEvent(b[24:], 24, unix.FANOTIFY_METADATA_VERSION, 24, unix.FAN_OPEN_EXEC_PERM, 4, 2)
	f.Add(b)
	f.Add(b[:30])
	f.Fuzz(func(t *testing.T, buf []byte) {
		evs, err := parseEvents(buf)
		if err == nil && len(evs)*unix.FAN_EVENT_METADATA_LEN > len(buf) {
			t.Fatalf("%d events from %d bytes", len(evs), len(buf))
		}
	})
}

// contentDecider trusts files whose content starts with "TRUSTED" and isolates the others.
// It reads the file through its path as the daemon's policy would (the daemon's own opens
// are not gated).
type contentDecider struct{ calls atomic.Int32 }

func (d *contentDecider) Decide(_ context.Context, f FileInfo) (Verdict, error) {
	d.calls.Add(1)
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return Verdict{}, err
	}
	if bytes.HasPrefix(b, []byte("TRUSTED")) {
		return Verdict{Action: ActionTrust, Rule: "content"}, nil
	}
	return Verdict{Action: ActionIsolate, Rule: "content"}, nil
}

// TestGateTrustedThenModified checks, with and without ignore marks, that repeated opens of
// a trusted file are decided once, and that modifying the file in place takes the trust
// away: the next open is decided again and denied.
func TestGateTrustedThenModified(t *testing.T) {
	requireFanotify(t)
	for _, noIgnore := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoIgnoreMarks=%v", noIgnore), func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "doc.txt")
			if err := os.WriteFile(p, []byte("TRUSTED text\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			dec := &contentDecider{}
			g, _ := startGate(t, GateConfig{Dirs: []string{dir}, Decider: dec, Sink: &recordingSink{}, NoIgnoreMarks: noIgnore})
			for range 5 {
				if out, err := catFile(p); err != nil || out != "TRUSTED text\n" {
					t.Fatalf("cat of trusted file = %q, %v", out, err)
				}
			}
			if n := dec.calls.Load(); n != 1 {
				t.Errorf("trusted file decided %d times, want 1", n)
			}
			st := g.Stats()
			// Five opens by cat and one by the Decider itself (answered at once as the
			// Gate's own process).
			wantEvents := uint64(6)
			if !noIgnore {
				wantEvents = 2 // the ignore mark keeps cat's later opens in the kernel
			}
			if st.Events != wantEvents {
				t.Errorf("%d permission events for 5 opens, want %d", st.Events, wantEvents)
			}
			// Overwrite in place with content of the same size: only the modification
			// itself can take the trust away.
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("EVIL!!!"), 0); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if out, err := catFile(p); err == nil {
				t.Errorf("cat of modified file = %q, want EPERM", out)
			}
			if n := dec.calls.Load(); n != 2 {
				t.Errorf("decided %d times in all, want 2", n)
			}
		})
	}
}

func TestGateInvalidate(t *testing.T) {
	requireFanotify(t)
	dir := t.TempDir()
	writeFiles(t, dir, "trusted.txt", "evil.pdf")
	dec := &nameDecider{}
	g, _ := startGate(t, GateConfig{Dirs: []string{dir}, Decider: dec, Sink: &recordingSink{}})
	for range 2 {
		if _, err := catFile(filepath.Join(dir, "trusted.txt")); err != nil {
			t.Fatal(err)
		}
		if err := g.Invalidate(); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(dec.callsFor()); n != 2 {
		t.Errorf("decided %d times across two invalidations, want 2", n)
	}
	// The directory is still gated after the flush.
	if out, err := catFile(filepath.Join(dir, "evil.pdf")); err == nil {
		t.Errorf("cat of untrusted file after Invalidate = %q, want EPERM", out)
	}
}

// TestGateTempNames has nobody write in-progress downloads: root cannot execute one (not
// even the writer could), a program that does not write the file has its open decided
// like any other (and refused), an open asking for write access (O_RDWR: it could read)
// too, while the writer, a process that holds the file open for writing since it created
// it, opens it without a decision.
func TestGateTempNames(t *testing.T) {
	requireFanotify(t)
	dir := nobodyDir(t)
	const script = "#!/bin/sh\necho evil ran\n"
	for _, name := range []string{"evil.part", "read.crdownload", "rdwr.part", "resume.partial"} {
		writeNobody(t, filepath.Join(dir, name), script, 0o755)
	}
	sink := &recordingSink{}
	dec := &nameDecider{}
	g, _ := startGate(t, GateConfig{Dirs: []string{dir}, Decider: dec, Sink: sink})
	decisions := func(name string) int {
		n := 0
		for _, c := range dec.callsFor() {
			if filepath.Base(c.Path) == name {
				n++
			}
		}
		return n
	}

	// Execution: refused at once, without a decision, for root and for the owner.
	evil := filepath.Join(dir, "evil.part")
	if out, err := execFile(evil); err == nil || strings.Contains(out, "evil ran") {
		t.Errorf("root executed an in-progress download: %q, %v", out, err)
	}
	if out, err := asNobody("/bin/sh", "-c", `exec "$0"`, evil); err == nil || strings.Contains(out, "evil ran") {
		t.Errorf("its owner executed an in-progress download: %q, %v", out, err)
	}
	if n := decisions("evil.part"); n != 0 {
		t.Errorf("execution of an in-progress download decided %d times", n)
	}
	waitFor(t, 5*time.Second, "the refusal notice", func() bool { return sink.eventCount(EventDenied) >= 1 })

	// Not the writer: decided like any other file, and refused.
	read := filepath.Join(dir, "read.crdownload")
	for _, run := range []func(string, ...string) (string, error){
		func(name string, args ...string) (string, error) {
			out, err := exec.Command(name, args...).CombinedOutput()
			return string(out), err
		},
		asNobody,
	} {
		if out, err := run("cat", read); !refused(out, err, "evil ran") {
			t.Errorf("cat of an in-progress download by a non-writer = %q, %v; want EPERM", out, err)
		}
	}
	if n := decisions("read.crdownload"); n != 1 {
		t.Errorf("opens of a non-writer decided %d times, want 1", n)
	}
	waitFor(t, 5*time.Second, "isolation", func() bool { return sink.isolations(read) == 1 })

	// An open for reading and writing, or for appending, by a process that does not hold
	// the file open for writing is no writer's: decided (once) and refused. Its owner
	// deleting the record changes nothing.
	rdwr := filepath.Join(dir, "rdwr.part")
	if out, err := asNobody("/bin/sh", "-c", `cat 0<>"$1"`, "sh", rdwr); !refused(out, err, "evil ran") {
		t.Errorf("cat 0<> of an in-progress download = %q, %v; want EPERM", out, err)
	}
	waitHashed(t, g, 2)
	if err := unix.Removexattr(rdwr, XattrVerdict); err != nil && !errors.Is(err, unix.ENODATA) {
		t.Fatal(err)
	}
	if out, err := asNobody("/bin/sh", "-c", `cat 0<>"$1"`, "sh", rdwr); !refused(out, err, "evil ran") {
		t.Errorf("cat 0<> of an in-progress download without its record = %q, %v; want EPERM", out, err)
	}
	resume := filepath.Join(dir, "resume.partial")
	if out, err := asNobody("/bin/sh", "-c", `echo more >>"$1"`, "sh", resume); !refused(out, err, "evil ran") {
		t.Errorf("reopening an in-progress download for appending: %q, %v; want EPERM", out, err)
	}
	for _, name := range []string{"rdwr.part", "resume.partial"} {
		if n := decisions(name); n != 1 {
			t.Errorf("opens for writing of %s decided %d times, want 1", name, n)
		}
	}
	if b, err := os.ReadFile(resume); err != nil || string(b) != script {
		t.Errorf("the download reopened = %q, %v; want it unchanged", b, err)
	}

	// The writer: a shell that created the file and holds it open for writing, and cat
	// that inherited the descriptor, read it without a decision.
	writer := filepath.Join(dir, "writer.download")
	if out, err := asNobody("/bin/sh", "-c", `exec 3>"$1" && printf '%s' "$2" >&3 && echo more >&3 && cat "$1"`,
		"sh", writer, script); err != nil || out != script+"more\n" {
		t.Errorf("the writer's cat = %q, %v; want the content", out, err)
	}
	if n := decisions("writer.download"); n != 0 {
		t.Errorf("the writer's opens decided %d times", n)
	}
	if st := g.Stats(); st.Denied < 6 {
		t.Errorf("stats %+v, want at least 6 denials", st)
	}
}

// TestGateWaitsForTheWatcher: a program opening a download that is still being written in
// place (curl, wget) is refused without a decision, an isolation or a notice, while the
// writer itself reads it; the Watcher decides the complete file once, and the Gate answers
// later opens from that verdict.
func TestGateWaitsForTheWatcher(t *testing.T) {
	requireFanotify(t)
	dir := t.TempDir()
	requireUserXattr(t, dir)
	sink := &recordingSink{}
	dec := &nameDecider{}
	g, _ := startGate(t, GateConfig{Dirs: []string{dir}, Decider: dec, Sink: sink})
	startWatcher(t, WatcherConfig{Dirs: []string{dir}, Decider: dec, Sink: sink, Gate: g,
		OnDir: func(d string) {
			if err := g.AddDir(d); err != nil {
				t.Errorf("AddDir: %v", err)
			}
		}})
	p := filepath.Join(dir, "tool.AppImage")
	payload := bytes.Repeat([]byte("ELF-ish bytes\n"), 4096)
	f, err := os.Create(p) // this process writes; it is the Gate's, so never gated itself
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(payload[:len(payload)/2]); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if out, err := catFile(p); err == nil || !strings.Contains(out, "Operation not permitted") {
			t.Errorf("cat of a file being written = %q, %v; want EPERM", out, err)
		}
	}
	if n := len(dec.callsFor()); n != 0 || sink.eventCount(EventDenied) != 0 || sink.isolations(p) != 0 {
		t.Errorf("opens of a file being written: %d decisions, %d notices, %d isolations; want none",
			n, sink.eventCount(EventDenied), sink.isolations(p))
	}
	if st := g.Stats(); st.Writing != 2 {
		t.Errorf("stats %+v, want 2 opens refused as being written", st)
	}
	if _, err := f.Write(payload[len(payload)/2:]); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the Watcher's decision", func() bool { return sink.isolations(p) == 1 })
	if out, err := catFile(p); err == nil || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("cat of the decided download = %q, %v; want EPERM", out, err)
	}
	time.Sleep(3 * testSettle) // a second decision or isolation would show up
	calls := dec.callsFor()
	if len(calls) != 1 || calls[0].Trigger != TriggerDownload || calls[0].Size != int64(len(payload)) {
		t.Errorf("decisions %+v; want one, by the Watcher, of the whole file", calls)
	}
	// The Watcher's isolation, and the Gate's at the refused open (the daemon starts one
	// task per content): both of the whole file.
	sink.mu.Lock()
	for _, f := range sink.isolated {
		if f.Size != int64(len(payload)) {
			t.Errorf("isolated %+v; want the whole file", f)
		}
	}
	sink.mu.Unlock()

	// The writer reads what it writes: a shell creating a file and cat that inherited its
	// descriptor.
	own := filepath.Join(dir, "own.bin")
	out, err := exec.Command("/bin/sh", "-c", `exec 3>"$1" && printf 'written' >&3 && cat "$1"`, "sh", own).CombinedOutput()
	if err != nil || string(out) != "written" {
		t.Errorf("the writer's cat = %q, %v; want its content", out, err)
	}
}

// TestGateRecordsItsVerdicts: verdicts the Gate alone made are recorded on the files like
// the Watcher's, so that a Watcher started afterwards (a restarted daemon) does not decide
// them again; the record does not make the next open decided again either.
func TestGateRecordsItsVerdicts(t *testing.T) {
	requireFanotify(t)
	dir := t.TempDir()
	requireUserXattr(t, dir)
	writeFiles(t, dir, "evil.pdf", "trusted.txt")
	dec := &nameDecider{}
	_, stop := startGate(t, GateConfig{Dirs: []string{dir}, Decider: dec, Sink: &recordingSink{}, NoIgnoreMarks: true})
	for range 2 {
		if out, err := catFile(filepath.Join(dir, "evil.pdf")); err == nil {
			t.Errorf("cat of an untrusted file = %q; want EPERM", out)
		}
		if out, err := catFile(filepath.Join(dir, "trusted.txt")); err != nil {
			t.Errorf("cat of a trusted file: %q, %v", out, err)
		}
	}
	if n := len(dec.callsFor()); n != 2 {
		t.Errorf("%d decisions for two opens of two files, want 2", n)
	}
	stop()
	for name, want := range map[string]Action{"evil.pdf": ActionIsolate, "trusted.txt": ActionTrust} {
		p := filepath.Join(dir, name)
		rec, err := ReadRecord(p)
		sum := sha256.Sum256([]byte("content of " + name + "\n"))
		if err != nil || rec.Verdict != want || rec.Rule == "" || rec.SHA256 != hex.EncodeToString(sum[:]) ||
			rec.Origin != "dir:"+dir || time.Since(rec.Time) > time.Minute {
			t.Errorf("record of %s = %+v, %v; want verdict %s with the content's hash", name, rec, err, want)
		}
	}

	// A restarted daemon: a new Watcher decides the new file, not those the Gate recorded.
	dec2 := &nameDecider{}
	sink := &recordingSink{}
	startWatcher(t, WatcherConfig{Dirs: []string{dir}, Decider: dec2, Sink: sink})
	writeFiles(t, dir, "new.bin")
	waitFor(t, 10*time.Second, "decision of new.bin", func() bool { return sink.isolations(filepath.Join(dir, "new.bin")) == 1 })
	time.Sleep(3 * testSettle) // decisions of the other files would show up
	if calls := dec2.callsFor(); len(calls) != 1 {
		t.Errorf("the new Watcher decided %d files (%+v), want only new.bin", len(calls), calls)
	}
}

// TestGateAudit checks that denials reach the audit subsystem where the kernel allows it:
// the Gate creates its group with FAN_ENABLE_AUDIT when this process may, and then answers
// denials with FAN_AUDIT, which the kernel accepts only from such a group (shown first on
// a group without it).
func TestGateAudit(t *testing.T) {
	requireFanotify(t)
	dir := t.TempDir()
	writeFiles(t, dir, "evil.pdf")
	p := filepath.Join(dir, "evil.pdf")

	// A group without FAN_ENABLE_AUDIT: the kernel refuses FAN_AUDIT in its answers.
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD, unix.FAN_OPEN_PERM|unix.FAN_EVENT_ON_CHILD, unix.AT_FDCWD, dir); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	cat := exec.Command("cat", p)
	if err := cat.Start(); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := unix.Read(fd, buf)
	evs, perr := parseEvents(buf[:max(n, 0)])
	if err != nil || perr != nil || len(evs) != 1 {
		unix.Close(fd) // lets cat go
		cat.Wait()
		t.Fatalf("event of the plain group: %d bytes, %v, %v", n, err, perr)
	}
	answer := func(resp uint32) error {
		var b [8]byte
		binary.NativeEndian.PutUint32(b[0:4], uint32(evs[0].fd))
		binary.NativeEndian.PutUint32(b[4:8], resp)
		_, err := unix.Write(fd, b[:])
		return err
	}
	if err := answer(unix.FAN_DENY | unix.FAN_AUDIT); !errors.Is(err, unix.EINVAL) {
		t.Errorf("FAN_AUDIT answer of a group without FAN_ENABLE_AUDIT: %v, want EINVAL", err)
	}
	if err := answer(unix.FAN_ALLOW); err != nil {
		t.Error(err)
	}
	unix.Close(int(evs[0].fd))
	unix.Close(fd)
	if err := cat.Wait(); err != nil {
		t.Errorf("cat allowed by the plain group: %v", err)
	}

	// Whether this process may create an auditing group at all (CAP_AUDIT_WRITE, kernel).
	probe, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC|unix.FAN_ENABLE_AUDIT, unix.O_RDONLY)
	canAudit := err == nil
	if canAudit {
		unix.Close(probe)
	}
	var logs bytes.Buffer
	var logMu sync.Mutex
	g, _ := startGate(t, GateConfig{Dirs: []string{dir}, Decider: &nameDecider{}, Sink: &recordingSink{},
		Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil))})
	if g.Audit() != canAudit {
		t.Fatalf("Audit() = %v, but FAN_ENABLE_AUDIT available: %v (%v)", g.Audit(), canAudit, err)
	}
	want := uint32(unix.FAN_DENY)
	if canAudit {
		want |= unix.FAN_AUDIT
	}
	if got := g.response(false); got != want {
		t.Errorf("denial answered %#x, want %#x", got, want)
	}
	if got := g.response(true); got != unix.FAN_ALLOW {
		t.Errorf("allowance answered %#x, want FAN_ALLOW", got)
	}
	// The kernel accepts the Gate's denial (an answer it refused would leave cat waiting
	// until the group closes, and then let it read).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "cat", p).CombinedOutput(); err == nil || !strings.Contains(string(out), "Operation not permitted") {
		t.Errorf("cat of an untrusted file = %q, %v; want EPERM", out, err)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), "answer fanotify event") {
		t.Errorf("the kernel refused an answer:\n%s", logs.String())
	}
	if !canAudit {
		t.Log("FAN_ENABLE_AUDIT is not available here; denials are not audited")
	}
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
