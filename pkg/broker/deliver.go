package broker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// Deliver writes files into cfg.Dir/cfg.TaskID with the caller's credentials, as a
// Deliverer does with their contents in one chunk each. Deliver fails only when the task
// directory cannot be made.
func Deliver(cfg DeliverConfig, files []api.File) (*Delivery, error) {
	announced := make([]api.File, len(files))
	for i, f := range files {
		announced[i] = api.File{Name: f.Name, Mode: f.Mode, Size: int64(len(f.Data))}
	}
	dl, err := NewDeliverer(cfg, announced)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		dl.Write(api.File{Name: f.Name, Mode: f.Mode, Size: int64(len(f.Data)), Data: f.Data})
	}
	return dl.Close(), nil
}

// A Deliverer writes a task's result files into the per-task directory as their contents
// arrive in chunks (the api.EventFile events after a result event), with the caller's
// credentials. The task directory is created fresh (an existing one is an error); every file
// and subdirectory is created relative to it with O_NOFOLLOW and O_EXCL, so nothing follows
// a symlink or overwrites an existing file. Files are written mode 0644 whatever the guest
// asked, so no result is executable. Files beyond the bounds (counted in the order the
// files come, by their announced sizes), with unsafe names, that cannot be created or that
// do not arrive whole are listed in Delivery.Refused; a file refused after it was created
// is removed. A Deliverer is not safe for concurrent use.
type Deliverer struct {
	cfg       DeliverConfig
	root      int
	d         *Delivery
	announced []api.File
	started   []bool
	cur       *partial // the file being written, if any
	files     int      // written or being written
	bytes     int64    // announced size of those
}

// partial is a result file being written.
type partial struct {
	i       int // in announced
	name    string
	f       *os.File
	dir     int // its directory, to remove it
	base    string
	written int64
}

// NewDeliverer creates the task directory cfg.Dir/cfg.TaskID for the files announced (their
// names, modes and sizes, as in api.Results) and returns a Deliverer that writes them as
// their chunks are given to Write. Close it to finish.
func NewDeliverer(cfg DeliverConfig, announced []api.File) (*Deliverer, error) {
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
	dl := &Deliverer{cfg: cfg, root: root, d: &Delivery{Dir: filepath.Join(cfg.Dir, cfg.TaskID)},
		announced: announced, started: make([]bool, len(announced))}
	if !created {
		if empty, err := emptyDir(root); err != nil || !empty {
			unix.Close(root)
			if err == nil {
				err = errors.New("not empty")
			}
			return nil, fmt.Errorf("task directory %s: %w", dl.d.Dir, err)
		}
	}
	if created {
		dl.tag(root)
	}
	return dl, nil
}

// tag sets the user.isolator.* attributes on fd.
func (dl *Deliverer) tag(fd int) {
	for _, t := range [][2]string{{XattrTask, dl.cfg.TaskID}, {XattrSourceSHA256, dl.cfg.SourceSHA256}, {XattrHandler, dl.cfg.Handler}} {
		if t[1] == "" {
			continue
		}
		if err := unix.Fsetxattr(fd, t[0], []byte(t[1]), 0); err != nil && dl.d.XattrWarning == "" {
			dl.d.XattrWarning = fmt.Sprintf("results not tagged with %s: %v", t[0], err)
		}
	}
}

// Write writes one chunk of a result file. A chunk at offset 0 starts the next announced
// file of that name (and ends the one before); the others must follow on in order. Chunks
// of a file that was refused, or that was never announced, are dropped.
func (dl *Deliverer) Write(chunk api.File) {
	if chunk.Offset == 0 {
		dl.finish()
		i := slices.IndexFunc(dl.announced, func(f api.File) bool { return f.Name == chunk.Name })
		for i >= 0 && dl.started[i] {
			next := slices.IndexFunc(dl.announced[i+1:], func(f api.File) bool { return f.Name == chunk.Name })
			if next < 0 {
				i = -1
				break
			}
			i += 1 + next
		}
		if i < 0 {
			dl.d.Refused = append(dl.d.Refused, api.Rejected{Name: chunk.Name, Reason: "not announced with the results"})
			return
		}
		dl.start(i)
	}
	c := dl.cur
	if c == nil || dl.announced[c.i].Name != chunk.Name {
		return
	}
	size := dl.announced[c.i].Size
	switch {
	case chunk.Offset != c.written:
		dl.abort(fmt.Sprintf("chunk at offset %d, expected %d", chunk.Offset, c.written))
		return
	case c.written+int64(len(chunk.Data)) > size:
		dl.abort(fmt.Sprintf("more than the %d bytes announced", size))
		return
	}
	if _, err := c.f.Write(chunk.Data); err != nil {
		dl.abort(fmt.Sprintf("write: %v", err))
		return
	}
	c.written += int64(len(chunk.Data))
	if c.written == size {
		dl.finish()
	}
}

// start creates announced file i, unless it is refused.
func (dl *Deliverer) start(i int) {
	dl.started[i] = true
	f := dl.announced[i]
	refuse := func(reason string) { dl.d.Refused = append(dl.d.Refused, api.Rejected{Name: f.Name, Reason: reason}) }
	name, err := SanitizeName(f.Name)
	switch {
	case err != nil:
		refuse(err.Error())
		return
	case dl.files >= dl.cfg.MaxFiles:
		refuse(fmt.Sprintf("more than %d files", dl.cfg.MaxFiles))
		return
	case f.Size < 0 || dl.bytes+f.Size > dl.cfg.MaxBytes:
		refuse(fmt.Sprintf("over the %d-byte bound", dl.cfg.MaxBytes))
		return
	}
	dir, base, file, err := createAt(dl.root, name)
	if err != nil {
		refuse(err.Error())
		return
	}
	dl.tag(int(file.Fd()))
	dl.files++
	dl.bytes += f.Size
	dl.cur = &partial{i: i, name: name, f: file, dir: dir, base: base}
	if f.Size == 0 {
		dl.finish()
	}
}

// finish ends the file being written: whole, it is written; short, it is refused.
func (dl *Deliverer) finish() {
	c := dl.cur
	if c == nil {
		return
	}
	if size := dl.announced[c.i].Size; c.written < size {
		dl.abort(fmt.Sprintf("incomplete: %d of %d bytes received", c.written, size))
		return
	}
	dl.cur = nil
	err := c.f.Close()
	closeIfNot(c.dir, dl.root)
	if err != nil {
		dl.d.Refused = append(dl.d.Refused, api.Rejected{Name: c.name, Reason: fmt.Sprintf("close: %v", err)})
		return
	}
	dl.d.Written = append(dl.d.Written, Written{Name: c.name, Path: filepath.Join(dl.d.Dir, c.name), Size: c.written})
}

// abort removes the file being written and refuses it.
func (dl *Deliverer) abort(reason string) {
	c := dl.cur
	dl.cur = nil
	c.f.Close()
	unix.Unlinkat(c.dir, c.base, 0)
	closeIfNot(c.dir, dl.root)
	dl.files--
	dl.bytes -= dl.announced[c.i].Size
	dl.d.Refused = append(dl.d.Refused, api.Rejected{Name: c.name, Reason: reason})
}

// Close finishes the delivery: a file that did not arrive whole is refused, and so is every
// announced file that did not arrive at all.
func (dl *Deliverer) Close() *Delivery {
	dl.finish()
	for i, f := range dl.announced {
		if !dl.started[i] {
			dl.started[i] = true
			dl.d.Refused = append(dl.d.Refused, api.Rejected{Name: f.Name, Reason: "not received"})
		}
	}
	if dl.root >= 0 {
		unix.Close(dl.root)
		dl.root = -1
	}
	return dl.d
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

// createAt creates name (a sanitized relative path) under the directory root, making
// intermediate directories, never following a symlink and never overwriting. It returns the
// open file and its directory (root itself, or a descriptor the caller closes) and base name.
func createAt(root int, name string) (dir int, base string, f *os.File, err error) {
	parts := strings.Split(name, "/")
	dir = root
	for _, p := range parts[:len(parts)-1] {
		if err := unix.Mkdirat(dir, p, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			closeIfNot(dir, root)
			return -1, "", nil, fmt.Errorf("create directory %s: %w", p, err)
		}
		next, err := unix.Openat(dir, p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		closeIfNot(dir, root)
		if err != nil {
			return -1, "", nil, fmt.Errorf("open directory %s: %w", p, err)
		}
		dir = next
	}
	base = parts[len(parts)-1]
	fd, err := unix.Openat(dir, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		closeIfNot(dir, root)
		if errors.Is(err, unix.EEXIST) {
			return -1, "", nil, errors.New("already exists: not overwritten")
		}
		return -1, "", nil, fmt.Errorf("create: %w", err)
	}
	return dir, base, os.NewFile(uintptr(fd), name), nil
}

func closeIfNot(fd, keep int) {
	if fd != keep {
		unix.Close(fd)
	}
}
