package guestfs

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestScratchBytesLimit(t *testing.T) {
	f := newTestFS(t, func(c *Config) { c.ScratchBytes = 1000 })
	a, err := f.Open("/", "/tmp/a", unix.O_RDWR|unix.O_CREAT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if n, err := a.Write(make([]byte, 600)); n != 600 || err != nil {
		t.Fatalf("write 600 = %d, %v", n, err)
	}
	b, err := f.Open("/", "/output/b", unix.O_RDWR|unix.O_CREAT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// Only 400 bytes are left across all trees: a short write, then ENOSPC.
	if n, err := b.Write(make([]byte, 500)); n != 400 || err != nil {
		t.Fatalf("write 500 with 400 left = %d, %v; want 400, nil", n, err)
	}
	if n, err := b.Write([]byte("x")); n != 0 || errnoOf(t, err) != unix.ENOSPC {
		t.Fatalf("write when full = %d, %v; want ENOSPC", n, err)
	}
	if _, err := b.WriteAt([]byte("x"), 5000); errnoOf(t, err) != unix.ENOSPC {
		t.Errorf("pwrite far past the end = %v, want ENOSPC", err)
	}
	if err := b.Truncate(401); errnoOf(t, err) != unix.ENOSPC {
		t.Errorf("ftruncate past the limit = %v, want ENOSPC", err)
	}
	if err := f.Symlink(strings.Repeat("x", 10), "/", "/work/l"); errnoOf(t, err) != unix.ENOSPC {
		t.Errorf("symlink when full = %v, want ENOSPC", err)
	}
	// Overwriting in place needs no space.
	if n, err := a.WriteAt([]byte("hello"), 0); n != 5 || err != nil {
		t.Errorf("overwrite = %d, %v", n, err)
	}
	if used, _ := f.Usage(); used != 1000 {
		t.Errorf("usage = %d, want 1000", used)
	}
	// An unlinked file that is still open keeps its bytes until closed.
	if err := f.Unlink("/", "/tmp/a", false); err != nil {
		t.Fatal(err)
	}
	if used, _ := f.Usage(); used != 1000 {
		t.Errorf("usage after unlink of an open file = %d, want 1000", used)
	}
	if _, err := a.Write([]byte("more")); errnoOf(t, err) != unix.ENOSPC {
		t.Errorf("write to unlinked open file when full = %v, want ENOSPC", err)
	}
	buf := make([]byte, 5)
	if n, err := a.ReadAt(buf, 0); n != 5 || err != nil || string(buf) != "hello" {
		t.Errorf("read unlinked open file = %q, %v", buf[:n], err)
	}
	if st, err := a.Stat(); err != nil || st.Nlink != 0 || st.Size != 600 {
		t.Errorf("fstat unlinked = %+v, %v; want nlink 0 size 600", st, err)
	}
	a.Close()
	if used, _ := f.Usage(); used != 400 {
		t.Errorf("usage after close = %d, want 400", used)
	}
	if err := b.Truncate(100); err != nil {
		t.Fatal(err)
	}
	if used, _ := f.Usage(); used != 100 {
		t.Errorf("usage after truncate = %d, want 100", used)
	}
	// Growing by truncate reads back zeros, even over previously written bytes.
	if err := b.Truncate(300); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 300)
	if n, _ := b.ReadAt(got, 0); n != 300 || !bytes.Equal(got[100:], make([]byte, 200)) {
		t.Errorf("bytes past the old end are not zero")
	}
}

func TestMaxFiles(t *testing.T) {
	f := newTestFS(t, func(c *Config) { c.MaxFiles = 5 })
	for i, p := range []string{"/tmp/a", "/work/b", "/output/c"} {
		writeFile(t, f, p, "x")
		if _, n := f.Usage(); n != i+1 {
			t.Errorf("files after %s = %d, want %d", p, n, i+1)
		}
	}
	if err := f.Mkdir("/", "/tmp/d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := f.Link("/", "/tmp/a", "/", "/tmp/d/hard", false); err != nil {
		t.Fatal(err)
	}
	for _, op := range []struct {
		name string
		err  error
	}{
		{"create", func() error { _, err := f.Open("/", "/tmp/e", unix.O_CREAT|unix.O_WRONLY, 0o644); return err }()},
		{"mkdir", f.Mkdir("/", "/work/e", 0o755)},
		{"symlink", f.Symlink("a", "/", "/tmp/e")},
		{"link", f.Link("/", "/tmp/a", "/", "/tmp/e", false)},
	} {
		if errnoOf(t, op.err) != unix.ENOSPC {
			t.Errorf("%s past MaxFiles = %v, want ENOSPC", op.name, op.err)
		}
	}
	// Replacing by rename takes no entry.
	if err := f.Rename("/", "/tmp/a", "/", "/tmp/d/hard"); err != nil {
		t.Fatalf("rename over a hard link of itself: %v", err)
	}
	if err := f.Unlink("/", "/tmp/d/hard", false); err != nil {
		t.Fatal(err)
	}
	if err := f.Mkdir("/", "/work/e", 0o755); err != nil {
		t.Errorf("mkdir after unlink = %v", err)
	}
}

func TestOpenFlags(t *testing.T) {
	f := newTestFS(t, nil)
	writeFile(t, f, "/work/f", "0123456789")

	// O_APPEND writes at the end whatever the offset, pwrite included.
	fl, err := f.Open("/work", "f", unix.O_RDWR|unix.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fl.Seek(2, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	fl.Write([]byte("ab"))
	fl.WriteAt([]byte("cd"), 0)
	fl.SetFlags(fl.Flags() &^ unix.O_APPEND)
	if fl.Flags()&unix.O_APPEND != 0 || fl.Flags()&unix.O_ACCMODE != unix.O_RDWR {
		t.Errorf("flags = %#x after clearing O_APPEND", fl.Flags())
	}
	fl.WriteAt([]byte("X"), 0)
	if pos, _ := fl.Seek(0, io.SeekCurrent); pos != 12 {
		t.Errorf("offset after append = %d, want 12", pos)
	}
	if pos, err := fl.Seek(-4, io.SeekEnd); pos != 10 || err != nil {
		t.Errorf("SEEK_END -4 = %d, %v", pos, err)
	}
	if _, err := fl.Seek(-100, io.SeekCurrent); errnoOf(t, err) != unix.EINVAL {
		t.Errorf("seek before start = %v, want EINVAL", err)
	}
	if _, err := fl.Seek(20, unix.SEEK_DATA); errnoOf(t, err) != unix.ENXIO {
		t.Errorf("SEEK_DATA past end = %v, want ENXIO", err)
	}
	if pos, _ := fl.Seek(3, unix.SEEK_HOLE); pos != 14 {
		t.Errorf("SEEK_HOLE = %d, want 14", pos)
	}
	fl.Close()
	if got, _ := readAll(t, f, "/work/f"); got != "X123456789abcd" {
		t.Errorf("contents = %q", got)
	}
	if err := fl.Close(); errnoOf(t, err) != unix.EBADF {
		t.Errorf("second close = %v, want EBADF", err)
	}

	tests := []struct {
		path  string
		flags int
		errno unix.Errno
	}{
		{"/etc/passwd", unix.O_WRONLY, unix.EROFS},
		{"/etc/passwd", unix.O_RDONLY | unix.O_TRUNC, unix.EROFS},
		{"/etc/newfile", unix.O_CREAT | unix.O_WRONLY, unix.EROFS},
		{"/etc/passwd", unix.O_CREAT | unix.O_RDONLY, 0},
		{"/etc/passwd", unix.O_CREAT | unix.O_EXCL, unix.EEXIST},
		{"/input/in.txt", unix.O_RDWR, unix.EROFS},
		{"/input/new", unix.O_CREAT | unix.O_RDWR, unix.EROFS},
		{"/etc", unix.O_RDWR, unix.EISDIR},
		{"/", unix.O_WRONLY, unix.EISDIR},
		{"/proc/self/cmdline", unix.O_WRONLY, unix.EACCES},
		{"/proc/self/new", unix.O_CREAT | unix.O_WRONLY, unix.EACCES},
		{"/dev/new", unix.O_CREAT | unix.O_WRONLY, unix.EACCES},
		{"/dev/null", unix.O_RDWR | unix.O_TRUNC, 0},
		{"/data/tolink", unix.O_CREAT | unix.O_WRONLY, 0}, // creates /tmp/made-through-link
		{"/tmp/made-through-link", unix.O_RDONLY, 0},
		{"/data/abs", unix.O_RDONLY | unix.O_NOFOLLOW, unix.ELOOP},
		{"/data/abs", unix.O_PATH | unix.O_NOFOLLOW, 0},
		{"/etc/passwd", unix.O_RDONLY | unix.O_DIRECTORY, unix.ENOTDIR},
		{"/tmp", unix.O_RDONLY | unix.O_TMPFILE, unix.EOPNOTSUPP},
		{"/etc/secret", unix.O_PATH, 0},
	}
	for _, tt := range tests {
		fl, err := f.Open("/", tt.path, tt.flags, 0o644)
		if e := errnoOf(t, err); e != tt.errno {
			t.Errorf("open(%q, %#x) = %v, want %v", tt.path, tt.flags, err, tt.errno)
		}
		if err == nil {
			fl.Close()
		}
	}

	// Access modes of the file description are enforced.
	ro, _ := f.Open("/", "/work/f", unix.O_RDONLY, 0)
	defer ro.Close()
	if _, err := ro.Write([]byte("x")); errnoOf(t, err) != unix.EBADF {
		t.Errorf("write on O_RDONLY = %v, want EBADF", err)
	}
	if err := ro.Truncate(0); errnoOf(t, err) != unix.EINVAL {
		t.Errorf("ftruncate on O_RDONLY = %v, want EINVAL", err)
	}
	wo, _ := f.Open("/", "/work/f", unix.O_WRONLY, 0)
	defer wo.Close()
	if _, err := wo.Read(make([]byte, 1)); errnoOf(t, err) != unix.EBADF {
		t.Errorf("read on O_WRONLY = %v, want EBADF", err)
	}
	dir, _ := f.Open("/", "/etc", unix.O_RDONLY, 0)
	defer dir.Close()
	if _, err := dir.Read(make([]byte, 1)); errnoOf(t, err) != unix.EISDIR {
		t.Errorf("read on a directory = %v, want EISDIR", err)
	}
	p, _ := f.Open("/", "/etc/passwd", unix.O_PATH, 0)
	defer p.Close()
	if _, err := p.Read(make([]byte, 1)); errnoOf(t, err) != unix.EBADF {
		t.Errorf("read on O_PATH = %v, want EBADF", err)
	}
	if st, err := p.Stat(); err != nil || st.Size != int64(len(imagePasswd)) {
		t.Errorf("fstat on O_PATH = %+v, %v", st, err)
	}

	// Permission bits apply to the guest user.
	if err := f.Chmod("/", "/work/f", 0o200, true); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Open("/", "/work/f", unix.O_RDONLY, 0); errnoOf(t, err) != unix.EACCES {
		t.Errorf("open mode 0200 for reading = %v, want EACCES", err)
	}
	if err := f.Access("/", "/work/f", unix.W_OK); err != nil {
		t.Errorf("access W_OK on 0200 = %v", err)
	}
	if err := f.Access("/", "/work/f", unix.R_OK); errnoOf(t, err) != unix.EACCES {
		t.Errorf("access R_OK on 0200 = %v, want EACCES", err)
	}
	if err := f.Access("/", "/usr/bin/busybox", unix.X_OK|unix.R_OK); err != nil {
		t.Errorf("access X_OK busybox = %v", err)
	}
	if err := f.Access("/", "/etc/passwd", unix.W_OK); errnoOf(t, err) != unix.EROFS {
		t.Errorf("access W_OK on the image = %v, want EROFS", err)
	}
	if err := f.Chmod("/", "/etc/passwd", 0o777, true); errnoOf(t, err) != unix.EROFS {
		t.Errorf("chmod on the image = %v, want EROFS", err)
	}
	if err := f.Chmod("/", "/dev/null", 0o777, true); errnoOf(t, err) != unix.EPERM {
		t.Errorf("chmod /dev/null = %v, want EPERM", err)
	}
	if err := f.Mkdir("/", "/work/locked", 0o500); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Open("/", "/work/locked/x", unix.O_CREAT|unix.O_WRONLY, 0o644); errnoOf(t, err) != unix.EACCES {
		t.Errorf("create in a 0500 directory = %v, want EACCES", err)
	}
	if err := f.Chmod("/", "/work/locked", 0o000, true); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat("/", "/work/locked/x", true); errnoOf(t, err) != unix.EACCES {
		t.Errorf("lookup through a 0000 directory = %v, want EACCES", err)
	}
}

func TestRenameAcrossTrees(t *testing.T) {
	f := newTestFS(t, nil)
	writeFile(t, f, "/tmp/a", "a")
	if err := f.Mkdir("/", "/work/d", 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		old, new string
		errno    unix.Errno
	}{
		{"/tmp/a", "/work/a", unix.EXDEV},
		{"/tmp/a", "/output/a", unix.EXDEV},
		{"/work/d", "/tmp/d", unix.EXDEV},
		{"/etc/passwd", "/tmp/p", unix.EXDEV},
		{"/tmp/a", "/etc/a", unix.EXDEV},
		{"/etc/passwd", "/etc/p", unix.EROFS},
		{"/input/in.txt", "/input/x", unix.EROFS},
		{"/tmp", "/work/tmp", unix.EXDEV},
		{"/tmp", "/tmp2", unix.EROFS},
		{"/dev/null", "/dev/nul", unix.EACCES},
		{"/tmp/a", "/tmp/b", 0},
		{"/work/d", "/work/e", 0},
	}
	for _, tt := range tests {
		if err := f.Rename("/", tt.old, "/", tt.new); errnoOf(t, err) != tt.errno {
			t.Errorf("rename(%q, %q) = %v, want %v", tt.old, tt.new, err, tt.errno)
		}
	}
	if err := f.Link("/", "/tmp/b", "/", "/work/b", false); errnoOf(t, err) != unix.EXDEV {
		t.Errorf("link across trees = %v, want EXDEV", err)
	}
	for _, p := range []string{"/etc/passwd", "/input/in.txt"} {
		if err := f.Unlink("/", p, false); errnoOf(t, err) != unix.EROFS {
			t.Errorf("unlink %s = %v, want EROFS", p, err)
		}
	}
	if err := f.Unlink("/", "/etc/nonexistent", false); errnoOf(t, err) != unix.EROFS {
		t.Errorf("unlink of a missing image file = %v, want EROFS like Linux", err)
	}
	if err := f.Mkdir("/", "/etc", 0o755); errnoOf(t, err) != unix.EEXIST {
		t.Errorf("mkdir of an existing image dir = %v, want EEXIST", err)
	}
	if err := f.Mkdir("/", "/etc/x", 0o755); errnoOf(t, err) != unix.EROFS {
		t.Errorf("mkdir in the image = %v, want EROFS", err)
	}
	if err := f.Unlink("/", "/tmp", true); errnoOf(t, err) != unix.EROFS {
		t.Errorf("rmdir /tmp = %v, want EROFS", err)
	}
	if err := f.Truncate("/", "/etc/passwd", 0); errnoOf(t, err) != unix.EROFS {
		t.Errorf("truncate on the image = %v, want EROFS", err)
	}
	if err := f.Truncate("/", "/dev/null", 0); errnoOf(t, err) != unix.EINVAL {
		t.Errorf("truncate /dev/null = %v, want EINVAL", err)
	}
}

// TestDeepTree builds a tree deeper than PATH_MAX with relative paths, as a guest can on
// Linux, and works inside it through its canonical path.
func TestDeepTree(t *testing.T) {
	f := newTestFS(t, nil)
	name := strings.Repeat("d", 200)
	cwd := "/output"
	for range 25 {
		if err := f.Mkdir(cwd, name, 0o755); err != nil {
			t.Fatalf("mkdir in %d-byte cwd: %v", len(cwd), err)
		}
		next, err := f.ResolveDir(cwd, name)
		if err != nil {
			t.Fatal(err)
		}
		cwd = next
	}
	if len(cwd) <= PathMax {
		t.Fatalf("cwd only %d bytes", len(cwd))
	}
	fl, err := f.Open(cwd, "leaf", unix.O_CREAT|unix.O_WRONLY, 0o644)
	if err != nil {
		t.Fatalf("create in deep cwd: %v", err)
	}
	if fl.Path() != cwd+"/leaf" {
		t.Errorf("path = %.40q..., want cwd/leaf", fl.Path())
	}
	fl.Close()
	if _, err := f.Stat("/", cwd+"/leaf", true); errnoOf(t, err) != unix.ENAMETOOLONG {
		t.Errorf("absolute deep path = %v, want ENAMETOOLONG", err)
	}
	if up, err := f.ResolveDir(cwd, strings.Repeat("../", 30)); up != "/" || err != nil {
		t.Errorf("climb out = %q, %v", up, err)
	}
	if err := f.Unlink(cwd, "../"+name+"/leaf", false); err != nil {
		t.Errorf("unlink through .. = %v", err)
	}
	writeFile(t, f, "/output/top", "x")
	f.Open(cwd, "leaf2", unix.O_CREAT|unix.O_WRONLY, 0o644)
	outs, rejected := f.Outputs(0, 0)
	if len(outs) != 1 || outs[0].Name != "top" || len(rejected) != 1 || rejected[0].Reason != "path too long" {
		t.Errorf("outputs %v, rejected %d: %v", outs, len(rejected), rejected)
	}
}
