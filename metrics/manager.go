package metrics

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vmfex/vmfex/manager/store"
)

// listTimeout bounds a scrape's reads of the store: a store stuck behind a
// long write must not hold Prometheus' scrape (and its goroutine) forever.
const listTimeout = 5 * time.Second

// ManagerCollector reports the manager's store: how many objects of each
// kind it holds and its revision, read with List when Prometheus scrapes.
type ManagerCollector struct {
	st       store.Store
	kinds    []string
	objects  *prometheus.Desc
	revision *prometheus.Desc
}

// NewManagerCollector returns a collector counting the objects of kinds in
// st (the manager's kinds are manager.Kinds; the store cannot list kinds).
func NewManagerCollector(st store.Store, kinds []string) *ManagerCollector {
	return &ManagerCollector{
		st:    st,
		kinds: append([]string(nil), kinds...),
		objects: prometheus.NewDesc(prometheus.BuildFQName(Namespace, subsystemManager, "objects"),
			"Objects the manager's store holds, by kind.", []string{"kind"}, nil),
		revision: prometheus.NewDesc(prometheus.BuildFQName(Namespace, subsystemManager, "store_revision"),
			"The manager store's revision: it grows by one with every committed change.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *ManagerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.objects
	ch <- c.revision
}

// Collect implements prometheus.Collector. A kind that cannot be listed is
// reported as an invalid metric, which fails the scrape of that series
// with the store's error, rather than as a misleading 0.
func (c *ManagerCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), listTimeout)
	defer cancel()
	var rev int64
	listed := false
	for _, k := range c.kinds {
		objs, r, err := c.st.List(ctx, k)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.objects,
				fmt.Errorf("list %s in the manager store: %w; check that the store is open and its disk readable", k, err))
			continue
		}
		listed = true
		// Each List reads at the then current revision; the latest is the
		// store's revision at the end of the scrape.
		rev = max(rev, r)
		ch <- constMetric(c.objects, prometheus.GaugeValue, float64(len(objs)), k)
	}
	if listed {
		ch <- constMetric(c.revision, prometheus.GaugeValue, float64(rev))
	}
}
