package guestfs

import (
	"crypto/rand"
	"errors"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// File is one open file description, shared by the descriptors dup'd from it. It is safe
// for concurrent use.
//
// Read and ReadAt keep the io.Reader and io.ReaderAt contracts: Read returns 0, io.EOF at
// end of file and ReadAt returns io.EOF with a read cut short by the end of file (the bare
// io.EOF value, which read(2) and pread(2) report as success). Every other error is a
// unix.Errno, possibly wrapped.
type File interface {
	// Path returns the canonical guest path the file was opened at.
	Path() string
	Read(p []byte) (int, error)
	Write(p []byte) (int, error)
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Seek(off int64, whence int) (int64, error)
	Stat() (Stat, error)
	// ReadDir returns up to n directory entries (all remaining ones if n <= 0) from the
	// current position, "." and ".." included, and moves past them; it returns no entries
	// and no error at the end. A caller that uses only some of them (getdents64 with a
	// full buffer) seeks to the Off of the last one it used.
	ReadDir(n int) ([]Dirent, error)
	Truncate(size int64) error
	// Flags returns the access mode and file status flags (fcntl F_GETFL).
	Flags() int
	// SetFlags changes O_APPEND, O_NONBLOCK, O_ASYNC, O_DIRECT and O_NOATIME (F_SETFL).
	SetFlags(flags int)
	// Getxattr, Listxattr and Setxattr are FS.Getxattr, FS.Listxattr and FS.Setxattr
	// for the open file (fgetxattr and the like); they fail with EBADF for an O_PATH file.
	Getxattr(name string) ([]byte, error)
	Listxattr() ([]string, error)
	Setxattr(name string, value []byte, flags int) error
	// StatFS is FS.StatFS for the open file (fstatfs).
	StatFS() (FSStat, error)
	Close() error
}

var _ File = (*file)(nil)

// setFlMask are the flags F_SETFL may change.
const setFlMask = unix.O_APPEND | unix.O_NONBLOCK | unix.O_ASYNC | unix.O_DIRECT | unix.O_NOATIME

// file is the File of every kind of node.
type file struct {
	fs      *FS
	path    string
	n       node
	sr      *io.SectionReader // contents of an image file
	content []byte            // contents of a /proc file, generated at open

	mu sync.Mutex
	// Guarded by mu:
	off    int64
	flags  int
	closed bool
	ents   []Dirent // directory listing, taken when reading from position 0
}

func (fl *file) Path() string { return fl.path }

// ImageExtent tells where the content of f lies in the image file, when f is an open,
// readable regular file of the read-only image, so that the content can be mapped rather
// than read (see image.Image.Extent: off is page-aligned, the rest of the last page is zero).
// ok is false for every other file (scratch, input, /dev and /proc files) and once f is
// closed. The returned file belongs to the image and must not be closed.
func ImageExtent(f File) (host *os.File, off, size int64, ok bool) {
	fl, isFile := f.(*file)
	if !isFile {
		return nil, 0, 0, false
	}
	fl.mu.Lock()
	err := fl.readable()
	fl.mu.Unlock()
	n, isImg := fl.n.(*imgNode)
	if err != nil || !isImg || !n.e.IsRegular() {
		return nil, 0, 0, false
	}
	return fl.fs.im.Extent(n.e)
}

func (fl *file) Flags() int {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.flags
}

func (fl *file) SetFlags(flags int) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	fl.flags = fl.flags&^setFlMask | flags&setFlMask
}

// usable checks, with fl.mu held, that the file is open and not an O_PATH file.
func (fl *file) usable() error {
	if fl.closed || fl.flags&unix.O_PATH != 0 {
		return unix.EBADF
	}
	return nil
}

func (fl *file) readable() error {
	if err := fl.usable(); err != nil {
		return err
	}
	if acc := fl.flags & unix.O_ACCMODE; acc != unix.O_RDONLY && acc != unix.O_RDWR {
		return unix.EBADF
	}
	if isDir(fl.n) {
		return unix.EISDIR
	}
	return nil
}

func (fl *file) writable() error {
	if err := fl.usable(); err != nil {
		return err
	}
	if acc := fl.flags & unix.O_ACCMODE; acc != unix.O_WRONLY && acc != unix.O_RDWR {
		return unix.EBADF
	}
	return nil
}

func (fl *file) Read(p []byte) (int, error) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if err := fl.readable(); err != nil {
		return 0, wrap("read", fl.path, err)
	}
	n, err := fl.readAt(p, fl.off)
	if _, dev := fl.n.(*devFile); !dev {
		fl.off += int64(n)
	}
	if err == nil && n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, wrap("read", fl.path, err)
}

func (fl *file) ReadAt(p []byte, off int64) (int, error) {
	fl.mu.Lock()
	err := fl.readable()
	fl.mu.Unlock()
	if err != nil {
		return 0, wrap("pread", fl.path, err)
	}
	if off < 0 {
		return 0, wrap("pread", fl.path, unix.EINVAL)
	}
	n, err := fl.readAt(p, off)
	if err == nil && n < len(p) {
		return n, io.EOF
	}
	return n, wrap("pread", fl.path, err)
}

// readAt reads at off from the node.
func (fl *file) readAt(p []byte, off int64) (int, error) {
	f := fl.fs
	switch n := fl.n.(type) {
	case *memNode:
		f.mu.RLock()
		defer f.mu.RUnlock()
		if f.closed {
			return 0, unix.EBADF
		}
		if off >= int64(len(n.data)) {
			return 0, nil
		}
		return copy(p, n.data[off:]), nil
	case *imgNode:
		return eofOK(fl.sr.ReadAt(p, off))
	case *inputFile:
		f.mu.RLock()
		defer f.mu.RUnlock()
		if f.closed {
			return 0, unix.EBADF
		}
		return eofOK(n.f.ReadAt(p, off))
	case *procFile:
		if off >= int64(len(fl.content)) {
			return 0, nil
		}
		return copy(p, fl.content[off:]), nil
	case *devFile:
		switch n.kind {
		case devNull:
			return 0, nil
		case devZero, devFull:
			clear(p)
			return len(p), nil
		default:
			return rand.Read(p)
		}
	}
	return 0, unix.EINVAL
}

// eofOK turns io.ReaderAt results into pread results.
func eofOK(n int, err error) (int, error) {
	if err == nil || errors.Is(err, io.EOF) {
		return n, nil
	}
	if n > 0 {
		return n, nil
	}
	var e unix.Errno
	if errors.As(err, &e) {
		return 0, e
	}
	return 0, unix.EIO
}

func (fl *file) Write(p []byte) (int, error) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if err := fl.writable(); err != nil {
		return 0, wrap("write", fl.path, err)
	}
	n, end, err := fl.writeAt(p, fl.off, fl.flags&unix.O_APPEND != 0)
	if _, dev := fl.n.(*devFile); !dev && n > 0 {
		fl.off = end
	}
	return n, wrap("write", fl.path, err)
}

func (fl *file) WriteAt(p []byte, off int64) (int, error) {
	fl.mu.Lock()
	err := fl.writable()
	appendMode := fl.flags&unix.O_APPEND != 0
	fl.mu.Unlock()
	if err != nil {
		return 0, wrap("pwrite", fl.path, err)
	}
	if off < 0 {
		return 0, wrap("pwrite", fl.path, unix.EINVAL)
	}
	// Like Linux, pwrite on an O_APPEND file appends.
	n, _, err := fl.writeAt(p, off, appendMode)
	return n, wrap("pwrite", fl.path, err)
}

// writeAt writes at off, or at the end if appendMode is set, and returns the offset just
// past what it wrote.
func (fl *file) writeAt(p []byte, off int64, appendMode bool) (int, int64, error) {
	f := fl.fs
	switch n := fl.n.(type) {
	case *memNode:
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.closed {
			return 0, off, unix.EBADF
		}
		if appendMode {
			off = int64(len(n.data))
		}
		w, err := f.writeAt(n, p, off)
		return w, off + int64(w), err
	case *devFile:
		if n.kind == devFull {
			return 0, off, unix.ENOSPC
		}
		return len(p), off, nil
	}
	return 0, off, unix.EBADF
}

func (fl *file) Seek(off int64, whence int) (int64, error) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if err := fl.usable(); err != nil {
		return 0, wrap("lseek", fl.path, err)
	}
	pos, err := fl.seek(off, whence)
	if err != nil {
		return 0, wrap("lseek", fl.path, err)
	}
	if pos == 0 {
		fl.ents = nil
	}
	fl.off = pos
	return pos, nil
}

func (fl *file) seek(off int64, whence int) (int64, error) {
	if _, dev := fl.n.(*devFile); dev {
		return 0, nil
	}
	if isDir(fl.n) {
		switch whence {
		case io.SeekStart:
			if off < 0 {
				return 0, unix.EINVAL
			}
			return off, nil
		case io.SeekCurrent:
			if fl.off+off < 0 {
				return 0, unix.EINVAL
			}
			return fl.off + off, nil
		}
		return 0, unix.EINVAL
	}
	var size int64
	if _, proc := fl.n.(*procFile); proc {
		if whence != io.SeekStart && whence != io.SeekCurrent {
			return 0, unix.EINVAL
		}
	} else {
		st, err := fl.statNode()
		if err != nil {
			return 0, err
		}
		size = st.Size
	}
	var pos int64
	switch whence {
	case io.SeekStart:
		pos = off
	case io.SeekCurrent:
		pos = fl.off + off
		if (off > 0 && pos < fl.off) || (off < 0 && pos > fl.off) {
			return 0, unix.EOVERFLOW
		}
	case io.SeekEnd:
		pos = size + off
		if off > 0 && pos < size {
			return 0, unix.EOVERFLOW
		}
	case unix.SEEK_DATA:
		if off < 0 || off >= size {
			return 0, unix.ENXIO
		}
		pos = off
	case unix.SEEK_HOLE:
		if off < 0 || off >= size {
			return 0, unix.ENXIO
		}
		pos = size
	default:
		return 0, unix.EINVAL
	}
	if pos < 0 {
		return 0, unix.EINVAL
	}
	return pos, nil
}

func (fl *file) statNode() (Stat, error) {
	f := fl.fs
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return Stat{}, unix.EBADF
	}
	return fl.n.stat(f), nil
}

func (fl *file) Stat() (Stat, error) {
	fl.mu.Lock()
	closed := fl.closed
	fl.mu.Unlock()
	if closed {
		return Stat{}, wrap("fstat", fl.path, unix.EBADF)
	}
	st, err := fl.statNode()
	return st, wrap("fstat", fl.path, err)
}

func (fl *file) ReadDir(n int) ([]Dirent, error) {
	// Config.FDPath is called with no lock of ours held, fl.mu included: the caller may
	// hold its descriptor table lock while it closes or changes this file.
	var fdEnts []Dirent
	listed := false
	for {
		fl.mu.Lock()
		d, isFD := fl.n.(*fdDir)
		if !isFD || listed || (fl.ents != nil && fl.off != 0) || fl.closed {
			break
		}
		fl.mu.Unlock()
		fdEnts, listed = d.fdList(fl.fs.fdPath), true
	}
	defer fl.mu.Unlock()
	if err := fl.usable(); err != nil {
		return nil, wrap("getdents64", fl.path, err)
	}
	if !isDir(fl.n) {
		return nil, wrap("getdents64", fl.path, unix.ENOTDIR)
	}
	if fl.ents == nil || fl.off == 0 {
		ents, err := fl.listing(fdEnts)
		if err != nil {
			return nil, wrap("getdents64", fl.path, err)
		}
		fl.ents = ents
	}
	if fl.off >= int64(len(fl.ents)) {
		return []Dirent{}, nil
	}
	rest := fl.ents[fl.off:]
	if n > 0 && n < len(rest) {
		rest = rest[:n]
	}
	out := make([]Dirent, len(rest))
	for i, d := range rest {
		d.Off = fl.off + int64(i) + 1
		out[i] = d
	}
	fl.off += int64(len(out))
	return out, nil
}

// listing takes a snapshot of the directory: ".", ".." and the children.
// fdEnts is the listing of /proc/self/fd, taken by the caller.
func (fl *file) listing(fdEnts []Dirent) ([]Dirent, error) {
	f := fl.fs
	kids := fdEnts
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return nil, unix.EBADF
	}
	if m, ok := fl.n.(*memNode); ok && m.nlink == 0 {
		return []Dirent{}, nil // removed: Linux lists nothing, not even "." and ".."
	}
	d := fl.n.(dirNode)
	if _, ok := fl.n.(*fdDir); !ok {
		kids = d.list(f)
	}
	self := fl.n.stat(f).Ino
	parent := self
	if fl.path != "/" {
		if w, err := f.resolve("/", parentOf(fl.path), 0, false); err == nil && w.node != nil {
			parent = w.node.stat(f).Ino
		}
	}
	out := make([]Dirent, 0, len(kids)+2)
	out = append(out, Dirent{Ino: self, Type: unix.DT_DIR, Name: "."}, Dirent{Ino: parent, Type: unix.DT_DIR, Name: ".."})
	return append(out, kids...), nil
}

func (fl *file) Truncate(size int64) error {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if err := fl.usable(); err != nil {
		return wrap("ftruncate", fl.path, err)
	}
	m, ok := fl.n.(*memNode)
	acc := fl.flags & unix.O_ACCMODE
	if !ok || !m.isReg() || (acc != unix.O_WRONLY && acc != unix.O_RDWR) || size < 0 {
		return wrap("ftruncate", fl.path, unix.EINVAL)
	}
	f := fl.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return wrap("ftruncate", fl.path, unix.EBADF)
	}
	if err := f.resize(m, size); err != nil {
		return wrap("ftruncate", fl.path, err)
	}
	now := time.Now()
	m.mtime, m.ctime = now, now
	return nil
}

func (fl *file) Close() error {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.closed {
		return wrap("close", fl.path, unix.EBADF)
	}
	fl.closed = true
	fl.ents = nil
	if m, ok := fl.n.(*memNode); ok && m.isReg() && fl.flags&unix.O_PATH == 0 {
		f := fl.fs
		f.mu.Lock()
		m.opens--
		if !f.closed {
			f.maybeFree(m)
		}
		f.mu.Unlock()
	}
	return nil
}
