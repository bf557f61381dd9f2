package interception

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ParseUserDirs parses an XDG user-dirs.dirs file (normally ~/.config/user-dirs.dirs) and
// returns its variables, such as XDG_DOWNLOAD_DIR, with "$HOME" expanded to home. As the
// xdg-user-dirs specification requires, a value is a double-quoted path that is either
// absolute or starts with $HOME; other lines, comments and malformed values are skipped.
// A value of "$HOME/" alone means the directory is disabled and is skipped too.
func ParseUserDirs(r io.Reader, home string) (map[string]string, error) {
	out := make(map[string]string)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok || !validVarName(key) {
			continue
		}
		val = strings.TrimSpace(val)
		if len(val) < 2 || val[0] != '"' || val[len(val)-1] != '"' {
			continue
		}
		val = unescapeShell(val[1 : len(val)-1])
		switch {
		case val == "$HOME" || val == "$HOME/":
			continue // disabled: the spec maps a disabled directory to $HOME
		case strings.HasPrefix(val, "$HOME/"):
			val = filepath.Join(home, val[len("$HOME/"):])
		case strings.HasPrefix(val, "/"):
			val = filepath.Clean(val)
		default:
			continue
		}
		if strings.ContainsRune(val, 0) {
			continue
		}
		out[key] = val
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read user-dirs: %w", err)
	}
	return out, nil
}

func validVarName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// unescapeShell removes the backslash escapes xdg-user-dirs-update writes for '"', '\',
// '$' and '`'.
func unescapeShell(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// DownloadDir returns the XDG download directory of the user whose home is home: the
// XDG_DOWNLOAD_DIR of home/.config/user-dirs.dirs, else home/Downloads.
func DownloadDir(home string) (string, error) {
	f, err := os.Open(filepath.Join(home, ".config", "user-dirs.dirs"))
	if errors.Is(err, os.ErrNotExist) {
		return filepath.Join(home, "Downloads"), nil
	}
	if err != nil {
		return "", fmt.Errorf("download dir of %s: %w", home, err)
	}
	defer f.Close()
	vars, err := ParseUserDirs(f, home)
	if err != nil {
		return "", fmt.Errorf("download dir of %s: %w", home, err)
	}
	if d, ok := vars["XDG_DOWNLOAD_DIR"]; ok {
		return d, nil
	}
	return filepath.Join(home, "Downloads"), nil
}

// DefaultDownloadDirs returns the existing download directories of the users listed in
// passwdPath (normally /etc/passwd) whose home directory exists, in file order. Users with
// uid below minUID (system accounts) are skipped, except root when includeRoot is set.
func DefaultDownloadDirs(passwdPath string, minUID uint32, includeRoot bool) ([]string, error) {
	f, err := os.Open(passwdPath)
	if err != nil {
		return nil, fmt.Errorf("default download dirs: %w", err)
	}
	defer f.Close()
	var dirs []string
	seen := make(map[string]bool)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 7 {
			continue
		}
		var uid uint32
		if _, err := fmt.Sscan(fields[2], &uid); err != nil {
			continue
		}
		if uid < minUID && !(includeRoot && uid == 0) || uid == 65534 {
			continue
		}
		home := fields[5]
		if !filepath.IsAbs(home) {
			continue
		}
		if st, err := os.Stat(home); err != nil || !st.IsDir() {
			continue
		}
		d, err := DownloadDir(home)
		if err != nil {
			continue
		}
		if st, err := os.Stat(d); err != nil || !st.IsDir() || seen[d] {
			continue
		}
		seen[d] = true
		dirs = append(dirs, d)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("default download dirs: %w", err)
	}
	return dirs, nil
}
