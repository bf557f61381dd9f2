package guestfs

import (
	"path"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzResolve plants guest-chosen symlinks in /tmp and resolves guest-chosen paths through
// every entry point. Nothing may panic, every result must be a canonical path inside the
// namespace, and every file reached must live on one of the namespace's own devices.
func FuzzResolve(f *testing.F) {
	for _, s := range [][3]string{
		{"/etc/passwd", "../../../../etc/passwd", "/tmp/l1"},
		{"/tmp/l2", "/tmp/l1", "/tmp/l1/x"},
		{"..", "/tmp/l2/../../..", "l1/../l2"},
		{"/proc/self/fd/0", "/dev/fd", "/tmp/l2/3"},
		{"/data/etcdir/..", "l1/../../", "/tmp/l1/l2"},
		{"/input/in.txt/", "l1", "../../input/./in.txt"},
		{strings.Repeat("../", 50), "/tmp/l1/l1", "/./tmp/l2"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	fsys := newTestFS(f, func(c *Config) {
		c.FDPath = func(fd int) (string, bool) {
			switch fd {
			case 0:
				return "/tmp/l1", true
			case 1:
				return "socket:[1]", true
			}
			return "", false
		}
	})
	devs := map[uint64]bool{}
	for _, tr := range fsys.trees {
		devs[tr.dev] = true
	}
	f.Fuzz(func(t *testing.T, target1, target2, p string) {
		// Each run starts from an empty /tmp.
		for _, name := range []string{"l1", "l2"} {
			fsys.Unlink("/", "/tmp/"+name, false)
			fsys.Unlink("/", "/tmp/"+name, true)
		}
		fsys.Symlink(target1, "/", "/tmp/l1")
		fsys.Symlink(target2, "/tmp", "l2")
		for _, dir := range []string{"/", "/tmp", "/data/sub"} {
			checkResolved(t, fsys, devs, dir, p)
		}
	})
}

func checkResolved(t *testing.T, f *FS, devs map[uint64]bool, dir, p string) {
	canonical := func(c string) {
		t.Helper()
		if !strings.HasPrefix(c, "/") || path.Clean(c) != c || strings.Contains(c, "/../") || strings.HasSuffix(c, "/..") {
			t.Fatalf("resolution of %q from %q gave non-canonical path %q", p, dir, c)
		}
	}
	for _, follow := range []bool{false, true} {
		st, err := f.Stat(dir, p, follow)
		if err != nil {
			var e unix.Errno
			if !asErrno(err, &e) {
				t.Fatalf("stat %q: error %v carries no errno", p, err)
			}
			continue
		}
		if !devs[st.Dev] {
			t.Fatalf("stat %q: device %d is not the namespace's", p, st.Dev)
		}
	}
	if d, err := f.ResolveDir(dir, p); err == nil {
		canonical(d)
		again, err := f.ResolveDir("/", d)
		if err != nil || again != d {
			t.Fatalf("canonical dir %q resolves to %q, %v", d, again, err)
		}
	}
	fl, err := f.Open(dir, p, unix.O_RDONLY, 0)
	if err != nil {
		return
	}
	defer fl.Close()
	canonical(fl.Path())
	st, err := fl.Stat()
	if err != nil || !devs[st.Dev] {
		t.Fatalf("open %q: stat %+v, %v", p, st, err)
	}
	again, err := f.Stat("/", fl.Path(), false)
	if err != nil || again.Ino != st.Ino || again.Dev != st.Dev {
		t.Fatalf("open %q gave path %q, which is %+v, %v, not the file opened %+v", p, fl.Path(), again, err, st)
	}
}
