package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// AuditRecord is one line of the audit log.
type AuditRecord struct {
	Time          time.Time `json:"time"`
	Event         string    `json:"event"` // decision, task, kill, release, restart
	UID           int       `json:"uid"`
	User          string    `json:"user,omitempty"`
	Path          string    `json:"path,omitempty"`
	SHA256        string    `json:"sha256,omitempty"`
	Action        string    `json:"action,omitempty"`
	Rule          string    `json:"rule,omitempty"`
	RuleFile      string    `json:"rule_file,omitempty"`
	RuleLine      int       `json:"rule_line,omitempty"`
	Explanation   string    `json:"explanation,omitempty"`
	PolicyVersion string    `json:"policy_version,omitempty"`
	Handler       string    `json:"handler,omitempty"`
	Task          string    `json:"task,omitempty"`
	Tasks         []string  `json:"tasks,omitempty"` // restart: the tasks the previous run left unfinished
	State         string    `json:"state,omitempty"`
	ExitCode      *int      `json:"exit_code,omitempty"`
	Reason        string    `json:"reason,omitempty"`
}

// Audit appends JSON lines to a file, one fsync'd record at a time. The file is opened
// O_APPEND, so log rotators may rename it at any time; Reopen (on SIGHUP) starts the new one.
type Audit struct {
	path string

	mu sync.Mutex
	f  *os.File // guarded by mu; nil once closed
}

// OpenAudit opens (creating 0600) the audit log at path.
func OpenAudit(path string) (*Audit, error) {
	a := &Audit{path: path}
	if err := a.Reopen(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reopen closes the current file and opens path again.
func (a *Audit) Reopen() error {
	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	a.mu.Lock()
	old := a.f
	a.f = f
	a.mu.Unlock()
	if old != nil {
		return old.Close()
	}
	return nil
}

// Write appends rec as one line and syncs it to disk.
func (a *Audit) Write(rec *AuditRecord) error {
	if rec.Time.IsZero() {
		rec.Time = time.Now().UTC()
	}
	line, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode audit record: %w", err)
	}
	line = append(line, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return errors.New("audit log closed")
	}
	if _, err := a.f.Write(line); err != nil {
		return fmt.Errorf("write audit log: %w", err)
	}
	if err := a.f.Sync(); err != nil {
		return fmt.Errorf("sync audit log: %w", err)
	}
	return nil
}

// Close closes the log.
func (a *Audit) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return nil
	}
	err := a.f.Close()
	a.f = nil
	return err
}
