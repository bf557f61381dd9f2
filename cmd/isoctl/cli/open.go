package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/broker"
	"github.com/isolator-dev/isolator/pkg/client"
)

// Exit codes of isoctl open.
const (
	exitDenied     = 2 // a file was denied
	exitTaskFailed = 3 // an isolated task failed, was killed or its handler exited non-zero
)

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
	Launched     bool           `json:"launched,omitempty"`
	Error        string         `json:"error,omitempty"`
}

func newOpenCmd(g *globalOptions) *cobra.Command {
	o := &openOptions{}
	cmd := &cobra.Command{
		Use:   "open FILE...",
		Short: "Open files as the policy says: on the host, in a micro VM, or not at all",
		Long: `Open asks isolatord about each FILE. A trusted file is opened on the host with the
default application (xdg-open), or only reported with --no-launch. An isolated file runs
its handler in a throwaway micro VM: the handler's output is shown as it runs and the files
it returns are written to RESULTS-DIR/<task-id>/ (default ~/Isolated), never overwriting
anything and never following symlinks. A denied file is refused with the policy's reason.

Exit status: 0 when every file was handled, 1 on errors, 2 when a file was denied, 3 when
an isolated task failed, was killed, or its handler exited non-zero.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOpen(cmd.Context(), g, o, args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().BoolVar(&o.noLaunch, "no-launch", false, "report trusted files instead of opening them with xdg-open")
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
		return err
	}
	defer c.Close()
	code := 0
	worse := func(n int) {
		// Errors outrank denials, which outrank failed tasks.
		rank := map[int]int{0: 0, exitTaskFailed: 1, exitDenied: 2, 1: 3}
		if rank[n] > rank[code] {
			code = n
		}
	}
	enc := json.NewEncoder(stdout)
	for _, f := range files {
		rep := openOne(ctx, c, o, f, stdout, stderr)
		switch {
		case rep.Error != "":
			worse(1)
			if !o.json {
				fmt.Fprintf(stderr, "isoctl: %s: %s\n", f, rep.Error)
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
	var results *api.Results
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
			if !o.json {
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
		}
		return nil
	})
	rep.Stdout, rep.Stderr = out.String(), errOut.String()
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
			if err := exec.Command("xdg-open", abs).Start(); err != nil {
				rep.Error = fmt.Sprintf("trusted, but xdg-open failed: %v", err)
				return rep
			}
			rep.Launched = true
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
	if results != nil && (len(results.Files) > 0 || len(results.Rejected) > 0) {
		d, err := broker.Deliver(broker.DeliverConfig{
			Dir: o.resultsDir, TaskID: t.ID, SourceSHA256: results.SHA256, Handler: results.Handler,
		}, results.Files)
		if err != nil {
			rep.Error = fmt.Sprintf("results not saved: %v", err)
			return rep
		}
		rep.ResultsDir, rep.XattrWarning = d.Dir, d.XattrWarning
		rep.Refused = append(append(rep.Refused, results.Rejected...), d.Refused...)
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
