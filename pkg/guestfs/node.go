package guestfs

import (
	"io/fs"
	"path"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/image"
)

// Stat is the stat(2) view of a file.
type Stat struct {
	Dev, Ino, Nlink     uint64
	Mode                uint32 // S_IF* type bits | permission bits
	UID, GID            uint32
	Rdev                uint64
	Size                int64
	Blksize             int64
	Blocks              int64 // 512-byte blocks
	Atime, Mtime, Ctime time.Time
}

// IsDir reports whether st describes a directory.
func (st Stat) IsDir() bool { return st.Mode&unix.S_IFMT == unix.S_IFDIR }

// Dirent is one directory entry as getdents64 reports it.
type Dirent struct {
	Ino  uint64
	Off  int64 // position of the next entry; Seek(Off, io.SeekStart) resumes after this one
	Type uint8 // unix.DT_*
	Name string
}

// treeID names one of the trees ("mounts") the namespace is made of.
type treeID int

const (
	treeImage treeID = iota
	treeInput
	treeTmp
	treeWork
	treeOutput
	treeDev
	treeProc
	numTrees
)

// treeKind says how a tree may be changed.
type treeKind int

const (
	kindReadOnly  treeKind = iota // EROFS for every change
	kindScratch                   // in memory, writable, bounded
	kindSynthetic                 // fixed; changes fail with EACCES or EPERM
)

// tree is one mount of the namespace.
type tree struct {
	id      treeID
	mount   string // mount point, "/" for the image
	kind    treeKind
	dev     uint64
	scratch *memNode // root directory of a scratch tree
	root    node
}

// Inode numbers of the synthetic nodes. Scratch inodes count up from firstScratchIno;
// image inodes are the image's own and live on another device.
const (
	inoInputDir uint64 = 2 + iota
	inoDevDir
	inoProcDir
	inoProcSelf
	inoPIDDir
	inoExe
	inoCmdline
	inoFDDir
	inoDevFDLink
	inoDevStdin
	inoDevStdout
	inoDevStderr
	inoDevNull
	inoDevZero
	inoDevFull
	inoDevRandom
	inoDevURandom
	inoMountinfo
	inoMounts
	inoProcMounts
	inoFirstInput   = 1 << 10
	inoFirstProc    = 1 << 20
	inoFirstFD      = 1 << 30
	firstScratchIno = 1 << 32
)

// node is one file of the namespace. Methods run with FS.mu held (at least for reading).
type node interface {
	treeOf() treeID
	stat(f *FS) Stat
}

// dirNode is a directory.
type dirNode interface {
	node
	// lookup returns the child called name, or ENOENT.
	lookup(f *FS, name string) (node, error)
	// list returns the children, without "." and "..".
	list(f *FS) []Dirent
}

// linkNode is a symbolic link.
type linkNode interface {
	node
	target(f *FS) string
}

var (
	_ dirNode  = (*rootDir)(nil)
	_ dirNode  = (*imgNode)(nil)
	_ dirNode  = (*memNode)(nil)
	_ dirNode  = (*synthDir)(nil)
	_ dirNode  = (*fdDir)(nil)
	_ linkNode = (*imgNode)(nil)
	_ linkNode = (*memNode)(nil)
	_ linkNode = (*synthLink)(nil)
	_ linkNode = (*fdLink)(nil)
	_ node     = (*inputFile)(nil)
	_ node     = (*devFile)(nil)
	_ node     = (*procFile)(nil)
)

func isDir(n node) bool {
	switch n := n.(type) {
	case *memNode:
		return n.isDir()
	case *imgNode:
		return n.e.IsDir()
	case *rootDir, *synthDir, *fdDir:
		return true
	}
	return false
}

func asLink(n node) (linkNode, bool) {
	switch n := n.(type) {
	case *memNode:
		return n, n.mode&unix.S_IFMT == unix.S_IFLNK
	case *imgNode:
		return n, n.e.IsSymlink()
	case *synthLink:
		return n, true
	case *fdLink:
		return n, true
	}
	return nil, false
}

func asDir(n node) (dirNode, bool) {
	if !isDir(n) {
		return nil, false
	}
	d, ok := n.(dirNode)
	return d, ok
}

// direntType maps st_mode to a DT_* value.
func direntType(mode uint32) uint8 {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return unix.DT_DIR
	case unix.S_IFREG:
		return unix.DT_REG
	case unix.S_IFLNK:
		return unix.DT_LNK
	case unix.S_IFCHR:
		return unix.DT_CHR
	case unix.S_IFBLK:
		return unix.DT_BLK
	case unix.S_IFIFO:
		return unix.DT_FIFO
	case unix.S_IFSOCK:
		return unix.DT_SOCK
	}
	return unix.DT_UNKNOWN
}

// blocks is st_blocks (512-byte units) of a file of size bytes, as ext4 reports it for a
// file without holes: whole 4 KiB blocks.
func blocks(size int64) int64 {
	return (size + 4095) / 4096 * 8
}

// fastSymlinkMax is the longest symlink target ext4 keeps in the inode (a "fast" symlink,
// 60 bytes of block pointers including the NUL): such a symlink has no data block.
const fastSymlinkMax = 59

// linkBlocks is st_blocks of a symlink with a target of n bytes, as ext4 reports it.
func linkBlocks(n int64) int64 {
	if n <= fastSymlinkMax {
		return 0
	}
	return blocks(n)
}

func timespec(ts unix.Timespec) time.Time { return time.Unix(ts.Sec, ts.Nsec) }

// --- the image -----------------------------------------------------------------------------

// imgNode is an entry of the read-only image.
type imgNode struct{ e *image.Entry }

func (n *imgNode) treeOf() treeID { return treeImage }

// stat reports an image entry the way ext4 reports the host file it was packed from (as
// long as the host directory was small: ext4 grows a directory with many entries beyond
// one block): a directory has 2 + its subdirectories links (the image counts them once at
// Load, so a lookup costs no listing; a count that is right also keeps find(1)'s leaf
// optimisation right), size 4096 and 8 blocks; a regular file has whole 4 KiB blocks; a
// symlink of up to 59 bytes is a fast symlink, without a block.
func (n *imgNode) stat(f *FS) Stat {
	e := n.e
	st := Stat{
		Dev: f.trees[treeImage].dev, Ino: e.Ino, Nlink: 1, Mode: modeToUnix(e.Mode),
		Size: e.Size, Blksize: 4096, Atime: e.ModTime, Mtime: e.ModTime, Ctime: e.ModTime,
	}
	switch {
	case e.IsDir():
		st.Nlink = 2 + uint64(e.Subdirs())
		st.Size = 4096
		st.Blocks = blocks(st.Size)
	case e.IsSymlink():
		st.Blocks = linkBlocks(st.Size)
	default:
		st.Blocks = blocks(st.Size)
	}
	return st
}

func (n *imgNode) lookup(f *FS, name string) (node, error) {
	p := n.e.Path + "/" + name
	if n.e.Path == "/" {
		p = "/" + name
	}
	e, err := f.im.Lookup(p)
	if err != nil {
		return nil, unix.ENOENT
	}
	return &imgNode{e}, nil
}

func (n *imgNode) list(f *FS) []Dirent {
	kids, err := f.im.ReadDir(n.e.Path)
	if err != nil {
		return nil
	}
	out := make([]Dirent, 0, len(kids))
	for _, k := range kids {
		out = append(out, Dirent{Ino: k.Ino, Type: direntType(modeToUnix(k.Mode)), Name: k.Name()})
	}
	return out
}

func (n *imgNode) target(*FS) string { return n.e.Target }

// modeToUnix converts an fs.FileMode to st_mode bits.
func modeToUnix(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	switch {
	case m.IsDir():
		u |= unix.S_IFDIR
	case m&fs.ModeSymlink != 0:
		u |= unix.S_IFLNK
	case m&fs.ModeNamedPipe != 0:
		u |= unix.S_IFIFO
	case m&fs.ModeSocket != 0:
		u |= unix.S_IFSOCK
	case m&fs.ModeCharDevice != 0:
		u |= unix.S_IFCHR
	case m&fs.ModeDevice != 0:
		u |= unix.S_IFBLK
	default:
		u |= unix.S_IFREG
	}
	if m&fs.ModeSetuid != 0 {
		u |= unix.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		u |= unix.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		u |= unix.S_ISVTX
	}
	return u
}

// rootDir is the guest's "/": the image root with the other trees mounted on it, masking
// image entries of the same names.
type rootDir struct {
	img    *imgNode // nil for an image without a root entry (never, for a valid image)
	mounts map[string]*tree
	born   time.Time
	nlink  uint64 // 2 + the image's subdirectories and the mount points; set by buildTrees
}

func (r *rootDir) treeOf() treeID { return treeImage }

func (r *rootDir) stat(f *FS) Stat {
	st := Stat{Dev: f.trees[treeImage].dev, Ino: 1, Mode: unix.S_IFDIR | 0o755, Size: 4096,
		Blksize: 4096, Blocks: 8, Atime: r.born, Mtime: r.born, Ctime: r.born}
	if r.img != nil {
		st = r.img.stat(f)
	}
	st.Nlink = r.nlink
	return st
}

// countLinks sets r.nlink: the mount points are subdirectories of "/" too, whether or not
// they mask a directory of the image.
func (r *rootDir) countLinks(f *FS) {
	r.nlink = 2 + uint64(len(r.mounts))
	if r.img == nil {
		return
	}
	r.nlink += uint64(r.img.e.Subdirs())
	for name := range r.mounts {
		if e, err := f.im.Lookup("/" + name); err == nil && e.IsDir() {
			r.nlink-- // counted among the image's subdirectories already
		}
	}
}

func (r *rootDir) lookup(f *FS, name string) (node, error) {
	if t, ok := r.mounts[name]; ok {
		return t.root, nil
	}
	if r.img == nil {
		return nil, unix.ENOENT
	}
	return r.img.lookup(f, name)
}

func (r *rootDir) list(f *FS) []Dirent {
	var out []Dirent
	if r.img != nil {
		for _, d := range r.img.list(f) {
			if _, masked := r.mounts[d.Name]; !masked {
				out = append(out, d)
			}
		}
	}
	for name, t := range r.mounts {
		st := t.root.stat(f)
		out = append(out, Dirent{Ino: st.Ino, Type: unix.DT_DIR, Name: name})
	}
	slices.SortFunc(out, func(a, b Dirent) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// imageRoot returns the root entry of the image, or nil.
func imageRoot(im *image.Image) *imgNode {
	e, err := im.Lookup("/")
	if err != nil || !e.IsDir() {
		return nil
	}
	return &imgNode{e}
}

// parentOf returns the directory part of a canonical guest path.
func parentOf(p string) string { return path.Dir(p) }
