package guestfs

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"unicode"

	"golang.org/x/sys/unix"
)

func TestInputs(t *testing.T) {
	im := buildImage(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.pdf")
	if err := os.WriteFile(good, []byte("%PDF-1.7 input"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.pdf")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		inputs []Input
		errno  unix.Errno // want an error carrying this errno, or
		config bool       // want ErrInvalidConfig
	}{
		{name: "symlink host file", inputs: []Input{{"a", link}}, errno: unix.ELOOP},
		{name: "fifo", inputs: []Input{{"a", fifo}}, config: true},
		{name: "directory", inputs: []Input{{"a", dir}}, config: true},
		{name: "missing", inputs: []Input{{"a", filepath.Join(dir, "nope")}}, errno: unix.ENOENT},
		{name: "slash in name", inputs: []Input{{"a/b", good}}, config: true},
		{name: "dotdot name", inputs: []Input{{"..", good}}, config: true},
		{name: "empty name", inputs: []Input{{"", good}}, config: true},
		{name: "long name", inputs: []Input{{strings.Repeat("n", 256), good}}, config: true},
		{name: "duplicate", inputs: []Input{{"a", good}, {"a", good}}, config: true},
		{name: "second bad", inputs: []Input{{"a", good}, {"b", link}}, errno: unix.ELOOP},
	}
	before := countFDs(t)
	for _, tt := range tests {
		f, err := New(Config{Image: im, Inputs: tt.inputs})
		if err == nil {
			f.Close()
			t.Errorf("%s: New succeeded", tt.name)
			continue
		}
		if tt.config && !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: New = %v, want ErrInvalidConfig", tt.name, err)
		}
		if tt.errno != 0 && !errors.Is(err, tt.errno) {
			t.Errorf("%s: New = %v, want %v", tt.name, err, tt.errno)
		}
	}
	if after := countFDs(t); after != before {
		t.Errorf("failed New calls leaked descriptors: %d before, %d after", before, after)
	}

	f, err := New(Config{Image: im, Inputs: []Input{{"doc.pdf", good}, {"b", good}}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, err := readAll(t, f, "/input/doc.pdf"); err != nil || got != "%PDF-1.7 input" {
		t.Errorf("read input = %q, %v", got, err)
	}
	st, err := f.Stat("/", "/input/doc.pdf", true)
	if err != nil || st.Mode != unix.S_IFREG|0o444 || st.Size != 14 {
		t.Errorf("stat input = %+v, %v", st, err)
	}
	fl, _ := f.Open("/", "/input/doc.pdf", unix.O_RDONLY, 0)
	buf := make([]byte, 4)
	if n, err := fl.ReadAt(buf, 10); n != 4 || err != nil || string(buf) != "nput" {
		t.Errorf("pread input = %q, %v", buf[:n], err)
	}
	if n, err := fl.ReadAt(buf, 100); n != 0 || err != io.EOF {
		t.Errorf("pread past end = %d, %v; want 0, EOF", n, err)
	}
	if n, err := fl.ReadAt(buf, 12); n != 2 || err != io.EOF || string(buf[:n]) != "ut" {
		t.Errorf("short pread = %q, %v; want \"ut\", EOF", buf[:n], err)
	}
	fl.Close()
	d, _ := f.Open("/", "/input", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	ents, _ := d.ReadDir(0)
	d.Close()
	if names := direntNames(ents); !slices.Equal(names, []string{".", "..", "b", "doc.pdf"}) {
		t.Errorf("ls /input = %v", names)
	}
}

func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func direntNames(ents []Dirent) []string {
	var names []string
	for _, e := range ents {
		names = append(names, e.Name)
	}
	return names
}

func TestDevices(t *testing.T) {
	f := newTestFS(t, nil)
	open := func(p string, flags int) File {
		t.Helper()
		fl, err := f.Open("/", p, flags, 0)
		if err != nil {
			t.Fatalf("open %s: %v", p, err)
		}
		t.Cleanup(func() { fl.Close() })
		return fl
	}
	buf := bytes.Repeat([]byte{0xAA}, 64)
	null := open("/dev/null", unix.O_RDWR)
	if n, err := null.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("read /dev/null = %d, %v", n, err)
	}
	if n, err := null.Write(buf); n != 64 || err != nil {
		t.Errorf("write /dev/null = %d, %v", n, err)
	}
	zero := open("/dev/zero", unix.O_RDWR)
	if n, err := zero.Read(buf); n != 64 || err != nil || !bytes.Equal(buf, make([]byte, 64)) {
		t.Errorf("read /dev/zero = %d, %v, %x", n, err, buf)
	}
	full := open("/dev/full", unix.O_WRONLY)
	if _, err := full.Write([]byte("x")); errnoOf(t, err) != unix.ENOSPC {
		t.Errorf("write /dev/full = %v, want ENOSPC", err)
	}
	ur := open("/dev/urandom", unix.O_RDONLY)
	a, b := make([]byte, 32), make([]byte, 32)
	if n, err := ur.Read(a); n != 32 || err != nil {
		t.Fatalf("read urandom = %d, %v", n, err)
	}
	ur.Read(b)
	if bytes.Equal(a, b) || bytes.Equal(a, make([]byte, 32)) {
		t.Errorf("urandom repeats: %x %x", a, b)
	}
	st, _ := f.Stat("/", "/dev/urandom", true)
	if st.Mode != unix.S_IFCHR|0o666 || st.Rdev != unix.Mkdev(1, 9) {
		t.Errorf("stat urandom = mode %o rdev %#x", st.Mode, st.Rdev)
	}
}

func TestProc(t *testing.T) {
	fds := map[int]string{0: "/input/in.txt", 1: "pipe:[7]", 3: "/data/hello.txt", 5: "/work"}
	gens := 0
	f := newTestFS(t, func(c *Config) {
		c.PID = 42
		c.FDPath = func(fd int) (string, bool) { p, ok := fds[fd]; return p, ok }
		c.ProcFiles = map[string]func() []byte{
			"meminfo":       func() []byte { gens++; return []byte("MemTotal: 1 kB\n") },
			"self/maps":     func() []byte { return []byte("00400000-00401000 r-xp\n") },
			"sys/kernel/os": func() []byte { return []byte("Linux\n") },
		}
	})
	tests := []struct {
		path, want string
		errno      unix.Errno
	}{
		{"/proc/meminfo", "MemTotal: 1 kB\n", 0},
		{"/proc/self/maps", "00400000-00401000 r-xp\n", 0},
		{"/proc/42/maps", "00400000-00401000 r-xp\n", 0},
		{"/proc/sys/kernel/os", "Linux\n", 0},
		{"/proc/self/cmdline", "busybox\x00sh\x00-c\x00true\x00", 0},
		{"/proc/self/fd/3", "hello, guest\n", 0},
		{"/dev/fd/3", "hello, guest\n", 0},
		{"/dev/stdin", "input data\n", 0},
		{"/proc/self/fd/1", "", unix.ENXIO},
		{"/proc/self/fd/2", "", unix.ENOENT},
		{"/proc/self/fd/03", "", unix.ENOENT},
		{"/proc/self/fd/-1", "", unix.ENOENT},
		{"/proc/self/fd/5/../tmp", "", unix.ENOTDIR}, // fd/5 is a link, then /work/../tmp is a dir: EISDIR on read
		{"/proc/1/maps", "", unix.ENOENT},
		{"/proc/self/exe/x", "", unix.ENOTDIR},
	}
	tests[12].errno = unix.EISDIR
	for _, tt := range tests {
		got, err := readAll(t, f, tt.path)
		if e := errnoOf(t, err); e != tt.errno || got != tt.want {
			t.Errorf("read %s = %q, %v; want %q, %v", tt.path, got, err, tt.want, tt.errno)
		}
	}
	if gens != 1 {
		t.Errorf("meminfo generated %d times, want once per open", gens)
	}
	for p, want := range map[string]string{"/proc/self/fd/1": "pipe:[7]", "/proc/self/fd/5": "/work", "/proc/self": "42"} {
		if got, err := f.Readlink("/", p); got != want || err != nil {
			t.Errorf("readlink %s = %q, %v; want %q", p, got, err, want)
		}
	}
	if dir, err := f.ResolveDir("/", "/proc/self/fd/5"); dir != "/work" || err != nil {
		t.Errorf("chdir /proc/self/fd/5 = %q, %v", dir, err)
	}
	fl, err := f.Open("/", "/proc/self/fd/3", unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fl.Path() != "/data/hello.txt" {
		t.Errorf("path of reopened fd = %q", fl.Path())
	}
	fl.Close()
	d, err := f.Open("/", "/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	ents, _ := d.ReadDir(0)
	d.Close()
	if names := direntNames(ents); !slices.Equal(names, []string{".", "..", "0", "1", "3", "5"}) {
		t.Errorf("ls /proc/self/fd = %v", names)
	}
	d, _ = f.Open("/", "/proc", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	ents, _ = d.ReadDir(0)
	d.Close()
	if names := direntNames(ents); !slices.Equal(names, []string{".", "..", "42", "meminfo", "mounts", "self", "sys"}) {
		t.Errorf("ls /proc = %v", names)
	}
	// The mounts, as df reads them.
	wantMounts := "isolator-image / ext4 ro,nosuid,nodev,relatime 0 0\n" +
		"isolator-input /input ext4 ro,nosuid,nodev,relatime 0 0\n" +
		"tmpfs /tmp tmpfs rw,nosuid,nodev,relatime 0 0\n" +
		"tmpfs /work tmpfs rw,nosuid,nodev,relatime 0 0\n" +
		"tmpfs /output tmpfs rw,nosuid,nodev,relatime 0 0\n" +
		"udev /dev devtmpfs rw,nosuid,relatime 0 0\n" +
		"proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
	if got, err := readAll(t, f, "/proc/mounts"); err != nil || got != wantMounts {
		t.Errorf("/proc/mounts = %q, %v; want %q", got, err, wantMounts)
	}
	if got, err := readAll(t, f, "/proc/self/mountinfo"); err != nil ||
		!strings.HasPrefix(got, "1 0 0:32 / / ro,nosuid,nodev,relatime - ext4 isolator-image ro\n2 1 0:33 / /input ") ||
		!strings.Contains(got, "\n7 1 0:38 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n") {
		t.Errorf("/proc/self/mountinfo = %q, %v", got, err)
	}

	for _, bad := range []map[string]func() []byte{
		{"../x": func() []byte { return nil }},
		{"self": func() []byte { return nil }},
		{"self/fd": func() []byte { return nil }},
		{"a//b": func() []byte { return nil }},
		{"x": nil},
	} {
		if _, err := New(Config{Image: f.im, ProcFiles: bad}); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("New with ProcFiles %v = %v, want ErrInvalidConfig", bad, err)
		}
	}
}

func TestReadDirPagination(t *testing.T) {
	f := newTestFS(t, nil)
	var want []string
	for i := range 100 {
		name := "file" + itoa(1000+i)
		writeFile(t, f, "/work/"+name, "x")
		want = append(want, name)
	}
	if err := f.Mkdir("/", "/work/zdir", 0o755); err != nil {
		t.Fatal(err)
	}
	want = append([]string{".", ".."}, append(want, "zdir")...)
	d, err := f.Open("/", "/work", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var got []Dirent
	for {
		ents, err := d.ReadDir(7)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) == 0 {
			break
		}
		// Use only the first 5, as getdents64 would with a full buffer, and seek back.
		if len(ents) > 5 {
			ents = ents[:5]
			if _, err := d.Seek(ents[4].Off, 0); err != nil {
				t.Fatal(err)
			}
		}
		got = append(got, ents...)
	}
	if names := direntNames(got); !slices.Equal(names, want) {
		t.Errorf("listing = %v\nwant %v", names, want)
	}
	if got[len(got)-1].Type != unix.DT_DIR || got[2].Type != unix.DT_REG {
		t.Errorf("types: %+v %+v", got[2], got[len(got)-1])
	}
	work, _ := f.Stat("/", "/work", true)
	root, _ := f.Stat("/", "/", true)
	if got[0].Ino != work.Ino || got[1].Ino != root.Ino {
		t.Errorf(". and .. inodes %d %d, want %d %d", got[0].Ino, got[1].Ino, work.Ino, root.Ino)
	}
	// Rewinding takes a fresh listing.
	writeFile(t, f, "/work/late", "x")
	d.Seek(0, 0)
	all, _ := d.ReadDir(-1)
	if len(all) != len(want)+1 {
		t.Errorf("after rewind %d entries, want %d", len(all), len(want)+1)
	}

	// The root merges the image with the mounts, which mask the image's /tmp.
	r, _ := f.Open("/", "/", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	defer r.Close()
	ents, _ := r.ReadDir(0)
	names := direntNames(ents)
	for _, n := range []string{"data", "dev", "etc", "input", "output", "proc", "tmp", "usr", "work"} {
		if !slices.Contains(names, n) {
			t.Errorf("ls / = %v, missing %s", names, n)
		}
	}
	if c := strings.Count(strings.Join(names, " "), "tmp"); c != 1 {
		t.Errorf("tmp listed %d times", c)
	}
	tmp, _ := f.Open("/", "/tmp", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	defer tmp.Close()
	if ents, _ := tmp.ReadDir(0); len(ents) != 2 {
		t.Errorf("ls /tmp = %v, want only . and ..", direntNames(ents))
	}
}

func TestOutputs(t *testing.T) {
	f := newTestFS(t, nil)
	for _, d := range []string{"/output/pages", "/output/-rf", "/output/bad\x1bdir"} {
		if err := f.Mkdir("/", d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, f, "/output/a.txt", "aaaa")
	writeFile(t, f, "/output/pages/1.png", "png1")
	writeFile(t, f, "/output/pages/2.png", "png22")
	writeFile(t, f, "/output/pages/3.png", "p")
	writeFile(t, f, "/output/-rf/x", "x")
	writeFile(t, f, "/output/bad\x1bdir/x", "x")
	writeFile(t, f, "/output/..hidden", "x")
	writeFile(t, f, "/output/.ok", "ok")
	writeFile(t, f, "/output/bad\xffutf8", "x")
	writeFile(t, f, "/output/tab\tname", "x")
	writeFile(t, f, "/output/big", strings.Repeat("b", 100))
	writeFile(t, f, "/output/résumé.txt", "r")
	if err := f.Chmod("/", "/output/a.txt", 0o4755, true); err != nil {
		t.Fatal(err)
	}
	if err := f.Symlink("/etc/passwd", "/", "/output/link"); err != nil {
		t.Fatal(err)
	}
	outs, rejected := f.Outputs(16, 5)
	var got []string
	for _, o := range outs {
		got = append(got, o.Name+"="+string(o.Data))
	}
	want := []string{".ok=ok", "a.txt=aaaa", "pages/1.png=png1", "pages/2.png=png22", "pages/3.png=p"}
	if !slices.Equal(got, want) {
		t.Errorf("outputs = %q, want %q", got, want)
	}
	if outs[1].Mode != 0o755 {
		t.Errorf("mode = %o, want 0755 (no setuid)", outs[1].Mode)
	}
	reasons := map[string]string{}
	for _, r := range rejected {
		reasons[r.Name] = r.Reason
		for _, c := range r.Name {
			if !unicode.IsPrint(c) {
				t.Errorf("rejected name %q is not printable", r.Name)
			}
		}
	}
	for _, name := range []string{"-rf", `bad\x1bdir`, "..hidden", `bad\xffutf8`, `tab\tname`, "link", "big", "résumé.txt"} {
		if reasons[name] == "" {
			t.Errorf("%q not rejected; rejected: %v", name, reasons)
		}
	}
	if len(rejected) != 8 {
		t.Errorf("rejected = %v", rejected)
	}
	// The data returned is a copy.
	outs[0].Data[0] = 'X'
	if got, _ := readAll(t, f, "/output/.ok"); got != "ok" {
		t.Errorf("output data aliases the file: %q", got)
	}
	// No bounds: everything with a safe name, including a UTF-8 one.
	outs, _ = f.Outputs(0, 0)
	if len(outs) != 7 || outs[6].Name != "résumé.txt" {
		t.Errorf("unbounded outputs: %d, last %q", len(outs), outs[len(outs)-1].Name)
	}
}

func TestCloseReleasesEverything(t *testing.T) {
	im := buildImage(t)
	in := filepath.Join(t.TempDir(), "in")
	if err := os.WriteFile(in, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := countFDs(t)
	goroutines := runtime.NumGoroutine()
	f, err := New(Config{Image: im, Inputs: []Input{{"a", in}, {"b", in}, {"c", in}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := countFDs(t); got != before+3 {
		t.Errorf("%d descriptors open, want %d", got, before+3)
	}
	fl, err := f.Open("/", "/input/a", unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, f, "/tmp/x", "data")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := countFDs(t); got != before {
		t.Errorf("%d descriptors open after Close, want %d", got, before)
	}
	if got := runtime.NumGoroutine(); got > goroutines {
		t.Errorf("%d goroutines after Close, %d before New", got, goroutines)
	}
	if _, err := fl.Read(make([]byte, 1)); !errors.Is(err, syscall.EBADF) {
		t.Errorf("read after Close = %v, want EBADF", err)
	}
	if _, err := f.Open("/", "/etc/passwd", unix.O_RDONLY, 0); !errors.Is(err, syscall.EBADF) {
		t.Errorf("open after Close = %v, want EBADF", err)
	}
	if b, n := f.Usage(); b != 0 || n != 0 {
		t.Errorf("usage after Close = %d, %d", b, n)
	}
	fl.Close()
	if err := f.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}
