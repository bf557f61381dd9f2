package main

import (
	"context"
	"runtime"
	"sync"
	"time"

	"github.com/isolator-dev/isolator/pkg/microvm"
)

// rate creates and destroys `busybox true` micro VMs with b.workers concurrent workers for
// b.rateFor and reports how many completed per second.
func (b *bench) rate(ctx context.Context) {
	b.progress("rate: %d workers for %v", b.workers, b.rateFor)
	b.printf("### Micro VMs created and destroyed per second\n\n")
	b.printf("In-process micro VMs of `busybox true` (create, run to exit, destroy), %d concurrent workers for %v on %d CPUs (GOMAXPROCS %d).\n\n",
		b.workers, b.rateFor, runtime.NumCPU(), runtime.GOMAXPROCS(0))
	b.printf("| VMs | workers | VMs completed | elapsed | VMs per second | median VM latency | VM exits per VM |\n")
	b.printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	cold := b.vmConfig(b.bbImage, []string{b.busybox, "true"}, nil, nil, nil)
	pooled := cold
	pooled.Pool = b.pool
	b.rateOf(ctx, "made on demand", cold)
	b.rateOf(ctx, "from a Pool", pooled)
	b.printf("\n")
}

// rateOf runs the VMs-per-second measurement with cfg and prints its row.
func (b *bench) rateOf(ctx context.Context, label string, cfg microvm.Config) {
	r := b.inProcessRunner(cfg)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex // guards samples and errs
		samples []sample
		errs    []error
	)
	deadline := time.Now().Add(b.rateFor)
	start := time.Now()
	for range b.workers {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				x, err := r(ctx)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				samples = append(samples, x)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(errs) > 0 {
		b.printf("| %s | %d | cannot run: %s | | | | |\n", label, b.workers, errCell(errs[0]))
		b.fail("VMs per second (%s): %v", label, errs[0])
		return
	}
	ser := summarize(samples)
	b.printf("| %s | %d | %d | %.2f s | %.1f | %s | %d |\n", label, b.workers, len(samples), elapsed.Seconds(),
		float64(len(samples))/elapsed.Seconds(), ms(ser.median), ser.exits)
}
