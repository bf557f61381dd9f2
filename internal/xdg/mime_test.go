package xdg

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

const testGlobs2 = `# generated
50:application/pdf:*.pdf
50:application/x-gzpdf:*.pdf.gz
50:application/gzip:*.gz
50:application/msword:*.doc
50:text/plain:*.doc
40:text/x-readme:README*
50:text/x-makefile:makefile
50:text/x-makefile:GNUmakefile
50:text/x-c++src:*.C:cs
50:text/x-c++src:*.C
50:text/x-csrc:*.c
55:image/x-weighty:*.wgt
45:image/x-light:*.wgt
50:application/x-sharedlib:*.so.[0-9]*
50:text/x-diff:*.patch
50:text/x-diff:*.diff
bad line
x:text/plain:*.bad
50:notatype:*.nt
50:application/x-broken:[
`

func TestMIMEDB(t *testing.T) {
	w := newWorld(t, map[string]string{
		"D2/mime/globs2":     testGlobs2,
		"D2/mime/aliases":    mimeAliases + "text/x-c text/x-csrc\n",
		"D2/mime/subclasses": mimeSubclasses + "application/msword application/x-ole-storage\n",
		// The user's database redefines text/x-diff to *.diff only.
		"DH/mime/globs2": "0:text/x-diff:__NOGLOBS__\n50:text/x-diff:*.diff\n50:application/x-user:*.user\n",
	})
	db := LoadMIMEDB(w.env.dataDirs())
	for _, tt := range []struct {
		name string
		want []string
	}{
		{"a.pdf", []string{"application/pdf"}},
		{"A.PDF", []string{"application/pdf"}},
		{"a.pdf.gz", []string{"application/x-gzpdf"}}, // the longest pattern
		{"a.gz", []string{"application/gzip"}},
		{"a.doc", []string{"application/msword", "text/plain"}}, // a conflict
		{"Makefile", []string{"text/x-makefile"}},               // literal, case-insensitive
		{"README.pdf", []string{"application/pdf"}},             // weight 50 beats 40
		{"README", []string{"text/x-readme"}},
		{"a.C", []string{"text/x-c++src"}}, // case-sensitive pattern
		{"a.c", []string{"text/x-csrc"}},   // not C++ by the copy of *.C without the cs flag
		{"a.wgt", []string{"image/x-weighty"}},
		{"libz.so.1", []string{"application/x-sharedlib"}},
		{"a.patch", nil}, // __NOGLOBS__ in the user's database
		{"a.diff", []string{"text/x-diff"}},
		{"a.user", []string{"application/x-user"}},
		{"a.bad", nil},
		{"a.nt", nil},
		{"[", nil},
		{"nothing", nil},
	} {
		if got := db.GlobTypes(tt.name); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("GlobTypes(%q) = %q, want %q", tt.name, got, tt.want)
		}
	}
	if got := db.Canonical(" Application/X-PDF; q=1"); got != "application/pdf" {
		t.Errorf("Canonical = %q", got)
	}
	if got := db.Ancestors("text/x-c"); !reflect.DeepEqual(got, []string{"text/x-csrc", "text/plain"}) {
		t.Errorf("Ancestors(text/x-c) = %q", got)
	}
	if got := db.Ancestors("image/png"); !reflect.DeepEqual(got, []string{"image/png"}) {
		t.Errorf("Ancestors(image/png) = %q", got)
	}
	for _, tt := range []struct {
		t, parent string
		want      bool
	}{
		{"text/x-c++src", "text/plain", true},
		{"application/msword", "application/x-ole-storage", true},
		{"application/msword", "application/octet-stream", true},
		{"inode/directory", "application/octet-stream", false},
		{"text/plain", "text/x-csrc", false},
	} {
		if got := db.IsA(tt.t, tt.parent); got != tt.want {
			t.Errorf("IsA(%s, %s) = %v", tt.t, tt.parent, got)
		}
	}

	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct {
		path, want string
	}{
		{file("doc.pdf", "not a PDF at all"), "application/pdf"},                                                 // one glob: no sniffing
		{file("noext", "%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj"), "application/pdf"},                               // sniffed
		{file("text.doc", "just some text\n"), "text/plain"},                                                     // conflict, sniffing picks the text glob
		{file("word.doc", "\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"+strings.Repeat("\x00", 600)), "application/msword"}, // a subclass of what was sniffed
		{file("other.doc", "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "application/msword"},                         // neither: the first glob
		{file("script", "#!/bin/sh\necho hi\n"), "text/x-shellscript"},                                           // no types file: the sniffer's name
	} {
		got, err := db.TypeOfFile(tt.path)
		if err != nil || got != tt.want {
			t.Errorf("TypeOfFile(%s) = %q, %v; want %q", filepath.Base(tt.path), got, err, tt.want)
		}
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := db.TypeOfFile(fifo); err == nil {
		t.Errorf("TypeOfFile(fifo) = %q, want an error (and no hang)", got)
	}
	if _, err := db.TypeOfFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("TypeOfFile of a missing file succeeded")
	}
}

// TestSystemMIMEDB checks the type detection against the installed shared-mime-info
// database, where there is one.
func TestSystemMIMEDB(t *testing.T) {
	if _, err := os.Stat("/usr/share/mime/globs2"); err != nil {
		t.Skip("no shared-mime-info database in /usr/share/mime (Debian package shared-mime-info)")
	}
	db := LoadMIMEDB([]string{"/usr/share"})
	dir := t.TempDir()
	for _, tt := range []struct {
		name, content, want string
	}{
		{"a.pdf", "%PDF-1.4\n", "application/pdf"},
		{"a.tar.gz", "\x1f\x8b\x08\x00", "application/x-compressed-tar"},
		{"setup-script", "#!/bin/sh\necho hi\n", "application/x-shellscript"}, // sniffer's text/x-shellscript, by its alias
		{"notes", "plain words\n", "text/plain"},
		{"a.c", "int main(void) { return 0; }\n", "text/x-csrc"},
		{"main.C", "int main() { return 0; }\n", "text/x-c++src"},
	} {
		p := filepath.Join(dir, tt.name)
		os.WriteFile(p, []byte(tt.content), 0o644)
		if got, err := db.TypeOfFile(p); err != nil || got != tt.want {
			t.Errorf("TypeOfFile(%s) = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
	if got := db.Ancestors("text/x-c++src"); len(got) < 3 || got[len(got)-1] != "text/plain" {
		t.Errorf("Ancestors(text/x-c++src) = %q", got)
	}
	if got := db.Canonical("application/x-pdf"); got != "application/pdf" {
		t.Errorf("Canonical(application/x-pdf) = %q", got)
	}
}
