package microvm

import (
	"encoding/binary"
	"math"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/guestfs"
)

// Extended attributes and statfs. guestfs gives files of the namespace their semantics
// (see guestfs/xattr.go); pipes, eventfds and epoll files are like Linux's pipefs and
// anonymous inodes, which have no extended attributes. Arguments are checked in Linux's
// order: the path calls resolve the path first for get and list, and copy the name and
// value first for set and remove.

// xattrName reads an attribute name: 1 to XATTR_NAME_MAX bytes, else ERANGE.
func (t *thread) xattrName(addr uint64) (string, unix.Errno) {
	name, e := t.readString(addr, guestfs.XattrNameMax)
	if e == unix.ENAMETOOLONG || e == 0 && name == "" {
		return "", unix.ERANGE
	}
	return name, e
}

// pathCall in place of a descriptor selects the path form of an xattr call.
const pathCall = math.MinInt

// xattrTarget is the file an xattr call names: a path, or a descriptor (o != nil).
type xattrTarget struct {
	dir, path string
	follow    bool
	o         *openFile
}

// xattrTarget reads the path argument of the path calls (fd == pathCall), or looks up fd.
func (t *thread) xattrTarget(fd int, pathAddr uint64, follow bool) (xattrTarget, unix.Errno) {
	if fd != pathCall {
		o, e := t.file(fd)
		return xattrTarget{o: o}, e
	}
	dir, p, e := t.pathArg(unix.AT_FDCWD, pathAddr)
	return xattrTarget{dir: dir, path: p, follow: follow}, e
}

func (x xattrTarget) release() {
	if x.o != nil {
		x.o.unref()
	}
}

// copyOutSized stores b at buf as getxattr and listxattr do: with size 0 only its length
// is returned; when it does not fit in size, ERANGE, or E2BIG if it would not fit in
// the largest buffer the call takes (max).
func (t *thread) copyOutSized(b []byte, buf, size, max uint64) (uint64, unix.Errno) {
	switch {
	case size == 0:
		return uint64(len(b)), 0
	case uint64(len(b)) > min(size, max) && size >= max:
		return 0, unix.E2BIG
	case uint64(len(b)) > size:
		return 0, unix.ERANGE
	}
	return uint64(len(b)), t.writeMem(buf, b)
}

// getxattr serves getxattr and lgetxattr (fd == pathCall) and fgetxattr.
func (t *thread) getxattr(fd int, pathAddr uint64, follow bool, nameAddr, buf, size uint64) (uint64, unix.Errno) {
	x, e := t.xattrTarget(fd, pathAddr, follow)
	if e != 0 {
		return 0, e
	}
	defer x.release()
	name, e := t.xattrName(nameAddr)
	if e != 0 {
		return 0, e
	}
	var v []byte
	var err error
	switch {
	case x.o == nil:
		v, err = t.vm.fs.Getxattr(x.dir, x.path, x.follow, name)
	default:
		if f, ok := x.o.file.(*fsFile); ok {
			v, err = f.f.Getxattr(name)
		} else {
			err = anonXattr(name, false)
		}
	}
	if err != nil {
		return 0, toErrno(err)
	}
	return t.copyOutSized(v, buf, size, guestfs.XattrSizeMax)
}

// listxattr serves listxattr and llistxattr (fd == pathCall) and flistxattr.
func (t *thread) listxattr(fd int, pathAddr uint64, follow bool, buf, size uint64) (uint64, unix.Errno) {
	x, e := t.xattrTarget(fd, pathAddr, follow)
	if e != 0 {
		return 0, e
	}
	defer x.release()
	var names []string
	var err error
	switch {
	case x.o == nil:
		names, err = t.vm.fs.Listxattr(x.dir, x.path, x.follow)
	default:
		if f, ok := x.o.file.(*fsFile); ok {
			names, err = f.f.Listxattr()
		}
	}
	if err != nil {
		return 0, toErrno(err)
	}
	var b strings.Builder
	for _, n := range names {
		b.WriteString(n)
		b.WriteByte(0)
	}
	return t.copyOutSized([]byte(b.String()), buf, size, guestfs.XattrListMax)
}

// setxattr serves setxattr, lsetxattr (fd == pathCall) and fsetxattr, and with remove
// removexattr, lremovexattr and fremovexattr.
func (t *thread) setxattr(fd int, pathAddr uint64, follow bool, nameAddr, valueAddr, size uint64, flags int, remove bool) unix.Errno {
	var (
		o   *openFile
		e   unix.Errno
		err error
	)
	if fd != pathCall {
		// The descriptor comes first for the f* calls, the path last for the others.
		if o, e = t.file(fd); e != 0 {
			return e
		}
		defer o.unref()
	}
	if flags&^(guestfs.XattrCreate|guestfs.XattrReplace) != 0 {
		return unix.EINVAL
	}
	name, e := t.xattrName(nameAddr)
	if e != 0 {
		return e
	}
	var value []byte
	if !remove {
		if size > guestfs.XattrSizeMax {
			return unix.E2BIG
		}
		if value, e = t.readMem(valueAddr, size); e != 0 {
			return e
		}
	}
	switch {
	case o == nil:
		dir, p, e := t.pathArg(unix.AT_FDCWD, pathAddr)
		if e != 0 {
			return e
		}
		err = t.vm.fs.Setxattr(dir, p, follow, name, value, flags)
	default:
		if f, ok := o.file.(*fsFile); ok {
			err = f.f.Setxattr(name, value, flags)
		} else {
			err = anonXattr(name, true)
		}
	}
	return toErrno(err)
}

// anonXattr is the outcome of an xattr call on a pipe, eventfd or epoll file: Linux's
// xattr_permission for a file that is neither regular nor a directory, then no support.
func anonXattr(name string, write bool) unix.Errno {
	switch {
	case strings.HasPrefix(name, "trusted."), strings.HasPrefix(name, "user."),
		write && strings.HasPrefix(name, "security."):
		if write {
			return unix.EPERM
		}
		return unix.ENODATA
	}
	return unix.EOPNOTSUPP
}

// Magic numbers of the pseudo file systems of pipes and of eventfd and epoll files.
const (
	pipefsMagic    = 0x50495045
	anonInodeMagic = 0x09041934
)

// encodeStatfs lays out struct statfs (x86-64).
func encodeStatfs(st guestfs.FSStat) []byte {
	b := make([]byte, 120)
	le := binary.LittleEndian
	le.PutUint64(b[0:], uint64(st.Type))
	le.PutUint64(b[8:], uint64(st.Bsize))
	le.PutUint64(b[16:], st.Blocks)
	le.PutUint64(b[24:], st.Bfree)
	le.PutUint64(b[32:], st.Bavail)
	le.PutUint64(b[40:], st.Files)
	le.PutUint64(b[48:], st.Ffree)
	le.PutUint32(b[56:], uint32(st.Fsid[0]))
	le.PutUint32(b[60:], uint32(st.Fsid[1]))
	le.PutUint64(b[64:], uint64(st.Namelen))
	le.PutUint64(b[72:], uint64(st.Frsize))
	le.PutUint64(b[80:], uint64(st.Flags))
	return b
}

func (t *thread) statfs(pathAddr, buf uint64) unix.Errno {
	dir, p, e := t.pathArg(unix.AT_FDCWD, pathAddr)
	if e != 0 {
		return e
	}
	st, err := t.vm.fs.StatFS(dir, p)
	if err != nil {
		return toErrno(err)
	}
	return t.writeMem(buf, encodeStatfs(st))
}

func (t *thread) fstatfs(fd int, buf uint64) unix.Errno {
	o, e := t.file(fd)
	if e != 0 {
		return e
	}
	defer o.unref()
	var st guestfs.FSStat
	if f, ok := o.file.(*fsFile); ok {
		var err error
		if st, err = f.f.StatFS(); err != nil {
			return toErrno(err)
		}
	} else {
		fst, e := o.stat()
		if e != 0 {
			return e
		}
		st = guestfs.FSStat{Type: anonInodeMagic, Bsize: pageSize, Frsize: pageSize, Namelen: 255, Flags: 0x20} // ST_VALID
		if fst.Mode&unix.S_IFMT == unix.S_IFIFO {
			st.Type = pipefsMagic
		}
	}
	return t.writeMem(buf, encodeStatfs(st))
}
