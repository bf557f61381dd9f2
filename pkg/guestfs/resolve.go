package guestfs

import (
	"strings"

	"golang.org/x/sys/unix"
)

// lastType says what the last component of a resolved path was.
type lastType int

const (
	lastNorm   lastType = iota // a name
	lastDot                    // "."
	lastDotDot                 // ".."
	lastRoot                   // nothing: the path was "/" (or a symlink to it)
)

// resolveFlags control a lookup.
type resolveFlags int

const (
	// rFollow follows a symlink in the last component.
	rFollow resolveFlags = 1 << iota
	// rParent looks up the parent of the last component for an operation on the name itself
	// (create, remove, rename): the last component is never followed, even with a trailing
	// slash, and trailing-slash rules are left to the caller.
	rParent
	// rCreate resolves for open with O_CREAT: a last component with a trailing slash (in
	// the path or in the target of a symlink leading to it) fails with EISDIR before it is
	// looked up, as on Linux.
	rCreate
)

// elem is one directory on the way to a resolved file.
type elem struct {
	name string
	n    node
}

// walk is the state and result of a path resolution.
type walk struct {
	f     *FS
	write bool   // f.mu is held for writing, not reading
	stack []elem // directories from the root to the one holding the last component
	links int    // symlinks followed
	typ   lastType
	name  string // last component, for lastNorm
	node  node   // the file resolved to; nil if the last component does not exist
	slash bool   // the path ended in "/" (or the final symlink's target did)
}

// dir returns the directory holding the last component (for lastNorm), or the resolved
// directory itself otherwise.
func (w *walk) dir() node { return w.stack[len(w.stack)-1].n }

// path returns the canonical guest path of the resolved file.
func (w *walk) path() string {
	var b strings.Builder
	for _, e := range w.stack[1:] {
		b.WriteByte('/')
		b.WriteString(e.name)
	}
	if w.typ == lastNorm {
		b.WriteByte('/')
		b.WriteString(w.name)
	}
	if b.Len() == 0 {
		return "/"
	}
	return b.String()
}

// resolve looks up p, relative to the directory dir unless p is absolute. f.mu must be
// held, for writing if write is set; resolve may drop and retake it while calling
// Config.FDPath. A missing last component is not an error: w.node is nil and w.dir() is
// the directory it would be created in.
func (f *FS) resolve(dir, p string, flags resolveFlags, write bool) (*walk, error) {
	if f.closed {
		return nil, unix.EBADF
	}
	w := &walk{f: f, write: write, stack: []elem{{"", f.root}}}
	if p == "" {
		return nil, unix.ENOENT
	}
	// dir is a canonical path the caller got from ResolveDir or File.Path, which may be
	// longer than PATH_MAX in a deep tree, as a working directory may be on Linux.
	if len(p) >= PathMax {
		return nil, unix.ENAMETOOLONG
	}
	if strings.IndexByte(p, 0) >= 0 || strings.IndexByte(dir, 0) >= 0 {
		return nil, unix.EINVAL
	}
	if p[0] != '/' && dir != "" && dir != "/" {
		// Start at the caller's directory, itself resolved from the root.
		if err := w.run(dir, rFollow); err != nil {
			return nil, err
		}
		if w.node == nil {
			return nil, unix.ENOENT
		}
		if !isDir(w.node) {
			return nil, unix.ENOTDIR
		}
		if w.typ == lastNorm {
			w.stack = append(w.stack, elem{w.name, w.node})
		}
		w.links = 0
	}
	if err := w.run(p, flags); err != nil {
		return nil, err
	}
	if flags&rParent == 0 && w.slash && w.node != nil && !isDir(w.node) {
		return nil, unix.ENOTDIR
	}
	return w, nil
}

// run resolves p from the current stack.
func (w *walk) run(p string, flags resolveFlags) error {
	f := w.f
	w.slash = strings.HasSuffix(p, "/")
	if p[0] == '/' {
		w.stack = w.stack[:1]
	}
	// todo holds the components still to resolve, last one first.
	todo := splitReversed(nil, p)
	w.typ, w.name, w.node = lastRoot, "", w.dir()
	for len(todo) > 0 {
		c := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		last := len(todo) == 0
		cur := w.dir()
		d, ok := asDir(cur)
		if !ok {
			return unix.ENOTDIR
		}
		if len(c) > NameMax {
			return unix.ENAMETOOLONG
		}
		if !f.may(cur, mayExec) {
			return unix.EACCES
		}
		switch c {
		case ".":
			if last {
				w.typ, w.name, w.node = lastDot, "", cur
			}
			continue
		case "..":
			if len(w.stack) > 1 {
				w.stack = w.stack[:len(w.stack)-1]
			}
			if last {
				w.typ, w.name, w.node = lastDotDot, "", w.dir()
			}
			continue
		}
		if last && w.slash && flags&rCreate != 0 {
			return unix.EISDIR
		}
		child, err := w.lookup(d, c)
		if err == unix.ENOENT && last {
			w.typ, w.name, w.node = lastNorm, c, nil
			return nil
		}
		if err != nil {
			return err
		}
		if l, isLink := asLink(child); isLink {
			follow := !last || (flags&rParent == 0 && (flags&rFollow != 0 || w.slash))
			if follow {
				w.links++
				if w.links > MaxSymlinks {
					return unix.ELOOP
				}
				t := l.target(f)
				if _, magic := child.(*fdLink); magic && !strings.HasPrefix(t, "/") {
					return unix.ENXIO
				}
				if t == "" {
					return unix.ENOENT
				}
				if len(t) >= PathMax || strings.IndexByte(t, 0) >= 0 {
					return unix.ENAMETOOLONG
				}
				if t[0] == '/' {
					w.stack = w.stack[:1]
				}
				if last && strings.HasSuffix(t, "/") {
					w.slash = true
				}
				todo = splitReversed(todo, t)
				if len(todo) == 0 {
					w.typ, w.name, w.node = lastRoot, "", w.dir()
				}
				continue
			}
		}
		if last {
			w.typ, w.name, w.node = lastNorm, c, child
			return nil
		}
		w.stack = append(w.stack, elem{c, child})
	}
	return nil
}

// lookup finds the child c of d, calling Config.FDPath without f.mu held.
func (w *walk) lookup(d dirNode, c string) (node, error) {
	fd, ok := d.(*fdDir)
	if !ok {
		return d.lookup(w.f, c)
	}
	w.f.unlock(w.write)
	child, err := fd.fdLookup(w.f.fdPath, c)
	w.f.relock(w.write)
	if w.f.closed {
		return nil, unix.EBADF
	}
	return child, err
}

func (f *FS) unlock(write bool) {
	if write {
		f.mu.Unlock()
	} else {
		f.mu.RUnlock()
	}
}

func (f *FS) relock(write bool) {
	if write {
		f.mu.Lock()
	} else {
		f.mu.RLock()
	}
}

// splitReversed appends the non-empty components of p to todo, last one first.
func splitReversed(todo []string, p string) []string {
	end := len(p)
	for i := len(p) - 1; i >= -1; i-- {
		if i == -1 || p[i] == '/' {
			if end > i+1 {
				todo = append(todo, p[i+1:end])
			}
			end = i
		}
	}
	return todo
}

// Access modes for may.
const (
	mayRead  = 4
	mayWrite = 2
	mayExec  = 1
)

// may reports whether the guest user may access n with the mask (mayRead|mayWrite|mayExec),
// by the permission bits, like generic_permission for a user that is not root.
func (f *FS) may(n node, mask uint32) bool {
	var mode, uid, gid uint32
	if m, ok := n.(*memNode); ok {
		mode, uid, gid = m.mode, m.uid, m.gid
	} else {
		st := n.stat(f)
		mode, uid, gid = st.Mode, st.UID, st.GID
	}
	perm := mode & 7
	switch {
	case uid == f.uid:
		perm = mode >> 6 & 7
	case gid == f.gid:
		perm = mode >> 3 & 7
	}
	return perm&mask == mask
}
