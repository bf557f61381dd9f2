package cli

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/isolator-dev/isolator/pkg/api"
)

// killReport is what isoctl kill --json prints for each task.
type killReport struct {
	ID    string    `json:"id"`
	Task  *api.Task `json:"task,omitempty"` // in its final state
	Error string    `json:"error,omitempty"`
}

func newKillCmd(g *globalOptions) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "kill TASK...",
		Short: "Stop running or queued tasks",
		Long: `Kill stops each queued or running TASK and waits until it has ended. A task that has
already finished is not changed: isoctl says so ("task ID already finished (done); nothing
was killed") and exits 1, as for any other task it could not kill.`,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeTasks(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			c, err := g.dial()
			if err != nil {
				if !asJSON {
					return err
				}
				for _, id := range args {
					enc.Encode(&killReport{ID: id, Error: err.Error()})
				}
				return &ExitError{Code: 1}
			}
			defer c.Close()
			var errs []error
			for _, id := range args {
				t, err := c.Kill(cmd.Context(), id)
				switch {
				case asJSON && err != nil:
					enc.Encode(&killReport{ID: id, Error: err.Error()})
				case asJSON:
					enc.Encode(&killReport{ID: id, Task: t})
				case err != nil:
				default:
					fmt.Fprintf(out, "%s: %s", t.ID, t.State)
					if t.Reason != "" {
						fmt.Fprintf(out, " (%s)", t.Reason)
					}
					fmt.Fprintln(out)
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", id, err))
				}
			}
			if len(errs) > 0 && asJSON {
				return &ExitError{Code: 1}
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per task: id, and the task or the error")
	return cmd
}
