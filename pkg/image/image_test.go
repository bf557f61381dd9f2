package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

const (
	busybox   = "/usr/bin/busybox"
	sha256sum = "/usr/bin/sha256sum"
)

// needHostFiles skips the test when a host program it packs is missing.
func needHostFiles(t testing.TB, files ...string) {
	t.Helper()
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("needs %s (Debian packages busybox-static and coreutils): %v", f, err)
		}
	}
}

// buildBytes builds an image in memory.
func buildBytes(t testing.TB, cfg BuildConfig) ([]byte, *BuildReport) {
	t.Helper()
	var buf bytes.Buffer
	rep, err := Build(&buf, cfg)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return buf.Bytes(), rep
}

// buildImage builds an image file in a temporary directory and opens it.
func buildImage(t testing.TB, cfg BuildConfig) (*Image, *BuildReport) {
	t.Helper()
	name := filepath.Join(t.TempDir(), "test.img")
	rep, err := BuildFile(name, cfg)
	if err != nil {
		t.Fatalf("BuildFile: %v", err)
	}
	im, err := Open(name)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { im.Close() })
	return im, rep
}

func readEntry(t testing.TB, im *Image, e *Entry) []byte {
	t.Helper()
	r, err := im.Open(e)
	if err != nil {
		t.Fatalf("Open(%s): %v", e.Path, err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s: %v", e.Path, err)
	}
	return b
}

// resolveIn follows symlinks inside the image the way the guest kernel would, returning the
// entry p names.
func resolveIn(t testing.TB, im *Image, p string) *Entry {
	t.Helper()
	comps := splitPath(p)
	cur := "/"
	for links := 0; len(comps) > 0; {
		c := comps[0]
		comps = comps[1:]
		if c == ".." {
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, c)
		e, err := im.Lookup(next)
		if err != nil {
			t.Fatalf("resolve %s in image: %v", p, err)
		}
		if e.IsSymlink() {
			if links++; links > 40 {
				t.Fatalf("resolve %s: symlink loop", p)
			}
			if path.IsAbs(e.Target) {
				cur = "/"
			}
			comps = append(splitPath(e.Target), comps...)
			continue
		}
		cur = next
	}
	e, err := im.Lookup(cur)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestBuildRoundTrip(t *testing.T) {
	needHostFiles(t, busybox, sha256sum)
	im, rep := buildImage(t, BuildConfig{Programs: []string{sha256sum, busybox}})
	if d, err := im.Digest(); err != nil || rep.Digest != d {
		t.Errorf("report digest %s, image digest %s (%v)", rep.Digest, d, err)
	}
	if rep.Bytes != im.Size() || rep.Entries != im.Len() {
		t.Errorf("report says %d bytes %d entries, image has %d bytes %d entries", rep.Bytes, rep.Entries, im.Size(), im.Len())
	}
	var files, dirs, links int
	var data int64
	err := im.Walk(func(e *Entry) error {
		host, err := os.Lstat(e.Path)
		if err != nil {
			return fmt.Errorf("image entry %s has no host file: %v", e.Path, err)
		}
		switch {
		case e.IsDir():
			dirs++
			if !host.IsDir() {
				return fmt.Errorf("%s: directory in image, %v on host", e.Path, host.Mode())
			}
		case e.IsSymlink():
			links++
			target, err := os.Readlink(e.Path)
			if err != nil || target != e.Target || e.Size != int64(len(target)) {
				return fmt.Errorf("%s: symlink to %q (size %d), host has %q (%v)", e.Path, e.Target, e.Size, target, err)
			}
		default:
			files++
			data += e.Size
			want, err := os.ReadFile(e.Path)
			if err != nil {
				return err
			}
			if got := readEntry(t, im, e); !bytes.Equal(got, want) {
				return fmt.Errorf("%s: %d bytes in image differ from the %d bytes on the host", e.Path, len(got), len(want))
			}
			if e.Mode != host.Mode() || !e.ModTime.Equal(host.ModTime()) {
				return fmt.Errorf("%s: mode %v mtime %v, host %v %v", e.Path, e.Mode, e.ModTime, host.Mode(), host.ModTime())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files != rep.Files || dirs != rep.Dirs || links != rep.Symlinks || data != rep.DataBytes {
		t.Errorf("walk counted %d files %d dirs %d symlinks %d bytes, report %+v", files, dirs, links, data, rep)
	}
}

func TestDynamicProgram(t *testing.T) {
	needHostFiles(t, sha256sum)
	im, rep := buildImage(t, BuildConfig{Programs: []string{sha256sum}})

	interp, err := readELF(sha256sum)
	if err != nil {
		t.Fatal(err)
	}
	if interp.interp == "" {
		t.Fatalf("%s has no PT_INTERP", sha256sum)
	}
	// The guest finds the interpreter at the PT_INTERP path, through whatever symlinks the
	// host has on the way, and gets the host's interpreter bytes.
	e := resolveIn(t, im, interp.interp)
	if !e.Mode.IsRegular() {
		t.Fatalf("%s resolves to %s (%v) in the image", interp.interp, e.Path, e.Mode)
	}
	want, err := os.ReadFile(interp.interp)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readEntry(t, im, e), want) {
		t.Errorf("interpreter %s in image differs from the host's", interp.interp)
	}
	if !strings.HasPrefix(e.Name(), "ld-linux") {
		t.Errorf("interpreter resolves to %s", e.Path)
	}

	var libc *Library
	for i, l := range rep.Libraries {
		if l.Name == "libc.so.6" {
			libc = &rep.Libraries[i]
		}
	}
	if libc == nil {
		t.Fatalf("libc.so.6 not in report: %+v", rep.Libraries)
	}
	if libc.NeededBy != sha256sum {
		t.Errorf("libc.so.6 needed by %s", libc.NeededBy)
	}
	for _, p := range []string{libc.Path, "/lib/x86_64-linux-gnu/libc.so.6"} {
		e := resolveIn(t, im, p)
		want, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(readEntry(t, im, e), want) {
			t.Errorf("%s in image differs from the host's", p)
		}
	}
	if !slices.ContainsFunc(rep.Libraries, func(l Library) bool { return l.Name == interp.interp }) {
		t.Errorf("interpreter not in report: %+v", rep.Libraries)
	}
}

func TestStaticProgram(t *testing.T) {
	needHostFiles(t, busybox)
	real, err := filepath.EvalSymlinks(busybox)
	if err != nil {
		t.Fatal(err)
	}
	im, rep := buildImage(t, BuildConfig{Programs: []string{busybox}})
	if len(rep.Libraries) != 0 {
		t.Errorf("static program got libraries: %+v", rep.Libraries)
	}
	var paths []string
	im.Walk(func(e *Entry) error { paths = append(paths, e.Path); return nil })
	// The program, its directories, and nothing else (busybox-static is not a symlink).
	want := []string{"/"}
	for d := path.Dir(real); d != "/"; d = path.Dir(d) {
		want = append(want, d)
	}
	slices.SortFunc(want, comparePaths)
	want = append(want, real)
	if !slices.Equal(paths, want) {
		t.Errorf("entries %q, want %q", paths, want)
	}
}

func TestLookup(t *testing.T) {
	needHostFiles(t, busybox, sha256sum)
	im, _ := buildImage(t, BuildConfig{Programs: []string{busybox}, Files: smallTree(t)})
	tests := []struct {
		path    string
		mode    fs.FileMode // type bits expected
		target  string
		wantErr error
	}{
		{path: "/", mode: fs.ModeDir},
		{path: "/usr/bin", mode: fs.ModeDir},
		{path: busybox, mode: 0},
		{path: "/data/hello.txt", mode: 0},
		{path: "/data/sub/deep/empty", mode: 0},
		{path: "/data/rel-link", mode: fs.ModeSymlink, target: "hello.txt"},
		{path: "/data/abs-link", mode: fs.ModeSymlink, target: "/etc/passwd"},
		{path: "/data/dangling", mode: fs.ModeSymlink, target: "../../nowhere/at/all"},
		{path: "/nope", wantErr: fs.ErrNotExist},
		{path: "usr/bin", wantErr: fs.ErrNotExist},
		{path: "/usr/bin/", wantErr: fs.ErrNotExist},
		{path: "/usr//bin", wantErr: fs.ErrNotExist},
		{path: "", wantErr: fs.ErrNotExist},
		{path: "/data/rel-link/x", wantErr: fs.ErrNotExist}, // Lookup follows no symlinks
	}
	inos := map[uint64]string{}
	for _, tt := range tests {
		e, err := im.Lookup(tt.path)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Lookup(%q) = %v, %v; want %v", tt.path, e, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("Lookup(%q): %v", tt.path, err)
			continue
		}
		if e.Path != tt.path || e.Mode.Type() != tt.mode || e.Target != tt.target {
			t.Errorf("Lookup(%q) = %+v, want type %v target %q", tt.path, e, tt.mode, tt.target)
		}
		if other, dup := inos[e.Ino]; dup {
			t.Errorf("%s and %s share inode %d", other, e.Path, e.Ino)
		}
		inos[e.Ino] = e.Path
	}
	if root, _ := im.Lookup("/"); root.Ino != 1 || root.Name() != "/" {
		t.Errorf("root has inode %d name %q", root.Ino, root.Name())
	}
}

// smallTree makes a host directory of small files and returns it as a FileSpec at /data.
func smallTree(t testing.TB) []FileSpec {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "sub", "deep"), 0o750))
	must(os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello, guest\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "secret"), []byte("only the owner"), 0o600))
	must(os.WriteFile(filepath.Join(dir, "sub", "a-b"), bytes.Repeat([]byte("ab"), 5000), 0o755))
	must(os.WriteFile(filepath.Join(dir, "sub", "deep", "empty"), nil, 0o644))
	must(os.Symlink("hello.txt", filepath.Join(dir, "rel-link")))
	must(os.Symlink("/etc/passwd", filepath.Join(dir, "abs-link")))
	must(os.Symlink("../../nowhere/at/all", filepath.Join(dir, "dangling")))
	return []FileSpec{{HostPath: dir, GuestPath: "/data"}}
}

func TestReadDir(t *testing.T) {
	needHostFiles(t, busybox, sha256sum)
	im, _ := buildImage(t, BuildConfig{Programs: []string{busybox, sha256sum}, Files: smallTree(t)})
	names := func(es []*Entry) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.Name())
		}
		return out
	}
	tests := []struct {
		dir     string
		want    []string
		wantErr error
	}{
		{dir: "/data", want: []string{"abs-link", "dangling", "hello.txt", "rel-link", "secret", "sub"}},
		{dir: "/data/sub", want: []string{"a-b", "deep"}},
		{dir: "/data/sub/deep", want: []string{"empty"}},
		{dir: "/usr/bin", want: []string{"busybox", "sha256sum"}},
		{dir: "/data/hello.txt", wantErr: ErrNotDir},
		{dir: "/data/rel-link", wantErr: ErrNotDir},
		{dir: "/missing", wantErr: fs.ErrNotExist},
	}
	for dir, want := range map[string]int{"/data": 1, "/data/sub": 1, "/data/sub/deep": 0, "/usr/bin": 0, "/data/hello.txt": 0} {
		if e, err := im.Lookup(dir); err != nil {
			t.Errorf("Lookup(%q): %v", dir, err)
		} else if e.Subdirs() != want {
			t.Errorf("%s: Subdirs() = %d, want %d", dir, e.Subdirs(), want)
		}
	}
	for _, tt := range tests {
		got, err := im.ReadDir(tt.dir)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("ReadDir(%q) error %v, want %v", tt.dir, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(names(got), tt.want) {
			t.Errorf("ReadDir(%q) = %q, %v; want %q", tt.dir, names(got), err, tt.want)
		}
	}

	// Every entry but the root is listed exactly once, by its parent, in name order.
	seen := map[string]int{}
	err := im.Walk(func(e *Entry) error {
		if !e.IsDir() {
			return nil
		}
		kids, err := im.ReadDir(e.Path)
		if err != nil {
			return err
		}
		if !slices.IsSortedFunc(kids, func(a, b *Entry) int { return strings.Compare(a.Name(), b.Name()) }) {
			return fmt.Errorf("ReadDir(%s) not sorted: %q", e.Path, names(kids))
		}
		subdirs := 0
		for _, k := range kids {
			if path.Dir(k.Path) != e.Path {
				return fmt.Errorf("ReadDir(%s) lists %s", e.Path, k.Path)
			}
			seen[k.Path]++
			if k.IsDir() {
				subdirs++
			}
		}
		if e.Subdirs() != subdirs {
			return fmt.Errorf("%s: Subdirs() = %d, ReadDir lists %d directories", e.Path, e.Subdirs(), subdirs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != im.Len()-1 {
		t.Errorf("ReadDir lists %d entries, image has %d besides the root", len(seen), im.Len()-1)
	}
}

func TestWalkOrder(t *testing.T) {
	needHostFiles(t, busybox, sha256sum)
	im, _ := buildImage(t, BuildConfig{Programs: []string{sha256sum, busybox}, Files: smallTree(t)})
	var prev *Entry
	seen := map[string]bool{}
	err := im.Walk(func(e *Entry) error {
		if prev == nil {
			if e.Path != "/" || e.Ino != 1 {
				return fmt.Errorf("first entry %s ino %d", e.Path, e.Ino)
			}
		} else {
			if comparePaths(prev.Path, e.Path) >= 0 {
				return fmt.Errorf("%s walked after %s", e.Path, prev.Path)
			}
			if e.Ino != prev.Ino+1 {
				return fmt.Errorf("%s has inode %d after %d", e.Path, e.Ino, prev.Ino)
			}
			if !seen[path.Dir(e.Path)] {
				return fmt.Errorf("%s walked before its parent", e.Path)
			}
		}
		seen[e.Path] = true
		prev = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	n := 0
	if err := im.Walk(func(*Entry) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("Walk returned %v after %d calls, want the callback's error after 1", err, n)
	}
}

func TestComparePaths(t *testing.T) {
	sorted := []string{"/", "/a", "/a/b", "/a/b/c", "/a/c", "/a-b", "/a.b", "/ab", "/b", "/b/a"}
	for i, a := range sorted {
		for j, b := range sorted {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := comparePaths(a, b); got != want {
				t.Errorf("comparePaths(%q, %q) = %d, want %d", a, b, got, want)
			}
		}
	}
}

func TestOpenEntry(t *testing.T) {
	im, _ := buildImage(t, BuildConfig{Files: smallTree(t)})
	dir, _ := im.Lookup("/data")
	if _, err := im.Open(dir); !errors.Is(err, ErrNotRegular) {
		t.Errorf("Open(dir) error %v, want ErrNotRegular", err)
	}
	link, _ := im.Lookup("/data/rel-link")
	if _, err := im.Open(link); !errors.Is(err, ErrNotRegular) {
		t.Errorf("Open(symlink) error %v, want ErrNotRegular", err)
	}
	hello, _ := im.Lookup("/data/hello.txt")
	// A forged or foreign entry cannot reach outside the file's own bytes.
	forged := *hello
	forged.Size = 1 << 40
	if got := readEntry(t, im, &forged); string(got) != "hello, guest\n" {
		t.Errorf("forged entry read %q", got)
	}
	for _, bad := range []*Entry{nil, {Path: "/data/hello.txt"}, {Path: "/data/hello.txt", Ino: 1 << 20}, {Path: "/x", Ino: hello.Ino}} {
		if _, err := im.Open(bad); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Open(%+v) error %v, want fs.ErrNotExist", bad, err)
		}
	}
}

func TestConcurrentReads(t *testing.T) {
	needHostFiles(t, busybox, sha256sum)
	im, _ := buildImage(t, BuildConfig{Programs: []string{busybox, sha256sum}, Files: smallTree(t)})
	var files []*Entry
	im.Walk(func(e *Entry) error {
		if e.Mode.IsRegular() {
			files = append(files, e)
		}
		return nil
	})
	sums := map[string][32]byte{}
	for _, e := range files {
		sums[e.Path] = sha256.Sum256(readEntry(t, im, e))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range files {
				e := files[(i+g)%len(files)]
				if _, err := im.Lookup(e.Path); err != nil {
					errs <- err
					return
				}
				r, err := im.Open(e)
				if err != nil {
					errs <- err
					return
				}
				h := sha256.New()
				if _, err := io.Copy(h, r); err != nil {
					errs <- err
					return
				}
				if [32]byte(h.Sum(nil)) != sums[e.Path] {
					errs <- fmt.Errorf("%s: concurrent read differs", e.Path)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestDeterministic(t *testing.T) {
	needHostFiles(t, busybox, sha256sum)
	cfg := BuildConfig{Programs: []string{sha256sum, busybox}, Files: smallTree(t)}
	a, repA := buildBytes(t, cfg)
	// The same inputs in another order give the same image.
	cfg.Programs = []string{busybox, sha256sum}
	b, repB := buildBytes(t, cfg)
	if !bytes.Equal(a, b) {
		t.Fatalf("two builds differ: %d and %d bytes", len(a), len(b))
	}
	if repA.Digest != repB.Digest || repA.Digest != fmt.Sprintf("%x", sha256.Sum256(a)) {
		t.Errorf("digests %s %s, want %x", repA.Digest, repB.Digest, sha256.Sum256(a))
	}
	im, err := Load(bytes.NewReader(a), int64(len(a)))
	if err != nil {
		t.Fatal(err)
	}
	if d, err := im.Digest(); err != nil || d != repA.Digest {
		t.Errorf("Load digest %s (%v), build digest %s", d, err, repA.Digest)
	}
}

func TestFileSpec(t *testing.T) {
	tree := smallTree(t)
	host := tree[0].HostPath
	single := filepath.Join(t.TempDir(), "app.conf")
	if err := os.WriteFile(single, []byte("key = value\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "conf-link")
	if err := os.Symlink(single, link); err != nil {
		t.Fatal(err)
	}
	im, _ := buildImage(t, BuildConfig{Files: append(tree,
		FileSpec{HostPath: single, GuestPath: "/etc/app/app.conf"},
		FileSpec{HostPath: link, GuestPath: "/etc/followed.conf"}, // a top-level symlink is followed
		FileSpec{HostPath: single},                                // at its own host path
	)})
	for _, tt := range []struct {
		guest, host string
	}{
		{"/data/hello.txt", filepath.Join(host, "hello.txt")},
		{"/data/secret", filepath.Join(host, "secret")},
		{"/data/sub/a-b", filepath.Join(host, "sub", "a-b")},
		{"/data/sub/deep/empty", filepath.Join(host, "sub", "deep", "empty")},
		{"/etc/app/app.conf", single},
		{"/etc/followed.conf", single},
		{single, single},
	} {
		e, err := im.Lookup(tt.guest)
		if err != nil {
			t.Errorf("Lookup(%s): %v", tt.guest, err)
			continue
		}
		fi, err := os.Stat(tt.host)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(tt.host)
		if got := readEntry(t, im, e); !bytes.Equal(got, want) || e.Mode != fi.Mode() {
			t.Errorf("%s: %q mode %v, want %q mode %v", tt.guest, got, e.Mode, want, fi.Mode())
		}
	}
	sub, _ := im.Lookup("/data/sub")
	if sub.Mode != fs.ModeDir|0o750 {
		t.Errorf("/data/sub mode %v, want the host's drwxr-x---", sub.Mode)
	}
	etc, _ := im.Lookup("/etc")
	if etc == nil || etc.Mode != fs.ModeDir|0o755 {
		t.Errorf("made-up parent /etc = %+v", etc)
	}
}

func TestBuildErrors(t *testing.T) {
	needHostFiles(t, sha256sum)
	dir := t.TempDir()
	text := filepath.Join(dir, "script.txt")
	os.WriteFile(text, []byte("#!/bin/sh\necho not an ELF\n"), 0o755)
	tiny := filepath.Join(dir, "tiny")
	os.WriteFile(tiny, []byte("\x7fEL"), 0o755)

	// A copy of sha256sum whose DT_NEEDED names a library that exists nowhere.
	orig, err := os.ReadFile(sha256sum)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(orig, []byte("libc.so.6\x00")) != 1 {
		t.Skip("sha256sum does not name libc.so.6 exactly once")
	}
	broken := filepath.Join(dir, "broken")
	os.WriteFile(broken, bytes.Replace(orig, []byte("libc.so.6\x00"), []byte("libq.so.6\x00"), 1), 0o755)

	tests := []struct {
		name  string
		cfg   BuildConfig
		check func(error) bool
		want  string
	}{
		{"missing program", BuildConfig{Programs: []string{filepath.Join(dir, "nope")}},
			func(err error) bool { return errors.Is(err, fs.ErrNotExist) }, "not found"},
		{"not ELF", BuildConfig{Programs: []string{text}},
			func(err error) bool { return errors.Is(err, ErrNotELF) }, "script.txt"},
		{"tiny file", BuildConfig{Programs: []string{tiny}},
			func(err error) bool { return errors.Is(err, ErrNotELF) }, "tiny"},
		{"directory as program", BuildConfig{Programs: []string{dir}},
			func(err error) bool { return errors.Is(err, ErrNotELF) }, dir},
		{"missing library", BuildConfig{Programs: []string{broken}},
			func(err error) bool {
				var ml *MissingLibraryError
				return errors.As(err, &ml) && ml.Library == "libq.so.6" && ml.NeededBy == broken
			}, "library libq.so.6 needed by " + broken},
		{"file over program dir", BuildConfig{Programs: []string{sha256sum}, Files: []FileSpec{{HostPath: text, GuestPath: "/usr/bin"}}},
			func(err error) bool { return errors.Is(err, ErrConflict) }, "/usr/bin"},
		{"file under symlink", BuildConfig{Programs: []string{sha256sum}, Files: []FileSpec{{HostPath: text, GuestPath: "/lib64/x"}}},
			func(err error) bool { return errors.Is(err, ErrConflict) }, "/lib64"},
		{"relative guest path", BuildConfig{Files: []FileSpec{{HostPath: text, GuestPath: "etc/x"}}},
			func(err error) bool { return err != nil }, "not absolute"},
		{"unclean guest path", BuildConfig{Files: []FileSpec{{HostPath: text, GuestPath: "/etc/../x"}}},
			func(err error) bool { return err != nil }, "not absolute and clean"},
		{"missing file", BuildConfig{Files: []FileSpec{{HostPath: filepath.Join(dir, "gone")}}},
			func(err error) bool { return errors.Is(err, fs.ErrNotExist) }, "gone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			_, err := Build(&buf, tt.cfg)
			if err == nil || !tt.check(err) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build error %v, want one containing %q", err, tt.want)
			}
		})
	}

	out := filepath.Join(dir, "out.img")
	if _, err := BuildFile(out, tests[0].cfg); err == nil {
		t.Fatal("BuildFile succeeded")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".out.img") || e.Name() == "out.img" {
			t.Errorf("failed BuildFile left %s behind", e.Name())
		}
	}
}

// TestBuildHidden checks that Build refuses what BuildConfig.Hidden mounts over: a
// program at a hidden path, a program whose path leads there through a symlink, a file or
// tree added at or under a hidden directory; and that it accepts an empty directory at a
// mount point and everything else, and everything when Hidden is nil.
func TestBuildHidden(t *testing.T) {
	needHostFiles(t, busybox)
	dir := t.TempDir()
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	hid := filepath.Join(dir, "h") // the test's own hidden directory on the host
	for _, d := range []string{hid, filepath.Join(dir, "empty"), filepath.Join(dir, "tree", "hide")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	prog := filepath.Join(hid, "prog")
	os.WriteFile(prog, bb, 0o755)
	os.Symlink(prog, filepath.Join(dir, "link"))
	text := filepath.Join(dir, "note.txt")
	os.WriteFile(text, []byte("note\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "tree", "hide", "x"), []byte("x"), 0o644)
	hidden := []string{"/hide", hid}

	tests := []struct {
		name        string
		cfg         BuildConfig
		path, mount string // of the HiddenPathError; "" for success
		want        string // in the message
	}{
		{"program", BuildConfig{Programs: []string{prog}}, prog, hid, "program " + prog + ": guest path " + prog + " is hidden by the micro VM's " + hid + " mount"},
		{"program through a symlink", BuildConfig{Programs: []string{filepath.Join(dir, "link")}}, prog, hid, "program " + filepath.Join(dir, "link")},
		{"file under", BuildConfig{Files: []FileSpec{{HostPath: text, GuestPath: "/hide/note.txt"}}}, "/hide/note.txt", "/hide", "add " + text + ": guest path /hide/note.txt"},
		{"file at", BuildConfig{Files: []FileSpec{{HostPath: text, GuestPath: "/hide"}}}, "/hide", "/hide", "guest path /hide is hidden"},
		{"tree at", BuildConfig{Files: []FileSpec{{HostPath: filepath.Join(dir, "tree"), GuestPath: "/hide"}}}, "/hide/hide", "/hide", "add " + filepath.Join(dir, "tree")},
		{"tree holding it", BuildConfig{Files: []FileSpec{{HostPath: filepath.Join(dir, "tree"), GuestPath: "/"}}}, "/hide/x", "/hide", "guest path /hide/x"},
		{"empty directory at", BuildConfig{Files: []FileSpec{{HostPath: filepath.Join(dir, "empty"), GuestPath: "/hide"}}}, "", "", ""},
		{"elsewhere", BuildConfig{Files: []FileSpec{{HostPath: prog, GuestPath: "/usr/local/bin/prog"}, {HostPath: text, GuestPath: "/hidenot/x"}}}, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Hidden = hidden
			_, err := Build(io.Discard, cfg)
			var he *HiddenPathError
			switch {
			case tt.path == "" && err != nil:
				t.Errorf("Build: %v", err)
			case tt.path != "" && (!errors.As(err, &he) || he.Path != tt.path || he.Mount != tt.mount || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Build error %v, want a HiddenPathError for %s under %s containing %q", err, tt.path, tt.mount, tt.want)
			}
			if _, err := Build(io.Discard, tt.cfg); err != nil {
				t.Errorf("without Hidden: %v", err)
			}
		})
	}
}

// rawEntry is an index record written field by field, for crafting invalid images.
type rawEntry struct {
	mode   uint32
	path   string
	size   uint64
	mtime  int64
	off    uint64
	sum    [32]byte
	target string
	extra  string // bytes appended after path and target
}

type rawImage struct {
	entries []rawEntry
	data    []byte         // the data section, from the data offset
	fixHdr  func(h []byte) // edits the header before its checksum is computed
	fixImg  func(b []byte) // edits the encoded image
}

// encode lays out r with a correct header checksum, so the structural checks are reached.
func (r rawImage) encode() []byte {
	le := binary.LittleEndian
	var index []byte
	for _, e := range r.entries {
		var rec [recordSize]byte
		le.PutUint32(rec[0:], e.mode)
		le.PutUint32(rec[4:], uint32(len(e.path)))
		le.PutUint64(rec[8:], e.size)
		le.PutUint64(rec[16:], uint64(e.mtime))
		le.PutUint64(rec[24:], e.off)
		copy(rec[32:], e.sum[:])
		index = append(index, rec[:]...)
		index = append(index, e.path+e.target+e.extra...)
	}
	hdr := make([]byte, headerSize)
	copy(hdr, magic)
	le.PutUint32(hdr[8:], formatVersion)
	le.PutUint64(hdr[16:], uint64(len(r.entries)))
	le.PutUint64(hdr[24:], headerSize)
	le.PutUint64(hdr[32:], uint64(len(index)))
	dataOff := pageUp(int64(headerSize + len(index)))
	le.PutUint64(hdr[40:], uint64(dataOff))
	le.PutUint64(hdr[48:], uint64(len(r.data)))
	if r.fixHdr != nil {
		r.fixHdr(hdr)
	}
	h := sha256.New()
	h.Write(hdr[:hdrSumOff])
	h.Write(index)
	h.Sum(hdr[hdrSumOff:hdrSumOff])
	out := append(hdr, index...)
	out = append(out, make([]byte, dataOff-int64(len(out)))...)
	out = append(out, r.data...)
	if r.fixImg != nil {
		r.fixImg(out)
	}
	return out
}

// validRaw returns a correct small image: /, /d, /d/f (content "abc"), /d/l -> f, /e (content
// "xy", in the next page).
func validRaw() rawImage {
	data := append([]byte("abc"), make([]byte, PageSize-3)...)
	data = append(data, "xy"...)
	return rawImage{data: data, entries: []rawEntry{
		{mode: sIFDIR | 0o755, path: "/"},
		{mode: sIFDIR | 0o755, path: "/d"},
		{mode: sIFREG | 0o644, path: "/d/f", size: 3, sum: sha256.Sum256([]byte("abc"))},
		{mode: sIFLNK | 0o777, path: "/d/l", size: 1, target: "f"},
		{mode: sIFREG | 0o600, path: "/e", size: 2, sum: sha256.Sum256([]byte("xy"))},
	}}
}

// fixOffsets sets the offsets of the regular files as the format wants them.
func (r rawImage) fixOffsets() rawImage {
	var n int
	for _, e := range r.entries {
		n += recordSize + len(e.path) + len(e.target) + len(e.extra)
	}
	end := pageUp(int64(headerSize + n))
	for i := range r.entries {
		if r.entries[i].mode&sIFMT == sIFREG {
			r.entries[i].off = uint64(pageUp(end))
			end = int64(r.entries[i].off + r.entries[i].size)
		}
	}
	return r
}

func TestLoadValidRaw(t *testing.T) {
	b := validRaw().fixOffsets().encode()
	im, err := Load(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	f, _ := im.Lookup("/d/f")
	e, _ := im.Lookup("/e")
	if string(readEntry(t, im, f)) != "abc" || string(readEntry(t, im, e)) != "xy" || e.Mode != 0o600 {
		t.Errorf("contents %q %q mode %v", readEntry(t, im, f), readEntry(t, im, e), e.Mode)
	}
}

func TestLoadRejectsBadStructure(t *testing.T) {
	edit := func(f func(r *rawImage)) []byte {
		r := validRaw()
		r.entries = slices.Clone(r.entries)
		f(&r)
		return r.fixOffsets().encode()
	}
	le := binary.LittleEndian
	tests := []struct {
		name string
		img  []byte
		msg  string
	}{
		{"duplicate path", edit(func(r *rawImage) {
			r.entries[4].path = "/d"
			r.entries[4].mode = sIFDIR | 0o755
			r.entries[4].size = 0
			r.entries[4].sum = [32]byte{}
			r.data = r.data[:3]
		}), "unsorted or duplicate"},
		{"unsorted", edit(func(r *rawImage) { r.entries[2], r.entries[3] = r.entries[3], r.entries[2] }), "unsorted"},
		{"missing parent", edit(func(r *rawImage) { r.entries = slices.Delete(r.entries, 1, 2) }), "parent"},
		{"parent is a file", edit(func(r *rawImage) {
			r.entries = append(r.entries, rawEntry{mode: sIFDIR | 0o755, path: "/e/x"})
		}), "parent"},
		{"parent is a symlink", edit(func(r *rawImage) {
			r.entries = slices.Insert(r.entries, 4, rawEntry{mode: sIFDIR | 0o755, path: "/d/l/x"})
		}), "parent"},
		{"root missing", edit(func(r *rawImage) { r.entries = r.entries[1:] }), "root"},
		{"root not a directory", edit(func(r *rawImage) {
			r.entries[0].mode = sIFLNK | 0o777
			r.entries[0].size = 1
			r.entries[0].target = "d"
		}), "root"},
		{"relative path", edit(func(r *rawImage) { r.entries[1].path = "d" }), "invalid path"},
		{"dotdot", edit(func(r *rawImage) { r.entries[4].path = "/d/../e" }), "invalid path"},
		{"dot", edit(func(r *rawImage) { r.entries[4].path = "/./e" }), "invalid path"},
		{"double slash", edit(func(r *rawImage) { r.entries[4].path = "//e" }), "invalid path"},
		{"trailing slash", edit(func(r *rawImage) { r.entries[1].path = "/d/" }), "invalid path"},
		{"NUL in path", edit(func(r *rawImage) { r.entries[4].path = "/e\x00x" }), "invalid path"},
		{"long component", edit(func(r *rawImage) { r.entries[4].path = "/" + strings.Repeat("e", 256) }), "invalid path"},
		{"empty path", edit(func(r *rawImage) { r.entries[4].path = "" }), "path length"},
		{"NUL in target", edit(func(r *rawImage) { r.entries[3].target = "f\x00"; r.entries[3].size = 2 }), "NUL"},
		{"empty target", edit(func(r *rawImage) { r.entries[3].target = ""; r.entries[3].size = 0 }), "target length"},
		{"huge target length", edit(func(r *rawImage) { r.entries[3].size = 1 << 40 }), "target length"},
		{"directory with size", edit(func(r *rawImage) { r.entries[1].size = 3 }), "directory with size"},
		{"symlink with checksum", edit(func(r *rawImage) { r.entries[3].sum[0] = 1 }), "symlink with offset"},
		{"fifo", edit(func(r *rawImage) { r.entries[4].mode = 0o010644 }), "bad mode"},
		{"unknown mode bits", edit(func(r *rawImage) { r.entries[4].mode |= 1 << 20 }), "bad mode"},
		{"trailing index bytes", edit(func(r *rawImage) { r.entries[4].extra = "junk" }), "trailing"},
		{"file beyond end", edit(func(r *rawImage) { r.entries[4].size = 3 }), "beyond end"},
		{"data after last file", edit(func(r *rawImage) { r.data = append(r.data, 'z') }), "file contents end"},
		{"content checksum", edit(func(r *rawImage) { r.data = slices.Clone(r.data); r.data[2] = 'd' }), "checksum"},
		{"padding after a file", edit(func(r *rawImage) { r.data = slices.Clone(r.data); r.data[PageSize-1] = 1 }), "padding"},
		{"padding after the index", func() []byte {
			r := validRaw().fixOffsets()
			r.fixImg = func(b []byte) { b[r.entries[2].off-1] = 1 }
			return r.encode()
		}(), "padding"},
		{"file not page-aligned", func() []byte {
			r := validRaw().fixOffsets()
			r.entries[4].off -= 2
			r.data = append(r.data[:PageSize-2], "xy"...)
			return r.encode()
		}(), "content offset"},
		{"file a page late", func() []byte {
			r := validRaw().fixOffsets()
			r.entries[4].off += PageSize
			r.data = append(append(slices.Clone(r.data[:PageSize]), make([]byte, PageSize)...), "xy"...)
			return r.encode()
		}(), "content offset"},
		{"overlapping file", func() []byte {
			r := validRaw().fixOffsets()
			r.entries[4].off -= 1
			return r.encode()
		}(), "content offset"},
		{"gap between files", func() []byte {
			r := validRaw().fixOffsets()
			r.entries[4].off += 1
			return r.encode()
		}(), "content offset"},
		{"count too large", edit(func(r *rawImage) {
			r.fixHdr = func(h []byte) { le.PutUint64(h[16:], 1<<50) }
		}), "entry count"},
		{"count too small", edit(func(r *rawImage) {
			r.fixHdr = func(h []byte) { le.PutUint64(h[16:], 4) }
		}), "trailing"},
		{"count zero", edit(func(r *rawImage) {
			r.fixHdr = func(h []byte) { le.PutUint64(h[16:], 0) }
		}), "entry count"},
		{"index length huge", edit(func(r *rawImage) {
			r.fixHdr = func(h []byte) { le.PutUint64(h[32:], 1<<62) }
		}), "index length"},
		{"index offset", edit(func(r *rawImage) {
			r.fixHdr = func(h []byte) { le.PutUint64(h[24:], 64) }
		}), "index offset"},
		{"data offset", edit(func(r *rawImage) {
			r.fixHdr = func(h []byte) { le.PutUint64(h[40:], le.Uint64(h[40:])+1) }
		}), "data offset"},
		{"data length", edit(func(r *rawImage) {
			r.fixHdr = func(h []byte) { le.PutUint64(h[48:], 1<<63) }
		}), "data length"},
		{"version", edit(func(r *rawImage) { r.fixHdr = func(h []byte) { h[8] = 3 } }), "version"},
		{"flags", edit(func(r *rawImage) { r.fixHdr = func(h []byte) { h[12] = 1 } }), "flags"},
		{"reserved", edit(func(r *rawImage) { r.fixHdr = func(h []byte) { h[70] = 1 } }), "reserved"},
		{"magic", edit(func(r *rawImage) { r.fixHdr = func(h []byte) { h[0] = 'X' } }), "magic"},
		{"empty file", nil, "too short"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			im, err := Load(bytes.NewReader(tt.img), int64(len(tt.img)))
			var fe *FormatError
			if !errors.Is(err, ErrCorrupt) || !errors.As(err, &fe) {
				t.Fatalf("Load = %v, %v; want a *FormatError wrapping ErrCorrupt", im, err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not mention %q", err, tt.msg)
			}
		})
	}
}

// tamperImage is a small real image: busybox is too big to flip every byte of.
func tamperImage(t testing.TB) []byte {
	t.Helper()
	b, _ := buildBytes(t, BuildConfig{Files: smallTree(t)})
	return b
}

func TestTamper(t *testing.T) {
	orig := tamperImage(t)
	if _, err := Load(bytes.NewReader(orig), int64(len(orig))); err != nil {
		t.Fatalf("untampered image: %v", err)
	}
	indexLen := int(binary.LittleEndian.Uint64(orig[32:]))
	dataOff := headerSize + indexLen // the padding after the index counts as data here
	check := func(what string, img []byte) {
		t.Helper()
		_, err := Load(bytes.NewReader(img), int64(len(img)))
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Load error %v, want ErrCorrupt", what, err)
		}
	}
	// Every bit of the header and the index, and bytes all over the data.
	for off := range dataOff {
		for bit := range 8 {
			img := slices.Clone(orig)
			img[off] ^= 1 << bit
			check(fmt.Sprintf("bit %d of byte %d", bit, off), img)
		}
	}
	for off := dataOff; off < len(orig); off += 1 + (len(orig)-dataOff)/200 {
		img := slices.Clone(orig)
		img[off] ^= 0x40
		check(fmt.Sprintf("data byte %d", off), img)
	}
	img := slices.Clone(orig)
	img[len(img)-1] ^= 0x01
	check("last byte", img)
	// Truncation anywhere, and extra bytes.
	for n := 0; n < len(orig); n += 1 + n/4 {
		check(fmt.Sprintf("truncated to %d", n), orig[:n])
	}
	check("truncated by one", orig[:len(orig)-1])
	check("one byte appended", append(slices.Clone(orig), 0))

	// The same through Open on a tampered file.
	name := filepath.Join(t.TempDir(), "bad.img")
	img = slices.Clone(orig)
	img[dataOff+1] ^= 0xff
	os.WriteFile(name, img, 0o644)
	if _, err := Open(name); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), name) {
		t.Errorf("Open(tampered) = %v, want ErrCorrupt naming the file", err)
	}
}

// errReaderAt fails every read with err.
type errReaderAt struct{ err error }

func (r errReaderAt) ReadAt([]byte, int64) (int, error) { return 0, r.err }

// eofReaderAt returns io.EOF with the last bytes of its input, as io.ReaderAt allows.
type eofReaderAt struct{ b []byte }

func (r eofReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(r.b)) {
		return 0, io.EOF
	}
	n := copy(p, r.b[off:])
	if off+int64(n) == int64(len(r.b)) {
		return n, io.EOF
	}
	return n, nil
}

func TestLoadEOFAtEnd(t *testing.T) {
	// An image of directories only ends with the padding after its index.
	img, _ := buildBytes(t, BuildConfig{Files: []FileSpec{{HostPath: t.TempDir(), GuestPath: "/empty"}}})
	im, err := Load(eofReaderAt{img}, int64(len(img)))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if e, err := im.Lookup("/empty"); err != nil || !e.IsDir() {
		t.Errorf("Lookup(/empty) = %+v, %v", e, err)
	}
}

func TestLoadReadError(t *testing.T) {
	eio := errors.New("input/output error")
	_, err := Load(errReaderAt{eio}, 1<<20)
	if !errors.Is(err, eio) || errors.Is(err, ErrCorrupt) {
		t.Errorf("Load error %v, want the read error and not ErrCorrupt", err)
	}
	if _, err := Open(t.TempDir()); err == nil {
		t.Error("Open(directory) succeeded")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open(missing) error %v, want fs.ErrNotExist", err)
	}
}

func FuzzLoad(f *testing.F) {
	// Only small seeds: the fuzzer minimizes every new interesting input for up to a minute
	// with an algorithm quadratic in its size, and the padding of a real image makes it
	// pages long. So the seeds are packed (see unpack) images of at most one file.
	f.Add([]byte(magic))
	f.Add(validRaw1().fixOffsets().encode()[:headerSize])
	f.Add(pack(validRaw1().fixOffsets().encode()))
	dirsOnly, _ := buildBytes(f, BuildConfig{Files: []FileSpec{{HostPath: f.TempDir(), GuestPath: "/empty"}}})
	f.Add(pack(dirsOnly))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkLoad(t, b)
		// Most mutations only break the header checksum; fix it up so the fuzzer also
		// explores the structural checks behind it.
		if fixed, ok := fixSum(b); ok {
			checkLoad(t, fixed)
		}
		// Read b also as a packed image, without the padding after the index.
		if padded, ok := unpack(b); ok {
			checkLoad(t, padded)
		}
	})
}

// validRaw1 is validRaw without its second file, so that its data is one page.
func validRaw1() rawImage {
	r := validRaw()
	r.entries = r.entries[:4]
	r.data = r.data[:3]
	return r
}

// fixSum returns b with the header checksum recomputed, if the index length is in range.
func fixSum(b []byte) ([]byte, bool) {
	if len(b) < headerSize {
		return nil, false
	}
	n := binary.LittleEndian.Uint64(b[32:])
	if n > uint64(len(b)-headerSize) {
		return nil, false
	}
	b = slices.Clone(b)
	h := sha256.New()
	h.Write(b[:hdrSumOff])
	h.Write(b[headerSize : headerSize+int(n)])
	h.Sum(b[hdrSumOff:hdrSumOff])
	return b, true
}

// pack removes the padding between the index and the data of image b, keeping the header.
func pack(b []byte) []byte {
	end := headerSize + int(binary.LittleEndian.Uint64(b[32:]))
	dataOff := int(binary.LittleEndian.Uint64(b[40:]))
	return append(slices.Clone(b[:end]), b[dataOff:]...)
}

// unpack inserts zero padding after the index of a packed image, sets the data offset and
// length for it and fixes the header checksum.
func unpack(b []byte) ([]byte, bool) {
	if len(b) < headerSize {
		return nil, false
	}
	n := binary.LittleEndian.Uint64(b[32:])
	if n > uint64(len(b)-headerSize) {
		return nil, false
	}
	end := headerSize + int(n)
	dataOff := int(pageUp(int64(end)))
	out := make([]byte, 0, dataOff+len(b)-end)
	out = append(out, b[:end]...)
	out = append(out, make([]byte, dataOff-end)...)
	out = append(out, b[end:]...)
	binary.LittleEndian.PutUint64(out[40:], uint64(dataOff))
	binary.LittleEndian.PutUint64(out[48:], uint64(len(b)-end))
	return fixSum(out)
}

// checkLoad loads b and checks that it either fails with ErrCorrupt or yields a
// self-consistent image.
func checkLoad(t *testing.T, b []byte) {
	im, err := Load(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrOldFormat) {
			t.Fatalf("error not wrapping ErrCorrupt: %v", err)
		}
		return
	}
	// Whatever loads must be self-consistent.
	n := 0
	err = im.Walk(func(e *Entry) error {
		n++
		if !validPath(e.Path) {
			return fmt.Errorf("invalid path %q", e.Path)
		}
		if got, err := im.Lookup(e.Path); err != nil || got != e {
			return fmt.Errorf("Lookup(%q) = %v, %v", e.Path, got, err)
		}
		switch {
		case e.IsDir():
			if _, err := im.ReadDir(e.Path); err != nil {
				return err
			}
		case e.IsSymlink():
			if e.Target == "" || int64(len(e.Target)) != e.Size {
				return fmt.Errorf("%s: bad symlink", e.Path)
			}
		default:
			r, err := im.Open(e)
			if err != nil {
				return err
			}
			got, err := io.ReadAll(r)
			if err != nil || int64(len(got)) != e.Size {
				return fmt.Errorf("%s: read %d of %d bytes: %v", e.Path, len(got), e.Size, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != im.Len() || n == 0 {
		t.Fatalf("walked %d of %d entries", n, im.Len())
	}
}

func BenchmarkLoad(b *testing.B) {
	needHostFiles(b, busybox, sha256sum)
	img, _ := buildBytes(b, BuildConfig{Programs: []string{busybox, sha256sum}})
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		if _, err := Load(bytes.NewReader(img), int64(len(img))); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	needHostFiles(b, busybox, sha256sum)
	img, _ := buildBytes(b, BuildConfig{Programs: []string{busybox, sha256sum}})
	im, err := Load(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := im.Lookup("/usr/lib/x86_64-linux-gnu/libc.so.6"); err != nil {
			b.Fatal(err)
		}
	}
}

// failWriter accepts n bytes, then fails.
type failWriter struct{ n int }

var errDiskFull = errors.New("no space left on device")

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		k := w.n
		w.n = 0
		return k, errDiskFull
	}
	w.n -= len(p)
	return len(p), nil
}

func TestBuildWriteError(t *testing.T) {
	cfg := BuildConfig{Files: smallTree(t)}
	full, _ := buildBytes(t, cfg)
	for _, n := range []int{0, 100, headerSize + 10, len(full) - 1} {
		if _, err := Build(&failWriter{n: n}, cfg); !errors.Is(err, errDiskFull) {
			t.Errorf("write failing after %d bytes: Build error %v, want %v", n, err, errDiskFull)
		}
	}
	if _, err := Build(&failWriter{n: len(full)}, cfg); err != nil {
		t.Errorf("Build into a writer with exactly enough room: %v", err)
	}
}

// TestOldFormat checks that a version 1 image is refused with an error that says what to
// do, and is not reported as corrupt.
func TestOldFormat(t *testing.T) {
	b := validRaw().fixOffsets().encode()
	binary.LittleEndian.PutUint32(b[8:], oldFormatVersion)
	_, err := Load(bytes.NewReader(b), int64(len(b)))
	if !errors.Is(err, ErrOldFormat) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("Load(v1) = %v, want ErrOldFormat", err)
	}
	name := filepath.Join(t.TempDir(), "old.img")
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Open(name)
	if !errors.Is(err, ErrOldFormat) || !strings.Contains(err.Error(), name) ||
		!strings.Contains(err.Error(), "image format version 1: rebuild with isoctl image build") {
		t.Errorf("Open(v1) = %v, want ErrOldFormat naming the file", err)
	}
	if err := CheckFormat(name); !errors.Is(err, ErrOldFormat) || !strings.Contains(err.Error(), name) {
		t.Errorf("CheckFormat(v1) = %v, want ErrOldFormat naming the file", err)
	}
	good := filepath.Join(t.TempDir(), "new.img")
	if _, err := BuildFile(good, BuildConfig{Files: smallTree(t)}); err != nil {
		t.Fatal(err)
	}
	if err := CheckFormat(good); err != nil {
		t.Errorf("CheckFormat(current) = %v", err)
	}
	binary.LittleEndian.PutUint32(b[8:], 7)
	os.WriteFile(name, b, 0o644)
	if err := CheckFormat(name); !errors.Is(err, ErrCorrupt) {
		t.Errorf("CheckFormat(version 7) = %v, want ErrCorrupt", err)
	}
	os.WriteFile(name, b[:5], 0o644)
	if err := CheckFormat(name); !errors.Is(err, ErrCorrupt) {
		t.Errorf("CheckFormat(5 bytes) = %v, want ErrCorrupt", err)
	}
	if err := CheckFormat(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CheckFormat(missing) = %v, want fs.ErrNotExist", err)
	}
}

// TestExtent checks that every regular file's content starts at a page boundary of the image
// file, is followed by zeros up to the end of its last page, and reads back through a private
// mapping of the image file.
func TestExtent(t *testing.T) {
	dir := t.TempDir()
	sizes := []int{0, 1, PageSize - 1, PageSize, PageSize + 1, 3*PageSize + 17, 0}
	var specs []FileSpec
	want := map[string][]byte{}
	var total int64
	for i, n := range sizes {
		total += int64(n)
		b := bytes.Repeat([]byte{byte('a' + i)}, n)
		host := filepath.Join(dir, fmt.Sprintf("f%d", i))
		if err := os.WriteFile(host, b, 0o644); err != nil {
			t.Fatal(err)
		}
		guest := fmt.Sprintf("/f%d", i)
		specs = append(specs, FileSpec{HostPath: host, GuestPath: guest})
		want[guest] = b
	}
	im, rep := buildImage(t, BuildConfig{Files: specs})
	if rep.Bytes != im.Size() || rep.DataBytes != total {
		t.Errorf("report: %d bytes (image %d), %d data bytes", rep.Bytes, im.Size(), rep.DataBytes)
	}
	for guest, content := range want {
		e, err := im.Lookup(guest)
		if err != nil {
			t.Fatal(err)
		}
		f, off, size, ok := im.Extent(e)
		if !ok || off%PageSize != 0 || size != int64(len(content)) || off+size > im.Size() {
			t.Fatalf("Extent(%s) = %v, %d, %d, %v", guest, f, off, size, ok)
		}
		if size == 0 {
			continue
		}
		length := int(pageUp(size))
		m, err := unix.Mmap(int(f.Fd()), off, length, unix.PROT_READ, unix.MAP_PRIVATE)
		if err != nil {
			t.Fatalf("mmap %s: %v", guest, err)
		}
		if !bytes.Equal(m[:size], content) || !bytes.Equal(m[size:], make([]byte, length-int(size))) {
			t.Errorf("%s: mapped content or the rest of its last page differs", guest)
		}
		unix.Munmap(m)
	}
	// Not for directories, symlinks, forged entries or images not read from a file.
	root, _ := im.Lookup("/")
	hello, _ := im.Lookup("/f1")
	forged := *hello
	forged.Ino++
	for _, e := range []*Entry{nil, root, &forged, {Path: "/f1"}} {
		if _, _, _, ok := im.Extent(e); ok {
			t.Errorf("Extent(%+v) ok", e)
		}
	}
	b, _ := buildBytes(t, BuildConfig{Files: specs})
	mem, err := Load(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := mem.Lookup("/f1"); e != nil {
		if _, _, _, ok := mem.Extent(e); ok {
			t.Error("Extent of an image loaded from memory ok")
		}
	}
}

// TestPackUnpack checks the fuzz helpers: unpacking a packed image gives it back.
func TestPackUnpack(t *testing.T) {
	for _, b := range [][]byte{validRaw1().fixOffsets().encode(), tamperImage(t)} {
		got, ok := unpack(pack(b))
		if !ok || !bytes.Equal(got, b) {
			t.Errorf("unpack(pack(image)) differs from the image")
		}
		if _, err := Load(bytes.NewReader(got), int64(len(got))); err != nil {
			t.Error(err)
		}
	}
}
