// Package cli implements the isoctl commands, one file per command. The isoctl binary is a
// thin main around Main so that the commands can be tested in-process.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// ExitError carries a specific process exit code out of a command (for example the exit
// status of a guest program, or 124 for a timeout) without printing anything more.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// globalOptions are the flags every command shares.
type globalOptions struct {
	socket string // path of isolatord's API socket
}

// newRootCmd builds the command tree writing to stdout and stderr.
func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:           "isoctl",
		Short:         "Run untrusted work in throwaway KVM micro VMs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.socket, "socket", defaultSocket(), "path of the isolatord API socket")
	root.AddCommand(
		// Commands are added here, one constructor per file.
		newImageCmd(),
		newOpenCmd(g), newPsCmd(g), newLogsCmd(g), newKillCmd(g), newStatusCmd(g), newReleaseCmd(g), newResultsCmd(g),
		newRunCmd(),
		newWatchCmd(g),
		newPolicyCmd(),
	)
	return root
}

// defaultSocket is $ISOLATOR_SOCKET or the system socket path.
func defaultSocket() string {
	if s := os.Getenv("ISOLATOR_SOCKET"); s != "" {
		return s
	}
	return "/run/isolator/isolator.sock"
}

// Main runs isoctl with args and returns the process exit code.
func Main(args []string) int {
	return run(args, os.Stdout, os.Stderr)
}

func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	fmt.Fprintf(stderr, "isoctl: %v\n", err)
	return 1
}
