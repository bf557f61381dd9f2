package image

import (
	"errors"
	"io"
)

// FileSpec names an extra host file or directory and where it goes in the guest.
// Directories are copied recursively.
type FileSpec struct {
	HostPath  string
	GuestPath string // defaults to HostPath when empty
}

// BuildConfig configures Build.
type BuildConfig struct {
	Programs    []string         // host paths of ELF programs; each placed at its own host path
	Files       []FileSpec       // extra files or directories; directories recursive
	LibraryPath []string         // extra library search dirs, searched before the defaults
	Progress    func(msg string) // optional progress callback
}

// BuildReport lists what Build packed.
type BuildReport struct {
	Entries   int      // number of entries, including directories and the root
	Bytes     int64    // size of the image file
	DataBytes int64    // total size of regular file contents
	Libraries []string // resolved host paths of shared libraries and interpreters, sorted
	Digest    string   // hex SHA-256 of the image file
}

// Build writes an image built from cfg to w.
func Build(w io.Writer, cfg BuildConfig) (*BuildReport, error) {
	return nil, errors.New("image: not implemented")
}

// BuildFile builds an image into the file at path, atomically (temporary file and rename).
func BuildFile(path string, cfg BuildConfig) (*BuildReport, error) {
	return nil, errors.New("image: not implemented")
}
