package microvm

import (
	"encoding/binary"
	"time"

	"golang.org/x/sys/unix"
)

func (t *thread) epollCreate(flags int) (uint64, unix.Errno) {
	if flags&^unix.EPOLL_CLOEXEC != 0 {
		return 0, unix.EINVAL
	}
	n, e := t.vm.fds.install(&epollFile{watch: map[epollKey]epollWatch{}}, unix.O_RDWR, flags&unix.EPOLL_CLOEXEC != 0, 0)
	return uint64(n), e
}

func (t *thread) epoll(epfd int) (*openFile, *epollFile, unix.Errno) {
	o, e := t.file(epfd)
	if e != 0 {
		return nil, nil, e
	}
	ep, ok := o.file.(*epollFile)
	if !ok {
		o.unref()
		return nil, nil, unix.EINVAL
	}
	return o, ep, 0
}

func (t *thread) epollCtl(epfd, op, fd int, evAddr uint64) unix.Errno {
	o, ep, e := t.epoll(epfd)
	if e != 0 {
		return e
	}
	defer o.unref()
	target, e := t.file(fd)
	if e != 0 {
		return e
	}
	defer target.unref()
	if fd == epfd {
		return unix.EINVAL
	}
	if !pollable(target.file) {
		return unix.EPERM
	}
	var w epollWatch
	if op != unix.EPOLL_CTL_DEL {
		b, e := t.readMem(evAddr, 12)
		if e != 0 {
			return e
		}
		w = epollWatch{events: binary.LittleEndian.Uint32(b), data: binary.LittleEndian.Uint64(b[4:])}
	}
	ep.mu.Lock()
	defer ep.mu.Unlock()
	key := epollKey{fd, target}
	_, had := ep.watch[key]
	switch op {
	case unix.EPOLL_CTL_ADD:
		if had {
			return unix.EEXIST
		}
		ep.watch[key] = w
	case unix.EPOLL_CTL_MOD:
		if !had {
			return unix.ENOENT
		}
		ep.watch[key] = w
	case unix.EPOLL_CTL_DEL:
		if !had {
			return unix.ENOENT
		}
		delete(ep.watch, key)
	default:
		return unix.EINVAL
	}
	return 0
}

// readiness returns the poll events pending on descriptor fd among want.
func (t *thread) readiness(fd int, want uint32) uint32 {
	o, e := t.file(fd)
	if e != 0 {
		return unix.POLLNVAL
	}
	defer o.unref()
	return readyEvents(o, want)
}

// readyEvents returns the poll events pending on o among want.
func readyEvents(o *openFile, want uint32) uint32 {
	r, w := o.ready()
	var ev uint32
	if r && want&(unix.EPOLLIN|unix.EPOLLRDNORM) != 0 {
		ev |= unix.EPOLLIN
	}
	if w && want&(unix.EPOLLOUT|unix.EPOLLWRNORM) != 0 {
		ev |= unix.EPOLLOUT
	}
	return ev
}

// deadlineOf returns when a wait of timeout ends; zero (none) for a negative timeout.
func deadlineOf(timeout time.Duration) time.Time {
	if timeout < 0 {
		return time.Time{}
	}
	return time.Now().Add(timeout)
}

func (t *thread) epollWait(epfd int, evAddr uint64, max, timeoutMs int) (uint64, unix.Errno) {
	if max <= 0 || max > 1<<16 {
		return 0, unix.EINVAL
	}
	o, ep, e := t.epoll(epfd)
	if e != 0 {
		return 0, e
	}
	defer o.unref()
	deadline := deadlineOf(time.Duration(timeoutMs) * time.Millisecond)
	for {
		ch := t.vm.poll.wait()
		ep.mu.Lock()
		var out []byte
		n := 0
		for key, w := range ep.watch {
			if key.f.closed() {
				delete(ep.watch, key)
				continue
			}
			if n == max {
				break
			}
			if ev := readyEvents(key.f, w.events); ev != 0 {
				rec := make([]byte, 12)
				binary.LittleEndian.PutUint32(rec, ev)
				binary.LittleEndian.PutUint64(rec[4:], w.data)
				out = append(out, rec...)
				n++
			}
		}
		ep.mu.Unlock()
		if n > 0 {
			return uint64(n), t.writeMem(evAddr, out)
		}
		if timeoutMs == 0 {
			return 0, 0
		}
		switch t.vm.block(ch, deadline) {
		case unix.ETIMEDOUT:
			return 0, 0
		case unix.EINTR:
			return 0, unix.EINTR
		}
	}
}

// poll implements poll and ppoll; a negative timeout waits without limit.
func (t *thread) poll(fdsAddr, nfds uint64, timeout time.Duration) (uint64, unix.Errno) {
	if nfds > maxFDs {
		return 0, unix.EINVAL
	}
	b, e := t.readMem(fdsAddr, nfds*8)
	if e != 0 {
		return 0, e
	}
	deadline := deadlineOf(timeout)
	for {
		ch := t.vm.poll.wait()
		n := 0
		for i := uint64(0); i < nfds; i++ {
			fd := int32(binary.LittleEndian.Uint32(b[i*8:]))
			want := uint32(binary.LittleEndian.Uint16(b[i*8+4:]))
			var rev uint32
			if fd >= 0 {
				rev = t.readiness(int(fd), want)
			}
			binary.LittleEndian.PutUint16(b[i*8+6:], uint16(rev))
			if rev != 0 {
				n++
			}
		}
		if n > 0 || timeout == 0 {
			return uint64(n), t.writeMem(fdsAddr, b)
		}
		switch t.vm.block(ch, deadline) {
		case unix.ETIMEDOUT:
			return 0, t.writeMem(fdsAddr, b)
		case unix.EINTR:
			return 0, unix.EINTR
		}
	}
}
