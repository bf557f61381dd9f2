package cli

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/isolator-dev/isolator/pkg/image"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

func TestImageBuildAndLs(t *testing.T) {
	for _, p := range []string{"/usr/bin/busybox", "/usr/bin/sha256sum"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s (Debian packages busybox-static, coreutils): %v", p, err)
		}
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	os.MkdirAll(filepath.Join(data, "sub"), 0o755)
	os.WriteFile(filepath.Join(data, "sub", "note.txt"), []byte("note\n"), 0o640)
	os.Symlink("sub/note.txt", filepath.Join(data, "link"))
	conf := filepath.Join(dir, "app.conf")
	os.WriteFile(conf, []byte("x=1\n"), 0o755)
	os.Chmod(conf, fs.ModeSetuid|0o755)
	out := filepath.Join(dir, "guest.img")

	var stdout, stderr bytes.Buffer
	code := run([]string{"image", "build", "--output", out,
		"--add", data + ":/srv/data", "--add", conf + ":/etc/app.conf",
		"/usr/bin/busybox", "sha256sum"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("image build exited %d\nstdout: %s\nstderr: %s", code, &stdout, &stderr)
	}
	for _, want := range []string{
		"program /usr/bin/busybox", "program /usr/bin/sha256sum",
		"library libc.so.6 -> ", "interpreter /lib64/ld-linux-x86-64.so.2 -> ", "directory " + data + " -> /srv/data",
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("progress on stderr lacks %q:\n%s", want, &stderr)
		}
	}
	im, err := image.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	m := regexp.MustCompile(`^` + regexp.QuoteMeta(out) + `: (\d+) entries .*, (\d+) bytes\nsha256 ([0-9a-f]{64})\n$`).FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("unexpected summary %q", &stdout)
	}
	fi, _ := os.Stat(out)
	digest, err := im.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if m[1] != strconv.Itoa(im.Len()) || m[2] != strconv.Itoa(int(fi.Size())) || m[3] != digest {
		t.Errorf("summary %q does not match the image: %d entries, %d bytes, %s", &stdout, im.Len(), fi.Size(), digest)
	}

	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"image", "ls", out}, &stdout, &stderr); code != 0 {
		t.Fatalf("image ls exited %d: %s", code, &stderr)
	}
	lines := strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n")
	if len(lines) != im.Len() {
		t.Errorf("image ls printed %d lines for %d entries:\n%s", len(lines), im.Len(), &stdout)
	}
	for _, re := range []string{
		`^drwxr-xr-x +0 1970-01-01 00:00 /$`,
		`^-rwxr-xr-x +1\d{6} \d{4}-\d\d-\d\d \d\d:\d\d /usr/bin/busybox$`,
		`^lrwxrwxrwx +9 .* /lib64 -> usr/lib64$`,
		`^lrwxrwxrwx +12 .* /srv/data/link -> sub/note.txt$`,
		`^-rw-r----- +5 .* /srv/data/sub/note.txt$`,
		`^-rwsr-xr-x +4 .* /etc/app.conf$`,
	} {
		if !regexp.MustCompile(`(?m)` + re).MatchString(stdout.String()) {
			t.Errorf("image ls output has no line matching %s:\n%s", re, &stdout)
		}
	}

	stdout.Reset()
	if code := run([]string{"image", "ls", "-i", out, "/srv/data"}, &stdout, &stderr); code != 0 {
		t.Fatalf("image ls DIR exited %d: %s", code, &stderr)
	}
	if !regexp.MustCompile(`^\d+ lrwxrwxrwx 12 .* /srv/data/link -> sub/note.txt\n\d+ drwxr-xr-x +0 .* /srv/data/sub\n$`).MatchString(stdout.String()) {
		t.Errorf("image ls -i FILE /srv/data printed %q", &stdout)
	}
}

func TestImageErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.img")
	os.WriteFile(bad, []byte("ISOLIMG\x00 definitely not an image"), 0o644)
	script := filepath.Join(dir, "script")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no output flag", []string{"image", "build", "/usr/bin/busybox"}, `required flag(s) "output"`},
		{"nothing to pack", []string{"image", "build", "-o", filepath.Join(dir, "x.img")}, "nothing to pack: give at least one PROGRAM or --add"},
		{"missing program", []string{"image", "build", "-o", filepath.Join(dir, "x.img"), filepath.Join(dir, "nope")}, "not found"},
		{"unknown program", []string{"image", "build", "-o", filepath.Join(dir, "x.img"), "no-such-program-anywhere"}, "not found in $PATH"},
		{"not an ELF", []string{"image", "build", "-o", filepath.Join(dir, "x.img"), script}, "not an x86-64 ELF program"},
		{"empty add", []string{"image", "build", "-o", filepath.Join(dir, "x.img"), "--add", ":/x", "/usr/bin/busybox"}, "empty host path"},
		{"corrupt image", []string{"image", "ls", bad}, "corrupt image"},
		{"missing image", []string{"image", "ls", filepath.Join(dir, "none.img")}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tt.args, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("isoctl %q exited %d with stderr %q; want 1 and %q", tt.args, code, &stderr, tt.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "x.img")); err == nil {
		t.Error("a failed build left an image behind")
	}
}

// TestImageBuildRefusesHiddenPaths: the micro VM mounts /tmp, /work, /input, /output,
// /dev and /proc over the image, so image build refuses a program or an --add GUESTPATH
// there, naming the mount and saying how to pack it elsewhere, and writes no image; the
// --add it suggests works.
func TestImageBuildRefusesHiddenPaths(t *testing.T) {
	if _, err := os.Stat("/usr/bin/busybox"); err != nil {
		t.Skipf("needs /usr/bin/busybox (Debian package busybox-static): %v", err)
	}
	tmp, err := os.MkdirTemp("/tmp", "isoctl-hidden-") // under the guest's /tmp whatever $TMPDIR says
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	prog := filepath.Join(tmp, "prog")
	copyFileMode(t, "/usr/bin/busybox", prog, 0o755)
	out := filepath.Join(t.TempDir(), "x.img")
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"program under /tmp", []string{prog},
			": program " + prog + ": guest path " + prog + " is hidden by the micro VM's /tmp mount: the guest would not see it " +
				"(/tmp is the guest's scratch space); pack it at another guest path with --add " + prog + ":/usr/local/bin/prog\n"},
		{"--add under /tmp by default", []string{"--add", tmp, "/usr/bin/busybox"},
			": add " + tmp + ": guest path " + tmp + " is hidden by the micro VM's /tmp mount: the guest would not see it " +
				"(/tmp is the guest's scratch space); give it a GUESTPATH elsewhere, e.g. --add " + tmp + ":/srv/" + filepath.Base(tmp) + "\n"},
		{"--add at /work", []string{"--add", tmp + ":/work", "/usr/bin/busybox"}, "hidden by the micro VM's /work mount"},
		{"--add under /output", []string{"--add", prog + ":/output/prog", "/usr/bin/busybox"}, "hidden by the micro VM's /output mount"},
		{"--add under /input", []string{"--add", prog + ":/input/prog", "/usr/bin/busybox"}, "hidden by the micro VM's /input mount"},
		{"--add under /dev", []string{"--add", prog + ":/dev/prog", "/usr/bin/busybox"}, "hidden by the micro VM's /dev mount"},
		{"--add under /proc", []string{"--add", prog + ":/proc/self/prog", "/usr/bin/busybox"}, "hidden by the micro VM's /proc mount"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"image", "build", "-q", "-o", out}, tt.args...), &stdout, &stderr)
			if code != 1 || !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("exit %d, stderr %q; want 1 and %q", code, &stderr, tt.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Error("an image was written")
			}
		})
	}
	// What the error suggests packs the program where the guest finds it.
	var stdout, stderr bytes.Buffer
	if code := run([]string{"image", "build", "-q", "-o", out, "--add", prog + ":/usr/local/bin/prog", "/usr/bin/busybox"}, &stdout, &stderr); code != 0 {
		t.Fatalf("build with the suggested --add: exit %d: %s", code, &stderr)
	}
	im, err := image.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if e, err := im.Lookup("/usr/local/bin/prog"); err != nil || !e.IsRegular() {
		t.Errorf("/usr/local/bin/prog in the image: %v", err)
	}

	// The --add alone, with no PROGRAM, as the hint reads: a static program needs nothing
	// else, and runs.
	addOnly := filepath.Join(t.TempDir(), "add.img")
	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"image", "build", "-q", "-o", addOnly, "--add", prog + ":/usr/local/bin/busybox"}, &stdout, &stderr); code != 0 {
		t.Fatalf("build with --add only: exit %d: %s", code, &stderr)
	}
	if !strings.Contains(stdout.String(), "1 files") {
		t.Errorf("build with --add only printed %q, want one file", &stdout)
	}
	if ok, why := kvmhv.Available(); !ok {
		t.Skipf("skipping the run of the image: /dev/kvm unavailable: %s", why)
	}
	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"run", "--image", addOnly, "/usr/local/bin/busybox", "echo", "packed with --add"}, &stdout, &stderr); code != 0 || stdout.String() != "packed with --add\n" {
		t.Errorf("run of the --add image: exit %d, stdout %q, stderr %q", code, &stdout, &stderr)
	}
}

// copyFileMode copies src to dst with mode perm.
func copyFileMode(t *testing.T, src, dst string, perm os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, perm); err != nil {
		t.Fatal(err)
	}
}

func TestLsMode(t *testing.T) {
	for _, tt := range []struct {
		mode fs.FileMode
		want string
	}{
		{fs.ModeDir | 0o755, "drwxr-xr-x"},
		{fs.ModeSymlink | 0o777, "lrwxrwxrwx"},
		{0o644, "-rw-r--r--"},
		{fs.ModeSetuid | 0o755, "-rwsr-xr-x"},
		{fs.ModeSetuid | 0o644, "-rwSr--r--"},
		{fs.ModeSetgid | 0o2750&0o777, "-rwxr-s---"},
		{fs.ModeDir | fs.ModeSticky | 0o1777&0o777, "drwxrwxrwt"},
		{fs.ModeDir | fs.ModeSticky | 0o700, "drwx-----T"},
	} {
		if got := lsMode(tt.mode); got != tt.want {
			t.Errorf("lsMode(%v) = %s, want %s", tt.mode, got, tt.want)
		}
	}
}
