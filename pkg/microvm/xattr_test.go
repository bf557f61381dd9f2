package microvm

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/guestfs"
)

// Scratch offsets of the xattr tests' names, values and buffers.
const (
	xaUserX    = 0x100
	xaSELinux  = 0x120
	xaACL      = 0x140
	xaFoo      = 0x170
	xaUserDot  = 0x180
	xaTrusted  = 0x190
	xaSecurity = 0x1a0
	xaUserY    = 0x1c0
	xaValue    = 0x200
	xaLongName = 0x300 // 256 bytes: one past XATTR_NAME_MAX
	xaBuf      = 0x1000
	xaBuf2     = 0x2000
	xaBuf3     = 0x3000
	xaPipe     = 0x800
)

func xattrMem() *fzMem {
	m := &fzMem{}
	for off, s := range map[int]string{xaUserX: "user.x", xaSELinux: "security.selinux", xaACL: "system.posix_acl_access",
		xaFoo: "foo.bar", xaUserDot: "user.", xaTrusted: "trusted.x", xaSecurity: "security.x", xaUserY: "user.y",
		xaValue: "hello", xaLongName: "user." + strings.Repeat("a", 251)} {
		m.bytes(off, append([]byte(s), 0))
	}
	return m
}

// TestXattr runs the extended attribute calls as a program makes them, with the results
// Linux gives an unprivileged user (see guestfs/xattr.go): the image and /input are
// read-only and hold none, scratch files hold user.* attributes, /proc has no support,
// and bad arguments fail as Linux checks them. coreutils ls -l asks for
// security.selinux and system.posix_acl_access of every file (TestCoreutilsMatchesHost).
func TestXattr(t *testing.T) {
	const bad = 0x10 // an unmapped address
	get := func(path fzArg, name uint64, size int64) fzCall {
		return call(unix.SYS_GETXATTR, path, ptr(name), ptr(xaBuf), num(size))
	}
	for _, c := range []struct {
		name  string
		calls fzCalls
		want  []any
		check func(t *testing.T, o *fzOutcome)
	}{
		{"read-only trees", fzCalls{
			get(str(strEtcPasswd), xaUserX, 64),
			call(unix.SYS_LGETXATTR, str(strEtcPasswd), ptr(xaSELinux), ptr(xaBuf), num(255)),
			call(unix.SYS_GETXATTR, str(strEtcPasswd), ptr(xaACL), num(0), num(0)),
			call(unix.SYS_LISTXATTR, str(strEtcPasswd), ptr(xaBuf), num(64)),
			call(unix.SYS_SETXATTR, str(strEtcPasswd), ptr(xaUserX), ptr(xaValue), num(5), num(0)),
			call(unix.SYS_REMOVEXATTR, str(strInput), ptr(xaUserX)),
			get(str(strEtcPasswd), xaFoo, 64),
			get(str(strInput), xaUserDot, 64),
		}, []any{unix.ENODATA, unix.ENODATA, unix.ENODATA, 0, unix.EROFS, unix.EROFS, unix.EOPNOTSUPP, unix.EINVAL}, nil},

		{"scratch holds user attributes", fzCalls{
			call(unix.SYS_OPENAT, num(unix.AT_FDCWD), str(strTmpA), num(unix.O_CREAT|unix.O_RDWR), num(0o644)),
			call(unix.SYS_SETXATTR, str(strTmpA), ptr(xaUserX), ptr(xaValue), num(5), num(guestfs.XattrCreate)),
			call(unix.SYS_LSETXATTR, str(strTmpA), ptr(xaUserX), ptr(xaValue), num(5), num(guestfs.XattrCreate)),
			get(str(strTmpA), xaUserX, 0),
			call(unix.SYS_FGETXATTR, num(3), ptr(xaUserX), ptr(xaBuf), num(2)),
			call(unix.SYS_FGETXATTR, num(3), ptr(xaUserX), ptr(xaBuf), num(64)),
			call(unix.SYS_LLISTXATTR, str(strTmpA), ptr(xaBuf2), num(64)),
			call(unix.SYS_FREMOVEXATTR, num(3), ptr(xaUserX)),
		}, []any{3, 0, unix.EEXIST, 5, unix.ERANGE, 5, 7, 0}, func(t *testing.T, o *fzOutcome) {
			if got := o.region[xaBuf : xaBuf+6]; string(got) != "hello\x00" {
				t.Errorf("fgetxattr stored %q", got)
			}
			if got := o.region[xaBuf2 : xaBuf2+8]; string(got) != "user.x\x00\x00" {
				t.Errorf("listxattr stored %q", got)
			}
		}},

		{"scratch refuses", fzCalls{
			call(unix.SYS_OPENAT, num(unix.AT_FDCWD), str(strTmpA), num(unix.O_CREAT|unix.O_RDWR), num(0o644)),
			call(unix.SYS_FREMOVEXATTR, num(3), ptr(xaUserX)),
			call(unix.SYS_SETXATTR, str(strTmpA), ptr(xaUserY), ptr(xaValue), num(1), num(guestfs.XattrReplace)),
			call(unix.SYS_SETXATTR, str(strTmpA), ptr(xaTrusted), ptr(xaValue), num(1), num(0)),
			call(unix.SYS_FSETXATTR, num(3), ptr(xaSecurity), ptr(xaValue), num(1), num(0)),
			call(unix.SYS_SETXATTR, str(strTmpA), ptr(xaUserX), ptr(xaValue), num(1), num(4)),
			call(unix.SYS_SETXATTR, str(strTmpA), ptr(xaUserX), ptr(xaValue), num(guestfs.XattrSizeMax+1), num(0)),
			get(str(strTmpA), xaTrusted, 64),
		}, []any{3, unix.ENODATA, unix.ENODATA, unix.EPERM, unix.EPERM, unix.EINVAL, unix.E2BIG, unix.ENODATA}, nil},

		{"bad arguments", fzCalls{
			call(unix.SYS_GETXATTR, raw(bad), ptr(xaUserX), ptr(xaBuf), num(64)),
			call(unix.SYS_GETXATTR, str(strEtcPasswd), raw(bad), ptr(xaBuf), num(64)),
			call(unix.SYS_GETXATTR, str(strEtcPasswd), str(strEmpty), ptr(xaBuf), num(64)),
			get(str(strEtcPasswd), xaLongName, 64),
			// The value is copied before the path is looked up, so EFAULT before EROFS.
			call(unix.SYS_SETXATTR, str(strEtcPasswd), ptr(xaUserX), raw(bad), num(4), num(0)),
			call(unix.SYS_FGETXATTR, num(99), ptr(xaUserX), ptr(xaBuf), num(64)),
			get(str(strTmpA), xaUserX, 64),
			call(unix.SYS_LSETXATTR, str(strDevZero), ptr(xaUserX), ptr(xaValue), num(1), num(0)),
		}, []any{unix.EFAULT, unix.EFAULT, unix.ERANGE, unix.ERANGE, unix.EFAULT, unix.EBADF, unix.ENOENT, unix.EPERM}, nil},

		{"proc, dev and pipes", fzCalls{
			get(str(strProcMaps), xaUserX, 64),
			get(str(strDevZero), xaUserX, 64),
			call(unix.SYS_PIPE2, ptr(xaPipe), num(0)),
			call(unix.SYS_FGETXATTR, num(3), ptr(xaUserX), ptr(xaBuf), num(64)),
			call(unix.SYS_FSETXATTR, num(3), ptr(xaFoo), ptr(xaValue), num(1), num(0)),
			call(unix.SYS_FLISTXATTR, num(4), ptr(xaBuf), num(64)),
			call(unix.SYS_GETXATTR, str(strProcMaps), ptr(xaTrusted), ptr(xaBuf), num(64)),
			call(unix.SYS_LISTXATTR, str(strProcMaps), num(0), num(0)),
		}, []any{unix.EOPNOTSUPP, unix.ENODATA, 0, unix.ENODATA, unix.EOPNOTSUPP, 0, unix.ENODATA, 0}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := newFuzzHarness(t)
			o := h.runOne(t, c.calls.encode(), *xattrMem())
			wantResults(t, o, c.want...)
			if c.check != nil && o.region != nil {
				c.check(t, o)
			}
			if o.res.Stats.DeniedCount != 0 {
				t.Errorf("denied %v", o.res.Stats.Denied)
			}
		})
	}
}

// TestStatfs checks statfs and fstatfs: the image is read-only (ST_RDONLY) like ext4, the
// scratch trees are tmpfs with the VM's scratch budget, /proc is procfs and a pipe is on
// pipefs; bad arguments fail as on Linux.
func TestStatfs(t *testing.T) {
	h := newFuzzHarness(t)
	o := h.runOne(t, fzCalls{
		call(unix.SYS_STATFS, str(strEtcPasswd), ptr(xaBuf)),
		call(unix.SYS_STATFS, str(strTmp), ptr(xaBuf2)),
		call(unix.SYS_PIPE2, ptr(xaPipe), num(0)),
		call(unix.SYS_FSTATFS, num(3), ptr(xaBuf3)),
		call(unix.SYS_STATFS, str(strProcMaps), ptr(xaBuf3+0x100)),
		call(unix.SYS_STATFS, str(strRoot), raw(0x10)),
		call(unix.SYS_STATFS, str(strEmpty), ptr(xaBuf3+0x200)),
		call(unix.SYS_FSTATFS, num(99), ptr(xaBuf3+0x200)),
	}.encode(), *xattrMem())
	wantResults(t, o, 0, 0, 0, 0, 0, unix.EFAULT, unix.ENOENT, unix.EBADF)
	if o.region == nil {
		t.Fatal("guest memory unreadable")
	}
	statfs := func(off int) unix.Statfs_t {
		var st unix.Statfs_t
		if err := binary.Read(bytes.NewReader(o.region[off:off+120]), binary.LittleEndian, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	img, tmp, pipe, proc := statfs(xaBuf), statfs(xaBuf2), statfs(xaBuf3), statfs(xaBuf3+0x100)
	const valid = 0x20 // ST_VALID
	if img.Type != unix.EXT4_SUPER_MAGIC || img.Flags&unix.ST_RDONLY == 0 || img.Flags&valid == 0 || img.Bsize != 4096 ||
		img.Namelen != 255 || img.Blocks != uint64((h.im.Size()+4095)/4096) || img.Bavail != 0 || img.Files == 0 {
		t.Errorf("statfs of an image file: %+v; want ext4, read-only, the image's size in blocks, none free", img)
	}
	if tmp.Type != unix.TMPFS_MAGIC || tmp.Flags&unix.ST_RDONLY != 0 || tmp.Blocks != (1<<20)/4096 || tmp.Bfree != tmp.Blocks ||
		tmp.Bavail != tmp.Blocks || tmp.Files != guestfs.DefaultMaxFiles || tmp.Ffree != tmp.Files {
		t.Errorf("statfs of /tmp: %+v; want writable tmpfs of the VM's 1 MiB scratch, all free", tmp)
	}
	if pipe.Type != pipefsMagic || proc.Type != unix.PROC_SUPER_MAGIC || proc.Flags&unix.ST_NOEXEC == 0 {
		t.Errorf("fstatfs of a pipe: type %#x; statfs of /proc/self/maps: %+v", pipe.Type, proc)
	}
}
