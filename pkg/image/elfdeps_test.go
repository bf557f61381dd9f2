package image

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// extract writes the image's tree under dir, as the guest would see it.
func extract(t *testing.T, im *Image, dir string) {
	t.Helper()
	err := im.Walk(func(e *Entry) error {
		p := filepath.Join(dir, e.Path)
		switch {
		case e.IsDir():
			return os.MkdirAll(p, e.Mode.Perm()|0o700)
		case e.IsSymlink():
			return os.Symlink(e.Target, p)
		default:
			r, err := im.Open(e)
			if err != nil {
				return err
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, e.Mode.Perm())
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, r); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		}
	})
	if err != nil {
		t.Fatalf("extract: %v", err)
	}
}

// runChroot runs argv inside root with an empty environment and returns its output.
func runChroot(t *testing.T, root string, argv ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running a program from an extracted image needs root for chroot")
	}
	chroot, err := exec.LookPath("chroot")
	if err != nil {
		t.Skipf("needs chroot(8): %v", err)
	}
	// The dynamic loader finds $ORIGIN of the program through /proc/self/exe.
	proc := filepath.Join(root, "proc")
	if err := os.MkdirAll(proc, 0o555); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("proc", proc, "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		t.Skipf("cannot mount proc in the test root: %v", err)
	}
	defer syscall.Unmount(proc, syscall.MNT_DETACH)
	cmd := exec.Command(chroot, append([]string{root}, argv...)...)
	cmd.Env = []string{}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("chroot %s %q: %v\n%s", root, argv, err, out)
	}
	return string(out)
}

// TestImageRunsInChroot checks that an image holds everything the dynamic loader needs: the
// extracted tree alone runs the programs.
func TestImageRunsInChroot(t *testing.T) {
	needHostFiles(t, busybox, sha256sum)
	tree := smallTree(t)
	im, _ := buildImage(t, BuildConfig{Programs: []string{sha256sum, busybox}, Files: tree})
	root := t.TempDir()
	extract(t, im, root)

	got := runChroot(t, root, sha256sum, "/data/sub/a-b")
	want, err := exec.Command(sha256sum, filepath.Join(tree[0].HostPath, "sub", "a-b")).Output()
	if err != nil {
		t.Fatal(err)
	}
	if gotSum, _, _ := strings.Cut(got, " "); !strings.HasPrefix(string(want), gotSum+" ") {
		t.Errorf("sha256sum in the image printed %q, on the host %q", got, want)
	}
	if got := runChroot(t, root, busybox, "cat", "/data/rel-link"); got != "hello, guest\n" {
		t.Errorf("busybox cat printed %q", got)
	}
}

// needCC skips the test when no C compiler is installed.
func needCC(t *testing.T) string {
	t.Helper()
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skipf("needs a C compiler to make test programs with RPATH/RUNPATH: %v", err)
	}
	return cc
}

func compile(t *testing.T, cc, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(cc, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cc %q: %v\n%s", args, err, out)
	}
}

// makeLibs builds, under dir, lib/libfoo.so.1 (a symlink to libfoo.so.1.0) and
// lib/libbar.so.1, which needs libfoo.so.1 through DT_RUNPATH $ORIGIN.
func makeLibs(t *testing.T, cc, dir string) {
	t.Helper()
	lib := filepath.Join(dir, "lib")
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "foo.c"), []byte("int foo(void) { return 42; }\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "bar.c"), []byte("int foo(void);\nint bar(void) { return foo() - 42; }\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "prog.c"), []byte("int bar(void);\nint main(void) { return bar(); }\n"), 0o644)
	compile(t, cc, dir, "-shared", "-fPIC", "-Wl,-soname,libfoo.so.1", "-o", "lib/libfoo.so.1.0", "foo.c")
	if err := os.Symlink("libfoo.so.1.0", filepath.Join(lib, "libfoo.so.1")); err != nil {
		t.Fatal(err)
	}
	compile(t, cc, dir, "-shared", "-fPIC", "-Wl,-soname,libbar.so.1", "-o", "lib/libbar.so.1", "bar.c",
		"-Llib", "-l:libfoo.so.1", "-Wl,--enable-new-dtags,-rpath,$ORIGIN")
}

func TestLibrarySearchPaths(t *testing.T) {
	needHostFiles(t, sha256sum)
	cc := needCC(t)
	dir := t.TempDir()
	makeLibs(t, cc, dir)
	lib := filepath.Join(dir, "lib")
	link := func(name string, flags ...string) string {
		args := append([]string{"-o", "bin/" + name, "prog.c", "-Llib", "-l:libbar.so.1", "-Wl,-rpath-link," + lib}, flags...)
		os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
		compile(t, cc, dir, args...)
		return filepath.Join(dir, "bin", name)
	}
	runpath := link("runpath", "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib")
	rpath := link("rpath", "-Wl,--disable-new-dtags,-rpath,$ORIGIN/../lib")
	absolute := link("absolute", "-Wl,--enable-new-dtags,-rpath,"+lib)
	plain := link("plain")
	// $ORIGIN of a program started through a symlink is the directory of the real file.
	viaLink := filepath.Join(dir, "a", "b", "prog")
	os.MkdirAll(filepath.Dir(viaLink), 0o755)
	if err := os.Symlink("../../bin/runpath", viaLink); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		cfg     BuildConfig
		missing string // library expected to be missing, "" for success
	}{
		{"runpath origin", BuildConfig{Programs: []string{runpath}}, ""},
		{"rpath origin", BuildConfig{Programs: []string{rpath}}, ""},
		{"program through a symlink", BuildConfig{Programs: []string{viaLink}}, ""},
		{"absolute runpath", BuildConfig{Programs: []string{absolute}}, ""},
		{"library path", BuildConfig{Programs: []string{plain}, LibraryPath: []string{lib}}, ""},
		{"no search path", BuildConfig{Programs: []string{plain}}, "libbar.so.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			rep, err := Build(&buf, tt.cfg)
			if tt.missing != "" {
				var ml *MissingLibraryError
				if !errors.As(err, &ml) || ml.Library != tt.missing || ml.NeededBy != plain {
					t.Fatalf("Build error %v, want %s missing", err, tt.missing)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, l := range rep.Libraries {
				names = append(names, l.Name+"="+l.RealPath)
			}
			for _, want := range []string{
				"libbar.so.1=" + filepath.Join(lib, "libbar.so.1"),
				"libfoo.so.1=" + filepath.Join(lib, "libfoo.so.1.0"),
				"libc.so.6=",
			} {
				if !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, want) }) {
					t.Errorf("libraries %q lack %s", names, want)
				}
			}
			im, err := Load(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
			if err != nil {
				t.Fatal(err)
			}
			// The soname symlink is kept, pointing at the real file.
			if e, err := im.Lookup(filepath.Join(lib, "libfoo.so.1")); err != nil || e.Target != "libfoo.so.1.0" {
				t.Errorf("libfoo.so.1 = %+v, %v", e, err)
			}
			if tt.cfg.LibraryPath != nil {
				return // the guest's ld.so would need LD_LIBRARY_PATH
			}
			root := t.TempDir()
			extract(t, im, root)
			runChroot(t, root, tt.cfg.Programs[0]) // exits 0 only if foo() returned 42
		})
	}
}

// TestLdsoConfLibrary checks that a library found only through an ld.so.conf directory is
// packed together with /etc/ld.so.cache, through which the guest's ld.so finds it.
func TestLdsoConfLibrary(t *testing.T) {
	needHostFiles(t, sha256sum, "/etc/ld.so.cache")
	cc := needCC(t)
	dir := t.TempDir()
	makeLibs(t, cc, dir)
	lib := filepath.Join(dir, "lib")
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	compile(t, cc, dir, "-o", "bin/plain", "prog.c", "-Llib", "-l:libbar.so.1", "-Wl,-rpath-link,"+lib)
	prog := filepath.Join(dir, "bin", "plain")
	conf := filepath.Join(dir, "ld.so.conf")
	os.WriteFile(conf, []byte("# test\n"+lib+"\n"), 0o644)

	var buf bytes.Buffer
	rep, err := build(&buf, BuildConfig{Programs: []string{prog}}, conf)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(rep.Libraries, func(l Library) bool { return l.Name == "libbar.so.1" && l.Path == filepath.Join(lib, "libbar.so.1") }) {
		t.Errorf("libbar.so.1 not resolved through ld.so.conf: %+v", rep.Libraries)
	}
	im, err := Load(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.Lookup("/etc/ld.so.cache"); err != nil {
		t.Errorf("/etc/ld.so.cache not packed: %v", err)
	}

	// Libraries in the default directories need no cache.
	buf.Reset()
	if _, err := build(&buf, BuildConfig{Programs: []string{sha256sum}}, conf); err != nil {
		t.Fatal(err)
	}
	if im, err = Load(bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
		t.Fatal(err)
	}
	if _, err := im.Lookup("/etc/ld.so.cache"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("/etc/ld.so.cache packed for %s: %v", sha256sum, err)
	}
}

func TestParseLdsoConf(t *testing.T) {
	conf := `# comment
/usr/local/lib
include /etc/ld.so.conf.d/*.conf
include extra/*.conf # trailing comment
hwcap 1 nosegneg
/opt/a:/opt/b, /opt/c	/opt/d/../e
relative/dir
   
/usr/lib/x86_64-linux-gnu/  # trailing slash
`
	got := parseLdsoConf(bufio.NewScanner(strings.NewReader(conf)), "/etc")
	want := []ldsoItem{
		{path: "/usr/local/lib"},
		{include: true, path: "/etc/ld.so.conf.d/*.conf"},
		{include: true, path: "/etc/extra/*.conf"},
		{path: "/opt/a"}, {path: "/opt/b"}, {path: "/opt/c"}, {path: "/opt/e"},
		{path: "/usr/lib/x86_64-linux-gnu"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("parseLdsoConf = %+v\nwant %+v", got, want)
	}
}

func TestLdsoConfDirs(t *testing.T) {
	dir := t.TempDir()
	d := filepath.Join(dir, "conf.d")
	os.Mkdir(d, 0o755)
	os.WriteFile(filepath.Join(dir, "ld.so.conf"), []byte("/first\ninclude conf.d/*.conf\n/last\n/first\n"), 0o644)
	os.WriteFile(filepath.Join(d, "b.conf"), []byte("/b\n"), 0o644)
	os.WriteFile(filepath.Join(d, "a.conf"), []byte("/a\ninclude "+filepath.Join(dir, "ld.so.conf")+"\n"), 0o644)
	os.WriteFile(filepath.Join(d, "ignored.txt"), []byte("/ignored\n"), 0o644)

	// A self-include is cut off by the depth limit.
	if _, err := ldsoConfDirs(filepath.Join(dir, "ld.so.conf")); err == nil {
		t.Error("recursive include accepted")
	}
	os.WriteFile(filepath.Join(d, "a.conf"), []byte("/a\n"), 0o644)
	got, err := ldsoConfDirs(filepath.Join(dir, "ld.so.conf"))
	if want := []string{"/first", "/a", "/b", "/last"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("ldsoConfDirs = %q, %v; want %q", got, err, want)
	}
	if got, err := ldsoConfDirs(filepath.Join(dir, "missing")); err != nil || len(got) != 0 {
		t.Errorf("missing file: %q, %v", got, err)
	}
}

func FuzzParseLdsoConf(f *testing.F) {
	f.Add("/usr/lib\ninclude /etc/ld.so.conf.d/*.conf\n# c\nhwcap 0 x\n/a:/b,/c\n")
	f.Add("include a b c\n\x00/\n")
	f.Fuzz(func(t *testing.T, conf string) {
		for _, it := range parseLdsoConf(bufio.NewScanner(strings.NewReader(conf)), "/etc") {
			if !strings.HasPrefix(it.path, "/") || strings.Contains(it.path, "\x00") {
				t.Errorf("bad item %+v", it)
			}
			if !it.include && filepath.Clean(it.path) != it.path {
				t.Errorf("unclean directory %q", it.path)
			}
		}
	})
}

func TestExpandDST(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"$ORIGIN/../lib", "/opt/app/bin/../lib"},
		{"${ORIGIN}/lib", "/opt/app/bin/lib"},
		{"/usr/$LIB/x", "/usr/lib/x86_64-linux-gnu/x"},
		{"/p/${PLATFORM}", "/p/x86_64"},
		{"/plain", "/plain"},
	} {
		if got := expandDST(tt.in, "/opt/app/bin"); got != tt.want {
			t.Errorf("expandDST(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestManyLibrariesRunInChroot packs a program with a deep library closure (poppler).
func TestManyLibrariesRunInChroot(t *testing.T) {
	const pdftotext = "/usr/bin/pdftotext"
	needHostFiles(t, pdftotext)
	im, rep := buildImage(t, BuildConfig{Programs: []string{pdftotext}})
	if len(rep.Libraries) < 5 {
		t.Errorf("only %d libraries resolved for %s: %+v", len(rep.Libraries), pdftotext, rep.Libraries)
	}
	root := t.TempDir()
	extract(t, im, root)
	if out := runChroot(t, root, pdftotext, "-v"); !strings.Contains(out, "pdftotext version") {
		t.Errorf("pdftotext -v in the image printed %q", out)
	}
}
