package xdg

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	pdf     = "application/pdf"
	isoOpen = "[Desktop Entry]\nType=Application\nName=Open in micro VM\nExec=isoctl open %F\nTryExec=isoctl\nNoDisplay=true\nMimeType=application/pdf;text/plain;\n"
	// A minimal shared-mime-info database for the data directory D2.
	mimeAliases    = "application/x-pdf application/pdf\n"
	mimeSubclasses = "text/x-csrc text/plain\ntext/x-c++src text/x-csrc\n"
)

func TestFind(t *testing.T) {
	tests := []struct {
		name     string
		files    map[string]string
		desktops []string
		typ      string
		want     string   // desktop file ID, "" for none
		skipped  []string // substrings of the skip reasons, in order
	}{
		{
			name: "only a desktop file",
			files: map[string]string{
				"D1/applications/viewer.desktop": app("viewer %f", pdf),
			},
			typ: pdf, want: "viewer.desktop",
		},
		{
			name: "user default beats system default",
			files: map[string]string{
				"D1/applications/viewer.desktop": app("viewer %f", pdf),
				"D1/applications/other.desktop":  app("other %f", pdf),
				"D1/applications/mimeapps.list":  list("[Default Applications]", pdf+"=viewer.desktop"),
				"CH/mimeapps.list":               list("[Default Applications]", pdf+"=other.desktop"),
				"D1/applications/mimeinfo.cache": list("[MIME Cache]", pdf+"=viewer.desktop;other.desktop;"),
				"D2/applications/unused.desktop": app("viewer %f", pdf),
				"CS/mimeapps.list":               list("[Default Applications]", pdf+"=unused.desktop"),
				"DH/applications/mimeapps.list":  list("[Default Applications]", pdf+"=unused.desktop"),
				"D2/applications/defaults.list":  list("[Default Applications]", pdf+"=unused.desktop"),
			},
			typ: pdf, want: "other.desktop",
		},
		{
			name: "precedence: config dirs before data home before data dirs",
			files: map[string]string{
				"D1/applications/a.desktop":     app("viewer %f", pdf),
				"D1/applications/b.desktop":     app("viewer %f", pdf),
				"D1/applications/c.desktop":     app("viewer %f", pdf),
				"CS/mimeapps.list":              list("[Default Applications]", pdf+"=b.desktop"),
				"DH/applications/mimeapps.list": list("[Default Applications]", pdf+"=c.desktop"),
				"D1/applications/mimeapps.list": list("[Default Applications]", pdf+"=a.desktop"),
			},
			typ: pdf, want: "b.desktop",
		},
		{
			name: "legacy defaults.list is the last default of its directory",
			files: map[string]string{
				"D1/applications/a.desktop":     app("viewer %f", pdf),
				"D1/applications/b.desktop":     app("viewer %f", pdf),
				"D1/applications/defaults.list": list("[Default Applications]", pdf+"=b.desktop"),
			},
			typ: pdf, want: "b.desktop",
		},
		{
			name: "desktop-specific list beats mimeapps.list of the same directory",
			files: map[string]string{
				"D1/applications/viewer.desktop": app("viewer %f", pdf),
				"D1/applications/other.desktop":  app("other %f", pdf),
				"CH/mimeapps.list":               list("[Default Applications]", pdf+"=viewer.desktop"),
				"CH/kde-mimeapps.list":           list("[Default Applications]", pdf+"=other.desktop"),
			},
			desktops: []string{"kde"},
			typ:      pdf, want: "other.desktop",
		},
		{
			name: "desktop-specific lists in XDG_CURRENT_DESKTOP order",
			files: map[string]string{
				"D1/applications/viewer.desktop": app("viewer %f", pdf),
				"D1/applications/other.desktop":  app("other %f", pdf),
				"CH/gnome-mimeapps.list":         list("[Default Applications]", pdf+"=viewer.desktop"),
				"CH/ubuntu-mimeapps.list":        list("[Default Applications]", pdf+"=other.desktop"),
			},
			desktops: []string{"ubuntu", "gnome"},
			typ:      pdf, want: "other.desktop",
		},
		{
			name: "another desktop's list is ignored",
			files: map[string]string{
				"D1/applications/viewer.desktop": app("viewer %f", pdf),
				"D1/applications/other.desktop":  app("other %f", pdf),
				"CH/mimeapps.list":               list("[Default Applications]", pdf+"=viewer.desktop"),
				"CH/kde-mimeapps.list":           list("[Default Applications]", pdf+"=other.desktop"),
			},
			desktops: []string{"gnome"},
			typ:      pdf, want: "viewer.desktop",
		},
		{
			name: "user's mimeapps.list beats a system desktop-specific list",
			files: map[string]string{
				"D1/applications/viewer.desktop":      app("viewer %f", pdf),
				"D1/applications/other.desktop":       app("other %f", pdf),
				"CH/mimeapps.list":                    list("[Default Applications]", pdf+"=viewer.desktop"),
				"D1/applications/gnome-mimeapps.list": list("[Default Applications]", pdf+"=other.desktop"),
				"CS/gnome-mimeapps.list":              list("[Default Applications]", pdf+"=other.desktop"),
			},
			desktops: []string{"gnome"},
			typ:      pdf, want: "viewer.desktop",
		},
		{
			name: "desktop-specific lists cannot add associations",
			files: map[string]string{
				"D1/applications/other.desktop": app("other %f"),
				"CH/kde-mimeapps.list":          list("[Added Associations]", pdf+"=other.desktop;"),
			},
			desktops: []string{"kde"},
			typ:      pdf, want: "",
		},
		{
			name: "isolator-open.desktop as the default: the next default in the list",
			files: map[string]string{
				"D1/applications/isolator-open.desktop": isoOpen,
				"D1/applications/viewer.desktop":        app("viewer %f", pdf),
				"D1/applications/other.desktop":         app("other %f", pdf),
				"CH/mimeapps.list":                      list("[Default Applications]", pdf+"=isolator-open.desktop;other.desktop;"),
				"D1/applications/mimeinfo.cache":        list("[MIME Cache]", pdf+"=isolator-open.desktop;viewer.desktop;other.desktop;"),
			},
			typ: pdf, want: "other.desktop", skipped: []string{"isolator-open.desktop: Isolator's own handler"},
		},
		{
			name: "isolator-open.desktop as the default: the system default",
			files: map[string]string{
				"DH/applications/isolator-open.desktop": isoOpen,
				"D1/applications/viewer.desktop":        app("viewer %f", pdf),
				"D1/applications/other.desktop":         app("other %f", pdf),
				"CH/mimeapps.list":                      list("[Default Applications]", pdf+"=isolator-open.desktop", "[Added Associations]", pdf+"=isolator-open.desktop;"),
				"D1/applications/gnome-mimeapps.list":   list("[Default Applications]", pdf+"=viewer.desktop"),
			},
			desktops: []string{"gnome"},
			typ:      pdf, want: "viewer.desktop", skipped: []string{"Isolator's own handler"},
		},
		{
			name: "isolator-open.desktop as the only default: the associations",
			files: map[string]string{
				"D1/applications/isolator-open.desktop": isoOpen,
				"D1/applications/viewer.desktop":        app("viewer %f", pdf),
				"CH/mimeapps.list":                      list("[Default Applications]", pdf+"=isolator-open.desktop"),
			},
			typ: pdf, want: "viewer.desktop",
		},
		{
			name: "entries that run isoctl or a generic opener under another name",
			files: map[string]string{
				"D1/applications/a-iso.desktop":  app("env ISOLATOR=1 isoctl open %F", pdf),
				"D1/applications/b-sh.desktop":   app(`sh -c "isoctl open \\"$1\\"" sh %f`, pdf),
				"D1/applications/c-xdg.desktop":  app("/usr/bin/xdg-open %u", pdf),
				"D1/applications/d-gio.desktop":  app("gio open %U", pdf),
				"D1/applications/viewer.desktop": app("viewer %f", pdf),
			},
			typ: pdf, want: "viewer.desktop",
			skipped: []string{"a-iso.desktop: runs isoctl", "b-sh.desktop: runs isoctl", "c-xdg.desktop: runs xdg-open", "d-gio.desktop: runs gio"},
		},
		{
			name: "only Isolator: none",
			files: map[string]string{
				"D1/applications/isolator-open.desktop": isoOpen,
				"CH/mimeapps.list":                      list("[Default Applications]", pdf+"=isolator-open.desktop"),
			},
			typ: pdf, want: "", skipped: []string{"isolator-open.desktop: Isolator's own handler"},
		},
		{
			name: "a default that is not installed: the next one",
			files: map[string]string{
				"D1/applications/viewer.desktop": app("viewer %f", pdf),
				"CH/mimeapps.list":               list("[Default Applications]", pdf+"=gone.desktop;viewer.desktop;"),
			},
			typ: pdf, want: "viewer.desktop", skipped: []string{"gone.desktop: not installed"},
		},
		{
			name: "removed association cancels a system default",
			files: map[string]string{
				"D1/applications/viewer.desktop": app("viewer %f", pdf),
				"D1/applications/other.desktop":  app("other %f", pdf),
				"D1/applications/mimeapps.list":  list("[Default Applications]", pdf+"=viewer.desktop"),
				"CH/mimeapps.list":               list("[Removed Associations]", pdf+"=viewer.desktop;"),
			},
			typ: pdf, want: "other.desktop", skipped: []string{"viewer.desktop: default for application/pdf in"},
		},
		{
			name: "removed association in the same file as the default",
			files: map[string]string{
				"D1/applications/viewer.desktop": app("viewer %f", pdf),
				"CH/mimeapps.list":               list("[Default Applications]", pdf+"=viewer.desktop", "[Removed Associations]", pdf+"=viewer.desktop;"),
			},
			typ: pdf, want: "",
		},
		{
			name: "a less important removal does not cancel a user default",
			files: map[string]string{
				"D1/applications/viewer.desktop": app("viewer %f", pdf),
				"D1/applications/other.desktop":  app("other %f", pdf),
				"CH/mimeapps.list":               list("[Default Applications]", pdf+"=viewer.desktop"),
				"CS/mimeapps.list":               list("[Removed Associations]", pdf+"=viewer.desktop;"),
			},
			typ: pdf, want: "viewer.desktop",
		},
		{
			name: "removed association hides a desktop file's MimeType",
			files: map[string]string{
				"D1/applications/a.desktop":      app("viewer %f", pdf),
				"D1/applications/b.desktop":      app("other %f", pdf),
				"D1/applications/mimeinfo.cache": list("[MIME Cache]", pdf+"=a.desktop;b.desktop;"),
				"CH/mimeapps.list":               list("[Removed Associations]", pdf+"=a.desktop;"),
			},
			typ: pdf, want: "b.desktop",
		},
		{
			name: "added associations in order, before desktop files",
			files: map[string]string{
				"D1/applications/a.desktop": app("viewer %f", pdf),
				"D1/applications/b.desktop": app("other %f"),
				"D1/applications/c.desktop": app("other %f"),
				"CH/mimeapps.list":          list("[Added Associations]", pdf+"=c.desktop;b.desktop;"),
			},
			typ: pdf, want: "c.desktop",
		},
		{
			name: "a data directory's added association does not reach a desktop file shadowing it",
			files: map[string]string{
				"DH/applications/b.desktop":     app("other %f"),
				"D1/applications/b.desktop":     app("other %f"),
				"D1/applications/a.desktop":     app("viewer %f", pdf),
				"D1/applications/mimeapps.list": list("[Added Associations]", pdf+"=b.desktop;"),
			},
			typ: pdf, want: "a.desktop",
		},
		{
			name: "mimeinfo.cache order, then desktop files it does not list",
			files: map[string]string{
				"D1/applications/a.desktop":      app("viewer %f", pdf),
				"D1/applications/b.desktop":      app("viewer %f", pdf),
				"D1/applications/mimeinfo.cache": list("[MIME Cache]", pdf+"=b.desktop;a.desktop;"),
			},
			typ: pdf, want: "b.desktop",
		},
		{
			name: "a stale mimeinfo.cache entry is checked against the desktop file",
			files: map[string]string{
				"D1/applications/a.desktop":      app("viewer %f", "image/png"),
				"D1/applications/z.desktop":      app("viewer %f", pdf),
				"D1/applications/mimeinfo.cache": list("[MIME Cache]", pdf+"=a.desktop;"),
			},
			typ: pdf, want: "z.desktop",
		},
		{
			name: "the user's desktop files before the system's",
			files: map[string]string{
				"D1/applications/a.desktop": app("viewer %f", pdf),
				"DH/applications/z.desktop": app("viewer %f", pdf),
			},
			typ: pdf, want: "z.desktop",
		},
		{
			name: "Hidden=true in the user's directory deletes the system entry",
			files: map[string]string{
				"D1/applications/a.desktop":      app("viewer %f", pdf),
				"DH/applications/a.desktop":      "[Desktop Entry]\nType=Application\nName=A\nExec=viewer %f\nHidden=true\n",
				"D1/applications/b.desktop":      app("other %f", pdf),
				"CH/mimeapps.list":               list("[Default Applications]", pdf+"=a.desktop"),
				"D1/applications/mimeinfo.cache": list("[MIME Cache]", pdf+"=a.desktop;b.desktop;"),
			},
			typ: pdf, want: "b.desktop", skipped: []string{"a.desktop: Hidden=true"},
		},
		{
			name: "a user copy without the MimeType removes the association",
			files: map[string]string{
				"D1/applications/a.desktop": app("viewer %f", pdf),
				"DH/applications/a.desktop": app("viewer %f"),
			},
			typ: pdf, want: "",
		},
		{
			name: "NoDisplay=true does not matter",
			files: map[string]string{
				"D1/applications/a.desktop": app("viewer %f", pdf) + "NoDisplay=true\n",
			},
			typ: pdf, want: "a.desktop",
		},
		{
			name: "TryExec not installed, Exec program not installed, invalid Exec, terminal, not an application",
			files: map[string]string{
				"D1/applications/a.desktop": app("viewer %f", pdf) + "TryExec=no-such-program\n",
				"D1/applications/b.desktop": app("no-such-program %f", pdf),
				"D1/applications/c.desktop": app("viewer %x", pdf),
				"D1/applications/d.desktop": app("viewer %f", pdf) + "Terminal=true\n",
				"D1/applications/e.desktop": strings.Replace(app("viewer %f", pdf), "Type=Application", "Type=Link", 1),
				"D1/applications/f.desktop": app("viewer %f", pdf) + "TryExec=viewer\n",
			},
			typ: pdf, want: "f.desktop",
			skipped: []string{"a.desktop: TryExec=no-such-program", "b.desktop: program no-such-program", "c.desktop: invalid Exec=", "d.desktop: Terminal=true", "e.desktop: Type=Link"},
		},
		{
			name: "desktop file IDs of subdirectories",
			files: map[string]string{
				"D1/applications/kde4/viewer.desktop": app("viewer %f"),
				"CH/mimeapps.list":                    list("[Default Applications]", pdf+"=kde4-viewer.desktop"),
			},
			typ: pdf, want: "kde4-viewer.desktop",
		},
		{
			name: "a desktop file ID with a path is ignored",
			files: map[string]string{
				"D1/viewer.desktop": app("viewer %f", pdf),
				"CH/mimeapps.list":  list("[Default Applications]", pdf+"=../viewer.desktop;"),
			},
			typ: pdf, want: "",
		},
		{
			name: "aliases as keys",
			files: map[string]string{
				"D2/mime/aliases":           mimeAliases,
				"D1/applications/a.desktop": app("viewer %f", "application/x-pdf"),
				"D1/applications/b.desktop": app("viewer %f", pdf),
				"CH/mimeapps.list":          list("[Default Applications]", "application/x-pdf=a.desktop"),
			},
			typ: pdf, want: "a.desktop",
		},
		{
			name: "parent type per subclasses",
			files: map[string]string{
				"D2/mime/subclasses":        mimeSubclasses,
				"D1/applications/a.desktop": app("viewer %f", "text/plain"),
				"D1/applications/c.desktop": app("viewer %f", "text/x-csrc"),
				"CH/mimeapps.list":          list("[Default Applications]", "text/plain=a.desktop"),
			},
			typ: "text/x-c++src", want: "c.desktop",
		},
		{
			name: "an application for the type beats the default of its parent",
			files: map[string]string{
				"D2/mime/subclasses":        mimeSubclasses,
				"D1/applications/a.desktop": app("viewer %f", "text/plain"),
				"D1/applications/c.desktop": app("viewer %f", "text/x-csrc"),
				"CH/mimeapps.list":          list("[Default Applications]", "text/plain=a.desktop"),
			},
			typ: "text/x-csrc", want: "c.desktop",
		},
		{
			name: "text/plain for any text type",
			files: map[string]string{
				"D1/applications/a.desktop": app("viewer %f", "text/plain"),
			},
			typ: "text/x-unheard-of", want: "a.desktop",
		},
		{
			name: "no application/octet-stream fallback",
			files: map[string]string{
				"D1/applications/a.desktop": app("viewer %f", "application/octet-stream"),
			},
			typ: pdf, want: "",
		},
		{
			name: "a broken mimeapps.list line costs only that line",
			files: map[string]string{
				"D1/applications/a.desktop": app("viewer %f", pdf),
				"D1/applications/b.desktop": app("viewer %f", pdf),
				"CH/mimeapps.list":          "garbage\x00\n[Default Applications\n" + pdf + "=a.desktop\n[Default Applications]\n\xff\xfe=x\n" + pdf + " = b.desktop ; \n",
			},
			typ: pdf, want: "b.desktop",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, tt.files, tt.desktops...)
			r := NewResolver(w.env)
			a, skipped := r.Find(tt.typ, notIsolator)
			got := ""
			if a != nil {
				got = a.Entry.ID
				if a.Program == "" || a.Entry.File == "" {
					t.Errorf("app %+v lacks its program or file", a)
				}
			}
			if got != tt.want {
				t.Errorf("Find(%s) = %q, want %q; skipped %+v", tt.typ, got, tt.want, skipped)
			}
			var reasons []string
			for _, s := range skipped {
				reasons = append(reasons, s.ID+": "+s.Reason)
			}
			i := 0
			for _, r := range reasons {
				if i < len(tt.skipped) && strings.Contains(r, tt.skipped[i]) {
					i++
				}
			}
			if i < len(tt.skipped) {
				t.Errorf("skipped %q, want (in order) %q", reasons, tt.skipped)
			}
		})
	}
}

func TestFindIsRepeatable(t *testing.T) {
	w := newWorld(t, map[string]string{
		"D1/applications/isolator-open.desktop": isoOpen,
		"D1/applications/viewer.desktop":        app("viewer %f", pdf, "text/plain"),
		"CH/mimeapps.list":                      list("[Default Applications]", pdf+"=isolator-open.desktop"),
	})
	r := NewResolver(w.env)
	for i := 0; i < 3; i++ {
		for _, typ := range []string{pdf, "text/plain"} {
			if a, _ := r.Find(typ, notIsolator); a == nil || a.Entry.ID != "viewer.desktop" {
				t.Fatalf("round %d: Find(%s) = %+v", i, typ, a)
			}
		}
	}
	// Without the reject function, Isolator's handler is the default.
	if a, _ := r.Find(pdf, nil); a == nil || a.Entry.ID != "isolator-open.desktop" {
		t.Errorf("Find without reject = %+v", a)
	}
}

func TestFromEnv(t *testing.T) {
	vars := map[string]string{
		"HOME":                "/home/u",
		"XDG_CONFIG_DIRS":     "/etc/xdg/a:relative:/etc/xdg/b/",
		"XDG_DATA_HOME":       "not/absolute",
		"XDG_CURRENT_DESKTOP": "ubuntu:GNOME::x/y",
		"PATH":                "/bin",
	}
	e := FromEnv(func(k string) string { return vars[k] })
	if e.ConfigHome != "/home/u/.config" || e.DataHome != "/home/u/.local/share" {
		t.Errorf("homes: %q %q", e.ConfigHome, e.DataHome)
	}
	if strings.Join(e.ConfigDirs, ":") != "/etc/xdg/a:/etc/xdg/b" {
		t.Errorf("config dirs %q", e.ConfigDirs)
	}
	if strings.Join(e.DataDirs, ":") != "/usr/local/share:/usr/share" {
		t.Errorf("data dirs %q", e.DataDirs)
	}
	if strings.Join(e.Desktops, ":") != "ubuntu:gnome" {
		t.Errorf("desktops %q", e.Desktops)
	}
	if e.Path != "/bin" {
		t.Errorf("path %q", e.Path)
	}
	if e := FromEnv(func(string) string { return "" }); e.ConfigHome != "" || e.DataHome != "" || len(e.ConfigDirs) != 1 {
		t.Errorf("no HOME: %+v", e)
	}
}

// TestExampleMimeappsList resolves with deploy/xdg/mimeapps.list.example as the user's
// list and the real isolator-open.desktop installed: the viewer named after Isolator's
// handler opens trusted PDFs, and a type with only Isolator's handler has no application.
func TestExampleMimeappsList(t *testing.T) {
	example, err := os.ReadFile(filepath.Join("..", "..", "deploy", "xdg", "mimeapps.list.example"))
	if err != nil {
		t.Fatal(err)
	}
	handler, err := os.ReadFile(filepath.Join("..", "..", "deploy", "xdg", "isolator-open.desktop"))
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, map[string]string{
		"CH/mimeapps.list":                           string(example),
		"D1/applications/isolator-open.desktop":      string(handler),
		"D1/applications/org.gnome.Evince.desktop":   app("viewer %U", pdf),
		"D1/applications/org.gnome.Nautilus.desktop": app("other %U", "inode/directory"),
		"D2/mime/aliases":                            mimeAliases,
	})
	r := NewResolver(w.env)
	for typ, want := range map[string]string{pdf: "org.gnome.Evince.desktop", "application/x-pdf": "org.gnome.Evince.desktop", "application/zip": ""} {
		a, skipped := r.Find(typ, notIsolator)
		got := ""
		if a != nil {
			got = a.Entry.ID
		}
		if got != want {
			t.Errorf("Find(%s) = %q, want %q; skipped %+v", typ, got, want, skipped)
		}
	}
	// Without the reject function Isolator's handler is the default of every type listed.
	kf := parseKeyFile(example)
	for typ := range kf.groups["Default Applications"] {
		if a, _ := r.Find(typ, nil); a == nil || a.Entry.ID != "isolator-open.desktop" {
			t.Errorf("example: the default of %s is %+v, want isolator-open.desktop", typ, a)
		}
	}
}
