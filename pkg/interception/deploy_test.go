package interception

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDesktopEntries checks the desktop files of deploy/xdg: the handler's Exec line and
// MIME types, and desktop-file-validate's verdict where it is installed.
func TestDesktopEntries(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy", "xdg")
	mimeRE := regexp.MustCompile(`^[a-z]+/[A-Za-z0-9.+-]+$`)
	for _, name := range []string{"isolator-open.desktop", "kio/isolator-open.desktop"} {
		t.Run(name, func(t *testing.T) {
			f, err := os.Open(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			keys := map[string]string{}
			group := ""
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				line := sc.Text()
				switch {
				case line == "" || strings.HasPrefix(line, "#"):
				case strings.HasPrefix(line, "["):
					group = line
				default:
					k, v, ok := strings.Cut(line, "=")
					if !ok {
						t.Errorf("malformed line %q", line)
					}
					keys[group+k] = v
				}
			}
			var exec string
			for k, v := range keys {
				if strings.HasSuffix(k, "]Exec") {
					exec = v
				}
			}
			if exec != "isoctl open %F" {
				t.Errorf("Exec=%q, want isoctl open %%F", exec)
			}
			types := keys["[Desktop Entry]MimeType"]
			if !strings.HasSuffix(types, ";") {
				t.Errorf("MimeType %q does not end with ';'", types)
			}
			for _, m := range strings.Split(strings.TrimSuffix(types, ";"), ";") {
				if !mimeRE.MatchString(m) {
					t.Errorf("bad MIME type %q", m)
				}
			}
		})
	}
	validate, err := exec.LookPath("desktop-file-validate")
	if err != nil {
		t.Skip("desktop-file-validate not installed (Debian package desktop-file-utils)")
	}
	if out, err := exec.Command(validate, "--no-hints", filepath.Join(dir, "isolator-open.desktop")).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("desktop-file-validate: %v: %s", err, out)
	}
}
