package guestfs

import (
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkStatThroughSymlinks measures a lookup crossing the image, a symlink and "..".
func BenchmarkStatThroughSymlinks(b *testing.B) {
	f := newTestFS(b, nil)
	for b.Loop() {
		if _, err := f.Stat("/data/sub", "../escape", true); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenReadImage measures open, read and close of a small image file.
func BenchmarkOpenReadImage(b *testing.B) {
	f := newTestFS(b, nil)
	buf := make([]byte, 4096)
	for b.Loop() {
		fl, err := f.Open("/", "/etc/passwd", unix.O_RDONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		fl.Read(buf)
		fl.Close()
	}
}

// BenchmarkScratchWrite measures 4 KiB appends to a scratch file, truncated as it fills.
func BenchmarkScratchWrite(b *testing.B) {
	f := newTestFS(b, nil)
	fl, err := f.Open("/", "/tmp/bench", unix.O_RDWR|unix.O_CREAT|unix.O_APPEND, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer fl.Close()
	buf := make([]byte, 4096)
	b.SetBytes(int64(len(buf)))
	for i := 0; b.Loop(); i++ {
		if i%1024 == 0 {
			fl.Truncate(0)
		}
		if _, err := fl.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}
