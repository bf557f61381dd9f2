package image

import (
	"io/fs"
	"path"
	"strings"
)

// comparePaths orders clean absolute paths component by component, so that a directory
// comes right before its subtree and siblings are sorted by name. It returns -1, 0 or +1.
func comparePaths(a, b string) int {
	if a == b {
		return 0
	}
	if a == "/" {
		return -1
	}
	if b == "/" {
		return 1
	}
	a, b = a[1:], b[1:]
	for {
		ca, ra, moreA := strings.Cut(a, "/")
		cb, rb, moreB := strings.Cut(b, "/")
		if c := strings.Compare(ca, cb); c != 0 {
			return c
		}
		switch {
		case !moreA && !moreB:
			return 0
		case !moreA:
			return -1
		case !moreB:
			return 1
		}
		a, b = ra, rb
	}
}

// validPath reports whether p is acceptable as an image path: absolute, clean, no NUL, no
// over-long component, not over-long itself.
func validPath(p string) bool {
	if len(p) == 0 || len(p) > maxPathLen || p[0] != '/' || path.Clean(p) != p {
		return false
	}
	if strings.IndexByte(p, 0) >= 0 {
		return false
	}
	if p == "/" {
		return true
	}
	for c := range strings.SplitSeq(p[1:], "/") {
		if c == "" || c == "." || c == ".." || len(c) > maxNameLen {
			return false
		}
	}
	return true
}

// parentPath returns the directory holding p ("/" for top-level entries).
func parentPath(p string) string { return path.Dir(p) }

// unixToMode converts a stored st_mode to an fs.FileMode; ok is false for a type other than
// directory, regular file or symlink, or for unknown bits.
func unixToMode(m uint32) (mode fs.FileMode, ok bool) {
	if m&^(sIFMT|permMax) != 0 {
		return 0, false
	}
	mode = fs.FileMode(m & 0o777)
	switch m & sIFMT {
	case sIFDIR:
		mode |= fs.ModeDir
	case sIFREG:
	case sIFLNK:
		mode |= fs.ModeSymlink
	default:
		return 0, false
	}
	if m&sISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&sISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&sISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode, true
}

// modeToUnix converts a directory, regular file or symlink mode to st_mode bits.
func modeToUnix(mode fs.FileMode) uint32 {
	m := uint32(mode.Perm())
	switch {
	case mode.IsDir():
		m |= sIFDIR
	case mode&fs.ModeSymlink != 0:
		m |= sIFLNK
	default:
		m |= sIFREG
	}
	if mode&fs.ModeSetuid != 0 {
		m |= sISUID
	}
	if mode&fs.ModeSetgid != 0 {
		m |= sISGID
	}
	if mode&fs.ModeSticky != 0 {
		m |= sISVTX
	}
	return m
}
