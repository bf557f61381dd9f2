package xdg

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseExec(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{in: "viewer", want: []string{"viewer"}},
		{in: "  viewer \t --a   b\n", want: []string{"viewer", "--a", "b"}},
		{in: `"/opt/My Viewer/bin/viewer" %f`, want: []string{"/opt/My Viewer/bin/viewer", "%f"}},
		{in: `viewer "a \"quoted\" word" "\$HOME" "back\\slash" "\` + "`" + `cmd\` + "`" + `"`, want: []string{"viewer", `a "quoted" word`, "$HOME", `back\slash`, "`cmd`"}},
		{in: `viewer "keep \x backslash"`, want: []string{"viewer", `keep \x backslash`}},
		{in: `viewer ""`, want: []string{"viewer", ""}},
		{in: `viewer a"b c"d`, want: []string{"viewer", "ab cd"}},
		{in: `sh -c 'echo "$1" | cat' sh %f`, want: []string{"sh", "-c", `echo "$1" | cat`, "sh", "%f"}},
		{in: `viewer a\ b \"c`, want: []string{"viewer", "a b", `"c`}},
		{in: "viewer > out ; rm -rf ~ &", want: []string{"viewer", ">", "out", ";", "rm", "-rf", "~", "&"}},
		{in: `viewer "unterminated`, wantErr: "unterminated double quote"},
		{in: `viewer 'unterminated`, wantErr: "unterminated single quote"},
		{in: `viewer \`, wantErr: "backslash at the end"},
		{in: "", wantErr: "empty command"},
		{in: "  \t ", wantErr: "empty command"},
	}
	for _, tt := range tests {
		got, err := ParseExec(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseExec(%q) = %q, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseExec(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestCommands(t *testing.T) {
	two := []string{"/d/a b.pdf", "/d/c.pdf"}
	tests := []struct {
		name    string
		exec    string // as written in the desktop file (string escapes applied by ParseEntry)
		icon    string
		files   []string
		want    [][]string
		wantErr string
	}{
		{name: "%f one file", exec: "viewer %f", files: two[:1], want: [][]string{{"viewer", "/d/a b.pdf"}}},
		{name: "%f several files: one launch each", exec: "viewer --new %f", files: two,
			want: [][]string{{"viewer", "--new", "/d/a b.pdf"}, {"viewer", "--new", "/d/c.pdf"}}},
		{name: "%F several files: one launch", exec: "viewer %F --end", files: two, want: [][]string{{"viewer", "/d/a b.pdf", "/d/c.pdf", "--end"}}},
		{name: "%u paths for URLs", exec: "viewer %u", files: two, want: [][]string{{"viewer", "/d/a b.pdf"}, {"viewer", "/d/c.pdf"}}},
		{name: "%U", exec: "viewer %U", files: two, want: [][]string{{"viewer", "/d/a b.pdf", "/d/c.pdf"}}},
		{name: "%f with %F: first file", exec: "viewer --first=%f %F", files: two, want: [][]string{{"viewer", "--first=/d/a b.pdf", "/d/a b.pdf", "/d/c.pdf"}}},
		{name: "%f inside an argument", exec: "viewer --file=%f", files: two[:1], want: [][]string{{"viewer", "--file=/d/a b.pdf"}}},
		{name: "%f quoted", exec: `viewer "%f"`, files: two[:1], want: [][]string{{"viewer", "/d/a b.pdf"}}},
		{name: "no files: %f and %F vanish", exec: "viewer %f %F", want: [][]string{{"viewer"}}},
		{name: "no field code: appended", exec: "viewer --view", files: two, want: [][]string{{"viewer", "--view", "/d/a b.pdf"}, {"viewer", "--view", "/d/c.pdf"}}},
		{name: "%i with an icon", exec: "viewer %i %f", icon: "viewer-icon", files: two[:1], want: [][]string{{"viewer", "--icon", "viewer-icon", "/d/a b.pdf"}}},
		{name: "%i without an icon", exec: "viewer %i %f", files: two[:1], want: [][]string{{"viewer", "/d/a b.pdf"}}},
		{name: "%c and %k", exec: "viewer --class=%c %k %f", files: two[:1], want: [][]string{{"viewer", "--class=Test App", "/apps/t.desktop", "/d/a b.pdf"}}},
		{name: "%%", exec: "viewer --zoom=100%% %% %f", files: two[:1], want: [][]string{{"viewer", "--zoom=100%", "%", "/d/a b.pdf"}}},
		{name: "%% in the program", exec: "/opt/100%%/viewer %f", files: two[:1], want: [][]string{{"/opt/100%/viewer", "/d/a b.pdf"}}},
		{name: "deprecated codes removed", exec: "viewer %d %D %n %N %v %m --x%d %f", files: two[:1], want: [][]string{{"viewer", "--x", "/d/a b.pdf"}}},
		{name: "string escapes then quoting", exec: `viewer\s"a\\\\b" "\\$x" "--t=\t" --u=\t%f`, files: two[:1], want: [][]string{{"viewer", `a\b`, "$x", "--t=\t", "--u=", "/d/a b.pdf"}}},
		{name: "unknown field code", exec: "viewer %x %f", wantErr: "unknown field code %x"},
		{name: "lone %", exec: "viewer 100%", wantErr: "lone %"},
		{name: "%F inside an argument", exec: "viewer --files=%F", wantErr: "%F must be an argument on its own"},
		{name: "%i inside an argument", exec: "viewer -i%i", wantErr: "%i must be an argument on its own"},
		{name: "field code as the program", exec: "%f --x", wantErr: "in the program name"},
		{name: "field code in the program", exec: "/bin/%u", wantErr: "in the program name"},
		{name: "unterminated quote", exec: `viewer "%f`, wantErr: "unterminated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := "[Desktop Entry]\nType=Application\nName=Test App\nExec=" + tt.exec + "\n"
			if tt.icon != "" {
				data += "Icon=" + tt.icon + "\n"
			}
			e, err := ParseEntry([]byte(data), "t.desktop", "/apps/t.desktop")
			if err != nil {
				t.Fatal(err)
			}
			got, err := e.Commands(tt.files)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Commands = %q, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Commands = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestRuns(t *testing.T) {
	tests := []struct {
		exec, tryExec string
		want          string
	}{
		{exec: "isoctl open %F", want: "isoctl"},
		{exec: "/usr/local/bin/isoctl open %F", want: "isoctl"},
		{exec: "env A=1 isoctl open %F", want: "isoctl"},
		{exec: `sh -c "exec isoctl open \\"$@\\"" sh %F`, want: "isoctl"},
		{exec: "viewer %f", tryExec: "/usr/bin/isoctl", want: "isoctl"},
		{exec: "xdg-open %u", want: "xdg-open"},
		{exec: "kioclient5 exec %u", want: "kioclient5"},
		{exec: "viewer --isoctl-compatible %f", want: ""},
		{exec: "evince %U", want: ""},
	}
	for _, tt := range tests {
		e := &Entry{Exec: unescapeString(tt.exec), TryExec: tt.tryExec}
		got, _ := e.Runs(append([]string{"isoctl"}, Openers...)...)
		if got != tt.want {
			t.Errorf("Runs(%q, TryExec %q) = %q, want %q", tt.exec, tt.tryExec, got, tt.want)
		}
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "prog")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	noexec := filepath.Join(dir, "data")
	os.WriteFile(noexec, []byte("x"), 0o644)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	path := "relative:" + filepath.Join(dir, "missing") + ":" + dir
	for _, tt := range []struct {
		prog, want string
		ok         bool
	}{
		{"prog", exe, true},
		{exe, exe, true},
		{"data", "", false},
		{noexec, "", false},
		{"sub", "", false},
		{"./prog", "", false},
		{"", "", false},
	} {
		got, err := lookPath(tt.prog, path)
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("lookPath(%q) = %q, %v", tt.prog, got, err)
		}
	}
}

func TestKeyFile(t *testing.T) {
	kf := parseKeyFile([]byte("# c\nTop=1\n[G]\n  A = x y  \r\nB=1\nB=2\nName[de]=Z\n[H]\nA=h\n[G]\nC=3\n[bad\nD=4\n"))
	for _, tt := range []struct{ g, k, want string }{
		{"G", "A", "x y"}, {"G", "B", "2"}, {"G", "Name[de]", "Z"}, {"H", "A", "h"}, {"G", "C", "3"},
	} {
		if v, _ := kf.get(tt.g, tt.k); v != tt.want {
			t.Errorf("[%s]%s = %q, want %q", tt.g, tt.k, v, tt.want)
		}
	}
	for _, g := range []string{"", "bad"} {
		if len(kf.groups[g]) != 0 {
			t.Errorf("group %q: %v", g, kf.groups[g])
		}
	}
	if _, ok := kf.get("G", "D"); ok {
		t.Error("a key after a broken header went to the previous group")
	}
	if got := splitList(` a.desktop;; b\;c.desktop ;`); !reflect.DeepEqual(got, []string{"a.desktop", "b;c.desktop"}) {
		t.Errorf("splitList = %q", got)
	}
	if got := unescapeString(`a\sb\nc\td\re\\f\"g\`); got != "a b\nc\td\re\\f\\\"g\\" {
		t.Errorf("unescapeString = %q", got)
	}
}
