// Command isoctl is the command-line client of Isolator: it runs programs in micro VMs,
// builds guest images, checks policies and talks to isolatord.
package main

import (
	"os"

	"github.com/isolator-dev/isolator/cmd/isoctl/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
