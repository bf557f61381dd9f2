package interception

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSymlinkedDownloadDir configures a download directory that is a symbolic link to a
// directory elsewhere (~/Downloads -> /mnt/disk/dl): it is watched and gated where its
// files are.
func TestSymlinkedDownloadDir(t *testing.T) {
	requireFanotify(t)
	real := t.TempDir()
	requireUserXattr(t, real)
	link := filepath.Join(t.TempDir(), "Downloads")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	sink := &recordingSink{}
	dec := &nameDecider{}
	g, _ := startGate(t, GateConfig{Dirs: []string{link}, Decider: dec, Sink: sink})
	w := startWatcher(t, WatcherConfig{Dirs: []string{link}, Decider: dec, Sink: sink, Gate: g,
		OnDir: func(d string) {
			if err := g.AddDir(d); err != nil {
				t.Errorf("AddDir: %v", err)
			}
		}})
	if got := w.Dirs(); len(got) != 1 || got[0] != real {
		t.Errorf("Dirs() = %q, want [%s]", got, real)
	}
	if err := os.WriteFile(filepath.Join(link, "evil.bin"), []byte("downloaded through the link"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(real, "evil.bin")
	waitFor(t, 10*time.Second, "decision", func() bool { return sink.isolations(p) == 1 })
	for _, q := range []string{p, filepath.Join(link, "evil.bin")} {
		if out, err := catFile(q); err == nil || !strings.Contains(out, "Operation not permitted") {
			t.Errorf("cat %s = %q, %v; want EPERM", q, out, err)
		}
	}
	if n := len(dec.callsFor()); n != 1 {
		t.Errorf("%d decisions, want 1", n)
	}
}

// TestDirsNeverFollowSymlinksToSystemDirs: a configured directory resolving to a system
// directory is refused before anything is watched; a directory reached through a
// symbolic link (one swapped in after it was seen) is neither watched nor marked.
func TestDirsNeverFollowSymlinksToSystemDirs(t *testing.T) {
	tmp := t.TempDir()
	toEtc := filepath.Join(tmp, "etc-link")
	if err := os.Symlink("/etc", toEtc); err != nil {
		t.Fatal(err)
	}
	// Refused by the path check: no watch is added, no file scheduled.
	_, err := NewWatcher(WatcherConfig{Dirs: []string{toEtc}, Decider: &nameDecider{}, Sink: &recordingSink{}, SkipExisting: true})
	if !errors.Is(err, ErrSystemDir) {
		t.Errorf("NewWatcher of a link to /etc: %v; want ErrSystemDir", err)
	}
	for _, d := range []string{"/usr", "/", "/etc"} {
		if fd, err := openDir(d); !errors.Is(err, ErrSystemDir) {
			if err == nil {
				unix.Close(fd)
			}
			t.Errorf("openDir(%s) = %v; want ErrSystemDir", d, err)
		}
	}
	// A link on the way to an ordinary directory.
	target := filepath.Join(tmp, "target")
	if err := os.MkdirAll(filepath.Join(target, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, filepath.Join(target, "sub"), "evil.pdf")
	link := filepath.Join(tmp, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if fd, err := openDir(filepath.Join(link, "sub")); !errors.Is(err, unix.ELOOP) {
		if err == nil {
			unix.Close(fd)
		}
		t.Errorf("openDir through a link = %v; want ELOOP", err)
	}
	requireFanotify(t)
	dec := &nameDecider{}
	g, _ := startGate(t, GateConfig{Dirs: []string{t.TempDir()}, Decider: dec, Sink: &recordingSink{}})
	if err := g.AddDir(filepath.Join(link, "sub")); !errors.Is(err, unix.ELOOP) {
		t.Errorf("AddDir through a link = %v; want ELOOP", err)
	}
	if out, err := catFile(filepath.Join(target, "sub", "evil.pdf")); err != nil || len(dec.callsFor()) != 0 {
		t.Errorf("cat in the directory AddDir refused = %q, %v, %d decisions; want not gated", out, err, len(dec.callsFor()))
	}
}

// TestDirReplacedAfterCheck: a user's download directory, checked by DownloadDir, that the
// user then swaps for a symbolic link to another user's directory, or for another
// directory, is refused by Gate.AddTree and Watcher.AddDir instead of being followed; put
// back, it is used.
func TestDirReplacedAfterCheck(t *testing.T) {
	requireFanotify(t)
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	const user = 4243 // a user of this test only
	home := filepath.Join(root, "home")
	mkOwned(t, home, user)
	dl := filepath.Join(home, "Downloads")
	mkOwned(t, dl, user)
	victim := filepath.Join(root, "victim")
	mkOwned(t, victim, 4244)
	secret := filepath.Join(victim, "work.doc")
	if err := os.WriteFile(secret, []byte("the victim's own document"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := DownloadDir(home, user)
	if err != nil {
		t.Fatal(err)
	}
	dec := &nameDecider{}
	sink := &recordingSink{}
	g, _ := startGate(t, GateConfig{Decider: dec, Sink: sink})
	w := startWatcher(t, WatcherConfig{Decider: dec, Sink: sink, Gate: g, Settle: 50 * time.Millisecond,
		OnDir: func(d string) { g.AddDir(d) }})

	link := filepath.Join(home, "link")
	symlink(t, victim, link)
	if err := exchange(dl, link); err != nil {
		t.Fatal(err)
	}
	if err := g.AddTree(d); !errors.Is(err, unix.ELOOP) {
		t.Errorf("Gate.AddTree of the directory swapped for a symlink: %v; want ELOOP", err)
	}
	if err := w.AddDir(d); !errors.Is(err, unix.ELOOP) {
		t.Errorf("Watcher.AddDir of the directory swapped for a symlink: %v; want ELOOP", err)
	}
	if err := exchange(dl, link); err != nil {
		t.Fatal(err)
	}
	// Another directory of the user's at the name.
	old := filepath.Join(home, "old")
	if err := os.Rename(dl, old); err != nil {
		t.Fatal(err)
	}
	mkOwned(t, dl, user)
	if err := g.AddTree(d); !errors.Is(err, ErrDirReplaced) {
		t.Errorf("Gate.AddTree of another directory: %v; want ErrDirReplaced", err)
	}
	if err := w.AddDir(d); !errors.Is(err, ErrDirReplaced) {
		t.Errorf("Watcher.AddDir of another directory: %v; want ErrDirReplaced", err)
	}
	if w.Watching(d) {
		t.Error("Watching the refused directory")
	}
	if n := kernelWatches(t, victim) + kernelWatches(t, dl); n != 0 {
		t.Errorf("%d watches and marks on the directories swapped in, want none", n)
	}
	if out, err := catFile(secret); err != nil || len(dec.callsFor()) != 0 {
		t.Errorf("cat of the victim's file = %q, %v, %d decisions; want it not gated", out, err, len(dec.callsFor()))
	}

	// The checked directory back at its name is used.
	if err := os.Remove(dl); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(old, dl); err != nil {
		t.Fatal(err)
	}
	if err := g.AddTree(d); err != nil {
		t.Fatalf("Gate.AddTree: %v", err)
	}
	if err := w.AddDir(d); err != nil {
		t.Fatalf("Watcher.AddDir: %v", err)
	}
	if !w.Watching(d) {
		t.Error("not Watching the directory added")
	}
	p := filepath.Join(dl, "setup.sh")
	if err := os.WriteFile(p, []byte("echo untrusted"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "decision", func() bool { return sink.isolations(p) == 1 })
	if out, err := catFile(p); err == nil || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("cat of a download in the directory added = %q, %v; want EPERM", out, err)
	}
}

// TestTreeSwappedWhileWalked: while the Watcher and the Gate walk a download directory
// again and again, its subdirectory is exchanged with a symbolic link to another user's
// directory: the Watcher and the Gate, walking from descriptors, never watch nor mark it.
func TestTreeSwappedWhileWalked(t *testing.T) {
	requireFanotify(t)
	root := t.TempDir()
	dl := filepath.Join(root, "dl")
	victim := filepath.Join(root, "victim")
	for _, d := range []string{filepath.Join(dl, "sub"), filepath.Join(victim, "inner")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFiles(t, victim, "work.doc")
	link := filepath.Join(dl, "link")
	symlink(t, victim, link)
	dec := &nameDecider{}
	sink := &recordingSink{}
	g, _ := startGate(t, GateConfig{Dirs: []string{dl}, Decider: dec, Sink: sink})
	w := startWatcher(t, WatcherConfig{Dirs: []string{dl}, Decider: dec, Sink: sink, Gate: g,
		SkipExisting: true, OnDir: func(d string) { g.AddDir(d) }})
	d, err := resolveRoot(dl)
	if err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dl, "sub")
	var stop atomic.Bool
	swapped := make(chan int)
	go func() {
		n := 0
		for !stop.Load() {
			if exchange(sub, link) == nil {
				n++
			}
		}
		swapped <- n
	}()
	for range 500 {
		w.rescan()
		if err := g.AddTree(d); err != nil {
			t.Errorf("AddTree: %v", err)
			break
		}
	}
	stop.Store(true)
	t.Logf("%d exchanges during the walks", <-swapped)
	if n := kernelWatches(t, dl); n != 2 {
		t.Errorf("%d inotify watches and fanotify marks on the download directory, want 2", n)
	}
	for _, p := range []string{victim, filepath.Join(victim, "inner")} {
		if n := kernelWatches(t, p); n != 0 {
			t.Errorf("%d inotify watches or fanotify marks on %s, want none", n, p)
		}
	}
	if out, err := catFile(filepath.Join(victim, "work.doc")); err != nil || len(dec.callsFor()) != 0 {
		t.Errorf("cat of the victim's file = %q, %v, %d decisions; want it not gated", out, err, len(dec.callsFor()))
	}
}
