package broker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/api"
)

// Extended attributes Deliver sets on every result file.
const (
	XattrTask         = "user.isolator.task"
	XattrSourceSHA256 = "user.isolator.source-sha256"
	XattrHandler      = "user.isolator.handler"
)

// Default bounds of Deliver.
const (
	DefaultMaxFiles = 256
	DefaultMaxBytes = 256 << 20
	maxNameBytes    = 1024
	maxDepth        = 16
)

// ErrUnsafeName reports an output name that could escape the task directory or confuse a
// user (absolute, "..", control characters, too long).
var ErrUnsafeName = errors.New("unsafe file name")

// DeliverConfig says where and how Deliver writes a task's results.
type DeliverConfig struct {
	Dir          string // parent of the per-task directory, e.g. ~/Isolated; created 0700 if missing
	TaskID       string // names the per-task directory Dir/TaskID, which must not exist yet (but see Existing)
	SourceSHA256 string // hash of the source file, for the xattr
	Handler      string // handler name, for the xattr
	MaxFiles     int    // files written at most; 0 selects DefaultMaxFiles
	MaxBytes     int64  // bytes written at most; 0 selects DefaultMaxBytes
	// Existing lets Dir/TaskID be an existing empty directory (not a symlink), which is
	// then used as it is: not tagged, its mode and owner kept.
	Existing bool
}

// Written is a result file Deliver wrote.
type Written struct {
	Name string // sanitized relative name
	Path string // full path on the host
	Size int64
}

// Delivery reports what Deliver did.
type Delivery struct {
	Dir     string         // the per-task directory
	Written []Written      // files written
	Refused []api.Rejected // outputs not written, with the reason
	// XattrWarning is set when the file system does not take user.* xattrs: the files were
	// written but are not tagged.
	XattrWarning string
}

// SanitizeName checks an output name and returns it cleaned, or an error wrapping
// ErrUnsafeName. Accepted names are relative, made of non-empty components other than "."
// and "..", of printable UTF-8 without control characters, at most 1024 bytes and 16
// components deep.
func SanitizeName(name string) (string, error) {
	bad := func(why string) (string, error) { return "", fmt.Errorf("%w: %q: %s", ErrUnsafeName, name, why) }
	switch {
	case name == "":
		return bad("empty")
	case len(name) > maxNameBytes:
		return bad("too long")
	case !utf8.ValidString(name):
		return bad("not UTF-8")
	case strings.HasPrefix(name, "/"):
		return bad("absolute")
	}
	for _, r := range name {
		if unicode.IsControl(r) || r == utf8.RuneError || unicode.In(r, unicode.Bidi_Control) {
			return bad("control character")
		}
	}
	parts := strings.Split(name, "/")
	if len(parts) > maxDepth {
		return bad("too deep")
	}
	for _, p := range parts {
		switch {
		case p == "":
			return bad("empty component")
		case p == "." || p == "..":
			return bad("dot component")
		case len(p) > 255:
			return bad("component too long")
		}
	}
	return name, nil
}

// Deliver writes files into cfg.Dir/cfg.TaskID with the caller's credentials. The task
// directory is created fresh (an existing one is an error); every file and subdirectory is
// created relative to it with O_NOFOLLOW and O_EXCL, so nothing follows a symlink or
// overwrites an existing file. Files are written mode 0644 whatever the guest asked, so no
// result is executable. Files beyond the bounds, with unsafe names, or that cannot be
// created are listed in Delivery.Refused; Deliver fails only when the task directory
// cannot be made.
func Deliver(cfg DeliverConfig, files []api.File) (*Delivery, error) {
	if cfg.MaxFiles <= 0 {
		cfg.MaxFiles = DefaultMaxFiles
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if _, err := SanitizeName(cfg.TaskID); err != nil || strings.Contains(cfg.TaskID, "/") {
		return nil, fmt.Errorf("bad task id %q", cfg.TaskID)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create results directory: %w", err)
	}
	parent, err := unix.Open(cfg.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open results directory %s: %w", cfg.Dir, err)
	}
	defer unix.Close(parent)
	created := true
	if err := unix.Mkdirat(parent, cfg.TaskID, 0o700); err != nil {
		if !cfg.Existing || !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create task directory %s: %w", filepath.Join(cfg.Dir, cfg.TaskID), err)
		}
		created = false
	}
	root, err := unix.Openat(parent, cfg.TaskID, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open task directory %s: %w", filepath.Join(cfg.Dir, cfg.TaskID), err)
	}
	defer unix.Close(root)

	d := &Delivery{Dir: filepath.Join(cfg.Dir, cfg.TaskID)}
	if !created {
		if empty, err := emptyDir(root); err != nil || !empty {
			if err == nil {
				err = errors.New("not empty")
			}
			return nil, fmt.Errorf("task directory %s: %w", d.Dir, err)
		}
	}
	tags := [][2]string{{XattrTask, cfg.TaskID}, {XattrSourceSHA256, cfg.SourceSHA256}, {XattrHandler, cfg.Handler}}
	tag := func(fd int) {
		for _, t := range tags {
			if t[1] == "" {
				continue
			}
			if err := unix.Fsetxattr(fd, t[0], []byte(t[1]), 0); err != nil && d.XattrWarning == "" {
				d.XattrWarning = fmt.Sprintf("results not tagged with %s: %v", t[0], err)
			}
		}
	}
	if created {
		tag(root)
	}

	var total int64
	for _, f := range files {
		name, err := SanitizeName(f.Name)
		if err != nil {
			d.Refused = append(d.Refused, api.Rejected{Name: f.Name, Reason: err.Error()})
			continue
		}
		if len(d.Written) >= cfg.MaxFiles {
			d.Refused = append(d.Refused, api.Rejected{Name: name, Reason: fmt.Sprintf("more than %d files", cfg.MaxFiles)})
			continue
		}
		if total+int64(len(f.Data)) > cfg.MaxBytes {
			d.Refused = append(d.Refused, api.Rejected{Name: name, Reason: fmt.Sprintf("over the %d-byte bound", cfg.MaxBytes)})
			continue
		}
		if err := writeAt(root, name, f.Data, tag); err != nil {
			d.Refused = append(d.Refused, api.Rejected{Name: name, Reason: err.Error()})
			continue
		}
		total += int64(len(f.Data))
		d.Written = append(d.Written, Written{Name: name, Path: filepath.Join(d.Dir, name), Size: int64(len(f.Data))})
	}
	return d, nil
}

// emptyDir reports whether the open directory dir has no entry but "." and "..".
func emptyDir(dir int) (bool, error) {
	buf := make([]byte, 4096)
	n, err := unix.Getdents(dir, buf)
	if err != nil {
		return false, err
	}
	_, _, names := unix.ParseDirent(buf[:n], -1, nil)
	return len(names) == 0, nil
}

// writeAt creates name (a sanitized relative path) under the directory root, making
// intermediate directories, never following a symlink and never overwriting.
func writeAt(root int, name string, data []byte, tag func(fd int)) error {
	parts := strings.Split(name, "/")
	dir := root
	for _, p := range parts[:len(parts)-1] {
		if err := unix.Mkdirat(dir, p, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			closeIfNot(dir, root)
			return fmt.Errorf("create directory %s: %w", p, err)
		}
		next, err := unix.Openat(dir, p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		closeIfNot(dir, root)
		if err != nil {
			return fmt.Errorf("open directory %s: %w", p, err)
		}
		dir = next
	}
	defer closeIfNot(dir, root)
	fd, err := unix.Openat(dir, parts[len(parts)-1], unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return errors.New("already exists: not overwritten")
		}
		return fmt.Errorf("create: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	tag(fd)
	return nil
}

func closeIfNot(fd, keep int) {
	if fd != keep {
		unix.Close(fd)
	}
}
