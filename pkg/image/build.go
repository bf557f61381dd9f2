package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// FileSpec names an extra host file or directory and where it goes in the guest. A directory
// is copied recursively; symlinks inside it are stored as they are, with their targets
// unresolved. A symlink given as HostPath itself is followed.
type FileSpec struct {
	HostPath  string
	GuestPath string // absolute and clean; HostPath (made absolute) when empty
}

// BuildConfig configures Build.
type BuildConfig struct {
	// Programs are host paths of ELF programs; each is placed at its own (absolute) host
	// path, together with the symlinks on that path, its ELF interpreter and the shared
	// libraries it needs, resolved as ld.so would.
	Programs []string
	// Files are extra files or directories.
	Files []FileSpec
	// LibraryPath lists extra library search directories, searched like LD_LIBRARY_PATH
	// (after DT_RPATH, before DT_RUNPATH). The defaults are always searched last: the
	// directories of /etc/ld.so.conf (and the files it includes), then
	// /lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu, /lib64 and /usr/lib.
	LibraryPath []string
	// Hidden lists guest directories that the micro VM mounts over the image
	// (guestfs.MountPoints: /tmp, /work, /input, /output, /dev, /proc). The guest never
	// sees what the image holds at or under them, so Build refuses, with a
	// *HiddenPathError, any entry under one of them, and anything but a directory at one.
	// Nil refuses nothing.
	Hidden []string
	// Progress, if not nil, is called with a line describing each step.
	Progress func(msg string)
}

// Library is one shared object or ELF interpreter Build resolved and packed.
type Library struct {
	Name     string // DT_NEEDED name, or the PT_INTERP path for an interpreter
	Path     string // host path it was found at (also its guest path)
	RealPath string // Path with every symlink resolved; the file whose content is packed
	NeededBy string // host path of the first object that needed it
}

// BuildReport lists what Build packed.
type BuildReport struct {
	Entries   int       // number of entries, including the root directory
	Files     int       // regular files
	Dirs      int       // directories, including the root
	Symlinks  int       // symbolic links
	DataBytes int64     // total size of the regular files' contents
	Bytes     int64     // size of the image
	Libraries []Library // interpreters and shared libraries, in resolution order
	Digest    string    // hex SHA-256 of the image, as Image.Digest reports it
}

// Errors reported by Build, wrapped with details.
var (
	// ErrNotELF means a program is not an x86-64 ELF executable.
	ErrNotELF = errors.New("not an x86-64 ELF program")
	// ErrConflict means two inputs want different things at the same guest path.
	ErrConflict = errors.New("conflicting image entries")
)

// HiddenPathError reports an entry Build refused because its guest path is at or under a
// directory of BuildConfig.Hidden, where the guest would not see it.
type HiddenPathError struct {
	Path  string // guest path of the entry
	Mount string // the directory of BuildConfig.Hidden it is at or under
}

func (e *HiddenPathError) Error() string {
	return fmt.Sprintf("guest path %s is hidden by the micro VM's %s mount: the guest would not see it", e.Path, e.Mount)
}

// hidden returns a *HiddenPathError if the guest would not see an entry at p (a directory
// when dir), or nil.
func (b *builder) hidden(p string, dir bool) error {
	for _, m := range b.cfg.Hidden {
		if strings.HasPrefix(p, strings.TrimSuffix(m, "/")+"/") || p == m && !dir {
			return &HiddenPathError{Path: p, Mount: m}
		}
	}
	return nil
}

// MissingLibraryError reports a DT_NEEDED library found in no search directory.
type MissingLibraryError struct {
	Library  string // the DT_NEEDED name
	NeededBy string // host path of the object that needs it
	Program  string // the program being packed
}

func (e *MissingLibraryError) Error() string {
	if e.NeededBy == e.Program {
		return fmt.Sprintf("library %s needed by %s not found", e.Library, e.Program)
	}
	return fmt.Sprintf("library %s needed by %s (for program %s) not found", e.Library, e.NeededBy, e.Program)
}

// node is one future image entry.
type node struct {
	path   string
	mode   fs.FileMode
	mtime  time.Time
	target string // symlinks
	host   string // regular files: host file holding the content
	size   int64  // regular files
	off    int64  // regular files: offset of the content in the image, set by write
	sum    [32]byte
	synth  bool // a directory made up as a parent, with default metadata
}

// builder collects the entries of one image.
type builder struct {
	cfg      BuildConfig
	ldsoConf string // path of ld.so.conf; tests use their own
	nodes    map[string]*node
	libs     []Library
	report   BuildReport
}

func (b *builder) progress(format string, args ...any) {
	if b.cfg.Progress != nil {
		b.cfg.Progress(fmt.Sprintf(format, args...))
	}
}

// Build writes an image built from cfg to w and reports what it packed. The output depends
// only on the inputs: the same host files give the same bytes.
func Build(w io.Writer, cfg BuildConfig) (*BuildReport, error) {
	return build(w, cfg, "/etc/ld.so.conf")
}

// build is Build with the ld.so.conf file to read.
func build(w io.Writer, cfg BuildConfig, ldsoConf string) (*BuildReport, error) {
	b := &builder{cfg: cfg, ldsoConf: ldsoConf, nodes: make(map[string]*node)}
	b.nodes["/"] = &node{path: "/", mode: fs.ModeDir | 0o755, mtime: time.Unix(0, 0), synth: true}
	for _, p := range cfg.Programs {
		if err := b.addProgram(p); err != nil {
			return nil, err
		}
	}
	for _, fsp := range cfg.Files {
		if err := b.addSpec(fsp); err != nil {
			return nil, err
		}
	}
	return b.write(w)
}

// BuildFile builds an image into the file at name, atomically: it writes a temporary file in
// the same directory, syncs it and renames it over name, so name is either the old file or
// the complete new image.
func BuildFile(name string, cfg BuildConfig) (*BuildReport, error) {
	dir, base := filepath.Split(name)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("build image %s: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	rep, err := Build(tmp, cfg)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), name)
	}
	if err != nil {
		return nil, fmt.Errorf("build image %s: %w", name, err)
	}
	return rep, nil
}

// ensureParents makes sure every ancestor of p is a directory, making up missing ones.
func (b *builder) ensureParents(p string) error {
	if p == "/" {
		return nil
	}
	parent := path.Dir(p)
	if err := b.ensureParents(parent); err != nil {
		return err
	}
	n := b.nodes[parent]
	if n == nil {
		b.nodes[parent] = &node{path: parent, mode: fs.ModeDir | 0o755, mtime: time.Unix(0, 0), synth: true}
		return nil
	}
	if !n.mode.IsDir() {
		return fmt.Errorf("%w: %s needs parent %s to be a directory, it is a %s", ErrConflict, p, parent, kind(n.mode))
	}
	return nil
}

func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	default:
		return "regular file"
	}
}

// addDir adds directory p with the metadata of fi (nil: default metadata).
func (b *builder) addDir(p string, fi fs.FileInfo) error {
	if err := b.hidden(p, true); err != nil {
		return err
	}
	if err := b.ensureParents(p); err != nil {
		return err
	}
	n := b.nodes[p]
	if n != nil && !n.mode.IsDir() {
		return fmt.Errorf("%w: %s is both a %s and a directory", ErrConflict, p, kind(n.mode))
	}
	if n == nil {
		n = &node{path: p, mode: fs.ModeDir | 0o755, mtime: time.Unix(0, 0), synth: true}
		b.nodes[p] = n
	}
	if fi != nil && n.synth && p != "/" {
		n.mode = fs.ModeDir | fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
		n.mtime = fi.ModTime()
		n.synth = false
	}
	return nil
}

// addSymlink adds symlink p -> target.
func (b *builder) addSymlink(p, target string, fi fs.FileInfo) error {
	if len(target) == 0 || len(target) > maxTargetLen || strings.IndexByte(target, 0) >= 0 {
		return fmt.Errorf("symlink %s: unusable target %q", p, target)
	}
	if err := b.hidden(p, false); err != nil {
		return err
	}
	if err := b.ensureParents(p); err != nil {
		return err
	}
	if n := b.nodes[p]; n != nil {
		if n.mode&fs.ModeSymlink != 0 && n.target == target {
			return nil
		}
		return fmt.Errorf("%w: %s is both a %s and a symlink to %s", ErrConflict, p, kind(n.mode), target)
	}
	b.nodes[p] = &node{path: p, mode: fs.ModeSymlink | 0o777, mtime: fi.ModTime(), target: target}
	return nil
}

// addFile adds regular file p with the content of host file host.
func (b *builder) addFile(p, host string, fi fs.FileInfo) error {
	if err := b.hidden(p, false); err != nil {
		return err
	}
	if err := b.ensureParents(p); err != nil {
		return err
	}
	if n := b.nodes[p]; n != nil {
		if n.mode.IsRegular() && n.host == host {
			return nil
		}
		return fmt.Errorf("%w: %s is both a %s and the file %s", ErrConflict, p, kind(n.mode), host)
	}
	b.nodes[p] = &node{
		path:  p,
		mode:  fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky),
		mtime: fi.ModTime(),
		host:  host,
		size:  fi.Size(),
	}
	return nil
}

// maxSymlinks bounds the symlinks followed resolving one path, as the kernel's ELOOP does.
const maxSymlinks = 40

// addHostPath adds the absolute host path p at the same guest path the way the kernel would
// resolve it: every directory on the way, every symlink met (and what it points to), and the
// final file, which must be a regular file. It returns the resolved path of the file.
func (b *builder) addHostPath(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("%s: not an absolute path", p)
	}
	comps := splitPath(p)
	cur := "/"
	links := 0
	for len(comps) > 0 {
		c := comps[0]
		comps = comps[1:]
		switch c {
		case ".":
			continue
		case "..":
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, c)
		fi, err := os.Lstat(next)
		if err != nil {
			return "", fmt.Errorf("resolve %s: %w", p, unwrapPathErr(err))
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(next)
			if err != nil {
				return "", fmt.Errorf("resolve %s: %w", p, err)
			}
			if err := b.addSymlink(next, target, fi); err != nil {
				return "", err
			}
			if links++; links > maxSymlinks {
				return "", fmt.Errorf("resolve %s: too many levels of symbolic links", p)
			}
			if path.IsAbs(target) {
				cur = "/"
			}
			comps = append(splitPath(target), comps...)
		case fi.IsDir():
			if err := b.addDir(next, fi); err != nil {
				return "", err
			}
			cur = next
		case fi.Mode().IsRegular():
			if len(comps) > 0 {
				return "", fmt.Errorf("resolve %s: %s is not a directory", p, next)
			}
			if err := b.addFile(next, next, fi); err != nil {
				return "", err
			}
			cur = next
		default:
			return "", fmt.Errorf("resolve %s: %s is a %v, not a file, directory or symlink", p, next, fi.Mode().Type())
		}
	}
	if n := b.nodes[cur]; n == nil || !n.mode.IsRegular() {
		return "", fmt.Errorf("resolve %s: not a regular file", p)
	}
	return cur, nil
}

func splitPath(p string) []string {
	var out []string
	for c := range strings.SplitSeq(p, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

// unwrapPathErr drops the *PathError wrapper so the message names the path only once; the
// underlying error (such as fs.ErrNotExist) stays inspectable.
func unwrapPathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// addSpec adds one extra file or directory tree.
func (b *builder) addSpec(fsp FileSpec) error {
	host, err := filepath.Abs(fsp.HostPath)
	if err != nil {
		return fmt.Errorf("add %s: %w", fsp.HostPath, err)
	}
	guest := fsp.GuestPath
	if guest == "" {
		guest = host
	}
	if !validPath(guest) {
		return fmt.Errorf("add %s: guest path %q is not absolute and clean", fsp.HostPath, guest)
	}
	real, err := filepath.EvalSymlinks(host)
	if err != nil {
		return fmt.Errorf("add %s: %w", fsp.HostPath, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return fmt.Errorf("add %s: %w", fsp.HostPath, err)
	}
	if !fi.IsDir() {
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("add %s: not a regular file or directory", fsp.HostPath)
		}
		b.progress("file %s -> %s", host, guest)
		if err := b.addFile(guest, real, fi); err != nil {
			return fmt.Errorf("add %s: %w", fsp.HostPath, err)
		}
		return nil
	}
	b.progress("directory %s -> %s", host, guest)
	return filepath.WalkDir(real, func(hp string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("add %s: %w", fsp.HostPath, err)
		}
		rel, err := filepath.Rel(real, hp)
		if err != nil {
			return err
		}
		gp := path.Join(guest, filepath.ToSlash(rel))
		if !validPath(gp) {
			return fmt.Errorf("add %s: unusable guest path %q", hp, gp)
		}
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("add %s: %w", hp, err)
		}
		switch {
		case d.IsDir():
			err = b.addDir(gp, fi)
		case d.Type()&fs.ModeSymlink != 0:
			target, rerr := os.Readlink(hp)
			if rerr != nil {
				return fmt.Errorf("add %s: %w", hp, rerr)
			}
			err = b.addSymlink(gp, target, fi)
		case d.Type().IsRegular():
			err = b.addFile(gp, hp, fi)
		default:
			b.progress("skipping %s: %v is not a file, directory or symlink", hp, d.Type())
		}
		if err != nil {
			return fmt.Errorf("add %s: %w", fsp.HostPath, err)
		}
		return nil
	})
}

// write lays out the collected entries and writes the image to w.
func (b *builder) write(w io.Writer) (*BuildReport, error) {
	nodes := make([]*node, 0, len(b.nodes))
	for _, n := range b.nodes {
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(x, y *node) int { return comparePaths(x.path, y.path) })

	rep := &b.report
	rep.Libraries = b.libs
	var files int
	var total int64
	for _, n := range nodes {
		switch {
		case n.mode.IsDir():
			rep.Dirs++
		case n.mode&fs.ModeSymlink != 0:
			rep.Symlinks++
		default:
			files++
			total += n.size
		}
	}
	rep.Entries, rep.Files = len(nodes), files
	b.progress("checksumming %d files (%d bytes)", files, total)
	for _, n := range nodes {
		if n.mode.IsRegular() {
			if err := b.checksum(n); err != nil {
				return nil, err
			}
		}
	}

	// Index.
	var index bytes.Buffer
	le := binary.LittleEndian
	var rec [recordSize]byte
	var indexLen int64
	for _, n := range nodes {
		indexLen += recordSize + int64(len(n.path)) + int64(len(n.target))
	}
	dataOff := pageUp(int64(headerSize) + indexLen)
	end := dataOff // where the previous content ended
	for _, n := range nodes {
		clear(rec[:])
		le.PutUint32(rec[0:], modeToUnix(n.mode))
		le.PutUint32(rec[4:], uint32(len(n.path)))
		le.PutUint64(rec[16:], uint64(n.mtime.UnixNano()))
		switch {
		case n.mode.IsRegular():
			n.off = pageUp(end)
			le.PutUint64(rec[8:], uint64(n.size))
			le.PutUint64(rec[24:], uint64(n.off))
			copy(rec[32:], n.sum[:])
			end = n.off + n.size
		case n.mode&fs.ModeSymlink != 0:
			le.PutUint64(rec[8:], uint64(len(n.target)))
		}
		index.Write(rec[:])
		index.WriteString(n.path)
		index.WriteString(n.target)
	}
	if int64(index.Len()) != indexLen || indexLen > maxIndexLen {
		return nil, fmt.Errorf("index of %d bytes is too large", index.Len())
	}

	var hdr [headerSize]byte
	copy(hdr[:], magic)
	le.PutUint32(hdr[8:], formatVersion)
	le.PutUint64(hdr[16:], uint64(len(nodes)))
	le.PutUint64(hdr[24:], headerSize)
	le.PutUint64(hdr[32:], uint64(indexLen))
	le.PutUint64(hdr[40:], uint64(dataOff))
	le.PutUint64(hdr[48:], uint64(end-dataOff))
	h := sha256.New()
	h.Write(hdr[:hdrSumOff])
	h.Write(index.Bytes())
	h.Sum(hdr[hdrSumOff:hdrSumOff])

	whole := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, whole)}
	cw.Write(hdr[:])
	cw.Write(index.Bytes())
	zeros := make([]byte, PageSize)
	pad := func(to int64) {
		for cw.n < to && cw.err == nil {
			cw.Write(zeros[:min(int64(len(zeros)), to-cw.n)])
		}
	}
	pad(dataOff)
	if cw.err != nil {
		return nil, fmt.Errorf("write image: %w", cw.err)
	}
	b.progress("writing %d entries, %d bytes of file contents", len(nodes), total)
	buf := make([]byte, 128<<10)
	fh := sha256.New()
	var sum [32]byte
	for _, n := range nodes {
		if !n.mode.IsRegular() {
			continue
		}
		f, err := os.Open(n.host)
		if err != nil {
			return nil, err
		}
		pad(n.off)
		fh.Reset()
		start := cw.n
		_, err = io.CopyBuffer(io.MultiWriter(cw, fh), io.LimitReader(f, n.size), buf)
		f.Close()
		if cw.err != nil {
			return nil, fmt.Errorf("write image: %w", cw.err)
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", n.host, err)
		}
		if cw.n-start != n.size || !bytes.Equal(fh.Sum(sum[:0]), n.sum[:]) {
			return nil, fmt.Errorf("%s changed while building", n.host)
		}
	}
	if cw.err != nil {
		return nil, fmt.Errorf("write image: %w", cw.err)
	}
	rep.DataBytes = total
	rep.Bytes = cw.n
	rep.Digest = hex.EncodeToString(whole.Sum(nil))
	return rep, nil
}

// checksum computes the SHA-256 of a regular file's host content, checking its size.
func (b *builder) checksum(n *node) error {
	f, err := os.Open(n.host)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	got, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("read %s: %w", n.host, err)
	}
	if got != n.size {
		return fmt.Errorf("%s changed while building (size %d, was %d)", n.host, got, n.size)
	}
	h.Sum(n.sum[:0])
	return nil
}

// countWriter counts bytes written and keeps the first error.
type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}
