package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/store"
	"github.com/vmfex/vmfex/metrics"
)

// TestMetricsListenFlag checks that both commands refuse a non-loopback
// --metrics-listen when the flag is parsed. Only invalid values are set:
// a valid one would change the package variable other tests read.
func TestMetricsListenFlag(t *testing.T) {
	up, _, err := newLabCmd().Find([]string{"up"})
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]*pflag.FlagSet{
		"lab up": up.Flags(), "manager": newManagerCmd().Flags(),
	} {
		for _, bad := range []string{"0.0.0.0:9464", "192.0.2.1:9464", "no-port"} {
			if err := f.Set("metrics-listen", bad); err == nil || !strings.Contains(err.Error(), "loopback") {
				t.Errorf("%s --metrics-listen %s: %v, want a loopback error", name, bad, err)
			}
		}
		if v := f.Lookup("metrics-listen").Value.String(); v != "" {
			t.Errorf("%s: refused value was kept: %q", name, v)
		}
	}
	var m metricsListen
	if err := m.Set("127.0.0.1:0"); err != nil || m.String() != "127.0.0.1:0" {
		t.Errorf("Set(127.0.0.1:0) = %v, value %q", err, m)
	}
}

func TestServeMetrics(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "manager.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewManagerCollector(st, manager.Kinds))

	var out bytes.Buffer
	stop := serveMetrics(&out, "manager", "127.0.0.1:0", reg)
	url := regexp.MustCompile(`http://\S+/metrics`).FindString(out.String())
	if url == "" {
		stop()
		t.Fatalf("no metrics URL printed: %q", out.String())
	}
	resp, err := http.Get(url)
	if err != nil {
		stop()
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `vmfex_manager_objects{kind="vms"} 0`) ||
		!strings.Contains(string(body), "vmfex_manager_store_revision") {
		t.Errorf("GET %s: %s\n%s", url, resp.Status, body)
	}
	stop()
	if _, err := http.Get(url); err == nil {
		t.Error("metrics still served after stop")
	}

	// Off by default, and a taken port is reported, not fatal.
	serveMetrics(&out, "lab", "", reg)()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	out.Reset()
	serveMetrics(&out, "lab", ln.Addr().String(), reg)()
	if !strings.Contains(out.String(), "metrics not served") || !strings.Contains(out.String(), "--metrics-listen") {
		t.Errorf("taken port: %q, want a message naming --metrics-listen", out.String())
	}
}
