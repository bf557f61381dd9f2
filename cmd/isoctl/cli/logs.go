package cli

import (
	"encoding/json"
	"errors"

	"github.com/spf13/cobra"

	"github.com/isolator-dev/isolator/pkg/api"
)

func newLogsCmd(g *globalOptions) *cobra.Command {
	var follow, asJSON bool
	cmd := &cobra.Command{
		Use:   "logs TASK",
		Short: "Print what a task's handler wrote to stdout and stderr",
		Long: `Logs prints what TASK's handler wrote: its stdout to stdout, its stderr to stderr, and
isolatord's notices (such as "output limit reached") to stderr. With --json it prints the
events instead, one JSON object per line as the API sends them ("type" stdout, stderr or
notice; "data" is base64), and an error as a last line {"type": "error", "error": {...}}.`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeTasks(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			enc := json.NewEncoder(cmd.OutOrStdout())
			fail := func(err error) error {
				if !asJSON {
					return err
				}
				var ae *api.Error
				if !errors.As(err, &ae) {
					ae = &api.Error{Code: api.CodeUnavailable, Message: err.Error()}
				}
				enc.Encode(api.Event{Type: api.EventError, Error: ae})
				return &ExitError{Code: 1}
			}
			c, err := g.dial()
			if err != nil {
				return fail(err)
			}
			defer c.Close()
			err = c.Logs(cmd.Context(), args[0], follow, func(ev api.Event) error {
				if asJSON {
					return enc.Encode(ev)
				}
				switch ev.Type {
				case api.EventStdout:
					cmd.OutOrStdout().Write(ev.Data)
				case api.EventStderr:
					cmd.ErrOrStderr().Write(ev.Data)
				case api.EventNotice:
					cmd.PrintErrf("isolatord: %s\n", ev.Message)
				}
				return nil
			})
			if err != nil {
				return fail(err)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow a running task until it ends")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the events as JSON lines")
	return cmd
}
