package interception

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrSystemDir is wrapped by the errors of the Watcher and the Gate for a directory they
// refuse to watch or mark because it is a system directory (see IsSystemDir).
var ErrSystemDir = errors.New("system directory")

// ErrDirReplaced is wrapped by the errors of Gate.AddTree and Watcher.AddDir for a
// directory that is no longer the one that was checked: its path now opens (without
// following symbolic links) to another directory, or to one with another owner.
var ErrDirReplaced = errors.New("directory replaced since it was checked")

// Dir is a directory as it was checked for use as a download directory (see DownloadDir):
// its path and the identity it had then. Gate.AddTree and Watcher.AddDir use it only while
// its path opens, without following a symbolic link anywhere on the way, to that same
// directory (device, inode and owner), and they mark, watch and walk it through that
// descriptor: a directory swapped for a symbolic link, or for another directory, between
// the check and the use is refused, never followed.
type Dir struct {
	Path string // absolute, without symbolic links
	Dev  uint64
	Ino  uint64
	UID  uint32 // owner
}

// open opens d for reading and checks that it is still the directory that was checked.
func (d Dir) open() (int, error) {
	fd, err := openDir(d.Path)
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, &fs.PathError{Op: "stat", Path: d.Path, Err: err}
	}
	if st.Dev != d.Dev || st.Ino != d.Ino || st.Uid != d.UID {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %w", d.Path, ErrDirReplaced)
	}
	return fd, nil
}

// dirOf returns the Dir of the directory open as fd, named path.
func dirOf(fd int, path string) (Dir, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Dir{}, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return Dir{}, fmt.Errorf("%s is not a directory", path)
	}
	return Dir{Path: path, Dev: st.Dev, Ino: st.Ino, UID: st.Uid}, nil
}

// resolveRoot returns the configured directory d with symbolic links resolved: a download
// directory that is a symbolic link (~/Downloads -> /mnt/disk/dl) is watched and gated
// where its files are. It must be a directory and not a system directory. The identity
// returned is the one of the directory the resolved path opened to.
func resolveRoot(d string) (Dir, error) {
	abs, err := filepath.Abs(d)
	if err != nil {
		return Dir{}, err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return Dir{}, err
	}
	if IsSystemDir(real) {
		return Dir{}, fmt.Errorf("%s: %w", describeResolved(abs, real), ErrSystemDir)
	}
	fd, err := openDir(real)
	if errors.Is(err, unix.ENOTDIR) {
		return Dir{}, fmt.Errorf("%s is not a directory", abs)
	}
	if err != nil {
		return Dir{}, err
	}
	defer unix.Close(fd)
	return dirOf(fd, real)
}

func describeResolved(abs, real string) string {
	if abs == real {
		return abs
	}
	return fmt.Sprintf("%s (resolved: %s)", abs, real)
}

// openDir opens the directory at the absolute path dir for reading without following a
// symbolic link anywhere on the way (see openNoSymlinks), and refuses a system directory:
// a directory of the tree swapped for a symbolic link after it was seen cannot make the
// Gate mark, or the Watcher watch, what it points to. Opening a directory sends no
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

// openNoSymlinks opens the absolute path with flags without following a symbolic link
// anywhere on the way; a symbolic link gives ELOOP.
func openNoSymlinks(path string, flags int) (int, error) {
	fd, err := openBeneath(unix.AT_FDCWD, path, flags, unix.RESOLVE_NO_SYMLINKS)
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// openBeneath opens name relative to the directory dirfd with flags and the openat2
// resolve flags (RESOLVE_NO_SYMLINKS and RESOLVE_NO_MAGICLINKS are always added). Where the
// kernel lacks openat2 (before 5.6) it opens name one component at a time with O_NOFOLLOW,
// refusing "..": the same guarantee, at a few more system calls.
func openBeneath(dirfd int, name string, flags int, resolve uint64) (int, error) {
	fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{Flags: uint64(flags),
		Resolve: resolve | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if !errors.Is(err, unix.ENOSYS) {
		return fd, err
	}
	if resolve&unix.RESOLVE_BENEATH != 0 && strings.HasPrefix(name, "/") {
		return -1, unix.EXDEV
	}
	return openByComponents(dirfd, name, flags)
}

// openByComponents is openBeneath without openat2.
func openByComponents(dirfd int, name string, flags int) (int, error) {
	const dirFlags = unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	parts := strings.FieldsFunc(name, func(r rune) bool { return r == '/' })
	if len(parts) == 0 {
		parts = []string{"."}
	}
	cur := dirfd
	if strings.HasPrefix(name, "/") {
		fd, err := unix.Open("/", dirFlags, 0)
		if err != nil {
			return -1, err
		}
		cur = fd
	}
	closeCur := func() {
		if cur != dirfd {
			unix.Close(cur)
		}
	}
	for i, p := range parts {
		if p == ".." {
			closeCur()
			return -1, unix.EXDEV
		}
		f := dirFlags
		if i == len(parts)-1 {
			f = flags | unix.O_NOFOLLOW
		}
		fd, err := unix.Openat(cur, p, f, 0)
		closeCur()
		if err != nil {
			return -1, err
		}
		cur = fd
	}
	return cur, nil
}

// walkDirs calls visit for the directory open as fd, named path, and then for each
// directory below it. Every directory below is opened from its parent's descriptor with
// O_NOFOLLOW (openat), never by its path: one swapped for a symbolic link since it was
// listed is skipped, not followed, and the walk never leaves the tree fd is the top of
// (short of a mount point in it). visit's descriptor is valid only while it runs; it
// returns whether to descend. An error of visit for the top directory is returned; below
// it, the directory is skipped. file, if not nil, is called with the path of each regular
// file. A directory whose path would exceed PATH_MAX is skipped: it could not be watched
// by name anyway.
func walkDirs(fd int, path string, visit func(fd int, path string) (bool, error), file func(path string)) error {
	descend, err := visit(fd, path)
	if err != nil || !descend {
		return err
	}
	walkBelow(fd, path, visit, file)
	return nil
}

func walkBelow(fd int, path string, visit func(fd int, path string) (bool, error), file func(path string)) {
	// The listing reads a duplicate: os.File takes its descriptor and closes it.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return
	}
	d := os.NewFile(uintptr(dup), path)
	ents, _ := d.ReadDir(-1) // what could be read; a directory removed meanwhile has none
	d.Close()
	for _, e := range ents {
		p := filepath.Join(path, e.Name())
		switch {
		case e.Type().IsRegular():
			if file != nil {
				file(p)
			}
		case e.IsDir():
			if len(p) >= unix.PathMax {
				continue
			}
			cfd, err := unix.Openat(fd, e.Name(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				continue // gone, or replaced by a symbolic link or a file
			}
			if descend, err := visit(cfd, p); err == nil && descend {
				walkBelow(cfd, p, visit, file)
			}
			unix.Close(cfd)
		}
	}
}
