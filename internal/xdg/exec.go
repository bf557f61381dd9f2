package xdg

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ParseExec splits the value of an Exec= key (already unescaped as a string value, see
// the Desktop Entry specification, "The Exec key") into arguments, undoing the quoting:
//
//   - arguments are separated by unquoted spaces, tabs or newlines;
//   - in a double-quoted argument a backslash escapes ", `, $ and \; before any other
//     character it is kept;
//   - as GLib and KDE accept (and the specification does not forbid readers to), a
//     single-quoted argument is taken literally and an unquoted backslash escapes the
//     next character.
//
// Field codes (%f, %U, ...) are left in the arguments; Entry.Commands expands them.
// Reserved characters outside quotes (> | & ; ...) are taken literally: no shell runs.
func ParseExec(s string) ([]string, error) {
	var args []string
	var b strings.Builder
	started := false
	end := func() {
		if started {
			args = append(args, b.String())
		}
		b.Reset()
		started = false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case ' ', '\t', '\n':
			end()
		case '"':
			started = true
			closed := false
			for i++; i < len(s); i++ {
				c := s[i]
				if c == '"' {
					closed = true
					break
				}
				if c == '\\' && i+1 < len(s) && strings.IndexByte("\"`$\\", s[i+1]) >= 0 {
					i++
					c = s[i]
				}
				b.WriteByte(c)
			}
			if !closed {
				return nil, errors.New("unterminated double quote")
			}
		case '\'':
			started = true
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated single quote")
			}
			b.WriteString(s[i+1 : i+1+j])
			i += j + 1
		case '\\':
			if i+1 == len(s) {
				return nil, errors.New("backslash at the end")
			}
			started = true
			i++
			b.WriteByte(s[i])
		default:
			started = true
			b.WriteByte(c)
		}
	}
	end()
	if len(args) == 0 {
		return nil, errors.New("empty command")
	}
	return args, nil
}

// deprecatedCodes are the field codes the specification deprecates; they are removed.
const deprecatedCodes = "dDnNvm"

// execLine is a parsed Exec= line with what Commands needs to know about its field codes.
type execLine struct {
	args   []string
	list   bool // has %F or %U
	single bool // has %f or %u
}

// parseExecLine parses and checks an Exec= value: the field codes must be known, %F, %U
// and %i must stand alone as an argument, and the program (the first argument) must not
// contain a field code other than %%, so that a file name can never become the program.
func parseExecLine(exec string) (*execLine, error) {
	args, err := ParseExec(exec)
	if err != nil {
		return nil, err
	}
	l := &execLine{args: args}
	for n, a := range args {
		for i := 0; i < len(a); i++ {
			if a[i] != '%' {
				continue
			}
			if i+1 == len(a) {
				return nil, fmt.Errorf("argument %q ends in a lone %%", a)
			}
			i++
			code := a[i]
			switch {
			case code == '%':
				continue
			case n == 0:
				return nil, fmt.Errorf("field code %%%c in the program name", code)
			case code == 'F' || code == 'U' || code == 'i':
				if a != "%"+string(code) {
					return nil, fmt.Errorf("field code %%%c must be an argument on its own", code)
				}
				if code != 'i' {
					l.list = true
				}
			case code == 'f' || code == 'u':
				l.single = true
			case code == 'c' || code == 'k' || strings.IndexByte(deprecatedCodes, code) >= 0:
			default:
				return nil, fmt.Errorf("unknown field code %%%c", code)
			}
		}
	}
	return l, nil
}

// expand returns the arguments for one launch: files for %F and %U, file (or nothing)
// for %f and %u. Local files are passed as paths for the URL codes too, as the
// specification allows.
func (l *execLine) expand(e *Entry, file string, files []string) []string {
	var out []string
	for n, a := range l.args {
		if n > 0 && len(a) == 2 && a[0] == '%' {
			switch c := a[1]; {
			case c == 'F' || c == 'U':
				out = append(out, files...)
				continue
			case c == 'i':
				if e.Icon != "" {
					out = append(out, "--icon", e.Icon)
				}
				continue
			case c == 'f' || c == 'u':
				if file != "" {
					out = append(out, file)
				}
				continue
			case c == 'c' || c == 'k':
				if v := e.code(c); v != "" {
					out = append(out, v)
				}
				continue
			case strings.IndexByte(deprecatedCodes, c) >= 0:
				continue
			}
		}
		if !strings.ContainsRune(a, '%') {
			out = append(out, a)
			continue
		}
		var b strings.Builder
		for i := 0; i < len(a); i++ {
			if a[i] != '%' || i+1 == len(a) {
				b.WriteByte(a[i])
				continue
			}
			i++
			switch c := a[i]; c {
			case '%':
				b.WriteByte('%')
			case 'f', 'u':
				b.WriteString(file)
			case 'c', 'k':
				b.WriteString(e.code(c))
			}
			// Deprecated codes expand to nothing; the others were rejected by parseExecLine.
		}
		out = append(out, b.String())
	}
	return out
}

// code is the value of the %c or %k field code.
func (e *Entry) code(c byte) string {
	if c == 'c' {
		return e.Name
	}
	return e.File
}

// Commands returns the argument vectors that open files with the entry, as the Desktop
// Entry specification says: one command for all files with %F or %U; one command per file
// with %f or %u (the first file for %f and %u when a list code is present too); and, when
// the line has no file field code, one command per file with the file appended as its last
// argument. With no files it is one command without file arguments. Files should be
// absolute paths, so that none can be taken for an option.
func (e *Entry) Commands(files []string) ([][]string, error) {
	l, err := parseExecLine(e.Exec)
	if err != nil {
		return nil, err
	}
	switch {
	case l.list:
		first := ""
		if len(files) > 0 {
			first = files[0]
		}
		return [][]string{l.expand(e, first, files)}, nil
	case len(files) == 0:
		return [][]string{l.expand(e, "", nil)}, nil
	}
	var cmds [][]string
	for _, f := range files {
		argv := l.expand(e, f, nil)
		if !l.single {
			argv = append(argv, f)
		}
		cmds = append(cmds, argv)
	}
	return cmds, nil
}

// lookPath finds program as the Desktop Entry specification says: an absolute path is
// taken as it is, a bare name is looked up in the directories of path (relative ones
// are skipped). It returns the path of an executable regular file.
func lookPath(program, path string) (string, error) {
	if strings.ContainsRune(program, '/') {
		if !filepath.IsAbs(program) {
			return "", fmt.Errorf("%s: a relative path", program)
		}
		return program, checkExecutable(program)
	}
	if program == "" {
		return "", errors.New("empty program name")
	}
	for _, dir := range filepath.SplitList(path) {
		if !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, program)
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH", program)
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", p)
	}
	if err := unix.Access(p, unix.X_OK); err != nil {
		return fmt.Errorf("%s: not executable", p)
	}
	return nil
}
