package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/daemon"
	"github.com/isolator-dev/isolator/pkg/policy"
)

// The test binary is also isoctl and the applications the tests' desktop entries launch:
// run as "isoctl" it is isoctl; as "fake-viewer" or "xdg-open" it records how it was
// started into $ISOCTL_TEST_RECORDS and exits.
func TestMain(m *testing.M) {
	switch filepath.Base(os.Args[0]) {
	case "isoctl":
		os.Exit(Main(os.Args[1:]))
	case "fake-viewer", "xdg-open":
		os.Exit(recordLaunch())
	}
	os.Exit(m.Run())
}

type launch struct {
	Args       []string `json:"args"`
	Launched   string   `json:"launched"`    // $ISOLATOR_LAUNCHED
	NewSession bool     `json:"new_session"` // session leader
	StdinNull  bool     `json:"stdin_null"`
}

func recordLaunch() int {
	dir := os.Getenv("ISOCTL_TEST_RECORDS")
	if dir == "" {
		return 2
	}
	rec := launch{Args: os.Args, Launched: os.Getenv(launchedEnv)}
	sid, _ := unix.Getsid(0)
	rec.NewSession = sid == os.Getpid()
	var in, null unix.Stat_t
	rec.StdinNull = unix.Fstat(0, &in) == nil && unix.Stat("/dev/null", &null) == nil && in.Rdev == null.Rdev
	data, _ := json.Marshal(rec)
	tmp := filepath.Join(dir, fmt.Sprintf(".%d", os.Getpid()))
	if os.WriteFile(tmp, data, 0o644) != nil || os.Rename(tmp, filepath.Join(dir, fmt.Sprintf("%d.json", os.Getpid()))) != nil {
		return 1
	}
	return 0
}

// noRunner refuses to run micro VMs: these tests only trust and deny.
type noRunner struct{}

func (noRunner) Run(context.Context, *daemon.Job) (*daemon.RunResult, error) {
	return nil, errors.New("no micro VMs in this test")
}

// startDaemon runs isolatord in the test process on a policy that trusts ROOT/trusted/**
// and denies ROOT/denied/** by path, and returns its socket.
func startDaemon(t *testing.T, root string) string {
	t.Helper()
	pdir := filepath.Join(root, "policy")
	os.MkdirAll(pdir, 0o755)
	pol := strings.ReplaceAll(`version: 1
default: {action: deny, untrusted_action: deny}
rules:
  - name: test-trusted
    action: trust
    match:
      path: ["ROOT/trusted/**"]
  - name: test-denied
    action: deny
    match:
      path: ["ROOT/denied/**"]
`, "ROOT", root)
	if err := os.WriteFile(filepath.Join(pdir, "00-test.yaml"), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(policy.StoreConfig{Dir: pdir})
	if err != nil {
		t.Fatal(err)
	}
	if res := store.Last(); res.Err != nil {
		t.Fatalf("policy: %v", res.Err)
	}
	d, err := daemon.New(daemon.Config{StateDir: filepath.Join(root, "state"), Decider: daemon.NewPolicyDecider(store),
		Runner: noRunner{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(root, "run", "isolator.sock")
	l, err := daemon.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock
}

// copyFile copies the executable src to dst.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestOpenTrustedLaunchesTheViewer runs the isoctl binary (this test binary) against a
// daemon that trusts files by path, on a desktop where isolator-open.desktop (the real one
// from deploy/xdg, Exec=isoctl open %F) is the default application for PDFs: a trusted
// PDF must open in the other viewer exactly once, without xdg-open and without isoctl
// running again.
func TestOpenTrustedLaunchesTheViewer(t *testing.T) {
	root := t.TempDir()
	sock := startDaemon(t, root)
	bin := filepath.Join(root, "bin")
	os.MkdirAll(bin, 0o755)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// isoctl and xdg-open are this binary; the viewer is a copy, so that it is not
	// mistaken for isoctl itself.
	for _, name := range []string{"isoctl", "xdg-open"} {
		if err := os.Symlink(self, filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, self, filepath.Join(bin, "fake-viewer"))
	handler, err := os.ReadFile(filepath.Join("..", "..", "..", "deploy", "xdg", "isolator-open.desktop"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"trusted", "denied"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	trusted := filepath.Join(root, "trusted", "report one.pdf")
	trusted2 := filepath.Join(root, "trusted", "two.pdf")
	noExt := filepath.Join(root, "trusted", "scan")
	denied := filepath.Join(root, "denied", "evil.pdf")
	for _, p := range []string{trusted, trusted2, noExt, denied} {
		if err := os.WriteFile(p, []byte("%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	viewer := "[Desktop Entry]\nType=Application\nName=Viewer\nExec=fake-viewer --from-desktop %U\nMimeType=application/pdf;\n"
	opener := "[Desktop Entry]\nType=Application\nName=Opener\nExec=xdg-open %u\nMimeType=application/pdf;\n"
	isoDefault := "[Default Applications]\napplication/pdf=isolator-open.desktop\n"
	tests := []struct {
		name      string
		files     map[string]string // below the test's home
		args      []string
		env       []string
		wantCode  int
		wantOut   []string
		wantErr   []string
		wantViews [][]string // fake-viewer launches: arguments after the program
	}{
		{
			name: "isolator-open.desktop is the default: the viewer opens the file once",
			files: map[string]string{
				".config/mimeapps.list":                           isoDefault,
				".local/share/applications/isolator-open.desktop": string(handler),
				"share/applications/viewer.desktop":               viewer,
				"share/applications/mimeinfo.cache":               "[MIME Cache]\napplication/pdf=isolator-open.desktop;viewer.desktop;\n",
			},
			args:      []string{trusted},
			wantOut:   []string{"trusted (rule test-trusted)", "opened with viewer.desktop (application/pdf)"},
			wantViews: [][]string{{"--from-desktop", trusted}},
		},
		{
			name: "the viewer after isolator-open.desktop in the default list, for each file",
			files: map[string]string{
				".config/mimeapps.list":                    "[Default Applications]\napplication/pdf=isolator-open.desktop;viewer.desktop;\n",
				"share/applications/isolator-open.desktop": string(handler),
				"share/applications/viewer.desktop":        viewer,
			},
			args:      []string{trusted, trusted2},
			wantViews: [][]string{{"--from-desktop", trusted}, {"--from-desktop", trusted2}},
		},
		{
			name: "type by content when the name has no extension",
			files: map[string]string{
				".config/mimeapps.list":                    isoDefault,
				"share/applications/isolator-open.desktop": string(handler),
				"share/applications/viewer.desktop":        viewer,
			},
			args:      []string{noExt},
			wantViews: [][]string{{"--from-desktop", noExt}},
		},
		{
			name: "only Isolator's handler and an xdg-open wrapper: no application",
			files: map[string]string{
				".config/mimeapps.list":                    isoDefault,
				"share/applications/isolator-open.desktop": string(handler),
				"share/applications/opener.desktop":        opener,
			},
			args:     []string{trusted},
			wantCode: exitNoApp,
			wantErr: []string{"no application other than Isolator's handler opens application/pdf; set one with `xdg-mime default viewer.desktop application/pdf`",
				"passed over isolator-open.desktop: Isolator's own handler", "passed over opener.desktop: it runs xdg-open"},
		},
		{
			name: "ISOLATOR_LAUNCHED set: not launched again",
			files: map[string]string{
				".config/mimeapps.list":                    isoDefault,
				"share/applications/isolator-open.desktop": string(handler),
				"share/applications/viewer.desktop":        viewer,
			},
			args:     []string{trusted},
			env:      []string{"ISOLATOR_LAUNCHED=1"},
			wantCode: exitRelaunch,
			wantErr:  []string{"trusted, but not opened", "ISOLATOR_LAUNCHED is set"},
		},
		{
			name: "ISOLATOR_LAUNCHED set: denied files are still denied",
			files: map[string]string{
				"share/applications/viewer.desktop": viewer,
			},
			args:     []string{denied, trusted},
			env:      []string{"ISOLATOR_LAUNCHED=1"},
			wantCode: exitDenied,
			wantOut:  []string{"denied (rule test-denied)"},
		},
		{
			name: "--no-launch",
			files: map[string]string{
				"share/applications/viewer.desktop": viewer,
			},
			args:    []string{"--no-launch", trusted},
			wantOut: []string{"trusted (rule test-trusted)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := t.TempDir()
			records := t.TempDir()
			for p, content := range tt.files {
				full := filepath.Join(home, p)
				os.MkdirAll(filepath.Dir(full), 0o755)
				if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			mime := filepath.Join(home, "share", "mime")
			os.MkdirAll(mime, 0o755)
			os.WriteFile(filepath.Join(mime, "globs2"), []byte("50:application/pdf:*.pdf\n"), 0o644)
			cmd := exec.Command(filepath.Join(bin, "isoctl"), append([]string{"open"}, tt.args...)...)
			cmd.Env = append([]string{
				"HOME=" + home, "PATH=" + bin, "ISOLATOR_SOCKET=" + sock, "ISOCTL_TEST_RECORDS=" + records,
				"XDG_CONFIG_DIRS=" + filepath.Join(home, "etc-xdg"), "XDG_DATA_DIRS=" + filepath.Join(home, "share"),
			}, tt.env...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.wantCode {
				t.Errorf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, stdout.String(), stderr.String())
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
			views := waitLaunches(t, records, len(tt.wantViews))
			for i, v := range views {
				if i >= len(tt.wantViews) {
					break
				}
				if filepath.Base(v.Args[0]) != "fake-viewer" || strings.Join(v.Args[1:], "\x00") != strings.Join(tt.wantViews[i], "\x00") {
					t.Errorf("launch %d: %q, want fake-viewer %q", i, v.Args, tt.wantViews[i])
				}
				if v.Launched != "1" || !v.NewSession || !v.StdinNull {
					t.Errorf("launch %d: ISOLATOR_LAUNCHED=%q, new session %v, stdin /dev/null %v", i, v.Launched, v.NewSession, v.StdinNull)
				}
			}
		})
	}
}

// waitLaunches waits for n launch records, then a little longer for unwanted ones, and
// returns them in the order of their arguments.
func waitLaunches(t *testing.T, dir string, n int) []launch {
	t.Helper()
	read := func() []launch {
		var ls []launch
		names, _ := filepath.Glob(filepath.Join(dir, "*.json"))
		for _, name := range names {
			data, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			var l launch
			if err := json.Unmarshal(data, &l); err != nil {
				t.Fatal(err)
			}
			ls = append(ls, l)
		}
		return ls
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(read()) < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a second launch, or one through xdg-open, shows up by now
	ls := read()
	if len(ls) != n {
		t.Errorf("%d launches, want %d: %+v", len(ls), n, ls)
	}
	for i := range ls {
		for j := i + 1; j < len(ls); j++ {
			if strings.Join(ls[j].Args[1:], "\x00") < strings.Join(ls[i].Args[1:], "\x00") {
				ls[i], ls[j] = ls[j], ls[i]
			}
		}
	}
	return ls
}

// TestOpenJSONReportsTheApplication checks --json of a launched trusted file.
func TestOpenJSONReportsTheApplication(t *testing.T) {
	root := t.TempDir()
	sock := startDaemon(t, root)
	bin := filepath.Join(root, "bin")
	os.MkdirAll(bin, 0o755)
	self, _ := os.Executable()
	copyFile(t, self, filepath.Join(bin, "fake-viewer"))
	os.MkdirAll(filepath.Join(root, "trusted"), 0o755)
	file := filepath.Join(root, "trusted", "a.pdf")
	os.WriteFile(file, []byte("%PDF-1.4\n"), 0o644)
	home := t.TempDir()
	apps := filepath.Join(home, ".local", "share", "applications")
	os.MkdirAll(apps, 0o755)
	os.WriteFile(filepath.Join(apps, "viewer.desktop"), []byte("[Desktop Entry]\nType=Application\nName=V\nExec=fake-viewer %f\nMimeType=application/pdf;\n"), 0o644)
	records := t.TempDir()
	for k, v := range map[string]string{"HOME": home, "PATH": bin, "ISOCTL_TEST_RECORDS": records,
		"XDG_CONFIG_HOME": "", "XDG_DATA_HOME": "", "XDG_CONFIG_DIRS": home + "/none", "XDG_DATA_DIRS": home + "/none",
		"XDG_CURRENT_DESKTOP": "", launchedEnv: ""} {
		t.Setenv(k, v)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"--socket", sock, "open", "--json", file}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var rep openReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if !rep.Launched || rep.Application != "viewer.desktop" || rep.MIMEType != "application/pdf" {
		t.Errorf("report %+v", rep)
	}
	waitLaunches(t, records, 1)
}
