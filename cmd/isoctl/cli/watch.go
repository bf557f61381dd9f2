package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/client"
)

func newWatchCmd(g *globalOptions) *cobra.Command {
	var asJSON, save bool
	var dir string
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Stream isolatord's events for you: intercepted downloads, denied opens, tasks",
		Long: `Watch prints every event isolatord sends to the caller as it happens: downloads
that were decided, opens of untrusted files that were refused and the micro VM tasks they
started, until interrupted. Root sees the events of every user. When a task that returned
files ends, save them with isoctl results TASK, or run watch with --save to have the results
of intercepted files written to DIR/<task>/ (default ~/Isolated) as their tasks finish.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var saver *resultSaver
			if save {
				if dir, err = resultsDir(dir); err != nil {
					return err
				}
				saver = &resultSaver{dir: dir, paths: map[string]bool{}, tasks: map[string]bool{}, saved: map[string]bool{}}
			}
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			err = c.Events(ctx, func(ev api.Event) error {
				var err error
				if asJSON {
					err = enc.Encode(ev)
				} else {
					err = printWatchEvent(out, ev)
				}
				if err == nil && saver != nil {
					saver.handle(ctx, c, ev, out, cmd.ErrOrStderr(), asJSON)
				}
				return err
			})
			if ctx.Err() != nil && (errors.Is(err, context.Canceled) || err == nil) {
				return nil // interrupted: the normal way to end
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each event as one JSON line")
	cmd.Flags().BoolVar(&save, "save", false, "save the results of intercepted files as their tasks finish")
	cmd.Flags().StringVar(&dir, "results-dir", "", "where --save writes results, one directory per task (default ~/Isolated)")
	return cmd
}

// printWatchEvent prints one human-readable line for ev.
func printWatchEvent(w io.Writer, ev api.Event) error {
	ts := "--:--:--"
	if !ev.Time.IsZero() {
		ts = ev.Time.Local().Format("15:04:05")
	}
	var line string
	switch {
	case ev.Decision != nil:
		line = fmt.Sprintf("%-8s %s: %s", ev.Type, orDash(ev.Path), ev.Decision.Action)
		if ev.Decision.Rule != "" {
			line += " (rule " + ev.Decision.Rule + ")"
		}
		switch {
		case ev.Message != "" && (ev.Type == api.EventDownload || ev.Type == api.EventDenied):
			line += ": " + ev.Message // names the task, if any
		case ev.Decision.Explanation != "":
			line += ": " + ev.Decision.Explanation
		}
		if ev.Task != nil && ev.Message == "" {
			line += ", task " + ev.Task.ID
		}
	case ev.Task != nil:
		line = fmt.Sprintf("%-8s task %s %s: %s", ev.Type, ev.Task.ID, ev.Task.State, ev.Task.File)
		if ev.Task.Reason != "" {
			line += " (" + ev.Task.Reason + ")"
		}
		if ev.Task.State.Final() && len(ev.Task.Outputs) > 0 {
			line += fmt.Sprintf("; %d result file(s): isoctl results %s", len(ev.Task.Outputs), ev.Task.ID)
		}
	case ev.Error != nil:
		line = fmt.Sprintf("%-8s %s", ev.Type, ev.Error.Error())
	default:
		line = fmt.Sprintf("%-8s %s", ev.Type, orDash(ev.Path))
		if ev.Message != "" {
			line += ": " + ev.Message
		}
	}
	_, err := fmt.Fprintf(w, "%s %s\n", ts, line)
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// resultSaver saves the results of the tasks isolatord started for intercepted files: those
// named by an open-denied event, or whose file an isolate download event named.
type resultSaver struct {
	dir   string
	paths map[string]bool // files of isolate download events whose task is not known yet
	tasks map[string]bool // intercepted tasks not saved yet
	saved map[string]bool // tasks saved, or found saved already
}

func (s *resultSaver) handle(ctx context.Context, c *client.Client, ev api.Event, out, errOut io.Writer, quiet bool) {
	isolate := ev.Decision != nil && ev.Decision.Action == api.ActionIsolate
	switch ev.Type {
	case api.EventDownload:
		if isolate {
			s.paths[ev.Path] = true
		}
		return
	case api.EventDenied:
		if ev.Task != nil && isolate {
			s.tasks[ev.Task.ID] = true
		}
		if ev.Task == nil || !ev.Task.State.Final() {
			return
		}
	case api.EventState:
	default:
		return
	}
	t := ev.Task
	if t == nil {
		return
	}
	if s.paths[t.File] {
		delete(s.paths, t.File)
		s.tasks[t.ID] = true
	}
	if !s.tasks[t.ID] || !t.State.Final() {
		return
	}
	delete(s.tasks, t.ID)
	if t.State != api.StateDone || s.saved[t.ID] {
		return
	}
	s.saved[t.ID] = true
	if _, err := os.Lstat(filepath.Join(s.dir, t.ID)); err == nil {
		return // saved before, by isoctl results or an earlier watch
	}
	rep, err := saveResults(ctx, c, s.dir, t.ID)
	switch {
	case err != nil:
		fmt.Fprintf(errOut, "isoctl: %v\n", err)
	case !quiet && rep.ResultsDir != "":
		fmt.Fprintf(out, "saved    %d result file(s) of task %s in %s\n", len(rep.Written), t.ID, rep.ResultsDir)
	}
}
