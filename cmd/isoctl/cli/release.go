package cli

import (
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/isolator-dev/isolator/pkg/api"
)

func newReleaseCmd(g *globalOptions) *cobra.Command {
	var reason string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "release FILE",
		Short: "Mark a reviewed file trusted (its owner or an administrator; audited)",
		Long: `Release records, after review, that FILE is trusted: isolatord writes the verdict and
the file's SHA-256 as user.isolator.* extended attributes on the file and adds a line to the
audit log. Only the file's owner or an administrator (root, the admin group) can release a file.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			abs, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			c, err := g.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			res, err := c.Release(cmd.Context(), api.ReleaseRequest{Path: abs, Reason: reason})
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: released by uid %d (sha256 %s)\n", res.Path, res.By, res.SHA256)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the file is trusted, for the audit log")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
