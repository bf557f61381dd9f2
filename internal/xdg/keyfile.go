package xdg

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
)

// maxFileSize bounds every file this package reads (desktop entries, mimeapps.list,
// mimeinfo.cache, the shared-mime-info files): a larger one is ignored as broken.
const maxFileSize = 16 << 20

// keyFile is a parsed desktop-entry style file: groups of key=value lines. Keys keep
// their locale suffix ("Name[de]"); a key given twice in a group keeps its last value
// and a group given twice is merged, as GLib's GKeyFile does. Lines that are neither a
// comment, a group header nor key=value are ignored, so one broken line does not cost
// the rest of the file.
type keyFile struct {
	groups map[string]map[string]string
}

// parseKeyFile parses data; it never fails.
func parseKeyFile(data []byte) *keyFile {
	kf := &keyFile{groups: map[string]map[string]string{}}
	var cur map[string]string
	for len(data) > 0 {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		s := strings.TrimRight(string(line), "\r")
		t := strings.TrimLeft(s, " \t")
		switch {
		case t == "" || t[0] == '#':
		case t[0] == '[':
			end := strings.IndexByte(t, ']')
			if end < 0 || strings.TrimRight(t[end+1:], " \t") != "" {
				cur = nil // a broken header: ignore its keys rather than give them to the previous group
				continue
			}
			name := t[1:end]
			if kf.groups[name] == nil {
				kf.groups[name] = map[string]string{}
			}
			cur = kf.groups[name]
		default:
			k, v, ok := strings.Cut(t, "=")
			k = strings.TrimRight(k, " \t")
			if !ok || k == "" || cur == nil {
				continue
			}
			cur[k] = strings.Trim(v, " \t")
		}
	}
	return kf
}

// get returns the raw value of key in group.
func (kf *keyFile) get(group, key string) (string, bool) {
	v, ok := kf.groups[group][key]
	return v, ok
}

// unescapeString undoes the escapes of the Desktop Entry specification's string type:
// \s \n \t \r \\. Any other backslash is kept with the character after it, which is what
// the Exec= quoting rules, applied afterwards, expect of \" \$ \`.
func unescapeString(s string) string {
	if !strings.ContainsRune(s, '\\') {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		i++
		switch s[i] {
		case 's':
			b.WriteByte(' ')
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case '\\':
			b.WriteByte('\\')
		default:
			b.WriteByte('\\')
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// splitList splits a list value ("a;b;c;") into its non-empty, trimmed items. Escaped
// semicolons (\;) are kept inside items.
func splitList(s string) []string {
	var items []string
	var b strings.Builder
	flush := func() {
		if t := strings.TrimSpace(b.String()); t != "" {
			items = append(items, t)
		}
		b.Reset()
	}
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s) && s[i+1] == ';':
			b.WriteByte(';')
			i++
		case s[i] == ';':
			flush()
		default:
			b.WriteByte(s[i])
		}
	}
	flush()
	return items
}

// errTooLarge reports a file over maxFileSize.
var errTooLarge = errors.New("file too large")

// readSmallFile reads a regular file of at most maxFileSize bytes.
func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, errTooLarge
	}
	return data, nil
}
