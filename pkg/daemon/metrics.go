package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the daemon's Prometheus instruments, registered on a per-daemon registry.
type metrics struct {
	reg            *prometheus.Registry
	tasks          *prometheus.CounterVec // by outcome
	decisions      *prometheus.CounterVec // by action
	decisionTime   prometheus.Histogram
	spawnTime      prometheus.Histogram
	openToResult   prometheus.Histogram
	activeVMs      prometheus.Gauge
	queued         prometheus.Gauge
	deniedSyscalls *prometheus.CounterVec // by syscall name
	refused        prometheus.Counter
}

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isolator_tasks_total", Help: "Finished tasks by outcome (done, failed, killed).",
		}, []string{"outcome"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isolator_decisions_total", Help: "Policy decisions by action.",
		}, []string{"action"}),
		decisionTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "isolator_decision_duration_seconds", Help: "Time to decide on a file, including opening it as the user.",
			Buckets: prometheus.ExponentialBuckets(1e-5, 4, 10),
		}),
		spawnTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "isolator_vm_spawn_duration_seconds", Help: "Time from a free slot to a started micro VM.",
			Buckets: prometheus.ExponentialBuckets(1e-4, 4, 10),
		}),
		openToResult: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "isolator_open_to_result_seconds", Help: "Time from an open request to its task's result.",
			Buckets: prometheus.ExponentialBuckets(1e-3, 3, 12),
		}),
		activeVMs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isolator_vms_active", Help: "Micro VMs running now.",
		}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isolator_tasks_queued", Help: "Queue places taken: tasks waiting for a micro VM slot and requests whose input is being staged.",
		}),
		deniedSyscalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isolator_denied_syscalls_total", Help: "System calls refused to guests, by name.",
		}, []string{"syscall"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isolator_open_refused_total", Help: "Open requests refused because the queue was full.",
		}),
	}
	reg.MustRegister(m.tasks, m.decisions, m.decisionTime, m.spawnTime, m.openToResult,
		m.activeVMs, m.queued, m.deniedSyscalls, m.refused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
