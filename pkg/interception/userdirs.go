package interception

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ParseUserDirs parses an XDG user-dirs.dirs file (normally ~/.config/user-dirs.dirs) and
// returns its variables, such as XDG_DOWNLOAD_DIR, with "$HOME" expanded to home. As the
// xdg-user-dirs specification requires, a value is a double-quoted path that is either
// absolute or starts with $HOME; other lines, comments and malformed values are skipped.
// A value of "$HOME/" alone means the directory is disabled and is skipped too.
func ParseUserDirs(r io.Reader, home string) (map[string]string, error) {
	out := make(map[string]string)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok || !validVarName(key) {
			continue
		}
		val = strings.TrimSpace(val)
		if len(val) < 2 || val[0] != '"' || val[len(val)-1] != '"' {
			continue
		}
		val = unescapeShell(val[1 : len(val)-1])
		switch {
		case val == "$HOME" || val == "$HOME/":
			continue // disabled: the spec maps a disabled directory to $HOME
		case strings.HasPrefix(val, "$HOME/"):
			val = filepath.Join(home, val[len("$HOME/"):])
		case strings.HasPrefix(val, "/"):
			val = filepath.Clean(val)
		default:
			continue
		}
		if strings.ContainsRune(val, 0) {
			continue
		}
		out[key] = val
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read user-dirs: %w", err)
	}
	return out, nil
}

func validVarName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// unescapeShell removes the backslash escapes xdg-user-dirs-update writes for '"', '\',
// '$' and '`'.
func unescapeShell(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ErrNotUserDir is wrapped by the error DownloadDir returns for a download directory it
// refuses: one that is not the user's own.
var ErrNotUserDir = errors.New("not a download directory of the user")

// maxUserDirsSize bounds what is read of a user-dirs.dirs file.
const maxUserDirsSize = 64 << 10

// DownloadDir returns the XDG download directory of the user uid whose home is home: the
// XDG_DOWNLOAD_DIR of home/.config/user-dirs.dirs, else home/Downloads, with symbolic links
// resolved. The user controls both that file and the home, and the daemon watches and
// gates the directory as root, so it is accepted only if, resolved, it is a directory
// strictly inside the resolved home, owned by uid, and not a system directory (see
// IsSystemDir); otherwise the error wraps ErrNotUserDir and says why. A directory that does
// not exist gives an error wrapping fs.ErrNotExist.
//
// The checks are made on the directory itself: the resolved path is opened from the home
// without following a symbolic link (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), and the
// Dir returned carries the identity (device, inode, owner) of what was opened, which
// Gate.AddTree and Watcher.AddDir check again on their own descriptor: the user swapping
// the directory for a symbolic link after the check makes them refuse it, not follow it.
func DownloadDir(home string, uid uint32) (Dir, error) {
	realHome, err := filepath.EvalSymlinks(home)
	if err != nil {
		return Dir{}, fmt.Errorf("download dir: home: %w", err)
	}
	dir := filepath.Join(home, "Downloads")
	vars, err := readUserDirs(filepath.Join(realHome, ".config", "user-dirs.dirs"), home)
	if err != nil {
		return Dir{}, fmt.Errorf("download dir of %s: %w", home, err)
	}
	if d, ok := vars["XDG_DOWNLOAD_DIR"]; ok {
		dir = d
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return Dir{}, fmt.Errorf("download dir: %w", err)
	}
	what := dir
	if real != dir {
		what = fmt.Sprintf("%s (resolved: %s)", dir, real)
	}
	if real == realHome {
		return Dir{}, fmt.Errorf("%w: %s is the home itself", ErrNotUserDir, what)
	}
	rel, inside := strings.CutPrefix(real, realHome+string(filepath.Separator))
	if !inside || realHome == "/" {
		return Dir{}, fmt.Errorf("%w: %s is not inside the home %s", ErrNotUserDir, what, realHome)
	}
	if IsSystemDir(real) {
		return Dir{}, fmt.Errorf("%w: %s is a system directory", ErrNotUserDir, what)
	}
	const pathFlags = unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC
	hfd, err := openNoSymlinks(realHome, pathFlags)
	if err != nil {
		return Dir{}, fmt.Errorf("download dir: home: %w", err)
	}
	defer unix.Close(hfd)
	fd, err := openBeneath(hfd, rel, pathFlags, unix.RESOLVE_BENEATH)
	switch {
	case errors.Is(err, unix.ENOTDIR):
		return Dir{}, fmt.Errorf("%w: %s is not a directory", ErrNotUserDir, what)
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return Dir{}, fmt.Errorf("%w: %s was replaced by a symbolic link while it was checked", ErrNotUserDir, what)
	case err != nil:
		return Dir{}, fmt.Errorf("download dir: %w", &fs.PathError{Op: "open", Path: real, Err: err})
	}
	defer unix.Close(fd)
	d, err := dirOf(fd, real)
	if err != nil {
		return Dir{}, fmt.Errorf("download dir: %w", err)
	}
	if d.UID != uid {
		return Dir{}, fmt.Errorf("%w: %s is owned by uid %d, not by the user (uid %d)", ErrNotUserDir, what, d.UID, uid)
	}
	return d, nil
}

// readUserDirs reads the user-dirs.dirs file at path, if there is one. It must be a regular
// file (a FIFO would block); only its first 64 KiB are read.
func readUserDirs(path, home string) (map[string]string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrNotUserDir, path)
	}
	return ParseUserDirs(io.LimitReader(f, maxUserDirsSize), home)
}

// systemDirs are the trees of the system's own files. None is ever a download directory:
// gating them would make every program on the machine wait for the daemon.
var systemDirs = []string{"/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
	"/opt", "/proc", "/sbin", "/snap", "/sys", "/usr", "/var/cache", "/var/lib", "/var/log", "/var/spool"}

// IsSystemDir reports whether the clean absolute path p is the root directory or inside
// one of the system's trees (/usr, /etc, /bin, /lib, /boot, /dev, /proc, /sys, /opt, /var/lib
// and the like). The Watcher and the Gate refuse such directories.
func IsSystemDir(p string) bool {
	if p == "/" {
		return true
	}
	for _, d := range systemDirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// A UserDir is a user's download directory as UserDownloadDirs found it.
type UserDir struct {
	User string // login name
	UID  uint32
	Home string
	Dir  Dir   // the download directory, resolved and checked; zero if refused
	Err  error // why Dir was refused (wraps ErrNotUserDir or the I/O error); nil if accepted
}

// UserDownloadDirs returns the download directories (see DownloadDir) of the users listed in
// passwdPath (normally /etc/passwd) whose home directory exists, in file order, each
// once. Users with uid below minUID (system accounts) are skipped, except root when
// includeRoot is set, and so is nobody (65534). Users without a download directory are
// left out; refused directories are listed with Err set.
func UserDownloadDirs(passwdPath string, minUID uint32, includeRoot bool) ([]UserDir, error) {
	f, err := os.Open(passwdPath)
	if err != nil {
		return nil, fmt.Errorf("default download dirs: %w", err)
	}
	defer f.Close()
	var dirs []UserDir
	seen := make(map[string]bool)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 7 {
			continue
		}
		var uid uint32
		if _, err := fmt.Sscan(fields[2], &uid); err != nil {
			continue
		}
		if uid < minUID && !(includeRoot && uid == 0) || uid == 65534 {
			continue
		}
		home := fields[5]
		if !filepath.IsAbs(home) {
			continue
		}
		if st, err := os.Stat(home); err != nil || !st.IsDir() {
			continue
		}
		u := UserDir{User: fields[0], UID: uid, Home: home}
		d, err := DownloadDir(home, uid)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			u.Err = err
		case seen[d.Path]:
			continue
		default:
			seen[d.Path] = true
			u.Dir = d
		}
		dirs = append(dirs, u)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("default download dirs: %w", err)
	}
	return dirs, nil
}

// DefaultDownloadDirs returns the accepted directories of UserDownloadDirs.
func DefaultDownloadDirs(passwdPath string, minUID uint32, includeRoot bool) ([]Dir, error) {
	users, err := UserDownloadDirs(passwdPath, minUID, includeRoot)
	if err != nil {
		return nil, err
	}
	var dirs []Dir
	for _, u := range users {
		if u.Err == nil {
			dirs = append(dirs, u.Dir)
		}
	}
	return dirs, nil
}
