package microvm

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	goimage "image"
	"image/color"
	"image/png"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/guestfs"
	"github.com/isolator-dev/isolator/pkg/image"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// requireKVM skips the test, saying why, where /dev/kvm cannot be used; it returns a shared
// open /dev/kvm.
func requireKVM(t testing.TB) *kvmhv.System {
	t.Helper()
	if ok, why := kvmhv.Available(); !ok {
		t.Skipf("skipping: /dev/kvm unavailable: %s", why)
	}
	s, err := kvmhv.Open()
	if err != nil {
		t.Fatalf("open kvm: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// requireFile skips the test when a host program the test runs is missing.
func requireFile(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Skipf("skipping: %s missing (make deps installs it): %v", path, err)
	}
}

var (
	imageOnce sync.Map // cached images by key
)

// buildImage builds (once per test binary) an image of the given programs and files.
func buildImage(t testing.TB, key string, cfg image.BuildConfig) *image.Image {
	t.Helper()
	if v, ok := imageOnce.Load(key); ok {
		return v.(*image.Image)
	}
	dir, err := os.MkdirTemp("", "microvm-test-")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, key+".img")
	if _, err := image.BuildFile(path, cfg); err != nil {
		t.Fatalf("build image: %v", err)
	}
	im, err := image.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(dir) // the open image keeps its file
	v, _ := imageOnce.LoadOrStore(key, im)
	return v.(*image.Image)
}

func busyboxImage(t testing.TB) *image.Image {
	requireFile(t, "/usr/bin/busybox")
	return buildImage(t, "busybox", image.BuildConfig{
		Programs: []string{"/usr/bin/busybox"},
		Files:    []image.FileSpec{{HostPath: "/etc/services", GuestPath: "/etc/services"}},
	})
}

// runGuest runs args[0] from im with the inputs and returns stdout, stderr and the result.
func runGuest(t *testing.T, sys *kvmhv.System, im *image.Image, inputs []Input, stdin []byte, args ...string) (string, string, *Result) {
	t.Helper()
	return runGuestIn(t, sys, im, "/work", inputs, stdin, args...)
}

// runGuestIn is runGuest with the working directory dir.
func runGuestIn(t *testing.T, sys *kvmhv.System, im *image.Image, dir string, inputs []Input, stdin []byte, args ...string) (string, string, *Result) {
	t.Helper()
	return runGuestThen(t, sys, im, dir, inputs, stdin, nil, args...)
}

// runGuestThen is runGuestIn that calls after, when not nil, with the VM once the program
// has ended and before the VM is destroyed, to look at its files.
func runGuestThen(t *testing.T, sys *kvmhv.System, im *image.Image, dir string, inputs []Input, stdin []byte, after func(*VM), args ...string) (string, string, *Result) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cfg := Config{KVM: sys, Image: im, Program: args[0], Args: args, Inputs: inputs, Dir: dir,
		Env: []string{"PATH=/usr/bin:/bin", "LANG=C"}, Stdout: &stdout, Stderr: &stderr, Timeout: 60 * time.Second}
	if stdin != nil {
		cfg.Stdin = bytes.NewReader(stdin)
	}
	vm, err := New(cfg)
	if err != nil {
		t.Fatalf("new VM for %v: %v", args, err)
	}
	defer vm.Close()
	res, err := vm.Run(context.Background())
	if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	if after != nil {
		after(vm)
	}
	return stdout.String(), stderr.String(), res
}

// guestTree describes the files under the guest directory root of vm, by path relative to
// root, as hostTree does for a host directory: type and permissions, size, modification
// time and the contents or the symlink's target.
func guestTree(t *testing.T, vm *VM, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(rel string)
	walk = func(rel string) {
		p := path.Join(root, rel)
		st, err := vm.fs.Stat("/", p, false)
		if err != nil {
			t.Fatalf("guest stat %s: %v", p, err)
		}
		var what string
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			f, err := vm.fs.Open("/", p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				t.Fatalf("guest open %s: %v", p, err)
			}
			ents, err := f.ReadDir(0)
			f.Close()
			if err != nil {
				t.Fatalf("guest readdir %s: %v", p, err)
			}
			for _, e := range ents {
				if e.Name != "." && e.Name != ".." {
					walk(path.Join(rel, e.Name))
				}
			}
			st.Size = 0 // directory sizes are the file system's
		case unix.S_IFREG:
			f, err := vm.fs.Open("/", p, unix.O_RDONLY, 0)
			if err != nil {
				t.Fatalf("guest open %s: %v", p, err)
			}
			b := make([]byte, st.Size+1)
			n, _ := f.ReadAt(b, 0)
			f.Close()
			what = fmt.Sprintf("%q", b[:n])
		case unix.S_IFLNK:
			if what, err = vm.fs.Readlink("/", p); err != nil {
				t.Fatalf("guest readlink %s: %v", p, err)
			}
		}
		if rel != "" {
			out[rel] = fmt.Sprintf("mode %o size %d mtime %s %s", st.Mode, st.Size, treeMtime(st.Mode, st.Mtime.Unix()), what)
		}
	}
	walk("")
	return out
}

// treeMtime is the modification time guestTree and hostTree compare: a regular file's,
// which the unpacker restores from the archive; busybox tar leaves directories and
// symlinks with the time of the extraction, which differs between the two runs.
func treeMtime(mode uint32, sec int64) string {
	if mode&unix.S_IFMT != unix.S_IFREG {
		return "-"
	}
	return strconv.FormatInt(sec, 10)
}

// hostTree is guestTree for the host directory root.
func hostTree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		var what string
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			st.Size = 0
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			what = fmt.Sprintf("%q", b)
		case unix.S_IFLNK:
			if what, err = os.Readlink(p); err != nil {
				return err
			}
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = fmt.Sprintf("mode %o size %d mtime %s %s", st.Mode, st.Size, treeMtime(st.Mode, st.Mtim.Sec), what)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hostRun runs the same command on the host, in dir.
func hostRun(t *testing.T, dir string, stdin []byte, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C"}
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("host %v: %v", args, err)
	}
	return string(out), code
}

// TestBusyboxMatchesHost runs busybox applets in micro VMs and on the host over the same
// input files and compares stdout byte for byte, and the exit status.
//
// Cases with dir "tree" run in an image directory packed from a host directory with --add
// (guest /srv/t, host the directory itself), so that ls -la of image directories can be
// compared. Those need the host directory on ext4, whose st_nlink, st_size and st_blocks the
// guest's image files mimic (see guestfs's imgNode.stat), and files owned by root, as
// image files are; they are skipped, saying why, elsewhere.
func TestBusyboxMatchesHost(t *testing.T) {
	sys := requireKVM(t)
	host := t.TempDir()
	treeRoot, treeSkip := makeHostTree(t)
	requireFile(t, "/usr/bin/busybox")
	im := buildImage(t, "busybox-tree", image.BuildConfig{
		Programs: []string{"/usr/bin/busybox"},
		Files: []image.FileSpec{{HostPath: "/etc/services", GuestPath: "/etc/services"},
			{HostPath: "/etc/passwd", GuestPath: "/etc/passwd"}, {HostPath: "/etc/group", GuestPath: "/etc/group"},
			{HostPath: treeRoot, GuestPath: "/srv/t"}},
	})
	text := "banana\napple\ncherry\napple\nbanana\nbanana\ndate 42\nelder berry\n"
	files := map[string][]byte{"words.txt": []byte(text), "nums.txt": []byte("3\n10\n2\n33\n1\n")}
	blob := make([]byte, 300<<10)
	rand.Read(blob)
	files["blob.bin"] = blob
	for n, b := range files {
		// 0444: the guest sees its inputs read-only, so the host copies are too.
		if err := os.WriteFile(filepath.Join(host, n), b, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	// Archives made on the host with busybox itself.
	mk := func(args ...string) {
		cmd := exec.Command("/usr/bin/busybox", args...)
		cmd.Dir = host
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	mk("sh", "-c", "gzip -c words.txt > words.txt.gz")
	mk("tar", "-cf", "a.tar", "words.txt", "nums.txt")
	zf, err := os.Create(filepath.Join(host, "a.zip"))
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(zf)
	for _, n := range []string{"words.txt", "nums.txt"} {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: n, Method: zip.Deflate, Modified: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(files[n])
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	zf.Close()
	// A tar of a small tree, for tar -x into /tmp.
	src := t.TempDir()
	mustOK := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mustOK(os.MkdirAll(filepath.Join(src, "d", "e"), 0o755))
	mustOK(os.WriteFile(filepath.Join(src, "top.txt"), []byte(text), 0o644))
	mustOK(os.WriteFile(filepath.Join(src, "d", "f.txt"), []byte("f\n"), 0o640))
	mustOK(os.WriteFile(filepath.Join(src, "d", "e", "g.bin"), blob[:5000], 0o600))
	mustOK(os.Symlink("d/f.txt", filepath.Join(src, "link")))
	mustOK(os.Chmod(filepath.Join(src, "d", "e"), 0o700))
	for i, n := range []string{"top.txt", "d/f.txt", "d/e/g.bin", "d/e", "d"} {
		mt := time.Date(2025, 3, 4, 5, 6, i, 0, time.UTC)
		mustOK(os.Chtimes(filepath.Join(src, n), mt, mt))
	}
	tarCmd := exec.Command("/usr/bin/busybox", "tar", "-cf", filepath.Join(host, "tree.tar"), "top.txt", "d", "link")
	tarCmd.Dir = src
	if out, err := tarCmd.CombinedOutput(); err != nil {
		t.Fatalf("tar -c: %v\n%s", err, out)
	}
	for _, n := range []string{"a.tar", "a.zip", "words.txt.gz", "tree.tar"} {
		os.Chmod(filepath.Join(host, n), 0o444)
	}
	var inputs []Input
	names, _ := os.ReadDir(host)
	for _, e := range names {
		inputs = append(inputs, Input{Name: e.Name(), HostPath: filepath.Join(host, e.Name())})
	}
	// The guest runs in /input, the host in the directory holding the same files.
	in := func(n string) string { return n }
	bb := "/usr/bin/busybox"
	for _, c := range []struct {
		name  string
		guest []string
		stdin string
		dir   string // "tree": run in the packed host directory, not in /input; "extract": also compare what it writes to /tmp
		sort  bool   // compare the lines sorted: the host lists directories in ext4's hash order
	}{
		{"echo", []string{"echo", "hello", "world"}, "", "", false},
		{"true", []string{"true"}, "", "", false},
		{"false", []string{"false"}, "", "", false},
		{"sha256sum", []string{"sha256sum", in("blob.bin")}, "", "", false},
		{"sha1sum", []string{"sha1sum", in("words.txt")}, "", "", false},
		{"md5sum", []string{"md5sum", in("blob.bin"), in("words.txt")}, "", "", false},
		{"wc", []string{"wc", in("words.txt")}, "", "", false},
		{"wc -c blob", []string{"wc", "-c", in("blob.bin")}, "", "", false},
		{"sort", []string{"sort", in("words.txt")}, "", "", false},
		{"sort -n -r", []string{"sort", "-n", "-r", in("nums.txt")}, "", "", false},
		{"uniq -c", []string{"uniq", "-c", in("words.txt")}, "", "", false},
		{"sh builtins", []string{"sh", "-c", "for w in a b c; do echo $w; done; x=$((6*7)); echo $x"}, "", "", false},
		{"unzip -l", []string{"unzip", "-l", in("a.zip")}, "", "", false},
		{"unzip -p", []string{"unzip", "-p", in("a.zip"), "nums.txt"}, "", "", false},
		{"ls -ln files", []string{"ls", "-ln", "a.tar", "blob.bin", "nums.txt", "words.txt"}, "", "", false},
		{"ls -lan image files", []string{"ls", "-lan", "/usr/bin/busybox", "/etc/services"}, "", "", false},
		{"ls -1", []string{"ls", "-1"}, "", "", false},
		{"stat", []string{"stat", "-c", "%n %s %a %F", in("words.txt")}, "", "", false},
		{"find", []string{"find", ".", "-name", "*.txt"}, "", "", false},
		{"diff", []string{"diff", in("words.txt"), in("nums.txt")}, "", "", false},
		{"cmp", []string{"cmp", in("words.txt"), in("words.txt")}, "", "", false},
		{"fold", []string{"fold", "-w", "4", in("words.txt")}, "", "", false},
		{"tac", []string{"tac", in("words.txt")}, "", "", false},
		{"dd", []string{"dd", "if=" + in("blob.bin"), "bs=1000", "count=3", "status=none"}, "", "", false},
		{"xxd", []string{"xxd", "-l", "64", in("blob.bin")}, "", "", false},
		{"uniq", []string{"uniq", in("words.txt")}, "", "", false},
		{"sed", []string{"sed", "-e", "s/an/AN/g", in("words.txt")}, "", "", false},
		{"awk", []string{"awk", "{ n += length($0) } END { print NR, n }", in("words.txt")}, "", "", false},
		{"grep", []string{"grep", "-n", "an", in("words.txt")}, "", "", false},
		{"grep -c", []string{"grep", "-c", "apple", in("words.txt")}, "", "", false},
		{"grep miss", []string{"grep", "zzz", in("words.txt")}, "", "", false},
		{"cut", []string{"cut", "-c", "1-3", in("words.txt")}, "", "", false},
		{"tr", []string{"tr", "a-z", "A-Z"}, text, "", false},
		{"head", []string{"head", "-n", "3", in("words.txt")}, "", "", false},
		{"tail", []string{"tail", "-n", "2", in("words.txt")}, "", "", false},
		{"od", []string{"od", "-A", "x", "-t", "x1z", "-N", "64", in("blob.bin")}, "", "", false},
		{"hexdump", []string{"hexdump", "-C", "-n", "96", in("blob.bin")}, "", "", false},
		{"base64", []string{"base64", in("words.txt")}, "", "", false},
		{"base64 -d", []string{"base64", "-d"}, "aGVsbG8gd29ybGQK\n", "", false},
		{"gzip -c", []string{"gzip", "-c", in("words.txt")}, "", "", false},
		{"gzip -d", []string{"gzip", "-d", "-c", in("words.txt.gz")}, "", "", false},
		{"gunzip -c", []string{"gunzip", "-c", in("words.txt.gz")}, "", "", false},
		{"tar -t", []string{"tar", "-tvf", in("a.tar")}, "", "", false},
		{"cat stdin", []string{"cat"}, text, "", false},
		{"rev", []string{"rev", in("words.txt")}, "", "", false},
		{"nl", []string{"nl", in("words.txt")}, "", "", false},
		{"expand", []string{"expand", in("nums.txt")}, "", "", false},
		{"cksum", []string{"cksum", in("blob.bin")}, "", "", false},
		{"seq", []string{"seq", "1", "3", "20"}, "", "", false},
		{"printf", []string{"printf", "%05d|%s|%x\\n", "42", "str", "255"}, "", "", false},
		{"expr", []string{"expr", "6", "*", "7"}, "", "", false},
		{"basename", []string{"basename", "/a/b/c.txt", ".txt"}, "", "", false},
		{"ls -la image dir", []string{"ls", "-la", "tree"}, "", "tree", false},
		{"ls -lan image dir", []string{"ls", "-lan", "tree"}, "", "tree", false},
		{"ls -la image subdir", []string{"ls", "-la", "tree/sub"}, "", "tree", false},
		{"ls -lan image dirs", []string{"ls", "-lan", "tree/sub", "tree/sub/deeper", "tree/empty"}, "", "tree", false},
		{"ls -ld image dirs", []string{"ls", "-ld", "tree", "tree/sub", "tree/sub/deeper"}, "", "tree", false},
		{"ls -laR image dir", []string{"ls", "-laR", "tree"}, "", "tree", false},
		{"stat image dir", []string{"stat", "-c", "%n %h %s %b %B %a %F", "tree", "tree/sub", "tree/a.txt", "tree/big.bin",
			"tree/none", "tree/link", "tree/longlink"}, "", "tree", false},
		{"find image dir", []string{"find", "tree"}, "", "tree", true},
		{"find image dirs", []string{"find", "tree", "-type", "d"}, "", "tree", true},
		{"du image dir", []string{"du", "-a", "tree"}, "", "tree", true},
		// Unpacked into /tmp (on the host into a directory of its own): the output, and
		// then the files, their modes, times and contents.
		{"tar -x into /tmp", []string{"tar", "-xvf", in("tree.tar"), "-C", "/tmp"}, "", "extract", false},
		{"tar -x two files into /tmp", []string{"tar", "-xf", in("a.tar"), "-C", "/tmp"}, "", "extract", false},
		{"unzip into /tmp", []string{"unzip", in("a.zip"), "-d", "/tmp"}, "", "extract", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stdin []byte
			if c.stdin != "" {
				stdin = []byte(c.stdin)
			}
			gdir, hdir := "/input", host
			if c.dir == "tree" {
				if treeSkip != "" {
					t.Skip(treeSkip)
				}
				gdir, hdir = "/srv/t", treeRoot
			}
			var gtree map[string]string
			var after func(*VM)
			hargs := c.guest
			hostTmp := ""
			if c.dir == "extract" {
				after = func(vm *VM) { gtree = guestTree(t, vm, "/tmp") }
				hostTmp = t.TempDir()
				hargs = slices.Clone(c.guest)
				for i, a := range hargs {
					if a == "/tmp" {
						hargs[i] = hostTmp
					}
				}
			}
			gout, gerr, res := runGuestThen(t, sys, im, gdir, inputs, stdin, after, append([]string{bb}, c.guest...)...)
			hout, hcode := hostRun(t, hdir, stdin, append([]string{bb}, hargs...)...)
			if hostTmp != "" {
				hout = strings.ReplaceAll(hout, hostTmp, "/tmp")
				if htree := hostTree(t, hostTmp); len(htree) == 0 || fmt.Sprint(gtree) != fmt.Sprint(htree) {
					t.Errorf("guest /tmp:\n%s\nhost:\n%s", fmtTree(gtree), fmtTree(htree))
				}
			}
			if c.sort {
				gout, hout = sortLines(gout), sortLines(hout)
			}
			if gout != hout || res.ExitCode != hcode {
				t.Errorf("guest exit %d (%s) stdout:\n%q\nstderr: %s\nhost exit %d stdout:\n%q\ndenied: %v",
					res.ExitCode, res.Reason, gout, gerr, hcode, hout, res.Stats.Denied)
			}
		})
	}
}

// TestCoreutilsMatchesHost runs GNU coreutils (dynamically linked) in micro VMs and on the
// host and compares their output where it is comparable: ls -l asks for extended
// attributes (security.selinux, system.posix_acl_access) of every file, which failed with
// ENOSYS ("Function not implemented", exit 1). Cases with dir "tree" list a host directory
// packed into the image, as in TestBusyboxMatchesHost. stat -f and df describe the guest's
// own file systems, which the host does not have: their fields are checked against the
// image and the VM's scratch limits.
func TestCoreutilsMatchesHost(t *testing.T) {
	sys := requireKVM(t)
	for _, p := range []string{"/usr/bin/ls", "/usr/bin/stat", "/usr/bin/df"} {
		requireFile(t, p)
	}
	treeRoot, treeSkip := makeHostTree(t)
	im := buildImage(t, "coreutils", image.BuildConfig{
		Programs: []string{"/usr/bin/ls", "/usr/bin/stat", "/usr/bin/df"},
		Files: []image.FileSpec{{HostPath: "/etc/services", GuestPath: "/etc/services"},
			{HostPath: "/etc/passwd", GuestPath: "/etc/passwd"}, {HostPath: "/etc/group", GuestPath: "/etc/group"},
			{HostPath: treeRoot, GuestPath: "/srv/t"}},
	})
	for _, c := range []struct {
		name string
		args []string
		dir  string // "tree": run in the packed host directory
	}{
		{"ls -l image files", []string{"ls", "-l", "/etc/services", "/etc/passwd", "/etc/group"}, ""},
		{"ls -ln image files", []string{"ls", "-ln", "/etc/services"}, ""},
		{"stat image file", []string{"stat", "-c", "%n %s %a %U %G %F %h %Y", "/etc/services"}, ""},
		{"ls -la image dir", []string{"ls", "-la", "tree"}, "tree"},
		{"ls -lR image dir", []string{"ls", "-lR", "tree"}, "tree"},
		{"ls -ld image dirs", []string{"ls", "-ld", "tree", "tree/sub", "tree/empty"}, "tree"},
		{"ls -l symlinks", []string{"ls", "-l", "tree/link", "tree/longlink"}, "tree"},
	} {
		t.Run(c.name, func(t *testing.T) {
			gdir, hdir := "/", "/"
			if c.dir == "tree" {
				if treeSkip != "" {
					t.Skip(treeSkip)
				}
				gdir, hdir = "/srv/t", treeRoot
			}
			args := append([]string{"/usr/bin/" + c.args[0]}, c.args[1:]...)
			gout, gerr, res := runGuestIn(t, sys, im, gdir, nil, nil, args...)
			hout, hcode := hostRun(t, hdir, nil, args...)
			if gout != hout || res.ExitCode != hcode || gerr != "" {
				t.Errorf("guest exit %d (%s) stdout:\n%s\nstderr: %s\nhost exit %d stdout:\n%s\ndenied: %v",
					res.ExitCode, res.Reason, gout, gerr, hcode, hout, res.Stats.Denied)
			}
		})
	}

	imgBlocks := (im.Size() + 4095) / 4096
	scratch := int64(DefaultScratchBytes)
	t.Run("stat -f", func(t *testing.T) {
		out, stderr, res := runGuest(t, sys, im, nil, nil, "/usr/bin/stat", "-f", "-c", "%n %T %s %S %l %b %f %a %c %d",
			"/usr/bin/ls", "/etc", "/tmp", "/work", "/proc/self")
		want := fmt.Sprintf("/usr/bin/ls ext2/ext3 4096 4096 255 %[1]d 0 0 %[2]d 0\n/etc ext2/ext3 4096 4096 255 %[1]d 0 0 %[2]d 0\n", imgBlocks, im.Len()) +
			fmt.Sprintf("/tmp tmpfs 4096 4096 255 %[1]d %[1]d %[1]d %[2]d %[2]d\n/work tmpfs 4096 4096 255 %[1]d %[1]d %[1]d %[2]d %[2]d\n", scratch/4096, guestfs.DefaultMaxFiles) +
			"/proc/self proc 4096 4096 255 0 0 0 0 0\n"
		if res.ExitCode != 0 || out != want {
			t.Errorf("exit %d (%s), stderr %q, output:\n%s\nwant:\n%s", res.ExitCode, res.Reason, stderr, out, want)
		}
	})
	t.Run("df", func(t *testing.T) {
		out, stderr, res := runGuest(t, sys, im, nil, nil, "/usr/bin/df", "-T", "/usr/bin/ls", "/work")
		kb := imgBlocks * 4
		want := [][]string{
			{"Filesystem", "Type", "1K-blocks", "Used", "Available", "Use%", "Mounted", "on"},
			{"isolator-image", "ext4", itoa(int(kb)), itoa(int(kb)), "0", "100%", "/"},
			{"tmpfs", "tmpfs", itoa(int(scratch / 1024)), "0", itoa(int(scratch / 1024)), "0%", "/work"},
		}
		var got [][]string
		for line := range strings.Lines(out) {
			got = append(got, strings.Fields(line))
		}
		if res.ExitCode != 0 || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("exit %d (%s), stderr %q, output:\n%s\nwant the fields %v", res.ExitCode, res.Reason, stderr, out, want)
		}
	})
}

// fmtTree lists a guestTree or hostTree, one file a line.
func fmtTree(tree map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(tree)) {
		fmt.Fprintf(&b, "\t%s: %s\n", k, tree[k])
	}
	return b.String()
}

// sortLines returns the lines of s sorted.
func sortLines(s string) string {
	lines := strings.SplitAfter(s, "\n")
	slices.Sort(lines)
	return strings.Join(lines, "")
}

// makeHostTree makes a directory holding tree/, a small tree of directories, files and
// symlinks, for TestBusyboxMatchesHost to pack with --add and list in the guest and on the
// host. skip says why listings of it cannot match, or is "".
func makeHostTree(t *testing.T) (root, skip string) {
	t.Helper()
	root = t.TempDir()
	tr := filepath.Join(root, "tree")
	for _, d := range []string{"", "sub", "sub/deeper", "sub/deeper/deepest", "sub/other", "empty"} {
		if err := os.Mkdir(filepath.Join(tr, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, size := range map[string]int{"a.txt": 5, "big.bin": 10000, "zero": 0, "sub/x.txt": 4096, "sub/deeper/y": 4097} {
		if err := os.WriteFile(filepath.Join(tr, name), bytes.Repeat([]byte("z"), size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(tr, "big.bin"), 0o600)
	os.Chmod(filepath.Join(tr, "sub/other"), 0o775) // the guest runs as uid 1000: it must be able to read every directory
	// A fast symlink (target under 60 bytes: no block on ext4) and a slow one.
	if err := os.Symlink("a.txt", filepath.Join(tr, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(strings.Repeat("long/", 15)+"target", filepath.Join(tr, "longlink")); err != nil {
		t.Fatal(err)
	}
	// Fixed times: the image built from the first tree is cached for the test binary, and a
	// later tree (go test -count=N) must list the same.
	fixed := unix.NsecToTimespec(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{fixed, fixed}, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		t.Fatal(err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(root, &sfs); err != nil {
		t.Fatal(err)
	}
	switch {
	case sfs.Type != unix.EXT4_SUPER_MAGIC:
		skip = fmt.Sprintf("skipping: %s is on a file system of type %#x, not ext4 (%#x), whose directory sizes and block counts the guest reports", root, sfs.Type, unix.EXT4_SUPER_MAGIC)
	case os.Getuid() != 0:
		skip = fmt.Sprintf("skipping: the host files are owned by uid %d; image files are root's in the guest", os.Getuid())
	}
	return root, skip
}

// TestTarExtractToOutput unpacks an archive under /output and checks the files returned.
func TestTarExtractToOutput(t *testing.T) {
	sys := requireKVM(t)
	im := busyboxImage(t)
	host := t.TempDir()
	os.WriteFile(filepath.Join(host, "a.txt"), []byte("alpha\n"), 0o644)
	os.MkdirAll(filepath.Join(host, "sub"), 0o755)
	os.WriteFile(filepath.Join(host, "sub", "b.txt"), []byte("beta\n"), 0o644)
	cmd := exec.Command("/usr/bin/busybox", "tar", "-cf", "x.tar", "a.txt", "sub") // -z would fork a decompressor: no processes yet
	cmd.Dir = host
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	_, stderr, res := runGuest(t, sys, im, []Input{{Name: "x.tar", HostPath: filepath.Join(host, "x.tar")}}, nil,
		"/usr/bin/busybox", "tar", "-xf", "/input/x.tar", "-C", "/output")
	if res.ExitCode != 0 {
		t.Fatalf("tar exit %d: %s %s", res.ExitCode, res.Reason, stderr)
	}
	got := map[string]string{}
	for _, o := range res.Outputs {
		got[o.Name] = string(o.Data)
	}
	want := map[string]string{"a.txt": "alpha\n", "sub/b.txt": "beta\n"}
	if len(got) != len(want) || got["a.txt"] != want["a.txt"] || got["sub/b.txt"] != want["sub/b.txt"] {
		t.Errorf("outputs %v, want %v", got, want)
	}
	// Also into /tmp, then list it: the scratch space is writable.
	out, _, res := runGuest(t, sys, im, []Input{{Name: "x.tar", HostPath: filepath.Join(host, "x.tar")}}, nil,
		"/usr/bin/busybox", "tar", "-xvf", "/input/x.tar", "-C", "/tmp")
	if res.ExitCode != 0 || out != "a.txt\nsub/\nsub/b.txt\n" {
		t.Errorf("tar -xv into /tmp: exit %d out %q", res.ExitCode, out)
	}
}

// buildGoProg compiles testdata/goprog as a static binary and packs it into an image.
func buildGoProg(t *testing.T) *image.Image {
	t.Helper()
	return buildTestProg(t, "goprog")
}

// buildTestProg compiles testdata/NAME as a static Go binary (CGO_ENABLED=0) and packs it
// into an image as /bin/NAME.
func buildTestProg(t *testing.T, name string) *image.Image {
	t.Helper()
	if v, ok := imageOnce.Load(name); ok {
		return v.(*image.Image)
	}
	bin := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/"+name)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return buildImage(t, name, image.BuildConfig{Files: []image.FileSpec{{HostPath: bin, GuestPath: "/bin/" + name}}})
}

// TestGoProgram runs a static Go program that uses goroutines, channels, timers, file
// reads, crypto and image/png 50 times, comparing each run's output and its /output/out.png
// with what the test computes on the host from the same input (goprogWant).
func TestGoProgram(t *testing.T) {
	sys := requireKVM(t)
	im := buildGoProg(t)
	dir := t.TempDir()
	data := make([]byte, 100<<10)
	rand.Read(data)
	in := filepath.Join(dir, "data.bin")
	os.WriteFile(in, data, 0o644)
	want, wantPNG := goprogWant(t, data)
	runs := 50
	if testing.Short() {
		runs = 5
	}
	for i := 0; i < runs; i++ {
		out, stderr, res := runGuest(t, sys, im, []Input{{Name: "data.bin", HostPath: in}}, nil, "/bin/goprog", "/input/data.bin")
		if res.ExitCode != 0 || res.TimedOut {
			t.Fatalf("run %d: exit %d (%s) timed out %v\nstderr: %s\nstats: %+v", i, res.ExitCode, res.Reason, res.TimedOut, stderr, res.Stats.Denied)
		}
		if out != want {
			t.Fatalf("run %d output:\n%s\nwant (computed on the host):\n%s", i, out, want)
		}
		if len(res.Outputs) != 1 || res.Outputs[0].Name != "out.png" || !bytes.Equal(res.Outputs[0].Data, wantPNG) {
			t.Fatalf("run %d outputs %v, want out.png of %d bytes as encoded on the host", i, outputNames(res.Outputs), len(wantPNG))
		}
	}
}

// goprogWant computes on the host what testdata/goprog prints for data, and the PNG file it
// writes: the XOR of SHA-256(data + "i") for its eight workers i, SHA-256(data), three
// ticks, the pixel it reads back at (10, 20) and the bounds.
func goprogWant(t *testing.T, data []byte) (string, []byte) {
	t.Helper()
	var x [32]byte
	for i := range 8 {
		s := sha256.Sum256(append(append([]byte(nil), data...), strconv.Itoa(i)...))
		for j := range x {
			x[j] ^= s[j]
		}
	}
	img := goimage.NewRGBA(goimage.Rect(0, 0, 64, 48))
	for y := range 48 {
		for xx := range 64 {
			img.Set(xx, y, color.RGBA{uint8(xx * 4), uint8(y * 5), data[(xx+y)%len(data)], 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("sha256 %x\nfile %x\nticks 3\npixel %d %d %d\nbounds (0,0)-(64,48)\n",
		x, sha256.Sum256(data), 10*4, 20*5, data[30])
	return want, buf.Bytes()
}

func outputNames(outs []Output) []string {
	var names []string
	for _, o := range outs {
		names = append(names, fmt.Sprintf("%s (%d bytes)", o.Name, len(o.Data)))
	}
	return names
}

// TestMunmapAcrossThreads runs testdata/mmapstress: goroutines on several guest threads map,
// fill, check through the VMM and unmap memory whose frames are recycled at once, so a stale
// translation left on any vCPU after munmap shows up as a mismatch.
func TestMunmapAcrossThreads(t *testing.T) {
	sys := requireKVM(t)
	im := buildTestProg(t, "mmapstress")
	var stdout, stderr bytes.Buffer
	res, err := Run(context.Background(), Config{KVM: sys, Image: im, Program: "/bin/mmapstress",
		Args: []string{"/bin/mmapstress", "8", "300"}, Env: []string{"GOMAXPROCS=4"},
		Stdout: &stdout, Stderr: &stderr, Timeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || stdout.String() != "ok 2400\n" {
		t.Fatalf("exit %d (%s), stdout %q, stderr %q", res.ExitCode, res.Reason, stdout.String(), stderr.String())
	}
	if res.Stats.Threads < 2 {
		t.Errorf("ran on %d guest threads, want several", res.Stats.Threads)
	}
	if n := res.Stats.Syscalls["munmap"]; n < 2400 {
		t.Errorf("%d munmap calls, want at least 2400", n)
	}
}

// TestDynamicPrograms runs dynamically linked Debian programs through their PT_INTERP.
func TestDynamicPrograms(t *testing.T) {
	sys := requireKVM(t)
	requireFile(t, "/usr/bin/sha256sum")
	requireFile(t, "/usr/bin/pdftotext")
	im := buildImage(t, "dynamic", image.BuildConfig{Programs: []string{"/usr/bin/sha256sum", "/usr/bin/pdftotext"}})
	dir := t.TempDir()
	data := make([]byte, 1<<20)
	rand.Read(data)
	in := filepath.Join(dir, "data.bin")
	os.WriteFile(in, data, 0o644)
	out, stderr, res := runGuestIn(t, sys, im, "/input", []Input{{Name: "data.bin", HostPath: in}}, nil, "/usr/bin/sha256sum", "data.bin")
	hout, _ := hostRun(t, dir, nil, "/usr/bin/sha256sum", "data.bin")
	if res.ExitCode != 0 || out != hout {
		t.Errorf("sha256sum: exit %d (%s) out %q stderr %q, host %q", res.ExitCode, res.Reason, out, stderr, hout)
	}

	pdf := filepath.Join(dir, "doc.pdf")
	os.WriteFile(pdf, minimalPDF("Isolated hello from a micro VM"), 0o644)
	out, stderr, res = runGuest(t, sys, im, []Input{{Name: "doc.pdf", HostPath: pdf}}, nil, "/usr/bin/pdftotext", "/input/doc.pdf", "/output/doc.txt")
	if res.ExitCode != 0 {
		t.Fatalf("pdftotext: exit %d (%s) stderr %q denied %v", res.ExitCode, res.Reason, stderr, res.Stats.Denied)
	}
	hostTxt := filepath.Join(dir, "doc.txt")
	if _, code := hostRun(t, dir, nil, "/usr/bin/pdftotext", pdf, hostTxt); code != 0 {
		t.Fatalf("pdftotext on the host: exit %d", code)
	}
	want, err := os.ReadFile(hostTxt)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(want), "Isolated hello from a micro VM") {
		t.Fatalf("pdftotext on the host wrote %q: not the text of the PDF", want)
	}
	if len(res.Outputs) != 1 || res.Outputs[0].Name != "doc.txt" || !bytes.Equal(res.Outputs[0].Data, want) {
		var got []string
		for _, o := range res.Outputs {
			got = append(got, fmt.Sprintf("%s: %q", o.Name, o.Data))
		}
		t.Errorf("pdftotext outputs %v, stdout %q; want doc.txt of %q, as on the host", got, out, want)
	}
}

// minimalPDF returns a one-page PDF showing text, with a correct cross-reference table.
func minimalPDF(text string) []byte {
	content := "BT /F1 24 Tf 72 720 Td (" + text + ") Tj ET"
	objs := []string{
		"<< /Type /Catalog /Pages 2 0 R >>",
		"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
		"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
		"<< /Length " + itoa(len(content)) + " >>\nstream\n" + content + "\nendstream",
		"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
	}
	var b bytes.Buffer
	b.WriteString("%PDF-1.4\n")
	offs := make([]int, len(objs))
	for i, o := range objs {
		offs[i] = b.Len()
		b.WriteString(itoa(i+1) + " 0 obj\n" + o + "\nendobj\n")
	}
	xref := b.Len()
	b.WriteString("xref\n0 " + itoa(len(objs)+1) + "\n0000000000 65535 f \n")
	for _, o := range offs {
		s := itoa(o)
		b.WriteString(strings.Repeat("0", 10-len(s)) + s + " 00000 n \n")
	}
	b.WriteString("trailer\n<< /Size " + itoa(len(objs)+1) + " /Root 1 0 R >>\nstartxref\n" + itoa(xref) + "\n%%EOF\n")
	return b.Bytes()
}

func itoa(n int) string { return strconv.Itoa(n) }
