// Command getpid makes a given number of getpid system calls and exits; with -time it
// reads the clock (time.Now) that many times instead, which the Go runtime does through the
// vDSO where there is one. The micro VM benchmark builds it statically (CGO_ENABLED=0) and
// runs it on the host, under gVisor and in a micro VM to measure what one system call, and
// one time read, costs in each.
//
// Usage: getpid [-time] N
package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

func main() {
	args := os.Args[1:]
	clock := len(args) == 2 && args[0] == "-time"
	if clock {
		args = args[1:]
	}
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: getpid [-time] N")
		os.Exit(2)
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 0 {
		fmt.Fprintf(os.Stderr, "getpid: bad count %q\n", args[0])
		os.Exit(2)
	}
	if clock {
		var last time.Time
		for range n {
			last = time.Now()
		}
		if n > 0 && last.IsZero() {
			os.Exit(1)
		}
		return
	}
	pid := 0
	for range n {
		pid = syscall.Getpid()
	}
	// Exit with a status that depends on the calls so that none of them can be elided.
	if n > 0 && pid <= 0 {
		os.Exit(1)
	}
}
