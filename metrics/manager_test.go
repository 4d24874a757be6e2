package metrics_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vmfex/vmfex/manager/store"
	"github.com/vmfex/vmfex/metrics"
)

func TestManagerCollector(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "manager.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	for _, o := range []store.Object{
		{Kind: "hosts", Name: "esx1"}, {Kind: "hosts", Name: "esx2"}, {Kind: "vms", Name: "web-1"},
	} {
		o.Value = json.RawMessage(`{}`)
		if _, err := st.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Delete(ctx, "vms", "web-1", 0); err != nil {
		t.Fatal(err)
	}
	_, rev, err := st.List(ctx, "hosts")
	if err != nil {
		t.Fatal(err)
	}

	c := metrics.NewManagerCollector(st, []string{"hosts", "port-profiles", "vms"})
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	want := `
# HELP vmfex_manager_objects Objects the manager's store holds, by kind.
# TYPE vmfex_manager_objects gauge
vmfex_manager_objects{kind="hosts"} 2
vmfex_manager_objects{kind="port-profiles"} 0
vmfex_manager_objects{kind="vms"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "vmfex_manager_objects"); err != nil {
		t.Error(err)
	}
	if rev < 4 {
		t.Fatalf("store revision %d after 4 changes", rev)
	}
	wantRev := fmt.Sprintf(`
# HELP vmfex_manager_store_revision The manager store's revision: it grows by one with every committed change.
# TYPE vmfex_manager_store_revision gauge
vmfex_manager_store_revision %d
`, rev)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(wantRev), "vmfex_manager_store_revision"); err != nil {
		t.Error(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	// A closed store fails the scrape with the store's error instead of
	// reporting zero objects.
	st.Close()
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("gather from a closed store: %v, want a store-closed error", err)
	}
}
