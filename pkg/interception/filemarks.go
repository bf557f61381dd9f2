package interception

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultMaxFileMarks is the default of GateConfig.MaxFileMarks.
const DefaultMaxFileMarks = 16384

// fileMask is what an untrusted inode is marked for by a mark of its own: its opens and
// executions are asked about under any name, in any directory of the file system.
const fileMask = unix.FAN_OPEN_PERM | unix.FAN_OPEN_EXEC_PERM

// inodeKey names an inode, whatever its names and content.
type inodeKey struct{ dev, ino uint64 }

// origins are the origin facts a verdict was decided with.
type origins struct {
	url, referrer, observed string
}

// untrusted is what the Gate knows about an inode that received a verdict refusing its
// opens (isolate, deny or ask). The verdict belongs to the content: the version decided
// (ctime, size) answers at once, another version with the same SHA-256 (a rename, a hard
// link, chmod, a moved file: anything that changes the ctime but not the bytes) keeps the
// verdict, and another content is decided again, with the origins observed when the inode
// was first decided.
type untrusted struct {
	v       Verdict
	ctime   int64  // the version last decided or recognised
	size    int64  //
	sum     string // hex SHA-256 of the content decided; "" while unknown
	origins origins
	stale   bool // the policy changed (Invalidate, InvalidateFile): decide again at the next open
	used    time.Time
	path    string // last name seen, for logs

	marked bool     // the inode carries its own fanotify mark
	ref    *fileRef // to find the inode again without a name (unmark); nil if none
	wd     int      // inotify watch for IN_DELETE_SELF; -1 if none
}

// fileRef finds an inode again without a name: its file handle and mount
// (open_by_handle_at, see withHandle).
type fileRef struct {
	handle  unix.FileHandle
	mountID int
}

// refOf returns the fileRef of the file open as fd.
func refOf(fd int) (*fileRef, error) {
	h, mountID, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		return nil, err
	}
	return &fileRef{handle: h, mountID: mountID}, nil
}

// current reports whether u answers the version key by itself.
func (u *untrusted) current(key cacheKey) bool {
	return !u.stale && u.ctime == key.ctime && u.size == key.size
}

// fan calls fn with the fanotify group's descriptor, which stays open meanwhile; after
// Close it returns os.ErrClosed instead (a late decision must not mark through a reused
// descriptor number).
func (g *Gate) fan(fn func(fd int) error) error { return withFD(g.f, fn) }

// inot is fan for the inotify instance; without one it returns os.ErrClosed.
func (g *Gate) inot(fn func(fd int) error) error {
	if g.ino == nil {
		return os.ErrClosed
	}
	return withFD(g.ino, fn)
}

func withFD(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// rmWatch removes an inotify watch of the Gate's.
func (g *Gate) rmWatch(wd int) {
	g.inot(func(ifd int) error {
		_, err := unix.InotifyRmWatch(ifd, uint32(wd))
		return err
	})
}

// untrustedOf returns a copy of the state of the inode of key, if it has one, and marks
// it used.
func (g *Gate) untrustedOf(key cacheKey, now time.Time) (untrusted, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	u := g.files[inodeKey{key.dev, key.ino}]
	if u == nil {
		return untrusted{}, false
	}
	u.used = now
	return *u, true
}

// remember records the verdict v for the version key of the inode open as fd. A verdict
// that refuses opens gives the inode a mark of its own, so that it stays gated under any
// name (a rename to a temporary download name, a hard link or a move out of the gated
// directories); a trust verdict takes such a mark away. gen is the generation the
// verdict was decided in: a verdict decided before an invalidation is kept, but stale (an
// untrusted inode keeps its mark, and is decided again at its next open).
func (g *Gate) remember(fd int, key cacheKey, path string, v Verdict, sum string, o origins, gen uint64) {
	ik := inodeKey{key.dev, key.ino}
	if v.Action == ActionTrust {
		g.mu.Lock()
		u, old := g.files[ik], g.gen.Load() != gen
		if u != nil && old {
			u.stale = true
		}
		g.mu.Unlock()
		if !old {
			g.forget(ik, fd)
		}
		return
	}
	now := time.Now()
	var victim *untrusted
	g.mu.Lock()
	u := g.files[ik]
	if u == nil {
		if len(g.files) >= g.cfg.MaxFileMarks {
			victim = g.evictLocked()
		}
		u = &untrusted{wd: -1}
		g.files[ik] = u
	}
	u.v, u.ctime, u.size, u.sum, u.origins = v, key.ctime, key.size, sum, o
	u.stale, u.used, u.path = g.gen.Load() != gen, now, path
	g.mu.Unlock()
	if victim != nil {
		g.unmarkByHandle(victim)
	}
	g.markFile(fd, ik, u, path)
}

// seed takes a verdict the Watcher decided, in the generation gen, for the file open as
// fd, whose content (hashed as fi.SHA256) was the version hashed: the current version,
// with the ctime of the record the Watcher wrote, is answered from it. Nothing is taken if
// the file was written since.
func (g *Gate) seed(fd int, hashed *unix.Stat_t, fi FileInfo, v Verdict, gen uint64) {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Dev != hashed.Dev || st.Ino != hashed.Ino ||
		st.Size != hashed.Size || st.Mtim != hashed.Mtim {
		return
	}
	key := cacheKey{dev: st.Dev, ino: st.Ino, ctime: st.Ctim.Nano(), size: st.Size}
	g.store(key, v, gen)
	g.remember(fd, key, fi.Path, v, fi.SHA256, origins{url: fi.OriginURL, referrer: fi.ReferrerURL, observed: fi.ObservedOrigin}, gen)
}

// recognised records that the version key of an untrusted inode has the content decided.
func (g *Gate) recognised(key cacheKey, path string, v Verdict) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if u := g.files[inodeKey{key.dev, key.ino}]; u != nil && u.v == v {
		u.ctime, u.size, u.path = key.ctime, key.size, path
	}
}

// setSum records the SHA-256 of the version key of an untrusted inode, hashed after the
// decision.
func (g *Gate) setSum(key cacheKey, sum string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if u := g.files[inodeKey{key.dev, key.ino}]; u != nil && u.ctime == key.ctime && u.size == key.size && u.sum == "" {
		u.sum = sum
	}
}

// markFile adds the inode's own mark (again: the kernel drops marks with the inode, and
// an inode number may be reused) and the means to find it again.
func (g *Gate) markFile(fd int, ik inodeKey, u *untrusted, path string) {
	err := g.fan(func(gfd int) error {
		err := unix.FanotifyMark(gfd, unix.FAN_MARK_ADD, fileMask, fd, "")
		if err == nil {
			// A trusted file's ignore mark (cleared by the kernel when the file was
			// modified, but be sure) would hide the opens the mark is for.
			unix.FanotifyMark(gfd, unix.FAN_MARK_REMOVE|unix.FAN_MARK_IGNORED_MASK, unix.FAN_OPEN_PERM, fd, "")
		}
		return err
	})
	if errors.Is(err, os.ErrClosed) {
		return
	}
	if err != nil && !g.markWarned.Swap(true) {
		g.log.Warn("gate: cannot mark an untrusted file; it is gated in the download directories only",
			"path", path, "err", err)
	}
	ref, herr := refOf(fd)
	wd := -1
	if err == nil {
		werr := g.inot(func(ifd int) error {
			w, err := unix.InotifyAddWatch(ifd, "/proc/self/fd/"+strconv.Itoa(fd), unix.IN_DELETE_SELF)
			wd = w
			return err
		})
		if werr != nil {
			wd = -1
		}
		if werr != nil && !errors.Is(werr, os.ErrClosed) && !g.inoWarned.Swap(true) {
			g.log.Warn("gate: cannot watch an untrusted file for its deletion; its entry stays until evicted",
				"path", path, "err", werr)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.files[ik] != u {
		return // forgotten meanwhile
	}
	u.marked = err == nil
	if herr == nil {
		u.ref = ref
	}
	if wd >= 0 {
		if old, ok := g.wds[wd]; ok && old != ik {
			// The watch number was the deleted inode's; its entry is gone with it.
			delete(g.files, old)
		}
		u.wd = wd
		g.wds[wd] = ik
	}
}

// forget drops the state of the inode open as fd, if it has one, and its mark.
func (g *Gate) forget(ik inodeKey, fd int) {
	g.mu.Lock()
	u := g.files[ik]
	if u != nil {
		delete(g.files, ik)
		if u.wd >= 0 {
			delete(g.wds, u.wd)
		}
	}
	g.mu.Unlock()
	if u == nil {
		return
	}
	if u.wd >= 0 {
		g.rmWatch(u.wd)
	}
	if u.marked {
		err := g.fan(func(gfd int) error { return unix.FanotifyMark(gfd, unix.FAN_MARK_REMOVE, fileMask, fd, "") })
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, os.ErrClosed) {
			g.log.Error("gate: remove the mark of a file now trusted", "path", u.path, "err", err)
		}
	}
}

// evictLocked removes the least recently used entry to make room and returns it, so that
// its mark can be removed once g.mu is released.
func (g *Gate) evictLocked() *untrusted {
	var old inodeKey
	var victim *untrusted
	for ik, u := range g.files {
		if victim == nil || u.used.Before(victim.used) {
			old, victim = ik, u
		}
	}
	if victim == nil {
		return nil
	}
	delete(g.files, old)
	if victim.wd >= 0 {
		delete(g.wds, victim.wd)
	}
	if n := g.marksEvicted.Add(1); n == 1 {
		g.log.Warn("gate: MaxFileMarks reached; the least recently opened untrusted file loses its own mark "+
			"(it stays gated in the download directories, not under names outside them)",
			"max", g.cfg.MaxFileMarks, "path", victim.path)
	} else {
		g.log.Debug("gate: file mark evicted", "path", victim.path)
	}
	return victim
}

// unmarkByHandle removes the mark of an inode that is not open, found by its handle.
func (g *Gate) unmarkByHandle(u *untrusted) {
	if u.wd >= 0 {
		g.rmWatch(u.wd)
	}
	if !u.marked {
		return
	}
	err := g.withHandle(u.ref, nil, func(path string) error {
		return g.fan(func(gfd int) error {
			return unix.FanotifyMark(gfd, unix.FAN_MARK_REMOVE, fileMask, unix.AT_FDCWD, path)
		})
	})
	if err != nil && !errors.Is(err, unix.ESTALE) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, os.ErrClosed) {
		g.log.Error("gate: remove the mark of an evicted file", "path", u.path, "err", err)
	}
}

// withHandle opens the inode of ref by its handle (O_PATH: no permission event, no
// content) and calls fn with a path naming it. mounts caches the mount points by mount ID
// across calls; nil reads them afresh. ESTALE means the inode no longer exists.
func (g *Gate) withHandle(ref *fileRef, mounts map[int]string, fn func(path string) error) error {
	if ref == nil {
		return errors.New("no file handle")
	}
	if mounts == nil {
		mounts = map[int]string{}
	}
	if len(mounts) == 0 {
		if err := readMounts(mounts); err != nil {
			return err
		}
	}
	mp, ok := mounts[ref.mountID]
	if !ok {
		return fmt.Errorf("mount %d: %w", ref.mountID, unix.ESTALE) // unmounted: the mark went with it
	}
	// open_by_handle_at wants a real descriptor of the mount (not O_PATH). Opening a
	// directory sends no permission event (the Gate's marks leave FAN_ONDIR out), nor does
	// an O_PATH open of the file: this may run with g.mu held.
	mfd, err := unix.Open(mp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open mount %s: %w", mp, err)
	}
	defer unix.Close(mfd)
	fd, err := unix.OpenByHandleAt(mfd, ref.handle, unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open by handle: %w", err)
	}
	defer unix.Close(fd)
	return fn("/proc/self/fd/" + strconv.Itoa(fd))
}

// readMounts fills m with the mount points of this process's mount namespace by mount ID.
func readMounts(m map[int]string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		id, err := strconv.Atoi(fields[0])
		if err != nil {
			continue
		}
		m[id] = unescapeMount(fields[4])
	}
	return sc.Err()
}

// unescapeMount undoes the octal escapes (\040 for a space) of a mountinfo path.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// watchDeletes reads the inotify instance that watches marked files for IN_DELETE_SELF:
// when the last link of a marked inode is gone the kernel drops its marks, and the Gate
// drops its entry.
func (g *Gate) watchDeletes() {
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := g.ino.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || g.ctx.Err() != nil {
				return
			}
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			g.log.Error("gate: read inotify", "err", err)
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int(int32(binary.NativeEndian.Uint32(buf[off:])))
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			off += unix.SizeofInotifyEvent + int(binary.NativeEndian.Uint32(buf[off+12:]))
			if mask&unix.IN_Q_OVERFLOW != 0 {
				g.log.Warn("gate: inotify queue overflow; deleted untrusted files stay listed until evicted")
			}
			if mask&(unix.IN_DELETE_SELF|unix.IN_IGNORED) == 0 {
				continue
			}
			g.mu.Lock()
			if ik, ok := g.wds[wd]; ok {
				delete(g.wds, wd)
				if u := g.files[ik]; u != nil && u.wd == wd {
					delete(g.files, ik)
				}
			}
			g.mu.Unlock()
		}
	}
}

// hashFile returns the hex SHA-256 of the content of f, read with ReadAt (f's offset is
// left alone), stopping early when ctx is done. The Watcher and the Gate hash with it.
func hashFile(ctx context.Context, f *os.File) (string, error) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := f.ReadAt(buf, off)
		h.Write(buf[:n])
		off += int64(n)
		if errors.Is(err, io.EOF) {
			return hex.EncodeToString(h.Sum(nil)), nil
		}
		if err != nil {
			return "", err
		}
	}
}

// sameVersion reports whether the file open as fd is still the version key.
func sameVersion(fd int, key cacheKey) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil &&
		(cacheKey{dev: st.Dev, ino: st.Ino, ctime: st.Ctim.Nano(), size: st.Size}) == key
}
