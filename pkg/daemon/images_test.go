package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/isolator-dev/isolator/pkg/image"
)

// TestImagesRefuseFilesOthersCanChange checks that the daemon uses only guest images that
// no one but its own user can change, since micro VMs map their pages.
func TestImagesRefuseFilesOthersCanChange(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "hello")
	if err := os.WriteFile(src, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "tiny.img")
	if _, err := image.BuildFile(path, image.BuildConfig{Files: []image.FileSpec{{HostPath: src, GuestPath: "/hello"}}}); err != nil {
		t.Fatal(err)
	}
	images := NewImages(dir)
	img, err := images.Get("tiny")
	if err != nil {
		t.Fatalf("a private image: %v", err)
	}
	defer img.Close()
	for _, c := range []struct {
		name   string
		change func() error
		want   string
	}{
		{"group-writable", func() error { return os.Chmod(path, 0o664) }, "writable by others (mode 0664)"},
		{"world-writable", func() error { return os.Chmod(path, 0o646) }, "writable by others (mode 0646)"},
		{"another owner", func() error {
			if os.Geteuid() != 0 {
				return errSkip
			}
			if err := os.Chmod(path, 0o644); err != nil {
				return err
			}
			return os.Chown(path, 65534, 65534)
		}, "is not owned by uid"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := c.change(); err == errSkip {
				t.Skip("changing the owner needs root")
			} else if err != nil {
				t.Fatal(err)
			}
			images.Forget()
			if _, err := images.Get("tiny"); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Get: %v, want an error saying %q", err, c.want)
			}
		})
	}
}

// errSkip says a case cannot run here.
var errSkip = errors.New("skip")
