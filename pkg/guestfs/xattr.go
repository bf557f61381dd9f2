package guestfs

import (
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Extended attributes behave as on Linux for a user without privileges, on file systems
// that hold none but those the guest sets:
//
//   - The image and /input are like a read-only ext4 mount: getxattr of a name of the
//     user, trusted or security namespace, or of a POSIX ACL, fails with ENODATA;
//     listxattr lists nothing; setxattr and removexattr fail with EROFS.
//   - /tmp, /work and /output are like tmpfs: they hold user.* attributes of regular files
//     and directories, in memory and charged to the scratch bytes (name, value and
//     xattrOverhead each), as many as fit in a listxattr buffer per file. Setting a trusted.* or
//     security.* attribute needs privileges (EPERM); POSIX ACLs are not supported
//     (EOPNOTSUPP to set one).
//   - /dev is like devtmpfs (nothing in it can be given attributes) and /proc like procfs,
//     which has no extended attributes (EOPNOTSUPP).
//
// Everywhere, as in Linux's xattr_permission, trusted.* reads as ENODATA, user.* needs read
// (write) permission on the file and is ENODATA (EPERM to set) for other than regular files
// and directories, a name in no known namespace needs the permission and then fails with
// EOPNOTSUPP, and a namespace prefix alone ("user.") is EINVAL. The caller checks what
// Linux checks while copying the arguments: the name is 1 to XattrNameMax bytes, a value
// at most XattrSizeMax, flags only XattrCreate and XattrReplace.

// Limits and flags of the xattr system calls.
const (
	XattrNameMax = 255     // XATTR_NAME_MAX
	XattrSizeMax = 1 << 16 // XATTR_SIZE_MAX: the largest value
	XattrListMax = 1 << 16 // XATTR_LIST_MAX: the largest name list
	XattrCreate  = 1       // XATTR_CREATE: fail with EEXIST if the attribute exists
	XattrReplace = 2       // XATTR_REPLACE: fail with ENODATA unless it exists
)

// xattrSupport is what a tree's file system does with extended attributes.
type xattrSupport int

const (
	xattrNone   xattrSupport = iota // procfs: none at all
	xattrEmpty                      // ext4, devtmpfs: the namespaces exist, no file has any
	xattrMemory                     // tmpfs: user.* are stored
)

func (f *FS) xattrSupport(n node) xattrSupport {
	switch n.treeOf() {
	case treeProc:
		return xattrNone
	case treeTmp, treeWork, treeOutput:
		return xattrMemory
	}
	return xattrEmpty
}

// xattrNamespace classifies name as Linux's xattr handlers of ext4 and tmpfs do: known is
// false for a name no handler takes (EOPNOTSUPP), and err EINVAL for a prefix alone.
func xattrNamespace(name string) (prefix string, known bool, err error) {
	for _, p := range []string{"user.", "trusted.", "security."} {
		if rest, ok := strings.CutPrefix(name, p); ok {
			if rest == "" {
				return p, false, unix.EINVAL
			}
			return p, true, nil
		}
	}
	switch name {
	case "system.posix_acl_access", "system.posix_acl_default":
		return "system.", true, nil
	}
	if strings.HasPrefix(name, "system.") {
		return "system.", false, nil
	}
	return "", false, nil
}

// xattrPermission is Linux's xattr_permission for the guest user: write asks for MAY_WRITE.
func (f *FS) xattrPermission(n node, name string, write bool) error {
	mask := uint32(mayRead)
	if write {
		mask = mayWrite
	}
	switch {
	case strings.HasPrefix(name, "security."), strings.HasPrefix(name, "system."):
		return nil // left to the file system and the security module
	case strings.HasPrefix(name, "trusted."):
		if write {
			return unix.EPERM
		}
		return unix.ENODATA
	case strings.HasPrefix(name, "user."):
		st := n.stat(f)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
		case unix.S_IFDIR:
			if write && st.Mode&unix.S_ISVTX != 0 && st.UID != f.uid {
				return unix.EPERM
			}
		default:
			if write {
				return unix.EPERM
			}
			return unix.ENODATA
		}
	}
	if !f.may(n, mask) {
		return unix.EACCES
	}
	return nil
}

// getxattr returns the value of attribute name of n. f.mu is held.
func (f *FS) getxattr(n node, name string) ([]byte, error) {
	if err := f.xattrPermission(n, name, false); err != nil {
		return nil, err
	}
	prefix, known, err := xattrNamespace(name)
	switch {
	case f.xattrSupport(n) == xattrNone:
		return nil, unix.EOPNOTSUPP
	case err != nil:
		return nil, err
	case !known:
		return nil, unix.EOPNOTSUPP
	}
	if m, ok := n.(*memNode); ok && prefix == "user." {
		if v, ok := m.xattrs[name]; ok {
			return slices.Clone(v), nil
		}
	}
	return nil, unix.ENODATA
}

// listxattr returns the names of n's attributes, sorted. f.mu is held.
func (f *FS) listxattr(n node) []string {
	m, ok := n.(*memNode)
	if !ok || len(m.xattrs) == 0 {
		return nil
	}
	names := make([]string, 0, len(m.xattrs))
	for name := range m.xattrs {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// setxattr sets (value != nil) or removes attribute name of n with the flags of setxattr.
// f.mu is held for writing.
func (f *FS) setxattr(n node, name string, value []byte, flags int) error {
	if f.kindOf(n) == kindReadOnly {
		return unix.EROFS // mnt_want_write comes first
	}
	if err := f.xattrPermission(n, name, true); err != nil {
		return err
	}
	if strings.HasPrefix(name, "security.") {
		return unix.EPERM // the capability module's check: CAP_SYS_ADMIN (CAP_SETFCAP)
	}
	prefix, known, err := xattrNamespace(name)
	m, mem := n.(*memNode)
	switch {
	case f.xattrSupport(n) == xattrNone:
		return unix.EOPNOTSUPP
	case err != nil:
		return err
	case !known:
		return unix.EOPNOTSUPP
	case prefix == "system.":
		// A POSIX ACL: only the owner may set one, and scratch files cannot hold one.
		if st := n.stat(f); st.UID != f.uid {
			return unix.EPERM
		}
		return unix.EOPNOTSUPP
	case !mem || f.xattrSupport(n) != xattrMemory:
		return unix.EOPNOTSUPP
	case m.nlink == 0 && m.opens == 0:
		// Removed and already freed (a directory's opens are not counted, so an rmdir frees
		// it at once): nothing would release a new charge.
		return unix.ENOENT
	}
	old, exists := m.xattrs[name]
	switch {
	case value == nil && !exists, flags&XattrReplace != 0 && !exists:
		return unix.ENODATA
	case flags&XattrCreate != 0 && exists:
		return unix.EEXIST
	}
	var delta int64
	if exists {
		delta -= xattrCost(name, old)
	}
	if value != nil {
		delta += xattrCost(name, value)
		if !exists && m.xattrListLen()+len(name)+1 > XattrListMax {
			return unix.ENOSPC // the names must fit in a listxattr buffer
		}
	}
	if err := f.charge(delta); err != nil {
		return err
	}
	if value == nil {
		delete(m.xattrs, name)
	} else {
		if m.xattrs == nil {
			m.xattrs = map[string][]byte{}
		}
		m.xattrs[name] = slices.Clone(value)
	}
	m.ctime = time.Now()
	return nil
}

// xattrOverhead is charged for each attribute besides its name and value: about what it
// costs the host to keep one, so that the scratch limit bounds the host memory that many
// small attributes take.
const xattrOverhead = 128

// xattrCost is what an attribute is charged.
func xattrCost(name string, value []byte) int64 {
	return int64(len(name) + len(value) + xattrOverhead)
}

// xattrBytes is what m's attributes are charged.
func (m *memNode) xattrBytes() int64 {
	var n int64
	for name, v := range m.xattrs {
		n += xattrCost(name, v)
	}
	return n
}

// xattrListLen is the size of m's listxattr result: the names, each NUL-terminated.
func (m *memNode) xattrListLen() int {
	n := 0
	for name := range m.xattrs {
		n += len(name) + 1
	}
	return n
}

// resolveAttr resolves path for an xattr call (lgetxattr and the like when !follow).
func (f *FS) resolveAttr(dir, path string, follow, write bool) (node, error) {
	fl := resolveFlags(0)
	if follow {
		fl = rFollow
	}
	w, err := f.resolve(dir, path, fl, write)
	if err != nil {
		return nil, err
	}
	if w.node == nil {
		return nil, unix.ENOENT
	}
	return w.node, nil
}

// Getxattr returns the value of the extended attribute name of the file at path,
// following a final symlink if follow is set (getxattr versus lgetxattr).
func (f *FS) Getxattr(dir, path string, follow bool, name string) ([]byte, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, err := f.resolveAttr(dir, path, follow, false)
	if err != nil {
		return nil, wrap("getxattr", path, err)
	}
	v, err := f.getxattr(n, name)
	return v, wrap("getxattr", path, err)
}

// Listxattr returns the names of the extended attributes of the file at path.
func (f *FS) Listxattr(dir, path string, follow bool) ([]string, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, err := f.resolveAttr(dir, path, follow, false)
	if err != nil {
		return nil, wrap("listxattr", path, err)
	}
	return f.listxattr(n), nil
}

// Setxattr sets the extended attribute name of the file at path to value, with the
// flags XattrCreate or XattrReplace; a nil value removes it (removexattr).
func (f *FS) Setxattr(dir, path string, follow bool, name string, value []byte, flags int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.resolveAttr(dir, path, follow, true)
	if err != nil {
		return wrap("setxattr", path, err)
	}
	return wrap("setxattr", path, f.setxattr(n, name, value, flags))
}

// attrFile checks that fl can be used for the f*xattr calls (not an O_PATH file).
func (fl *file) attrFile() error {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.usable()
}

func (fl *file) Getxattr(name string) ([]byte, error) {
	if err := fl.attrFile(); err != nil {
		return nil, err
	}
	f := fl.fs
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return nil, unix.EBADF
	}
	v, err := f.getxattr(fl.n, name)
	return v, wrap("fgetxattr", fl.path, err)
}

func (fl *file) Listxattr() ([]string, error) {
	if err := fl.attrFile(); err != nil {
		return nil, err
	}
	f := fl.fs
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return nil, unix.EBADF
	}
	return f.listxattr(fl.n), nil
}

func (fl *file) Setxattr(name string, value []byte, flags int) error {
	if err := fl.attrFile(); err != nil {
		return err
	}
	f := fl.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return unix.EBADF
	}
	return wrap("fsetxattr", fl.path, f.setxattr(fl.n, name, value, flags))
}
