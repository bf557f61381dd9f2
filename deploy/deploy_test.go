// Package deploy holds the files that install Isolator on a machine: the systemd unit, the
// example configuration and the desktop integration. Its tests run the Makefile's install
// and uninstall targets for real into a temporary DESTDIR and check the example
// configuration against the daemon.
package deploy

import (
	"bufio"
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/isolator-dev/isolator/pkg/daemon"
)

// installed is what make install puts under DESTDIR for a PREFIX, with its mode.
func installed(prefix string) map[string]fs.FileMode {
	p := strings.TrimPrefix(prefix, "/")
	return map[string]fs.FileMode{
		p + "/sbin/isolatord":                               0o755,
		p + "/bin/isoctl":                                   0o755,
		"lib/systemd/system/isolatord.service":              0o644,
		"etc/isolator/isolatord.yaml.example":               0o644,
		p + "/share/applications/isolator-open.desktop":     0o644,
		p + "/share/kio/servicemenus/isolator-open.desktop": 0o644,
		p + "/share/isolator/nautilus/open-in-micro-vm":     0o755,
		p + "/share/isolator/mimeapps.list.example":         0o644,
		p + "/share/bash-completion/completions/isoctl":     0o644,
		p + "/share/zsh/site-functions/_isoctl":             0o644,
		p + "/share/fish/vendor_completions.d/isoctl.fish":  0o644,
	}
}

// copies are the installed files that are the repository's files unchanged.
func copies(prefix string) map[string]string {
	p := strings.TrimPrefix(prefix, "/")
	return map[string]string{
		"etc/isolator/isolatord.yaml.example":               "isolatord.yaml.example",
		p + "/share/applications/isolator-open.desktop":     "xdg/isolator-open.desktop",
		p + "/share/kio/servicemenus/isolator-open.desktop": "xdg/kio/isolator-open.desktop",
		p + "/share/isolator/nautilus/open-in-micro-vm":     "xdg/nautilus/open-in-micro-vm",
		p + "/share/isolator/mimeapps.list.example":         "xdg/mimeapps.list.example",
	}
}

// TestInstallUninstall runs make install and make uninstall into temporary DESTDIRs, with
// the default PREFIX and with PREFIX=/usr, and checks the tree each leaves.
func TestInstallUninstall(t *testing.T) {
	makeBin, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make is not installed (Debian package make): the install targets cannot run")
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// Build into a private BIN, so the test leaves the work tree's bin/ alone; the same go
	// that runs the test builds (go test puts its GOROOT/bin first on PATH).
	bin := filepath.Join(t.TempDir(), "bin")
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go is not on PATH: %v", err)
	}
	mk := func(args ...string) {
		t.Helper()
		cmd := exec.Command(makeBin, append([]string{"--no-print-directory", "-C", repo, "BIN=" + bin, "GO=" + goBin}, args...)...)
		cmd.Env = makeEnv()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, tc := range []struct{ name, prefix string }{
		{"default prefix", "/usr/local"},
		{"prefix /usr", "/usr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest := t.TempDir()
			args := []string{"DESTDIR=" + dest}
			if tc.prefix != "/usr/local" {
				args = append(args, "PREFIX="+tc.prefix)
			}
			mk(append([]string{"install"}, args...)...)

			want := installed(tc.prefix)
			got := regularFiles(t, dest)
			for name, mode := range want {
				m, ok := got[name]
				switch {
				case !ok:
					t.Errorf("%s not installed", name)
				case m != mode:
					t.Errorf("%s has mode %v, want %v", name, m, mode)
				}
			}
			for name := range got {
				if _, ok := want[name]; !ok {
					t.Errorf("unexpected file %s installed", name)
				}
			}
			if fi, err := os.Stat(filepath.Join(dest, "etc/isolator/policies.d")); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o755 {
				t.Errorf("policies.d: want an empty directory 0755: %v, %v", fi, err)
			}
			for inst, src := range copies(tc.prefix) {
				if a, b := read(t, filepath.Join(dest, inst)), read(t, src); !bytes.Equal(a, b) {
					t.Errorf("%s differs from deploy/%s", inst, src)
				}
			}

			// The unit is the repository's, with ExecStart naming PREFIX's isolatord.
			unit := string(read(t, filepath.Join(dest, "lib/systemd/system/isolatord.service")))
			execStart := regexp.MustCompile(`(?m)^ExecStart=.*$`).FindAllString(unit, -1)
			if want := "ExecStart=" + tc.prefix + "/sbin/isolatord"; len(execStart) != 1 || execStart[0] != want {
				t.Errorf("installed unit has %q, want one line %q", execStart, want)
			}
			src := string(read(t, "systemd/isolatord.service"))
			if strings.Replace(src, "ExecStart=/usr/local/sbin/isolatord", execStart[0], 1) != unit {
				t.Errorf("installed unit differs from deploy/systemd/isolatord.service beyond ExecStart")
			}

			// The binaries run, and the completions are isoctl's.
			if out, err := exec.Command(filepath.Join(dest, strings.TrimPrefix(tc.prefix, "/"), "bin/isoctl"), "--help").CombinedOutput(); err != nil {
				t.Errorf("installed isoctl --help: %v\n%s", err, out)
			}
			for name, head := range map[string]string{
				"/share/bash-completion/completions/isoctl":    "# bash completion V2 for isoctl",
				"/share/zsh/site-functions/_isoctl":            "#compdef isoctl",
				"/share/fish/vendor_completions.d/isoctl.fish": "# fish completion for isoctl",
			} {
				if data := read(t, filepath.Join(dest, tc.prefix, name)); !bytes.HasPrefix(data, []byte(head)) {
					t.Errorf("%s does not start with %q", name, head)
				}
			}
			if tc.prefix == "/usr/local" {
				verifyUnit(t, dest)
			}

			// The administrator's files survive uninstall; only directories are left.
			mine := []string{"etc/isolator/isolatord.yaml", "etc/isolator/policies.d/50-site.yaml"}
			for _, f := range mine {
				if err := os.WriteFile(filepath.Join(dest, f), []byte("version: 1\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			mk(append([]string{"uninstall"}, args...)...)
			left := regularFiles(t, dest)
			var names []string
			for name := range left {
				names = append(names, name)
			}
			sort.Strings(names)
			if !slices.Equal(names, mine) {
				t.Errorf("after uninstall, files left: %q, want only %q", names, mine)
			}
			if _, err := os.Stat(filepath.Join(dest, tc.prefix, "share/isolator")); !os.IsNotExist(err) {
				t.Errorf("share/isolator not removed: %v", err)
			}
		})
	}
}

// makeEnv is the test's environment without what would change the Makefile's variables:
// a parent make's flags (make test runs this test) and PREFIX, DESTDIR and friends, which
// the Makefile's ?= assignments would take from the environment.
func makeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PREFIX", "DESTDIR", "UNITDIR", "DATADIR", "CONFDIR", "BIN", "GO":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// verifyUnit runs systemd-analyze verify on the installed unit, with ExecStart pointing at
// the binary installed under dest (verify checks that the program exists).
func verifyUnit(t *testing.T, dest string) {
	t.Helper()
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: unit not verified")
		return
	}
	unit := read(t, filepath.Join(dest, "lib/systemd/system/isolatord.service"))
	unit = bytes.Replace(unit, []byte("ExecStart=/usr/local/sbin/isolatord"),
		[]byte("ExecStart="+filepath.Join(dest, "usr/local/sbin/isolatord")), 1)
	path := filepath.Join(t.TempDir(), "isolatord.service")
	if err := os.WriteFile(path, unit, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// regularFiles lists the non-directories under root, relative to it, with their modes.
func regularFiles(t *testing.T, root string) map[string]fs.FileMode {
	t.Helper()
	files := map[string]fs.FileMode{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		files[rel] = fi.Mode()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// keyLine is a commented-out setting of the example: "# key: value".
var keyLine = regexp.MustCompile(`^# ([a-z_]+):( |$)`)

// TestExampleConfig checks deploy/isolatord.yaml.example: as shipped (all comments) the
// daemon reads it as an empty configuration; with every setting uncommented it is still
// valid, names every FileConfig key exactly once, and each value is the daemon's default.
func TestExampleConfig(t *testing.T) {
	fc, err := daemon.LoadFileConfig("isolatord.yaml.example")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*fc, daemon.FileConfig{}) {
		t.Errorf("the example as shipped sets something: %+v", *fc)
	}

	var out bytes.Buffer
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(read(t, "isolatord.yaml.example")))
	for sc.Scan() {
		line := sc.Text()
		if m := keyLine.FindStringSubmatch(line); m != nil {
			seen[m[1]]++
			line = strings.TrimPrefix(line, "# ")
		}
		out.WriteString(line + "\n")
	}
	path := filepath.Join(t.TempDir(), "isolatord.yaml")
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	fc, err = daemon.LoadFileConfig(path)
	if err != nil {
		t.Fatalf("uncommented example: %v", err)
	}
	ft := reflect.TypeFor[daemon.FileConfig]()
	for i := range ft.NumField() {
		key := ft.Field(i).Tag.Get("yaml")
		if seen[key] != 1 {
			t.Errorf("key %s appears %d times in the example, want once", key, seen[key])
		}
		delete(seen, key)
	}
	for key := range seen {
		t.Errorf("example sets %s, which is not a FileConfig key", key)
	}

	// The daemon's defaults are its flags' defaults, as isolatord -h prints them.
	def := flagDefaults(t)
	str := func(key, got, flag string) {
		if want, ok := def[flag]; !ok || got != want {
			t.Errorf("%s: %q, daemon default (--%s) %q", key, got, flag, want)
		}
	}
	dur := func(key string, got time.Duration, flag string) {
		want, err := time.ParseDuration(def[flag])
		if err != nil || got != want {
			t.Errorf("%s: %v, daemon default (--%s) %q", key, got, flag, def[flag])
		}
	}
	num := func(key string, got int, flag string) {
		if want, err := strconv.Atoi(def[flag]); err != nil || got != want {
			t.Errorf("%s: %d, daemon default (--%s) %q", key, got, flag, def[flag])
		}
	}
	off := func(key string, got bool, flag string) { // a boolean flag that is off by default
		if v, ok := def[flag]; !ok || v != "" || got {
			t.Errorf("%s: %v, want false with --%s off by default (flag default %q, present %v)", key, got, flag, v, ok)
		}
	}
	str("socket", fc.Socket, "socket")
	str("state_dir", fc.StateDir, "state-dir")
	str("policy_dir", fc.PolicyDir, "policy-dir")
	if want := filepath.Join(def["state-dir"], "images"); fc.ImageDir != want {
		t.Errorf("image_dir: %q, want %q (<state-dir>/images)", fc.ImageDir, want)
	}
	str("log_level", fc.LogLevel, "log-level")
	num("max_concurrent", fc.MaxConcurrent, "max-concurrent")
	num("queue", fc.Queue, "queue")
	num("pool_size", fc.PoolSize, "pool-size")
	dur("queue_wait", fc.QueueWait, "queue-wait")
	dur("shutdown_timeout", fc.ShutdownTimeout, "shutdown-timeout")
	if want, err := strconv.ParseInt(def["max-input-bytes"], 10, 64); err != nil || fc.MaxInputBytes != want ||
		want != daemon.DefaultMaxInputBytes {
		t.Errorf("max_input_bytes: %d, daemon default (--max-input-bytes) %q, daemon.DefaultMaxInputBytes %d",
			fc.MaxInputBytes, def["max-input-bytes"], daemon.DefaultMaxInputBytes)
	}
	if fc.BuildImages == nil || !*fc.BuildImages {
		t.Errorf("build_images: %s, want true", boolPtr(fc.BuildImages))
	}
	off("build_images", false, "no-build-images")
	off("intercept", fc.Intercept, "intercept")
	if len(fc.DownloadDirs) != 0 || len(fc.GateAllow) != 0 {
		t.Errorf("download_dirs %q, gate_allow %q: want both empty", fc.DownloadDirs, fc.GateAllow)
	}
	off("download_dirs", false, "watch-dir")
	off("gate_allow", false, "gate-allow")
	if fc.Gate == nil || !*fc.Gate {
		t.Errorf("gate: %s, want true", boolPtr(fc.Gate))
	}
	off("gate", false, "no-gate")
	dur("gate_deadline", fc.GateDeadline, "gate-deadline")
	str("gate_fallback", fc.GateFallback, "gate-fallback")
	dur("download_settle", fc.DownloadSettle, "download-settle")
	dur("download_temp_idle", fc.DownloadTempIdle, "download-temp-idle")
}

func boolPtr(b *bool) string {
	if b == nil {
		return "unset"
	}
	return strconv.FormatBool(*b)
}

// flagDefaults runs the daemon's own flag parsing with -h and returns each flag's default
// as the usage text shows it: unquoted, "" when the flag package prints none (zero values).
func flagDefaults(t *testing.T) map[string]string {
	t.Helper()
	var usage bytes.Buffer
	if code := daemon.Main([]string{"-h"}, &usage, nil); code != 0 {
		t.Fatalf("isolatord -h exited %d:\n%s", code, usage.String())
	}
	flagLine := regexp.MustCompile(`^  -([a-z-]+)`)
	defaultRE := regexp.MustCompile(`\(default ("([^"]*)"|([^)]*))\)$`)
	def := map[string]string{}
	var name string
	for _, line := range strings.Split(usage.String(), "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			name = m[1]
			def[name] = ""
			continue
		}
		if m := defaultRE.FindStringSubmatch(line); m != nil && name != "" {
			def[name] = m[2] + m[3]
		}
	}
	if len(def) == 0 {
		t.Fatalf("no flags in isolatord -h:\n%s", usage.String())
	}
	return def
}
