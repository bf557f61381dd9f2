package interception

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// decisionsFor counts the Decider's calls about the inode of a FileInfo seen at path
// first (by dev and inode, whatever the later names).
func decisionsFor(dec *nameDecider, dev, ino uint64) int {
	n := 0
	for _, c := range dec.callsFor() {
		if c.Dev == dev && c.Ino == ino {
			n++
		}
	}
	return n
}

// waitHashed waits until n untrusted files have the hash of their content known (the Gate
// hashes a file right after refusing it when the Decider gave no hash).
func waitHashed(t *testing.T, g *Gate, n int) {
	t.Helper()
	waitFor(t, 5*time.Second, "the untrusted files hashed", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		k := 0
		for _, u := range g.files {
			if u.sum != "" && u.marked {
				k++
			}
		}
		return k == n
	})
}

func inodeOf(t *testing.T, path string) (uint64, uint64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Dev, st.Ino
}

// TestGateFollowsUntrustedFiles: an isolated file stays refused, as its owner renames it
// to a download suffix, links it or moves it out of the gated directory, renames it to a
// name the policy would trust, copies it or moves it to another file system; its verdict
// is kept for the same content without asking the Decider again; new content is decided
// afresh, and the file's own mark goes when it is trusted or deleted.
func TestGateFollowsUntrustedFiles(t *testing.T) {
	requireFanotify(t)
	dl := nobodyDir(t)        // gated
	elsewhere := nobodyDir(t) // same file system, not gated
	sub := filepath.Join(dl, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(sub, nobodyUID, nobodyUID)
	const script = "echo isolated script content\n"
	writeNobody(t, filepath.Join(dl, "setup.sh"), script, 0o644)
	writeNobody(t, filepath.Join(sub, "tool.sh"), script+"# tool\n", 0o644)
	bin, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Skipf("no /bin/true: %v", err)
	}
	writeNobody(t, filepath.Join(dl, "evil-true"), string(bin), 0o755)
	setupDev, setupIno := inodeOf(t, filepath.Join(dl, "setup.sh"))
	toolDev, toolIno := inodeOf(t, filepath.Join(sub, "tool.sh"))

	sink := &recordingSink{}
	dec := &nameDecider{}
	g, _ := startGate(t, GateConfig{Dirs: []string{dl}, Decider: dec, Sink: sink})

	// The first opens are decided and refused.
	for _, p := range []string{filepath.Join(dl, "setup.sh"), filepath.Join(sub, "tool.sh")} {
		if out, err := asNobody("cat", p); !refused(out, err, "isolated script content") {
			t.Fatalf("cat %s as its owner: %q %v; want EPERM", p, out, err)
		}
	}
	if out, err := execFile(filepath.Join(dl, "evil-true")); err == nil {
		t.Fatalf("exec of an untrusted program: %q", out)
	}
	// Marks are added right after the verdict; the hash a moment later.
	waitHashed(t, g, 3)

	steps := []struct {
		name string
		cmds [][]string // run as nobody, must succeed
		open string     // then cat (or exec) this as nobody: refused
		exec bool
	}{
		{"rename to a download suffix", [][]string{{"mv", filepath.Join(dl, "setup.sh"), filepath.Join(dl, "setup.sh.part")}},
			filepath.Join(dl, "setup.sh.part"), false},
		{"rename to a Chromium suffix", [][]string{{"mv", filepath.Join(dl, "setup.sh.part"), filepath.Join(dl, "setup.sh.crdownload")}},
			filepath.Join(dl, "setup.sh.crdownload"), false},
		{"hard link outside", [][]string{{"ln", filepath.Join(dl, "setup.sh.crdownload"), filepath.Join(elsewhere, "hl.sh")}},
			filepath.Join(elsewhere, "hl.sh"), false},
		{"move out of the tree", [][]string{{"mv", filepath.Join(sub, "tool.sh"), elsewhere + "/"}},
			filepath.Join(elsewhere, "tool.sh"), false},
		{"renamed to a name the policy trusts", [][]string{{"mv", filepath.Join(elsewhere, "hl.sh"), filepath.Join(elsewhere, "trusted-hl.sh")}},
			filepath.Join(elsewhere, "trusted-hl.sh"), false},
		{"chmod", [][]string{{"chmod", "0755", filepath.Join(elsewhere, "tool.sh")}},
			filepath.Join(elsewhere, "tool.sh"), false},
		{"executable linked outside", [][]string{{"ln", filepath.Join(dl, "evil-true"), filepath.Join(elsewhere, "trusted-true")}},
			filepath.Join(elsewhere, "trusted-true"), true},
	}
	for _, st := range steps {
		for _, c := range st.cmds {
			if out, err := asNobody(c[0], c[1:]...); err != nil {
				t.Fatalf("%s: %v as nobody: %v %s", st.name, c, err, out)
			}
		}
		var out string
		var err error
		if st.exec {
			out, err = execFile(st.open)
		} else {
			out, err = asNobody("cat", st.open)
		}
		if !refused(out, err, "isolated script content") {
			t.Errorf("%s: opening %s as its owner: %q %v; want EPERM", st.name, st.open, out, err)
		}
	}
	// The same content kept its verdict: no decision after the first.
	if n := decisionsFor(dec, setupDev, setupIno); n != 1 {
		t.Errorf("setup.sh decided %d times across renames and links, want 1", n)
	}
	if n := decisionsFor(dec, toolDev, toolIno); n != 1 {
		t.Errorf("tool.sh decided %d times across the move and chmod, want 1", n)
	}

	// A copy needs to read the file: cp, and mv to another file system (a copy and an
	// unlink), are refused and leave nothing behind.
	if out, err := asNobody("cp", filepath.Join(elsewhere, "tool.sh"), filepath.Join(elsewhere, "copy.sh")); !refused(out, err, "isolated") {
		t.Errorf("cp of an isolated file: %q %v; want EPERM", out, err)
	}
	if b, err := os.ReadFile(filepath.Join(elsewhere, "copy.sh")); err == nil && len(b) > 0 {
		t.Errorf("cp wrote %q", b)
	}
	var shm, tmp unix.Stat_t
	if unix.Stat("/dev/shm", &shm) == nil && unix.Stat(elsewhere, &tmp) == nil && shm.Dev != tmp.Dev {
		other, err := os.MkdirTemp("/dev/shm", "isolator-test-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(other)
		os.Chmod(other, 0o777)
		if out, err := asNobody("mv", filepath.Join(elsewhere, "tool.sh"), other+"/"); !refused(out, err, "isolated") {
			t.Errorf("mv to another file system: %q %v; want EPERM", out, err)
		}
		if b, err := os.ReadFile(filepath.Join(other, "tool.sh")); err == nil && len(b) > 0 {
			t.Errorf("mv to another file system copied %q", b)
		}
		if _, err := os.Stat(filepath.Join(elsewhere, "tool.sh")); err != nil {
			t.Errorf("the refused mv removed the source: %v", err)
		}
	} else {
		t.Log("/dev/shm is not another file system here; cross-file-system move not tried")
	}

	// New content (written by root, whose writes are not gated) is decided afresh: under
	// its trusted name it is trusted now, and loses its own mark.
	if err := os.WriteFile(filepath.Join(elsewhere, "trusted-hl.sh"), []byte("my own notes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := asNobody("cat", filepath.Join(elsewhere, "trusted-hl.sh")); err != nil || out != "my own notes\n" {
		t.Errorf("cat of rewritten content: %q %v; want it", out, err)
	}
	if n := decisionsFor(dec, setupDev, setupIno); n != 2 {
		t.Errorf("rewritten file decided %d times in all, want 2", n)
	}
	if n := g.Stats().FileMarks; n != 2 {
		t.Errorf("%d file marks after one file became trusted, want 2", n)
	}
	// The trusted inode is not asked about any more outside the gated directory.
	before := g.Stats().Events
	if out, err := asNobody("cat", filepath.Join(elsewhere, "trusted-hl.sh")); err != nil || out != "my own notes\n" {
		t.Errorf("second cat of the trusted file: %q %v", out, err)
	}
	if after := g.Stats().Events; after != before {
		t.Errorf("%d permission events for a trusted file outside the gated directory, want none", after-before)
	}

	// Deleting the last link of a marked file drops its mark and entry.
	for _, p := range []string{filepath.Join(elsewhere, "tool.sh")} {
		if out, err := asNobody("rm", p); err != nil {
			t.Fatalf("rm %s: %v %s", p, err, out)
		}
	}
	waitFor(t, 5*time.Second, "the deleted file's entry to go", func() bool { return g.Stats().FileMarks == 1 })
	// One of two links: the file stays marked.
	if out, err := asNobody("rm", filepath.Join(dl, "evil-true")); err != nil {
		t.Fatalf("rm: %v %s", err, out)
	}
	time.Sleep(100 * time.Millisecond)
	if n := g.Stats().FileMarks; n != 1 {
		t.Errorf("%d file marks after removing one of two links, want 1", n)
	}
	if out, err := execFile(filepath.Join(elsewhere, "trusted-true")); err == nil {
		t.Errorf("exec of the remaining link: %q; want EPERM", out)
	}
}

// TestGateTempNameOfDecidedFile: a browser's in-progress download is opened by its writer
// without a decision; a file whose record says it was refused is not, even when the Gate
// has no verdict for it (a restart, or its mark was evicted).
func TestGateTempNameOfDecidedFile(t *testing.T) {
	requireFanotify(t)
	dl := t.TempDir()
	requireUserXattr(t, dl)
	writeFiles(t, dl, "fresh.pdf.part", "old.sh.part")
	if err := WriteRecord(filepath.Join(dl, "old.sh.part"), Record{Origin: "dir:" + dl, Verdict: ActionIsolate,
		Rule: "earlier", Time: time.Now(), SHA256: "00"}); err != nil {
		t.Fatal(err)
	}
	dec := &nameDecider{}
	startGate(t, GateConfig{Dirs: []string{dl}, Decider: dec, Sink: &recordingSink{}})
	// Both are opened by their "writer", a shell holding them open for appending (the
	// descriptor opened by this process, which the Gate does not gate).
	writerCat := func(p string) (string, error) {
		t.Helper()
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := exec.Command("/bin/sh", "-c", `cat "$1"`, "sh", p)
		cmd.ExtraFiles = []*os.File{f}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := writerCat(filepath.Join(dl, "fresh.pdf.part")); err != nil {
		t.Errorf("the writer's cat of an in-progress download: %q %v", out, err)
	}
	if out, err := writerCat(filepath.Join(dl, "old.sh.part")); err == nil {
		t.Errorf("cat of a refused file renamed to .part: %q; want EPERM", out)
	}
	calls := dec.callsFor()
	if len(calls) != 1 || filepath.Base(calls[0].Path) != "old.sh.part" {
		t.Errorf("decisions %+v; want one, about old.sh.part", calls)
	}
}

// TestGateFileMarksBound: at MaxFileMarks the least recently opened untrusted file loses
// its own mark; it is still gated in the gated directory, but no longer under a name
// outside it.
func TestGateFileMarksBound(t *testing.T) {
	requireFanotify(t)
	dl := t.TempDir()
	elsewhere := t.TempDir()
	writeFiles(t, dl, "a.sh", "b.sh", "c.sh")
	g, _ := startGate(t, GateConfig{Dirs: []string{dl}, Decider: &nameDecider{}, Sink: &recordingSink{}, MaxFileMarks: 2})
	for _, n := range []string{"a.sh", "b.sh", "c.sh"} {
		if out, err := catFile(filepath.Join(dl, n)); err == nil {
			t.Fatalf("cat %s: %q; want EPERM", n, out)
		}
	}
	waitHashed(t, g, 2)
	if st := g.Stats(); st.FileMarks != 2 || st.MarksEvicted != 1 {
		t.Errorf("stats %+v; want 2 file marks and 1 evicted", st)
	}
	for _, n := range []string{"a.sh", "b.sh", "c.sh"} {
		if err := os.Rename(filepath.Join(dl, n), filepath.Join(elsewhere, n)); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"b.sh", "c.sh"} {
		if out, err := catFile(filepath.Join(elsewhere, n)); err == nil {
			t.Errorf("cat of %s moved out: %q; want EPERM", n, out)
		}
	}
	// The documented cost of the bound: the evicted file is not followed.
	if out, err := catFile(filepath.Join(elsewhere, "a.sh")); err != nil || out != "content of a.sh\n" {
		t.Errorf("cat of the evicted file moved out: %q %v; want its content (not followed)", out, err)
	}
}

// TestGateInvalidateKeepsFileMarks: a policy change keeps untrusted files gated where
// they are now, and decides them again at their next open, with the origin observed at
// the first decision; a verdict that now trusts them takes the mark away.
func TestGateInvalidateKeepsFileMarks(t *testing.T) {
	requireFanotify(t)
	dl := t.TempDir()
	elsewhere := t.TempDir()
	writeFiles(t, dl, "evil.sh", "other.sh")
	dec := &nameDecider{}
	g, _ := startGate(t, GateConfig{Dirs: []string{dl}, Decider: dec, Sink: &recordingSink{}})
	for _, n := range []string{"evil.sh", "other.sh"} {
		if out, err := catFile(filepath.Join(dl, n)); err == nil {
			t.Fatalf("cat %s: %q; want EPERM", n, out)
		}
	}
	waitHashed(t, g, 2)
	moved := filepath.Join(elsewhere, "trusted-evil.sh")
	if err := os.Rename(filepath.Join(dl, "evil.sh"), moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dl, "other.sh"), filepath.Join(elsewhere, "other.sh")); err != nil {
		t.Fatal(err)
	}
	if out, err := catFile(moved); err == nil {
		t.Fatalf("cat of the moved file: %q; want EPERM", out)
	}
	if n := len(dec.callsFor()); n != 2 {
		t.Fatalf("%d decisions before the policy change, want 2", n)
	}
	for range 2 {
		if err := g.Invalidate(); err != nil {
			t.Fatal(err)
		}
	}
	if n := g.Stats().FileMarks; n != 2 {
		t.Errorf("%d file marks after Invalidate, want 2", n)
	}
	// Still gated outside the directory, and decided again (isolated again).
	if out, err := catFile(filepath.Join(elsewhere, "other.sh")); err == nil {
		t.Errorf("cat of an untrusted file moved out, after Invalidate: %q; want EPERM", out)
	}
	// Decided again: the test policy trusts it by its new name now.
	if out, err := catFile(moved); err != nil || out != "content of evil.sh\n" {
		t.Errorf("cat after Invalidate: %q %v; want the content, trusted by the new decision", out, err)
	}
	calls := dec.callsFor()
	if len(calls) != 4 {
		t.Fatalf("%d decisions, want 4 (two after the policy change)", len(calls))
	}
	for _, c := range calls[2:] {
		if c.ObservedOrigin != "dir:"+dl {
			t.Errorf("decided again with origin %q, want the one first observed, %q", c.ObservedOrigin, "dir:"+dl)
		}
	}
	if n := g.Stats().FileMarks; n != 1 {
		t.Errorf("%d file marks after one file was trusted, want 1", n)
	}
}

// TestWatcherHandsVerdictsToGate: a download the Watcher decided is gated under any name
// before anyone opened it, and its first open is answered from the Watcher's verdict,
// untrusted or trusted, without asking the Decider again.
func TestWatcherHandsVerdictsToGate(t *testing.T) {
	requireFanotify(t)
	dl := t.TempDir()
	elsewhere := t.TempDir()
	requireUserXattr(t, dl)
	sink := &recordingSink{}
	dec := &nameDecider{}
	g, _ := startGate(t, GateConfig{Dirs: []string{dl}, Decider: dec, Sink: sink})
	startWatcher(t, WatcherConfig{Dirs: []string{dl}, Decider: dec, Sink: sink, Gate: g,
		OnDir: func(d string) { g.AddDir(d) }})
	writeFiles(t, dl, "setup.sh", "trusted.txt")
	waitFor(t, 10*time.Second, "both downloads decided", func() bool { return sink.eventCount(EventDownload) == 2 })
	if n := g.Stats().FileMarks; n != 1 {
		t.Errorf("%d file marks after the Watcher decided one untrusted file, want 1", n)
	}
	moved := filepath.Join(elsewhere, "setup.sh")
	if err := os.Rename(filepath.Join(dl, "setup.sh"), moved); err != nil {
		t.Fatal(err)
	}
	if out, err := catFile(moved); err == nil {
		t.Errorf("cat of a download moved out before it was opened: %q; want EPERM", out)
	}
	if out, err := catFile(filepath.Join(dl, "trusted.txt")); err != nil || out != "content of trusted.txt\n" {
		t.Errorf("cat of a trusted download: %q %v", out, err)
	}
	if calls := dec.callsFor(); len(calls) != 2 {
		t.Errorf("%d decisions, want the Watcher's 2: %+v", len(calls), calls)
	}
}

// TestGateInvalidateNeverUngates: the owner of untrusted files, one in the gated directory
// and one moved out of it, opens them again and again while the Gate is invalidated again
// and again, with thousands of other untrusted files known: every open is refused. An
// invalidation removes the ignore mark of a trusted file, and no other mark.
func TestGateInvalidateNeverUngates(t *testing.T) {
	requireFanotify(t)
	dl := nobodyDir(t)
	elsewhere := nobodyDir(t)
	const others = 4000
	dec := &nameDecider{}
	g, _ := startGate(t, GateConfig{Dirs: []string{dl}, Decider: dec, Sink: &recordingSink{}, MaxFileMarks: others + 10})
	in, out := filepath.Join(dl, "secret.sh"), filepath.Join(dl, "moved.sh")
	writeNobody(t, in, "SECRET-CONTENT\n", 0o644)
	writeNobody(t, out, "SECRET-CONTENT, moved\n", 0o644)
	for _, p := range []string{in, out} {
		if o, err := asNobody("cat", p); !refused(o, err, "SECRET") {
			t.Fatalf("first cat of %s: %q %v", p, o, err)
		}
	}
	waitHashed(t, g, 2)
	moved := filepath.Join(elsewhere, "moved.sh")
	if o, err := asNobody("mv", out, moved); err != nil {
		t.Fatal(o, err)
	}
	// Other untrusted files, remembered as the Gate does after a decision: the marks an
	// invalidation would have to put back, were it to remove them.
	for i := range others {
		p := filepath.Join(dl, fmt.Sprintf("f%05d.sh", i))
		writeNobody(t, p, fmt.Sprintf("x%d\n", i), 0o644)
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		key := cacheKey{dev: st.Dev, ino: st.Ino, ctime: st.Ctim.Nano(), size: st.Size}
		g.remember(fd, key, p, Verdict{Action: ActionIsolate, Rule: "r"}, "", origins{}, g.gen.Load())
		unix.Close(fd)
	}
	// A trusted file gets an ignore mark, which an invalidation takes away.
	trusted := filepath.Join(dl, "trusted.txt")
	writeNobody(t, trusted, "trusted\n", 0o644)
	if o, err := catFile(trusted); err != nil {
		t.Fatal(o, err)
	}
	if n := kernelWatches(t, trusted); n != 1 {
		t.Fatalf("%d marks on the trusted file, want its ignore mark", n)
	}
	if err := g.Invalidate(); err != nil {
		t.Fatal(err)
	}
	if n := kernelWatches(t, trusted); n != 0 {
		t.Errorf("%d marks on the trusted file after Invalidate, want none", n)
	}

	var stop atomic.Bool
	invalidations := make(chan int)
	go func() {
		n := 0
		for !stop.Load() {
			if err := g.Invalidate(); err != nil {
				t.Errorf("Invalidate: %v", err)
			}
			n++
		}
		invalidations <- n
	}()
	// 300 rounds of opens of both files by their owner, in one shell: any success ends it
	// with the content on its output.
	script := `for i in $(seq 300); do for f in "$@"; do if cat "$f" 2>/dev/null; then exit 1; fi; done; done`
	o, err := asNobody("/bin/sh", "-c", script, "sh", in, moved)
	stop.Store(true)
	t.Logf("%d invalidations during 600 opens", <-invalidations)
	if err != nil || strings.Contains(o, "SECRET") {
		t.Errorf("the owner read an untrusted file while the Gate was invalidated: %q, %v", o, err)
	}
	if n := kernelWatches(t, dl); n != 1 {
		t.Errorf("%d marks on the gated directory, want 1", n)
	}
	if n := g.Stats().FileMarks; n != others+2 {
		t.Errorf("%d file marks, want %d", n, others+2)
	}
}
