package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// requireKVM skips the test, saying why, where /dev/kvm cannot be used.
func requireKVM(t *testing.T) {
	t.Helper()
	if ok, why := kvmhv.Available(); !ok {
		t.Skipf("skipping: /dev/kvm unavailable: %s", why)
	}
}

// busyboxImage builds a guest image holding Debian's static busybox with isoctl image build.
func busyboxImage(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/busybox"); err != nil {
		t.Skipf("skipping: /usr/bin/busybox missing (make deps installs busybox-static): %v", err)
	}
	img := filepath.Join(t.TempDir(), "bb.img")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"image", "build", "--output", img, "/usr/bin/busybox"}, &stdout, &stderr); code != 0 {
		t.Fatalf("image build exited %d: %s", code, &stderr)
	}
	return img
}

// TestRun runs isoctl run against real micro VMs: the program's output, exit status and
// output files come back; flags after GUESTPATH are the program's; a bad --output-dir is
// refused before the program runs.
func TestRun(t *testing.T) {
	requireKVM(t)
	img := busyboxImage(t)
	dir := t.TempDir()
	input := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(input, []byte("some notes\nand more\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hostSum, err := exec.Command("/usr/bin/busybox", "sha256sum", input).Output()
	if err != nil {
		t.Fatal(err)
	}
	full := filepath.Join(dir, "full")
	os.Mkdir(full, 0o755)
	os.WriteFile(filepath.Join(full, "mine"), []byte("keep"), 0o644)
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, nil, 0o644)
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o755)

	sh := func(script string) []string { return []string{"/usr/bin/busybox", "sh", "-c", script} }
	tests := []struct {
		name       string
		flags      []string
		prog       []string
		wantCode   int
		wantStdout string
		wantStderr []string // substrings
	}{
		{name: "input hashed", flags: []string{"--input", input},
			prog:       []string{"/usr/bin/busybox", "sha256sum", "/input/notes.txt"},
			wantStdout: strings.Replace(string(hostSum), input, "/input/notes.txt", 1)},
		{name: "starts in /work", prog: sh("pwd"), wantStdout: "/work\n"},
		{name: "exit status", prog: sh("echo out; echo err >&2; exit 7"), wantCode: 7, wantStdout: "out\n",
			wantStderr: []string{"err\n"}},
		{name: "killed by a signal", prog: sh("kill -SEGV $$"), wantCode: 139,
			wantStderr: []string{"killed by SIGSEGV"}},
		{name: "flags after GUESTPATH are the program's", prog: []string{"/usr/bin/busybox", "echo", "--stats", "--timeout", "1s"},
			wantStdout: "--stats --timeout 1s\n"},
		{name: "timeout", flags: []string{"--timeout", "300ms"}, prog: []string{"/usr/bin/busybox", "sleep", "30"},
			wantCode: 124, wantStderr: []string{"micro VM stopped"}},
		// 0 is no limit, not a limit reached at once.
		{name: "timeout 0 is none", flags: []string{"--timeout", "0"}, prog: []string{"/usr/bin/busybox", "sleep", "1"}},
		{name: "memory bounds work", flags: []string{"--memory", "16MiB"}, prog: sh("echo small"), wantStdout: "small\n"},
		{name: "largest memory", flags: []string{"--memory", "64GiB"}, prog: sh("echo large"), wantStdout: "large\n"},
		{name: "missing program", prog: []string{"/usr/bin/nothere"}, wantCode: 1,
			wantStderr: []string{"/usr/bin/nothere"}},
		{name: "output dir not empty", flags: []string{"--output-dir", full}, prog: sh("echo ran"), wantCode: 1,
			wantStderr: []string{"is not empty (it holds mine)"}},
		{name: "output dir is a file", flags: []string{"--output-dir", plain}, prog: sh("echo ran"), wantCode: 1,
			wantStderr: []string{"is not a directory"}},
		{name: "two inputs of one name", flags: []string{"--input", input, "--input", input}, prog: sh("echo ran"),
			wantCode: 1, wantStderr: []string{`two inputs named "notes.txt"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append(append(append([]string{"run", "--image", img}, tt.flags...), "--"), tt.prog...)
			code := run(args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d; stderr: %s", code, tt.wantCode, &stderr)
			}
			if stdout.String() != tt.wantStdout {
				t.Errorf("stdout %q, want %q", &stdout, tt.wantStdout)
			}
			for _, w := range tt.wantStderr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr %q lacks %q", &stderr, w)
				}
			}
		})
	}
	if ents, _ := os.ReadDir(full); len(ents) != 1 {
		t.Errorf("a refused --output-dir was written into: %v", ents)
	}

	t.Run("outputs and stats", func(t *testing.T) {
		// An archive with a file, a file in a directory and a symlink, unpacked into /output.
		src := filepath.Join(dir, "src")
		os.MkdirAll(filepath.Join(src, "d"), 0o755)
		os.WriteFile(filepath.Join(src, "a.txt"), []byte("result\n"), 0o644)
		os.WriteFile(filepath.Join(src, "d", "b"), []byte("x"), 0o644)
		os.Symlink("/etc/passwd", filepath.Join(src, "link"))
		tarball := filepath.Join(dir, "a.tar")
		if out, err := exec.Command("/usr/bin/busybox", "tar", "-cf", tarball, "-C", src, "a.txt", "d", "link").CombinedOutput(); err != nil {
			t.Fatalf("tar: %v %s", err, out)
		}
		out := filepath.Join(dir, "new", "out")
		var stdout, stderr bytes.Buffer
		code := run([]string{"run", "--image", img, "--input", tarball, "--output-dir", out, "--stats",
			"/usr/bin/busybox", "tar", "-xf", "/input/a.tar", "-C", "/output"}, &stdout, &stderr)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, &stderr)
		}
		if b, err := os.ReadFile(filepath.Join(out, "a.txt")); err != nil || string(b) != "result\n" {
			t.Errorf("a.txt: %q, %v", b, err)
		}
		if b, err := os.ReadFile(filepath.Join(out, "d", "b")); err != nil || string(b) != "x" {
			t.Errorf("d/b: %q, %v", b, err)
		}
		if _, err := os.Lstat(filepath.Join(out, "link")); err == nil {
			t.Error("a symlink under /output was delivered")
		}
		if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("output dir: %v, %v; want mode 0700", fi, err)
		}
		if !strings.Contains(stderr.String(), "output refused: link") {
			t.Errorf("stderr does not list the refused symlink: %s", &stderr)
		}
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		var stats struct {
			Exits    map[string]uint64 `json:"exits"`
			Syscalls map[string]uint64 `json:"syscalls"`
		}
		var statsLine string
		for _, l := range lines {
			if strings.HasPrefix(l, "{") {
				statsLine = l
			}
		}
		if err := json.Unmarshal([]byte(statsLine), &stats); err != nil {
			t.Fatalf("--stats line %q: %v", statsLine, err)
		}
		if stats.Syscalls["openat"] == 0 || stats.Syscalls["symlink"] != 1 || stats.Syscalls["exit_group"] != 1 {
			t.Errorf("stats syscalls %v: want openat, the symlink and one exit_group", stats.Syscalls)
		}
	})

	t.Run("empty output dir used as it is", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"run", "--image", img, "--output-dir", empty, "/usr/bin/busybox", "sh", "-c", "echo 1 > /output/one"},
			&stdout, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, &stderr)
		}
		if b, err := os.ReadFile(filepath.Join(empty, "one")); err != nil || string(b) != "1\n" {
			t.Errorf("one: %q, %v", b, err)
		}
		if fi, _ := os.Stat(empty); fi.Mode().Perm() != 0o755 {
			t.Errorf("the existing directory's mode became %v", fi.Mode().Perm())
		}
	})

	t.Run("a program that never ran leaves no output dir", func(t *testing.T) {
		out := filepath.Join(dir, "never")
		var stdout, stderr bytes.Buffer
		if code := run([]string{"run", "--image", img, "--output-dir", out, "/usr/bin/nothere"}, &stdout, &stderr); code != 1 {
			t.Errorf("exit %d, want 1: %s", code, &stderr)
		}
		if _, err := os.Stat(out); err == nil {
			t.Error("--output-dir made for a program that never ran is left behind")
		}
	})
}

// TestRunFlagErrors: flag values isoctl run cannot honour are refused, saying why, before
// anything runs: a negative --timeout (it once meant no limit) and a --memory outside what
// a micro VM takes.
func TestRunFlagErrors(t *testing.T) {
	img := filepath.Join(t.TempDir(), "never-opened.img")
	for _, tt := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--timeout", "-1s"}, "--timeout -1s is negative: give a duration, or 0 for no limit"},
		{[]string{"--timeout", "-1ns"}, "is negative"},
		{[]string{"--memory", "65GiB"}, "--memory 65GiB is out of range: a micro VM takes 16 MiB to 64 GiB"},
		{[]string{"--memory", "1000G"}, "--memory 1000GiB is out of range"},
		{[]string{"--memory", "15MiB"}, "--memory 15MiB is out of range"},
		{[]string{"--memory", "0"}, "--memory 0 bytes is out of range"},
	} {
		var stdout, stderr bytes.Buffer
		args := append(append([]string{"run", "--image", img}, tt.flags...), "/bin/true")
		if code := run(args, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), tt.want) || stdout.Len() != 0 {
			t.Errorf("isoctl %q: exit %d, stderr %q; want 1 and %q", args, code, &stderr, tt.want)
		}
	}
}

// TestRunSignal: isoctl run stops the micro VM when it gets SIGINT or SIGTERM, and exits
// 128+N, as a shell expects of a program killed by that signal.
func TestRunSignal(t *testing.T) {
	requireKVM(t)
	img := busyboxImage(t)
	bin := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(bin, "isoctl")); err != nil {
		t.Fatal(err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(filepath.Join(bin, "isoctl"), "run", "--image", img, "--timeout", "60s",
				"/usr/bin/busybox", "sh", "-c", "echo started; while :; do :; done")
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 8)
			if n, err := stdout.Read(buf); err != nil || string(buf[:n]) != "started\n" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("first output %q, %v", buf[:n], err)
			}
			cmd.Process.Signal(sig)
			err = cmd.Wait()
			code := cmd.ProcessState.ExitCode()
			if code != 128+int(sig) {
				t.Errorf("exit %d (%v) after %v, want %d; stderr: %s", code, err, sig, 128+int(sig), &stderr)
			}
		})
	}
}
