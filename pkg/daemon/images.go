package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/isolator-dev/isolator/pkg/image"
)

// Images finds guest images by name in a directory, as <dir>/<name>.img, and keeps the
// ones in use open. It is safe for concurrent use.
type Images struct {
	dir string

	mu   sync.Mutex
	open map[string]*image.Image // guarded by mu
}

var validImageName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// NewImages returns the image set of dir.
func NewImages(dir string) *Images {
	return &Images{dir: dir, open: make(map[string]*image.Image)}
}

// Get returns the open image called name.
func (im *Images) Get(name string) (*image.Image, error) {
	if !validImageName.MatchString(name) {
		return nil, fmt.Errorf("bad image name %q", name)
	}
	im.mu.Lock()
	defer im.mu.Unlock()
	if img, ok := im.open[name]; ok {
		return img, nil
	}
	path := filepath.Join(im.dir, name+".img")
	if err := checkImageFile(path); err != nil {
		return nil, fmt.Errorf("guest image %q: %w", name, err)
	}
	img, err := image.Open(path)
	if err != nil {
		return nil, fmt.Errorf("guest image %q: %w", name, err)
	}
	im.open[name] = img
	return img, nil
}

// checkImageFile refuses an image file that someone other than the daemon's user could
// change: micro VMs map its pages, so it must never change while in use (docs/IMAGE.md).
func checkImageFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file", path)
	case !ok || int(st.Uid) != os.Geteuid():
		return fmt.Errorf("%s is not owned by uid %d, the daemon's user: images must be the daemon's own", path, os.Geteuid())
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s is writable by others (mode %04o): micro VMs map its pages, so only the daemon's user may write it", path, fi.Mode().Perm())
	}
	return nil
}

// Names lists the images in the directory.
func (im *Images) Names() []string {
	ents, _ := os.ReadDir(im.dir)
	var names []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".img"); ok && validImageName.MatchString(n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// Forget drops the cached images, so that rebuilt image files are picked up (on SIGHUP).
// Images in use by running micro VMs stay open until the daemon exits.
func (im *Images) Forget() {
	im.mu.Lock()
	defer im.mu.Unlock()
	im.open = make(map[string]*image.Image)
}

// DefaultImages returns the guest images the shipped policies use, by name, with the host
// programs each is built from when missing.
func DefaultImages() map[string][]string {
	return map[string][]string{
		"busybox":   {"/usr/bin/busybox"},
		"documents": {"/usr/bin/pdftotext", "/usr/bin/pdftoppm", "/usr/bin/busybox"},
	}
}

// EnsureImages builds each image of want that is missing from dir, or is in the old image
// format (version 1, which the micro VMs cannot use), from the host programs it lists, and
// logs what it did. An image whose programs are not installed is skipped with a warning;
// the handlers that need it then fail with a clear error. Other images of dir in the old
// format are reported, not rebuilt: nothing says what they were built from.
func EnsureImages(dir string, want map[string][]string, log *slog.Logger) error {
	// The images are the daemon's own (like the rest of the state directory, in which
	// the image directory usually is): 0700.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("image dir: %w", err)
	}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	var errs []error
	for _, name := range NewImages(dir).Names() {
		if _, ok := want[name]; !ok {
			if err := image.CheckFormat(filepath.Join(dir, name+".img")); errors.Is(err, image.ErrOldFormat) {
				log.Warn("guest image in the old format cannot be used: rebuild it with isoctl image build", "image", name, "error", err)
			}
		}
	}
	for _, name := range names {
		path := filepath.Join(dir, name+".img")
		rebuild := false
		if _, err := os.Stat(path); err == nil {
			if err := image.CheckFormat(path); !errors.Is(err, image.ErrOldFormat) {
				continue // current, or broken in a way Get reports
			}
			rebuild = true
		} else if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		var missing []string
		for _, p := range want[name] {
			if _, err := os.Stat(p); err != nil {
				missing = append(missing, p)
			}
		}
		if len(missing) > 0 {
			if rebuild {
				log.Warn("guest image in the old format cannot be used and host programs to rebuild it are missing: rebuild it with isoctl image build",
					"image", name, "path", path, "missing", missing)
				continue
			}
			log.Warn("guest image not built: host programs missing", "image", name, "missing", missing)
			continue
		}
		rep, err := image.BuildFile(path, image.BuildConfig{Programs: want[name]})
		if err != nil {
			errs = append(errs, fmt.Errorf("build image %s: %w", name, err))
			continue
		}
		if rebuild {
			log.Warn("rebuilt guest image in the old format (version 1) from host programs; an image built with other contents must be rebuilt with isoctl image build",
				"image", name, "path", path, "programs", want[name], "entries", rep.Entries, "bytes", rep.Bytes, "digest", rep.Digest)
			continue
		}
		log.Info("built missing guest image from host programs", "image", name, "path", path, "programs", want[name], "entries", rep.Entries, "bytes", rep.Bytes, "digest", rep.Digest)
	}
	return errors.Join(errs...)
}
