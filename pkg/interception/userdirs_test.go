package interception

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseUserDirs(t *testing.T) {
	const home = "/home/alice"
	tests := []struct {
		name string
		in   string
		want map[string]string
	}{
		{"default file", `# This file is written by xdg-user-dirs-update
# If you want to change or add directories, just edit the line you're
XDG_DESKTOP_DIR="$HOME/Desktop"
XDG_DOWNLOAD_DIR="$HOME/Downloads"
`, map[string]string{"XDG_DESKTOP_DIR": home + "/Desktop", "XDG_DOWNLOAD_DIR": home + "/Downloads"}},
		{"localised with space", `XDG_DOWNLOAD_DIR="$HOME/Téléchargements récents"`,
			map[string]string{"XDG_DOWNLOAD_DIR": home + "/Téléchargements récents"}},
		{"absolute", `XDG_DOWNLOAD_DIR="/srv/dl/"`, map[string]string{"XDG_DOWNLOAD_DIR": "/srv/dl"}},
		{"escaped quote", `XDG_DOWNLOAD_DIR="$HOME/a\"b\$c"`, map[string]string{"XDG_DOWNLOAD_DIR": home + `/a"b$c`}},
		{"disabled", `XDG_DOWNLOAD_DIR="$HOME/"`, map[string]string{}},
		{"relative refused", `XDG_DOWNLOAD_DIR="Downloads"`, map[string]string{}},
		{"unquoted refused", `XDG_DOWNLOAD_DIR=$HOME/Downloads`, map[string]string{}},
		{"other variable refused", `XDG_DOWNLOAD_DIR="${XDG_DATA_HOME}/dl"`, map[string]string{}},
		{"bad name", `1XDG="$HOME/x"` + "\n" + `X-Y="$HOME/y"`, map[string]string{}},
		{"dot dot cleaned", `XDG_DOWNLOAD_DIR="$HOME/../../etc"`, map[string]string{"XDG_DOWNLOAD_DIR": "/etc"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseUserDirs(strings.NewReader(tt.in), home)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func FuzzParseUserDirs(f *testing.F) {
	f.Add("XDG_DOWNLOAD_DIR=\"$HOME/Downloads\"\n")
	f.Add("# c\nXDG_DOWNLOAD_DIR=\"/abs\\\"x\"\nA=\"$HOME/\"\n")
	f.Fuzz(func(t *testing.T, in string) {
		got, err := ParseUserDirs(strings.NewReader(in), "/home/u")
		if err != nil {
			return
		}
		for k, v := range got {
			if !validVarName(k) || !filepath.IsAbs(v) || strings.ContainsRune(v, 0) {
				t.Fatalf("bad entry %q=%q", k, v)
			}
		}
	})
}

func TestDefaultDownloadDirs(t *testing.T) {
	root := t.TempDir()
	mk := func(p string) string {
		t.Helper()
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	alice := mk(filepath.Join(root, "alice"))
	aliceDL := mk(filepath.Join(alice, "Téléchargements"))
	mk(filepath.Join(alice, ".config"))
	if err := os.WriteFile(filepath.Join(alice, ".config", "user-dirs.dirs"),
		[]byte(`XDG_DOWNLOAD_DIR="$HOME/Téléchargements"`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bob := mk(filepath.Join(root, "bob"))
	bobDL := mk(filepath.Join(bob, "Downloads"))
	carol := mk(filepath.Join(root, "carol")) // no download directory: skipped
	daemon := mk(filepath.Join(root, "daemon"))
	mk(filepath.Join(daemon, "Downloads"))
	rootHome := mk(filepath.Join(root, "root"))
	rootDL := mk(filepath.Join(rootHome, "Downloads"))
	passwd := filepath.Join(root, "passwd")
	lines := []string{
		fmt.Sprintf("root:x:0:0:root:%s:/bin/bash", rootHome),
		fmt.Sprintf("daemon:x:1:1:daemon:%s:/usr/sbin/nologin", daemon),
		fmt.Sprintf("alice:x:1000:1000::%s:/bin/bash", alice),
		fmt.Sprintf("bob:x:1001:1001::%s:/bin/bash", bob),
		fmt.Sprintf("carol:x:1002:1002::%s:/bin/bash", carol),
		"broken line",
		"nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin",
	}
	if err := os.WriteFile(passwd, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		includeRoot bool
		want        []string
	}{
		{false, []string{aliceDL, bobDL}},
		{true, []string{rootDL, aliceDL, bobDL}},
	} {
		got, err := DefaultDownloadDirs(passwd, 1000, tt.includeRoot)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("includeRoot=%v: got %q, want %q", tt.includeRoot, got, tt.want)
		}
	}
	if _, err := DefaultDownloadDirs(filepath.Join(root, "missing"), 1000, false); err == nil {
		t.Error("missing passwd file accepted")
	}
}
