// Package image reads and builds guest images: single immutable files holding the read-only
// root file tree of a micro VM (programs at their host paths, their shared libraries, the ELF
// interpreter and extra files). The micro VM's file layer and ELF loader read images through
// Image; isoctl builds them with Build. The file format is described in format.go and
// docs/IMAGE.md.
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
	"slices"
	"strings"
	"time"
)

// Entry describes one file, directory or symlink in an image. Entries returned by an Image
// are shared by all its users and must not be modified.
type Entry struct {
	Path    string      // absolute, clean guest path, e.g. "/usr/bin/sha256sum"; "/" for the root
	Mode    fs.FileMode // type bits (fs.ModeDir, fs.ModeSymlink, 0 for regular) | permission bits
	Size    int64       // regular files: content size; symlinks: len(Target)
	Target  string      // symlinks only
	ModTime time.Time
	Ino     uint64 // stable inode number, unique within the image, root = 1

	off     int64    // offset of the content in the image file (regular files)
	sum     [32]byte // SHA-256 of the content (regular files)
	subdirs int      // directories: number of children that are directories
}

// Name returns the base name of the entry ("/" for the root).
func (e *Entry) Name() string { return path.Base(e.Path) }

// IsDir reports whether the entry is a directory.
func (e *Entry) IsDir() bool { return e.Mode.IsDir() }

// IsRegular reports whether the entry is a regular file.
func (e *Entry) IsRegular() bool { return e.Mode.IsRegular() }

// IsSymlink reports whether the entry is a symbolic link.
func (e *Entry) IsSymlink() bool { return e.Mode&fs.ModeSymlink != 0 }

// Subdirs returns the number of children of the directory e that are directories (0 for
// other entries), counted once when the image was loaded: what a directory's link count
// (2 + subdirectories) needs without listing it.
func (e *Entry) Subdirs() int { return e.subdirs }

// Image is an opened guest image. After Open or Load it is never modified, so it is safe for
// concurrent use by many micro VMs at once.
type Image struct {
	r       io.ReaderAt
	closer  io.Closer // the file Open opened, or nil
	file    *os.File  // r when it is a file: what Extent hands out
	size    int64
	entries []*Entry            // in index (path) order; entries[i].Ino == i+1
	byPath  map[string]*Entry   // every entry by path
	kids    map[*Entry][]*Entry // children of every non-empty directory, sorted by name
}

// Open opens the image file at name, reading and fully validating it (see Load). File
// contents are read lazily from the file afterwards, so it stays open until Close.
func Open(name string) (*Image, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("open image %s: not a regular file", name)
	}
	im, err := Load(f, fi.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open image %s: %w", name, err)
	}
	im.closer = f
	return im, nil
}

// CheckFormat reads only the header of the image file at name and reports whether this
// package can read its format: the error wraps ErrOldFormat for a version 1 image (which
// must be rebuilt) and ErrCorrupt for a file that is not an image of a known version. It
// validates nothing else; Open does.
func CheckFormat(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("open image: %w", err)
	}
	defer f.Close()
	var hdr [12]byte
	if err := readFullAt(f, hdr[:], 0); err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	if err := checkMagicVersion(hdr[:]); err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	return nil
}

// checkMagicVersion checks the magic and the version at the start of a header.
func checkMagicVersion(hdr []byte) error {
	if string(hdr[:8]) != magic {
		return corrupt(0, "bad magic")
	}
	if v := binary.LittleEndian.Uint32(hdr[8:]); v != formatVersion {
		if v == oldFormatVersion {
			return ErrOldFormat
		}
		return corrupt(8, "unsupported version %d", v)
	}
	return nil
}

// Load reads an image of size bytes from r. It validates the header and the whole index,
// and reads every file's content once to check its SHA-256 and the padding. A malformed or tampered image yields an error wrapping ErrCorrupt (a *FormatError).
// Load allocates memory in proportion to the index, which is bounded by size, never by a
// count read from the image.
func Load(r io.ReaderAt, size int64) (*Image, error) {
	if size < headerSize {
		return nil, corrupt(-1, "file too short (%d bytes)", size)
	}
	var hdr [headerSize]byte
	if err := readFullAt(r, hdr[:], 0); err != nil {
		return nil, err
	}
	if err := checkMagicVersion(hdr[:]); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	if fl := le.Uint32(hdr[12:]); fl != 0 {
		return nil, corrupt(12, "unknown flags %#x", fl)
	}
	count := le.Uint64(hdr[16:])
	indexOff := le.Uint64(hdr[24:])
	indexLen := le.Uint64(hdr[32:])
	dataOff := le.Uint64(hdr[40:])
	dataLen := le.Uint64(hdr[48:])
	for i := 56; i < hdrSumOff; i++ {
		if hdr[i] != 0 {
			return nil, corrupt(int64(i), "reserved header bytes not zero")
		}
	}
	usize := uint64(size)
	switch {
	case indexOff != headerSize:
		return nil, corrupt(24, "index offset %d, want %d", indexOff, headerSize)
	case indexLen > maxIndexLen || indexLen > usize-headerSize:
		return nil, corrupt(32, "index length %d out of range", indexLen)
	case dataOff != uint64(pageUp(int64(indexOff+indexLen))):
		return nil, corrupt(40, "data offset %d is not the end of the index rounded up to a page", dataOff)
	case dataOff > usize:
		return nil, corrupt(40, "data offset %d beyond the end of the file", dataOff)
	case dataLen != usize-dataOff:
		return nil, corrupt(48, "data length %d does not match file size %d", dataLen, size)
	case count == 0 || count > indexLen/recordSize:
		return nil, corrupt(16, "entry count %d out of range", count)
	}

	index := make([]byte, indexLen)
	if err := readFullAt(r, index, int64(indexOff)); err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(hdr[:hdrSumOff])
	h.Write(index)
	if !bytes.Equal(h.Sum(nil), hdr[hdrSumOff:]) {
		return nil, corrupt(hdrSumOff, "header and index checksum mismatch")
	}

	im := &Image{
		r:       r,
		size:    size,
		entries: make([]*Entry, 0, count),
		byPath:  make(map[string]*Entry, count),
		kids:    make(map[*Entry][]*Entry),
	}
	if f, ok := r.(*os.File); ok {
		im.file = f
	}
	if err := im.parseIndex(index, int64(indexOff), count, int64(dataOff)); err != nil {
		return nil, err
	}
	if err := im.verifyData(hdr[:], index); err != nil {
		return nil, err
	}
	return im, nil
}

// parseIndex decodes and validates count records from index, which starts at file offset
// base; file contents must tile the data section starting at dataOff, each at a page
// boundary.
func (im *Image) parseIndex(index []byte, base int64, count uint64, dataOff int64) error {
	le := binary.LittleEndian
	pos := 0
	nextData := dataOff // where the previous content ended
	for i := uint64(0); i < count; i++ {
		at := base + int64(pos)
		if len(index)-pos < recordSize {
			return corrupt(at, "entry %d: truncated record", i)
		}
		rec := index[pos : pos+recordSize]
		umode := le.Uint32(rec[0:])
		pathLen := uint64(le.Uint32(rec[4:]))
		size := le.Uint64(rec[8:])
		mtime := int64(le.Uint64(rec[16:]))
		off := le.Uint64(rec[24:])
		pos += recordSize

		mode, ok := unixToMode(umode)
		if !ok {
			return corrupt(at, "entry %d: bad mode %#o", i, umode)
		}
		if pathLen == 0 || pathLen > maxPathLen || pathLen > uint64(len(index)-pos) {
			return corrupt(at+4, "entry %d: path length %d out of range", i, pathLen)
		}
		p := string(index[pos : pos+int(pathLen)])
		pos += int(pathLen)
		if !validPath(p) {
			return corrupt(at+recordSize, "entry %d: invalid path %q", i, p)
		}
		e := &Entry{Path: p, Mode: mode, ModTime: time.Unix(0, mtime), Ino: i + 1}
		var zero [32]byte
		switch {
		case mode.IsDir():
			if size != 0 || off != 0 || !bytes.Equal(rec[32:64], zero[:]) {
				return corrupt(at, "entry %d (%s): directory with size, offset or checksum", i, p)
			}
		case mode&fs.ModeSymlink != 0:
			if size == 0 || size > maxTargetLen || size > uint64(len(index)-pos) {
				return corrupt(at+8, "entry %d (%s): symlink target length %d out of range", i, p, size)
			}
			if off != 0 || !bytes.Equal(rec[32:64], zero[:]) {
				return corrupt(at, "entry %d (%s): symlink with offset or checksum", i, p)
			}
			e.Target = string(index[pos : pos+int(size)])
			pos += int(size)
			if strings.IndexByte(e.Target, 0) >= 0 {
				return corrupt(at, "entry %d (%s): NUL in symlink target", i, p)
			}
			e.Size = int64(size)
		default: // regular
			start := pageUp(nextData)
			if off != uint64(start) {
				return corrupt(at+24, "entry %d (%s): content offset %d, want %d", i, p, off, start)
			}
			if start > im.size || size > uint64(im.size-start) {
				return corrupt(at+8, "entry %d (%s): content size %d beyond end of file", i, p, size)
			}
			e.Size = int64(size)
			e.off = start
			copy(e.sum[:], rec[32:64])
			nextData = start + int64(size)
		}

		if i == 0 {
			if p != "/" || !mode.IsDir() {
				return corrupt(at, "first entry is %q, want the root directory", p)
			}
		} else {
			prev := im.entries[i-1]
			if comparePaths(prev.Path, p) >= 0 {
				return corrupt(at, "entry %d (%s): not after %s (unsorted or duplicate)", i, p, prev.Path)
			}
			parent := im.byPath[parentPath(p)]
			if parent == nil || !parent.IsDir() {
				return corrupt(at, "entry %d (%s): parent is not a directory in the image", i, p)
			}
			im.kids[parent] = append(im.kids[parent], e)
			if mode.IsDir() {
				parent.subdirs++
			}
		}
		im.entries = append(im.entries, e)
		im.byPath[p] = e
	}
	if pos != len(index) {
		return corrupt(base+int64(pos), "%d trailing bytes after the last index entry", len(index)-pos)
	}
	if nextData != im.size {
		return corrupt(nextData, "file contents end at %d, image ends at %d", nextData, im.size)
	}
	return nil
}

// verifyData reads the rest of the image once, checking that the padding is zero and every
// file's checksum.
func (im *Image) verifyData(hdr, index []byte) error {
	whole := io.Discard
	buf := make([]byte, 128<<10)
	fh := sha256.New()
	var sum [32]byte
	pos := int64(len(hdr) + len(index))
	for _, e := range im.entries {
		if !e.IsRegular() {
			continue
		}
		if err := im.checkZero(pos, e.off, buf, whole); err != nil {
			return err
		}
		pos = e.off + e.Size
		fh.Reset()
		n, err := io.CopyBuffer(fh, io.NewSectionReader(im.r, e.off, e.Size), buf)
		if err != nil {
			return readErr(e.off+n, err)
		}
		if n != e.Size {
			return corrupt(e.off+n, "%s: content truncated", e.Path)
		}
		if !bytes.Equal(fh.Sum(sum[:0]), e.sum[:]) {
			return corrupt(e.off, "%s: content checksum mismatch", e.Path)
		}
	}
	// Without regular files the image ends with the padding after the index.
	return im.checkZero(pos, im.size, buf, whole)
}

var zeroPage [PageSize]byte

// checkZero reads the padding [from, to) into whole, checking that it is zero.
func (im *Image) checkZero(from, to int64, buf []byte, whole io.Writer) error {
	for from < to {
		n := int(min(int64(len(buf)), to-from))
		if err := readFullAt(im.r, buf[:n], from); err != nil {
			return err
		}
		for i := 0; i < n; i += PageSize {
			chunk := buf[i:min(i+PageSize, n)]
			if !bytes.Equal(chunk, zeroPage[:len(chunk)]) {
				j := slices.IndexFunc(chunk, func(b byte) bool { return b != 0 })
				return corrupt(from+int64(i+j), "padding byte not zero")
			}
		}
		whole.Write(buf[:n])
		from += int64(n)
	}
	return nil
}

// readFullAt fills buf from r at off. A short read is a FormatError; io.EOF together with
// a full buffer is success, as io.ReaderAt allows at the end of the input.
func readFullAt(r io.ReaderAt, buf []byte, off int64) error {
	n, err := r.ReadAt(buf, off)
	if n == len(buf) {
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return readErr(off+int64(n), err)
}

// readErr turns a short read into a FormatError and wraps any other read error.
func readErr(off int64, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return corrupt(off, "unexpected end of file")
	}
	return fmt.Errorf("read image at offset %d: %w", off, err)
}

// Close releases the file Open opened. Readers returned by Image.Open fail afterwards.
func (im *Image) Close() error {
	if im.closer == nil {
		return nil
	}
	return im.closer.Close()
}

// Lookup returns the entry at the exact path p, following no symlinks. The error wraps
// fs.ErrNotExist if there is none.
func (im *Image) Lookup(p string) (*Entry, error) {
	if e := im.byPath[p]; e != nil {
		return e, nil
	}
	return nil, &fs.PathError{Op: "lookup", Path: p, Err: fs.ErrNotExist}
}

// ReadDir returns the children of the directory dir sorted by name. It fails with an error
// wrapping fs.ErrNotExist if dir is absent and one wrapping ErrNotDir if it is not a
// directory.
func (im *Image) ReadDir(dir string) ([]*Entry, error) {
	e := im.byPath[dir]
	if e == nil {
		return nil, &fs.PathError{Op: "readdir", Path: dir, Err: fs.ErrNotExist}
	}
	if !e.IsDir() {
		return nil, &fs.PathError{Op: "readdir", Path: dir, Err: ErrNotDir}
	}
	kids := im.kids[e]
	out := make([]*Entry, len(kids))
	copy(out, kids)
	return out, nil
}

// ErrNotDir is returned (wrapped) by ReadDir for an entry that is not a directory.
var ErrNotDir = errors.New("not a directory")

// ErrNotRegular is returned (wrapped) by Open for an entry that is not a regular file.
var ErrNotRegular = errors.New("not a regular file")

// Open returns a reader of the content of the regular file e, which must be an entry of im.
// The reader is independent of any other, so many can be used at once.
func (im *Image) Open(e *Entry) (*io.SectionReader, error) {
	if e == nil || e.Ino == 0 || e.Ino > uint64(len(im.entries)) || im.entries[e.Ino-1].Path != e.Path {
		return nil, &fs.PathError{Op: "open", Path: entryPath(e), Err: fs.ErrNotExist}
	}
	ie := im.entries[e.Ino-1] // use our own copy of the layout, never the caller's
	if !ie.IsRegular() {
		return nil, &fs.PathError{Op: "open", Path: ie.Path, Err: ErrNotRegular}
	}
	return io.NewSectionReader(im.r, ie.off, ie.Size), nil
}

// Extent tells where the content of the regular file e, an entry of im, lies in the image
// file, so that it can be mapped rather than read: the image file, the offset of the content
// (a multiple of PageSize) and its size. The rest of the content's last page is zero or past
// the end of the file, so the whole pages from off that hold the content can be mapped as
// they are (mmap reads zeros past the end of a file within its last page). ok is false
// if e is not a regular file of im or im was not loaded from an *os.File. The file belongs
// to im: it must not be closed, and it is usable only until im.Close.
func (im *Image) Extent(e *Entry) (f *os.File, off, size int64, ok bool) {
	if im.file == nil || e == nil || e.Ino == 0 || e.Ino > uint64(len(im.entries)) || im.entries[e.Ino-1].Path != e.Path {
		return nil, 0, 0, false
	}
	ie := im.entries[e.Ino-1] // our own copy of the layout, as in Open
	if !ie.IsRegular() {
		return nil, 0, 0, false
	}
	return im.file, ie.off, ie.Size, true
}

func entryPath(e *Entry) string {
	if e == nil {
		return ""
	}
	return e.Path
}

// Digest returns the hex SHA-256 of the whole image file (what sha256sum prints for it). It
// reads the file again, so Load does not pay for it; the file must not have changed.
func (im *Image) Digest() (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(im.r, 0, im.size)); err != nil {
		return "", fmt.Errorf("image digest: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Size returns the size of the image file in bytes.
func (im *Image) Size() int64 { return im.size }

// Len returns the number of entries, including the root.
func (im *Image) Len() int { return len(im.entries) }

// Walk calls fn for every entry in path order (each directory before its subtree, siblings
// by name), stopping at and returning the first error fn returns.
func (im *Image) Walk(fn func(e *Entry) error) error {
	for _, e := range im.entries {
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}
