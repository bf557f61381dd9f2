package guestfs

import (
	"path"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

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

// FuzzOutputs names files under /output as the guest likes; every name Outputs returns
// must be safe to use as a relative host path, and every rejected name printable.
func FuzzOutputs(f *testing.F) {
	for _, s := range [][2]string{
		{"report.txt", "sub"}, {"-rf", ".."}, {"..", "."}, {"a\x00b", "c"}, {"\x1b[2J", "ok"},
		{"é", "\xff"}, {strings.Repeat("x", 255), "d"}, {"a\\b", " "}, {"\u202e", "\u200b"},
	} {
		f.Add(s[0], s[1])
	}
	fsys := newTestFS(f, nil)
	f.Fuzz(func(t *testing.T, name, dir string) {
		fsys.Mkdir("/output", dir, 0o755)
		for _, p := range []string{name, dir + "/" + name} {
			if fl, err := fsys.Open("/output", p, unix.O_CREAT|unix.O_WRONLY, 0o644); err == nil {
				fl.Write([]byte(p))
				fl.Close()
			}
		}
		fsys.Symlink(name, "/output", dir+"/link")
		outs, rejected := fsys.Outputs(1<<20, 100)
		for _, o := range outs {
			if o.Name == "" || path.IsAbs(o.Name) || path.Clean(o.Name) != o.Name || o.Mode&^0o777 != 0 {
				t.Fatalf("unsafe output %q mode %o", o.Name, o.Mode)
			}
			for c := range strings.SplitSeq(o.Name, "/") {
				if !safeName(c) || strings.HasPrefix(c, "-") || strings.HasPrefix(c, "..") {
					t.Fatalf("unsafe component %q in %q", c, o.Name)
				}
			}
			for _, r := range o.Name {
				if !unicode.IsPrint(r) || r == utf8.RuneError {
					t.Fatalf("unprintable output name %q", o.Name)
				}
			}
		}
		for _, r := range rejected {
			for _, c := range r.Name {
				if !unicode.IsPrint(c) {
					t.Fatalf("unprintable rejected name %q", r.Name)
				}
			}
		}
		// Clean up for the next run.
		for _, p := range []string{dir + "/link", dir + "/" + name, name} {
			fsys.Unlink("/output", p, false)
		}
		fsys.Unlink("/output", dir, true)
	})
}
