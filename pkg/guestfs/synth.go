package guestfs

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// synthDir is a fixed directory of /input, /dev or /proc.
type synthDir struct {
	tr   treeID
	ino  uint64
	mode uint32
	born time.Time
	kids map[string]node
}

func newSynthDir(ino uint64, perm uint32) *synthDir {
	return &synthDir{ino: ino, mode: unix.S_IFDIR | perm, kids: map[string]node{}}
}

func (d *synthDir) add(name string, n node) { d.kids[name] = n }

func (d *synthDir) treeOf() treeID { return d.tr }

func (d *synthDir) stat(f *FS) Stat {
	nlink := uint64(2)
	for _, k := range d.kids {
		if isDir(k) {
			nlink++
		}
	}
	return Stat{Dev: f.trees[d.tr].dev, Ino: d.ino, Nlink: nlink, Mode: d.mode, Blksize: 4096,
		Atime: d.born, Mtime: d.born, Ctime: d.born}
}

func (d *synthDir) lookup(_ *FS, name string) (node, error) {
	if k, ok := d.kids[name]; ok {
		return k, nil
	}
	return nil, unix.ENOENT
}

func (d *synthDir) list(f *FS) []Dirent {
	names := make([]string, 0, len(d.kids))
	for name := range d.kids {
		names = append(names, name)
	}
	slices.Sort(names)
	out := make([]Dirent, 0, len(names))
	for _, name := range names {
		st := d.kids[name].stat(f)
		out = append(out, Dirent{Ino: st.Ino, Type: direntType(st.Mode), Name: name})
	}
	return out
}

// synthLink is a fixed symlink of /dev or /proc.
type synthLink struct {
	tr   treeID
	ino  uint64
	perm uint32
	born time.Time
	dest string
}

func (l *synthLink) treeOf() treeID    { return l.tr }
func (l *synthLink) target(*FS) string { return l.dest }
func (l *synthLink) stat(f *FS) Stat {
	return Stat{Dev: f.trees[l.tr].dev, Ino: l.ino, Nlink: 1, Mode: unix.S_IFLNK | l.perm,
		Size: int64(len(l.dest)), Blksize: 4096, Atime: l.born, Mtime: l.born, Ctime: l.born}
}

// devKind selects the behaviour of a character device.
type devKind int

const (
	devNull devKind = iota
	devZero
	devFull
	devRandom
)

// devFile is a character device of /dev.
type devFile struct {
	ino  uint64
	kind devKind
	rdev uint64
	born time.Time
}

func (d *devFile) treeOf() treeID { return treeDev }
func (d *devFile) stat(f *FS) Stat {
	return Stat{Dev: f.trees[treeDev].dev, Ino: d.ino, Nlink: 1, Mode: unix.S_IFCHR | 0o666,
		Rdev: d.rdev, Blksize: 4096, Atime: d.born, Mtime: d.born, Ctime: d.born}
}

// procFile is a /proc file whose contents are generated at open.
type procFile struct {
	ino  uint64
	born time.Time
	gen  func() []byte
}

func (p *procFile) treeOf() treeID { return treeProc }
func (p *procFile) stat(f *FS) Stat {
	return Stat{Dev: f.trees[treeProc].dev, Ino: p.ino, Nlink: 1, Mode: unix.S_IFREG | 0o444,
		Blksize: 1024, Atime: p.born, Mtime: p.born, Ctime: p.born}
}

// fdDir is /proc/<pid>/fd; its entries come from Config.FDPath.
type fdDir struct {
	born time.Time
}

// maxFDList bounds the descriptors probed when listing /proc/self/fd.
const maxFDList = 1024

func (d *fdDir) treeOf() treeID { return treeProc }
func (d *fdDir) stat(f *FS) Stat {
	return Stat{Dev: f.trees[treeProc].dev, Ino: inoFDDir, Nlink: 2, Mode: unix.S_IFDIR | 0o500,
		UID: f.uid, GID: f.gid, Blksize: 1024, Atime: d.born, Mtime: d.born, Ctime: d.born}
}

// lookup is never called with FS.mu held: resolution calls fdLookup instead, because
// Config.FDPath may take locks of the caller.
func (d *fdDir) lookup(*FS, string) (node, error) { return nil, unix.ENOENT }

// list is empty under FS.mu; file.readDir fills the listing in with fdList.
func (d *fdDir) list(*FS) []Dirent { return nil }

// fdLookup resolves the name of an entry of /proc/self/fd. It must be called without
// FS.mu held.
func (d *fdDir) fdLookup(fdPath func(int) (string, bool), name string) (node, error) {
	fd, err := strconv.Atoi(name)
	if err != nil || fd < 0 || strconv.Itoa(fd) != name || fdPath == nil {
		return nil, unix.ENOENT
	}
	p, ok := fdPath(fd)
	if !ok {
		return nil, unix.ENOENT
	}
	return &fdLink{fd: fd, dest: p, born: d.born}, nil
}

// fdList lists /proc/self/fd. It must be called without FS.mu held.
func (d *fdDir) fdList(fdPath func(int) (string, bool)) []Dirent {
	if fdPath == nil {
		return nil
	}
	var out []Dirent
	for fd := range maxFDList {
		if _, ok := fdPath(fd); ok {
			out = append(out, Dirent{Ino: inoFirstFD + uint64(fd), Type: unix.DT_LNK, Name: strconv.Itoa(fd)})
		}
	}
	return out
}

// fdLink is /proc/self/fd/N, pointing at the guest path open on N.
type fdLink struct {
	fd   int
	dest string
	born time.Time
}

func (l *fdLink) treeOf() treeID    { return treeProc }
func (l *fdLink) target(*FS) string { return l.dest }
func (l *fdLink) stat(f *FS) Stat {
	return Stat{Dev: f.trees[treeProc].dev, Ino: inoFirstFD + uint64(l.fd), Nlink: 1,
		Mode: unix.S_IFLNK | 0o700, UID: f.uid, GID: f.gid, Size: 64, Blksize: 1024,
		Atime: l.born, Mtime: l.born, Ctime: l.born}
}

// inputFile is a host file under /input, read through the descriptor opened at New.
type inputFile struct {
	f     *os.File
	ino   uint64
	mtime time.Time
}

func (in *inputFile) treeOf() treeID { return treeInput }
func (in *inputFile) stat(f *FS) Stat {
	st := Stat{Dev: f.trees[treeInput].dev, Ino: in.ino, Nlink: 1, Mode: unix.S_IFREG | 0o444,
		Blksize: 4096, Atime: in.mtime, Mtime: in.mtime, Ctime: in.mtime}
	if !f.closed {
		if fi, err := in.f.Stat(); err == nil {
			st.Size = fi.Size()
		}
	}
	st.Blocks = blocks(st.Size)
	return st
}

// buildProc builds /proc.
func (f *FS) buildProc(cfg Config, pid int) (*synthDir, error) {
	born := time.Now()
	proc := newSynthDir(inoProcDir, 0o555)
	pidDir := newSynthDir(inoPIDDir, 0o555)
	pidName := strconv.Itoa(pid)
	proc.add(pidName, pidDir)
	proc.add("self", &synthLink{tr: treeProc, ino: inoProcSelf, perm: 0o777, born: born, dest: pidName})
	if cfg.Exe != "" {
		pidDir.add("exe", &synthLink{tr: treeProc, ino: inoExe, perm: 0o777, born: born, dest: cfg.Exe})
	}
	var cmdline []byte
	for _, a := range cfg.Cmdline {
		cmdline = append(append(cmdline, a...), 0)
	}
	pidDir.add("cmdline", &procFile{ino: inoCmdline, born: born, gen: func() []byte { return cmdline }})
	pidDir.add("fd", &fdDir{born: born})
	// Generated at open, without FS.mu held.
	locked := func(gen func() []byte) func() []byte {
		return func() []byte {
			f.mu.RLock()
			defer f.mu.RUnlock()
			return gen()
		}
	}
	pidDir.add("mountinfo", &procFile{ino: inoMountinfo, born: born, gen: locked(f.mountinfo)})
	pidDir.add("mounts", &procFile{ino: inoMounts, born: born, gen: locked(f.mounts)})
	proc.add("mounts", &synthLink{tr: treeProc, ino: inoProcMounts, perm: 0o777, born: born, dest: "self/mounts"})

	keys := make([]string, 0, len(cfg.ProcFiles))
	for k := range cfg.ProcFiles {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	nextIno := uint64(inoFirstProc)
	for _, key := range keys {
		gen := cfg.ProcFiles[key]
		parts := strings.Split(key, "/")
		if gen == nil {
			return nil, fmt.Errorf("%w: proc file %q", ErrInvalidConfig, key)
		}
		dir := proc
		if parts[0] == "self" || parts[0] == pidName {
			dir, parts = pidDir, parts[1:]
		}
		if len(parts) == 0 {
			return nil, fmt.Errorf("%w: proc file %q", ErrInvalidConfig, key)
		}
		for i, name := range parts {
			if !validName(name) {
				return nil, fmt.Errorf("%w: proc file %q", ErrInvalidConfig, key)
			}
			last := i == len(parts)-1
			kid, exists := dir.kids[name]
			if last {
				if exists {
					if _, isProc := kid.(*procFile); !isProc {
						return nil, fmt.Errorf("%w: proc file %q clashes with a directory or link", ErrInvalidConfig, key)
					}
				}
				dir.add(name, &procFile{ino: nextIno, born: born, gen: gen})
				nextIno++
				break
			}
			sub, isSynth := kid.(*synthDir)
			if !exists {
				sub = newSynthDir(nextIno, 0o555)
				nextIno++
				dir.add(name, sub)
			} else if !isSynth || sub == pidDir {
				return nil, fmt.Errorf("%w: proc file %q clashes with a file or link", ErrInvalidConfig, key)
			}
			dir = sub
		}
	}
	setSynth(proc, treeProc, born)
	return proc, nil
}

// setSynth sets the tree and creation time of a synthetic directory and its subdirectories.
func setSynth(d *synthDir, tr treeID, born time.Time) {
	d.tr, d.born = tr, born
	for _, k := range d.kids {
		if sub, ok := k.(*synthDir); ok {
			setSynth(sub, tr, born)
		}
	}
}

// buildDev builds /dev.
func buildDev(born time.Time) *synthDir {
	dev := newSynthDir(inoDevDir, 0o755)
	for _, d := range []struct {
		name  string
		ino   uint64
		kind  devKind
		minor uint32
	}{
		{"null", inoDevNull, devNull, 3},
		{"zero", inoDevZero, devZero, 5},
		{"full", inoDevFull, devFull, 7},
		{"random", inoDevRandom, devRandom, 8},
		{"urandom", inoDevURandom, devRandom, 9},
	} {
		dev.add(d.name, &devFile{ino: d.ino, kind: d.kind, rdev: unix.Mkdev(1, d.minor), born: born})
	}
	for _, l := range []struct {
		name, dest string
		ino        uint64
	}{
		{"fd", "/proc/self/fd", inoDevFDLink},
		{"stdin", "/proc/self/fd/0", inoDevStdin},
		{"stdout", "/proc/self/fd/1", inoDevStdout},
		{"stderr", "/proc/self/fd/2", inoDevStderr},
	} {
		dev.add(l.name, &synthLink{tr: treeDev, ino: l.ino, perm: 0o777, born: born, dest: l.dest})
	}
	setSynth(dev, treeDev, born)
	return dev
}

// buildTrees assembles the mounts and the root.
func (f *FS) buildTrees(inputDir, procDir *synthDir) {
	born := time.Now()
	setSynth(inputDir, treeInput, born)
	mk := func(id treeID, mount string, kind treeKind, root node) *tree {
		t := &tree{id: id, mount: mount, kind: kind, dev: unix.Mkdev(0, 32+uint32(id)), root: root}
		if m, ok := root.(*memNode); ok {
			t.scratch = m
		}
		f.trees[id] = t
		return t
	}
	f.root = &rootDir{img: imageRoot(f.im), mounts: map[string]*tree{}, born: born}
	mk(treeImage, "/", kindReadOnly, f.root)
	f.root.mounts["input"] = mk(treeInput, "/input", kindReadOnly, inputDir)
	f.root.mounts["tmp"] = mk(treeTmp, "/tmp", kindScratch, newScratchRoot(treeTmp, firstScratchIno-3, unix.S_ISVTX|0o777, 0, 0, born))
	f.root.mounts["work"] = mk(treeWork, "/work", kindScratch, newScratchRoot(treeWork, firstScratchIno-2, 0o755, f.uid, f.gid, born))
	f.root.mounts["output"] = mk(treeOutput, "/output", kindScratch, newScratchRoot(treeOutput, firstScratchIno-1, 0o755, f.uid, f.gid, born))
	f.root.mounts["dev"] = mk(treeDev, "/dev", kindSynthetic, buildDev(born))
	f.root.mounts["proc"] = mk(treeProc, "/proc", kindSynthetic, procDir)
	f.root.countLinks(f)
}
