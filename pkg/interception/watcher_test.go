package interception

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const testSettle = 200 * time.Millisecond

// startWatcher runs a Watcher on dir until the test ends.
func startWatcher(t *testing.T, cfg WatcherConfig) *Watcher {
	t.Helper()
	if cfg.Settle == 0 {
		cfg.Settle = testSettle
	}
	w, err := NewWatcher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return w
}

func TestWatcherDownloads(t *testing.T) {
	payload := bytes.Repeat([]byte("%PDF-1.7 untrusted content\n"), 4096) // ~110 KiB
	const origin = "https://example.com/files/report.pdf"
	tests := []struct {
		name       string
		final      string // relative path of the completed download
		wantOrigin string // "" means the observed "dir:" origin
		download   func(t *testing.T, dir string)
	}{
		{
			name:       "chromium",
			final:      "report.pdf",
			wantOrigin: origin,
			download: func(t *testing.T, dir string) {
				tmp := filepath.Join(dir, "Unconfirmed 123456.crdownload")
				writeChunks(t, tmp, payload, 8, 30*time.Millisecond)
				for name, v := range map[string]string{XattrOriginURL: origin, XattrReferrerURL: "https://example.com/"} {
					if err := unix.Setxattr(tmp, name, []byte(v), 0); err != nil {
						t.Fatal(err)
					}
				}
				named := filepath.Join(dir, "report.pdf.crdownload")
				if err := os.Rename(tmp, named); err != nil {
					t.Fatal(err)
				}
				time.Sleep(2 * testSettle) // the temporary names must never be decided
				if err := os.Rename(named, filepath.Join(dir, "report.pdf")); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name:  "firefox",
			final: "setup.sh",
			download: func(t *testing.T, dir string) {
				// Firefox creates an empty placeholder under the final name first.
				if err := os.WriteFile(filepath.Join(dir, "setup.sh"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
				part := filepath.Join(dir, "setup.sh.part")
				writeChunks(t, part, payload, 6, testSettle/2)
				time.Sleep(2 * testSettle)
				if err := os.Rename(part, filepath.Join(dir, "setup.sh")); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name:  "in place with pauses",
			final: "tool.AppImage",
			download: func(t *testing.T, dir string) {
				// curl/wget: the final name is written in place; pauses shorter than the
				// settle interval must not make it count as complete.
				writeChunks(t, filepath.Join(dir, "tool.AppImage"), payload, 6, testSettle/8)
			},
		},
		{
			name:  "cp into new subdirectory",
			final: "sub/deeper/archive.zip",
			download: func(t *testing.T, dir string) {
				src := filepath.Join(t.TempDir(), "archive.zip")
				if err := os.WriteFile(src, payload, 0o644); err != nil {
					t.Fatal(err)
				}
				sub := filepath.Join(dir, "sub", "deeper")
				if err := os.MkdirAll(sub, 0o755); err != nil {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond)
				if out, err := exec.Command("cp", src, sub).CombinedOutput(); err != nil {
					t.Fatalf("cp: %v: %s", err, out)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			requireUserXattr(t, dir)
			sink := &recordingSink{}
			dec := &nameDecider{}
			startWatcher(t, WatcherConfig{Dirs: []string{dir}, Decider: dec, Sink: sink})
			tt.download(t, dir)
			final := filepath.Join(dir, tt.final)
			waitFor(t, 10*time.Second, "isolation of "+final, func() bool { return sink.isolations(final) > 0 })
			time.Sleep(3 * testSettle) // give duplicate decisions a chance to show up

			calls := dec.callsFor()
			if len(calls) != 1 {
				t.Fatalf("Decide called %d times, want once: %+v", len(calls), calls)
			}
			fi := calls[0]
			if fi.Path != final || fi.Trigger != TriggerDownload {
				t.Errorf("decided %s (%s), want %s (download)", fi.Path, fi.Trigger, final)
			}
			sum := sha256.Sum256(payload)
			if want := hex.EncodeToString(sum[:]); fi.SHA256 != want {
				t.Errorf("SHA256 = %s, want %s", fi.SHA256, want)
			}
			if n := sink.isolations(final); n != 1 {
				t.Errorf("Isolate called %d times, want 1", n)
			}
			if n := sink.eventCount(EventDownload); n != 1 {
				t.Errorf("%d download events, want 1", n)
			}
			rec, err := ReadRecord(final)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Verdict != ActionIsolate || rec.Rule != "test-untrusted" || rec.SHA256 != fi.SHA256 {
				t.Errorf("record = %+v", rec)
			}
			if time.Since(rec.Time) > time.Minute || rec.Time.After(time.Now()) {
				t.Errorf("record time %v is not the decision time", rec.Time)
			}
			if tt.wantOrigin != "" {
				if rec.Origin != tt.wantOrigin || fi.OriginURL != tt.wantOrigin || fi.ReferrerURL == "" {
					t.Errorf("origin %q (file info %q, referrer %q), want %q", rec.Origin, fi.OriginURL, fi.ReferrerURL, tt.wantOrigin)
				}
			} else if want := "dir:" + filepath.Dir(final); !strings.HasPrefix(rec.Origin, want) {
				t.Errorf("observed origin %q, want prefix %q", rec.Origin, want)
			}
		})
	}
}

// TestWatcherRecordSurvivesRestart checks that a second Watcher on the same directory does
// not decide a file that carries an up-to-date record, and does decide one whose content
// changed after its record was written.
func TestWatcherRecordSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	requireUserXattr(t, dir)
	old := filepath.Join(dir, "old.bin")
	changed := filepath.Join(dir, "changed.bin")
	for _, p := range []string{old, changed} {
		if err := os.WriteFile(p, []byte("content of "+p), 0o644); err != nil {
			t.Fatal(err)
		}
		past := time.Now().Add(-time.Hour)
		if err := os.Chtimes(p, past, past); err != nil {
			t.Fatal(err)
		}
		if err := WriteRecord(p, Record{Verdict: ActionIsolate, Rule: "earlier", Time: time.Now().Add(-time.Minute), SHA256: "0123"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(changed, []byte("new content"), 0o644); err != nil {
		t.Fatal(err)
	}
	sink := &recordingSink{}
	dec := &nameDecider{}
	startWatcher(t, WatcherConfig{Dirs: []string{dir}, Decider: dec, Sink: sink})
	waitFor(t, 10*time.Second, "decision of changed.bin", func() bool { return sink.isolations(changed) == 1 })
	time.Sleep(3 * testSettle)
	calls := dec.callsFor()
	if len(calls) != 1 || calls[0].Path != changed {
		t.Fatalf("decided %+v, want only %s", calls, changed)
	}
	rec, err := ReadRecord(old)
	if err != nil || rec.Rule != "earlier" {
		t.Errorf("record of untouched file = %+v, %v; want the earlier one kept", rec, err)
	}
}

// TestWatcherOverflow makes the inotify queue overflow for real (the Watcher does not read
// events until Run) and checks that files whose events were lost are found by the rescan.
func TestWatcherOverflow(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events")
	if err != nil {
		t.Skipf("cannot read inotify queue size: %v", err)
	}
	var queued int
	if _, err := fmt.Sscan(string(b), &queued); err != nil || queued > 1<<16 {
		t.Skipf("inotify queue of %q events is too large to overflow in a test", b)
	}
	dir := t.TempDir()
	requireUserXattr(t, dir)
	sink := &recordingSink{}
	dec := &nameDecider{}
	w, err := NewWatcher(WatcherConfig{Dirs: []string{dir}, Decider: dec, Sink: sink, Settle: testSettle, NoWriterLookup: true})
	if err != nil {
		t.Fatal(err)
	}
	// Empty files make events but are never decided.
	for i := range queued + 1000 {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("empty-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	var lost []string
	for i := range 3 {
		p := filepath.Join(dir, fmt.Sprintf("lost-%d.exe", i))
		if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
		lost = append(lost, p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitFor(t, 20*time.Second, "overflow event", func() bool { return sink.eventCount(EventOverflow) > 0 })
	for _, p := range lost {
		waitFor(t, 20*time.Second, "rescan decision of "+p, func() bool { return sink.isolations(p) == 1 })
	}
}

func TestNewWatcherErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []WatcherConfig{
		{Dirs: []string{dir}},
		{Dirs: []string{filepath.Join(dir, "missing")}, Decider: &nameDecider{}, Sink: &recordingSink{}},
		{Dirs: []string{file}, Decider: &nameDecider{}, Sink: &recordingSink{}},
	} {
		if w, err := NewWatcher(cfg); err == nil {
			w.Close()
			t.Errorf("NewWatcher(%+v) succeeded", cfg)
		}
	}
	_, err := NewWatcher(WatcherConfig{Dirs: []string{filepath.Join(dir, "missing")}, Decider: &nameDecider{}, Sink: &recordingSink{}})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v does not wrap ErrNotExist", err)
	}
}

// watchLimitEnv names the directory tree the watch-limit child process watches.
const watchLimitEnv = "ISOLATOR_TEST_WATCHLIMIT_DIR"

// runWatchLimit runs in a child process in its own user namespace: it lowers that
// namespace's inotify watch limit, watches dir, and prints how many watch-limit events it
// saw and the message of the first.
func runWatchLimit(dir string) int {
	if err := os.WriteFile("/proc/sys/user/max_inotify_watches", []byte("3"), 0); err != nil {
		fmt.Println("skip", err)
		return 0
	}
	sink := &recordingSink{}
	w, err := NewWatcher(WatcherConfig{Dirs: []string{dir}, Decider: &nameDecider{}, Sink: sink})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer w.Close()
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for _, ev := range sink.events {
		if ev.Kind == EventWatchLimit {
			fmt.Println("limit", errors.Is(ev.Err, ErrWatchLimit), errors.Is(ev.Err, unix.ENOSPC), ev.Err)
		}
	}
	return 0
}

// TestWatcherWatchLimit runs a Watcher with a watch limit of 3 (set in a private user
// namespace, so the rest of the machine is unaffected) on a tree of 10 directories.
func TestWatcherWatchLimit(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a user namespace mapping root")
	}
	dir := t.TempDir()
	for i := range 10 {
		if err := os.MkdirAll(filepath.Join(dir, fmt.Sprintf("d%d", i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), watchLimitEnv+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if len(out) == 0 {
			t.Skipf("cannot start a child in a user namespace: %v", err)
		}
		t.Fatalf("child: %v: %s", err, out)
	}
	got := string(out)
	if strings.HasPrefix(got, "skip") {
		t.Skipf("cannot lower the inotify limit in a user namespace: %s", got)
	}
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "limit true true ") || !strings.Contains(lines[0], "max_user_watches=3") {
		t.Errorf("child reported %q, want one watch-limit event wrapping ErrWatchLimit and ENOSPC with the limit", got)
	}
}

// TestWatcherObservedWriter has a shell write a file in place, holding it open across the
// creation event, and checks that the observed origin names the shell.
func TestWatcherObservedWriter(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Skipf("no /bin/sh: %v", err)
	}
	dir := t.TempDir()
	requireUserXattr(t, dir)
	sink := &recordingSink{}
	dec := &nameDecider{}
	startWatcher(t, WatcherConfig{Dirs: []string{dir}, Decider: dec, Sink: sink})
	p := filepath.Join(dir, "fetched.bin")
	out, err := exec.Command(sh, "-c", `exec 3>"$1"; sleep 0.5; printf 'payload' >&3; exec 3>&-`, "sh", p).CombinedOutput()
	if err != nil {
		t.Fatalf("sh: %v: %s", err, out)
	}
	waitFor(t, 10*time.Second, "decision", func() bool { return sink.isolations(p) == 1 })
	calls := dec.callsFor()
	if len(calls) != 1 {
		t.Fatalf("%d decisions, want 1", len(calls))
	}
	if calls[0].Program != sh || calls[0].PID == 0 {
		t.Errorf("writer %d %q, want %s", calls[0].PID, calls[0].Program, sh)
	}
	want := "dir:" + dir + " prog:" + sh
	if calls[0].ObservedOrigin != want {
		t.Errorf("observed origin %q, want %q", calls[0].ObservedOrigin, want)
	}
	if rec, err := ReadRecord(p); err != nil || rec.Origin != want {
		t.Errorf("record %+v, %v; want origin %q", rec, err, want)
	}
}

// waitScheduled waits until the Watcher has a settle timer for p: every event queued
// before p's creation has been handled by then.
func waitScheduled(t *testing.T, w *Watcher, p string) {
	t.Helper()
	waitFor(t, 5*time.Second, "the Watcher to see "+p, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		_, ok := w.pending[p]
		return ok || w.inflight[p]
	})
}

// TestWatcherFollowsRenamedDirectories renames a watched folder (with a subfolder) inside
// the download directory, then creates a folder in it and writes a script there: the
// script and a file in the old subfolder are decided once, under their new paths, and the
// Gate refuses to open or execute the script (the new folder was marked through OnDir).
func TestWatcherFollowsRenamedDirectories(t *testing.T) {
	requireFanotify(t)
	dir := t.TempDir()
	requireUserXattr(t, dir)
	sink := &recordingSink{}
	dec := &nameDecider{}
	g, _ := startGate(t, GateConfig{Dirs: []string{dir}, Decider: dec, Sink: sink})
	w := startWatcher(t, WatcherConfig{Dirs: []string{dir}, Decider: dec, Sink: sink, Gate: g,
		OnDir: func(d string) {
			if err := g.AddDir(d); err != nil {
				t.Errorf("AddDir: %v", err)
			}
		}})
	x := filepath.Join(dir, "x")
	if err := os.MkdirAll(filepath.Join(x, "old"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Both folders are watched before the rename (else the rename is a plain new folder).
	waitFor(t, 5*time.Second, "x/old watched", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		_, ok := w.watched[filepath.Join(x, "old")]
		return ok
	})
	y := filepath.Join(dir, "y")
	if err := os.Rename(x, y); err != nil {
		t.Fatal(err)
	}
	// The kernel's IN_MOVE_SELF for x comes after the rename events: once a file created
	// after the rename is seen, the Watcher has handled it.
	marker := filepath.Join(dir, "marker")
	if err := os.WriteFile(marker, []byte("marker"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitScheduled(t, w, marker)
	z := filepath.Join(y, "z")
	if err := os.Mkdir(z, 0o755); err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(z, "evil.sh")
	writeChunks(t, evil, []byte("#!/bin/sh\necho evil ran\n"), 2, 10*time.Millisecond)
	if err := os.Chmod(evil, 0o755); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(y, "old", "a.bin")
	if err := os.WriteFile(old, []byte("in the old subfolder"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{evil, old} {
		waitFor(t, 10*time.Second, "decision of "+p, func() bool { return sink.isolations(p) == 1 })
	}
	time.Sleep(3 * testSettle) // give duplicate decisions a chance to show up
	n := map[string]int{}
	for _, c := range dec.callsFor() {
		n[c.Path]++
	}
	for _, p := range []string{evil, old} {
		if n[p] != 1 {
			t.Errorf("%s decided %d times, want once (decisions %v)", p, n[p], n)
		}
	}
	for p := range n {
		if strings.HasPrefix(p, x+"/") {
			t.Errorf("decided under the old path %s", p)
		}
	}
	if out, err := catFile(evil); err == nil || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("cat of the script in the new folder = %q, %v; want EPERM", out, err)
	}
	if out, err := execFile(evil); err == nil || strings.Contains(out, "evil ran") {
		t.Errorf("exec of the script in the new folder = %q, %v; want EPERM", out, err)
	}
}

// TestWatcherDecidesIdleTempFiles writes a file with a temporary download name in chunks,
// with pauses longer than the settle interval but shorter than TempIdle: it is decided
// once, with its whole content, only after it stayed unwritten for TempIdle.
func TestWatcherDecidesIdleTempFiles(t *testing.T) {
	dir := t.TempDir()
	requireUserXattr(t, dir)
	sink := &recordingSink{}
	dec := &nameDecider{}
	const idle = 8 * testSettle
	startWatcher(t, WatcherConfig{Dirs: []string{dir}, Decider: dec, Sink: sink, TempIdle: idle})
	payload := bytes.Repeat([]byte("stalled download\n"), 1000)
	part := filepath.Join(dir, "evil.part")
	chrome := filepath.Join(dir, ".com.google.Chrome.Xy12Ab")
	if err := os.WriteFile(chrome, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	// Decided after the settle interval, it would be decided on a part of the content,
	// and again later.
	writeChunks(t, part, payload, 4, 2*testSettle)
	for _, p := range []string{part, chrome} {
		waitFor(t, 10*time.Second, "decision of "+p, func() bool { return sink.isolations(p) == 1 })
	}
	time.Sleep(idle) // a second decision would show up
	sum := sha256.Sum256(payload)
	for _, p := range []string{part, chrome} {
		var calls []FileInfo
		for _, c := range dec.callsFor() {
			if c.Path == p {
				calls = append(calls, c)
			}
		}
		if len(calls) != 1 || calls[0].SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: %d decisions (%+v), want one of the whole content", p, len(calls), calls)
		}
		if rec, err := ReadRecord(p); err != nil || rec.Verdict != ActionIsolate {
			t.Errorf("%s: record %+v, %v", p, rec, err)
		}
	}
}
