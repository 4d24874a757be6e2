package metrics_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vmfex/vmfex/lab"
	"github.com/vmfex/vmfex/metrics"
)

// startDemoLab runs the demo fabric with traffic on, at a rate low enough
// for -race, until every vEth and vNIC has carried frames both ways.
func startDemoLab(t *testing.T) *lab.Lab {
	t.Helper()
	topo := lab.DemoTopology()
	topo.Traffic.Rate = 20000
	l, err := lab.Build(topo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close the lab: %v", err)
		}
	})
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	l.StartTraffic()
	deadline := time.Now().Add(time.Minute)
	for {
		flowing := true
		for _, v := range l.FI.VEths() {
			if v.Counters.IngressFrames == 0 || v.Counters.EgressFrames == 0 {
				flowing = false
			}
		}
		// A frame the FI sent is on the cable before the vNIC writes it
		// into the guest: wait for the far end too.
		for _, vm := range l.VMs() {
			if s := vm.VNIC.Stats(); s.TxFrames == 0 || s.RxFrames == 0 {
				flowing = false
			}
		}
		if flowing {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("traffic did not reach every vEth and vNIC within 5s: %+v", l.FI.VEths())
		}
		time.Sleep(5 * time.Millisecond) // polling counters, not a modelled delay
	}
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse the scrape: %v", err)
	}
	return mfs
}

func labelsOf(m *dto.Metric) map[string]string {
	out := make(map[string]string)
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

// seriesKey identifies a series within its family.
func seriesKey(m *dto.Metric) string {
	k := ""
	for _, lp := range m.GetLabel() {
		k += lp.GetName() + "=" + lp.GetValue() + ","
	}
	return k
}

func family(t *testing.T, mfs map[string]*dto.MetricFamily, name string, typ dto.MetricType) *dto.MetricFamily {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		t.Fatalf("no family %s in the scrape", name)
	}
	if mf.GetType() != typ {
		t.Fatalf("%s is a %v, want %v", name, mf.GetType(), typ)
	}
	return mf
}

func TestLabCollectorScrape(t *testing.T) {
	l := startDemoLab(t)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewLabCollector(l))
	mig := metrics.NewMigrationObserver()
	reg.MustRegister(mig)
	// One recorded migration, so that the histograms are gathered and linted.
	mig.Observe(lab.MigrationReport{DowntimeMs: 1.5, Phases: []lab.MigrationPhase{
		{Name: lab.PhasePrepare, StartUs: 0, EndUs: 120}, {Name: lab.PhaseFreeze, StartUs: 120, EndUs: 1620}}}, "succeeded")
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()

	first := scrape(t, srv.URL)

	// Every vEth of the lab has frames and bytes both ways.
	frames := family(t, first, "vmfex_fi_veth_frames_total", dto.MetricType_COUNTER)
	family(t, first, "vmfex_fi_veth_bytes_total", dto.MetricType_COUNTER)
	seen := make(map[string]float64)
	for _, m := range frames.GetMetric() {
		lb := labelsOf(m)
		seen[lb["veth"]+"/"+lb["direction"]] = m.GetCounter().GetValue()
	}
	for _, v := range l.FI.VEths() {
		for _, dir := range []string{"ingress", "egress"} {
			if seen[v.Name+"/"+dir] <= 0 {
				t.Errorf("vmfex_fi_veth_frames_total{veth=%q,direction=%q} = %v, want > 0", v.Name, dir, seen[v.Name+"/"+dir])
			}
		}
	}
	if len(l.FI.VEths()) != len(l.VMs()) {
		t.Errorf("%d vEths for %d VMs", len(l.FI.VEths()), len(l.VMs()))
	}

	// Every counter family is typed as one, the gauges as gauges.
	for _, name := range []string{"vmfex_fi_veth_drops_total", "vmfex_fi_drops_total", "vmfex_vic_vnic_frames_total",
		"vmfex_vic_vnic_drops_total", "vmfex_vic_adapter_drops_total", "vmfex_guest_traffic_frames_total", "vmfex_migration_total"} {
		family(t, first, name, dto.MetricType_COUNTER)
	}
	lost := family(t, first, "vmfex_guest_traffic_lost_frames", dto.MetricType_GAUGE)
	if len(lost.GetMetric()) == 0 {
		t.Error("no vmfex_guest_traffic_lost_frames series")
	}
	family(t, first, "vmfex_migration_phase_seconds", dto.MetricType_HISTOGRAM)
	family(t, first, "vmfex_migration_downtime_seconds", dto.MetricType_HISTOGRAM)

	// Each VM is in exactly one mode, and each sends to its peer.
	modes := make(map[string]float64)
	for _, m := range family(t, first, "vmfex_hypervisor_vnic_mode", dto.MetricType_GAUGE).GetMetric() {
		modes[labelsOf(m)["vm"]] += m.GetGauge().GetValue()
	}
	vnics := make(map[string]float64)
	for _, m := range family(t, first, "vmfex_vic_vnic_frames_total", dto.MetricType_COUNTER).GetMetric() {
		lb := labelsOf(m)
		vnics[lb["vm"]+"/"+lb["direction"]] = m.GetCounter().GetValue()
	}
	for _, v := range l.Views() {
		if modes[v.Name] != 1 {
			t.Errorf("VM %s: vnic_mode gauges sum to %v, want 1", v.Name, modes[v.Name])
		}
		if vnics[v.Name+"/tx"] <= 0 || vnics[v.Name+"/rx"] <= 0 {
			t.Errorf("VM %s: vnic frames tx %v rx %v, want > 0", v.Name, vnics[v.Name+"/tx"], vnics[v.Name+"/rx"])
		}
	}

	// Counters never go back between scrapes.
	time.Sleep(20 * time.Millisecond) // let traffic move; not a modelled delay
	second := scrape(t, srv.URL)
	grew := false
	for name, mf := range first {
		if mf.GetType() != dto.MetricType_COUNTER {
			continue
		}
		after := make(map[string]float64)
		for _, m := range second[name].GetMetric() {
			after[seriesKey(m)] = m.GetCounter().GetValue()
		}
		for _, m := range mf.GetMetric() {
			k := seriesKey(m)
			b, ok := after[k]
			if !ok {
				t.Errorf("%s{%s} disappeared in the second scrape", name, k)
				continue
			}
			if a := m.GetCounter().GetValue(); b < a {
				t.Errorf("%s{%s} went back from %v to %v", name, k, a, b)
			} else if b > a {
				grew = true
			}
		}
	}
	if !grew {
		t.Error("no counter grew between two scrapes while traffic ran")
	}

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	l.StopTraffic()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.Drain(ctx, 5*time.Second); err != nil {
		t.Fatalf("drain: %v", err)
	}
	// Drained: nothing is in flight, so every stream's lost gauge is 0.
	for _, m := range family(t, scrape(t, srv.URL), "vmfex_guest_traffic_lost_frames", dto.MetricType_GAUGE).GetMetric() {
		if v := m.GetGauge().GetValue(); v != 0 {
			t.Errorf("after drain, lost frames %v = %v, want 0", labelsOf(m), v)
		}
	}
}
