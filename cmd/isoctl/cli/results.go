package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/client"
)

// resultsReport is what isoctl results --json prints.
type resultsReport struct {
	Task         string   `json:"task"`
	ResultsDir   string   `json:"results_dir,omitempty"`
	Written      []string `json:"written"`
	Refused      []string `json:"refused,omitempty"`
	XattrWarning string   `json:"xattr_warning,omitempty"`
	Notices      []string `json:"notices,omitempty"` // from isolatord, e.g. a file it no longer has
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
			dir, err := resultsDir(dir)
			if err != nil {
				return err
			}
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			rep, err := saveResults(cmd.Context(), c, dir, args[0])
			if err != nil {
				return err
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
			for _, n := range rep.Notices {
				fmt.Fprintf(cmd.ErrOrStderr(), "isolatord: %s\n", n)
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

// resultsDir returns dir, or ~/Isolated when dir is empty.
func resultsDir(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no home directory for results; use --dir: %w", err)
	}
	return filepath.Join(home, "Isolated"), nil
}

// saveResults fetches the results of task id and writes its files into dir/id.
func saveResults(ctx context.Context, c *client.Client, dir, id string) (*resultsReport, error) {
	recv := &resultReceiver{dir: dir}
	var res *api.Results
	var notices []string
	err := c.Results(ctx, id, func(ev api.Event) error {
		switch ev.Type {
		case api.EventResult:
			res = ev.Results
		case api.EventNotice:
			notices = append(notices, ev.Message)
		}
		recv.event(ev)
		return nil
	})
	d, derr := recv.finish()
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == api.CodeConflict {
		// "task ID is still running": say what to do about it, without the error code.
		return nil, fmt.Errorf("%s; it has no results yet: wait for it with isoctl logs -f %s, then run isoctl results %s again",
			ae.Message, id, id)
	}
	if err != nil {
		return nil, err
	}
	if res == nil {
		return nil, fmt.Errorf("isolatord sent no results for task %s", id)
	}
	if derr != nil {
		return nil, fmt.Errorf("results of task %s not saved: %w", id, derr)
	}
	rep := &resultsReport{Task: res.Task, Written: []string{}, Notices: notices}
	for _, r := range res.Rejected {
		rep.Refused = append(rep.Refused, r.Name+": "+r.Reason)
	}
	if d == nil {
		return rep, nil
	}
	rep.ResultsDir, rep.XattrWarning = d.Dir, d.XattrWarning
	for _, w := range d.Written {
		rep.Written = append(rep.Written, w.Name)
	}
	for _, r := range d.Refused {
		rep.Refused = append(rep.Refused, r.Name+": "+r.Reason)
	}
	return rep, nil
}
