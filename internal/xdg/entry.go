package xdg

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Entry is the [Desktop Entry] group of a desktop file, the keys this package uses.
// String values are unescaped; Exec keeps its quoting and field codes (see ParseExec).
type Entry struct {
	ID        string // desktop file ID, e.g. "org.gnome.Evince.desktop"
	File      string // path of the desktop file (the %k field code)
	Type      string
	Name      string // untranslated (the %c field code)
	Exec      string
	TryExec   string
	Path      string // working directory, "" for none
	Icon      string
	Terminal  bool
	Hidden    bool
	MIMETypes []string // MimeType=, as written
}

// ParseEntry parses the desktop file data; id and file are recorded in the Entry.
// Only the [Desktop Entry] group is read; a file without one is an error.
func ParseEntry(data []byte, id, file string) (*Entry, error) {
	kf := parseKeyFile(data)
	g, ok := kf.groups["Desktop Entry"]
	if !ok {
		return nil, fmt.Errorf("no [Desktop Entry] group")
	}
	str := func(k string) string { return unescapeString(g[k]) }
	boolean := func(k string) bool { v := g[k]; return v == "true" || v == "1" }
	return &Entry{
		ID:        id,
		File:      file,
		Type:      str("Type"),
		Name:      str("Name"),
		Exec:      str("Exec"),
		TryExec:   str("TryExec"),
		Path:      str("Path"),
		Icon:      str("Icon"),
		Terminal:  boolean("Terminal"),
		Hidden:    boolean("Hidden"),
		MIMETypes: splitList(g["MimeType"]),
	}, nil
}

// ReadEntry reads and parses the desktop file at path.
func ReadEntry(path, id string) (*Entry, error) {
	data, err := readSmallFile(path)
	if err != nil {
		return nil, err
	}
	return ParseEntry(data, id, path)
}

// usable says why the entry cannot be launched ("" when it can) and returns the path of
// its program: the entry must be an application that is not Hidden (deleted), whose
// TryExec program (if any) and Exec program are installed, whose Exec line is valid and
// which does not need a terminal (isoctl has no terminal to run it in).
func (e *Entry) usable(path string) (program, why string) {
	switch {
	case e.Hidden:
		return "", "Hidden=true (deleted)"
	case e.Type != "Application":
		return "", fmt.Sprintf("Type=%s, not an application", e.Type)
	case e.Exec == "":
		return "", "no Exec="
	}
	if e.TryExec != "" {
		if _, err := lookPath(e.TryExec, path); err != nil {
			return "", fmt.Sprintf("TryExec=%s is not installed", e.TryExec)
		}
	}
	l, err := parseExecLine(e.Exec)
	if err != nil {
		return "", fmt.Sprintf("invalid Exec=: %v", err)
	}
	program, err = lookPath(l.args[0], path)
	if err != nil {
		return "", fmt.Sprintf("program %s is not installed", l.args[0])
	}
	if e.Terminal {
		return "", "Terminal=true: it needs a terminal"
	}
	return program, ""
}

// Runs reports the first of names that the entry's TryExec= or Exec= line runs: the
// program, or a word of any argument (so that `env X=1 NAME`, `sh -c "NAME %f"` and the
// like are caught). Names are compared with base names of words.
func (e *Entry) Runs(names ...string) (string, bool) {
	var words []string
	if e.TryExec != "" {
		words = append(words, e.TryExec)
	}
	if args, err := ParseExec(e.Exec); err == nil {
		for _, a := range args {
			words = append(words, strings.FieldsFunc(a, func(r rune) bool {
				return strings.ContainsRune(" \t\n;|&()`'\"$<>={}", r)
			})...)
		}
	} else {
		words = append(words, strings.Fields(e.Exec)...)
	}
	for _, w := range words {
		b := filepath.Base(w)
		for _, n := range names {
			if b == n {
				return n, true
			}
		}
	}
	return "", false
}

// Openers are programs that open a file with the desktop's default application. An entry
// that runs one of them would hand the file back to whatever is the default, which may be
// the very program that asked (see Entry.Runs).
var Openers = []string{
	"xdg-open", "gio", "gvfs-open", "gnome-open", "kde-open", "kde-open5", "kde-open6",
	"kioclient", "kioclient5", "kioclient6", "exo-open", "mimeopen", "mimeo", "handlr",
	"run-mailcap", "see",
}
