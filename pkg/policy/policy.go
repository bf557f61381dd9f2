// Package policy implements Isolator's trust policy language: YAML files in which an
// administrator says which files are opened on the host (trust), which are opened by a
// handler program inside a throwaway micro VM (isolate), which are refused (deny) and for
// which the user is asked (ask).
//
// A policy is loaded from one or more directories of *.yaml files (Load, LoadSources),
// validated as a whole (every problem is reported at once as a *ValidationErrors), compiled
// into an immutable *Policy and evaluated with (*Policy).Decide. Rules are evaluated in a
// defined order, first match wins, and every Decision explains itself: the file and line of
// the rule that decided and the conditions that matched. A Store holds the policy in force
// and hot-reloads a directory with fsnotify, keeping the last good policy when a change is
// invalid.
//
// The language is documented in docs/POLICY.md.
package policy

import (
	"io"
	"io/fs"
	"strconv"
	"strings"
	"time"
)

// File is an open file a decision reads its content facts from: Stat for the size and the
// file's identity (the fact cache key), ReadAt for sniffing and hashing. An *os.File is one.
// ReadAt never moves the file's offset, so the caller can copy the file afterwards from the
// same descriptor and get the bytes that were decided on.
type File interface {
	io.ReaderAt
	Stat() (fs.FileInfo, error)
}

// Request is what a decision is about: one file, who asks, with what program, and where
// the file came from.
type Request struct {
	Path string `json:"path"` // absolute host path of the file; what path, name and extension rules see

	// File, when set, is the file itself, already open: every content fact (size, content
	// type, SHA-256) is read from it and never from Path, so a decision cannot be steered
	// to another file by renaming or replacing Path, and reads nothing the opener could
	// not read. Callers that act on a file (isolatord) open it with the requester's
	// identity and set this; without it the facts are read from Path with the caller's own
	// identity. See ReadOriginFile for the origin.
	File   File     `json:"-"`
	User   string   `json:"user,omitempty"`   // name of the owner/requester ("" if unknown)
	UID    int      `json:"uid"`              // uid of the owner/requester
	Groups []string `json:"groups,omitempty"` // group names of the requester
	Home   string   `json:"home,omitempty"`   // home directory of the requester ("" if none); "~" in path globs means this

	Opener string `json:"opener,omitempty"` // executable path of the program opening the file ("" if unknown)

	Origin   string `json:"origin,omitempty"`   // URL the file was downloaded from ("" if none); see ReadOrigin
	Referrer string `json:"referrer,omitempty"` // URL of the page that linked the download ("" if none)

	// Release, when set, says that someone the caller trusts to do so (the file's owner or
	// an administrator, through isolatord) reviewed one content of this file and released
	// it. It applies only while the file's SHA-256 is Release.SHA256, and never against a
	// deny: see Policy.Decide.
	Release *Release `json:"release,omitempty"`

	// Content facts. The evaluator fills them lazily from the file when a rule needs them
	// and they are zero; callers that already know them may set them.
	// In JSON, unknown facts are left out.
	Size        int64  `json:"size,omitempty"`         // size in bytes; -1 or 0 with the file present means "stat the file"
	SHA256      string `json:"sha256,omitempty"`       // lower-case hex SHA-256 of the content
	ContentType string `json:"content_type,omitempty"` // MIME type sniffed from the bytes, e.g. "application/pdf"
}

// Release is a reviewer's statement that one content of a file is trusted (isoctl
// release). The policy does not check who made it; the caller (isolatord, which keeps its
// releases in its own state, never in attributes a user can set) does.
type Release struct {
	SHA256 string    `json:"sha256"`           // hex SHA-256 of the released content
	By     string    `json:"by"`               // who released it, e.g. "alice (uid 1000)"
	At     time.Time `json:"at"`               // when
	Reason string    `json:"reason,omitempty"` // the reviewer's words
}

// what says who released and when: `by alice (uid 1000) at 2026-12-04T03:56:47Z ("why")`.
func (r *Release) what() string {
	s := "by " + r.By + " at " + r.At.UTC().Format(time.RFC3339)
	if r.Reason != "" {
		s += " (" + strconv.Quote(r.Reason) + ")"
	}
	return s
}

// Action is what happens to a file.
type Action string

// The actions a rule can take.
const (
	ActionTrust   Action = "trust"   // open on the host, as if Isolator were not there
	ActionIsolate Action = "isolate" // run the rule's handler on the file in a micro VM
	ActionDeny    Action = "deny"    // refuse to open the file
	ActionAsk     Action = "ask"     // ask the user; the session decides
)

// Valid reports whether a is one of the four actions.
func (a Action) Valid() bool {
	switch a {
	case ActionTrust, ActionIsolate, ActionDeny, ActionAsk:
		return true
	}
	return false
}

// Output names something a handler hands back to the user.
type Output string

// The things a handler can return.
const (
	OutputFiles  Output = "files"  // the regular files the program wrote under {output}
	OutputStdout Output = "stdout" // the program's standard output
	OutputStderr Output = "stderr" // the program's standard error
)

// Handler is how an isolated file is opened: a program in a guest image, its arguments and
// its resource limits. Handlers are immutable once loaded; do not modify a Handler taken
// from a Decision.
type Handler struct {
	Name    string   `json:"name"`              // name the rules refer to it by
	Image   string   `json:"image"`             // guest image name; the daemon opens <image-dir>/<Image>.img
	Program string   `json:"program"`           // guest path of the program, e.g. /usr/bin/pdftotext, or "{input}" to run the input itself
	Args    []string `json:"args,omitempty"`    // arguments after argv[0], with {input}, {output}, {name}, {stem} placeholders
	Env     []string `json:"env,omitempty"`     // environment, "KEY=value"
	Summary string   `json:"summary,omitempty"` // the handler's description

	Memory         int64         `json:"memory,omitempty"`           // guest memory cap in bytes; 0 means the VM default
	Timeout        time.Duration `json:"timeout_ns,omitempty"`       // wall-clock limit; 0 means the VM default (none)
	MaxOutputBytes int64         `json:"max_output_bytes,omitempty"` // bound on bytes returned; 0 means the VM default
	MaxOutputFiles int           `json:"max_output_files,omitempty"` // bound on files returned; 0 means the VM default
	Returns        []Output      `json:"returns"`                    // what comes back to the user, in this order

	File string `json:"file"` // policy file that defined the handler
	Line int    `json:"line"` // line of the definition
}

// Guest paths the placeholders in Handler.Args expand to.
const (
	GuestInputDir  = "/input"  // the input file is /input/<name>
	GuestOutputDir = "/output" // files written here are returned when Returns has "files"
)

// ExpandArgs returns h.Args with the placeholders replaced for an input file whose base
// name inside the guest is name: {input} is /input/<name>, {output} is /output, {name} is
// name and {stem} is name without its last extension. "{{" and "}}" are literal braces.
func (h *Handler) ExpandArgs(name string) []string {
	stem := name
	if i := strings.LastIndexByte(name, '.'); i > 0 {
		stem = name[:i]
	}
	r := strings.NewReplacer(
		"{{", "{", "}}", "}",
		"{input}", GuestInputDir+"/"+name,
		"{output}", GuestOutputDir,
		"{name}", name,
		"{stem}", stem,
	)
	out := make([]string, len(h.Args))
	for i, a := range h.Args {
		out[i] = r.Replace(a)
	}
	return out
}

// ExpandProgram returns the guest path of the program for an input file whose base name
// inside the guest is name: Program, or /input/<name> when Program is "{input}".
func (h *Handler) ExpandProgram(name string) string {
	if h.Program == "{input}" {
		return GuestInputDir + "/" + name
	}
	return h.Program
}

// Decision is the result of evaluating a policy for a Request.
type Decision struct {
	Action  Action   `json:"action"`
	Handler *Handler `json:"handler,omitempty"` // set when Action is isolate

	Rule    string   `json:"rule"`              // name of the deciding rule, or "default" / "untrusted-origin-default" / "fail-closed"
	File    string   `json:"file,omitempty"`    // policy file of the deciding rule or default
	Line    int      `json:"line,omitempty"`    // line of the deciding rule or default
	Matched []string `json:"matched,omitempty"` // the conditions that matched, e.g. `extension "pdf"`

	Explanation   string `json:"explanation"`    // one human-readable sentence or two
	PolicyVersion string `json:"policy_version"` // content hash of the policy that decided

	// SHA256 is the lower-case hex SHA-256 of the content the decision looked at, when it
	// needed the hash (a hash condition was reached, the fact cache had it, or the request
	// carried it); "" otherwise. A caller that copies or hashes the file afterwards can
	// compare, to be sure it has the content that was decided on.
	SHA256 string `json:"sha256,omitempty"`
}
