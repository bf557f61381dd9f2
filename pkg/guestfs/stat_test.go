package guestfs

import (
	"path"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDirectoryLinkCounts checks that every directory of the namespace reports 2 + its
// subdirectories as its link count, as ext4 does (and as find(1) relies on when it skips
// the stat of the entries of a directory whose subdirectories it has all seen): the image's
// directories, "/" with the mount points that mask an image directory or add one, and the
// scratch and synthetic trees.
func TestDirectoryLinkCounts(t *testing.T) {
	f := newTestFS(t, nil)
	if err := f.Mkdir("/", "/tmp/a", 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"/tmp/a/b", "/tmp/a/c", "/work/w"} {
		if err := f.Mkdir("/", d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	checked := 0
	var walk func(dir string)
	walk = func(dir string) {
		st, err := f.Stat("/", dir, false)
		if err != nil {
			t.Fatalf("stat %s: %v", dir, err)
		}
		d, err := f.Open("/", dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			if errnoOf(t, err) == unix.EACCES {
				return
			}
			t.Fatalf("open %s: %v", dir, err)
		}
		ents, err := d.ReadDir(0)
		d.Close()
		if err != nil {
			t.Fatalf("readdir %s: %v", dir, err)
		}
		subdirs := 0
		for _, e := range ents {
			if e.Name == "." || e.Name == ".." || e.Type != unix.DT_DIR {
				continue
			}
			subdirs++
			walk(path.Join(dir, e.Name))
		}
		if st.Nlink != uint64(2+subdirs) {
			t.Errorf("%s: nlink %d, want 2 + %d subdirectories", dir, st.Nlink, subdirs)
		}
		checked++
	}
	walk("/")
	if checked < 10 {
		t.Errorf("checked only %d directories", checked)
	}
	// Spelled out for the image: /data has one subdirectory; "/" has the image's etc,
	// data and usr, its tmp (masked by the scratch /tmp, counted once), and input, work,
	// output, dev and proc.
	for p, want := range map[string]uint64{"/data": 3, "/data/sub": 2, "/usr/bin": 2, "/": 2 + 3 + 1 + 5, "/tmp/a": 4} {
		if st, err := f.Stat("/", p, false); err != nil || st.Nlink != want {
			t.Errorf("%s: nlink %d (%v), want %d", p, st.Nlink, err, want)
		}
	}
}

// TestStatSizesLikeExt4 checks st_size and st_blocks of image entries and scratch
// symlinks: a directory has one 4 KiB block, a regular file whole blocks, a symlink of up to
// 59 bytes none (an ext4 fast symlink) and a longer one a block.
func TestStatSizesLikeExt4(t *testing.T) {
	f := newTestFS(t, nil)
	long := strings.Repeat("x", 60)
	for _, l := range [][2]string{{"short", "/tmp/short"}, {strings.Repeat("y", 59), "/tmp/fast59"}, {long, "/tmp/slow60"}} {
		if err := f.Symlink(l[0], "/", l[1]); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		path   string
		size   int64
		blocks int64
	}{
		{"/data", 4096, 8},
		{"/", 4096, 8},
		{"/data/hello.txt", 13, 8},
		{"/etc/passwd", int64(len(imagePasswd)), 8},
		{"/data/abs", int64(len("/etc/passwd")), 0},
		{"/data/escape", int64(len("../../../../../../../../etc/passwd")), 0},
		{"/tmp/short", 5, 0},
		{"/tmp/fast59", 59, 0},
		{"/tmp/slow60", 60, 8},
		{"/tmp", 4096, 8},
	} {
		st, err := f.Stat("/", c.path, false)
		if err != nil || st.Size != c.size || st.Blocks != c.blocks || st.Blksize != 4096 {
			t.Errorf("%s: size %d blocks %d blksize %d (%v), want size %d blocks %d blksize 4096",
				c.path, st.Size, st.Blocks, st.Blksize, err, c.size, c.blocks)
		}
	}
	if st, _ := f.Stat("/", "/usr/bin/busybox", false); st.Blocks != (st.Size+4095)/4096*8 || st.Nlink != 1 {
		t.Errorf("busybox: size %d blocks %d nlink %d", st.Size, st.Blocks, st.Nlink)
	}
}

// TestMountPoints checks that MountPoints names exactly the trees mounted on "/", and
// MountOf the paths they mask.
func TestMountPoints(t *testing.T) {
	f := newTestFS(t, nil)
	var mounted []string
	for name := range f.root.mounts {
		mounted = append(mounted, "/"+name)
	}
	slices.Sort(mounted)
	if got := MountPoints(); !slices.Equal(got, mounted) {
		t.Errorf("MountPoints() = %q, the namespace mounts %q", got, mounted)
	}
	for p, want := range map[string]string{"/tmp": "/tmp", "/tmp/x/prog": "/tmp", "/tmpfoo": "", "/work/a": "/work",
		"/proc/self": "/proc", "/dev": "/dev", "/input/x": "/input", "/output": "/output", "/usr/bin/x": "", "/": "", "/devices": ""} {
		if got := MountOf(p); got != want {
			t.Errorf("MountOf(%q) = %q, want %q", p, got, want)
		}
	}
	// What the image has under /tmp is masked.
	if _, err := f.Stat("/", "/tmp/hidden", false); errnoOf(t, err) != unix.ENOENT {
		t.Errorf("stat of the image's /tmp/hidden: %v, want ENOENT", err)
	}
}
