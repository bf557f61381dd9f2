// Command getpid makes a given number of getpid system calls and exits. The micro VM
// benchmark builds it statically (CGO_ENABLED=0) and runs it on the host, under gVisor and in
// a micro VM to measure what one system call costs in each.
//
// Usage: getpid N
package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: getpid N")
		os.Exit(2)
	}
	n, err := strconv.Atoi(os.Args[1])
	if err != nil || n < 0 {
		fmt.Fprintf(os.Stderr, "getpid: bad count %q\n", os.Args[1])
		os.Exit(2)
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
