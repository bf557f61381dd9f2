package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/isolator-dev/isolator/pkg/microvm"
)

// rss is the resident memory of this process, split into guest memory and the rest.
type rss struct {
	total int64 // sum of Rss over all mappings, bytes
	guest int64 // Rss of the MAP_NORESERVE mappings: the guest memory slots, bytes
}

// vmm is the resident memory that is not guest memory.
func (r rss) vmm() int64 { return r.total - r.guest }

// readRSS reads /proc/self/smaps.
func readRSS() (rss, error) {
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return rss{}, err
	}
	return parseSmaps(data)
}

// parseSmaps sums the Rss of every mapping in a /proc/PID/smaps file, and separately of
// the mappings whose VmFlags include "nr" (MAP_NORESERVE) but not "dp". pkg/kvmhv maps each
// VM's guest memory slot with MAP_NORESERVE; the only other such mappings of a Go program
// are the runtime's vgetrandom states, which are MAP_DROPPABLE ("dp"). The bench checks
// that no guest-like mapping exists before its VMs start.
func parseSmaps(smaps []byte) (rss, error) {
	var (
		r       rss
		cur     int64 // Rss of the current mapping
		haveRss bool
		seen    int // mappings with a VmFlags line
	)
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.Contains(key, " ") {
			continue // a mapping's header line
		}
		switch key {
		case "Rss":
			f := strings.Fields(val)
			if len(f) != 2 || f[1] != "kB" {
				return rss{}, fmt.Errorf("smaps: bad Rss line %q", sc.Text())
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return rss{}, fmt.Errorf("smaps: bad Rss line %q", sc.Text())
			}
			cur, haveRss = kb<<10, true
		case "VmFlags":
			if !haveRss {
				return rss{}, fmt.Errorf("smaps: VmFlags without Rss")
			}
			r.total += cur
			if flags := strings.Fields(val); slices.Contains(flags, "nr") && !slices.Contains(flags, "dp") {
				r.guest += cur
			}
			cur, haveRss = 0, false
			seen++
		}
	}
	if err := sc.Err(); err != nil {
		return rss{}, err
	}
	if seen == 0 {
		return rss{}, fmt.Errorf("smaps: no mappings")
	}
	return r, nil
}

// memoryOverhead runs b.vms micro VMs of `busybox sleep 2` at once and reports how much
// resident memory the VMM needs per VM beyond the guests' own memory.
func (b *bench) memoryOverhead(ctx context.Context) {
	b.progress("memory: %d concurrent VMs", b.vms)
	b.printf("### VMM memory per micro VM\n\n")
	b.printf("%d concurrent in-process micro VMs of `busybox sleep 2`. /proc/self/smaps of the bench process is read every 20 ms; the guest memory slots are its MAP_NORESERVE mappings (VmFlags `nr`: pkg/kvmhv maps them so; the Go runtime's MAP_DROPPABLE vgetrandom pages, `dp`, are excluded). VMM overhead per VM = (peak of the non-guest RSS - non-guest RSS before) / %d; guest resident is the guest slots' RSS at that sample. PeakMemory is what the guests' page allocator handed out (the guest may not touch all of it). Kernel memory KVM keeps per VM (vCPU state, the nested hypervisor's shadow page tables) is not in RSS and not counted.\n\n", b.vms, b.vms)
	b.printf("| VMs | RSS before | RSS at peak | guest resident per VM | guest PeakMemory per VM | VMM overhead per VM |\n")
	b.printf("| ---: | ---: | ---: | ---: | ---: | ---: |\n")
	row, err := b.measureMemory(ctx)
	if err != nil {
		b.printf("| %d | cannot run: %s | | | | |\n\n", b.vms, errCell(err))
		b.fail("memory overhead: %v", err)
		return
	}
	b.printf("%s\n\n", row)
}

func (b *bench) measureMemory(ctx context.Context) (string, error) {
	args := []string{b.busybox, "sleep", "2"}
	// One VM first so that the Go heap and the runtime's threads are in place.
	if _, err := b.inProcessRunner(b.vmConfig(b.bbImage, []string{b.busybox, "true"}, nil, nil, nil))(ctx); err != nil {
		return "", err
	}
	runtime.GC()
	before, err := readRSS()
	if err != nil {
		return "", err
	}
	if before.guest != 0 {
		return "", fmt.Errorf("%d bytes resident in MAP_NORESERVE mappings with no VM running: cannot tell guest memory apart", before.guest)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex // guards guestMem and errs
		guestMem int64
		errs     []error
	)
	stop := make(chan struct{})
	peak := make(chan rss, 1)
	go func() {
		var hi rss
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			if r, err := readRSS(); err == nil && r.vmm() > hi.vmm() {
				hi = r
			}
			select {
			case <-stop:
				peak <- hi
				return
			case <-tk.C:
			}
		}
	}()
	for range b.vms {
		wg.Go(func() {
			res, err := microvm.Run(ctx, b.vmConfig(b.bbImage, args, nil, nil, nil))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case res.ExitCode != 0:
				errs = append(errs, fmt.Errorf("busybox sleep 2: exit status %d %s", res.ExitCode, res.Reason))
			default:
				guestMem += res.Stats.PeakMemory
			}
		})
	}
	wg.Wait()
	close(stop)
	hi := <-peak
	if len(errs) > 0 {
		return "", fmt.Errorf("%d of %d VMs failed, first: %w", len(errs), b.vms, errs[0])
	}
	k := int64(b.vms)
	return fmt.Sprintf("| %d | %s | %s | %s | %s | %s |", b.vms, mib(before.total), mib(hi.total), mib(hi.guest/k),
		mib(guestMem/k), mib((hi.vmm()-before.vmm())/k)), nil
}
