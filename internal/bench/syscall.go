package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// costTarget is a sandbox in a cost table: run returns the runner of the program with its
// count argument n.
type costTarget struct {
	name string
	ours bool
	run  func(n int) runner
}

// syscallCost measures what one getpid costs: the getpid program is run with N=0 and with
// N=b.calls, each b.reps times, and the difference of the medians is divided by b.calls.
func (b *bench) syscallCost(ctx context.Context) {
	b.printf("### Cost of one system call\n\n")
	b.printf("A static Go program (CGO_ENABLED=0) calls syscall.Getpid N times; per getpid = (median(N=%d) - median(N=0)) / %d over %d runs each, after one warm-up run at N=0. For the micro VM, the extra VM exits and system calls served at N=%d are counted, and the time is also divided by the extra system calls served (the Go runtime adds a few of its own, mostly sysmon's nanosleep, while the loop runs).\n\n",
		b.calls, b.calls, b.reps, b.calls)
	args := func(n int) []string { return []string{strconv.Itoa(n)} }
	b.costTable(ctx, "getpid", []costTarget{
		b.hostCost(args), b.runscCost(args),
		{"isolator microvm.Run (in process)", true, b.vmCost(args, false)},
	})
}

// timeCost measures what one read of the clock costs, as syscallCost does, with the
// program's -time mode (time.Now N times): on the host and in a micro VM with its vDSO
// the Go runtime reads the TSC; under gVisor, gVisor's own vDSO; in a micro VM without the
// vDSO (microvm.Config.NoVDSO) every read is a clock_gettime system call served by the VMM.
func (b *bench) timeCost(ctx context.Context) {
	b.printf("### Cost of one time read\n\n")
	b.printf("The same program calls time.Now N times (`getpid -time N`), measured the same way: per read = (median(N=%d) - median(N=0)) / %d. The Go runtime reads the clock through the vDSO where it has one: the host's, gVisor's, or the micro VM's (docs/MICROVM.md); \"NoVDSO\" is a micro VM without it, where every read is a system call.\n\n",
		b.calls, b.calls)
	args := func(n int) []string { return []string{"-time", strconv.Itoa(n)} }
	b.costTable(ctx, "time read", []costTarget{
		b.hostCost(args), b.runscCost(args),
		{"isolator microvm.Run (in process), vDSO", true, b.vmCost(args, false)},
		{"isolator microvm.Run (in process), NoVDSO", true, b.vmCost(args, true)},
	})
}

func (b *bench) hostCost(args func(int) []string) costTarget {
	return costTarget{"host (exec)", false, func(n int) runner { return execRunner(append([]string{b.getpid}, args(n)...), false) }}
}

func (b *bench) runscCost(args func(int) []string) costTarget {
	return costTarget{"gVisor `runsc do` (ptrace)", false, func(n int) runner {
		return execRunner(append(append(slices.Clone(runscDo), b.getpid), args(n)...), false)
	}}
}

func (b *bench) vmCost(args func(int) []string, noVDSO bool) func(n int) runner {
	return func(n int) runner {
		cfg := b.vmConfig(b.getpidImage, append([]string{guestGetpid}, args(n)...), nil, nil, nil)
		cfg.NoVDSO = noVDSO
		return b.inProcessRunner(cfg)
	}
}

// costTable prints one row per target: the medians at N=0 and N=b.calls, the cost per
// operation (what), and for micro VMs the extra VM exits and system calls served.
func (b *bench) costTable(ctx context.Context, what string, targets []costTarget) {
	b.printf("| sandbox | N=0 | N=%d | µs per %s | extra VM exits | extra syscalls served | µs per syscall served |\n", b.calls, what)
	b.printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, t := range targets {
		b.progress("%s: %s", what, t.name)
		zero, err := repeat(ctx, b.reps, true, t.run(0))
		var many series
		if err == nil {
			// The N=0 runs warmed the sandbox up.
			many, err = repeat(ctx, b.reps, false, t.run(b.calls))
		}
		if err != nil {
			b.printf("| %s | cannot run: %s | | | | | |\n", t.name, errCell(err))
			if t.ours {
				b.fail("%s cost in %s: %v", what, t.name, err)
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
