package interception

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrSystemDir is wrapped by the errors of the Watcher and the Gate for a directory they
// refuse to watch or mark because it is a system directory (see IsSystemDir).
var ErrSystemDir = errors.New("system directory")

// resolveRoot returns the absolute form of the configured directory d with symbolic links
// resolved: a download directory that is a symbolic link (~/Downloads -> /mnt/disk/dl) is
// watched and gated where its files are. It must be a directory and not a system
// directory.
func resolveRoot(d string) (string, error) {
	abs, err := filepath.Abs(d)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", err
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%s is not a directory", abs)
	}
	if IsSystemDir(real) {
		return "", fmt.Errorf("%s: %w", describeResolved(abs, real), ErrSystemDir)
	}
	return real, nil
}

func describeResolved(abs, real string) string {
	if abs == real {
		return abs
	}
	return fmt.Sprintf("%s (resolved: %s)", abs, real)
}

// openDir opens the directory at the absolute path dir for reading without following a
// symbolic link anywhere on the way (openat2 with RESOLVE_NO_SYMLINKS; where the kernel
// lacks openat2, O_NOFOLLOW guards the last component only), and refuses a system
// directory: a directory of the tree swapped for a symbolic link after it was seen cannot
// make the Gate mark, or the Watcher watch, what it points to. Opening a directory sends no
// permission event (the Gate's marks leave FAN_ONDIR out).
func openDir(dir string) (int, error) {
	fd, err := openNoSymlinks(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return -1, err
	}
	if real, err := fdPath(fd); err == nil && IsSystemDir(real) {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %w", real, ErrSystemDir)
	}
	return fd, nil
}

// openNoSymlinks opens path with flags without following a symbolic link anywhere on the
// way; a symbolic link gives ELOOP.
func openNoSymlinks(path string, flags int) (int, error) {
	fd, err := unix.Openat2(unix.AT_FDCWD, path, &unix.OpenHow{Flags: uint64(flags),
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if errors.Is(err, unix.ENOSYS) {
		fd, err = unix.Open(path, flags|unix.O_NOFOLLOW, 0)
	}
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}
