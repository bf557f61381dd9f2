package image

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// defaultLibDirs are searched after the ld.so.conf directories.
var defaultLibDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib"}

// ldsoTrusted are the directories the guest's dynamic loader searches without
// /etc/ld.so.cache (Debian's multiarch glibc); a library found elsewhere through ld.so.conf
// makes Build pack /etc/ld.so.cache too.
var ldsoTrusted = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"}

// elfObject is a parsed program or shared library.
type elfObject struct {
	path    string   // host path it was found at
	real    string   // resolved path
	interp  string   // PT_INTERP, programs only
	needed  []string // DT_NEEDED
	rpath   []string // DT_RPATH (only kept when there is no DT_RUNPATH)
	runpath []string // DT_RUNPATH
}

// readELF parses the x86-64 ELF file at p.
func readELF(p string) (*elfObject, error) {
	osf, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, unwrapPathErr(err))
	}
	defer osf.Close()
	f, err := elf.NewFile(osf)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %v", p, ErrNotELF, err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%s: %w: %v %v", p, ErrNotELF, f.Class, f.Machine)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return nil, fmt.Errorf("%s: %w: type %v", p, ErrNotELF, f.Type)
	}
	o := &elfObject{path: p}
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		const maxInterp = 4096
		if prog.Filesz == 0 || prog.Filesz > maxInterp {
			return nil, fmt.Errorf("%s: %w: bad PT_INTERP size %d", p, ErrNotELF, prog.Filesz)
		}
		buf := make([]byte, prog.Filesz)
		if _, err := prog.ReadAt(buf, 0); err != nil {
			return nil, fmt.Errorf("%s: read PT_INTERP: %w", p, err)
		}
		o.interp = strings.TrimRight(string(buf), "\x00")
		if o.interp == "" || strings.IndexByte(o.interp, 0) >= 0 || !path.IsAbs(o.interp) {
			return nil, fmt.Errorf("%s: %w: bad PT_INTERP %q", p, ErrNotELF, o.interp)
		}
	}
	if f.Section(".dynamic") == nil && dynProg(f) == nil {
		return o, nil // static
	}
	if o.needed, err = f.DynString(elf.DT_NEEDED); err != nil {
		return nil, fmt.Errorf("%s: read DT_NEEDED: %w", p, err)
	}
	runpath, err := f.DynString(elf.DT_RUNPATH)
	if err != nil {
		return nil, fmt.Errorf("%s: read DT_RUNPATH: %w", p, err)
	}
	rpath, err := f.DynString(elf.DT_RPATH)
	if err != nil {
		return nil, fmt.Errorf("%s: read DT_RPATH: %w", p, err)
	}
	for _, s := range runpath {
		o.runpath = append(o.runpath, filepath.SplitList(s)...)
	}
	if len(o.runpath) == 0 { // ld.so ignores DT_RPATH when DT_RUNPATH is present
		for _, s := range rpath {
			o.rpath = append(o.rpath, filepath.SplitList(s)...)
		}
	}
	return o, nil
}

func dynProg(f *elf.File) *elf.Prog {
	for _, p := range f.Progs {
		if p.Type == elf.PT_DYNAMIC {
			return p
		}
	}
	return nil
}

// expandDST substitutes the dynamic string tokens ld.so knows in a search directory:
// $ORIGIN (the directory of the object), $LIB and $PLATFORM.
func expandDST(dir, origin string) string {
	r := strings.NewReplacer(
		"${ORIGIN}", origin, "$ORIGIN", origin,
		"${LIB}", "lib/x86_64-linux-gnu", "$LIB", "lib/x86_64-linux-gnu",
		"${PLATFORM}", "x86_64", "$PLATFORM", "x86_64",
	)
	return r.Replace(dir)
}

// addProgram adds program p, its interpreter and the shared libraries it needs.
func (b *builder) addProgram(p string) error {
	abs, err := filepath.Abs(p)
	if err != nil {
		return fmt.Errorf("program %s: %w", p, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return fmt.Errorf("program %s not found: %w", p, unwrapPathErr(err))
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("program %s: %w: not a regular file", p, ErrNotELF)
	}
	// Parse before adding anything, so that a non-ELF file fails cleanly.
	exe, err := readELF(abs)
	if err != nil {
		return fmt.Errorf("program %s: %w", p, err)
	}
	// Name the program, not the first hidden directory on its way.
	if err := b.hidden(abs, false); err != nil {
		return fmt.Errorf("program %s: %w", p, err)
	}
	real, err := b.addHostPath(abs)
	if err != nil {
		return fmt.Errorf("program %s: %w", p, err)
	}
	exe.real = real
	b.progress("program %s", abs)
	if exe.interp != "" {
		ireal, err := b.addHostPath(exe.interp)
		if err != nil {
			return fmt.Errorf("program %s: interpreter %s: %w", p, exe.interp, err)
		}
		if _, err := readELF(ireal); err != nil {
			return fmt.Errorf("program %s: interpreter: %w", p, err)
		}
		b.addLibrary(Library{Name: exe.interp, Path: exe.interp, RealPath: ireal, NeededBy: abs})
	}
	return b.addNeeded(exe, abs)
}

// addLibrary records l in the report unless the same file at the same path is there.
func (b *builder) addLibrary(l Library) {
	for _, o := range b.libs {
		if o.Path == l.Path && o.Name == l.Name {
			return
		}
	}
	b.libs = append(b.libs, l)
	if l.Name == l.Path {
		b.progress("interpreter %s -> %s", l.Path, l.RealPath)
	} else {
		b.progress("library %s -> %s (needed by %s)", l.Name, l.Path, l.NeededBy)
	}
}

// addNeeded resolves the DT_NEEDED closure of exe breadth first, the way ld.so loads it: a
// name is loaded once, by the first object that needs it.
func (b *builder) addNeeded(exe *elfObject, program string) error {
	confDirs, err := ldsoConfDirs(b.ldsoConf)
	if err != nil {
		return fmt.Errorf("program %s: %w", program, err)
	}
	loaded := map[string]bool{}     // DT_NEEDED names already resolved
	loadedReal := map[string]bool{} // files already queued
	loadedReal[exe.real] = true
	queue := []*elfObject{exe}
	needCache := false
	for len(queue) > 0 {
		obj := queue[0]
		queue = queue[1:]
		for _, name := range obj.needed {
			if loaded[name] {
				continue
			}
			loaded[name] = true
			found, via, err := b.findLibrary(name, obj, exe, confDirs)
			if err != nil {
				return err
			}
			if found == "" {
				return &MissingLibraryError{Library: name, NeededBy: obj.path, Program: program}
			}
			real, err := b.addHostPath(found)
			if err != nil {
				return fmt.Errorf("program %s: library %s: %w", program, name, err)
			}
			if via == viaConf {
				needCache = true
			}
			if via == viaLibraryPath {
				b.progress("warning: %s was found through LibraryPath; the guest needs LD_LIBRARY_PATH to load it", found)
			}
			b.addLibrary(Library{Name: name, Path: found, RealPath: real, NeededBy: obj.path})
			if loadedReal[real] {
				continue
			}
			loadedReal[real] = true
			lib, err := readELF(real)
			if err != nil {
				return fmt.Errorf("program %s: library %s: %w", program, name, err)
			}
			lib.path, lib.real = found, real
			queue = append(queue, lib)
		}
	}
	if needCache {
		if _, err := os.Stat("/etc/ld.so.cache"); err == nil {
			if _, err := b.addHostPath("/etc/ld.so.cache"); err != nil {
				return fmt.Errorf("program %s: %w", program, err)
			}
			b.progress("including /etc/ld.so.cache for libraries outside the default directories")
		}
	}
	return nil
}

// How findLibrary found a library.
const (
	viaPath        = iota // a name with a slash, DT_RPATH or DT_RUNPATH, or a trusted directory
	viaLibraryPath        // BuildConfig.LibraryPath
	viaConf               // an ld.so.conf directory or default directory the guest's ld.so only finds through ld.so.cache
)

// findLibrary returns the host path of the DT_NEEDED name of obj, or "" if no search
// directory has a compatible one.
func (b *builder) findLibrary(name string, obj, exe *elfObject, confDirs []string) (string, int, error) {
	if strings.Contains(name, "/") {
		p, err := filepath.Abs(name)
		if err != nil {
			return "", 0, err
		}
		if compatibleLib(p) {
			return p, viaPath, nil
		}
		return "", 0, nil
	}
	type dir struct {
		path string
		via  int
	}
	var dirs []dir
	add := func(via int, origin string, ds ...string) {
		for _, d := range ds {
			if d == "" {
				continue
			}
			dirs = append(dirs, dir{expandDST(d, origin), via})
		}
	}
	// $ORIGIN is the directory of the path an object was found at; for the program, ld.so
	// takes it from /proc/self/exe, which has every symlink resolved.
	origin := path.Dir(obj.path)
	if obj == exe {
		origin = path.Dir(exe.real)
	}
	add(viaPath, origin, obj.rpath...)
	if obj != exe && len(obj.runpath) == 0 {
		add(viaPath, path.Dir(exe.real), exe.rpath...)
	}
	add(viaLibraryPath, "", b.cfg.LibraryPath...)
	add(viaPath, origin, obj.runpath...)
	for _, d := range confDirs {
		via := viaConf
		if slices.Contains(ldsoTrusted, d) {
			via = viaPath
		}
		add(via, "", d)
	}
	for _, d := range defaultLibDirs {
		via := viaConf
		if slices.Contains(ldsoTrusted, d) {
			via = viaPath
		}
		add(via, "", d)
	}
	for _, d := range dirs {
		if !path.IsAbs(d.path) {
			continue // ld.so would resolve it against the guest's working directory
		}
		p := path.Join(d.path, name)
		if compatibleLib(p) {
			return p, d.via, nil
		}
	}
	return "", 0, nil
}

// compatibleLib reports whether p is an x86-64 ELF shared object ld.so would load.
func compatibleLib(p string) bool {
	fi, err := os.Stat(p)
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	f, err := elf.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	return f.Class == elf.ELFCLASS64 && f.Machine == elf.EM_X86_64 && f.Type == elf.ET_DYN
}

// maxConfDepth bounds nested include directives in ld.so.conf files.
const maxConfDepth = 8

// ldsoConfDirs returns the library directories listed in the ld.so.conf file at name and the
// files it includes, in order, without duplicates. A missing file lists nothing.
func ldsoConfDirs(name string) ([]string, error) {
	var dirs []string
	seen := map[string]bool{}
	var read func(name string, depth int) error
	read = func(name string, depth int) error {
		if depth > maxConfDepth {
			return fmt.Errorf("%s: includes nested too deeply", name)
		}
		f, err := os.Open(name)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		defer f.Close()
		for _, it := range parseLdsoConf(bufio.NewScanner(f), path.Dir(name)) {
			if !it.include {
				if !seen[it.path] {
					seen[it.path] = true
					dirs = append(dirs, it.path)
				}
				continue
			}
			matches, err := filepath.Glob(it.path)
			if err != nil {
				continue // a malformed pattern matches nothing, as in ldconfig
			}
			slices.Sort(matches)
			for _, m := range matches {
				if err := read(m, depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := read(name, 0); err != nil {
		return nil, fmt.Errorf("read ld.so.conf: %w", err)
	}
	return dirs, nil
}

// ldsoItem is one directory or include pattern of an ld.so.conf file.
type ldsoItem struct {
	include bool   // path is a glob pattern of files to read
	path    string // absolute and clean directory, or absolute pattern
}

// parseLdsoConf parses ld.so.conf lines: '#' starts a comment, "include PATTERN" names
// further files (relative patterns are relative to base), "hwcap" lines are ignored, and
// every other word is a directory. Items are returned in file order; directories are made
// clean and relative ones are dropped.
func parseLdsoConf(sc *bufio.Scanner, base string) []ldsoItem {
	var items []ldsoItem
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.FieldsFunc(line, func(r rune) bool {
			return r == ' ' || r == '\t' || r == ':' || r == ','
		})
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "include":
			for _, p := range fields[1:] {
				if strings.IndexByte(p, 0) >= 0 {
					continue
				}
				if !path.IsAbs(p) {
					p = path.Join(base, p)
				}
				items = append(items, ldsoItem{include: true, path: p})
			}
			continue
		case "hwcap":
			continue
		}
		for _, d := range fields {
			if path.IsAbs(d) && strings.IndexByte(d, 0) < 0 {
				items = append(items, ldsoItem{path: path.Clean(d)})
			}
		}
	}
	return items
}
