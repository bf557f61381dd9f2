package guestfs

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

// TestXattrCharged checks that user.* attributes of scratch files are charged to the
// scratch bytes (name, value and xattrOverhead), that a replacement is charged the
// difference, that removing the attribute or the file gives the bytes back, and that the
// names of one file fit in a listxattr buffer.
func TestXattrCharged(t *testing.T) {
	const over = xattrOverhead
	f := newTestFS(t, func(c *Config) { c.ScratchBytes = 1000 + over })
	a, err := f.Open("/", "/work/a", unix.O_RDWR|unix.O_CREAT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	used := func() int64 { n, _ := f.Usage(); return n }
	if err := f.Setxattr("/", "/work/a", true, "user.big", make([]byte, 993), 0); errnoOf(t, err) != unix.ENOSPC {
		t.Fatalf("setxattr of 1001 bytes with 1000 free: %v, want ENOSPC", err)
	}
	if err := a.Setxattr("user.v", bytes.Repeat([]byte("v"), 94), XattrCreate); err != nil || used() != 100+over {
		t.Fatalf("setxattr: %v, %d bytes used; want %d", err, used(), 100+over)
	}
	if err := f.Setxattr("/", "/work/a", false, "user.v", []byte("w"), XattrReplace); err != nil || used() != 7+over {
		t.Fatalf("replace: %v, %d bytes used; want %d", err, used(), 7+over)
	}
	if v, err := f.Getxattr("/", "/work/a", true, "user.v"); err != nil || string(v) != "w" {
		t.Fatalf("getxattr = %q, %v", v, err)
	}
	if names, err := a.Listxattr(); err != nil || len(names) != 1 || names[0] != "user.v" {
		t.Fatalf("listxattr = %q, %v", names, err)
	}
	if err := a.Setxattr("user.v", nil, 0); err != nil || used() != 0 {
		t.Fatalf("removexattr: %v, %d bytes used; want 0", err, used())
	}
	if err := a.Setxattr("user.v", []byte("kept until the file goes"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Unlink("/", "/work/a", false); err != nil {
		t.Fatal(err)
	}
	if n := used(); n != 30+over {
		t.Errorf("%d bytes used by an unlinked open file with a 30-byte attribute", n)
	}
	a.Close()
	if n := used(); n != 0 {
		t.Errorf("%d bytes used after the file went", n)
	}

	// 64 KiB of names, 255 bytes each: 256 fit (with their NULs, 65536 bytes); the 257th
	// does not, though the scratch space has room.
	g := newTestFS(t, nil)
	b, err := g.Open("/", "/tmp/b", unix.O_RDWR|unix.O_CREAT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := range 257 {
		name := fmt.Sprintf("user.%0250d", i)
		err := b.Setxattr(name, []byte{}, 0) // an empty value, not nil (remove)
		if i < 256 && err != nil || i == 256 && errnoOf(t, err) != unix.ENOSPC {
			t.Fatalf("attribute %d: %v", i, err)
		}
	}
	if names, err := b.Listxattr(); err != nil || len(names) != 256 {
		t.Errorf("listxattr: %d names, %v", len(names), err)
	}
}

// TestXattrRemovedDirectory: a directory removed while open takes no attribute (a
// directory's opens are not counted, so it is freed at once and nothing would release the
// charge); twenty rounds of it leave the scratch space as it was.
func TestXattrRemovedDirectory(t *testing.T) {
	f := newTestFS(t, func(c *Config) { c.ScratchBytes = 1 << 20 })
	before, _ := f.Usage()
	for i := 0; i < 20; i++ {
		if err := f.Mkdir("/", "/tmp/d", 0o755); err != nil {
			t.Fatal(err)
		}
		d, err := f.Open("/", "/tmp/d", unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Unlink("/", "/tmp/d", true); err != nil {
			t.Fatal(err)
		}
		if err := d.Setxattr("user.x", bytes.Repeat([]byte("v"), 60000), 0); !errors.Is(err, unix.ENOENT) {
			t.Fatalf("round %d: setxattr on a removed directory: %v, want ENOENT", i, err)
		}
		d.Close()
	}
	if after, _ := f.Usage(); after != before {
		t.Errorf("scratch bytes used %d, %d before", after, before)
	}
}
