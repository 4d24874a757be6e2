package metrics_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vmfex/vmfex/metrics"
)

// TestScrapeDuringMigration scrapes continuously while a VM migrates, so
// that -race checks the collector against the fields a migration rewrites,
// and records the real report with a MigrationObserver.
func TestScrapeDuringMigration(t *testing.T) {
	l := startDemoLab(t)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewLabCollector(l))
	obs := metrics.NewMigrationObserver()
	reg.MustRegister(obs)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	scrapes := 0
	go func() {
		defer wg.Done()
		// A scrape every millisecond: far more often than Prometheus, without
		// taking a whole core from the fabric on a small CI machine.
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := reg.Gather(); err != nil {
				t.Errorf("gather during a migration: %v", err)
				return
			}
			scrapes++
		}
	}()
	// Generous: under the race detector on 2 busy cores a migration takes
	// seconds; the test is about the scrapes, not the time.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := l.Migrate(ctx, "web-1", "esx2")
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("migrate web-1 to esx2: %v", err)
	}
	obs.Observe(rep, "succeeded")
	t.Logf("%d scrapes during the migration", scrapes)

	want := `
# HELP vmfex_migration_total Migrations that ended, by outcome (succeeded, rolled-back, failed).
# TYPE vmfex_migration_total counter
vmfex_migration_total{outcome="succeeded"} 1
`
	if err := testutil.CollectAndCompare(obs, strings.NewReader(want), "vmfex_migration_total"); err != nil {
		t.Error(err)
	}
	// One histogram series per phase the report has, plus the downtime one.
	if got, want := testutil.CollectAndCount(obs, "vmfex_migration_phase_seconds"), len(rep.Phases); got != want {
		t.Errorf("%d phase histograms, want %d (phases %+v)", got, want, rep.Phases)
	}
	if got := testutil.CollectAndCount(obs, "vmfex_migration_downtime_seconds"); got != 1 {
		t.Errorf("%d downtime histograms, want 1", got)
	}

	// After the move web-1's vNIC is reported on esx2.
	v, ok := l.View("web-1")
	if !ok || v.Host != "esx2" {
		t.Fatalf("web-1 view after migration: %+v %v", v, ok)
	}
	if n := testutil.CollectAndCount(metrics.NewLabCollector(l), "vmfex_vic_vnic_frames_total"); n != 2*len(l.Views()) {
		t.Errorf("%d vnic frame series, want tx and rx for each of %d VMs", n, len(l.Views()))
	}
}
