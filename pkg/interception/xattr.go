package interception

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Extended attributes read from and written to intercepted files.
const (
	XattrOriginURL   = "user.xdg.origin.url"   // set by browsers (Chromium) on downloads
	XattrReferrerURL = "user.xdg.referrer.url" // set by browsers next to the origin

	XattrOrigin  = "user.isolator.origin"  // origin URL, or the origin Isolator observed
	XattrVerdict = "user.isolator.verdict" // trust, isolate, deny or ask
	XattrRule    = "user.isolator.rule"    // policy rule that decided
	XattrTime    = "user.isolator.time"    // decision time, RFC 3339 with nanoseconds, UTC
	XattrSHA256  = "user.isolator.sha256"  // hex SHA-256 of the content that was decided
)

// maxXattrSize bounds what is read from one attribute; longer values are refused.
const maxXattrSize = 64 << 10

// ErrNoRecord is returned by ReadRecord for a file that carries no Isolator verdict.
var ErrNoRecord = errors.New("no isolator record on file")

// Record is the verdict stored on a file as user.isolator.* attributes. The attributes are
// writable by the file's owner, so a Record is information for people and tools
// (getfattr, isoctl policy explain), never an authority: the Gate always asks the Decider.
type Record struct {
	Origin  string
	Verdict Action
	Rule    string
	Time    time.Time
	SHA256  string
}

// ReadRecord reads the Isolator record of path without following a final symlink.
func ReadRecord(path string) (Record, error) {
	get := func(name string) (string, error) { return lgetxattr(path, name) }
	return readRecord(get)
}

// ReadRecordFile reads the Isolator record of the open file f. f may be open with O_PATH
// only: reading the attributes (through /proc/self/fd) does not open the file's content,
// so no fanotify permission event is sent and the Gate is not asked.
func ReadRecordFile(f *os.File) (Record, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return Record{}, err
	}
	var rec Record
	var rerr error
	if err := rc.Control(func(fd uintptr) {
		p := "/proc/self/fd/" + strconv.Itoa(int(fd))
		rec, rerr = readRecord(func(name string) (string, error) {
			return getxattr(name, func(buf []byte) (int, error) { return unix.Getxattr(p, name, buf) })
		})
	}); err != nil {
		return Record{}, err
	}
	return rec, rerr
}

func readRecord(get func(string) (string, error)) (Record, error) {
	var r Record
	v, err := get(XattrVerdict)
	if err != nil {
		return r, err
	}
	if v == "" {
		return r, ErrNoRecord
	}
	r.Verdict = Action(v)
	if r.Origin, err = get(XattrOrigin); err != nil {
		return r, err
	}
	if r.Rule, err = get(XattrRule); err != nil {
		return r, err
	}
	if r.SHA256, err = get(XattrSHA256); err != nil {
		return r, err
	}
	ts, err := get(XattrTime)
	if err != nil {
		return r, err
	}
	if ts != "" {
		if r.Time, err = time.Parse(time.RFC3339Nano, ts); err != nil {
			return r, fmt.Errorf("parse %s of record: %w", XattrTime, err)
		}
	}
	return r, nil
}

// WriteRecord stores r on path as user.isolator.* attributes without following a final
// symlink. The verdict is written last so that a reader never sees a verdict with the
// attributes of an older decision.
func WriteRecord(path string, r Record) error {
	return writeRecord(path, r, func(name string, value []byte) error {
		return unix.Lsetxattr(path, name, value, 0)
	})
}

// writeRecordFd is WriteRecord on an open file descriptor.
func writeRecordFd(fd int, path string, r Record) error {
	return writeRecord(path, r, func(name string, value []byte) error {
		return unix.Fsetxattr(fd, name, value, 0)
	})
}

func writeRecord(path string, r Record, set func(name string, value []byte) error) error {
	attrs := []struct{ name, value string }{
		{XattrOrigin, r.Origin},
		{XattrRule, r.Rule},
		{XattrTime, r.Time.UTC().Format(time.RFC3339Nano)},
		{XattrSHA256, r.SHA256},
		{XattrVerdict, string(r.Verdict)},
	}
	for _, a := range attrs {
		if err := set(a.name, []byte(a.value)); err != nil {
			return fmt.Errorf("set %s on %s: %w", a.name, path, err)
		}
	}
	return nil
}

// lgetxattr returns the attribute's value, or "" if the file does not have it or the file
// system does not support extended attributes.
func lgetxattr(path, name string) (string, error) {
	return getxattr(name, func(buf []byte) (int, error) { return unix.Lgetxattr(path, name, buf) })
}

// fgetxattr is lgetxattr on an open file descriptor.
func fgetxattr(fd int, name string) (string, error) {
	return getxattr(name, func(buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) })
}

func getxattr(name string, get func([]byte) (int, error)) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := get(buf)
		switch {
		case err == nil:
			return string(buf[:n]), nil
		case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
			return "", nil
		case errors.Is(err, unix.ERANGE):
			size, err := get(nil)
			if err != nil {
				return "", fmt.Errorf("get %s: %w", name, err)
			}
			if size > maxXattrSize {
				return "", fmt.Errorf("get %s: value of %d bytes exceeds %d", name, size, maxXattrSize)
			}
			buf = make([]byte, size+1)
		default:
			return "", fmt.Errorf("get %s: %w", name, err)
		}
	}
}
