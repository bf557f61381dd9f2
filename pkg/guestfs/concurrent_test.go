package guestfs

import (
	"fmt"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestConcurrentUse runs readers, writers, renamers and listers at once; run with -race.
func TestConcurrentUse(t *testing.T) {
	var f *FS
	f = newTestFS(t, func(c *Config) {
		// FDPath calling back into the FS must not deadlock: FS calls it unlocked.
		c.FDPath = func(fd int) (string, bool) {
			f.Usage()
			if fd == 7 {
				return "/etc/passwd", true
			}
			return "", false
		}
	})
	shared, err := f.Open("/", "/work/log", unix.O_RDWR|unix.O_CREAT|unix.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close()
	input, err := f.Open("/", "/input/in.txt", unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer input.Close()

	const workers, rounds = 6, 60
	var wg sync.WaitGroup
	errs := make(chan error, workers*4)
	for w := range workers {
		wg.Add(4)
		go func() { // private files: create, write, read back, rename, unlink
			defer wg.Done()
			for i := range rounds {
				p := fmt.Sprintf("/tmp/w%d-%d", w, i)
				fl, err := f.Open("/", p, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, 0o600)
				if err != nil {
					errs <- err
					return
				}
				fl.Write([]byte(p))
				buf := make([]byte, len(p))
				if n, _ := fl.ReadAt(buf, 0); string(buf[:n]) != p {
					errs <- fmt.Errorf("read back %q from %s", buf[:n], p)
				}
				fl.Close()
				if err := f.Rename("/", p, "/tmp", p+".done"); err != nil {
					errs <- err
				}
				if err := f.Unlink("/", p+".done", false); err != nil {
					errs <- err
				}
			}
		}()
		go func() { // shared appends
			defer wg.Done()
			for range rounds {
				if n, err := shared.Write([]byte("0123456789")); n != 10 || err != nil {
					errs <- fmt.Errorf("append = %d, %v", n, err)
				}
			}
		}()
		go func() { // shared reads of the input and the image, /proc/self/fd lookups
			defer wg.Done()
			buf := make([]byte, 5)
			for range rounds {
				if n, err := input.ReadAt(buf, 6); err != nil || string(buf[:n]) != "data\n" {
					errs <- fmt.Errorf("pread input = %q, %v", buf[:n], err)
				}
				if got, err := readAll(t, f, "/proc/self/fd/7"); err != nil || got != imagePasswd {
					errs <- fmt.Errorf("read fd link = %q, %v", got, err)
				}
				if _, err := f.Stat("/", "/data/escape", true); err != nil {
					errs <- err
				}
			}
		}()
		go func() { // listings
			defer wg.Done()
			for range rounds / 4 {
				d, err := f.Open("/", "/tmp", unix.O_RDONLY|unix.O_DIRECTORY, 0)
				if err != nil {
					errs <- err
					return
				}
				for {
					ents, err := d.ReadDir(3)
					if err != nil || len(ents) == 0 {
						break
					}
				}
				d.Close()
				if d, err := f.Open("/", "/proc/self/fd", unix.O_RDONLY, 0); err == nil {
					d.ReadDir(0)
					d.Close()
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st, _ := shared.Stat()
	if want := int64(workers * rounds * 10); st.Size != want {
		t.Errorf("shared log is %d bytes, want %d", st.Size, want)
	}
	if bytes, files := f.Usage(); bytes != st.Size || files != 1 {
		t.Errorf("usage = %d bytes, %d files; want %d, 1", bytes, files, st.Size)
	}
}
