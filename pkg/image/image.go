// Package image reads and builds guest images: single immutable files holding the read-only
// root file tree of a micro VM (programs at their host paths, their shared libraries, the ELF
// interpreter and extra files). The micro VM's file layer and ELF loader read images through
// Image; isoctl builds them with Build.
package image

import (
	"errors"
	"io"
	"io/fs"
	"path"
	"time"
)

// Entry describes one file, directory or symlink in an image.
type Entry struct {
	Path    string      // absolute, clean guest path, e.g. "/usr/bin/sha256sum"; "/" for the root
	Mode    fs.FileMode // type bits (fs.ModeDir, fs.ModeSymlink, 0 for regular) | permission bits
	Size    int64       // regular files: content size; symlinks: len(Target)
	Target  string      // symlinks only
	ModTime time.Time
	Ino     uint64 // stable inode number, unique within the image, root = 1

	off int64 // offset of the content in the image file (regular files)
}

// Name returns the base name of the entry ("/" for the root).
func (e *Entry) Name() string { return path.Base(e.Path) }

// IsDir reports whether the entry is a directory.
func (e *Entry) IsDir() bool { return e.Mode.IsDir() }

// Image is an opened guest image. It is safe for concurrent use by many micro VMs at once.
type Image struct {
	r      io.ReaderAt
	closer io.Closer
}

// Open opens the image file at path, reading and fully validating its index. File contents
// are read lazily.
func Open(path string) (*Image, error) { return nil, errors.New("image: not implemented") }

// Load reads and validates an image from r, which holds size bytes.
func Load(r io.ReaderAt, size int64) (*Image, error) {
	return nil, errors.New("image: not implemented")
}

// Close releases the underlying file, if Open opened one.
func (im *Image) Close() error { return nil }

// Lookup returns the entry at the exact path p, following no symlinks.
func (im *Image) Lookup(p string) (*Entry, error) { return nil, fs.ErrNotExist }

// ReadDir returns the children of dir sorted by name.
func (im *Image) ReadDir(dir string) ([]*Entry, error) { return nil, fs.ErrNotExist }

// Open returns a reader of the content of the regular file e.
func (im *Image) Open(e *Entry) (*io.SectionReader, error) { return nil, fs.ErrNotExist }

// Digest returns the hex SHA-256 of the whole image file.
func (im *Image) Digest() string { return "" }

// Walk calls fn for every entry in path order, stopping at the first error.
func (im *Image) Walk(fn func(e *Entry) error) error { return nil }
