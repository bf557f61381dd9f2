package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"

	"github.com/isolator-dev/isolator/pkg/interception"
	"github.com/isolator-dev/isolator/pkg/policy"
	"github.com/isolator-dev/isolator/policies"
)

// newPolicyCmd is `isoctl policy`, the parent of the policy commands. They work on policy
// files directly and need no daemon.
func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check, explain and show trust policies",
		Long: `Check, explain and show trust policies. A policy is the shipped defaults (embedded in
isoctl and isolatord) with the *.yaml files of the policy directory (default ` + policy.DefaultDir + `)
layered on top: a file with the same name as a shipped one replaces it. --no-defaults uses
the directory alone. A directory named on the command line must exist; the default one may
be absent (the shipped defaults alone). See docs/POLICY.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newPolicyCheckCmd(), newPolicyExplainCmd(), newPolicyShowCmd())
	return cmd
}

// policySourceOptions say where a policy is loaded from.
type policySourceOptions struct {
	dir        string
	explicit   bool // dir was named on the command line, so it must be a readable directory
	noDefaults bool
}

func (o *policySourceOptions) flags(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&o.noDefaults, "no-defaults", false, "load the directory alone, without the shipped default policies")
}

// load loads the policy, or returns a *policy.ValidationErrors or an I/O error.
func (o *policySourceOptions) load() (*policy.Policy, error) {
	var srcs []policy.Source
	if !o.noDefaults {
		srcs = append(srcs, policy.Source{FS: policies.FS(), Dir: ".", Label: policy.ShippedLabel})
	}
	fi, err := os.Stat(o.dir)
	if err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("policy directory %s is not a directory", o.dir)
	}
	if err == nil {
		err = readableDir(o.dir)
	}
	switch {
	case err == nil:
		srcs = append(srcs, policy.Source{FS: os.DirFS(o.dir), Dir: ".", Label: o.dir})
	case errors.Is(err, fs.ErrNotExist) && !o.explicit && !o.noDefaults:
		// The default directory, absent on a fresh machine: the shipped defaults alone, as
		// isolatord does. A directory named on the command line must exist.
	default:
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is in the message already
		}
		return nil, fmt.Errorf("policy directory %s: %w", o.dir, err)
	}
	return policy.LoadSources(srcs...)
}

// readableDir checks that the directory dir can be listed.
func readableDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != nil && err != io.EOF {
		return err
	}
	return nil
}

// printIssues writes every issue as file:line:col: message.
func printIssues(w io.Writer, issues []policy.Issue) {
	for _, is := range issues {
		fmt.Fprintln(w, is.String())
	}
}

func newPolicyCheckCmd() *cobra.Command {
	o := &policySourceOptions{}
	cmd := &cobra.Command{
		Use:   "check [DIR]",
		Short: "Validate a policy directory",
		Long: `Validate the policy: exit 0 with a summary (and any warnings) when it is valid, exit 1
with every error listed as file:line:col: message otherwise.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.dir = policy.DefaultDir
			if len(args) == 1 {
				o.dir, o.explicit = args[0], true
			}
			return runPolicyCheck(cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	o.flags(cmd)
	return cmd
}

func runPolicyCheck(stdout, stderr io.Writer, o *policySourceOptions) error {
	start := time.Now()
	p, err := o.load()
	var ve *policy.ValidationErrors
	if errors.As(err, &ve) {
		printIssues(stderr, ve.Issues)
		fmt.Fprintf(stderr, "policy is invalid: %s, %s\n", plural(len(ve.Errors()), "error"), plural(len(ve.Warnings()), "warning"))
		return &ExitError{Code: 1}
	}
	if err != nil {
		return err
	}
	printIssues(stderr, p.Warnings())
	fmt.Fprintf(stdout, "policy OK: %s, %s, version %s, %s (loaded in %v)\n",
		plural(len(p.Files()), "file"), plural(p.NumRules(), "rule"), p.Version(), plural(len(p.Warnings()), "warning"), time.Since(start).Round(time.Microsecond))
	for _, f := range p.Files() {
		fmt.Fprintf(stdout, "  %s\n", f)
	}
	return nil
}

func newPolicyShowCmd() *cobra.Command {
	o := &policySourceOptions{}
	cmd := &cobra.Command{
		Use:   "show [DIR]",
		Short: "Print the effective merged policy, normalized",
		Long: `Print the effective policy as one normalized YAML document: defaults resolved, handlers
and lists sorted, rules in evaluation order with the file:line each came from.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.dir = policy.DefaultDir
			if len(args) == 1 {
				o.dir, o.explicit = args[0], true
			}
			p, err := o.load()
			var ve *policy.ValidationErrors
			if errors.As(err, &ve) {
				printIssues(cmd.ErrOrStderr(), ve.Issues)
				return &ExitError{Code: 1}
			}
			if err != nil {
				return err
			}
			out, err := p.Normalized()
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	o.flags(cmd)
	return cmd
}

// policyExplainOptions are the flags of `isoctl policy explain`.
type policyExplainOptions struct {
	policySourceOptions
	user     string
	userSet  bool // --user was given
	uid      int
	groups   []string
	home     string
	opener   string
	origin   string
	referrer string
	json     bool
	// readContent opens the content of a file in a download directory too, and
	// daemonConfig is isolatord's configuration file, read for its download_dirs.
	readContent  bool
	daemonConfig string
}

// defaultDaemonConfig is where isolatord reads its configuration (pkg/daemon.DefaultConfig).
const defaultDaemonConfig = "/etc/isolator/isolatord.yaml"

func newPolicyExplainCmd() *cobra.Command {
	o := &policyExplainOptions{}
	cmd := &cobra.Command{
		Use:   "explain [flags] FILE",
		Short: "Show what the policy decides for a file, and why",
		Long: `Decide for FILE as isolatord would and print the decision, the handler and the
explanation. The requester defaults to the current user; the origin and referrer default to
the file's user.xdg.origin.url / user.xdg.referrer.url (or user.isolator.*) xattrs.

The verdict isolatord recorded on the file (the user.isolator.* xattrs) is shown as
"recorded:". Those attributes are read without opening the file. When the record refuses
opens (isolate, deny, ask), the file's content is not opened at all: an open would be
refused by isolatord's gate and start an isolation.

Nor is the content of a file in a download directory opened unless --read-content is
given: isolatord's gate may answer that open like any other (decide the file, refuse the
open and isolate the file for its owner). The download directories are the XDG download
directories of the file's owner and of the requester, and the download_dirs of
isolatord's configuration file (--isolatord-config) when it can be read. Rules that need
the content (type, hash) then cannot decide, which is said ("content: not read").`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.explicit = cmd.Flags().Changed("policy-dir")
			o.userSet = cmd.Flags().Changed("user")
			return runPolicyExplain(cmd, o, args[0])
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "policy-dir", policy.DefaultDir, "policy directory")
	f.StringVar(&o.user, "user", "", "requesting user, a name or a uid (default: the current user)")
	f.IntVar(&o.uid, "uid", -1, "requesting uid (default: the --user's uid)")
	f.StringArrayVar(&o.groups, "group", nil, "group of the requester (repeatable; default: the user's groups)")
	f.StringVar(&o.home, "home", "", "home directory for ~ in patterns (default: the user's home)")
	f.StringVar(&o.opener, "opener", "", "absolute executable path of the program opening the file")
	f.StringVar(&o.origin, "origin", "", "URL the file was downloaded from (default: from its xattrs)")
	f.StringVar(&o.referrer, "referrer", "", "URL of the page that linked the download (default: from its xattrs)")
	f.BoolVar(&o.json, "json", false, "print the request and decision as JSON")
	f.BoolVar(&o.readContent, "read-content", false,
		"read the content of a file in a download directory too (isolatord's gate may refuse the open and isolate the file)")
	f.StringVar(&o.daemonConfig, "isolatord-config", defaultDaemonConfig, "isolatord's configuration file, for its download_dirs")
	o.flags(cmd)
	return cmd
}

// requester fills the identity fields of req from the flags and the user database.
func (o *policyExplainOptions) requester(req *policy.Request) error {
	u, err := o.lookupUser()
	if err != nil {
		return err
	}
	req.User, req.Home = u.Username, u.HomeDir
	req.UID, _ = strconv.Atoi(u.Uid)
	if gids, err := u.GroupIds(); err == nil && o.groups == nil {
		for _, gid := range gids {
			if g, err := user.LookupGroupId(gid); err == nil {
				req.Groups = append(req.Groups, g.Name)
			}
		}
	}
	if o.uid >= 0 {
		req.UID = o.uid
	}
	if o.groups != nil {
		req.Groups = o.groups
	}
	if o.home != "" {
		req.Home = o.home
	}
	return nil
}

// lookupUser returns the requester named by --user, a user name or a uid (all digits, as
// in the user condition of rules), or the current user. A user the user database does not
// know is an error: deciding for it would decide for uid 0 with no home.
func (o *policyExplainOptions) lookupUser() (*user.User, error) {
	if !o.userSet {
		u, err := user.Current()
		if err != nil {
			return nil, fmt.Errorf("current user: %w", err)
		}
		return u, nil
	}
	if o.user == "" {
		return nil, errors.New("--user must name a user (a name or a uid)")
	}
	u, err := user.Lookup(o.user)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) && strings.Trim(o.user, "0123456789") == "" {
		u, err = user.LookupId(o.user)
	}
	var unknownID user.UnknownUserIdError
	if errors.As(err, &unknown) || errors.As(err, &unknownID) {
		return nil, fmt.Errorf("no such user %s", o.user)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up user %s: %w", o.user, err)
	}
	return u, nil
}

func runPolicyExplain(cmd *cobra.Command, o *policyExplainOptions, file string) error {
	stdout := cmd.OutOrStdout()
	abs, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	// Decide about the file itself, not a symlink to it.
	if resolved, err := filepath.EvalSymlinks(abs); err == nil {
		abs = resolved
	}
	if _, err := os.Stat(abs); err != nil {
		return fileError(file, abs, err)
	}
	if o.opener != "" && !filepath.IsAbs(o.opener) {
		return fmt.Errorf("--opener must be the absolute path of a program, not %q", o.opener)
	}
	req := &policy.Request{Path: abs, Opener: o.opener}
	if err := o.requester(req); err != nil {
		return err
	}
	// The file is reached once without opening its content (O_PATH: no permission event,
	// so isolatord's gate is not asked), for its attributes and isolatord's record.
	pf, err := openPath(abs)
	if err != nil {
		return fileError(file, abs, err)
	}
	defer pf.Close()
	byFD := "/proc/self/fd/" + strconv.Itoa(int(pf.Fd()))
	var recorded *interception.Record
	if rec, err := interception.ReadRecordFile(pf); err == nil {
		recorded = &rec
	}
	// Like isolatord, decide on the open file (opened here as the current user), unless
	// its record refuses opens: it is not opened then, and rules that need its content
	// cannot decide. The policy never opens the path itself.
	content := ""
	if recorded != nil && recorded.Verdict.Valid() && recorded.Verdict != interception.ActionTrust {
		content = fmt.Sprintf("not read: the file's record says %s, so isolatord would refuse to open it "+
			"(and isolate it); the decision uses what needs no content", recorded.Verdict)
	} else if dl := o.downloadDir(abs, pf, req); dl != "" && !o.readContent {
		content = fmt.Sprintf("not read: the file is in the download directory %s, where isolatord's gate may "+
			"refuse the open and isolate the file; the decision uses what needs no content "+
			"(--read-content reads it)", dl)
	} else if f, ferr := openRegular(byFD); ferr != nil {
		content = fmt.Sprintf("not read: %v; the decision uses what needs no content", unwrapPath(ferr))
	} else if same, serr := sameFile(f, pf); serr != nil || !same {
		f.Close()
		content = "not read: the file was replaced while it was being opened; the decision uses what needs no content"
	} else {
		defer f.Close()
		req.File = f
	}
	if req.File == nil {
		fi, err := pf.Stat()
		if err != nil {
			return fileError(file, abs, err)
		}
		req.File = unreadFile{fi: fi, err: errors.New("the content was not read")}
	}
	origin, referrer, err := policy.ReadOrigin(byFD)
	if err != nil {
		return err
	}
	req.Origin, req.Referrer = origin, referrer
	if cmd.Flags().Changed("origin") {
		req.Origin = o.origin
	}
	if cmd.Flags().Changed("referrer") {
		req.Referrer = o.referrer
	}
	p, err := o.load()
	var ve *policy.ValidationErrors
	if errors.As(err, &ve) {
		printIssues(cmd.ErrOrStderr(), ve.Issues)
		return &ExitError{Code: 1}
	}
	if err != nil {
		return err
	}
	d, err := p.Decide(req)
	var undecided error // the policy needed the content, which was not read
	if err != nil && content != "" {
		undecided = fmt.Errorf("%s: no decision: the policy needs the file's content, which was not read (%w)", file, err)
	} else if err != nil {
		return err
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false) // "<shipped>/…", not "\u003cshipped\u003e/…"
		out := struct {
			Request  *policy.Request  `json:"request"`
			Recorded *recordJSON      `json:"recorded,omitempty"`
			Content  string           `json:"content,omitempty"`
			Decision *policy.Decision `json:"decision"`
			Error    string           `json:"error,omitempty"`
		}{Request: req, Recorded: newRecordJSON(recorded), Content: content, Decision: d}
		if undecided != nil {
			out.Error = undecided.Error()
		}
		if err := enc.Encode(out); err != nil {
			return err
		}
		return undecided
	}
	printRequest(stdout, req)
	printFacts(stdout, recorded, content)
	if undecided != nil {
		fmt.Fprintf(stdout, "decision:  none: the policy needs the file's content, which was not read\n")
		return undecided
	}
	printDecision(stdout, req, d)
	return nil
}

// downloadDir returns the download directory containing path (resolved, the file open as
// pf), or "": the XDG download directory of the file's owner or of the requester req (as
// isolatord finds them, interception.DownloadDir), or one of the download_dirs of
// isolatord's configuration file. isolatord gates these (when interception is on), so
// opening the content of a file there may be refused and start an isolation.
func (o *policyExplainOptions) downloadDir(path string, pf *os.File, req *policy.Request) string {
	var dirs []string
	if fi, err := pf.Stat(); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			if u, err := user.LookupId(strconv.FormatUint(uint64(st.Uid), 10)); err == nil {
				if d, err := interception.DownloadDir(u.HomeDir, st.Uid); err == nil {
					dirs = append(dirs, d.Path)
				}
			}
		}
	}
	if req.Home != "" && req.UID >= 0 {
		if d, err := interception.DownloadDir(req.Home, uint32(req.UID)); err == nil {
			dirs = append(dirs, d.Path)
		}
	}
	dirs = append(dirs, configuredDownloadDirs(o.daemonConfig)...)
	for _, d := range dirs {
		if path == d || strings.HasPrefix(path, d+string(filepath.Separator)) {
			return d
		}
	}
	return ""
}

// configuredDownloadDirs returns the download_dirs of isolatord's configuration file at
// path, with symbolic links resolved, or nothing if it cannot be read.
func configuredDownloadDirs(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var c struct {
		DownloadDirs []string `yaml:"download_dirs"`
	}
	if err := yaml.NewDecoder(io.LimitReader(f, 1<<20)).Decode(&c); err != nil {
		return nil
	}
	dirs := make([]string, 0, len(c.DownloadDirs))
	for _, d := range c.DownloadDirs {
		if real, err := filepath.EvalSymlinks(d); err == nil {
			d = real
		}
		dirs = append(dirs, filepath.Clean(d))
	}
	return dirs
}

// recordJSON is isolatord's record on a file, for --json.
type recordJSON struct {
	Verdict string    `json:"verdict"`
	Rule    string    `json:"rule,omitempty"`
	Time    time.Time `json:"time,omitzero"`
	SHA256  string    `json:"sha256,omitempty"`
	Origin  string    `json:"origin,omitempty"`
}

func newRecordJSON(r *interception.Record) *recordJSON {
	if r == nil {
		return nil
	}
	return &recordJSON{Verdict: string(r.Verdict), Rule: r.Rule, Time: r.Time, SHA256: r.SHA256, Origin: r.Origin}
}

// openPath opens path with O_PATH, without following a final symbolic link: the content
// is not opened, so no fanotify permission event is sent.
func openPath(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// sameFile reports whether f and g are the same inode.
func sameFile(f, g *os.File) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	gi, err := g.Stat()
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, gi), nil
}

// unwrapPath drops the path of a *fs.PathError (a /proc/self/fd name here).
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// unreadFile stands for a file whose content was not read: its size and mode are known,
// reading fails with err.
type unreadFile struct {
	fi  fs.FileInfo
	err error
}

func (u unreadFile) ReadAt([]byte, int64) (int, error) { return 0, u.err }
func (u unreadFile) Stat() (fs.FileInfo, error)        { return u.fi, nil }

// printFacts prints what explain found on the file besides the request: the record
// isolatord wrote on it, and why its content was not read.
func printFacts(w io.Writer, rec *interception.Record, content string) {
	if rec != nil {
		line := string(rec.Verdict)
		if rec.Rule != "" {
			line += " (rule " + rec.Rule + ")"
		}
		if !rec.Time.IsZero() {
			line += " at " + rec.Time.Local().Format(time.RFC3339)
		}
		if rec.SHA256 != "" {
			line += ", sha256 " + rec.SHA256
		}
		fmt.Fprintf(w, "recorded:  %s\n", line)
	}
	if content != "" {
		fmt.Fprintf(w, "content:   %s\n", content)
	}
}

// fileError says why the file named name (at abs) cannot be decided on: the name first,
// then what is wrong with it.
func fileError(name, abs string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		if target, lerr := os.Readlink(abs); lerr == nil {
			return fmt.Errorf("%s: dangling symlink to %s", name, target)
		}
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%s: %w", name, err)
}

// openRegular opens path for reading if it is a regular file (a FIFO does not block).
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return f, nil
}

// printRequest prints what the decision is about.
func printRequest(w io.Writer, req *policy.Request) {
	fmt.Fprintf(w, "file:      %s\n", req.Path)
	fmt.Fprintf(w, "requester: %s (uid %d), home %s\n", req.User, req.UID, req.Home)
	if req.Opener != "" {
		fmt.Fprintf(w, "opener:    %s\n", req.Opener)
	}
	if req.Origin != "" {
		fmt.Fprintf(w, "origin:    %s\n", req.Origin)
	}
	if req.Referrer != "" {
		fmt.Fprintf(w, "referrer:  %s\n", req.Referrer)
	}
}

// printDecision prints the decision d about req, after printRequest.
func printDecision(w io.Writer, req *policy.Request, d *policy.Decision) {
	fmt.Fprintf(w, "decision:  %s\n", d.Action)
	where := ""
	if d.File != "" {
		where = fmt.Sprintf(" (%s:%d)", d.File, d.Line)
	}
	fmt.Fprintf(w, "rule:      %s%s\n", d.Rule, where)
	for i, m := range d.Matched {
		label := ""
		if i == 0 {
			label = "matched:"
		}
		fmt.Fprintf(w, "%-10s %s\n", label, m)
	}
	if h := d.Handler; h != nil {
		fmt.Fprintf(w, "handler:   %s (%s:%d)\n", h.Name, h.File, h.Line)
		name := filepath.Base(req.Path)
		fmt.Fprintf(w, "  image    %s\n", h.Image)
		fmt.Fprintf(w, "  runs     %s\n", strings.Join(append([]string{h.ExpandProgram(name)}, h.ExpandArgs(name)...), " "))
		var limits []string
		if h.Memory > 0 {
			limits = append(limits, "memory "+humanBytes(h.Memory))
		}
		if h.Timeout > 0 {
			limits = append(limits, "timeout "+h.Timeout.String())
		}
		if h.MaxOutputBytes > 0 {
			limits = append(limits, "output "+humanBytes(h.MaxOutputBytes))
		}
		if h.MaxOutputFiles > 0 {
			limits = append(limits, fmt.Sprintf("%d files", h.MaxOutputFiles))
		}
		if len(limits) > 0 {
			fmt.Fprintf(w, "  limits   %s\n", strings.Join(limits, ", "))
		}
		var ret []string
		for _, r := range h.Returns {
			ret = append(ret, string(r))
		}
		fmt.Fprintf(w, "  returns  %s\n", strings.Join(ret, ", "))
	}
	fmt.Fprintf(w, "why:       %s\n", d.Explanation)
	fmt.Fprintf(w, "policy:    %s\n", d.PolicyVersion)
}

func humanBytes(n int64) string {
	for _, u := range []struct {
		div  int64
		name string
	}{{1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if n >= u.div && n%u.div == 0 {
			return fmt.Sprintf("%d%s", n/u.div, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// plural formats a count with its noun, in the plural unless the count is one.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
