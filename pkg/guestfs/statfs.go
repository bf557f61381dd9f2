package guestfs

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// FSStat describes the file system holding a file, as statfs(2) reports it (struct
// statfs; sizes in blocks of Bsize bytes).
type FSStat struct {
	Type                  int64 // magic number: EXT4_SUPER_MAGIC, TMPFS_MAGIC, PROC_SUPER_MAGIC
	Bsize, Frsize         int64
	Blocks, Bfree, Bavail uint64
	Files, Ffree          uint64
	Fsid                  [2]int32
	Namelen               int64
	Flags                 int64 // ST_RDONLY, ST_NOSUID, ...; ST_VALID always
}

// stVALID is ST_VALID: f_flags is filled in (Linux sets it for every statfs).
const stVALID = 0x20

// Mount flags of the trees, in ST_* and in mount options.
const (
	roFlags      = unix.ST_RDONLY | unix.ST_NOSUID | unix.ST_NODEV | unix.ST_RELATIME
	scratchFlags = unix.ST_NOSUID | unix.ST_NODEV | unix.ST_RELATIME
	devFlags     = unix.ST_NOSUID | unix.ST_RELATIME
	procFlags    = unix.ST_NOSUID | unix.ST_NODEV | unix.ST_NOEXEC | unix.ST_RELATIME
)

// fsStat returns the statfs of tree tr. f.mu is held.
//
// The image and /input are read-only (ST_RDONLY) with no free space; as the image's
// stat results mimic ext4's, so does its type. The scratch trees are tmpfs: one budget,
// Config.ScratchBytes and MaxFiles, shared by the three. /dev is devtmpfs, /proc procfs.
func (f *FS) fsStat(tr treeID) FSStat {
	const bsize = 4096
	dev := f.trees[tr].dev
	st := FSStat{Bsize: bsize, Frsize: bsize, Namelen: 255, Fsid: [2]int32{int32(unix.Major(dev)<<20 | unix.Minor(dev)), 0}}
	switch tr {
	case treeImage:
		st.Type, st.Flags = unix.EXT4_SUPER_MAGIC, roFlags
		st.Blocks = uint64((f.im.Size() + bsize - 1) / bsize)
		st.Files = uint64(f.im.Len())
	case treeInput:
		st.Type, st.Flags = unix.EXT4_SUPER_MAGIC, roFlags
		st.Files = uint64(len(f.inputs)) + 1
		for _, in := range f.inputs {
			st.Blocks += uint64(in.stat(f).Blocks / (bsize / 512))
		}
	case treeTmp, treeWork, treeOutput:
		st.Type, st.Flags = unix.TMPFS_MAGIC, scratchFlags
		st.Blocks = uint64(f.scratchLimit / bsize)
		st.Bfree = uint64(max(f.scratchLimit-f.usedBytes, 0) / bsize)
		st.Bavail = st.Bfree
		st.Files = uint64(f.fileLimit)
		st.Ffree = uint64(max(f.fileLimit-f.usedFiles, 0))
	case treeDev:
		st.Type, st.Flags = unix.TMPFS_MAGIC, devFlags
		st.Files = uint64(len(f.trees[treeDev].root.(*synthDir).kids)) + 1
	case treeProc:
		st.Type, st.Flags = unix.PROC_SUPER_MAGIC, procFlags
	}
	st.Flags |= stVALID
	return st
}

// StatFS describes the file system holding the file at path, following symlinks.
func (f *FS) StatFS(dir, path string) (FSStat, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, err := f.resolveAttr(dir, path, true, false)
	if err != nil {
		return FSStat{}, wrap("statfs", path, err)
	}
	return f.fsStat(n.treeOf()), nil
}

// StatFS works on O_PATH files too, as fstatfs does.
func (fl *file) StatFS() (FSStat, error) {
	fl.mu.Lock()
	closed := fl.closed
	fl.mu.Unlock()
	f := fl.fs
	f.mu.RLock()
	defer f.mu.RUnlock()
	if closed || f.closed {
		return FSStat{}, wrap("fstatfs", fl.path, unix.EBADF)
	}
	return f.fsStat(fl.n.treeOf()), nil
}

// mountinfo returns /proc/self/mountinfo, listing the trees as mounts: the image at "/"
// and the others on it.
func (f *FS) mountinfo() []byte {
	var b strings.Builder
	for _, t := range f.trees {
		parent := 1
		if t.id == treeImage {
			parent = 0
		}
		typ, source, opts := mountType(t.id)
		fmt.Fprintf(&b, "%d %d %d:%d / %s %s - %s %s %s\n", int(t.id)+1, parent, unix.Major(t.dev), unix.Minor(t.dev),
			t.mount, mountOptions(f.fsStat(t.id).Flags), typ, source, opts)
	}
	return []byte(b.String())
}

// mounts returns /proc/self/mounts (/etc/mtab's format).
func (f *FS) mounts() []byte {
	var b strings.Builder
	for _, t := range f.trees {
		typ, source, _ := mountType(t.id)
		fmt.Fprintf(&b, "%s %s %s %s 0 0\n", source, t.mount, typ, mountOptions(f.fsStat(t.id).Flags))
	}
	return []byte(b.String())
}

// mountType returns the file system type, source and super block options of a tree's mount.
func mountType(tr treeID) (typ, source, opts string) {
	switch tr {
	case treeImage:
		return "ext4", "isolator-image", "ro"
	case treeInput:
		return "ext4", "isolator-input", "ro"
	case treeDev:
		return "devtmpfs", "udev", "rw"
	case treeProc:
		return "proc", "proc", "rw"
	}
	return "tmpfs", "tmpfs", "rw"
}

// mountOptions renders ST_* flags as mount options.
func mountOptions(flags int64) string {
	opts := "rw"
	if flags&unix.ST_RDONLY != 0 {
		opts = "ro"
	}
	for _, o := range []struct {
		flag int64
		name string
	}{{unix.ST_NOSUID, "nosuid"}, {unix.ST_NODEV, "nodev"}, {unix.ST_NOEXEC, "noexec"}, {unix.ST_RELATIME, "relatime"}} {
		if flags&o.flag != 0 {
			opts += "," + o.name
		}
	}
	return opts
}
