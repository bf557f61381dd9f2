package guestfs

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// linuxOp is one operation run both on a real Linux directory and on the same tree in the
// guest's /tmp, to compare errnos.
type linuxOp struct {
	op    string // open, mkdir, rmdir, unlink, rename, symlink, link, truncate, stat, lstat, readlink
	a, b  string
	flags int
}

// TestErrnosMatchLinux runs a sequence of path operations on a host directory and on the
// guest's /tmp/base, built the same way, and checks that every one fails (or succeeds) with
// the same errno and leaves the same kind of file behind.
func TestErrnosMatchLinux(t *testing.T) {
	f := newTestFS(t, nil)
	host := t.TempDir()
	dfd, err := unix.Open(host, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	if err := f.Mkdir("/", "/tmp/base", 0o755); err != nil {
		t.Fatal(err)
	}
	const base = "/tmp/base"

	setup := []linuxOp{
		{op: "mkdir", a: "d"}, {op: "mkdir", a: "d/sub"}, {op: "mkdir", a: "e"},
		{op: "open", a: "f", flags: unix.O_CREAT | unix.O_WRONLY}, {op: "open", a: "d/g", flags: unix.O_CREAT | unix.O_WRONLY},
		{op: "symlink", a: "f", b: "ls"}, {op: "symlink", a: "d", b: "ld"}, {op: "symlink", a: "nowhere", b: "ldang"},
		{op: "symlink", a: "lloop", b: "lloop"}, {op: "symlink", a: "f/", b: "lslash"}, {op: "symlink", a: "d/sub/../..", b: "lup"},
	}
	ops := []linuxOp{
		{op: "open", a: "f"}, {op: "open", a: "f/"}, {op: "open", a: "f/x"}, {op: "open", a: "d", flags: unix.O_WRONLY},
		{op: "open", a: "d"}, {op: "open", a: "d", flags: unix.O_CREAT}, {op: "open", a: "d/", flags: unix.O_CREAT},
		{op: "open", a: "new", flags: unix.O_CREAT | unix.O_EXCL}, {op: "open", a: "new", flags: unix.O_CREAT | unix.O_EXCL},
		{op: "open", a: "ls", flags: unix.O_NOFOLLOW}, {op: "open", a: "ls", flags: unix.O_CREAT | unix.O_EXCL},
		{op: "open", a: "ls", flags: unix.O_NOFOLLOW | unix.O_PATH}, {op: "open", a: "ld", flags: unix.O_NOFOLLOW | unix.O_DIRECTORY},
		{op: "open", a: "ldang", flags: unix.O_CREAT | unix.O_EXCL}, {op: "open", a: "ldang", flags: unix.O_CREAT | unix.O_WRONLY},
		{op: "lstat", a: "nowhere"}, {op: "open", a: "newdir/", flags: unix.O_CREAT}, {op: "open", a: "f", flags: unix.O_DIRECTORY},
		{op: "open", a: "lloop"}, {op: "open", a: "lslash"}, {op: "open", a: "ld/"}, {op: "open", a: "d", flags: unix.O_TRUNC},
		{op: "open", a: "missing/x", flags: unix.O_CREAT}, {op: "open", a: "f", flags: unix.O_CREAT | unix.O_DIRECTORY},
		{op: "open", a: "f", flags: unix.O_RDWR | unix.O_TRUNC}, {op: "open", a: "lup/f"}, {op: "open", a: "ld/../f"},
		{op: "open", a: "f", flags: unix.O_RDWR | unix.O_ACCMODE}, {op: "open", a: ".", flags: unix.O_CREAT},
		{op: "open", a: "d/.", flags: unix.O_RDWR},
		{op: "mkdir", a: "d"}, {op: "mkdir", a: "ls"}, {op: "mkdir", a: "ldang"}, {op: "mkdir", a: "."}, {op: "mkdir", a: ".."},
		{op: "mkdir", a: "newd/"}, {op: "mkdir", a: "f/x"}, {op: "mkdir", a: "missing/x"}, {op: "mkdir", a: "ld/new"},
		{op: "rmdir", a: "."}, {op: "rmdir", a: "d/.."}, {op: "rmdir", a: "f"}, {op: "rmdir", a: "ld"}, {op: "rmdir", a: "d"},
		{op: "rmdir", a: "e"}, {op: "rmdir", a: "e"}, {op: "rmdir", a: "ld/"}, {op: "rmdir", a: "newd/"},
		{op: "unlink", a: "d"}, {op: "unlink", a: "f/"}, {op: "unlink", a: "ld/"}, {op: "unlink", a: "."}, {op: "unlink", a: "ls"},
		{op: "unlink", a: "missing"}, {op: "unlink", a: "d/g"}, {op: "unlink", a: "missing/"}, {op: "unlink", a: "ld/sub"},
		{op: "rename", a: "f", b: "d"}, {op: "rename", a: "d", b: "f"}, {op: "rename", a: "d", b: "d/sub/x"},
		{op: "rename", a: "d/sub", b: "d"}, {op: "rename", a: "d", b: "d"}, {op: "rename", a: "f", b: "f2"},
		{op: "rename", a: "f2", b: "f/"}, {op: "rename", a: "f2", b: "x/"}, {op: "rename", a: ".", b: "x"},
		{op: "rename", a: "missing", b: "x"}, {op: "rename", a: "d/.", b: "x"}, {op: "rename", a: "x", b: ".."},
		{op: "mkdir", a: "e2"}, {op: "mkdir", a: "e3"}, {op: "open", a: "e3/full", flags: unix.O_CREAT},
		{op: "rename", a: "d", b: "e3"}, {op: "rename", a: "d", b: "e2/"}, {op: "stat", a: "e2/sub"}, {op: "stat", a: "d"},
		{op: "link", a: "f2", b: "h"}, {op: "rename", a: "f2", b: "h"}, {op: "stat", a: "f2"}, {op: "link", a: "e2", b: "el"},
		{op: "link", a: "f2", b: "h"}, {op: "link", a: "missing", b: "x"}, {op: "link", a: "f2/", b: "x"},
		{op: "link", a: "ld", b: "lh"}, {op: "lstat", a: "lh"}, {op: "link", a: "f2", b: "y/"},
		{op: "symlink", a: "x", b: "f2"}, {op: "symlink", a: "x", b: "new2/"}, {op: "symlink", a: "x", b: "missing/x"},
		{op: "symlink", a: "x", b: "."}, {op: "symlink", a: "", b: "emptytarget"},
		{op: "truncate", a: "e2"}, {op: "truncate", a: "ldang"}, {op: "truncate", a: "f2"}, {op: "truncate", a: "lloop"},
		{op: "truncate", a: "missing"}, {op: "truncate", a: "f2/"},
		{op: "stat", a: "ld/"}, {op: "lstat", a: "ld/"}, {op: "lstat", a: "ld"}, {op: "stat", a: "lslash"},
		{op: "readlink", a: "ld"}, {op: "readlink", a: "f2"}, {op: "readlink", a: "ld/"}, {op: "readlink", a: "missing"},
		{op: "stat", a: "lup/e2/../f2"},
	}
	for i, op := range append(setup, ops...) {
		he, hkind := runHost(dfd, op)
		ge, gkind := runGuest(t, f, base, op)
		if he != ge || hkind != gkind {
			t.Errorf("op %d %s(%q, %q, %#x): guest %v (%s), Linux %v (%s)", i, op.op, op.a, op.b, op.flags, ge, gkind, he, hkind)
		}
	}
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFREG:
		return "file"
	case unix.S_IFLNK:
		return "symlink"
	}
	return fmt.Sprintf("mode %o", mode)
}

func runHost(dfd int, op linuxOp) (unix.Errno, string) {
	var err error
	var kind string
	switch op.op {
	case "open":
		var fd int
		fd, err = unix.Openat(dfd, op.a, op.flags|unix.O_CLOEXEC, 0o644)
		if err == nil {
			var st unix.Stat_t
			unix.Fstat(fd, &st)
			kind = typeName(st.Mode)
			unix.Close(fd)
		}
	case "mkdir":
		err = unix.Mkdirat(dfd, op.a, 0o755)
	case "rmdir":
		err = unix.Unlinkat(dfd, op.a, unix.AT_REMOVEDIR)
	case "unlink":
		err = unix.Unlinkat(dfd, op.a, 0)
	case "rename":
		err = unix.Renameat(dfd, op.a, dfd, op.b)
	case "symlink":
		err = unix.Symlinkat(op.a, dfd, op.b)
	case "link":
		err = unix.Linkat(dfd, op.a, dfd, op.b, 0)
	case "truncate":
		// Through the directory's descriptor: filepath.Join would apply ".." lexically.
		err = unix.Truncate(fmt.Sprintf("/proc/self/fd/%d/%s", dfd, op.a), 3)
	case "stat", "lstat":
		var st unix.Stat_t
		fl := 0
		if op.op == "lstat" {
			fl = unix.AT_SYMLINK_NOFOLLOW
		}
		err = unix.Fstatat(dfd, op.a, &st, fl)
		if err == nil {
			kind = typeName(st.Mode)
		}
	case "readlink":
		buf := make([]byte, 4096)
		var n int
		n, err = unix.Readlinkat(dfd, op.a, buf)
		if err == nil {
			kind = string(buf[:n])
		}
	}
	if err == nil {
		return 0, kind
	}
	return err.(unix.Errno), kind
}

func runGuest(t *testing.T, f *FS, dir string, op linuxOp) (unix.Errno, string) {
	var err error
	var kind string
	switch op.op {
	case "open":
		var fl File
		fl, err = f.Open(dir, op.a, op.flags, 0o644)
		if err == nil {
			st, _ := fl.Stat()
			kind = typeName(st.Mode)
			fl.Close()
		}
	case "mkdir":
		err = f.Mkdir(dir, op.a, 0o755)
	case "rmdir":
		err = f.Unlink(dir, op.a, true)
	case "unlink":
		err = f.Unlink(dir, op.a, false)
	case "rename":
		err = f.Rename(dir, op.a, dir, op.b)
	case "symlink":
		err = f.Symlink(op.a, dir, op.b)
	case "link":
		err = f.Link(dir, op.a, dir, op.b, false)
	case "truncate":
		err = f.Truncate(dir, op.a, 3)
	case "stat", "lstat":
		var st Stat
		st, err = f.Stat(dir, op.a, op.op == "stat")
		if err == nil {
			kind = typeName(st.Mode)
		}
	case "readlink":
		kind, err = f.Readlink(dir, op.a)
	}
	return errnoOf(t, err), kind
}

// TestRandomOpsMatchLinux runs random operations on a few names, symlinks among them
// included, on Linux and on the guest's /tmp and compares every errno. Paths never climb
// above the base lexically and symlink targets only descend, so neither side leaves it.
func TestRandomOpsMatchLinux(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			randomOpsMatchLinux(t, seed, 1500)
		})
	}
}

func randomOpsMatchLinux(t *testing.T, seed uint64, count int) {
	f := newTestFS(t, nil)
	host := t.TempDir()
	dfd, err := unix.Open(host, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	const base = "/work/base"
	if err := f.Mkdir("/", base, 0o755); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 0x15014702))
	names := []string{"a", "b", "c"}
	randPath := func() string {
		var comps []string
		depth := 0
		for range 1 + rng.IntN(4) {
			switch r := rng.IntN(10); {
			case r < 7:
				comps = append(comps, names[rng.IntN(len(names))])
				depth++
			case r < 8:
				comps = append(comps, ".")
			case depth > 0:
				comps = append(comps, "..")
				depth--
			}
		}
		if len(comps) == 0 {
			comps = []string{"."}
		}
		p := strings.Join(comps, "/")
		if rng.IntN(6) == 0 {
			p += "/"
		}
		return p
	}
	randTarget := func() string {
		var comps []string
		for range 1 + rng.IntN(3) {
			comps = append(comps, names[rng.IntN(len(names))])
		}
		p := strings.Join(comps, "/")
		if rng.IntN(6) == 0 {
			p += "/"
		}
		return p
	}
	flagChoices := []int{unix.O_CREAT, unix.O_EXCL, unix.O_TRUNC, unix.O_DIRECTORY, unix.O_NOFOLLOW, unix.O_WRONLY, unix.O_RDWR, unix.O_PATH}
	ops := []string{"open", "open", "mkdir", "mkdir", "rmdir", "unlink", "rename", "symlink", "symlink", "link", "truncate", "stat", "lstat", "readlink"}
	for i := range count {
		op := linuxOp{op: ops[rng.IntN(len(ops))], a: randPath(), b: randPath()}
		switch op.op {
		case "symlink":
			op.a = randTarget()
		case "open":
			for _, fl := range flagChoices {
				if rng.IntN(4) == 0 {
					op.flags |= fl
				}
			}
			if op.flags&unix.O_ACCMODE == unix.O_ACCMODE {
				op.flags &^= unix.O_WRONLY
			}
		}
		he, hkind := runHost(dfd, op)
		ge, gkind := runGuest(t, f, base, op)
		if he != ge || hkind != gkind {
			t.Fatalf("op %d %s(%q, %q, %#x): guest %v (%s), Linux %v (%s)", i, op.op, op.a, op.b, op.flags, ge, gkind, he, hkind)
		}
	}
}
