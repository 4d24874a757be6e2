package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vmfex/vmfex/lab"
)

// MigrationObserver records finished migrations. Unlike the lab's counters,
// a migration's timeline exists only in its report, so it is recorded when
// the migration ends rather than read at scrape time.
type MigrationObserver struct {
	total    *prometheus.CounterVec
	phase    *prometheus.HistogramVec
	downtime prometheus.Histogram
}

// NewMigrationObserver returns an observer; register it with a
// prometheus.Registry (it is a prometheus.Collector).
func NewMigrationObserver() *MigrationObserver {
	return &MigrationObserver{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: subsystemMigration, Name: "total",
			Help: "Migrations that ended, by outcome (succeeded, rolled-back, failed).",
		}, []string{"outcome"}),
		// Phases range from tens of microseconds (prepare, in process) to
		// seconds (precopy of a large guest over TCP).
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: subsystemMigration, Name: "phase_seconds",
			Help:    "How long each phase of a migration took, by phase; a rolled-back migration records the phases it ran.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 4, 10),
		}, []string{"phase"}),
		// Downtime is the number operators care about most: finer buckets
		// over the sub-second range where a live migration must stay.
		downtime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: subsystemMigration, Name: "downtime_seconds",
			Help:    "How long a migrated VM was frozen.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 2, 16),
		}),
	}
}

// Observe records rep, the report of a migration that ended with outcome.
// Only phases that ended are timed; downtime is recorded once the VM was
// frozen at all, since a rollback after the freeze still cost the guest
// that time.
func (o *MigrationObserver) Observe(rep lab.MigrationReport, outcome string) {
	o.total.WithLabelValues(outcome).Inc()
	for _, p := range rep.Phases {
		if p.EndUs < p.StartUs {
			continue // never ended: no duration to record
		}
		o.phase.WithLabelValues(p.Name).Observe(float64(p.EndUs-p.StartUs) / 1e6)
	}
	if rep.DowntimeMs > 0 {
		o.downtime.Observe(rep.DowntimeMs / 1e3)
	}
}

// Describe implements prometheus.Collector.
func (o *MigrationObserver) Describe(ch chan<- *prometheus.Desc) {
	o.total.Describe(ch)
	o.phase.Describe(ch)
	o.downtime.Describe(ch)
}

// Collect implements prometheus.Collector.
func (o *MigrationObserver) Collect(ch chan<- prometheus.Metric) {
	o.total.Collect(ch)
	o.phase.Collect(ch)
	o.downtime.Collect(ch)
}
