package policy

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Extended attributes holding where a file came from. Chromium writes the xdg ones on
// every download; Firefox writes none, so Isolator's download watcher writes its own
// user.isolator.* tags.
const (
	XattrOrigin            = "user.xdg.origin.url"
	XattrReferrer          = "user.xdg.referrer.url"
	XattrIsolatorOrigin    = "user.isolator.origin"
	XattrIsolatorReferrer  = "user.isolator.referrer"
	maxXattrSize           = 64 << 10
	initialXattrBufferSize = 1024
)

// ReadOrigin returns the download origin and referrer recorded in the extended attributes
// of the file at path: user.xdg.origin.url and user.xdg.referrer.url, or where those are
// absent Isolator's user.isolator.origin and user.isolator.referrer. Missing attributes,
// and file systems without user xattrs, give empty strings and no error.
func ReadOrigin(path string) (origin, referrer string, err error) {
	return readOrigin(path, func(name string, buf []byte) (int, error) { return unix.Getxattr(path, name, buf) })
}

// ReadOriginFile is ReadOrigin for an open file: the attributes are read from the file's
// descriptor (fgetxattr), so they are those of the file the caller opened, whatever its
// path names now. The kernel checks read permission on the file for user.* attributes
// with the identity of the calling thread.
func ReadOriginFile(f *os.File) (origin, referrer string, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return "", "", fmt.Errorf("policy: reading the origin of %s: %w", f.Name(), err)
	}
	return readOrigin(f.Name(), func(name string, buf []byte) (n int, err error) {
		if cerr := rc.Control(func(fd uintptr) { n, err = unix.Fgetxattr(int(fd), name, buf) }); cerr != nil {
			return 0, cerr
		}
		return n, err
	})
}

type getxattrFunc func(name string, buf []byte) (int, error)

func readOrigin(what string, get getxattrFunc) (origin, referrer string, err error) {
	if origin, err = getxattr(what, get, XattrOrigin); err != nil {
		return "", "", err
	}
	if origin == "" {
		if origin, err = getxattr(what, get, XattrIsolatorOrigin); err != nil {
			return "", "", err
		}
	}
	if referrer, err = getxattr(what, get, XattrReferrer); err != nil {
		return "", "", err
	}
	if referrer == "" {
		if referrer, err = getxattr(what, get, XattrIsolatorReferrer); err != nil {
			return "", "", err
		}
	}
	return origin, referrer, nil
}

func getxattr(what string, get getxattrFunc, name string) (string, error) {
	buf := make([]byte, initialXattrBufferSize)
	for {
		n, err := get(name, buf)
		switch {
		case err == nil:
			return strings.TrimRight(string(buf[:n]), "\x00"), nil
		case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
			return "", nil
		case errors.Is(err, unix.ERANGE) && len(buf) < maxXattrSize:
			buf = make([]byte, maxXattrSize)
			continue
		}
		return "", fmt.Errorf("policy: reading %s of %s: %w", name, what, err)
	}
}
