package policy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Source is one directory of policy files.
type Source struct {
	FS    fs.FS  // file system the directory is in
	Dir   string // directory inside FS; "." for its root
	Label string // how files of this source are named in messages; default Dir
}

// LoadConfig configures LoadWith.
type LoadConfig struct {
	// Sources are read in order. Their files are evaluated in lexical order of base name
	// across all sources; a file in a later source replaces (masks) a file of the same base
	// name in an earlier one, so an administrator overrides a shipped 50-internet.yaml by
	// writing their own 50-internet.yaml (an empty one disables it).
	Sources []Source
	// Cache remembers content facts; nil gives the policy a cache of its own. A Store
	// passes the same cache to every policy it loads.
	Cache *FactCache
}

// Load reads every *.yaml file in dir of fsys in lexical order, validates and compiles
// them. If anything is wrong it returns a *ValidationErrors listing every problem.
func Load(fsys fs.FS, dir string) (*Policy, error) {
	return LoadWith(LoadConfig{Sources: []Source{{FS: fsys, Dir: dir}}})
}

// LoadSources loads the union of several directories, for example the shipped defaults
// and /etc/isolator/policies.d; see LoadConfig.Sources for how they combine.
func LoadSources(srcs ...Source) (*Policy, error) {
	return LoadWith(LoadConfig{Sources: srcs})
}

// policyFile is one file selected for loading.
type policyFile struct {
	src    Source
	srcIdx int // index of src in LoadConfig.Sources
	base   string
	name   string // display name
	data   []byte
}

// sourceFile names a file of one of LoadConfig.Sources.
type sourceFile struct {
	src  int    // index into LoadConfig.Sources
	name string // path in the source's FS
}

// LoadWith loads a policy as configured. On failure the error is a *ValidationErrors
// listing every error and warning, each at file:line:col.
func LoadWith(cfg LoadConfig) (*Policy, error) {
	p, _, err := load(cfg)
	return p, err
}

// load is LoadWith; it also returns the SHA-256 list files the policy names, whether they
// could be read or not, so that a Store can watch them.
func load(cfg LoadConfig) (*Policy, []sourceFile, error) {
	var issues []Issue
	byBase := map[string]*policyFile{}
	var failed []*policyFile // files that could not be read, for the order of the issues
	for srcIdx, src := range cfg.Sources {
		if src.Dir == "" {
			src.Dir = "."
		}
		if src.Label == "" {
			src.Label = src.Dir
		}
		ents, err := fs.ReadDir(src.FS, src.Dir)
		if err != nil {
			issues = append(issues, Issue{File: src.Label, Msg: fmt.Sprintf("cannot read policy directory: %v", err)})
			continue
		}
		var ignored []string // names an administrator may have meant as policy files
		for _, ent := range ents {
			base := ent.Name()
			if !strings.HasSuffix(base, ".yaml") || strings.HasPrefix(base, ".") {
				if lower := strings.ToLower(base); !strings.HasPrefix(base, ".") && !ent.IsDir() &&
					(strings.HasSuffix(lower, ".yml") || strings.HasSuffix(lower, ".yaml")) {
					ignored = append(ignored, strconv.Quote(base))
				}
				continue
			}
			name := path.Join(src.Label, base)
			p := path.Join(src.Dir, base)
			// Problems of a whole file have no position: "file: message".
			bad := func(msg string) {
				issues = append(issues, Issue{File: name, Msg: msg})
				failed = append(failed, &policyFile{base: base, name: name})
			}
			fi, err := fs.Stat(src.FS, p) // follows symlinks
			if err != nil {
				bad(fileProblem(src.FS, p, ent, err))
				continue
			}
			if fi.IsDir() {
				continue
			}
			if !fi.Mode().IsRegular() {
				bad("not a regular file")
				continue
			}
			data, err := readLimited(src.FS, p, MaxFileSize)
			if err != nil {
				bad(fileProblem(src.FS, p, ent, err))
				continue
			}
			byBase[base] = &policyFile{src: src, srcIdx: srcIdx, base: base, name: name, data: data}
		}
		if len(ignored) > 0 {
			issues = append(issues, Issue{File: src.Label, Warning: true, Msg: fmt.Sprintf(
				"ignored %s: only files whose names end in .yaml are read", strings.Join(ignored, ", "))})
		}
	}
	files := make([]*policyFile, 0, len(byBase))
	for _, f := range byBase {
		files = append(files, f)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].base < files[j].base })
	if len(files) > MaxFiles {
		issues = append(issues, Issue{File: files[MaxFiles].name, Msg: fmt.Sprintf("more than %d policy files", MaxFiles)})
		files = files[:MaxFiles]
	}
	if len(files) == 0 && len(issues) == 0 {
		var dirs []string
		for _, s := range cfg.Sources {
			dirs = append(dirs, s.Label)
		}
		issues = append(issues, Issue{File: strings.Join(dirs, ", "), Msg: ErrNoPolicy.Error() + " (*.yaml); nothing is trusted"})
	}

	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%d\x00", f.base, len(f.data))
		h.Write(f.data)
	}
	// Parse the files in parallel: YAML parsing is most of the cost of a reload.
	raws := make([]*rawFile, len(files))
	fileIssues := make([][]Issue, len(files))
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, f := range files {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			raws[i] = parseFile(f.name, f.base, f.data, &fileIssues[i])
		}()
	}
	wg.Wait()
	for _, fi := range fileIssues {
		issues = append(issues, fi...)
	}
	c := &compiler{issues: issues, files: files}
	p := c.compile(raws)
	// Hash list files are part of the policy's content.
	for _, l := range c.listData {
		h.Write(l)
	}
	sortIssues(c.issues, append(failed, files...))
	var errs, warns []Issue
	seen := make(map[Issue]bool, len(c.issues))
	for _, is := range c.issues {
		// A problem inside a node that aliases use is found once per use: report it once.
		if seen[is] {
			continue
		}
		seen[is] = true
		if is.Warning {
			warns = append(warns, is)
		} else {
			errs = append(errs, is)
		}
	}
	if len(errs) > 0 {
		return nil, c.listFiles, &ValidationErrors{Issues: append(errs, warns...)}
	}
	p.version = hex.EncodeToString(h.Sum(nil))[:16]
	p.warnings = warns
	p.cache = cfg.Cache
	if p.cache == nil {
		p.cache = NewFactCache(0)
	}
	return p, c.listFiles, nil
}

// sortIssues sorts issues by file, in the order of the files' base names, then position.
func sortIssues(issues []Issue, files []*policyFile) {
	files = append([]*policyFile(nil), files...)
	sort.SliceStable(files, func(i, j int) bool { return files[i].base < files[j].base })
	order := map[string]int{}
	for i, f := range files {
		order[f.name] = i + 1
	}
	rank := func(f string) int { // files that are not policy files (hash lists) go last
		if o, ok := order[f]; ok {
			return o
		}
		return len(files) + 1
	}
	sort.SliceStable(issues, func(i, j int) bool {
		a, b := issues[i], issues[j]
		if rank(a.File) != rank(b.File) {
			return rank(a.File) < rank(b.File)
		}
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
}

// fileProblem says why the policy file p (directory entry ent) cannot be read: a dangling
// symlink, or the error without the operation and path, which the issue names already.
func fileProblem(fsys fs.FS, p string, ent fs.DirEntry, err error) string {
	if ent.Type()&fs.ModeSymlink != 0 && errors.Is(err, fs.ErrNotExist) {
		if target, lerr := fs.ReadLink(fsys, p); lerr == nil {
			return "dangling symlink to " + target
		}
		return "dangling symlink"
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return "cannot read: " + pe.Err.Error()
	}
	return err.Error()
}

func readLimited(fsys fs.FS, name string, limit int64) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("file is larger than the limit of %d bytes", limit)
	}
	return data, nil
}

// readHashFile parses a list of SHA-256 digests in sha256sum format: one per line,
// optionally followed by white space and a file name; blank lines and # comments ignored.
func readHashFile(data []byte, name string, into map[string]struct{}, issues *[]Issue) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		fields := strings.Fields(s)
		sum := strings.ToLower(strings.TrimPrefix(fields[0], "\\"))
		if !isSHA256(sum) {
			if len(*issues) < maxIssues {
				*issues = append(*issues, Issue{File: name, Line: line, Col: 1, Msg: fmt.Sprintf("not a SHA-256 digest (64 hex digits): %q", fields[0])})
			}
			continue
		}
		into[sum] = struct{}{}
	}
	if err := sc.Err(); err != nil {
		*issues = append(*issues, Issue{File: name, Line: line + 1, Col: 1, Msg: err.Error()})
	}
}

func isSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
