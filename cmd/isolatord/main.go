// Command isolatord is Isolator's daemon: it decides with the trust policy what to do with
// the files users open and runs the untrusted ones in throwaway micro VMs. See
// docs/DAEMON.md and package daemon.
package main

import (
	"os"

	"github.com/isolator-dev/isolator/pkg/daemon"
	"github.com/isolator-dev/isolator/pkg/vmrunner"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:], os.Stderr, func(cfg daemon.RunnerConfig) (daemon.Runner, error) {
		return vmrunner.New(vmrunner.Config{Image: cfg.Images.Get, PoolSize: cfg.PoolSize})
	}))
}
