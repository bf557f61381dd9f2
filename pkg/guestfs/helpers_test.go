package guestfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/image"
)

// imagePasswd is the contents of /etc/passwd in the test image, unlike the host's.
const imagePasswd = "guest:x:1000:1000::/work:/bin/sh\n"

// buildImage builds a real image holding busybox and a small tree with symlinks that try
// to escape, and returns it opened.
func buildImage(t testing.TB) *image.Image {
	t.Helper()
	src := t.TempDir()
	write := func(rel, data string, perm os.FileMode) {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), perm); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, rel string) {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/passwd", imagePasswd, 0o644)
	write("etc/secret", "root only\n", 0o600)
	write("data/hello.txt", "hello, guest\n", 0o644)
	write("data/sub/deep.txt", "deep\n", 0o644)
	write("imgtmp/hidden", "masked by the scratch /tmp\n", 0o644)
	link("/etc/passwd", "data/abs")
	link("../etc/passwd", "data/rel")
	link("../../../../../../../../etc/passwd", "data/escape")
	link("/../../../etc/passwd", "data/absescape")
	link("/etc", "data/etcdir")
	link("loop2", "data/loop1")
	link("loop1", "data/loop2")
	link("self", "data/self")
	link("/nonexistent/file", "data/dangling")
	link("/tmp/made-through-link", "data/tolink")
	link("/", "data/root")
	link("hello.txt/", "data/slashfile")
	link("/input/in.txt", "data/toinput")

	imgPath := filepath.Join(t.TempDir(), "test.img")
	_, err := image.BuildFile(imgPath, image.BuildConfig{
		Programs: []string{"/usr/bin/busybox"},
		Files: []image.FileSpec{
			{HostPath: filepath.Join(src, "etc"), GuestPath: "/etc"},
			{HostPath: filepath.Join(src, "data"), GuestPath: "/data"},
			{HostPath: filepath.Join(src, "imgtmp"), GuestPath: "/tmp"},
		},
	})
	if err != nil {
		t.Fatalf("build image: %v", err)
	}
	im, err := image.Open(imgPath)
	if err != nil {
		t.Fatalf("open image: %v", err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

// newTestFS returns an FS on a fresh test image with one input, /input/in.txt, after
// applying edit to the config.
func newTestFS(t testing.TB, edit func(*Config)) *FS {
	t.Helper()
	in := filepath.Join(t.TempDir(), "in.txt")
	if err := os.WriteFile(in, []byte("input data\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Image:   buildImage(t),
		Inputs:  []Input{{Name: "in.txt", HostPath: in}},
		Exe:     "/usr/bin/busybox",
		Cmdline: []string{"busybox", "sh", "-c", "true"},
	}
	if edit != nil {
		edit(&cfg)
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// errnoOf returns the errno in err, 0 for nil, or fails the test.
func errnoOf(t testing.TB, err error) unix.Errno {
	t.Helper()
	if err == nil {
		return 0
	}
	var e unix.Errno
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) carries no errno", err, err)
	}
	return e
}

// readAll reads the whole file at p.
func readAll(t testing.TB, f *FS, p string) (string, error) {
	t.Helper()
	fl, err := f.Open("/", p, unix.O_RDONLY, 0)
	if err != nil {
		return "", err
	}
	defer fl.Close()
	var out []byte
	buf := make([]byte, 7)
	for {
		n, err := fl.Read(buf)
		if err == io.EOF && n == 0 {
			return string(out), nil
		}
		if err != nil || n == 0 {
			return "", fmt.Errorf("read = %d, %w", n, err)
		}
		out = append(out, buf[:n]...)
	}
}

// writeFile creates or truncates p with data.
func writeFile(t testing.TB, f *FS, p, data string) {
	t.Helper()
	fl, err := f.Open("/", p, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC, 0o644)
	if err != nil {
		t.Fatalf("create %s: %v", p, err)
	}
	defer fl.Close()
	if n, err := io.WriteString(fl, data); err != nil || n != len(data) {
		t.Fatalf("write %s: %d, %v", p, n, err)
	}
}

func asErrno(err error, e *unix.Errno) bool { return errors.As(err, e) }
