package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/client"
)

// rssKiB returns the resident set size of pid.
func rssKiB(t testing.TB, pid int) int { return procStatusKiB(t, pid, "VmRSS") }

// peakKiB returns the peak resident set size of pid since it started or resetPeak.
func peakKiB(t testing.TB, pid int) int { return procStatusKiB(t, pid, "VmHWM") }

// resetPeak makes the peak resident set size of pid its current one (proc(5), clear_refs).
func resetPeak(t testing.TB, pid int) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatal(err)
	}
}

func procStatusKiB(t testing.TB, pid int, field string) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				t.Fatalf("%s: %v", field, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/pid/status", field)
	return 0
}

// metric returns the value of the unlabelled (or fully spelled-out labelled) sample name
// in the daemon's Prometheus text output.
func metric(t testing.TB, c *client.Client, name string) float64 {
	t.Helper()
	m, err := c.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(m))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return v
		}
	}
	t.Fatalf("metric %s not exported", name)
	return 0
}

// TestLoad sends 200 isoctl open requests from 20 concurrent clients to a daemon limited to
// 4 micro VMs and 8 queued tasks: every request is answered with its results, nothing is
// lost, the limits hold, and the daemon's memory and goroutines do not grow with the
// number of tasks. Run with -v to see the daemon's memory before and after.
func TestLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test skipped in -short mode")
	}
	e := newEnv(t)
	const (
		clients  = 20
		perEach  = 10
		total    = clients * perEach
		warmUp   = 10
		maxVMs   = 4
		maxQueue = 8
	)
	// Requests beyond the queue wait for space rather than being refused (that path is
	// TestQueueBound in package daemon): none of the 200 may be lost or refused here.
	e.start("--max-concurrent", strconv.Itoa(maxVMs), "--queue", strconv.Itoa(maxQueue), "--queue-wait", "5m",
		"--log-level", "warn")
	tarPath := e.makeTar("untrusted/load.tar", map[string]string{"x.txt": "payload\n"})
	results := filepath.Join(e.root, "Isolated")
	pid := e.d.Process.Pid
	c, err := client.Dial(e.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Warm up, then take the baseline.
	for range warmUp {
		if rep, stderr, code := e.openJSON(-1, "--results-dir", results, tarPath); code != 0 || rep.Task == nil {
			t.Fatalf("warm-up open: exit %d %+v\n%s", code, rep, stderr)
		}
	}
	rssBefore := rssKiB(t, pid)
	heapBefore := metric(t, c, "go_memstats_heap_inuse_bytes")
	goroutinesBefore := metric(t, c, "go_goroutines")

	var (
		mu       sync.Mutex
		ids      = map[string]bool{}
		failures []string
		wg       sync.WaitGroup
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, fmt.Sprintf(format, args...))
	}
	for cl := range clients {
		wg.Go(func() {
			for i := range perEach {
				out, stderr, code, err := e.runIsoctl(-1, "open", "--no-launch", "--json", "--results-dir", results, tarPath)
				var rep openReport
				if err == nil {
					err = json.Unmarshal([]byte(out), &rep)
				}
				switch {
				case err != nil:
					fail("client %d open %d: %v (exit %d, stdout %q, stderr %q)", cl, i, err, code, out, stderr)
					continue
				case code != 0 || rep.Task == nil || rep.Task.State != api.StateDone || !slices.Equal(rep.Written, []string{"x.txt"}):
					fail("client %d open %d: exit %d, report %s, stderr %q", cl, i, code, out, stderr)
					continue
				}
				if got, err := os.ReadFile(filepath.Join(results, rep.Task.ID, "x.txt")); err != nil || string(got) != "payload\n" {
					fail("task %s result: %q, %v", rep.Task.ID, got, err)
				}
				mu.Lock()
				if ids[rep.Task.ID] {
					failures = append(failures, "duplicate task "+rep.Task.ID)
				}
				ids[rep.Task.ID] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d opens failed; first: %s", len(failures), total, failures[0])
	}
	if len(ids) != total {
		t.Fatalf("%d distinct tasks, want %d", len(ids), total)
	}

	// The limits held, and the queue was really used.
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.PeakRunning > maxVMs || st.PeakQueued > maxQueue {
		t.Errorf("limits exceeded: peak %d running (limit %d), %d queued (limit %d)", st.PeakRunning, maxVMs, st.PeakQueued, maxQueue)
	}
	if st.PeakQueued == 0 {
		t.Errorf("the queue was never used: the load did not exceed %d VMs", maxVMs)
	}
	if st.ActiveVMs != 0 || st.Queued != 0 {
		t.Errorf("after the load: %d running, %d queued", st.ActiveVMs, st.Queued)
	}

	// Nothing lost: history, metrics and the audit log account for every request.
	tasks, err := c.Tasks(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	done := 0
	for _, tk := range tasks {
		if tk.State == api.StateDone {
			done++
		}
	}
	if len(tasks) != total+warmUp || done != total+warmUp {
		t.Errorf("history holds %d tasks, %d done; want %d", len(tasks), done, total+warmUp)
	}
	if n := metric(t, c, `isolator_tasks_total{outcome="done"}`); n != total+warmUp {
		t.Errorf("isolator_tasks_total{outcome=\"done\"} = %v, want %d", n, total+warmUp)
	}
	if n := metric(t, c, "isolator_open_refused_total"); n != 0 {
		t.Errorf("%v requests refused", n)
	}
	audit, err := os.ReadFile(filepath.Join(e.state, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for line := range strings.Lines(string(audit)) {
		var rec struct{ Event, Path, State, Task string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if rec.Path == tarPath {
			counts[rec.Event+"/"+rec.State]++
		}
	}
	if counts["decision/"] != total+warmUp || counts["task/done"] != total+warmUp {
		t.Errorf("audit log: %v; want %d decisions and %d done tasks", counts, total+warmUp, total+warmUp)
	}

	// Flat: per-task state is a small record; outputs and logs live on disk, and every
	// goroutine of a request ends with it. Connections of exited isoctl processes may take
	// a moment to be noticed.
	var goroutinesAfter float64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		goroutinesAfter = metric(t, c, "go_goroutines")
		if goroutinesAfter <= goroutinesBefore+2 || time.Now().After(deadline) {
			break
		}
	}
	rssAfter := rssKiB(t, pid)
	heapAfter := metric(t, c, "go_memstats_heap_inuse_bytes")
	t.Logf("daemon after %d warm-up opens: RSS %d KiB, heap in use %.1f MiB, %v goroutines",
		warmUp, rssBefore, heapBefore/(1<<20), goroutinesBefore)
	t.Logf("daemon after %d more opens:    RSS %d KiB, heap in use %.1f MiB, %v goroutines; peak %d VMs, %d queued",
		total, rssAfter, heapAfter/(1<<20), goroutinesAfter, st.PeakRunning, st.PeakQueued)
	if goroutinesAfter > goroutinesBefore+2 {
		t.Errorf("goroutines grew from %v to %v over %d tasks", goroutinesBefore, goroutinesAfter, total)
	}
	// The bounds leave room for the garbage collector's pacing (runs grow RSS by about
	// 3 MiB and the heap by under 1 MiB) and catch a leak of 60 KiB of RSS or 30 KiB of
	// heap per task, let alone one guest's memory.
	if rssAfter > rssBefore+12<<10 {
		t.Errorf("daemon RSS grew from %d KiB to %d KiB over %d tasks", rssBefore, rssAfter, total)
	}
	if heapAfter > heapBefore+6<<20 {
		t.Errorf("daemon heap grew from %.1f MiB to %.1f MiB over %d tasks", heapBefore/(1<<20), heapAfter/(1<<20), total)
	}
}

// TestMemoryBounded runs guests that try to make the daemon hold much more than their
// output: two at once that write 40000 bytes one write(2) at a time, and one that returns a
// 64 MiB file. Each chatty guest's output reaches its client whole (or cut, with the limit's
// notice), its logs file stays small and the daemon's resident memory grows by a few MiB,
// not by a record per write. The large file reaches isoctl open and isoctl results whole,
// while the daemon holds it at most once (besides the micro VM's own memory) and sends it
// from disk in chunks. Run with -v to see the figures.
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("memory test skipped in -short mode")
	}
	e := newEnv(t)
	e.start("--log-level", "warn")
	results := filepath.Join(e.root, "Isolated")
	pid := e.d.Process.Pid
	if rep, stderr, code := e.openJSON(-1, "--results-dir", results, e.file("untrusted/warm.sh", script, 0o644)); code != 0 || rep.Task == nil {
		t.Fatalf("warm-up open: exit %d %+v\n%s", code, rep, stderr)
	}
	rssBase := rssKiB(t, pid)

	const writes = 40000
	chatty := e.file("untrusted/chatty.sh", fmt.Sprintf("i=0\nwhile [ $i -lt %d ]; do echo -n x; i=$((i+1)); done\n", writes), 0o644)
	var wg sync.WaitGroup
	reps := make([]openReport, 2)
	for i := range reps {
		wg.Go(func() {
			out, stderr, code, err := e.runIsoctl(-1, "open", "--no-launch", "--json", "--results-dir", results, chatty)
			if err == nil {
				err = json.Unmarshal([]byte(out), &reps[i])
			}
			if err != nil || code != 0 || reps[i].Task == nil || reps[i].Task.State != api.StateDone {
				t.Errorf("chatty open %d: exit %d, %v, %s\n%s", i, code, err, out, stderr)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	rssChatty := rssKiB(t, pid)
	for _, rep := range reps {
		if strings.Trim(rep.Stdout, "x") != "" || len(rep.Stdout) > writes {
			t.Errorf("task %s: stdout is not %d x's or fewer: %.40q...", rep.Task.ID, writes, rep.Stdout)
		}
		if len(rep.Stdout) < writes {
			logs, _, _ := e.isoctl(-1, "logs", rep.Task.ID)
			if !strings.Contains(logs, "output limit reached") {
				t.Errorf("task %s: %d of %d bytes of output and no notice", rep.Task.ID, len(rep.Stdout), writes)
			}
		}
		fi, err := os.Stat(filepath.Join(e.state, "tasks", rep.Task.ID, "logs.jsonl"))
		if err != nil || fi.Size() > 6<<20 {
			t.Errorf("task %s: logs.jsonl: %v, %d bytes", rep.Task.ID, err, fi.Size())
		}
	}
	t.Logf("daemon RSS: %d KiB after a warm-up, %d KiB after 2 guests wrote %d bytes one at a time", rssBase, rssChatty, writes)
	// A record kept per write cost about 1 KiB of RSS each: 80 MiB here.
	if rssChatty > rssBase+24<<10 {
		t.Errorf("daemon RSS grew from %d KiB to %d KiB for 2 chatty guests", rssBase, rssChatty)
	}

	// 64 MiB in one result file: a 16 MiB string made in the guest, written 4 times.
	const part = "0123456789abcdef"
	wantSum := sha256.New()
	for range 4 {
		wantSum.Write([]byte(strings.Repeat(part, 1<<20)))
	}
	big := e.file("untrusted/big.sh", "s="+part+"\ni=0\nwhile [ $i -lt 20 ]; do s=$s$s; i=$((i+1)); done\n"+
		"for n in 1 2 3 4; do echo -n \"$s\" >> /output/big.bin; done\n", 0o644)
	resetPeak(t, pid)
	rssBefore := rssKiB(t, pid)
	rep, stderr, code := e.openJSON(-1, "--results-dir", results, big)
	peakOpen := peakKiB(t, pid)
	if code != 0 || rep.Task == nil || !slices.Equal(rep.Written, []string{"big.bin"}) {
		t.Fatalf("open of a guest returning 64 MiB: exit %d, %+v\n%s", code, rep, stderr)
	}
	checkFile := func(path string) {
		t.Helper()
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		h := sha256.New()
		if n, err := io.Copy(h, f); err != nil || n != 64<<20 || !bytes.Equal(h.Sum(nil), wantSum.Sum(nil)) {
			t.Errorf("%s: %d bytes, %v, or not the guest's content", path, n, err)
		}
	}
	checkFile(filepath.Join(results, rep.Task.ID, "big.bin"))
	again := filepath.Join(e.root, "again")
	resetPeak(t, pid)
	rssIdle := rssKiB(t, pid)
	if out, stderr, code := e.isoctl(-1, "results", "--dir", again, rep.Task.ID); code != 0 {
		t.Fatalf("isoctl results: exit %d\n%s%s", code, out, stderr)
	}
	peakFetch := peakKiB(t, pid)
	checkFile(filepath.Join(again, rep.Task.ID, "big.bin"))
	t.Logf("daemon peak RSS: %d KiB over %d KiB for an open returning 64 MiB (with the micro VM's memory), %d KiB over %d KiB to send it again",
		peakOpen, rssBefore, peakFetch, rssIdle)
	// The guest's own memory and file system and the one copy of the output the daemon
	// gets from the VM take about 270 MiB; holding the file whole several times, and in
	// base64, as one line, took 550 MiB.
	if peakOpen > rssBefore+384<<10 {
		t.Errorf("daemon peak RSS %d KiB over %d KiB for an open returning 64 MiB", peakOpen, rssBefore)
	}
	// Sending it from disk needs a chunk or two; the whole file in base64 took 250 MiB.
	if peakFetch > rssIdle+32<<10 {
		t.Errorf("daemon peak RSS %d KiB over %d KiB to send a 64 MiB result", peakFetch, rssIdle)
	}
}

// BenchmarkOpen measures, with one client and with 20 concurrent clients on a daemon
// running 4 micro VMs at once, the latency from an open request to the policy decision
// and to the task's result (an archive unpacked in a micro VM), and reports the median
// and 99th percentile of each.
func BenchmarkOpen(b *testing.B) {
	for _, clients := range []int{1, 20} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) { benchmarkOpen(b, clients) })
	}
}

func benchmarkOpen(b *testing.B, clients int) {
	e := newEnv(b)
	e.start("--max-concurrent", "4", "--queue", "64", "--queue-wait", "5m", "--log-level", "warn")
	tarPath := e.makeTar("untrusted/bench.tar", map[string]string{"x.txt": "payload\n"})
	c, err := client.Dial(e.socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var (
		mu             sync.Mutex
		decide, result []time.Duration
		wg             sync.WaitGroup
	)
	jobs := make(chan struct{})
	b.ResetTimer()
	for range clients {
		wg.Go(func() {
			for range jobs {
				start := time.Now()
				var dDec, dRes time.Duration
				err := c.Open(context.Background(), api.OpenRequest{Path: tarPath}, func(ev api.Event) error {
					switch ev.Type {
					case api.EventDecision:
						dDec = time.Since(start)
					case api.EventResult:
						dRes = time.Since(start)
					}
					return nil
				})
				if err != nil || dDec == 0 || dRes == 0 {
					b.Errorf("open: %v (decision after %v, result after %v)", err, dDec, dRes)
					continue
				}
				mu.Lock()
				decide, result = append(decide, dDec), append(result, dRes)
				mu.Unlock()
			}
		})
	}
	for range b.N {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	b.StopTimer()
	report := func(name string, ds []time.Duration) {
		if len(ds) == 0 {
			return
		}
		slices.Sort(ds)
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds()), name+"-p50-µs")
		b.ReportMetric(float64(ds[min(len(ds)-1, len(ds)*99/100)].Microseconds()), name+"-p99-µs")
	}
	report("decision", decide)
	report("result", result)
}
