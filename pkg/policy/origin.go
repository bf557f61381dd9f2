package policy

import (
	"errors"
	"fmt"
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
	if origin, err = getxattr(path, XattrOrigin); err != nil {
		return "", "", err
	}
	if origin == "" {
		if origin, err = getxattr(path, XattrIsolatorOrigin); err != nil {
			return "", "", err
		}
	}
	if referrer, err = getxattr(path, XattrReferrer); err != nil {
		return "", "", err
	}
	if referrer == "" {
		if referrer, err = getxattr(path, XattrIsolatorReferrer); err != nil {
			return "", "", err
		}
	}
	return origin, referrer, nil
}

func getxattr(path, name string) (string, error) {
	buf := make([]byte, initialXattrBufferSize)
	for {
		n, err := unix.Getxattr(path, name, buf)
		switch {
		case err == nil:
			return strings.TrimRight(string(buf[:n]), "\x00"), nil
		case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
			return "", nil
		case errors.Is(err, unix.ERANGE) && len(buf) < maxXattrSize:
			buf = make([]byte, maxXattrSize)
			continue
		}
		return "", fmt.Errorf("policy: reading %s of %s: %w", name, path, err)
	}
}
