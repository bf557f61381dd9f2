package microvm

import (
	"encoding/binary"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/guestfs"
)

const pipeCapacity = 64 << 10

// pipe is an in-memory pipe within the guest process.
type pipe struct {
	hub *pollHub
	ino uint64

	mu      sync.Mutex // guards buf, readers, writers
	buf     []byte
	readers int
	writers int
}

type pipeEnd struct {
	p        *pipe
	writeEnd bool
}

func newPipe(hub *pollHub, ino uint64) (r, w *pipeEnd) {
	p := &pipe{hub: hub, ino: ino, readers: 1, writers: 1}
	return &pipeEnd{p: p}, &pipeEnd{p: p, writeEnd: true}
}

// read returns EAGAIN when the pipe is empty and has writers; the caller blocks.
func (e *pipeEnd) read(b []byte) (int, unix.Errno) {
	if e.writeEnd {
		return 0, unix.EBADF
	}
	if len(b) == 0 {
		return 0, 0 // even on an empty pipe, as Linux
	}
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.buf) == 0 {
		if p.writers == 0 {
			return 0, 0
		}
		return 0, unix.EAGAIN
	}
	n := copy(b, p.buf)
	p.buf = p.buf[n:]
	p.hub.notify()
	return n, 0
}

func (e *pipeEnd) write(b []byte) (int, unix.Errno) {
	if !e.writeEnd {
		return 0, unix.EBADF
	}
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.readers == 0 {
		return 0, unix.EPIPE
	}
	room := pipeCapacity - len(p.buf)
	if room <= 0 {
		return 0, unix.EAGAIN
	}
	n := min(room, len(b))
	p.buf = append(p.buf, b[:n]...)
	p.hub.notify()
	return n, 0
}

func (e *pipeEnd) stat() (guestfs.Stat, unix.Errno) { return pipeStat(e.p.ino), 0 }
func (e *pipeEnd) path() string                     { return fmt.Sprintf("pipe:[%d]", e.p.ino) }
func (e *pipeEnd) close() {
	p := e.p
	p.mu.Lock()
	if e.writeEnd {
		p.writers--
	} else {
		p.readers--
	}
	p.mu.Unlock()
	p.hub.notify()
}
func (e *pipeEnd) ready() (bool, bool) {
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.writeEnd {
		return false, p.readers == 0 || len(p.buf) < pipeCapacity
	}
	return len(p.buf) > 0 || p.writers == 0, false
}

// eventFD is an eventfd counter.
type eventFD struct {
	hub       *pollHub
	semaphore bool

	mu    sync.Mutex // guards count
	count uint64
}

func (e *eventFD) read(b []byte) (int, unix.Errno) {
	if len(b) < 8 {
		return 0, unix.EINVAL
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.count == 0 {
		return 0, unix.EAGAIN
	}
	v := e.count
	if e.semaphore {
		v = 1
	}
	e.count -= v
	binary.LittleEndian.PutUint64(b, v)
	e.hub.notify()
	return 8, 0
}

func (e *eventFD) write(b []byte) (int, unix.Errno) {
	if len(b) < 8 {
		return 0, unix.EINVAL
	}
	v := binary.LittleEndian.Uint64(b)
	if v == ^uint64(0) {
		return 0, unix.EINVAL
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.count+v >= ^uint64(0) || e.count+v < e.count {
		return 0, unix.EAGAIN
	}
	e.count += v
	e.hub.notify()
	return 8, 0
}

func (e *eventFD) stat() (guestfs.Stat, unix.Errno) {
	st := pipeStat(3)
	st.Mode = unix.S_IFREG | 0o600
	return st, 0
}
func (e *eventFD) path() string { return "anon_inode:[eventfd]" }
func (e *eventFD) close()       {}
func (e *eventFD) ready() (bool, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.count > 0, e.count < ^uint64(0)-1
}

// epollFile is an epoll instance: a set of watched descriptors. As on Linux, a watch
// belongs to a descriptor number and the open file it named when it was added: it ends
// when that open file is closed for good (not when one of its descriptors is), and a new
// file at the same number is another watch.
type epollFile struct {
	mu    sync.Mutex // guards watch
	watch map[epollKey]epollWatch
}

type epollKey struct {
	fd int
	f  *openFile
}

type epollWatch struct {
	events uint32
	data   uint64
}

func (e *epollFile) read([]byte) (int, unix.Errno)  { return 0, unix.EINVAL }
func (e *epollFile) write([]byte) (int, unix.Errno) { return 0, unix.EINVAL }
func (e *epollFile) stat() (guestfs.Stat, unix.Errno) {
	st := pipeStat(4)
	st.Mode = unix.S_IFREG | 0o600
	return st, 0
}
func (e *epollFile) path() string        { return "anon_inode:[eventpoll]" }
func (e *epollFile) close()              {}
func (e *epollFile) ready() (bool, bool) { return false, false }

// pollable reports whether f can be watched by epoll (Linux refuses regular files and
// directories with EPERM).
func pollable(f file) bool {
	switch f.(type) {
	case *pipeEnd, *eventFD, *stdinReader, *outFile:
		return true
	}
	return false
}
