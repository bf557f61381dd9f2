package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/isolator-dev/isolator/pkg/microvm"
)

// sample is one timed spawn-to-exit run.
type sample struct {
	wall     time.Duration
	counted  bool          // exits, syscalls and vmWall are known (micro VM runs)
	exits    uint64        // VM exits of all kinds
	syscalls uint64        // system calls served by the VMM
	vmWall   time.Duration // the micro VM's own wall time, creation to teardown
	pooled   bool          // the micro VM came ready-made from a microvm.Pool
}

// runner performs one run and times it.
type runner func(ctx context.Context) (sample, error)

// series summarizes the samples of repeated runs.
type series struct {
	n                 int
	median, p90       time.Duration
	counted           bool
	exits, syscalls   uint64        // medians
	vmWall            time.Duration // median
	minExits, maxExit uint64
	pooled            int // runs whose micro VM came ready-made from a pool
}

// quantile returns the q-quantile (0 < q <= 1) of sorted by the nearest-rank method.
func quantile[T any](sorted []T, q float64) T {
	rank := int(q*float64(len(sorted))+0.999999) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

func summarize(samples []sample) series {
	s := series{n: len(samples)}
	if len(samples) == 0 {
		return s
	}
	walls := make([]time.Duration, len(samples))
	exits := make([]uint64, len(samples))
	calls := make([]uint64, len(samples))
	vmWalls := make([]time.Duration, len(samples))
	for i, x := range samples {
		walls[i], exits[i], calls[i], vmWalls[i] = x.wall, x.exits, x.syscalls, x.vmWall
		s.counted = x.counted
		if x.pooled {
			s.pooled++
		}
	}
	slices.Sort(walls)
	slices.Sort(exits)
	slices.Sort(calls)
	slices.Sort(vmWalls)
	s.median, s.p90 = quantile(walls, 0.5), quantile(walls, 0.9)
	s.vmWall = quantile(vmWalls, 0.5)
	s.exits, s.syscalls = quantile(exits, 0.5), quantile(calls, 0.5)
	s.minExits, s.maxExit = exits[0], exits[len(exits)-1]
	return s
}

// repeat runs r n times, after one untimed warm-up run if warmUp is set, and summarizes
// the timed runs.
func repeat(ctx context.Context, n int, warmUp bool, r runner) (series, error) {
	if warmUp {
		if _, err := r(ctx); err != nil {
			return series{}, err
		}
	}
	samples := make([]sample, 0, n)
	for range n {
		x, err := r(ctx)
		if err != nil {
			return series{}, err
		}
		samples = append(samples, x)
	}
	return summarize(samples), nil
}

// execRunner runs argv as a host process with stdout and stderr sent to /dev/null.
// When stats is set, the process is isoctl run --stats: its last line of stderr is the
// micro VM statistics as JSON and becomes the sample's counts.
func execRunner(argv []string, stats bool) runner {
	return func(ctx context.Context) (sample, error) {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return sample{}, err
		}
		defer devnull.Close()
		cmd.Stdout = devnull
		start := time.Now()
		err = cmd.Run()
		wall := time.Since(start)
		if err != nil {
			return sample{}, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, lastLine(stderr.String()))
		}
		x := sample{wall: wall}
		if stats {
			st, err := parseStats(stderr.Bytes())
			if err != nil {
				return sample{}, fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
			}
			x.counted, x.exits, x.syscalls, x.vmWall = true, totalExits(st), st.SyscallCount, st.Wall
		}
		return x, nil
	}
}

// checkOutput runs argv once and checks that it succeeds and prints want (if not empty).
// The error says exactly what went wrong, for the table.
func checkOutput(ctx context.Context, argv []string, want string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("`%s` failed: %w: %s", strings.Join(argv, " "), err, lastLine(stderr.String()))
	}
	if want != "" && !strings.Contains(stdout.String(), want) {
		return fmt.Errorf("`%s` printed %q, want %q", strings.Join(argv, " "), lastLine(stdout.String()), want)
	}
	return nil
}

// parseStats decodes the JSON object isoctl run --stats prints as the last line of stderr.
func parseStats(stderr []byte) (microvm.Stats, error) {
	var st microvm.Stats
	line := lastLine(string(stderr))
	if !strings.HasPrefix(line, "{") {
		return st, fmt.Errorf("no statistics on stderr: %q", line)
	}
	if err := json.Unmarshal([]byte(line), &st); err != nil {
		return st, fmt.Errorf("bad statistics %q: %w", line, err)
	}
	return st, nil
}

func totalExits(st microvm.Stats) uint64 {
	var n uint64
	for _, v := range st.Exits {
		n += v
	}
	return n
}

// lastLine returns the last non-empty line of s, trimmed.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// errCell renders an error for a table cell: one line, no pipes.
func errCell(err error) string {
	msg := err.Error()
	var ee *exec.ExitError
	if errors.As(err, &ee) && msg == "" {
		msg = ee.String()
	}
	msg = strings.ReplaceAll(msg, "\n", " ")
	msg = strings.ReplaceAll(msg, "|", `\|`)
	return msg
}

// ms formats a duration in milliseconds.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

// mib formats a byte count in MiB.
func mib(b int64) string {
	return fmt.Sprintf("%.2f MiB", float64(b)/(1<<20))
}

// measure runs something n times (after a warm-up) and summarizes the runs.
type measure func(ctx context.Context, n int) (series, error)

// repeated measures by calling r in a loop.
func repeated(r runner) measure {
	return func(ctx context.Context, n int) (series, error) { return repeat(ctx, n, true, r) }
}

// straceCount runs argv once under `strace -f -c` and returns the number of system calls it
// made, execve included. dir holds strace's summary file.
func straceCount(ctx context.Context, dir string, argv []string) (uint64, error) {
	out := filepath.Join(dir, "strace.txt")
	defer os.Remove(out)
	args := append([]string{"-f", "-c", "-U", "calls", "-o", out, "--"}, argv...)
	if msg, err := exec.CommandContext(ctx, "strace", args...).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("strace %s: %w: %s", strings.Join(argv, " "), err, lastLine(string(msg)))
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return 0, err
	}
	return parseStraceTotal(data)
}

// parseStraceTotal reads the total from a `strace -c -U calls` summary.
func parseStraceTotal(summary []byte) (uint64, error) {
	for _, line := range strings.Split(string(summary), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == "total" {
			n, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("strace summary: bad total %q", line)
			}
			return n, nil
		}
	}
	return 0, errors.New("strace summary: no total line")
}
