// Package guestfs is the file namespace a micro VM guest sees.
//
// The syscall layer of package microvm serves every path-taking system call of the guest
// from an FS. The namespace is built only from objects the VMM chose: it has no path, file
// descriptor or handle that leads to the host file system, so no guest path, symlink target
// or ".." sequence can reach a host file. Its layout is:
//
//	/                    the read-only guest image (package image); writes fail with EROFS
//	/input/<Name>        read-only host files given in Config.Inputs, opened once at New
//	/tmp /work /output   writable in-memory trees, bounded together by ScratchBytes and MaxFiles
//	/dev                 null, zero, full, random, urandom, stdin/stdout/stderr and fd links
//	/proc                a synthetic /proc: self, <pid>/exe, <pid>/cmdline, <pid>/fd and Config.ProcFiles
//
// Path resolution follows Linux: absolute paths start at the guest root, relative ones at a
// directory given by the caller; "." and ".." apply per component to the directory reached
// so far, after symlinks are resolved (".." at "/" stays at "/"); absolute symlink targets
// restart at the guest root; at most 40 symlinks are followed per lookup. Errors are
// unix.Errno values, possibly wrapped, with the errno Linux would return.
package guestfs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/image"
)

// Defaults for the zero values of Config's limits.
const (
	DefaultScratchBytes = 64 << 20
	DefaultMaxFiles     = 4096
	DefaultUID          = 1000
	DefaultGID          = 1000
	DefaultPID          = 1
)

// Limits of path resolution, as on Linux.
const (
	// PathMax is the size of the longest path, including its terminating NUL.
	PathMax = 4096
	// NameMax is the length of the longest path component.
	NameMax = 255
	// MaxSymlinks is the number of symlinks one lookup follows before failing with ELOOP.
	MaxSymlinks = 40
)

// mountPoints are the directories of "/" that the namespace mounts its other trees on,
// sorted: the image's entries at and under them are masked.
var mountPoints = [...]string{"/dev", "/input", "/output", "/proc", "/tmp", "/work"}

// MountPoints returns the guest directories that the namespace mounts over the image:
// /dev, /input, /output, /proc, /tmp and /work. The guest never sees an image entry at or
// under one of them (`isoctl image build` refuses to pack one).
func MountPoints() []string { return append([]string(nil), mountPoints[:]...) }

// MountOf returns the mount point that the clean absolute guest path p is at or under, or
// "" when p is in the image.
func MountOf(p string) string {
	for _, m := range mountPoints {
		if p == m || strings.HasPrefix(p, m+"/") {
			return m
		}
	}
	return ""
}

// Input is a host file made visible read-only to the guest as /input/<Name>.
type Input struct {
	Name     string // plain file name inside /input: no "/", not "." or "..", at most 255 bytes
	HostPath string // host file; opened with O_NOFOLLOW, must be a regular file
}

// Config describes the namespace of one guest. The zero value of every limit selects its
// default.
type Config struct {
	Image  *image.Image // read-only root tree; required
	Inputs []Input

	ScratchBytes int64 // bound on file data and symlink targets in /tmp, /work, /output; default 64 MiB
	MaxFiles     int   // bound on directory entries in /tmp, /work, /output; default 4096

	Exe       string                   // target of /proc/self/exe
	Cmdline   []string                 // contents of /proc/self/cmdline, NUL-terminated arguments
	ProcFiles map[string]func() []byte // extra /proc files by path under /proc ("meminfo", "self/maps"); generated at open
	// FDPath reports the guest path open on the guest's file descriptor fd. It backs
	// readlink and open of /proc/self/fd/N (open resolves the returned path again). It is
	// called without any lock of FS held. A path not starting with "/" (e.g. "pipe:[3]")
	// can be read with readlink but not opened (ENXIO).
	FDPath func(fd int) (string, bool)

	// UID and GID are the guest user: owner of scratch files and of /work and /output,
	// checked against permission bits like a user that is not root. Zero selects 1000.
	UID, GID uint32
	PID      int // process id /proc/self points to; default 1
}

// FS is the file namespace of one guest. It is safe for concurrent use. It starts no
// goroutines; Close releases the input files and all scratch data.
type FS struct {
	im           *image.Image
	uid, gid     uint32
	scratchLimit int64
	fileLimit    int
	fdPath       func(int) (string, bool)

	root   *rootDir
	trees  [numTrees]*tree
	inputs []*inputFile

	mu sync.RWMutex
	// Guarded by mu: everything reachable from the scratch trees, and the fields below.
	closed    bool
	usedBytes int64  // scratch bytes charged
	usedFiles int    // scratch directory entries charged
	nextIno   uint64 // next inode number for scratch nodes
}

// ErrInvalidConfig is wrapped by the errors New returns for a bad Config.
var ErrInvalidConfig = errors.New("invalid guestfs config")

// New builds the namespace described by cfg. It opens every input file; the caller must
// Close the FS to release them.
func New(cfg Config) (*FS, error) {
	if cfg.Image == nil {
		return nil, fmt.Errorf("%w: no image", ErrInvalidConfig)
	}
	f := &FS{
		im:           cfg.Image,
		uid:          cfg.UID,
		gid:          cfg.GID,
		scratchLimit: cfg.ScratchBytes,
		fileLimit:    cfg.MaxFiles,
		fdPath:       cfg.FDPath,
		nextIno:      firstScratchIno,
	}
	if f.uid == 0 {
		f.uid = DefaultUID
	}
	if f.gid == 0 {
		f.gid = DefaultGID
	}
	if f.scratchLimit <= 0 {
		f.scratchLimit = DefaultScratchBytes
	}
	if f.fileLimit <= 0 {
		f.fileLimit = DefaultMaxFiles
	}
	pid := cfg.PID
	if pid <= 0 {
		pid = DefaultPID
	}
	ok := false
	defer func() {
		if !ok {
			f.closeInputs()
		}
	}()
	inputDir, err := f.openInputs(cfg.Inputs)
	if err != nil {
		return nil, err
	}
	procDir, err := f.buildProc(cfg, pid)
	if err != nil {
		return nil, err
	}
	f.buildTrees(inputDir, procDir)
	ok = true
	return f, nil
}

// openInputs opens the input files and builds /input.
func (f *FS) openInputs(inputs []Input) (*synthDir, error) {
	dir := newSynthDir(inoInputDir, 0o555)
	for i, in := range inputs {
		if !validName(in.Name) {
			return nil, fmt.Errorf("%w: input name %q", ErrInvalidConfig, in.Name)
		}
		if _, dup := dir.kids[in.Name]; dup {
			return nil, fmt.Errorf("%w: duplicate input name %q", ErrInvalidConfig, in.Name)
		}
		// O_NONBLOCK keeps a FIFO from blocking the open; O_NOCTTY keeps a terminal from
		// becoming ours. Neither matters for the regular files accepted below.
		fd, err := unix.Open(in.HostPath, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
		if err != nil {
			return nil, fmt.Errorf("open input %q: %w", in.HostPath, &os.PathError{Op: "open", Path: in.HostPath, Err: err})
		}
		file := os.NewFile(uintptr(fd), in.HostPath)
		in := &inputFile{f: file, ino: inoFirstInput + uint64(i)}
		f.inputs = append(f.inputs, in)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, fmt.Errorf("stat input %q: %w", file.Name(), err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil, fmt.Errorf("%w: input %q is not a regular file", ErrInvalidConfig, file.Name())
		}
		in.mtime = timespec(st.Mtim)
		dir.add(inputs[i].Name, in)
	}
	return dir, nil
}

// validName reports whether s can be one path component.
func validName(s string) bool {
	return s != "" && s != "." && s != ".." && len(s) <= NameMax && !strings.ContainsAny(s, "/\x00")
}

func (f *FS) closeInputs() error {
	var errs []error
	for _, in := range f.inputs {
		if err := in.f.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	f.inputs = nil
	return errors.Join(errs...)
}

// Close closes the input files and frees the scratch trees. Operations on the FS or its
// open files fail with EBADF afterwards.
func (f *FS) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	for _, t := range f.trees {
		if t.scratch != nil {
			t.scratch.kids = nil
		}
	}
	f.usedBytes, f.usedFiles = 0, 0
	return f.closeInputs()
}

// Usage reports the scratch bytes and directory entries in use.
func (f *FS) Usage() (bytes int64, files int) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.usedBytes, f.usedFiles
}
