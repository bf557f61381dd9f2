// Package api defines the wire types of isolatord's local API: HTTP over a unix socket
// carrying JSON bodies and, for long-running calls, newline-delimited JSON event streams.
//
// The daemon (package daemon) serves these types and the client (package client) speaks
// them; both import this package and nothing else of each other.
package api

import (
	"fmt"
	"time"
)

// Routes of the API. {id} is a task ID.
const (
	PathOpen    = "/v1/open"               // POST OpenRequest -> NDJSON stream of Event
	PathTasks   = "/v1/tasks"              // GET ?all=1 -> []Task
	PathTask    = "/v1/tasks/{id}"         // GET -> Task
	PathLogs    = "/v1/tasks/{id}/logs"    // GET ?follow=1 -> NDJSON stream of Event (stdout/stderr/end)
	PathResults = "/v1/tasks/{id}/results" // GET -> NDJSON stream of Event (result, file..., end)
	PathKill    = "/v1/tasks/{id}/kill"    // POST -> Task
	PathStatus  = "/v1/status"             // GET -> Status
	PathRelease = "/v1/release"            // POST ReleaseRequest -> ReleaseResponse
	PathEvents  = "/v1/events"             // GET -> NDJSON stream of Event (task states, interceptions)
	PathMetrics = "/metrics"               // GET -> Prometheus text format
)

// ContentTypeNDJSON is the media type of event streams.
const ContentTypeNDJSON = "application/x-ndjson"

// FileChunk is the most file data one EventFile carries.
const FileChunk = 1 << 20

// MaxEventSize bounds one line of an event stream, as clients read it. File contents come
// in chunks of FileChunk bytes (base64 in JSON), output in events of 64 KiB; the longest
// lines are result events, which name every returned file (at most the handler's
// max_output_files) and at most MaxRejected outputs that were not returned.
const MaxEventSize = 64 << 20

// MaxRejected bounds the outputs listed as not returned in a Task and in Results; beyond
// it, one more entry says how many others there were.
const MaxRejected = 1000

// Action is what the policy decided for a file.
type Action string

// Actions a decision can carry.
const (
	ActionTrust   Action = "trust"
	ActionIsolate Action = "isolate"
	ActionDeny    Action = "deny"
	ActionAsk     Action = "ask"
)

// State is the lifecycle state of a task.
type State string

// Task states. A task is created queued, becomes running when a micro VM slot is free, and
// ends done (the handler ran to completion, whatever its exit code), failed (the VM could not
// be created or broke) or killed (by a user, the deadline, or a daemon restart).
const (
	StateQueued  State = "queued"
	StateRunning State = "running"
	StateDone    State = "done"
	StateFailed  State = "failed"
	StateKilled  State = "killed"
)

// Final reports whether s is an end state.
func (s State) Final() bool { return s == StateDone || s == StateFailed || s == StateKilled }

// OpenRequest asks the daemon to decide on, and if needed isolate, one file.
type OpenRequest struct {
	Path   string `json:"path"`             // absolute host path, read with the caller's credentials
	Opener string `json:"opener,omitempty"` // executable that wants to open the file, if known
}

// Decision is the policy's verdict on a file, with its explanation.
type Decision struct {
	Action        Action   `json:"action"`
	Handler       string   `json:"handler,omitempty"`
	Rule          string   `json:"rule,omitempty"`
	File          string   `json:"file,omitempty"` // policy file of the rule
	Line          int      `json:"line,omitempty"`
	Matched       []string `json:"matched,omitempty"`
	Explanation   string   `json:"explanation,omitempty"`
	PolicyVersion string   `json:"policy_version,omitempty"`
}

// VMStats are the statistics of one micro VM run.
type VMStats struct {
	Wall           time.Duration     `json:"wall_ns"`
	CPU            time.Duration     `json:"cpu_ns"`
	PeakMemory     int64             `json:"peak_memory"`
	Threads        int               `json:"threads"`
	Syscalls       uint64            `json:"syscalls"`
	Denied         map[string]uint64 `json:"denied,omitempty"`
	Exits          uint64            `json:"exits"`
	BytesCopiedIn  int64             `json:"bytes_copied_in"`
	BytesCopiedOut int64             `json:"bytes_copied_out"`
}

// Task is one isolation: a file run through a handler in a micro VM.
type Task struct {
	ID       string   `json:"id"`
	UID      int      `json:"uid"`
	User     string   `json:"user,omitempty"`
	File     string   `json:"file"`
	SHA256   string   `json:"sha256,omitempty"`
	Decision Decision `json:"decision"`
	Handler  string   `json:"handler"`
	Image    string   `json:"image,omitempty"`
	State    State    `json:"state"`
	Reason   string   `json:"reason,omitempty"` // why a task failed or was killed

	Created  time.Time `json:"created"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`

	ExitCode int        `json:"exit_code"`
	Signal   int        `json:"signal,omitempty"`
	TimedOut bool       `json:"timed_out,omitempty"`
	Outputs  []string   `json:"outputs,omitempty"` // names of the returned files
	Rejected []Rejected `json:"rejected,omitempty"`
	Stats    *VMStats   `json:"stats,omitempty"`
}

// File is an output file of a task, returned to its owner. In Results it describes the
// file; its contents follow in EventFile events, each a File with a chunk of at most
// FileChunk bytes at Offset, in order (one chunk with no Data for an empty file).
type File struct {
	Name   string `json:"name"` // sanitized relative name
	Mode   uint32 `json:"mode"`
	Size   int64  `json:"size"`             // of the whole file
	Offset int64  `json:"offset,omitempty"` // of Data in the file
	Data   []byte `json:"data,omitempty"`
}

// Rejected is an output that was not returned, and why.
type Rejected struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Results describe the output files of a finished task. Over the API their contents follow
// the result event that carries them, as EventFile events.
type Results struct {
	Task     string     `json:"task"`
	SHA256   string     `json:"sha256"` // of the source file
	Handler  string     `json:"handler"`
	Files    []File     `json:"files"`
	Rejected []Rejected `json:"rejected,omitempty"`
	// MaxFiles and MaxBytes are the handler's bounds on what it returns (max_output_files
	// and max_output_bytes, or the micro VM's defaults); a client saving the files applies
	// the same. 0: not known (results of older daemons).
	MaxFiles int   `json:"max_files,omitempty"`
	MaxBytes int64 `json:"max_bytes,omitempty"`
}

// EventType says what an Event carries.
type EventType string

// Event types.
const (
	EventDecision EventType = "decision" // Decision (and Task when isolated)
	EventState    EventType = "state"    // Task changed state
	EventStdout   EventType = "stdout"   // Data from the guest's stdout
	EventStderr   EventType = "stderr"   // Data from the guest's stderr
	EventNotice   EventType = "notice"   // Message from the daemon (e.g. output truncated)
	EventResult   EventType = "result"   // Task finished; Results describes its files, whose EventFiles follow
	EventFile     EventType = "file"     // File: a chunk of a result file
	EventError    EventType = "error"    // Error ends the stream
	EventEnd      EventType = "end"      // end of a log stream

	EventDownload EventType = "download"    // an intercepted download was decided (Path, Decision)
	EventDenied   EventType = "open-denied" // an open was refused by the gate (Path, Decision, Task)
)

// Event is one line of an NDJSON event stream.
type Event struct {
	Type     EventType `json:"type"`
	Time     time.Time `json:"time,omitzero"`
	Path     string    `json:"path,omitempty"`
	Decision *Decision `json:"decision,omitempty"`
	Task     *Task     `json:"task,omitempty"`
	Data     []byte    `json:"data,omitempty"`
	Message  string    `json:"message,omitempty"`
	Results  *Results  `json:"results,omitempty"`
	File     *File     `json:"file,omitempty"`
	Error    *Error    `json:"error,omitempty"`
}

// Status describes the daemon.
type Status struct {
	Version       string    `json:"version"`
	PID           int       `json:"pid"`
	Started       time.Time `json:"started"`
	PolicyVersion string    `json:"policy_version"`
	PolicyError   string    `json:"policy_error,omitempty"`
	ActiveVMs     int       `json:"active_vms"` // running micro VMs (the caller's own unless Admin)
	Queued        int       `json:"queued"`     // queued tasks (the caller's own unless Admin)
	MaxConcurrent int       `json:"max_concurrent"`
	QueueLimit    int       `json:"queue_limit"`
	PeakRunning   int       `json:"peak_running"` // highest number of VMs running at once
	PeakQueued    int       `json:"peak_queued"`  // highest number of tasks queued at once
	TasksTotal    int       `json:"tasks_total"`
	Images        []string  `json:"images,omitempty"`
	You           int       `json:"you"` // the caller's uid as the daemon saw it
	// Admin says whether the caller is an administrator (root or a member of the daemon's
	// admin group). For everyone else ActiveVMs, Queued and TasksTotal count only the
	// caller's own tasks, and the peaks are 0.
	Admin bool `json:"admin"`
}

// ReleaseRequest marks a file trusted after review.
type ReleaseRequest struct {
	Path   string `json:"path"`
	Reason string `json:"reason,omitempty"`
}

// ReleaseResponse confirms a release.
type ReleaseResponse struct {
	Path    string    `json:"path"`
	SHA256  string    `json:"sha256"` // the released content
	By      int       `json:"by"`
	At      time.Time `json:"at,omitzero"`
	Warning string    `json:"warning,omitempty"` // the file could not be tagged; the release holds
}

// Error codes carried in Error.Code.
const (
	CodeBadRequest   = "bad_request"
	CodeForbidden    = "forbidden"
	CodeNotFound     = "not_found"
	CodeTooLarge     = "too_large"
	CodeConflict     = "conflict" // the task is not in a state that allows the request
	CodeBusy         = "busy"
	CodeDenied       = "denied"
	CodeUnavailable  = "unavailable"
	CodeInternal     = "internal"
	CodeShuttingDown = "shutting_down"
)

// Error is the body of every non-2xx response and of EventError.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return fmt.Sprintf("%s (%s)", e.Message, e.Code) }
