package guestfs

import (
	"time"

	"golang.org/x/sys/unix"
)

// Open opens the file at path like openat(2) with flags (O_RDONLY, O_WRONLY, O_RDWR,
// O_CREAT, O_EXCL, O_TRUNC, O_APPEND, O_DIRECTORY, O_NOFOLLOW, O_PATH, O_NONBLOCK, ...).
// A relative path is resolved from dir, the absolute guest path of a directory. mode
// gives the permission bits of a file O_CREAT makes, with the umask already applied.
func (f *FS) Open(dir, path string, flags int, mode uint32) (File, error) {
	fl, err := f.open(dir, path, flags, mode)
	if err != nil {
		return nil, wrap("open", path, err)
	}
	if p, ok := fl.n.(*procFile); ok && fl.flags&unix.O_PATH == 0 {
		// Generated without FS.mu: the generator may take locks of the caller.
		fl.content = p.gen()
	}
	return fl, nil
}

func (f *FS) open(dir, path string, flags int, mode uint32) (*file, error) {
	if flags&unix.O_PATH != 0 {
		flags &= unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	}
	// O_ACCMODE (3) as the access mode needs read and write permission and allows neither
	// read nor write, as on Linux.
	acc := flags & unix.O_ACCMODE
	if flags&unix.O_TMPFILE == unix.O_TMPFILE {
		return nil, unix.EOPNOTSUPP
	}
	creat := flags&unix.O_CREAT != 0
	if creat && flags&unix.O_DIRECTORY != 0 {
		return nil, unix.EINVAL
	}
	excl := creat && flags&unix.O_EXCL != 0
	rf := rFollow
	if flags&unix.O_NOFOLLOW != 0 || excl {
		rf = 0
	}
	if creat {
		rf |= rCreate
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	w, err := f.resolve(dir, path, rf, true)
	if err != nil {
		return nil, err
	}
	n := w.node
	created := false
	if n == nil {
		if !creat {
			return nil, unix.ENOENT
		}
		if w.slash {
			return nil, unix.EISDIR
		}
		pm, err := f.createParent(w, false)
		if err != nil {
			return nil, err
		}
		m, err := f.newNode(pm, unix.S_IFREG|mode&0o7777, 0)
		if err != nil {
			return nil, err
		}
		f.link(pm, w.name, m)
		n, created = m, true
	}

	fl := &file{fs: f, path: w.path(), n: n,
		flags: flags&^(unix.O_CREAT|unix.O_EXCL|unix.O_NOCTTY|unix.O_TRUNC|unix.O_CLOEXEC) | unix.O_LARGEFILE}
	if excl && !created {
		return nil, unix.EEXIST
	}
	if flags&unix.O_DIRECTORY != 0 && !isDir(n) {
		return nil, unix.ENOTDIR
	}
	if flags&unix.O_PATH != 0 {
		return fl, nil
	}
	if _, link := asLink(n); link {
		return nil, unix.ELOOP
	}
	var mask uint32
	if acc != unix.O_WRONLY {
		mask |= mayRead
	}
	if acc != unix.O_RDONLY || flags&unix.O_TRUNC != 0 {
		mask |= mayWrite
	}
	if isDir(n) && (creat || mask&mayWrite != 0) {
		return nil, unix.EISDIR
	}
	_, dev := n.(*devFile)
	if mask&mayWrite != 0 && !dev && f.kindOf(n) == kindReadOnly {
		return nil, unix.EROFS
	}
	if !created && !f.may(n, mask) {
		return nil, unix.EACCES
	}

	switch n := n.(type) {
	case *memNode:
		if n.isReg() {
			if flags&unix.O_TRUNC != 0 && !created {
				if err := f.resize(n, 0); err != nil {
					return nil, err
				}
				now := time.Now()
				n.mtime, n.ctime = now, now
			}
			n.opens++
		}
	case *imgNode:
		if n.e.IsRegular() {
			sr, err := f.im.Open(n.e)
			if err != nil {
				return nil, unix.EIO
			}
			fl.sr = sr
		}
	}
	return fl, nil
}
