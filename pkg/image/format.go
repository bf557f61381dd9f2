package image

// On-disk format, version 2. All integers are little endian.
//
// An image file is three consecutive sections with nothing after them:
//
//	header  128 bytes at offset 0
//	index   IndexLen bytes at IndexOff (= 128)
//	data    DataLen bytes at DataOff; file size = DataOff + DataLen
//
// DataOff is the first multiple of PageSize at or after the end of the index; the bytes in
// between are zero.
//
// Header:
//
//	off  size  field
//	  0     8  magic "ISOLIMG\x00"
//	  8     4  version (2)
//	 12     4  flags (0; every other value is rejected)
//	 16     8  entry count
//	 24     8  index offset (128)
//	 32     8  index length
//	 40     8  data offset (the index end rounded up to a multiple of PageSize)
//	 48     8  data length
//	 56    40  reserved, zero
//	 96    32  SHA-256 of header bytes [0, 96) followed by the whole index
//
// The index is entry count records, each a 64-byte fixed part followed by the path and, for
// symlinks, the target:
//
//	off  size  field
//	  0     4  mode, Unix st_mode: S_IFDIR, S_IFREG or S_IFLNK | permission bits (07777)
//	  4     4  path length (1..4096)
//	  8     8  size: regular file content length; symlink target length (1..4096); 0 for dirs
//	 16     8  modification time, signed nanoseconds since the Unix epoch
//	 24     8  content offset in the file (regular files; 0 otherwise)
//	 32    32  SHA-256 of the content (regular files; zero otherwise)
//	 64     -  path bytes, then target bytes (symlinks)
//
// Records are sorted in path order: paths are compared component by component (byte-wise
// within a component), so a directory is followed by its whole subtree and siblings are sorted
// by name. The first record is the root directory "/". Every path is absolute and clean
// (path.Clean leaves it unchanged), has no NUL byte and no component longer than 255 bytes; no
// path appears twice; the parent of every entry is an earlier directory entry. The inode number
// of an entry is its position in the index plus one, so the root is inode 1.
//
// The contents of regular files are stored in index order, each starting at a page boundary:
// the first one at DataOff, each next one at the first multiple of PageSize at or after the
// end of the previous one, and the file ends exactly where the last one ends (at DataOff if
// there is no regular file). Every byte between two contents is zero. So data ranges can
// neither overlap nor leave the file, page k of a file's content is page-aligned in the image
// file, and the rest of a content's last page reads as zero (or lies past the end of the
// file): a content can be mapped from the image file page by page (Image.Extent).
//
// Version 1 (files back to back, no alignment) is not read: Load fails with ErrOldFormat.
// Images are built from host programs, so rebuilding one gives the new format.
//
// Integrity: the header digest covers the header and the index, so any change to them is
// detected; Load also reads the whole data section once, checking every file's SHA-256 and
// that the padding is zero. Image.Digest, the SHA-256 of the whole file, is computed on demand.
// Tampering with a file's bytes after Load is the caller's concern: an image is immutable
// once built, and its file must not be writable by whoever the micro VM protects against.

import (
	"errors"
	"fmt"
)

const (
	// magic starts every image file.
	magic = "ISOLIMG\x00"
	// formatVersion is the only version this package reads and writes.
	formatVersion = 2
	// oldFormatVersion is the version before file contents were page-aligned.
	oldFormatVersion = 1

	// PageSize is the alignment of file contents in the image file.
	PageSize = 4096

	headerSize   = 128
	hdrSumOff    = 96
	recordSize   = 64
	maxPathLen   = 4096
	maxNameLen   = 255
	maxTargetLen = 4096
	// maxIndexLen bounds the memory an index may take, whatever the header says.
	maxIndexLen = 256 << 20

	// Unix st_mode type bits as stored in records.
	sIFMT   = 0o170000
	sIFDIR  = 0o040000
	sIFREG  = 0o100000
	sIFLNK  = 0o120000
	sISUID  = 0o4000
	sISGID  = 0o2000
	sISVTX  = 0o1000
	permMax = 0o7777
)

// ErrCorrupt is wrapped by every error reporting a malformed or tampered image.
var ErrCorrupt = errors.New("corrupt image")

// ErrOldFormat is returned (wrapped) by Load and Open for an image in format version 1,
// which this package no longer reads.
var ErrOldFormat = errors.New("image format version 1: rebuild with isoctl image build")

// pageUp rounds n up to a multiple of PageSize.
func pageUp(n int64) int64 { return (n + PageSize - 1) &^ (PageSize - 1) }

// FormatError reports why an image was rejected. It wraps ErrCorrupt.
type FormatError struct {
	Offset int64  // byte offset in the image the problem was found at, or -1
	Msg    string // what is wrong
}

func (e *FormatError) Error() string {
	if e.Offset < 0 {
		return fmt.Sprintf("corrupt image: %s", e.Msg)
	}
	return fmt.Sprintf("corrupt image at offset %d: %s", e.Offset, e.Msg)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *FormatError) Unwrap() error { return ErrCorrupt }

func corrupt(off int64, format string, args ...any) error {
	return &FormatError{Offset: off, Msg: fmt.Sprintf(format, args...)}
}
