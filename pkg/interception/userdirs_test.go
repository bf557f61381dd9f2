package interception

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
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

// TestDownloadDir: a user's download directory is accepted only when, with symbolic links
// resolved, it is a directory of the user's inside their home.
func TestDownloadDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
	const uid = 4242 // a user of this test only
	root := t.TempDir()
	outside := filepath.Join(root, "outside")
	mkOwned(t, outside, uid)
	tests := []struct {
		name    string
		setup   func(t *testing.T, home string) // after the home was made
		xdg     string                          // user-dirs.dirs content; @home@ is the home
		want    string                          // relative to the home; "" for an error
		wantErr error                           // ErrNotUserDir or fs.ErrNotExist
	}{
		{name: "Downloads", setup: func(t *testing.T, h string) { mkOwned(t, filepath.Join(h, "Downloads"), uid) }, want: "Downloads"},
		{name: "XDG", xdg: `XDG_DOWNLOAD_DIR="$HOME/Téléchargements"`,
			setup: func(t *testing.T, h string) { mkOwned(t, filepath.Join(h, "Téléchargements"), uid) }, want: "Téléchargements"},
		{name: "absolute inside the home", xdg: `XDG_DOWNLOAD_DIR="@home@/dl"`,
			setup: func(t *testing.T, h string) { mkOwned(t, filepath.Join(h, "dl"), uid) }, want: "dl"},
		{name: "symlink inside the home", setup: func(t *testing.T, h string) {
			mkOwned(t, filepath.Join(h, "real"), uid)
			symlink(t, "real", filepath.Join(h, "Downloads"))
		}, want: "real"},
		{name: "missing", wantErr: fs.ErrNotExist},
		{name: "absolute system directory", xdg: `XDG_DOWNLOAD_DIR="/usr"`, wantErr: ErrNotUserDir},
		{name: "dot dot to /etc", xdg: `XDG_DOWNLOAD_DIR="$HOME/../../../../../../../../etc"`, wantErr: ErrNotUserDir},
		{name: "the home itself", xdg: `XDG_DOWNLOAD_DIR="$HOME/."`, wantErr: ErrNotUserDir},
		{name: "symlink to /etc", setup: func(t *testing.T, h string) { symlink(t, "/etc", filepath.Join(h, "Downloads")) },
			wantErr: ErrNotUserDir},
		{name: "symlink outside the home", setup: func(t *testing.T, h string) { symlink(t, outside, filepath.Join(h, "Downloads")) },
			wantErr: ErrNotUserDir},
		{name: "symlink in the path to /usr", xdg: `XDG_DOWNLOAD_DIR="$HOME/sys/lib"`,
			setup: func(t *testing.T, h string) { symlink(t, "/usr", filepath.Join(h, "sys")) }, wantErr: ErrNotUserDir},
		{name: "owned by root", setup: func(t *testing.T, h string) { mkOwned(t, filepath.Join(h, "Downloads"), 0) },
			wantErr: ErrNotUserDir},
		{name: "a file", setup: func(t *testing.T, h string) {
			if err := os.WriteFile(filepath.Join(h, "Downloads"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			os.Chown(filepath.Join(h, "Downloads"), uid, uid)
		}, wantErr: ErrNotUserDir},
		{name: "user-dirs.dirs is a FIFO", setup: func(t *testing.T, h string) {
			mkOwned(t, filepath.Join(h, ".config"), uid)
			if err := unix.Mkfifo(filepath.Join(h, ".config", "user-dirs.dirs"), 0o644); err != nil {
				t.Fatal(err)
			}
			mkOwned(t, filepath.Join(h, "Downloads"), uid)
		}, wantErr: ErrNotUserDir},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := filepath.Join(root, fmt.Sprintf("home%d", i))
			mkOwned(t, home, uid)
			if tt.xdg != "" {
				mkOwned(t, filepath.Join(home, ".config"), uid)
				xdg := strings.ReplaceAll(tt.xdg, "@home@", home)
				if err := os.WriteFile(filepath.Join(home, ".config", "user-dirs.dirs"), []byte(xdg), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if tt.setup != nil {
				tt.setup(t, home)
			}
			got, err := DownloadDir(home, uid)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || got != (Dir{}) {
					t.Fatalf("DownloadDir = %+v, %v; want an error wrapping %v", got, err, tt.wantErr)
				}
				t.Logf("refused: %v", err)
				return
			}
			want := filepath.Join(home, tt.want)
			if err != nil || got.Path != want {
				t.Fatalf("DownloadDir = %+v, %v; want %q", got, err, want)
			}
			var st unix.Stat_t
			if err := unix.Stat(want, &st); err != nil {
				t.Fatal(err)
			}
			if got.Dev != st.Dev || got.Ino != st.Ino || got.UID != uid {
				t.Errorf("DownloadDir = %+v; want the identity of %s: dev %d, inode %d, uid %d", got, want, st.Dev, st.Ino, uid)
			}
		})
	}
}

func mkOwned(t *testing.T, dir string, uid int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, uid); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func TestIsSystemDir(t *testing.T) {
	for p, want := range map[string]bool{
		"/": true, "/usr": true, "/usr/lib": true, "/etc": true, "/var/lib/x": true, "/proc/self": true,
		"/usrx": false, "/home/a/Downloads": false, "/var/home/a/Downloads": false, "/tmp/x": false, "/srv/dl": false,
	} {
		if got := IsSystemDir(p); got != want {
			t.Errorf("IsSystemDir(%q) = %v, want %v", p, got, want)
		}
	}
}

// TestDefaultDownloadDirs reads a passwd file of real-looking users and of users who point
// their download directory at system directories (the latter are refused, with a reason).
func TestDefaultDownloadDirs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to other users")
	}
	root := t.TempDir()
	mk := func(p string, uid int) string {
		t.Helper()
		mkOwned(t, p, uid)
		return p
	}
	alice := mk(filepath.Join(root, "alice"), 1000)
	aliceDL := mk(filepath.Join(alice, "Téléchargements"), 1000)
	mk(filepath.Join(alice, ".config"), 1000)
	if err := os.WriteFile(filepath.Join(alice, ".config", "user-dirs.dirs"),
		[]byte(`XDG_DOWNLOAD_DIR="$HOME/Téléchargements"`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bob := mk(filepath.Join(root, "bob"), 1001)
	bobDL := mk(filepath.Join(bob, "Downloads"), 1001)
	carol := mk(filepath.Join(root, "carol"), 1002) // no download directory: skipped
	daemon := mk(filepath.Join(root, "daemon"), 1)
	mk(filepath.Join(daemon, "Downloads"), 1)
	rootHome := mk(filepath.Join(root, "root"), 0)
	rootDL := mk(filepath.Join(rootHome, "Downloads"), 0)
	// Users pointing the daemon at system directories.
	var evil []string
	for i, xdg := range []string{`"/usr"`, `"$HOME/../../../../../../../../etc"`, "", `"$HOME/sys/lib"`} {
		uid := 2000 + i
		home := mk(filepath.Join(root, fmt.Sprintf("evil%d", i)), uid)
		mk(filepath.Join(home, ".config"), uid)
		switch xdg {
		case "":
			symlink(t, "/etc", filepath.Join(home, "Downloads"))
		default:
			symlink(t, "/usr", filepath.Join(home, "sys"))
			if err := os.WriteFile(filepath.Join(home, ".config", "user-dirs.dirs"), []byte("XDG_DOWNLOAD_DIR="+xdg+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		evil = append(evil, fmt.Sprintf("evil%d:x:%d:%d::%s:/bin/sh", i, uid, uid, home))
	}
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
	lines = append(lines, evil...)
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
		dirs, err := DefaultDownloadDirs(passwd, 1000, tt.includeRoot)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range dirs {
			got = append(got, d.Path)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("includeRoot=%v: got %q, want %q", tt.includeRoot, got, tt.want)
		}
	}
	users, err := UserDownloadDirs(passwd, 1000, false)
	if err != nil {
		t.Fatal(err)
	}
	refused := map[string]bool{}
	for _, u := range users {
		if u.Err != nil {
			if !errors.Is(u.Err, ErrNotUserDir) || u.Dir != (Dir{}) {
				t.Errorf("%s refused with %+v, %v; want ErrNotUserDir", u.User, u.Dir, u.Err)
			}
			refused[u.User] = true
		}
	}
	if len(refused) != len(evil) {
		t.Errorf("refused %v, want the %d evil users", refused, len(evil))
	}
	if _, err := DefaultDownloadDirs(filepath.Join(root, "missing"), 1000, false); err == nil {
		t.Error("missing passwd file accepted")
	}
}
