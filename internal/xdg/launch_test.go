package xdg

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestLaunch(t *testing.T) {
	files := []string{"/docs/a b.pdf", "/docs/c.pdf"}
	tests := []struct {
		name     string
		exec     string
		path     bool // Path= set to a directory
		files    []string
		wantArgs [][]string // without the program name
	}{
		{name: "%F: one process", exec: recorderName + " --list %F", files: files, wantArgs: [][]string{{"--list", "/docs/a b.pdf", "/docs/c.pdf"}}},
		{name: "%f: one process per file", exec: recorderName + " --one %f", files: files, wantArgs: [][]string{{"--one", "/docs/a b.pdf"}, {"--one", "/docs/c.pdf"}}},
		{name: "Path= sets the directory", exec: `"` + recorderName + `" "quoted arg" %u`, path: true, files: files[:1], wantArgs: [][]string{{"quoted arg", "/docs/a b.pdf"}}},
	}
	cwd, _ := os.Getwd()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, nil)
			recDir := t.TempDir()
			workDir := t.TempDir()
			entry := app(tt.exec, pdf)
			if tt.path {
				entry += "Path=" + workDir + "\n"
			}
			w.write(t, "D1/applications/viewer.desktop", entry)
			a, skipped := NewResolver(w.env).Find(pdf, nil)
			if a == nil {
				t.Fatalf("no application; skipped %+v", skipped)
			}
			if a.Program != filepath.Join(w.bin, recorderName) {
				t.Errorf("program %q", a.Program)
			}
			env := []string{"XDG_TEST_RECORD_DIR=" + recDir, "ISOLATOR_LAUNCHED=1"}
			pids, err := a.Launch(tt.files, env)
			if err != nil {
				t.Fatal(err)
			}
			if len(pids) != len(tt.wantArgs) {
				t.Errorf("%d processes, want %d", len(pids), len(tt.wantArgs))
			}
			recs := readRecords(t, recDir, len(tt.wantArgs))
			wantDir := cwd
			if tt.path {
				wantDir = workDir
			}
			for i, r := range recs {
				if r.Args[0] != recorderName || !reflect.DeepEqual(r.Args[1:], tt.wantArgs[i]) {
					t.Errorf("launch %d: argv %q, want %s %q", i, r.Args, recorderName, tt.wantArgs[i])
				}
				if !r.NewSession || !r.StdioNull {
					t.Errorf("launch %d: not detached: %+v", i, r)
				}
				if r.Dir != wantDir {
					t.Errorf("launch %d: directory %q, want %q", i, r.Dir, wantDir)
				}
				if r.LaunchedEnv != "1" {
					t.Errorf("launch %d: environment not passed: %+v", i, r)
				}
			}
		})
	}
}

func TestLaunchFailure(t *testing.T) {
	w := newWorld(t, map[string]string{
		"D1/applications/viewer.desktop": app(recorderName+" %f", pdf) + "Path=/nonexistent/dir\n",
	})
	a, _ := NewResolver(w.env).Find(pdf, nil)
	if a == nil {
		t.Fatal("no application")
	}
	if _, err := a.Launch([]string{"/x.pdf"}, nil); err == nil {
		t.Error("launch in a missing directory succeeded")
	}
}
