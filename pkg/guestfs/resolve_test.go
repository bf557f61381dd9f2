package guestfs

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestResolveContents(t *testing.T) {
	f := newTestFS(t, nil)
	tests := []struct {
		dir, path string
		want      string
		errno     unix.Errno
	}{
		{"/", "/etc/passwd", imagePasswd, 0},
		{"/", "/data/abs", imagePasswd, 0},
		{"/", "/data/rel", imagePasswd, 0},
		{"/", "/data/escape", imagePasswd, 0},
		{"/", "/data/absescape", imagePasswd, 0},
		{"/", "/../../../../etc/passwd", imagePasswd, 0},
		{"/", "/data/etcdir/passwd", imagePasswd, 0},
		{"/", "/data/etcdir/../data/hello.txt", "hello, guest\n", 0},
		{"/", "/data/root/etc/passwd", imagePasswd, 0},
		{"/", "/data/toinput", "input data\n", 0},
		{"/", "/input/in.txt", "input data\n", 0},
		{"/etc", "passwd", imagePasswd, 0},
		{"/etc", "../etc/./passwd", imagePasswd, 0},
		{"/data/sub", "../../../../etc/passwd", imagePasswd, 0},
		{"/data/sub", "deep.txt", "deep\n", 0},
		{"/data/etcdir", "passwd", imagePasswd, 0},
		{"/", "etc//passwd", imagePasswd, 0},
		{"/", "/data/loop1", "", unix.ELOOP},
		{"/", "/data/self", "", unix.ELOOP},
		{"/", "/data/dangling", "", unix.ENOENT},
		{"/", "/data/slashfile", "", unix.ENOTDIR},
		{"/", "/etc/passwd/x", "", unix.ENOTDIR},
		{"/", "/etc/passwd/", "", unix.ENOTDIR},
		{"/", "/etc/passwd/.", "", unix.ENOTDIR},
		{"/", "/nonexistent", "", unix.ENOENT},
		{"/", "/nonexistent/x", "", unix.ENOENT},
		{"/", "/tmp/hidden", "", unix.ENOENT},
		{"/", "/etc/secret", "", unix.EACCES},
		{"/", "", "", unix.ENOENT},
		{"/nonexistent", "x", "", unix.ENOENT},
		{"/etc/passwd", "x", "", unix.ENOTDIR},
		{"/", "/" + strings.Repeat("a", 256), "", unix.ENAMETOOLONG},
		{"/", "/" + strings.Repeat("a", 255), "", unix.ENOENT},
		{"/", strings.Repeat("./", 2048), "", unix.ENAMETOOLONG},
		{"/", strings.Repeat("./", 2047) + "etc/passwd", "", unix.ENAMETOOLONG},
		{"/", strings.Repeat("/", 4095-len("etc/passwd")) + "etc/passwd", imagePasswd, 0},
		{"/", strings.Repeat("/", 4096-len("etc/passwd")) + "etc/passwd", "", unix.ENAMETOOLONG},
	}
	for _, tt := range tests {
		fl, err := f.Open(tt.dir, tt.path, unix.O_RDONLY, 0)
		if got := errnoOf(t, err); got != tt.errno {
			t.Errorf("open(%q, %.40q) = %v, want %v", tt.dir, tt.path, err, tt.errno)
			continue
		}
		if err != nil {
			continue
		}
		buf := make([]byte, 4096)
		n, err := fl.Read(buf)
		if err != nil || string(buf[:n]) != tt.want {
			t.Errorf("read(%q, %.40q) = %q, %v; want %q", tt.dir, tt.path, buf[:n], err, tt.want)
		}
		fl.Close()
	}
}

func TestResolveCanonical(t *testing.T) {
	f := newTestFS(t, nil)
	if err := f.Mkdir("/", "/tmp/a", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := f.Mkdir("/", "/tmp/a/b", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := f.Symlink("/tmp/a/b", "/", "/work/tob"); err != nil {
		t.Fatal(err)
	}
	if err := f.Symlink("../..", "/", "/tmp/a/b/up"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dir, path, want string
		errno           unix.Errno
	}{
		{"/", "/", "/", 0},
		{"/", "//..//../.", "/", 0},
		{"/", "/data/etcdir", "/etc", 0},
		{"/", "/data/etcdir/..", "/", 0},   // ".." applies to where the symlink led
		{"/", "/work/tob/..", "/tmp/a", 0}, // not lexically to /work
		{"/", "/work/tob/up", "/tmp", 0},
		{"/", "/work/tob/up/a/b/up/..", "/", 0},
		{"/work", "tob", "/tmp/a/b", 0},
		{"/tmp/a/b", "..", "/tmp/a", 0},
		{"/tmp/a/b", "../../../../..", "/", 0},
		{"/", "/proc/self", "/proc/1", 0},
		{"/", "/proc/self/fd", "/proc/1/fd", 0},
		{"/", "/dev/fd", "/proc/1/fd", 0},
		{"/", "/data/root", "/", 0},
		{"/", "/data/hello.txt", "", unix.ENOTDIR},
		{"/", "/data/loop1", "", unix.ELOOP},
		{"/", "/tmp/nope", "", unix.ENOENT},
	}
	for _, tt := range tests {
		got, err := f.ResolveDir(tt.dir, tt.path)
		if e := errnoOf(t, err); e != tt.errno || got != tt.want {
			t.Errorf("ResolveDir(%q, %q) = %q, %v; want %q, %v", tt.dir, tt.path, got, err, tt.want, tt.errno)
		}
	}
}

func TestSymlinkLimit(t *testing.T) {
	f := newTestFS(t, nil)
	writeFile(t, f, "/tmp/l0", "end")
	// l1 -> l0, ..., l41 -> l40: reaching l0 from lN follows N links.
	for i := 1; i <= 41; i++ {
		if err := f.Symlink("l"+itoa(i-1), "/tmp", "l"+itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name  string
		errno unix.Errno
	}{{"l1", 0}, {"l40", 0}, {"l41", unix.ELOOP}} {
		got, err := readAll(t, f, "/tmp/"+tt.name)
		if e := errnoOf(t, err); e != tt.errno || (e == 0 && got != "end") {
			t.Errorf("read /tmp/%s = %q, %v; want errno %v", tt.name, got, err, tt.errno)
		}
	}
	// The 40 links are counted over the whole lookup, not per symlink.
	if err := f.Symlink("/tmp/l20/../l20", "/", "/tmp/twice"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat("/", "/tmp/twice", true); errnoOf(t, err) != unix.ENOTDIR {
		t.Errorf("stat /tmp/twice = %v, want ENOTDIR (l20 is a file)", err)
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

func TestStatLstatReadlink(t *testing.T) {
	f := newTestFS(t, nil)
	tests := []struct {
		path   string
		follow bool
		mode   uint32
		errno  unix.Errno
	}{
		{"/data/abs", false, unix.S_IFLNK, 0},
		{"/data/abs", true, unix.S_IFREG, 0},
		{"/data/etcdir/", false, unix.S_IFDIR, 0}, // a trailing slash follows
		{"/data/dangling", false, unix.S_IFLNK, 0},
		{"/data/dangling", true, 0, unix.ENOENT},
		{"/dev/null", true, unix.S_IFCHR, 0},
		{"/dev/stdin", false, unix.S_IFLNK, 0},
		{"/proc/self", false, unix.S_IFLNK, 0},
		{"/proc/self/cmdline", true, unix.S_IFREG, 0},
		{"/input", true, unix.S_IFDIR, 0},
		{"/tmp", true, unix.S_IFDIR, 0},
	}
	for _, tt := range tests {
		st, err := f.Stat("/", tt.path, tt.follow)
		if e := errnoOf(t, err); e != tt.errno || (e == 0 && st.Mode&unix.S_IFMT != tt.mode) {
			t.Errorf("Stat(%q, %v) = %o, %v; want type %o, %v", tt.path, tt.follow, st.Mode, err, tt.mode, tt.errno)
		}
	}
	links := []struct {
		path, want string
		errno      unix.Errno
	}{
		{"/data/abs", "/etc/passwd", 0},
		{"/data/escape", "../../../../../../../../etc/passwd", 0},
		{"/proc/self/exe", "/usr/bin/busybox", 0},
		{"/proc/self", "1", 0},
		{"/dev/stderr", "/proc/self/fd/2", 0},
		{"/etc/passwd", "", unix.EINVAL},
		{"/nonexistent", "", unix.ENOENT},
	}
	for _, tt := range links {
		got, err := f.Readlink("/", tt.path)
		if e := errnoOf(t, err); e != tt.errno || got != tt.want {
			t.Errorf("Readlink(%q) = %q, %v; want %q, %v", tt.path, got, err, tt.want, tt.errno)
		}
	}
	a, _ := f.Stat("/", "/data/abs", true)
	b, _ := f.Stat("/", "/etc/passwd", true)
	if a.Ino != b.Ino || a.Dev != b.Dev || a.Size != int64(len(imagePasswd)) {
		t.Errorf("stat through link = %+v, want %+v", a, b)
	}
	tmp, _ := f.Stat("/", "/tmp", true)
	root, _ := f.Stat("/", "/", true)
	if tmp.Dev == root.Dev || tmp.Mode != unix.S_IFDIR|unix.S_ISVTX|0o777 {
		t.Errorf("/tmp = dev %d mode %o, want a mount with mode 041777", tmp.Dev, tmp.Mode)
	}
}
