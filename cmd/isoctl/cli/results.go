package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/isolator-dev/isolator/pkg/broker"
)

// resultsReport is what isoctl results --json prints.
type resultsReport struct {
	Task         string   `json:"task"`
	ResultsDir   string   `json:"results_dir,omitempty"`
	Written      []string `json:"written"`
	Refused      []string `json:"refused,omitempty"`
	XattrWarning string   `json:"xattr_warning,omitempty"`
}

func newResultsCmd(g *globalOptions) *cobra.Command {
	var dir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "results TASK",
		Short: "Save the files a finished task returned into DIR/<task>/ (default ~/Isolated)",
		Long: `Results fetches the files a finished task returned, as kept by isolatord for the task's
owner, and writes them into DIR/TASK/ (default ~/Isolated/TASK/) with your own credentials,
never overwriting anything and never following symlinks. It is how you get the results of
files isolatord intercepted on its own (see isoctl watch); isoctl open saves its results
itself.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				home, err := os.UserHomeDir()
				if err != nil {
					return fmt.Errorf("no home directory for results; use --dir: %w", err)
				}
				dir = filepath.Join(home, "Isolated")
			}
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			res, err := c.Results(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			rep := resultsReport{Task: res.Task, Written: []string{}}
			for _, r := range res.Rejected {
				rep.Refused = append(rep.Refused, r.Name+": "+r.Reason)
			}
			if len(res.Files) > 0 {
				d, err := broker.Deliver(broker.DeliverConfig{
					Dir: dir, TaskID: res.Task, SourceSHA256: res.SHA256, Handler: res.Handler,
				}, res.Files)
				if err != nil {
					return fmt.Errorf("results not saved: %w", err)
				}
				rep.ResultsDir, rep.XattrWarning = d.Dir, d.XattrWarning
				for _, w := range d.Written {
					rep.Written = append(rep.Written, w.Name)
				}
				for _, r := range d.Refused {
					rep.Refused = append(rep.Refused, r.Name+": "+r.Reason)
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(rep)
			}
			if rep.ResultsDir == "" {
				fmt.Fprintf(out, "task %s returned no files\n", rep.Task)
			} else {
				fmt.Fprintf(out, "%d result file(s) in %s\n", len(rep.Written), rep.ResultsDir)
				for _, w := range rep.Written {
					fmt.Fprintf(out, "  %s\n", w)
				}
			}
			for _, r := range rep.Refused {
				fmt.Fprintf(out, "  not returned: %s\n", r)
			}
			if rep.XattrWarning != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", rep.XattrWarning)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "where results go, one directory per task (default ~/Isolated)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
