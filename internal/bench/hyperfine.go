package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// timed measures a host command line: with hyperfine when it is installed, otherwise with
// this program's own loop. When stats is set the command is isoctl run --stats and the
// series carries the micro VM's counts.
func (b *bench) timed(argv []string, stats bool) measure {
	if b.hyperfine == "" {
		return repeated(execRunner(argv, stats))
	}
	return func(ctx context.Context, n int) (series, error) {
		ser, err := b.hyperfineSeries(ctx, argv, n)
		if err != nil || !stats {
			return ser, err
		}
		// hyperfine discards stderr: one more run reads the counts.
		x, err := execRunner(argv, true)(ctx)
		if err != nil {
			return series{}, err
		}
		ser.counted, ser.exits, ser.syscalls, ser.vmWall = true, x.exits, x.syscalls, x.vmWall
		ser.minExits, ser.maxExit = x.exits, x.exits
		return ser, nil
	}
}

// hyperfineSeries runs argv n times under hyperfine, without a shell, after one warm-up run.
func (b *bench) hyperfineSeries(ctx context.Context, argv []string, n int) (series, error) {
	out := filepath.Join(b.dir, "hyperfine.json")
	defer os.Remove(out)
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = shellQuote(a)
	}
	cmdline := strings.Join(quoted, " ")
	cmd := exec.CommandContext(ctx, b.hyperfine, "--shell=none", "--style=none", "--warmup=1",
		fmt.Sprintf("--runs=%d", n), "--export-json="+out, cmdline)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return series{}, fmt.Errorf("hyperfine %s: %w: %s", cmdline, err, lastLine(string(msg)))
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return series{}, err
	}
	return parseHyperfine(data)
}

// parseHyperfine summarizes the run times in a hyperfine --export-json file.
func parseHyperfine(data []byte) (series, error) {
	var report struct {
		Results []struct {
			Times []float64 `json:"times"` // seconds
		} `json:"results"`
	}
	if err := json.Unmarshal(data, &report); err != nil {
		return series{}, fmt.Errorf("hyperfine report: %w", err)
	}
	if len(report.Results) != 1 || len(report.Results[0].Times) == 0 {
		return series{}, fmt.Errorf("hyperfine report: want one result with times, got %d results", len(report.Results))
	}
	times := report.Results[0].Times
	walls := make([]time.Duration, len(times))
	for i, t := range times {
		walls[i] = time.Duration(t * float64(time.Second))
	}
	slices.Sort(walls)
	return series{n: len(walls), median: quantile(walls, 0.5), p90: quantile(walls, 0.9)}, nil
}

// shellQuote quotes s for the POSIX shell word splitting hyperfine applies to its commands.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
