// Package metrics exports the fabric's counters to Prometheus.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric this package defines, so that one
// Prometheus job can tell the fabric's series from anything else it scrapes.
const Namespace = "vmfex"

// Subsystems: the component a series describes, the second part of its name.
const (
	subsystemFI         = "fi"
	subsystemVIC        = "vic"
	subsystemHypervisor = "hypervisor"
	subsystemGuest      = "guest"
	subsystemMigration  = "migration"
	subsystemManager    = "manager"
)

// Handler serves reg in the Prometheus exposition format. A collector that
// fails (the manager's store, say) costs only its own series: the rest of
// the scrape is still served, so one broken source does not blind the
// whole dashboard.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      reg, // counts promhttp's own errors in reg
	})
}

// constMetric is prometheus.MustNewConstMetric without the panic: a label
// mismatch (a bug here) fails that one series in the scrape, where it is
// reported, instead of taking the fabric's process down.
func constMetric(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) prometheus.Metric {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		return prometheus.NewInvalidMetric(d, err)
	}
	return m
}
