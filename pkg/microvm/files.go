package microvm

import (
	"errors"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/guestfs"
)

// maxFDs bounds the guest's file descriptor table (RLIMIT_NOFILE).
const maxFDs = 1024

// file is an open file description as the syscall layer sees it.
type file interface {
	read(p []byte) (int, unix.Errno)
	write(p []byte) (int, unix.Errno)
	stat() (guestfs.Stat, unix.Errno)
	path() string
	close()
	// readiness for poll/epoll: readable, writable
	ready() (bool, bool)
}

// toErrno extracts the errno from an error of the file layer.
func toErrno(err error) unix.Errno {
	if err == nil {
		return 0
	}
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, io.EOF) {
		return 0
	}
	return unix.EIO
}

// fsFile adapts a guestfs.File.
type fsFile struct{ f guestfs.File }

func (f *fsFile) read(p []byte) (int, unix.Errno) {
	n, err := f.f.Read(p)
	if err == io.EOF {
		err = nil
	}
	return n, toErrno(err)
}
func (f *fsFile) write(p []byte) (int, unix.Errno) { n, err := f.f.Write(p); return n, toErrno(err) }
func (f *fsFile) stat() (guestfs.Stat, unix.Errno) { st, err := f.f.Stat(); return st, toErrno(err) }
func (f *fsFile) path() string                     { return f.f.Path() }
func (f *fsFile) close()                           { f.f.Close() }
func (f *fsFile) ready() (bool, bool)              { return true, true }

// fd is one slot of the descriptor table.
type fd struct {
	f       *openFile
	cloexec bool
}

// openFile is a reference-counted open file description shared by dup'd descriptors.
type openFile struct {
	file
	mu    sync.Mutex // guards refs and flags
	refs  int
	flags int // O_APPEND, O_NONBLOCK and the access mode
}

// closed reports whether o is closed for good: no descriptor names it, no call uses it.
func (o *openFile) closed() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.refs == 0
}

func (o *openFile) unref() {
	o.mu.Lock()
	o.refs--
	last := o.refs == 0
	o.mu.Unlock()
	if last {
		o.file.close()
	}
}

// fdTable is the guest's file descriptor table.
type fdTable struct {
	mu  sync.Mutex // guards fds
	fds map[int]fd
}

func newFDTable() *fdTable { return &fdTable{fds: map[int]fd{}} }

// install puts f at the lowest free descriptor >= min.
func (t *fdTable) install(f file, flags int, cloexec bool, min int) (int, unix.Errno) {
	o := &openFile{file: f, refs: 1, flags: flags}
	t.mu.Lock()
	defer t.mu.Unlock()
	n, e := t.lowest(min)
	if e != 0 {
		f.close()
		return -1, e
	}
	t.fds[n] = fd{f: o, cloexec: cloexec}
	return n, 0
}

func (t *fdTable) lowest(min int) (int, unix.Errno) {
	for n := min; n < maxFDs; n++ {
		if _, ok := t.fds[n]; !ok {
			return n, 0
		}
	}
	return -1, unix.EMFILE
}

func (t *fdTable) get(n int) (*openFile, unix.Errno) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, ok := t.fds[n]
	if !ok {
		return nil, unix.EBADF
	}
	d.f.mu.Lock()
	d.f.refs++
	d.f.mu.Unlock()
	return d.f, 0
}

func (t *fdTable) close(n int) unix.Errno {
	t.mu.Lock()
	d, ok := t.fds[n]
	delete(t.fds, n)
	t.mu.Unlock()
	if !ok {
		return unix.EBADF
	}
	d.f.unref()
	return 0
}

// dup duplicates old onto new (new < 0: the lowest free >= min).
func (t *fdTable) dup(old, newfd, min int, cloexec bool) (int, unix.Errno) {
	t.mu.Lock()
	d, ok := t.fds[old]
	if !ok {
		t.mu.Unlock()
		return -1, unix.EBADF
	}
	if newfd < 0 {
		n, e := t.lowest(min)
		if e != 0 {
			t.mu.Unlock()
			return -1, e
		}
		newfd = n
	} else if newfd >= maxFDs {
		t.mu.Unlock()
		return -1, unix.EBADF
	}
	prev, had := t.fds[newfd]
	d.f.mu.Lock()
	d.f.refs++
	d.f.mu.Unlock()
	t.fds[newfd] = fd{f: d.f, cloexec: cloexec}
	t.mu.Unlock()
	if had {
		prev.f.unref()
	}
	return newfd, 0
}

func (t *fdTable) setCloexec(n int, v bool) unix.Errno {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, ok := t.fds[n]
	if !ok {
		return unix.EBADF
	}
	d.cloexec = v
	t.fds[n] = d
	return 0
}

func (t *fdTable) cloexec(n int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fds[n].cloexec
}

// path reports the guest path of descriptor n, for /proc/self/fd.
func (t *fdTable) path(n int) (string, bool) {
	t.mu.Lock()
	d, ok := t.fds[n]
	t.mu.Unlock()
	if !ok {
		return "", false
	}
	return d.f.path(), true
}

func (t *fdTable) closeAll() {
	t.mu.Lock()
	fds := t.fds
	t.fds = map[int]fd{}
	t.mu.Unlock()
	for _, d := range fds {
		d.f.unref()
	}
}

func (t *fdTable) installStdio(in *stdinReader, out, errw io.Writer, hub *pollHub) {
	t.install(in, unix.O_RDONLY, false, 0)
	t.install(&outFile{w: out, name: "pipe:[stdout]"}, unix.O_WRONLY, false, 1)
	t.install(&outFile{w: errw, name: "pipe:[stderr]"}, unix.O_WRONLY, false, 2)
}

// pipeStat is what fstat reports for stdio and pipes.
func pipeStat(ino uint64) guestfs.Stat {
	now := time.Now()
	return guestfs.Stat{Dev: 0xc, Ino: ino, Nlink: 1, Mode: unix.S_IFIFO | 0o600, UID: guestUID, GID: guestGID,
		Blksize: 4096, Atime: now, Mtime: now, Ctime: now}
}

// outFile is the guest's stdout or stderr: a writer of the host.
type outFile struct {
	mu   sync.Mutex // serializes writes
	w    io.Writer
	name string
}

func (o *outFile) read([]byte) (int, unix.Errno) { return 0, unix.EBADF }
func (o *outFile) write(p []byte) (int, unix.Errno) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n, err := o.w.Write(p)
	if err != nil {
		return n, unix.EPIPE
	}
	return n, 0
}
func (o *outFile) stat() (guestfs.Stat, unix.Errno) { return pipeStat(2), 0 }
func (o *outFile) path() string                     { return o.name }
func (o *outFile) close()                           {}
func (o *outFile) ready() (bool, bool)              { return false, true }

// stdinReader is the guest's stdin; nil reads as empty. The host reader may block for as
// long as it likes, so it is read by a goroutine of its own (started by the first read or
// poll) into a buffer, like the writer end of a pipe: a guest read that finds the buffer
// empty blocks in the VMM's wait, which the VM's end interrupts, and never in the host
// reader. The goroutine stops at the reader's EOF or error, or at the VM's end; if the host
// reader blocks then, the goroutine is left in its Read until it returns.
type stdinReader struct {
	r    io.Reader
	hub  *pollHub
	done <-chan struct{} // closed when the VM ends

	mu      sync.Mutex // guards the fields below
	started bool
	buf     []byte // read from r, not yet by the guest
	eof     bool   // r is at its end: reads return 0 once buf is empty
	ioErr   bool   // r failed: the next read after buf fails with EIO
	drained chan struct{}
}

const stdinChunk = 64 << 10

func newStdinReader(r io.Reader, hub *pollHub, done <-chan struct{}) *stdinReader {
	return &stdinReader{r: r, hub: hub, done: done, drained: make(chan struct{}, 1)}
}

// startLocked starts the goroutine reading the host reader. Called with mu held.
func (s *stdinReader) startLocked() {
	if s.started || s.r == nil {
		return
	}
	s.started = true
	go s.pump()
}

func (s *stdinReader) pump() {
	b := make([]byte, stdinChunk)
	for {
		n, err := s.r.Read(b)
		s.mu.Lock()
		s.buf = append(s.buf, b[:n]...)
		if err != nil {
			s.eof, s.ioErr = true, err != io.EOF
		}
		full := len(s.buf) > 0
		s.mu.Unlock()
		s.hub.notify()
		if err != nil {
			return
		}
		if full {
			// Read on only once the guest has taken the data, as a pipe of stdinChunk bytes.
			select {
			case <-s.drained:
			case <-s.done:
				return
			}
		}
	}
}

func (s *stdinReader) read(p []byte) (int, unix.Errno) {
	if s.r == nil || len(p) == 0 {
		return 0, 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.startLocked()
	if len(s.buf) > 0 {
		n := copy(p, s.buf)
		s.buf = s.buf[n:]
		if len(s.buf) == 0 {
			select {
			case s.drained <- struct{}{}:
			default:
			}
		}
		return n, 0
	}
	if s.ioErr {
		s.ioErr = false
		return 0, unix.EIO
	}
	if s.eof {
		return 0, 0
	}
	return 0, unix.EAGAIN
}

func (s *stdinReader) write([]byte) (int, unix.Errno)   { return 0, unix.EBADF }
func (s *stdinReader) stat() (guestfs.Stat, unix.Errno) { return pipeStat(1), 0 }
func (s *stdinReader) path() string                     { return "pipe:[stdin]" }
func (s *stdinReader) close()                           {}
func (s *stdinReader) ready() (bool, bool) {
	if s.r == nil {
		return true, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.startLocked()
	return len(s.buf) > 0 || s.eof, false
}
