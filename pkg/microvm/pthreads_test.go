package microvm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/isolator-dev/isolator/pkg/image"
)

// buildPthreads compiles testdata/pthreads.c with gcc, statically and dynamically linked,
// into a temporary directory. It skips the test, saying why, without gcc or the static C
// library.
func buildPthreads(t *testing.T) map[string]string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("skipping: gcc is not installed (Debian: gcc, libc6-dev)")
	}
	if p, err := exec.Command(gcc, "-print-file-name=libc.a").Output(); err != nil || !filepath.IsAbs(strings.TrimSpace(string(p))) {
		t.Skip("skipping: gcc has no libc.a for -static (Debian: libc6-dev)")
	}
	dir := t.TempDir()
	bins := map[string]string{}
	for link, flags := range map[string][]string{"static": {"-static"}, "dynamic": nil} {
		bin := filepath.Join(dir, "pthreads-"+link)
		args := append([]string{"-O2", "-Wall", "-pthread", "-o", bin, "testdata/pthreads.c"}, flags...)
		if out, err := exec.Command(gcc, args...).CombinedOutput(); err != nil {
			t.Fatalf("gcc %v: %v\n%s", args, err, out)
		}
		bins[link] = bin
	}
	return bins
}

// TestPthreads runs a glibc program that starts and joins many short-lived threads, one
// whose threads work together through a mutex, condition variables, a barrier and a
// read-write lock, one that calls clone(2) directly, and one whose threads report the x87
// and SSE control state they start with (their creator's), statically and dynamically linked,
// and compares each output with the host's. pthread_join once hung when a thread ended
// before clone stored its ID (CLONE_PARENT_SETTID) in the word the join waits on: the
// store came after the thread had cleared it.
//
// A VM has at most DefaultMaxVCPUs vCPUs in all (KVM cannot destroy one), so the vCPUs of
// threads that have exited are reused: the short-lived threads were once limited to 15 in
// all, the 16th failing with EAGAIN.
func TestPthreads(t *testing.T) {
	sys := requireKVM(t)
	bins := buildPthreads(t)
	runs := 20
	if testing.Short() {
		runs = 3
	}
	const producers, consumers = 4, 3 // as in testdata/pthreads.c
	for _, link := range []string{"static", "dynamic"} {
		bin := bins[link]
		// The program is packed as a program, for its libraries, at its host path, which
		// is under /tmp, where the guest sees its scratch space instead; and at /bin.
		im := buildImage(t, "pthreads-"+link, image.BuildConfig{Programs: []string{bin},
			Files: []image.FileSpec{{HostPath: bin, GuestPath: "/bin/pthreads"}}})
		for _, c := range []struct {
			name    string
			args    []string
			runs    int
			threads int // guest threads started, the main thread included; 0: not checked
		}{
			// 8 rounds of 15 threads at once, with the main thread as many as the VM's
			// vCPUs (DefaultMaxVCPUs): the vCPUs of joined threads are reused.
			{"short", []string{"short", "8", "15"}, runs, 1 + 8*15},
			{"busy", []string{"busy"}, 3, 1 + producers + consumers},
			{"clone", []string{"clone"}, 3, 1 + 200 + 2},
			{"fpu", []string{"fpu"}, 3, 1 + 3},
		} {
			t.Run(link+"/"+c.name, func(t *testing.T) {
				want, code := hostRun(t, os.TempDir(), nil, append([]string{bin}, c.args...)...)
				if code != 0 {
					t.Fatalf("on the host: exit %d, output %q", code, want)
				}
				for i := range c.runs {
					out, stderr, res := runGuest(t, sys, im, nil, nil, append([]string{"/bin/pthreads"}, c.args...)...)
					if res.ExitCode != 0 || out != want {
						t.Fatalf("run %d: exit %d (%s), output:\n%s\nstderr: %s\nwant (as on the host):\n%s\ndenied: %v",
							i, res.ExitCode, res.Reason, out, stderr, want, res.Stats.Denied)
					}
					if res.Stats.Threads != c.threads {
						t.Fatalf("run %d: %d guest threads, want %d", i, res.Stats.Threads, c.threads)
					}
				}
			})
		}
	}
}
