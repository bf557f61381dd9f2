package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// syscallCost measures what one getpid costs: the getpid program is run with N=0 and with
// N=b.calls, each b.reps times, and the difference of the medians is divided by b.calls.
func (b *bench) syscallCost(ctx context.Context) {
	b.printf("### Cost of one system call\n\n")
	b.printf("A static Go program (CGO_ENABLED=0) calls syscall.Getpid N times; per getpid = (median(N=%d) - median(N=0)) / %d over %d runs each, after one warm-up run at N=0. For the micro VM, the extra VM exits and system calls served at N=%d are counted, and the time is also divided by the extra system calls served (the Go runtime adds a few of its own, mostly sysmon's nanosleep, while the loop runs).\n\n",
		b.calls, b.calls, b.reps, b.calls)
	b.printf("| sandbox | N=0 | N=%d | µs per getpid | extra VM exits | extra syscalls served | µs per syscall served |\n", b.calls)
	b.printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	type target struct {
		name string
		ours bool
		run  func(n int) runner
	}
	targets := []target{
		{"host (exec)", false, func(n int) runner { return execRunner([]string{b.getpid, strconv.Itoa(n)}, false) }},
		{"gVisor `runsc do` (ptrace)", false, func(n int) runner {
			return execRunner(append(slices.Clone(runscDo), b.getpid, strconv.Itoa(n)), false)
		}},
		{"isolator microvm.Run (in process)", true, func(n int) runner {
			return b.inProcessRunner(b.vmConfig(b.getpidImage, []string{guestGetpid, strconv.Itoa(n)}, nil, nil, nil))
		}},
	}
	for _, t := range targets {
		b.progress("syscall: %s", t.name)
		zero, err := repeat(ctx, b.reps, true, t.run(0))
		var many series
		if err == nil {
			// The N=0 runs warmed the sandbox up.
			many, err = repeat(ctx, b.reps, false, t.run(b.calls))
		}
		if err != nil {
			b.printf("| %s | cannot run: %s | | | | | |\n", t.name, errCell(err))
			if t.ours {
				b.fail("syscall cost in %s: %v", t.name, err)
			}
			continue
		}
		delta := float64(many.median-zero.median) / float64(time.Microsecond)
		exits, calls, perServed := "", "", ""
		if many.counted {
			dc := int64(many.syscalls) - int64(zero.syscalls)
			exits = fmt.Sprint(int64(many.exits) - int64(zero.exits))
			calls = fmt.Sprint(dc)
			if dc > 0 {
				perServed = fmt.Sprintf("%.3f", delta/float64(dc))
			}
		}
		b.printf("| %s | %s | %s | %.3f | %s | %s | %s |\n", t.name, ms(zero.median), ms(many.median), delta/float64(b.calls), exits, calls, perServed)
	}
	b.printf("\n")
}
