package guestfs

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// wrap attaches the operation and path to an errno.
func wrap(op, p string, err error) error {
	if err == nil {
		return nil
	}
	if e, ok := err.(unix.Errno); ok {
		return &os.PathError{Op: op, Path: p, Err: e}
	}
	return err
}

// kindOf returns how the tree of n may be changed.
func (f *FS) kindOf(n node) treeKind { return f.trees[n.treeOf()].kind }

// changeErr is the errno for changing a file of a tree that is not scratch.
func changeErr(k treeKind, synth unix.Errno) error {
	if k == kindReadOnly {
		return unix.EROFS
	}
	return synth
}

// Stat returns the attributes of the file at path, following a final symlink if follow is
// set (stat versus lstat).
func (f *FS) Stat(dir, path string, follow bool) (Stat, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fl := resolveFlags(0)
	if follow {
		fl = rFollow
	}
	w, err := f.resolve(dir, path, fl, false)
	if err != nil {
		return Stat{}, wrap("stat", path, err)
	}
	if w.node == nil {
		return Stat{}, wrap("stat", path, unix.ENOENT)
	}
	return w.node.stat(f), nil
}

// Readlink returns the target of the symlink at path.
func (f *FS) Readlink(dir, path string) (string, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w, err := f.resolve(dir, path, 0, false)
	if err != nil {
		return "", wrap("readlink", path, err)
	}
	if w.node == nil {
		return "", wrap("readlink", path, unix.ENOENT)
	}
	l, ok := asLink(w.node)
	if !ok {
		return "", wrap("readlink", path, unix.EINVAL)
	}
	return l.target(f), nil
}

// Access checks whether the guest may access path with mode, a mask of unix.R_OK, W_OK
// and X_OK (0 for F_OK), following symlinks.
func (f *FS) Access(dir, path string, mode uint32) error {
	if mode&^7 != 0 {
		return wrap("access", path, unix.EINVAL)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	w, err := f.resolve(dir, path, rFollow, false)
	if err != nil {
		return wrap("access", path, err)
	}
	if w.node == nil {
		return wrap("access", path, unix.ENOENT)
	}
	if _, dev := w.node.(*devFile); mode&unix.W_OK != 0 && !dev && f.kindOf(w.node) == kindReadOnly {
		return wrap("access", path, unix.EROFS)
	}
	if !f.may(w.node, mode) {
		return wrap("access", path, unix.EACCES)
	}
	return nil
}

// ResolveDir returns the canonical guest path of the directory at path, for chdir.
func (f *FS) ResolveDir(dir, path string) (string, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w, err := f.resolve(dir, path, rFollow, false)
	if err != nil {
		return "", wrap("chdir", path, err)
	}
	switch {
	case w.node == nil:
		return "", wrap("chdir", path, unix.ENOENT)
	case !isDir(w.node):
		return "", wrap("chdir", path, unix.ENOTDIR)
	case !f.may(w.node, mayExec):
		return "", wrap("chdir", path, unix.EACCES)
	}
	return w.path(), nil
}

// createParent checks that a new name can be made where w points, in Linux's order, and
// returns the scratch directory to make it in. dirOK says the new file is a directory (a
// trailing slash is allowed).
func (f *FS) createParent(w *walk, dirOK bool) (*memNode, error) {
	if w.typ != lastNorm || w.node != nil {
		return nil, unix.EEXIST
	}
	if w.slash && !dirOK {
		return nil, unix.ENOENT
	}
	pd := w.dir()
	if k := f.kindOf(pd); k != kindScratch {
		return nil, changeErr(k, unix.EACCES)
	}
	pm := pd.(*memNode)
	if pm.nlink == 0 {
		return nil, unix.ENOENT
	}
	if !f.may(pm, mayWrite|mayExec) {
		return nil, unix.EACCES
	}
	return pm, nil
}

// Mkdir makes a directory with the permission bits of mode (the caller applies the umask).
func (f *FS) Mkdir(dir, path string, mode uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	w, err := f.resolve(dir, path, rParent, true)
	if err != nil {
		return wrap("mkdir", path, err)
	}
	pm, err := f.createParent(w, true)
	if err != nil {
		return wrap("mkdir", path, err)
	}
	n, err := f.newNode(pm, unix.S_IFDIR|mode&0o1777, 0)
	if err != nil {
		return wrap("mkdir", path, err)
	}
	f.link(pm, w.name, n)
	return nil
}

// Symlink makes a symlink at path pointing to target.
func (f *FS) Symlink(target, dir, path string) error {
	if target == "" {
		return wrap("symlink", path, unix.ENOENT)
	}
	if len(target) >= PathMax {
		return wrap("symlink", path, unix.ENAMETOOLONG)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	w, err := f.resolve(dir, path, rParent, true)
	if err != nil {
		return wrap("symlink", path, err)
	}
	pm, err := f.createParent(w, false)
	if err != nil {
		return wrap("symlink", path, err)
	}
	n, err := f.newNode(pm, unix.S_IFLNK|0o777, int64(len(target)))
	if err != nil {
		return wrap("symlink", path, err)
	}
	n.link = target
	f.link(pm, w.name, n)
	return nil
}

// Link makes newPath a hard link to the file at oldPath, following a final symlink of
// oldPath if follow is set (AT_SYMLINK_FOLLOW). Both must be in the same scratch tree.
func (f *FS) Link(oldDir, oldPath, newDir, newPath string, follow bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl := resolveFlags(0)
	if follow {
		fl = rFollow
	}
	wo, err := f.resolve(oldDir, oldPath, fl, true)
	if err != nil {
		return wrap("link", oldPath, err)
	}
	if wo.node == nil {
		return wrap("link", oldPath, unix.ENOENT)
	}
	old := wo.node
	wn, err := f.resolve(newDir, newPath, rParent, true)
	if err != nil {
		return wrap("link", newPath, err)
	}
	if wn.typ != lastNorm || wn.node != nil {
		return wrap("link", newPath, unix.EEXIST)
	}
	if wn.slash {
		return wrap("link", newPath, unix.ENOENT)
	}
	if k := f.kindOf(wn.dir()); k != kindScratch {
		return wrap("link", newPath, changeErr(k, unix.EACCES))
	}
	if old.treeOf() != wn.dir().treeOf() {
		return wrap("link", newPath, unix.EXDEV)
	}
	if isDir(old) {
		return wrap("link", oldPath, unix.EPERM)
	}
	pm, err := f.createParent(wn, false)
	if err != nil {
		return wrap("link", newPath, err)
	}
	om := old.(*memNode)
	if om.nlink == 0 {
		return wrap("link", oldPath, unix.ENOENT)
	}
	if f.usedFiles >= f.fileLimit {
		return wrap("link", newPath, unix.ENOSPC)
	}
	f.link(pm, wn.name, om)
	om.ctime = time.Now()
	return nil
}

// Unlink removes the name at path: a directory if rmdir is set (rmdir), otherwise any
// other file (unlink).
func (f *FS) Unlink(dir, path string, rmdir bool) error {
	op := "unlink"
	if rmdir {
		op = "rmdir"
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	w, err := f.resolve(dir, path, rParent, true)
	if err != nil {
		return wrap(op, path, err)
	}
	if err := f.unlink(w, rmdir); err != nil {
		return wrap(op, path, err)
	}
	return nil
}

func (f *FS) unlink(w *walk, rmdir bool) error {
	switch {
	case rmdir && w.typ == lastDotDot:
		return unix.ENOTEMPTY
	case rmdir && w.typ == lastDot:
		return unix.EINVAL
	case rmdir && w.typ == lastRoot:
		return unix.EBUSY
	case w.typ != lastNorm:
		return unix.EISDIR
	}
	pd := w.dir()
	k := f.kindOf(pd)
	if k == kindReadOnly {
		return unix.EROFS
	}
	n := w.node
	if n == nil {
		return unix.ENOENT
	}
	if k != kindScratch {
		return unix.EACCES
	}
	switch {
	case !rmdir && w.slash && isDir(n):
		return unix.EISDIR
	case !rmdir && w.slash:
		return unix.ENOTDIR
	case !rmdir && isDir(n):
		return unix.EISDIR
	case rmdir && !isDir(n):
		return unix.ENOTDIR
	}
	pm := pd.(*memNode)
	if !f.may(pm, mayWrite|mayExec) {
		return unix.EACCES
	}
	if m := n.(*memNode); rmdir && len(m.kids) > 0 {
		return unix.ENOTEMPTY
	}
	f.unlinkName(pm, w.name)
	return nil
}

// Rename moves oldPath to newPath, replacing what newPath names, like rename(2). Both must
// be in the same scratch tree (EXDEV otherwise).
func (f *FS) Rename(oldDir, oldPath, newDir, newPath string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	wo, err := f.resolve(oldDir, oldPath, rParent, true)
	if err != nil {
		return wrap("rename", oldPath, err)
	}
	wn, err := f.resolve(newDir, newPath, rParent, true)
	if err != nil {
		return wrap("rename", newPath, err)
	}
	if err := f.rename(wo, wn); err != nil {
		return wrap("rename", oldPath, err)
	}
	return nil
}

func (f *FS) rename(wo, wn *walk) error {
	if wo.typ != lastNorm || wn.typ != lastNorm {
		return unix.EBUSY
	}
	od, nd := wo.dir(), wn.dir()
	if od.treeOf() != nd.treeOf() {
		return unix.EXDEV
	}
	if k := f.kindOf(od); k == kindReadOnly {
		return unix.EROFS
	}
	on, nn := wo.node, wn.node
	if on == nil {
		return unix.ENOENT
	}
	if k := f.kindOf(od); k != kindScratch {
		return unix.EACCES
	}
	if !isDir(on) && (wo.slash || wn.slash) {
		return unix.ENOTDIR
	}
	op, np := od.(*memNode), nd.(*memNode)
	om := on.(*memNode)
	if om.isDir() && isAncestor(om, np) {
		return unix.EINVAL
	}
	if nn != nil {
		if nn == on {
			return nil
		}
		nm := nn.(*memNode)
		switch {
		case nm.isDir() && isAncestor(nm, op):
			return unix.ENOTEMPTY
		case om.isDir() && !nm.isDir():
			return unix.ENOTDIR
		case !om.isDir() && nm.isDir():
			return unix.EISDIR
		case nm.isDir() && len(nm.kids) > 0:
			return unix.ENOTEMPTY
		}
	}
	if !f.may(op, mayWrite|mayExec) || !f.may(np, mayWrite|mayExec) {
		return unix.EACCES
	}
	if np.nlink == 0 {
		return unix.ENOENT
	}
	if nn != nil {
		f.unlinkName(np, wn.name)
	}
	delete(op.kids, wo.name)
	np.kids[wn.name] = om
	if om.isDir() {
		om.parent = np
	}
	now := time.Now()
	op.mtime, op.ctime, np.mtime, np.ctime, om.ctime = now, now, now, now, now
	return nil
}

// Truncate sets the size of the regular file at path.
func (f *FS) Truncate(dir, path string, size int64) error {
	if size < 0 {
		return wrap("truncate", path, unix.EINVAL)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	w, err := f.resolve(dir, path, rFollow, true)
	if err != nil {
		return wrap("truncate", path, err)
	}
	n := w.node
	switch {
	case n == nil:
		return wrap("truncate", path, unix.ENOENT)
	case isDir(n):
		return wrap("truncate", path, unix.EISDIR)
	case n.stat(f).Mode&unix.S_IFMT != unix.S_IFREG:
		return wrap("truncate", path, unix.EINVAL)
	}
	if k := f.kindOf(n); k != kindScratch {
		return wrap("truncate", path, changeErr(k, unix.EACCES))
	}
	if !f.may(n, mayWrite) {
		return wrap("truncate", path, unix.EACCES)
	}
	m := n.(*memNode)
	if err := f.resize(m, size); err != nil {
		return wrap("truncate", path, err)
	}
	now := time.Now()
	m.mtime, m.ctime = now, now
	return nil
}

// Chmod sets the permission bits of the file at path, following a final symlink if follow
// is set.
func (f *FS) Chmod(dir, path string, mode uint32, follow bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.changeable(dir, path, follow)
	if err != nil {
		return wrap("chmod", path, err)
	}
	if m.mode&unix.S_IFMT == unix.S_IFLNK {
		return wrap("chmod", path, unix.EOPNOTSUPP)
	}
	m.mode = m.mode&unix.S_IFMT | mode&0o7777
	m.ctime = time.Now()
	return nil
}

// Utimes sets the access and modification times of the file at path; a zero time leaves
// that time unchanged (UTIME_OMIT). The caller turns UTIME_NOW into time.Now().
func (f *FS) Utimes(dir, path string, atime, mtime time.Time, follow bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.changeable(dir, path, follow)
	if err != nil {
		return wrap("utimes", path, err)
	}
	if !atime.IsZero() {
		m.atime = atime
	}
	if !mtime.IsZero() {
		m.mtime = mtime
	}
	m.ctime = time.Now()
	return nil
}

// changeable resolves path for an attribute change by its owner.
func (f *FS) changeable(dir, path string, follow bool) (*memNode, error) {
	fl := resolveFlags(0)
	if follow {
		fl = rFollow
	}
	w, err := f.resolve(dir, path, fl, true)
	if err != nil {
		return nil, err
	}
	if w.node == nil {
		return nil, unix.ENOENT
	}
	if k := f.kindOf(w.node); k != kindScratch {
		return nil, changeErr(k, unix.EPERM)
	}
	m := w.node.(*memNode)
	if m.uid != f.uid {
		return nil, unix.EPERM
	}
	return m, nil
}
