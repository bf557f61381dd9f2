package policy

import (
	"errors"
	"fmt"
	"strings"
)

// ErrNoPolicy is reported (wrapped in a *ValidationErrors) when there is no policy file at
// all. With no valid policy nothing is trusted: see FailClosed.
var ErrNoPolicy = errors.New("no policy files")

// Issue is one problem found while loading a policy, at a position in a policy file.
type Issue struct {
	File    string `json:"file"`
	Line    int    `json:"line"`
	Col     int    `json:"col"`
	Msg     string `json:"message"`
	Warning bool   `json:"warning,omitempty"` // warnings do not make a policy invalid
}

// String formats the issue as "file:line:col: message", or "file: message" for a problem
// of a whole file (Line 0: it cannot be read, is a dangling symlink, is too large), with
// "warning: " before the message of a warning.
func (i Issue) String() string {
	w := ""
	if i.Warning {
		w = "warning: "
	}
	if i.Line <= 0 {
		return fmt.Sprintf("%s: %s%s", i.File, w, i.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s%s", i.File, i.Line, i.Col, w, i.Msg)
}

// ValidationErrors lists every problem found in a policy: all errors, followed by the
// warnings. Load returns it (as an error) when there is at least one error.
type ValidationErrors struct {
	Issues []Issue
}

// Errors returns the issues that are errors.
func (e *ValidationErrors) Errors() []Issue { return e.filter(false) }

// Warnings returns the issues that are warnings.
func (e *ValidationErrors) Warnings() []Issue { return e.filter(true) }

func (e *ValidationErrors) filter(warn bool) []Issue {
	var out []Issue
	for _, is := range e.Issues {
		if is.Warning == warn {
			out = append(out, is)
		}
	}
	return out
}

// Error lists every issue, one per line.
func (e *ValidationErrors) Error() string {
	var b strings.Builder
	for i, is := range e.Issues {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(is.String())
	}
	return b.String()
}

// Is makes errors.Is(err, ErrNoPolicy) work for a policy directory without files.
func (e *ValidationErrors) Is(target error) bool {
	if target != ErrNoPolicy {
		return false
	}
	for _, is := range e.Issues {
		if strings.HasPrefix(is.Msg, ErrNoPolicy.Error()) {
			return true
		}
	}
	return false
}
