package guestfs

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/image"
)

// TestImageExtent checks that only open, readable files of the image report where their
// content lies in the image file, and that the bytes there are the file's.
func TestImageExtent(t *testing.T) {
	f := newTestFS(t, nil)
	writeFile(t, f, "/tmp/scratch", "scratch")
	fl, err := f.Open("/", "/data/hello.txt", unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	host, off, size, ok := ImageExtent(fl)
	if !ok || off%image.PageSize != 0 || size != int64(len("hello, guest\n")) {
		t.Fatalf("ImageExtent(/data/hello.txt) = %v, %d, %d, %v", host, off, size, ok)
	}
	buf := make([]byte, size)
	if _, err := host.ReadAt(buf, off); err != nil || string(buf) != "hello, guest\n" {
		t.Errorf("image file at %d: %q, %v", off, buf, err)
	}
	fl.Close()
	if _, _, _, ok := ImageExtent(fl); ok {
		t.Error("ImageExtent of a closed file ok")
	}
	for _, p := range []string{"/data", "/tmp/scratch", "/input/in.txt", "/dev/null", "/proc/self/cmdline"} {
		fl, err := f.Open("/", p, unix.O_RDONLY, 0)
		if err != nil {
			t.Fatalf("open %s: %v", p, err)
		}
		if _, _, _, ok := ImageExtent(fl); ok {
			t.Errorf("ImageExtent(%s) ok", p)
		}
		fl.Close()
	}
	opath, err := f.Open("/", "/data/hello.txt", unix.O_PATH, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer opath.Close()
	if _, _, _, ok := ImageExtent(opath); ok {
		t.Error("ImageExtent of an O_PATH file ok")
	}
}
