package xdg

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the program the test desktop entries launch: run under the
// name recorderName it writes what it was started with (argv, directory, session, stdio,
// ISOLATOR_LAUNCHED) as JSON into $XDG_TEST_RECORD_DIR and exits.
const recorderName = "fake-viewer"

func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == recorderName {
		os.Exit(record())
	}
	os.Exit(m.Run())
}

// launchRecord is what the recorder writes.
type launchRecord struct {
	Args        []string `json:"args"`
	Dir         string   `json:"dir"`
	NewSession  bool     `json:"new_session"`
	StdioNull   bool     `json:"stdio_null"`
	LaunchedEnv string   `json:"launched_env"`
}

func record() int {
	dir := os.Getenv("XDG_TEST_RECORD_DIR")
	if dir == "" {
		fmt.Fprintln(os.Stderr, "fake-viewer: XDG_TEST_RECORD_DIR is not set")
		return 2
	}
	rec := launchRecord{Args: os.Args, LaunchedEnv: os.Getenv("ISOLATOR_LAUNCHED")}
	rec.Dir, _ = os.Getwd()
	sid, _ := unix.Getsid(0)
	rec.NewSession = sid == os.Getpid()
	rec.StdioNull = true
	var null syscall.Stat_t
	if syscall.Stat("/dev/null", &null) != nil {
		rec.StdioNull = false
	}
	for fd := 0; fd < 3; fd++ {
		var st syscall.Stat_t
		if syscall.Fstat(fd, &st) != nil || st.Rdev != null.Rdev || st.Mode&syscall.S_IFMT != syscall.S_IFCHR {
			rec.StdioNull = false
		}
	}
	data, _ := json.Marshal(rec)
	tmp := filepath.Join(dir, fmt.Sprintf(".%d.tmp", os.Getpid()))
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return 1
	}
	if err := os.Rename(tmp, filepath.Join(dir, fmt.Sprintf("%d.json", os.Getpid()))); err != nil {
		return 1
	}
	return 0
}

// readRecords waits until n records are in dir (and a little longer, to catch extra
// launches), and returns them sorted by their arguments.
func readRecords(t *testing.T, dir string, n int) []launchRecord {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var recs []launchRecord
	for {
		recs = recs[:0]
		names, _ := filepath.Glob(filepath.Join(dir, "*.json"))
		for _, name := range names {
			data, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			var r launchRecord
			if err := json.Unmarshal(data, &r); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			recs = append(recs, r)
		}
		if len(recs) >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(recs) == n {
		time.Sleep(200 * time.Millisecond) // anything launched twice has shown up by now
		names, _ := filepath.Glob(filepath.Join(dir, "*.json"))
		if len(names) != n {
			t.Errorf("%d launches, want %d", len(names), n)
		}
	}
	if len(recs) != n {
		t.Fatalf("%d launches, want %d: %+v", len(recs), n, recs)
	}
	sort.Slice(recs, func(i, j int) bool { return strings.Join(recs[i].Args, "\x00") < strings.Join(recs[j].Args, "\x00") })
	return recs
}

// world is a set of temporary XDG directories:
//
//	CH  $XDG_CONFIG_HOME       CS  $XDG_CONFIG_DIRS (one)
//	DH  $XDG_DATA_HOME         D1, D2  $XDG_DATA_DIRS
//	BIN $PATH, with the programs viewer, other, isoctl and fake-viewer
type world struct {
	root string
	env  Env
	bin  string
}

var worldDirs = []string{"CH", "CS", "DH", "D1", "D2", "BIN"}

func newWorld(t *testing.T, files map[string]string, desktops ...string) *world {
	t.Helper()
	root := t.TempDir()
	w := &world{root: root, bin: filepath.Join(root, "BIN")}
	for _, d := range worldDirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	w.env = Env{
		ConfigHome: filepath.Join(root, "CH"),
		ConfigDirs: []string{filepath.Join(root, "CS")},
		DataHome:   filepath.Join(root, "DH"),
		DataDirs:   []string{filepath.Join(root, "D1"), filepath.Join(root, "D2")},
		Desktops:   desktops,
		Path:       w.bin,
	}
	for _, p := range []string{"viewer", "other", "isoctl", "xdg-open"} {
		w.write(t, "BIN/"+p, "#!/bin/sh\nexit 0\n")
		os.Chmod(filepath.Join(w.bin, p), 0o755)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(w.bin, recorderName)); err != nil {
		t.Fatal(err)
	}
	for p, content := range files {
		w.write(t, p, content)
	}
	return w
}

// write writes a file at a path starting with one of worldDirs.
func (w *world) write(t *testing.T, p, content string) {
	t.Helper()
	full := w.path(p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (w *world) path(p string) string { return filepath.Join(w.root, filepath.FromSlash(p)) }

// app is a desktop entry running exec for types.
func app(exec string, types ...string) string {
	s := "[Desktop Entry]\nType=Application\nName=Test App\nExec=" + exec + "\n"
	if len(types) > 0 {
		s += "MimeType=" + strings.Join(types, ";") + ";\n"
	}
	return s
}

// list is a mimeapps.list with the given groups; each group is "key=value" lines.
func list(groups ...string) string {
	return strings.Join(groups, "\n") + "\n"
}

// notIsolator is the reject function isoctl uses, in small.
func notIsolator(a *App) string {
	if a.Entry.ID == "isolator-open.desktop" {
		return "Isolator's own handler"
	}
	if n, ok := a.Entry.Runs(append([]string{"isoctl"}, Openers...)...); ok {
		return "runs " + n
	}
	return ""
}
