package microvm

import (
	"bytes"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// waitReady waits until the pool holds n ready VMs.
func waitReady(t *testing.T, p *Pool, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(p.ready) < n {
		if time.Now().After(deadline) {
			t.Fatalf("pool holds %d ready VMs after 10s, want %d (last error: %v)", len(p.ready), n, p.Err())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPool runs programs in VMs made ahead of need and checks that each VM runs one program
// only, that the program's limits apply to it, that a Config the pool cannot serve still
// runs, and that closing the pool leaves nothing behind.
func TestPool(t *testing.T) {
	sys := requireKVM(t)
	im := busyboxImage(t)
	baseGoroutines := runtime.NumGoroutine()
	baseFDs := countFDs(t)
	p, err := NewPool(PoolConfig{KVM: sys, Size: 2, Memory: 512 << 20})
	if err != nil {
		t.Fatal(err)
	}

	seen := map[*kvmhv.VM]bool{}
	for i := range 6 {
		waitReady(t, p, 2)
		var out bytes.Buffer
		vm, err := New(Config{Pool: p, Image: im, Program: "/usr/bin/busybox", Args: []string{"busybox", "echo", "run", strings.Repeat("x", i)},
			Stdout: &out, Memory: 64 << 20, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if seen[vm.hv] {
			t.Fatalf("run %d got a KVM VM that already ran a program", i)
		}
		seen[vm.hv] = true
		if got := vm.hv.MemoryBudget(); got != 64<<20 {
			t.Errorf("run %d: memory budget %d, want the Config's %d", i, got, 64<<20)
		}
		res, err := vm.Run(t.Context())
		p.Release(vm)
		if err != nil {
			t.Fatal(err)
		}
		if want := "run " + strings.Repeat("x", i) + "\n"; res.ExitCode != 0 || out.String() != want || !res.Stats.Pooled {
			t.Errorf("run %d: exit %d (%s), stdout %q, pooled %v; want 0, %q, pooled", i, res.ExitCode, res.Reason, out.String(), res.Stats.Pooled, want)
		}
	}

	// The budget of the program applies to a pooled VM: 64 MiB cannot hold a 100 MiB buffer.
	waitReady(t, p, 1)
	res, err := Run(t.Context(), Config{Pool: p, Image: im, Program: "/usr/bin/busybox",
		Args: []string{"busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"}, Memory: 64 << 20, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode == 0 || !res.Stats.Pooled {
		t.Errorf("dd of 100 MiB in a pooled 64 MiB VM: exit %d, pooled %v; want a failure in a pooled VM", res.ExitCode, res.Stats.Pooled)
	}

	// More memory than the pool's VMs hold: the VM is made on demand, and works.
	res, err = Run(t.Context(), Config{Pool: p, Image: im, Program: "/usr/bin/busybox", Args: []string{"busybox", "true"}, Memory: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || res.Stats.Pooled {
		t.Errorf("1 GiB VM: exit %d, pooled %v; want 0, made on demand", res.ExitCode, res.Stats.Pooled)
	}

	// A VM taken from the pool and closed before it ran releases its parked thread.
	waitReady(t, p, 1)
	vm, err := New(Config{Pool: p, Image: im, Program: "/usr/bin/busybox"})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Close(); err != nil {
		t.Fatal(err)
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err == nil {
		t.Error("second Close succeeded")
	}
	// Nothing left behind: the ready VMs, their parked threads and the VMs handed back.
	checkNothingLeft(t, baseGoroutines, baseFDs)
}

// TestPoolTimeout checks that the time limit ends a program in a pooled VM.
func TestPoolTimeout(t *testing.T) {
	sys := requireKVM(t)
	im := busyboxImage(t)
	p, err := NewPool(PoolConfig{KVM: sys, Size: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	waitReady(t, p, 1)
	res, err := Run(t.Context(), Config{Pool: p, Image: im, Program: "/usr/bin/busybox",
		Args: []string{"busybox", "sh", "-c", "while :; do :; done"}, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if !res.TimedOut || res.ExitCode != 137 || !res.Stats.Pooled {
		t.Errorf("exit %d timed out %v pooled %v (%s), want 137 after the time limit in a pooled VM", res.ExitCode, res.TimedOut, res.Stats.Pooled, res.Reason)
	}
}

func TestPoolConfig(t *testing.T) {
	if _, err := NewPool(PoolConfig{}); err == nil {
		t.Error("NewPool without a KVM system succeeded")
	}
	sys := requireKVM(t)
	for _, c := range []PoolConfig{{KVM: sys, Size: -1}, {KVM: sys, Memory: 1 << 20}, {KVM: sys, Memory: MaxMemory + 1},
		{KVM: sys, MaxVCPUs: kvmhv.MaxVCPUs + 1}} {
		if p, err := NewPool(c); err == nil {
			p.Close()
			t.Errorf("NewPool(%+v) succeeded", c)
		}
	}
}

// TestMemoryBounds: Config.Memory must lie between MinMemory and MaxMemory; both bounds
// themselves work.
func TestMemoryBounds(t *testing.T) {
	sys := requireKVM(t)
	im := busyboxImage(t)
	for _, m := range []int64{MinMemory - 1, MaxMemory + 1, -1} {
		vm, err := New(Config{KVM: sys, Image: im, Program: "/usr/bin/busybox", Memory: m})
		if err == nil {
			vm.Close()
		}
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("memory %d: %v, want ErrInvalidConfig", m, err)
		}
	}
	for _, m := range []int64{MinMemory, MaxMemory} {
		res, err := Run(t.Context(), Config{KVM: sys, Image: im, Program: "/usr/bin/busybox", Args: []string{"busybox", "true"},
			Memory: m, Timeout: 30 * time.Second})
		if err != nil || res.ExitCode != 0 {
			t.Errorf("memory %d: %v %+v", m, err, res)
		}
	}
}
