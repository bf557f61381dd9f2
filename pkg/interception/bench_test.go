package interception

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Environment of the opener child process the open benchmarks start: the test binary
// itself, re-executed, so that its opens are not excluded as the daemon's own.
const (
	openerPathEnv  = "ISOLATOR_TEST_OPENER_PATH"
	openerCountEnv = "ISOLATOR_TEST_OPENER_COUNT"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(watchLimitEnv); dir != "" {
		os.Exit(runWatchLimit(dir))
	}
	if p := os.Getenv(openerPathEnv); p != "" {
		n, _ := strconv.Atoi(os.Getenv(openerCountEnv))
		os.Exit(runOpener(p, max(n, 1)))
	}
	os.Exit(m.Run())
}

// runOpener opens and closes path n times and prints the total and median time per open in
// nanoseconds.
func runOpener(path string, n int) int {
	lat := make([]time.Duration, n)
	start := time.Now()
	for i := range lat {
		t0 := time.Now()
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, "open:", err)
			return 1
		}
		unix.Close(fd)
		lat[i] = time.Since(t0)
	}
	total := time.Since(start)
	slices.Sort(lat)
	fmt.Println(total.Nanoseconds(), lat[n/2].Nanoseconds())
	return 0
}

// BenchmarkOpenTrusted measures opens of a trusted file in a directory with and without
// the Gate answering, from a separate process. It reports opens per second and the median
// time of one open; the difference of the medians is the latency the Gate adds.
func BenchmarkOpenTrusted(b *testing.B) {
	for _, bm := range []struct {
		name          string
		gated         bool
		noIgnoreMarks bool
	}{
		{"ungated", false, false},
		{"gated-cache", true, true},
		{"gated-ignore-mark", true, false},
	} {
		gated := bm.gated
		b.Run(bm.name, func(b *testing.B) {
			dir := b.TempDir()
			path := filepath.Join(dir, "trusted.txt")
			if err := os.WriteFile(path, []byte("trusted content\n"), 0o644); err != nil {
				b.Fatal(err)
			}
			var g *Gate
			if gated {
				requireFanotify(b)
				g, _ = startGate(b, GateConfig{Dirs: []string{dir}, Decider: &nameDecider{}, Sink: &recordingSink{},
					NoIgnoreMarks: bm.noIgnoreMarks})
			}
			exe, err := os.Executable()
			if err != nil {
				b.Fatal(err)
			}
			cmd := exec.CommandContext(context.Background(), exe)
			cmd.Env = append(os.Environ(), openerPathEnv+"="+path, openerCountEnv+"="+strconv.Itoa(b.N))
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				b.Fatalf("opener: %v", err)
			}
			var total, median float64
			if _, err := fmt.Sscan(string(out), &total, &median); err != nil {
				b.Fatalf("opener output %q: %v", out, err)
			}
			b.ReportMetric(total/float64(b.N), "ns/op")
			b.ReportMetric(median, "median-ns/open")
			b.ReportMetric(float64(b.N)/(total/1e9), "opens/s")
			if g != nil {
				// Opens that reached user space: all of them with the cache alone, one
				// with the ignore mark.
				b.ReportMetric(float64(g.Stats().Events), "gate-events")
			}
		})
	}
}
