package guestfs

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// OutputFile is a regular file the guest left under /output.
type OutputFile struct {
	Name string // sanitized relative name, e.g. "report.txt" or "pages/1.png"
	Mode uint32 // permission bits (0777 at most)
	Data []byte // a copy of the contents
}

// Rejected names a file under /output that Outputs did not return, and why.
type Rejected struct {
	Name   string // the relative name, with anything unprintable escaped
	Reason string
}

// Outputs returns copies of the regular files under /output, in path order, at most
// maxFiles of them (if > 0) with at most maxBytes of contents in all (if > 0). Every name
// is relative, clean, printable UTF-8, has no component starting with "-" or ".." and none
// longer than 255 bytes. Files that break a rule, symlinks and files past a bound are
// listed in rejected instead, with the reason.
func (f *FS) Outputs(maxBytes int64, maxFiles int) (outs []OutputFile, rejected []Rejected) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return nil, nil
	}
	var total int64
	var walk func(dir *memNode, prefix string)
	walk = func(dir *memNode, prefix string) {
		for _, d := range dir.list(f) {
			n := dir.kids[d.Name]
			name := prefix + d.Name
			if !safeName(d.Name) {
				rejected = append(rejected, Rejected{Name: escapeName(name), Reason: "unsafe file name"})
				continue
			}
			if len(name) >= PathMax {
				rejected = append(rejected, Rejected{Name: escapeName(name), Reason: "path too long"})
				continue
			}
			switch n.mode & unix.S_IFMT {
			case unix.S_IFDIR:
				walk(n, name+"/")
				continue
			case unix.S_IFLNK:
				rejected = append(rejected, Rejected{Name: name, Reason: "symbolic link"})
				continue
			case unix.S_IFREG:
			default:
				rejected = append(rejected, Rejected{Name: name, Reason: "not a regular file"})
				continue
			}
			size := int64(len(n.data))
			switch {
			case maxFiles > 0 && len(outs) >= maxFiles:
				rejected = append(rejected, Rejected{Name: name, Reason: fmt.Sprintf("more than %d output files", maxFiles)})
			case maxBytes > 0 && size > maxBytes-total:
				rejected = append(rejected, Rejected{Name: name, Reason: fmt.Sprintf("%d bytes would exceed the %d-byte output limit", size, maxBytes)})
			default:
				total += size
				outs = append(outs, OutputFile{Name: name, Mode: n.mode & 0o777, Data: append([]byte(nil), n.data...)})
			}
		}
	}
	walk(f.trees[treeOutput].scratch, "")
	return outs, rejected
}

// safeName reports whether one component of an output name is safe to hand to the host:
// printable UTF-8, not "." or "..", no leading "-" or "..", no "/" or "\", at most 255 bytes.
func safeName(s string) bool {
	if s == "" || len(s) > NameMax || s == "." || strings.HasPrefix(s, "..") || s[0] == '-' {
		return false
	}
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r == '/' || r == '\\' || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// escapeName renders an unsafe name printably.
func escapeName(s string) string {
	q := strconv.QuoteToASCII(s)
	return q[1 : len(q)-1]
}
