package interception

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
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
