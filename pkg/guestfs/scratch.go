package guestfs

import (
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// memNode is a file, directory or symlink of a scratch tree (/tmp, /work, /output). Every
// field is guarded by FS.mu.
type memNode struct {
	tr       treeID
	ino      uint64
	mode     uint32 // S_IF* | permission bits
	uid, gid uint32
	nlink    uint64 // names referring to the node; 0 once removed
	opens    int    // open file descriptions of a regular file
	atime    time.Time
	mtime    time.Time
	ctime    time.Time

	kids   map[string]*memNode // directory entries
	parent *memNode            // directory holding a directory; nil for a tree root
	data   []byte              // regular file contents
	link   string              // symlink target
	xattrs map[string][]byte   // user.* extended attributes, charged like data
}

func (m *memNode) treeOf() treeID { return m.tr }
func (m *memNode) isDir() bool    { return m.mode&unix.S_IFMT == unix.S_IFDIR }
func (m *memNode) isReg() bool    { return m.mode&unix.S_IFMT == unix.S_IFREG }

func (m *memNode) stat(f *FS) Stat {
	st := Stat{
		Dev: f.trees[m.tr].dev, Ino: m.ino, Nlink: m.nlink, Mode: m.mode, UID: m.uid, GID: m.gid,
		Blksize: 4096, Atime: m.atime, Mtime: m.mtime, Ctime: m.ctime,
	}
	switch m.mode & unix.S_IFMT {
	case unix.S_IFDIR:
		st.Size = 4096
		if m.nlink > 0 {
			st.Nlink = 2
			for _, k := range m.kids {
				if k.isDir() {
					st.Nlink++
				}
			}
		}
	case unix.S_IFREG:
		st.Size = int64(len(m.data))
	case unix.S_IFLNK:
		st.Size = int64(len(m.link))
		st.Blocks = linkBlocks(st.Size) // as the image's: a short target needs no block
		return st
	}
	st.Blocks = blocks(st.Size)
	return st
}

func (m *memNode) lookup(_ *FS, name string) (node, error) {
	if k, ok := m.kids[name]; ok {
		return k, nil
	}
	return nil, unix.ENOENT
}

func (m *memNode) list(*FS) []Dirent {
	names := make([]string, 0, len(m.kids))
	for name := range m.kids {
		names = append(names, name)
	}
	slices.Sort(names)
	out := make([]Dirent, 0, len(names))
	for _, name := range names {
		k := m.kids[name]
		out = append(out, Dirent{Ino: k.ino, Type: direntType(k.mode), Name: name})
	}
	return out
}

func (m *memNode) target(*FS) string { return m.link }

// newScratchRoot makes the root directory of a scratch tree.
func newScratchRoot(tr treeID, ino uint64, mode, uid, gid uint32, now time.Time) *memNode {
	return &memNode{tr: tr, ino: ino, mode: unix.S_IFDIR | mode, uid: uid, gid: gid, nlink: 2,
		atime: now, mtime: now, ctime: now, kids: map[string]*memNode{}}
}

// newNode makes a scratch node of the tree of dir, charging one entry and extra bytes. The
// caller links it into dir with link. f.mu must be held for writing.
func (f *FS) newNode(dir *memNode, mode uint32, extra int64) (*memNode, error) {
	if f.usedFiles >= f.fileLimit {
		return nil, unix.ENOSPC
	}
	if err := f.charge(extra); err != nil {
		return nil, err
	}
	now := time.Now()
	n := &memNode{tr: dir.tr, ino: f.nextIno, mode: mode, uid: f.uid, gid: f.gid,
		atime: now, mtime: now, ctime: now}
	f.nextIno++
	if n.isDir() {
		n.kids = map[string]*memNode{}
	}
	return n, nil
}

// charge accounts delta more scratch bytes, failing with ENOSPC past the limit.
func (f *FS) charge(delta int64) error {
	if delta > 0 && delta > f.scratchLimit-f.usedBytes {
		return unix.ENOSPC
	}
	f.usedBytes += delta
	return nil
}

// link enters n into dir as name, charging one directory entry. The caller checked the
// limit (newNode or addEntry).
func (f *FS) link(dir *memNode, name string, n *memNode) {
	dir.kids[name] = n
	n.nlink++
	if n.isDir() {
		n.nlink++ // its "."
		n.parent = dir
	}
	f.usedFiles++
	now := time.Now()
	dir.mtime, dir.ctime = now, now
}

// unlinkName removes name from dir, releasing its entry and, when nothing refers to the
// node any more, its bytes.
func (f *FS) unlinkName(dir *memNode, name string) {
	n := dir.kids[name]
	if n == nil {
		return
	}
	delete(dir.kids, name)
	f.usedFiles--
	now := time.Now()
	dir.mtime, dir.ctime = now, now
	n.ctime = now
	if n.isDir() {
		n.nlink = 0
		n.parent = nil
	} else {
		n.nlink--
	}
	f.maybeFree(n)
}

// maybeFree releases the bytes of a node no name and no open file refers to.
func (f *FS) maybeFree(n *memNode) {
	if n.nlink > 0 || n.opens > 0 {
		return
	}
	f.usedBytes -= int64(len(n.data)) + int64(len(n.link)) + n.xattrBytes()
	n.data = nil
	n.link = ""
	n.xattrs = nil
}

// resize sets the size of a regular scratch file, charging or releasing bytes.
func (f *FS) resize(n *memNode, size int64) error {
	old := int64(len(n.data))
	if size == old {
		return nil
	}
	if err := f.charge(size - old); err != nil {
		return err
	}
	if size == 0 {
		n.data = nil
	} else if size < old {
		clear(n.data[size:])
		n.data = n.data[:size]
	} else {
		n.data = slices.Grow(n.data, int(size-old))[:size]
	}
	return nil
}

// writeAt writes p at off into the regular scratch file n, growing it within the scratch
// limit. It writes what fits and fails with ENOSPC only if nothing does.
func (f *FS) writeAt(n *memNode, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, unix.EINVAL
	}
	if len(p) == 0 {
		return 0, nil
	}
	const maxFileSize = 1<<63 - 1
	if off > maxFileSize-int64(len(p)) {
		return 0, unix.EFBIG
	}
	end := off + int64(len(p))
	if size := int64(len(n.data)); end > size {
		room := f.scratchLimit - f.usedBytes
		if end-size > room {
			if off >= size+room {
				return 0, unix.ENOSPC
			}
			end = size + room
			p = p[:end-off]
		}
		if err := f.resize(n, end); err != nil {
			return 0, err
		}
	}
	copy(n.data[off:], p)
	now := time.Now()
	n.mtime, n.ctime = now, now
	return len(p), nil
}

// isAncestor reports whether dir a is dir b or one of its ancestors.
func isAncestor(a, b *memNode) bool {
	for d := b; d != nil; d = d.parent {
		if d == a {
			return true
		}
	}
	return false
}
