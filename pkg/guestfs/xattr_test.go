package guestfs

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

// TestXattrCharged checks that user.* attributes of scratch files are charged to the
// scratch bytes (name and value), that a replacement is charged the difference, and that
// removing the attribute or the file gives the bytes back.
func TestXattrCharged(t *testing.T) {
	f := newTestFS(t, func(c *Config) { c.ScratchBytes = 1000 })
	a, err := f.Open("/", "/work/a", unix.O_RDWR|unix.O_CREAT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	used := func() int64 { n, _ := f.Usage(); return n }
	if err := f.Setxattr("/", "/work/a", true, "user.big", make([]byte, 993), 0); errnoOf(t, err) != unix.ENOSPC {
		t.Fatalf("setxattr of 1001 bytes with 1000 free: %v, want ENOSPC", err)
	}
	if err := a.Setxattr("user.v", bytes.Repeat([]byte("v"), 94), XattrCreate); err != nil || used() != 100 {
		t.Fatalf("setxattr: %v, %d bytes used; want 100", err, used())
	}
	if err := f.Setxattr("/", "/work/a", false, "user.v", []byte("w"), XattrReplace); err != nil || used() != 7 {
		t.Fatalf("replace: %v, %d bytes used; want 7", err, used())
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
	if n := used(); n != 30 {
		t.Errorf("%d bytes used by an unlinked open file with a 30-byte attribute", n)
	}
	a.Close()
	if n := used(); n != 0 {
		t.Errorf("%d bytes used after the file went", n)
	}
}
