package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/isolator-dev/isolator/pkg/api"
)

func newWatchCmd(g *globalOptions) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Stream isolatord's events for you: intercepted downloads, denied opens, tasks",
		Long: `Watch prints every event isolatord sends to the caller as it happens: downloads
that were decided, opens of untrusted files that were refused and the micro VM tasks they
started, until interrupted. Root sees the events of every user. When a task that returned
files ends, save them with isoctl results TASK.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			err = c.Events(ctx, func(ev api.Event) error {
				if asJSON {
					return enc.Encode(ev)
				}
				return printWatchEvent(out, ev)
			})
			if ctx.Err() != nil && (errors.Is(err, context.Canceled) || err == nil) {
				return nil // interrupted: the normal way to end
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each event as one JSON line")
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
