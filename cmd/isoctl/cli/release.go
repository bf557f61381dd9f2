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
		Long: `Release records, after review, that FILE is trusted: isolatord hashes FILE (opened with
your identity) and keeps the release in its own state, for this file (device and inode),
its owner and this content. From then on the policy trusts FILE, for isoctl open and the
gate, as long as its content is unchanged and no deny rule of the policy matches it (a
known-bad hash stays denied); a changed file is decided as before. The release is audited.
Only the file's owner or an administrator (root, the admin group) can release a file.
FILE also gets user.isolator.* extended attributes as a visible tag; they are not what makes
it trusted (anyone owning a file can set them), and when they cannot be written the release
holds all the same, with a warning.`,
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
			if res.Warning != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", res.Warning)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the file is trusted, for the audit log")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
