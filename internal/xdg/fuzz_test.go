package xdg

import (
	"reflect"
	"strings"
	"testing"
)

// quoteArg quotes an argument as the Desktop Entry specification says a writer should.
func quoteArg(a string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(a); i++ {
		if strings.IndexByte("\"`$\\", a[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(a[i])
	}
	b.WriteByte('"')
	return b.String()
}

// FuzzParseExec checks that Exec= parsing and expansion never panic, that what parses
// expands without error or is rejected by the field code checks, that the program is
// never a file, and that quoting any arguments as the specification says parses back to
// them.
func FuzzParseExec(f *testing.F) {
	for _, s := range []string{
		"viewer %f", `"/opt/a b/viewer" --x=%u %F`, `sh -c 'echo "$1"' sh %f`, `viewer "a \"b\" \$c \\d"`,
		"viewer %i %c %k %% %d", "%f", `viewer \`, `viewer "x`, "viewer 100%", "v --a=%F", "\t \n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args, err := ParseExec(s)
		if err == nil && len(args) == 0 {
			t.Fatal("no arguments and no error")
		}
		e := &Entry{ID: "t.desktop", File: "/t.desktop", Name: "N", Icon: "i", Exec: s}
		files := []string{"/FILE-1", "/FILE-2"}
		cmds, err := e.Commands(files)
		if err == nil {
			for _, argv := range cmds {
				if len(argv) == 0 || strings.Contains(argv[0], "/FILE-") {
					t.Fatalf("Commands(%q) = %q: a file as the program", s, cmds)
				}
			}
		}
		e.usable("/nonexistent")
		e.Runs("isoctl", "xdg-open")

		// Round trip: quote the NUL-separated pieces of s, parse them back.
		pieces := strings.Split(s, "\x00")
		var quoted []string
		for _, p := range pieces {
			quoted = append(quoted, quoteArg(p))
		}
		got, err := ParseExec(strings.Join(quoted, " "))
		if err != nil || !reflect.DeepEqual(got, pieces) {
			t.Fatalf("quoted %q parsed as %q, %v", pieces, got, err)
		}
	})
}

// FuzzMimeList checks the mimeapps.list / key file and desktop entry parsers on anything:
// no panic, only valid desktop file IDs and canonical keys come out.
func FuzzMimeList(f *testing.F) {
	for _, s := range []string{
		"[Default Applications]\napplication/pdf=a.desktop;b.desktop;\n[Added Associations]\ntext/plain=c.desktop;\n[Removed Associations]\nimage/png=d.desktop\n",
		"[Default Applications\nx=y\n[Default Applications]\n  A/B = ../x.desktop ; .desktop;ok.desktop;\\;\n",
		"[Desktop Entry]\nType=Application\nExec=viewer %f\nTryExec=viewer\nMimeType=a/b;c/d\\;e;\nHidden=true\nName=\\s\\n\\\\\n",
		"\xff\xfe[\x00]\n=\n==\n[MIME Cache]\na/b=x.desktop\n",
	} {
		f.Add([]byte(s))
	}
	db := &MIMEDB{aliases: map[string]string{"application/x-pdf": "application/pdf"}, parents: map[string][]string{}, known: map[string]bool{}}
	f.Fuzz(func(t *testing.T, data []byte) {
		ml := parseMimeList(data, "/l", true, db.Canonical)
		for _, m := range []map[string][]string{ml.defaults, ml.added, ml.removed} {
			for k, ids := range m {
				if k != db.Canonical(k) {
					t.Fatalf("key %q is not canonical", k)
				}
				for _, id := range ids {
					if !validID(id) {
						t.Fatalf("invalid ID %q", id)
					}
				}
			}
		}
		if e, err := ParseEntry(data, "t.desktop", "/t.desktop"); err == nil {
			e.usable("/nonexistent")
			e.Commands([]string{"/f"})
		}
		parseGlobs2(data)
	})
}
