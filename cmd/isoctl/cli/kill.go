package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
)

func newKillCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:               "kill TASK...",
		Short:             "Stop running or queued tasks",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeTasks(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			var errs []error
			for _, id := range args {
				t, err := c.Kill(cmd.Context(), id)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", id, err))
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s", t.ID, t.State)
				if t.Reason != "" {
					fmt.Fprintf(cmd.OutOrStdout(), " (%s)", t.Reason)
				}
				fmt.Fprintln(cmd.OutOrStdout())
			}
			return errors.Join(errs...)
		},
	}
}
