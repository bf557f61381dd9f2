package cli

import (
	"github.com/spf13/cobra"

	"github.com/isolator-dev/isolator/pkg/api"
)

func newLogsCmd(g *globalOptions) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:               "logs TASK",
		Short:             "Print what a task's handler wrote to stdout and stderr",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeTasks(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			return c.Logs(cmd.Context(), args[0], follow, func(ev api.Event) error {
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
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow a running task until it ends")
	return cmd
}
