package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/isolator-dev/isolator/pkg/api"
)

func newPsCmd(g *globalOptions) *cobra.Command {
	var all, asJSON bool
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List your isolation tasks (--all: everyone's, for administrators)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			tasks, err := c.Tasks(cmd.Context(), all)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(tasks)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TASK\tUID\tSTATE\tHANDLER\tEXIT\tCREATED\tDURATION\tFILE")
			for _, t := range tasks {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.UID, t.State, t.Handler,
					exitText(&t), t.Created.Local().Format("01-02 15:04:05"), duration(&t), t.File)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "list every user's tasks (administrators: root and the daemon's admin group; others see their own)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the tasks as JSON")
	return cmd
}

func exitText(t *api.Task) string {
	switch {
	case !t.State.Final(), t.State == api.StateFailed:
		return "-"
	case t.State == api.StateKilled:
		return "killed"
	case t.Signal != 0:
		return fmt.Sprintf("sig%d", t.Signal)
	}
	return fmt.Sprint(t.ExitCode)
}

func duration(t *api.Task) string {
	switch {
	case t.Started.IsZero():
		return "-"
	case t.Finished.IsZero():
		return time.Since(t.Started).Round(time.Millisecond).String() + "+"
	}
	return t.Finished.Sub(t.Started).Round(time.Millisecond).String()
}

// completeTasks offers the caller's task IDs for shell completion.
func completeTasks(g *globalOptions) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
		c, err := g.dial()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		defer c.Close()
		tasks, err := c.Tasks(cmd.Context(), false)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var ids []string
		for _, t := range tasks {
			ids = append(ids, t.ID+"\t"+string(t.State)+" "+t.File)
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}
