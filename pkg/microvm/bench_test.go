package microvm

import (
	"context"
	"testing"
	"time"
)

// BenchmarkBusyboxTrue runs `busybox true` in one micro VM per iteration and reports the
// VM exits and system calls each needed: "cold" creates and destroys every VM on the
// caller's path, "pooled" takes VMs a Pool made ahead of need and lets it destroy them
// (Stats.Pooled counts how many iterations found a ready VM).
func BenchmarkBusyboxTrue(b *testing.B) {
	sys := requireKVM(b)
	im := busyboxImage(b)
	for _, c := range []struct {
		name           string
		pooled, noVDSO bool
	}{{"cold", false, false}, {"pooled", true, false}, {"pooled-novdso", true, true}} {
		pooled := c.pooled
		b.Run(c.name, func(b *testing.B) {
			cfg := Config{KVM: sys, Image: im, Program: "/usr/bin/busybox", Args: []string{"busybox", "true"}, Timeout: 10 * time.Second,
				NoVDSO: c.noVDSO}
			if pooled {
				p, err := NewPool(PoolConfig{KVM: sys})
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				cfg.Pool = p
			}
			var exits, calls, hits uint64
			for b.Loop() {
				res, err := Run(context.Background(), cfg)
				if err != nil {
					b.Fatal(err)
				}
				if res.ExitCode != 0 {
					b.Fatalf("exit %d: %s", res.ExitCode, res.Reason)
				}
				for _, n := range res.Stats.Exits {
					exits += n
				}
				calls += res.Stats.SyscallCount
				if res.Stats.Pooled {
					hits++
				}
			}
			b.ReportMetric(float64(exits)/float64(b.N), "exits/op")
			b.ReportMetric(float64(calls)/float64(b.N), "syscalls/op")
			b.ReportMetric(float64(hits)/float64(b.N), "pooled/op")
		})
	}
}
