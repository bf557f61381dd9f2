package microvm

import (
	"encoding/binary"
	"io"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/guestfs"
)

const (
	maxIO    = 1 << 24 // bytes one read or write moves at most (Linux caps at ~2 GiB)
	maxIOV   = 1024    // UIO_MAXIOV
	pathMax  = 4095
	atEmpty  = unix.AT_EMPTY_PATH
	atNoFoll = unix.AT_SYMLINK_NOFOLLOW
)

// file returns the open file behind descriptor n; the caller must unref it.
func (t *thread) file(n int) (*openFile, unix.Errno) { return t.vm.fds.get(n) }

// blockingIO retries op while it reports EAGAIN on a descriptor without O_NONBLOCK,
// waiting for any pipe or eventfd to change.
func (t *thread) blockingIO(o *openFile, op func() (int, unix.Errno)) (int, unix.Errno) {
	for {
		ch := t.vm.poll.wait()
		n, e := op()
		o.mu.Lock()
		nonblock := o.flags&unix.O_NONBLOCK != 0
		o.mu.Unlock()
		if e != unix.EAGAIN || nonblock {
			return n, e
		}
		if e := t.vm.block(ch, time.Time{}); e != 0 {
			return 0, unix.EINTR
		}
	}
}

func accessMode(flags int) int { return flags & unix.O_ACCMODE }

func (t *thread) read(fd int, buf, count uint64) (uint64, unix.Errno) {
	b, e := t.readHost(fd, count)
	if e != 0 {
		return 0, e
	}
	return uint64(len(b)), t.writeMem(buf, b)
}

// readHost reads up to count (at most maxIO) bytes from fd into a host buffer, blocking
// like read(2).
func (t *thread) readHost(fd int, count uint64) ([]byte, unix.Errno) {
	o, e := t.file(fd)
	if e != 0 {
		return nil, e
	}
	defer o.unref()
	if accessMode(o.flags) == unix.O_WRONLY {
		return nil, unix.EBADF
	}
	b := make([]byte, min(count, maxIO))
	n, e := t.blockingIO(o, func() (int, unix.Errno) { return o.read(b) })
	if e != 0 {
		return nil, e
	}
	return b[:n], 0
}

func (t *thread) write(fd int, buf, count uint64) (uint64, unix.Errno) {
	o, e := t.file(fd)
	if e != 0 {
		return 0, e
	}
	defer o.unref()
	if accessMode(o.flags) == unix.O_RDONLY {
		return 0, unix.EBADF
	}
	b, e := t.readMem(buf, min(count, maxIO))
	if e != 0 {
		return 0, e
	}
	done := 0
	for done < len(b) {
		n, e := t.blockingIO(o, func() (int, unix.Errno) { return o.write(b[done:]) })
		done += n
		if e != 0 {
			if done > 0 {
				break
			}
			return 0, e
		}
		if n == 0 {
			break
		}
	}
	return uint64(done), 0
}

// positional returns the guestfs file behind fd for pread/pwrite/lseek (ESPIPE for pipes).
func (t *thread) positional(fd int) (*openFile, guestfs.File, unix.Errno) {
	o, e := t.file(fd)
	if e != 0 {
		return nil, nil, e
	}
	ff, ok := o.file.(*fsFile)
	if !ok {
		o.unref()
		return nil, nil, unix.ESPIPE
	}
	return o, ff.f, 0
}

func (t *thread) pread(fd int, buf, count uint64, off int64) (uint64, unix.Errno) {
	b, e := t.preadHost(fd, count, off)
	if e != 0 {
		return 0, e
	}
	return uint64(len(b)), t.writeMem(buf, b)
}

// preadHost reads up to count (at most maxIO) bytes at off from fd into a host buffer.
func (t *thread) preadHost(fd int, count uint64, off int64) ([]byte, unix.Errno) {
	if off < 0 {
		return nil, unix.EINVAL
	}
	o, f, e := t.positional(fd)
	if e != 0 {
		return nil, e
	}
	defer o.unref()
	b := make([]byte, min(count, maxIO))
	n, err := f.ReadAt(b, off)
	if err != nil && err != io.EOF {
		return nil, toErrno(err)
	}
	return b[:n], 0
}

func (t *thread) pwrite(fd int, buf, count uint64, off int64) (uint64, unix.Errno) {
	if off < 0 {
		return 0, unix.EINVAL
	}
	o, f, e := t.positional(fd)
	if e != 0 {
		return 0, e
	}
	defer o.unref()
	b, e := t.readMem(buf, min(count, maxIO))
	if e != 0 {
		return 0, e
	}
	n, err := f.WriteAt(b, off)
	return uint64(n), toErrno(err)
}

// iovecs reads an iovec array and the total length, which is at most maxIO: like Linux
// with MAX_RW_COUNT, a longer request is cut short (so one call moves a bounded amount
// however many iovecs name the same guest memory).
func (t *thread) iovecs(addr, n uint64) ([][2]uint64, uint64, unix.Errno) {
	if n > maxIOV {
		return nil, 0, unix.EINVAL
	}
	b, e := t.readMem(addr, n*16)
	if e != 0 {
		return nil, 0, e
	}
	v := make([][2]uint64, n)
	var total uint64
	for i := range v {
		v[i] = [2]uint64{binary.LittleEndian.Uint64(b[i*16:]), binary.LittleEndian.Uint64(b[i*16+8:])}
		if int64(v[i][1]) < 0 {
			return nil, 0, unix.EINVAL // iov_len is checked as ssize_t
		}
		v[i][1] = min(v[i][1], maxIO-total)
		total += v[i][1]
	}
	return v, total, 0
}

// readv implements readv and (off >= 0) preadv: one read of the total length, scattered
// over the iovecs, so that it blocks only while nothing can be read, as on Linux.
func (t *thread) readv(fd int, iov, n uint64, off int64) (uint64, unix.Errno) {
	v, total, e := t.iovecs(iov, n)
	if e != 0 {
		return 0, e
	}
	var b []byte
	if off >= 0 {
		b, e = t.preadHost(fd, total, off)
	} else {
		b, e = t.readHost(fd, total)
	}
	if e != 0 {
		return 0, e
	}
	done := 0
	for _, x := range v {
		if done == len(b) {
			break
		}
		p := b[done:min(len(b), done+int(x[1]))]
		if e := t.writeMem(x[0], p); e != 0 {
			if done > 0 {
				break
			}
			return 0, e
		}
		done += len(p)
	}
	return uint64(done), 0
}

// writev implements writev and (off >= 0) pwritev.
func (t *thread) writev(fd int, iov, n uint64, off int64) (uint64, unix.Errno) {
	v, _, e := t.iovecs(iov, n)
	if e != 0 {
		return 0, e
	}
	// Gather first so that one writev is one write, as programs expect for lines.
	var b []byte
	for _, x := range v {
		p, e := t.readMem(x[0], x[1])
		if e != 0 {
			return 0, e
		}
		b = append(b, p...)
	}
	if off >= 0 {
		o, f, e := t.positional(fd)
		if e != 0 {
			return 0, e
		}
		defer o.unref()
		n, err := f.WriteAt(b, off)
		return uint64(n), toErrno(err)
	}
	o, e := t.file(fd)
	if e != 0 {
		return 0, e
	}
	defer o.unref()
	if accessMode(o.flags) == unix.O_RDONLY {
		return 0, unix.EBADF
	}
	done := 0
	for done < len(b) {
		n, e := t.blockingIO(o, func() (int, unix.Errno) { return o.write(b[done:]) })
		done += n
		if e != 0 {
			if done > 0 {
				break
			}
			return 0, e
		}
		if n == 0 {
			break
		}
	}
	return uint64(done), 0
}

// dirOf returns the guest directory a *at call resolves relative paths from.
func (t *thread) dirOf(dirfd int32) (string, unix.Errno) {
	if dirfd == unix.AT_FDCWD {
		t.vm.threadMu.Lock()
		defer t.vm.threadMu.Unlock()
		return t.vm.cwd, 0
	}
	o, e := t.file(int(dirfd))
	if e != 0 {
		return "", e
	}
	defer o.unref()
	st, e := o.stat()
	if e != 0 {
		return "", e
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return "", unix.ENOTDIR
	}
	return o.path(), 0
}

// pathArg reads a path argument and the directory it is relative to.
func (t *thread) pathArg(dirfd int32, addr uint64) (dir, p string, e unix.Errno) {
	if p, e = t.readString(addr, pathMax); e != 0 {
		return "", "", e
	}
	if p == "" {
		return "", "", unix.ENOENT
	}
	if p[0] == '/' {
		return "/", p, 0
	}
	dir, e = t.dirOf(dirfd)
	return dir, p, e
}

func (t *thread) openat(dirfd int32, addr uint64, flags int, mode uint32) (uint64, unix.Errno) {
	dir, p, e := t.pathArg(dirfd, addr)
	if e != 0 {
		return 0, e
	}
	f, err := t.vm.fs.Open(dir, p, flags, mode&0o7777&^t.umask())
	if err != nil {
		return 0, toErrno(err)
	}
	n, e := t.vm.fds.install(&fsFile{f: f}, flags&(unix.O_ACCMODE|unix.O_APPEND|unix.O_NONBLOCK), flags&unix.O_CLOEXEC != 0, 0)
	return uint64(n), e
}

func (t *thread) closeRange(first, last, flags uint64) unix.Errno {
	if first > last || flags&^uint64(unix.CLOSE_RANGE_CLOEXEC) != 0 {
		return unix.EINVAL
	}
	for n := first; n <= min(last, maxFDs); n++ {
		if flags&unix.CLOSE_RANGE_CLOEXEC != 0 {
			t.vm.fds.setCloexec(int(n), true)
		} else {
			t.vm.fds.close(int(n))
		}
	}
	return 0
}

func (t *thread) lseek(fd int, off int64, whence int) (uint64, unix.Errno) {
	o, f, e := t.positional(fd)
	if e != 0 {
		return 0, e
	}
	defer o.unref()
	pos, err := f.Seek(off, whence)
	return uint64(pos), toErrno(err)
}

// encodeStat renders struct stat (x86-64, 144 bytes).
func encodeStat(st guestfs.Stat) []byte {
	b := make([]byte, 144)
	le := binary.LittleEndian
	le.PutUint64(b[0:], st.Dev)
	le.PutUint64(b[8:], st.Ino)
	le.PutUint64(b[16:], st.Nlink)
	le.PutUint32(b[24:], st.Mode)
	le.PutUint32(b[28:], st.UID)
	le.PutUint32(b[32:], st.GID)
	le.PutUint64(b[40:], st.Rdev)
	le.PutUint64(b[48:], uint64(st.Size))
	le.PutUint64(b[56:], uint64(st.Blksize))
	le.PutUint64(b[64:], uint64(st.Blocks))
	for i, ts := range []time.Time{st.Atime, st.Mtime, st.Ctime} {
		le.PutUint64(b[72+16*i:], uint64(ts.Unix()))
		le.PutUint64(b[80+16*i:], uint64(ts.Nanosecond()))
	}
	return b
}

// encodeStatx renders struct statx (256 bytes).
func encodeStatx(st guestfs.Stat) []byte {
	b := make([]byte, 256)
	le := binary.LittleEndian
	le.PutUint32(b[0:], unix.STATX_BASIC_STATS)
	le.PutUint32(b[4:], uint32(st.Blksize))
	le.PutUint32(b[16:], uint32(st.Nlink))
	le.PutUint32(b[20:], st.UID)
	le.PutUint32(b[24:], st.GID)
	le.PutUint16(b[28:], uint16(st.Mode))
	le.PutUint64(b[32:], st.Ino)
	le.PutUint64(b[40:], uint64(st.Size))
	le.PutUint64(b[48:], uint64(st.Blocks))
	for i, ts := range []time.Time{st.Atime, st.Ctime, st.Mtime} {
		off := []int{64, 96, 112}[i]
		le.PutUint64(b[off:], uint64(ts.Unix()))
		le.PutUint32(b[off+8:], uint32(ts.Nanosecond()))
	}
	le.PutUint32(b[128:], uint32(unix.Major(st.Rdev)))
	le.PutUint32(b[132:], uint32(unix.Minor(st.Rdev)))
	le.PutUint32(b[136:], uint32(unix.Major(st.Dev)))
	le.PutUint32(b[140:], uint32(unix.Minor(st.Dev)))
	return b
}

func (t *thread) fstat(fd int, buf uint64) unix.Errno {
	o, e := t.file(fd)
	if e != 0 {
		return e
	}
	defer o.unref()
	st, e := o.stat()
	if e != 0 {
		return e
	}
	return t.writeMem(buf, encodeStat(st))
}

// statPath stats dirfd/path with AT_* flags (AT_EMPTY_PATH: the descriptor itself).
func (t *thread) statPath(dirfd int32, addr uint64, flags int) (guestfs.Stat, unix.Errno) {
	p, e := t.readString(addr, pathMax)
	if e != 0 {
		return guestfs.Stat{}, e
	}
	if p == "" {
		if flags&atEmpty == 0 {
			return guestfs.Stat{}, unix.ENOENT
		}
		if dirfd == unix.AT_FDCWD {
			dir, _ := t.dirOf(dirfd)
			st, err := t.vm.fs.Stat("/", dir, true)
			return st, toErrno(err)
		}
		o, e := t.file(int(dirfd))
		if e != 0 {
			return guestfs.Stat{}, e
		}
		defer o.unref()
		return o.stat()
	}
	dir := "/"
	if p[0] != '/' {
		if dir, e = t.dirOf(dirfd); e != 0 {
			return guestfs.Stat{}, e
		}
	}
	st, err := t.vm.fs.Stat(dir, p, flags&atNoFoll == 0)
	return st, toErrno(err)
}

func (t *thread) fstatat(dirfd int32, addr, buf uint64, flags int) unix.Errno {
	if flags&^(atEmpty|atNoFoll|unix.AT_NO_AUTOMOUNT) != 0 {
		return unix.EINVAL
	}
	st, e := t.statPath(dirfd, addr, flags)
	if e != 0 {
		return e
	}
	return t.writeMem(buf, encodeStat(st))
}

func (t *thread) statx(dirfd int32, addr uint64, flags int, buf uint64) unix.Errno {
	st, e := t.statPath(dirfd, addr, flags&(atEmpty|atNoFoll))
	if e != 0 {
		return e
	}
	return t.writeMem(buf, encodeStatx(st))
}

func (t *thread) getdents64(fd int, buf, size uint64) (uint64, unix.Errno) {
	o, f, e := t.positional(fd)
	if e != 0 {
		if e == unix.ESPIPE {
			e = unix.ENOTDIR
		}
		return 0, e
	}
	defer o.unref()
	size = min(size, maxIO)
	ents, err := f.ReadDir(int(size/24) + 1)
	if err != nil {
		return 0, toErrno(err)
	}
	out := make([]byte, 0, size)
	packed := 0
	for _, d := range ents {
		reclen := (19 + len(d.Name) + 1 + 7) &^ 7
		if len(out)+reclen > int(size) {
			break
		}
		rec := make([]byte, reclen)
		binary.LittleEndian.PutUint64(rec[0:], d.Ino)
		binary.LittleEndian.PutUint64(rec[8:], uint64(d.Off))
		binary.LittleEndian.PutUint16(rec[16:], uint16(reclen))
		rec[18] = d.Type
		copy(rec[19:], d.Name)
		out = append(out, rec...)
		packed++
	}
	if packed == 0 && len(ents) > 0 {
		f.Seek(ents[0].Off-1, io.SeekStart)
		return 0, unix.EINVAL
	}
	if packed < len(ents) {
		f.Seek(ents[packed-1].Off, io.SeekStart)
	}
	return uint64(len(out)), t.writeMem(buf, out)
}

func (t *thread) readlinkat(dirfd int32, addr, buf, size uint64) (uint64, unix.Errno) {
	if int64(size) <= 0 {
		return 0, unix.EINVAL
	}
	dir, p, e := t.pathArg(dirfd, addr)
	if e != 0 {
		return 0, e
	}
	target, err := t.vm.fs.Readlink(dir, p)
	if err != nil {
		return 0, toErrno(err)
	}
	b := []byte(target)
	if uint64(len(b)) > size {
		b = b[:size]
	}
	return uint64(len(b)), t.writeMem(buf, b)
}

func (t *thread) faccessat(dirfd int32, addr uint64, mode uint32) unix.Errno {
	dir, p, e := t.pathArg(dirfd, addr)
	if e != 0 {
		return e
	}
	return toErrno(t.vm.fs.Access(dir, p, mode))
}

func (t *thread) dup(old, newfd, min int, cloexec bool) (uint64, unix.Errno) {
	n, e := t.vm.fds.dup(old, newfd, min, cloexec)
	return uint64(n), e
}

func (t *thread) fcntl(fd, cmd int, arg uint64) (uint64, unix.Errno) {
	switch cmd {
	case unix.F_DUPFD, unix.F_DUPFD_CLOEXEC:
		if arg >= maxFDs {
			return 0, unix.EINVAL
		}
		return t.dup(fd, -1, int(arg), cmd == unix.F_DUPFD_CLOEXEC)
	case unix.F_GETFD:
		if _, ok := t.vm.fds.path(fd); !ok {
			return 0, unix.EBADF
		}
		if t.vm.fds.cloexec(fd) {
			return unix.FD_CLOEXEC, 0
		}
		return 0, 0
	case unix.F_SETFD:
		return 0, t.vm.fds.setCloexec(fd, arg&unix.FD_CLOEXEC != 0)
	case unix.F_GETFL, unix.F_SETFL:
		o, e := t.file(fd)
		if e != 0 {
			return 0, e
		}
		defer o.unref()
		o.mu.Lock()
		defer o.mu.Unlock()
		if cmd == unix.F_GETFL {
			return uint64(o.flags), 0
		}
		const settable = unix.O_APPEND | unix.O_NONBLOCK
		o.flags = o.flags&^settable | int(arg)&settable
		if ff, ok := o.file.(*fsFile); ok {
			ff.f.SetFlags(ff.f.Flags()&^settable | int(arg)&settable)
		}
		return 0, 0
	case unix.F_GETLK, unix.F_SETLK, unix.F_SETLKW, unix.F_OFD_GETLK, unix.F_OFD_SETLK, unix.F_OFD_SETLKW:
		// One process: every lock is granted.
		o, e := t.file(fd)
		if e != 0 {
			return 0, e
		}
		o.unref()
		if cmd == unix.F_GETLK || cmd == unix.F_OFD_GETLK {
			return 0, t.writeMem(arg, []byte{byte(unix.F_UNLCK), 0})
		}
		return 0, 0
	}
	return 0, unix.EINVAL
}

// ioctl requests on descriptors themselves (asm-generic/ioctls.h).
const (
	fionbio  = 0x5421
	fionclex = 0x5450
	fioclex  = 0x5451
)

func (t *thread) ioctl(fd int, req, arg uint64) (uint64, unix.Errno) {
	o, e := t.file(fd)
	if e != 0 {
		return 0, e
	}
	defer o.unref()
	switch req {
	case fioclex:
		return 0, t.vm.fds.setCloexec(fd, true)
	case fionclex:
		return 0, t.vm.fds.setCloexec(fd, false)
	case fionbio:
		v, e := t.readMem(arg, 4)
		if e != 0 {
			return 0, e
		}
		o.mu.Lock()
		if binary.LittleEndian.Uint32(v) != 0 {
			o.flags |= unix.O_NONBLOCK
		} else {
			o.flags &^= unix.O_NONBLOCK
		}
		o.mu.Unlock()
		return 0, 0
	}
	// No terminal and no device: TCGETS, TIOCGWINSZ and the rest are not for this file.
	return 0, unix.ENOTTY
}

func (t *thread) pipe2(addr uint64, flags int) unix.Errno {
	if flags&^(unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_DIRECT) != 0 {
		return unix.EINVAL
	}
	r, w := newPipe(&t.vm.poll, uint64(t.vm.stats.nextIno.Add(1)))
	nb := flags & unix.O_NONBLOCK
	rfd, e := t.vm.fds.install(r, unix.O_RDONLY|nb, flags&unix.O_CLOEXEC != 0, 0)
	if e != 0 {
		w.close()
		return e
	}
	wfd, e := t.vm.fds.install(w, unix.O_WRONLY|nb, flags&unix.O_CLOEXEC != 0, 0)
	if e != 0 {
		t.vm.fds.close(rfd)
		return e
	}
	var b [8]byte
	binary.LittleEndian.PutUint32(b[0:], uint32(rfd))
	binary.LittleEndian.PutUint32(b[4:], uint32(wfd))
	if e := t.writeMem(addr, b[:]); e != 0 {
		t.vm.fds.close(rfd)
		t.vm.fds.close(wfd)
		return e
	}
	return 0
}

func (t *thread) eventfd(initval uint32, flags int) (uint64, unix.Errno) {
	if flags&^(unix.EFD_CLOEXEC|unix.EFD_NONBLOCK|unix.EFD_SEMAPHORE) != 0 {
		return 0, unix.EINVAL
	}
	ev := &eventFD{hub: &t.vm.poll, count: uint64(initval), semaphore: flags&unix.EFD_SEMAPHORE != 0}
	n, e := t.vm.fds.install(ev, unix.O_RDWR|flags&unix.O_NONBLOCK, flags&unix.EFD_CLOEXEC != 0, 0)
	return uint64(n), e
}

// sendfile copies from in, which must be a file of the namespace (Linux refuses pipes,
// eventfds and the like with EINVAL), to out. Reads are positional: from *offAddr, which is
// advanced, or from in's offset, which is advanced, in both cases by the bytes written.
func (t *thread) sendfile(out, in int, offAddr, count uint64) (uint64, unix.Errno) {
	ino, e := t.file(in)
	if e != 0 {
		return 0, e
	}
	defer ino.unref()
	outo, e := t.file(out)
	if e != 0 {
		return 0, e
	}
	defer outo.unref()
	ff, ok := ino.file.(*fsFile)
	if !ok {
		return 0, unix.EINVAL
	}
	if accessMode(ino.flags) == unix.O_WRONLY || accessMode(outo.flags) == unix.O_RDONLY {
		return 0, unix.EBADF
	}
	var off int64
	if offAddr != 0 {
		v, e := t.readU64(offAddr)
		if e != 0 {
			return 0, e
		}
		if off = int64(v); off < 0 {
			return 0, unix.EINVAL
		}
	} else {
		pos, err := ff.f.Seek(0, io.SeekCurrent)
		if err != nil {
			return 0, toErrno(err)
		}
		off = pos
	}
	count = min(count, maxIO)
	b := make([]byte, min(count, 1<<20))
	var total uint64
	var fail unix.Errno
chunks:
	for total < count {
		chunk := b[:min(uint64(len(b)), count-total)]
		n, err := ff.f.ReadAt(chunk, off+int64(total))
		if n == 0 {
			if err != nil && err != io.EOF {
				fail = toErrno(err)
			}
			break
		}
		for w := 0; w < n; {
			m, e := t.blockingIO(outo, func() (int, unix.Errno) { return outo.write(chunk[w:n]) })
			w += m
			total += uint64(m)
			if e != 0 || m == 0 {
				fail = e
				break chunks
			}
		}
	}
	if total == 0 && fail != 0 {
		return 0, fail
	}
	if offAddr != 0 {
		if e := t.writeU64(offAddr, uint64(off)+total); e != 0 {
			return 0, e
		}
	} else if _, err := ff.f.Seek(off+int64(total), io.SeekStart); err != nil {
		return 0, toErrno(err)
	}
	return total, 0
}

func (t *thread) ftruncate(fd int, size int64) unix.Errno {
	if size < 0 {
		return unix.EINVAL
	}
	o, f, e := t.positional(fd)
	if e != 0 {
		return unix.EINVAL
	}
	defer o.unref()
	return toErrno(f.Truncate(size))
}

func (t *thread) truncate(addr uint64, size int64) unix.Errno {
	dir, p, e := t.pathArg(unix.AT_FDCWD, addr)
	if e != 0 {
		return e
	}
	return toErrno(t.vm.fs.Truncate(dir, p, size))
}

func (t *thread) mkdirat(dirfd int32, addr uint64, mode uint32) unix.Errno {
	dir, p, e := t.pathArg(dirfd, addr)
	if e != 0 {
		return e
	}
	return toErrno(t.vm.fs.Mkdir(dir, p, mode&0o1777&^t.umask())) // as Linux, no set-user-ID or set-group-ID bit
}

// umask returns the file mode creation mask (umask(2)).
func (t *thread) umask() uint32 {
	t.vm.threadMu.Lock()
	defer t.vm.threadMu.Unlock()
	return t.vm.umask
}

func (t *thread) unlinkat(dirfd int32, addr uint64, flags int) unix.Errno {
	if flags&^unix.AT_REMOVEDIR != 0 {
		return unix.EINVAL
	}
	dir, p, e := t.pathArg(dirfd, addr)
	if e != 0 {
		return e
	}
	return toErrno(t.vm.fs.Unlink(dir, p, flags&unix.AT_REMOVEDIR != 0))
}

func (t *thread) renameat(olddirfd int32, oldAddr uint64, newdirfd int32, newAddr uint64, flags uint) unix.Errno {
	if flags != 0 {
		return unix.EINVAL
	}
	od, op, e := t.pathArg(olddirfd, oldAddr)
	if e != 0 {
		return e
	}
	nd, np, e := t.pathArg(newdirfd, newAddr)
	if e != 0 {
		return e
	}
	return toErrno(t.vm.fs.Rename(od, op, nd, np))
}

func (t *thread) symlinkat(targetAddr uint64, dirfd int32, addr uint64) unix.Errno {
	target, e := t.readString(targetAddr, pathMax)
	if e != 0 {
		return e
	}
	dir, p, e := t.pathArg(dirfd, addr)
	if e != 0 {
		return e
	}
	return toErrno(t.vm.fs.Symlink(target, dir, p))
}

func (t *thread) linkat(olddirfd int32, oldAddr uint64, newdirfd int32, newAddr uint64, flags int) unix.Errno {
	od, op, e := t.pathArg(olddirfd, oldAddr)
	if e != 0 {
		return e
	}
	nd, np, e := t.pathArg(newdirfd, newAddr)
	if e != 0 {
		return e
	}
	return toErrno(t.vm.fs.Link(od, op, nd, np, flags&unix.AT_SYMLINK_FOLLOW != 0))
}

func (t *thread) fchmodat(dirfd int32, addr uint64, mode uint32) unix.Errno {
	dir, p, e := t.pathArg(dirfd, addr)
	if e != 0 {
		return e
	}
	return toErrno(t.vm.fs.Chmod(dir, p, mode&0o7777, true))
}

func (t *thread) fchmod(fd int, mode uint32) unix.Errno {
	p, ok := t.vm.fds.path(fd)
	if !ok {
		return unix.EBADF
	}
	return toErrno(t.vm.fs.Chmod("/", p, mode&0o7777, true))
}

func (t *thread) utimensat(dirfd int32, addr, times uint64, flags int) unix.Errno {
	now := time.Now()
	at, mt := now, now
	if times != 0 {
		b, e := t.readMem(times, 32)
		if e != 0 {
			return e
		}
		conv := func(s, ns int64, cur time.Time) time.Time {
			switch ns {
			case unix.UTIME_NOW:
				return now
			case unix.UTIME_OMIT:
				return time.Time{}
			}
			return time.Unix(s, ns)
		}
		le := binary.LittleEndian
		at = conv(int64(le.Uint64(b)), int64(le.Uint64(b[8:])), now)
		mt = conv(int64(le.Uint64(b[16:])), int64(le.Uint64(b[24:])), now)
	}
	var dir, p string
	if addr == 0 {
		path, ok := t.vm.fds.path(int(dirfd))
		if !ok {
			return unix.EBADF
		}
		dir, p = "/", path
	} else {
		var e unix.Errno
		if dir, p, e = t.pathArg(dirfd, addr); e != 0 {
			return e
		}
	}
	return toErrno(t.vm.fs.Utimes(dir, p, at, mt, flags&atNoFoll == 0))
}

func (t *thread) getcwd(buf, size uint64) (uint64, unix.Errno) {
	t.vm.threadMu.Lock()
	cwd := t.vm.cwd
	t.vm.threadMu.Unlock()
	b := append([]byte(cwd), 0)
	if uint64(len(b)) > size {
		return 0, unix.ERANGE
	}
	return uint64(len(b)), t.writeMem(buf, b)
}

func (t *thread) chdir(addr uint64) unix.Errno {
	dir, p, e := t.pathArg(unix.AT_FDCWD, addr)
	if e != 0 {
		return e
	}
	return t.setCwd(dir, p)
}

func (t *thread) fchdir(fd int) unix.Errno {
	dir, e := t.dirOf(int32(fd))
	if e != 0 {
		return e
	}
	return t.setCwd("/", dir)
}

func (t *thread) setCwd(dir, p string) unix.Errno {
	abs, err := t.vm.fs.ResolveDir(dir, p)
	if err != nil {
		return toErrno(err)
	}
	if e := toErrno(t.vm.fs.Access("/", abs, unix.X_OK)); e != 0 {
		return e
	}
	t.vm.threadMu.Lock()
	t.vm.cwd = abs
	t.vm.threadMu.Unlock()
	return 0
}
