package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func newStatusCmd(g *globalOptions) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show isolatord's state: policy version, micro VMs, queue",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			fmt.Fprintf(out, "isolatord %s, pid %d, up %v, socket %s\n", st.Version, st.PID,
				time.Since(st.Started).Round(time.Second), g.socket)
			switch {
			case st.PolicyVersion == "fail-closed":
				fmt.Fprintf(out, "policy:     fail-closed: no valid policy is loaded, every file is denied\n")
			case st.PolicyError != "":
				fmt.Fprintf(out, "policy:     %s (the latest change was rejected; this version stays in force)\n", st.PolicyVersion)
			default:
				fmt.Fprintf(out, "policy:     %s\n", st.PolicyVersion)
			}
			for i, line := range strings.Split(st.PolicyError, "\n") {
				if line == "" {
					continue
				}
				label := "            "
				if i == 0 {
					label = "rejected:   "
				}
				fmt.Fprintf(out, "%s%s\n", label, line)
			}
			if st.Admin {
				fmt.Fprintf(out, "micro VMs:  %d running (limit %d, peak %d)\n", st.ActiveVMs, st.MaxConcurrent, st.PeakRunning)
				fmt.Fprintf(out, "queue:      %d waiting (limit %d, peak %d)\n", st.Queued, st.QueueLimit, st.PeakQueued)
				fmt.Fprintf(out, "tasks:      %d in all; uid %d is an administrator\n", st.TasksTotal, st.You)
			} else {
				fmt.Fprintf(out, "micro VMs:  %d of yours running (limit %d for everyone)\n", st.ActiveVMs, st.MaxConcurrent)
				fmt.Fprintf(out, "queue:      %d of yours waiting (limit %d for everyone)\n", st.Queued, st.QueueLimit)
				fmt.Fprintf(out, "tasks:      %d of uid %d\n", st.TasksTotal, st.You)
			}
			fmt.Fprintf(out, "images:     %s\n", strings.Join(st.Images, ", "))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}
