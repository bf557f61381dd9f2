package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/isolator-dev/isolator/internal/xdg"
	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/broker"
	"github.com/isolator-dev/isolator/pkg/client"
)

// Exit codes of isoctl open.
const (
	exitDenied     = 2 // a file was denied
	exitTaskFailed = 3 // an isolated task failed, was killed or its handler exited non-zero
	exitNoApp      = 4 // a trusted file has no application other than Isolator's handler
	exitRelaunch   = 5 // a trusted file was not opened: isoctl runs under a program it launched
)

// launchedEnv is set to 1 in the environment of every application isoctl open launches.
// An isoctl open that finds it set does not launch trusted files: it was started, directly
// or not, by an application isoctl started, and launching again could go on forever.
const launchedEnv = "ISOLATOR_LAUNCHED"

// isolatorDesktopID is the desktop file ID of Isolator's handler, deploy/xdg/isolator-open.desktop.
const isolatorDesktopID = "isolator-open.desktop"

// dial connects to isolatord at the --socket path.
func (g *globalOptions) dial() (*client.Client, error) {
	return client.Dial(g.socket)
}

type openOptions struct {
	noLaunch   bool
	resultsDir string
	json       bool
	opener     string
}

// openReport is what isoctl open --json prints for each file.
type openReport struct {
	Path         string         `json:"path"`
	Decision     *api.Decision  `json:"decision,omitempty"`
	Task         *api.Task      `json:"task,omitempty"`
	Stdout       string         `json:"stdout,omitempty"`
	Stderr       string         `json:"stderr,omitempty"`
	ResultsDir   string         `json:"results_dir,omitempty"`
	Written      []string       `json:"written,omitempty"`
	Refused      []api.Rejected `json:"refused,omitempty"`
	XattrWarning string         `json:"xattr_warning,omitempty"`
	MIMEType     string         `json:"mime_type,omitempty"`   // of a trusted file being launched
	Application  string         `json:"application,omitempty"` // desktop file ID it was launched with
	PassedOver   []string       `json:"passed_over,omitempty"` // applications not used, "ID: why"
	Launched     bool           `json:"launched,omitempty"`
	Error        string         `json:"error,omitempty"`

	code int // exit status for Error; 0 means 1
}

func newOpenCmd(g *globalOptions) *cobra.Command {
	o := &openOptions{}
	cmd := &cobra.Command{
		Use:   "open FILE...",
		Short: "Open files as the policy says: on the host, in a micro VM, or not at all",
		Long: `Open asks isolatord about each FILE. A trusted file is opened on the host, or only
reported with --no-launch. An isolated file runs its handler in a throwaway micro VM: the
handler's output is shown as it runs and the files it returns are written to
RESULTS-DIR/<task-id>/ (default ~/Isolated), never overwriting anything and never following
symlinks. A denied file is refused with the policy's reason.

A trusted file opens with the application the desktop would use if Isolator's handler
(isolator-open.desktop) were not installed: isoctl finds the file's MIME type and the
default application for it from the mimeapps.list files and desktop entries, as the XDG
specifications say, passing over isolator-open.desktop and any entry that runs isoctl or
a program that asks for the default application again (xdg-open, gio, kde-open, ...). It
starts that application itself, detached, never through xdg-open, with ISOLATOR_LAUNCHED=1
in its environment; an isoctl open that finds ISOLATOR_LAUNCHED set opens no trusted file.

Exit status: 0 when every file was handled, 1 on errors, 2 when a file was denied, 3 when
an isolated task failed, was killed, or its handler exited non-zero, 4 when a trusted file
has no application other than Isolator's handler (set one with
xdg-mime default APP.desktop TYPE), 5 when a trusted file was not opened because
ISOLATOR_LAUNCHED is set.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOpen(cmd.Context(), g, o, args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().BoolVar(&o.noLaunch, "no-launch", false, "report trusted files instead of opening them")
	cmd.Flags().StringVar(&o.resultsDir, "results-dir", "", "where results go, one directory per task (default ~/Isolated)")
	cmd.Flags().BoolVar(&o.json, "json", false, "print one JSON object per file")
	cmd.Flags().StringVar(&o.opener, "opener", "", "program that will open the file, for opener rules")
	return cmd
}

func runOpen(ctx context.Context, g *globalOptions, o *openOptions, files []string, stdout, stderr io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if o.resultsDir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return fmt.Errorf("no home directory for results; use --results-dir: %w", err)
		}
		o.resultsDir = filepath.Join(home, "Isolated")
	}
	c, err := g.dial()
	if err != nil {
		if !o.json {
			return err
		}
		// Scripts get a JSON object for every file, also when isolatord is not running.
		enc := json.NewEncoder(stdout)
		for _, f := range files {
			if abs, aerr := filepath.Abs(f); aerr == nil {
				f = abs
			}
			enc.Encode(&openReport{Path: f, Error: err.Error()})
		}
		return &ExitError{Code: 1}
	}
	defer c.Close()
	code := 0
	worse := func(n int) {
		// Errors outrank denials, which outrank trusted files not opened, which outrank
		// failed tasks.
		rank := map[int]int{0: 0, exitTaskFailed: 1, exitNoApp: 2, exitRelaunch: 3, exitDenied: 4, 1: 5}
		if rank[n] > rank[code] {
			code = n
		}
	}
	enc := json.NewEncoder(stdout)
	for _, f := range files {
		rep := openOne(ctx, c, o, f, stdout, stderr)
		switch {
		case rep.Error != "":
			worse(max(rep.code, 1))
			if !o.json {
				fmt.Fprintf(stderr, "isoctl: %s: %s\n", f, rep.Error)
				if rep.code == exitNoApp {
					for _, p := range rep.PassedOver {
						fmt.Fprintf(stderr, "  passed over %s\n", p)
					}
				}
			}
		case rep.Decision != nil && rep.Decision.Action == api.ActionDeny:
			worse(exitDenied)
		case rep.Task != nil && (rep.Task.State != api.StateDone || rep.Task.ExitCode != 0):
			worse(exitTaskFailed)
		}
		if o.json {
			enc.Encode(rep)
		}
	}
	if code != 0 {
		return &ExitError{Code: code}
	}
	return nil
}

func openOne(ctx context.Context, c *client.Client, o *openOptions, file string, stdout, stderr io.Writer) *openReport {
	rep := &openReport{Path: file}
	abs, err := filepath.Abs(file)
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	rep.Path = abs
	say := func(format string, args ...any) {
		if !o.json {
			fmt.Fprintf(stdout, format, args...)
		}
	}
	progress := func(format string, args ...any) {
		if !o.json {
			fmt.Fprintf(stderr, format, args...)
		}
	}
	var out, errOut strings.Builder
	var binary bool // stdout was found to be binary, and is no longer shown
	var results *api.Results
	recv := &resultReceiver{dir: o.resultsDir}
	err = c.Open(ctx, api.OpenRequest{Path: abs, Opener: o.opener}, func(ev api.Event) error {
		switch ev.Type {
		case api.EventDecision:
			rep.Decision = ev.Decision
			d := ev.Decision
			switch d.Action {
			case api.ActionTrust:
				say("%s: trusted (rule %s): %s\n", abs, d.Rule, d.Explanation)
			case api.ActionDeny:
				say("%s: denied (rule %s): %s\n", abs, d.Rule, d.Explanation)
			case api.ActionIsolate:
				say("%s: isolated with handler %s (rule %s)\n", abs, d.Handler, d.Rule)
			}
		case api.EventState:
			if rep.Task == nil {
				say("  task %s\n", ev.Task.ID)
			}
			rep.Task = ev.Task
			if !ev.Task.State.Final() {
				progress("  task %s: %s\n", ev.Task.ID, ev.Task.State)
			}
		case api.EventStdout:
			out.Write(ev.Data)
			// Binary output (a decompressed archive) is not written to a terminal; a NUL
			// byte, which text does not have, tells it.
			binary = binary || bytes.IndexByte(ev.Data, 0) >= 0
			if !o.json && !binary {
				stdout.Write(ev.Data)
			}
		case api.EventStderr:
			errOut.Write(ev.Data)
			if !o.json {
				stderr.Write(ev.Data)
			}
		case api.EventNotice:
			progress("  isolatord: %s\n", ev.Message)
		case api.EventResult:
			rep.Task, results = ev.Task, ev.Results
			recv.event(ev)
		case api.EventFile:
			recv.event(ev)
		}
		return nil
	})
	rep.Stdout, rep.Stderr = out.String(), errOut.String()
	// Also when the stream broke off: a file that did not arrive whole is removed.
	delivery, derr := recv.finish()
	if errors.Is(err, client.ErrConnectionLost) {
		// The daemon died or was restarted: say what became of the request and where to look.
		switch t := rep.Task; {
		case t == nil:
			rep.Error = "the connection to isolatord was lost before it answered; it may have stopped: see isoctl status"
		case t.State.Final():
			rep.Error = fmt.Sprintf("the connection to isolatord was lost while the results of task %s came; "+
				"fetch them again with isoctl results --dir DIR %s", t.ID, t.ID)
		default:
			rep.Error = fmt.Sprintf("the connection to isolatord was lost while task %s was %s; "+
				"isolatord may have stopped or restarted: see isoctl ps and isoctl logs %s", t.ID, t.State, t.ID)
		}
		return rep
	}
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	if rep.Decision == nil {
		rep.Error = "isolatord sent no decision"
		return rep
	}
	switch rep.Decision.Action {
	case api.ActionTrust:
		if !o.noLaunch {
			launchTrusted(abs, rep)
			if rep.Launched {
				say("  opened with %s (%s)\n", rep.Application, rep.MIMEType)
			}
		}
		return rep
	case api.ActionIsolate:
	default:
		return rep
	}
	t := rep.Task
	if t == nil || !t.State.Final() {
		rep.Error = "the task's result stream ended early; see isoctl ps"
		return rep
	}
	dur := t.Finished.Sub(t.Started).Round(time.Millisecond)
	switch {
	case t.State == api.StateDone:
		say("  task %s: done, exit status %d, %v in the micro VM\n", t.ID, t.ExitCode, dur)
	default:
		say("  task %s: %s: %s\n", t.ID, t.State, t.Reason)
	}
	if binary {
		say("  binary output (%d bytes) not shown: isoctl logs %s > FILE saves it\n", out.Len(), t.ID)
	}
	if derr != nil {
		rep.Error = fmt.Sprintf("results not saved: %v", derr)
		return rep
	}
	if results != nil {
		rep.Refused = append(rep.Refused, results.Rejected...)
	}
	if d := delivery; d != nil {
		rep.ResultsDir, rep.XattrWarning = d.Dir, d.XattrWarning
		rep.Refused = append(rep.Refused, d.Refused...)
		for _, w := range d.Written {
			rep.Written = append(rep.Written, w.Name)
		}
		say("  %d result file(s) in %s\n", len(d.Written), d.Dir)
		for _, w := range d.Written {
			say("    %s (%d bytes)\n", w.Name, w.Size)
		}
		if d.XattrWarning != "" {
			progress("  warning: %s\n", d.XattrWarning)
		}
	}
	for _, r := range rep.Refused {
		say("  not returned: %s: %s\n", r.Name, r.Reason)
	}
	return rep
}

// resultReceiver saves the result files of a task as their contents arrive, in the file
// events that follow the result event that describes them.
type resultReceiver struct {
	dir string // parent of the per-task directory
	dl  *broker.Deliverer
	err error // the delivery could not start
}

func (r *resultReceiver) event(ev api.Event) {
	switch {
	case ev.Type == api.EventResult && ev.Results != nil && len(ev.Results.Files) > 0 && r.dl == nil && r.err == nil:
		res := ev.Results
		r.dl, r.err = broker.NewDeliverer(broker.DeliverConfig{
			Dir: r.dir, TaskID: res.Task, SourceSHA256: res.SHA256, Handler: res.Handler,
			MaxFiles: res.MaxFiles, MaxBytes: res.MaxBytes, // the handler's bounds
		}, res.Files)
	case ev.Type == api.EventFile && ev.File != nil && r.dl != nil:
		r.dl.Write(*ev.File)
	}
}

// finish ends the delivery and says what was written; it is nil, with no error, when the
// task returned no files.
func (r *resultReceiver) finish() (*broker.Delivery, error) {
	if r.err != nil || r.dl == nil {
		return nil, r.err
	}
	d := r.dl.Close()
	r.dl = nil
	return d, nil
}

// launchTrusted opens the trusted file abs on the host with the application the desktop
// would open it with were Isolator's handler not installed, and records the outcome in
// rep. It never goes through xdg-open or anything else that could come back to isoctl.
func launchTrusted(abs string, rep *openReport) {
	if os.Getenv(launchedEnv) != "" {
		rep.Error = "trusted, but not opened: this isoctl runs under an application that isoctl launched " +
			"(" + launchedEnv + " is set), and launching again could loop; open the file from the file manager or a shell"
		rep.code = exitRelaunch
		return
	}
	r := xdg.NewResolver(xdg.FromEnv(nil))
	typ, err := r.MIMEDB().TypeOfFile(abs)
	if err != nil {
		rep.Error = fmt.Sprintf("trusted, but its type could not be told: %v", err)
		return
	}
	rep.MIMEType = typ
	app, skipped := r.Find(typ, notIsolator())
	for _, s := range skipped {
		rep.PassedOver = append(rep.PassedOver, s.ID+": "+s.Reason)
	}
	if app == nil {
		rep.Error = fmt.Sprintf("trusted, but no application other than Isolator's handler opens %s; "+
			"set one with `xdg-mime default viewer.desktop %s`", typ, typ)
		rep.code = exitNoApp
		return
	}
	rep.Application = app.Entry.ID
	env := []string{launchedEnv + "=1"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, launchedEnv+"=") {
			env = append(env, kv)
		}
	}
	if _, err := app.Launch([]string{abs}, env); err != nil {
		rep.Error = fmt.Sprintf("trusted, but %s did not start: %v", app.Entry.ID, err)
		return
	}
	rep.Launched = true
}

// notIsolator refuses the applications that would bring a file back to isoctl: Isolator's
// handler, entries that run isoctl (by name, or the very executable of this process under
// another name) and entries that run a program that opens the default application again.
func notIsolator() func(*xdg.App) string {
	self, _ := os.Executable()
	var selfInfo os.FileInfo
	if self != "" {
		selfInfo, _ = os.Stat(self)
	}
	return func(a *xdg.App) string {
		if a.Entry.ID == isolatorDesktopID {
			return "Isolator's own handler"
		}
		if n, ok := a.Entry.Runs(append([]string{"isoctl"}, xdg.Openers...)...); ok {
			if n == "isoctl" {
				return "it runs isoctl"
			}
			return "it runs " + n + ", which would ask for the default application again"
		}
		if selfInfo != nil && a.Program != "" {
			if fi, err := os.Stat(a.Program); err == nil && os.SameFile(fi, selfInfo) {
				return "it runs isoctl (" + a.Program + ")"
			}
		}
		return ""
	}
}
