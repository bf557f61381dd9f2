// Package interception catches untrusted files without the user doing anything: a download
// Watcher notices files that arrive in the download directories, decides them once their
// write is complete and records the verdict on the file as user.isolator.* extended
// attributes; a fanotify permission Gate answers every open and exec of a file in the watched
// directories, denying the untrusted ones so their content never reaches a host program and
// asking its owner to isolate them instead.
//
// The package does not import the daemon. Its owner supplies a Decider (usually an adapter
// around package policy) and a Sink (the daemon's task starter and the users' event streams),
// and runs a Watcher and a Gate with Run until its context is cancelled. See
// docs/INTERCEPTION.md for the design, the fanotify marks used and the limits.
package interception

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// Action is what a Verdict tells the interception layer to do with a file.
type Action string

// The actions a Decider may return. Anything else is treated as ActionDeny.
const (
	ActionTrust   Action = "trust"   // open on the host as usual
	ActionIsolate Action = "isolate" // never on the host; open in a micro VM
	ActionDeny    Action = "deny"    // never on the host, not even in a micro VM
	ActionAsk     Action = "ask"     // the user decides; the host open is refused meanwhile
)

// Valid reports whether a is one of the known actions.
func (a Action) Valid() bool {
	switch a {
	case ActionTrust, ActionIsolate, ActionDeny, ActionAsk:
		return true
	}
	return false
}

// Verdict is a Decider's answer for one file.
type Verdict struct {
	Action Action // what to do
	Rule   string // name of the policy rule that matched, for the record and explanations
	Reason string // one human-readable sentence
	// SHA256 is the hex SHA-256 of the content decided, when the Decider computed it. The
	// Gate keeps it for verdicts that refuse opens, to recognise the same content under
	// another name (it hashes the file itself otherwise).
	SHA256 string
}

// Trigger says which observation produced a FileInfo.
type Trigger string

// The triggers.
const (
	TriggerDownload Trigger = "download" // the Watcher saw a completed file arrive
	TriggerOpen     Trigger = "open"     // the Gate saw a program open the file
	TriggerExec     Trigger = "exec"     // the Gate saw a program execute the file
)

// FileInfo describes a file the interception layer wants a verdict for.
type FileInfo struct {
	Path    string      // absolute path at the time of the observation
	Trigger Trigger     // what was observed
	Dev     uint64      // device of the file
	Ino     uint64      // inode of the file
	Size    int64       // size in bytes
	Mode    fs.FileMode // type and permission bits
	UID     uint32      // owner; isolation runs on behalf of this user
	Ctime   time.Time   // inode change time, part of the cache key
	Mtime   time.Time   // content change time; unlike Ctime not changed by the recorded verdict
	SHA256  string      // hex content hash; set by the Watcher, empty at the Gate

	// OriginURL and ReferrerURL are the user.xdg.origin.url and user.xdg.referrer.url
	// attributes a browser set, if any.
	OriginURL   string
	ReferrerURL string
	// ObservedOrigin is what Isolator saw when the file had no OriginURL: the directory it
	// arrived in and the writing program when known ("dir:/home/a/Downloads prog:/usr/bin/curl").
	ObservedOrigin string

	PID     int    // process that wrote (Watcher) or opened (Gate) the file; 0 if unknown
	Program string // executable of PID when known

	// File is the file itself, open for reading: the descriptor the Watcher hashed, or (a
	// duplicate of) the one the kernel passed with the Gate's permission event. It is set
	// only in the FileInfo given to Decider.Decide and valid only until Decide returns; a
	// Decider reads the file's content and attributes from it (never from Path, which may
	// name another file by then) with ReadAt, which leaves its offset alone. It is nil in
	// Sink calls and events.
	File *os.File `json:"-"`
}

// Origin is OriginURL when the browser recorded one, else ObservedOrigin.
func (f FileInfo) Origin() string {
	if f.OriginURL != "" {
		return f.OriginURL
	}
	return f.ObservedOrigin
}

// A Decider evaluates the policy for a file. Decide must honour ctx: the Gate gives it a
// deadline after which the opening process is answered with the configured fallback.
type Decider interface {
	Decide(ctx context.Context, f FileInfo) (Verdict, error)
}

// DeciderFunc adapts a function to the Decider interface.
type DeciderFunc func(ctx context.Context, f FileInfo) (Verdict, error)

// Decide calls fn.
func (fn DeciderFunc) Decide(ctx context.Context, f FileInfo) (Verdict, error) { return fn(ctx, f) }

var _ Decider = DeciderFunc(nil)

// A Sink is how interception reaches the rest of the daemon. Its methods are called from the
// Watcher's and the Gate's goroutines and must not block for long: start work and return.
type Sink interface {
	// Isolate starts the file's handler in a micro VM on behalf of the file's owner.
	Isolate(ctx context.Context, f FileInfo, v Verdict)
	// Notify tells the owner's session what happened (isolatord: the /v1/events stream that
	// isoctl watch reads; it sends no desktop notification).
	Notify(ev Event)
}

// EventKind classifies an Event.
type EventKind string

// The event kinds.
const (
	EventDownload   EventKind = "download"    // a completed download was decided and tagged
	EventDenied     EventKind = "open-denied" // the Gate refused an open or exec
	EventOverflow   EventKind = "overflow"    // the inotify queue overflowed; directories rescanned
	EventWatchLimit EventKind = "watch-limit" // fs.inotify.max_user_watches is too low
	EventError      EventKind = "error"       // something failed; Err says what
)

// Event is a notification for the owner's session and the logs.
type Event struct {
	Kind    EventKind
	Time    time.Time
	File    FileInfo // zero for events about directories or the whole watcher
	Verdict Verdict  // for EventDownload and EventDenied
	Message string   // one human-readable sentence
	Err     error    // for EventError and EventWatchLimit
}

func (e Event) String() string {
	if e.Err != nil {
		return fmt.Sprintf("%s %s: %s: %v", e.Kind, e.File.Path, e.Message, e.Err)
	}
	return fmt.Sprintf("%s %s: %s", e.Kind, e.File.Path, e.Message)
}
