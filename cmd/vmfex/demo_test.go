package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDemoJSON(t *testing.T) {
	var out bytes.Buffer
	capFile := filepath.Join(t.TempDir(), "esx1.pcap")
	err := runDemo(context.Background(), &out, demoOpts{
		duration: 300 * time.Millisecond, json: true, frameLen: 64,
		capture: capFile, capHost: "esx1", capFrames: 5000, emulated: true,
		migrate: "web-1", transport: "tcp",
	})
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	var rep map[string]any
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("demo --json is not one JSON object: %v\n%s", err, out.String())
	}
	for _, k := range []string{"duration_s", "frames_sent", "frames_received", "frames_lost",
		"frames_duplicated", "frames_misdelivered", "direct_pps", "emulated_pps", "mode_switches", "vms"} {
		if _, ok := rep[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
	if rep["frames_sent"].(float64) == 0 || rep["frames_sent"] != rep["frames_received"] {
		t.Errorf("sent %v received %v", rep["frames_sent"], rep["frames_received"])
	}
	for _, k := range []string{"frames_lost", "frames_duplicated", "frames_misdelivered"} {
		if rep[k].(float64) != 0 {
			t.Errorf("%s = %v", k, rep[k])
		}
	}
	vms := rep["vms"].([]any)
	if len(vms) != 4 {
		t.Fatalf("%d VMs in the report", len(vms))
	}
	for _, v := range vms {
		vm := v.(map[string]any)
		if vm["mode"] != "direct" || vm["frames_sent"].(float64) == 0 || vm["frames_received"].(float64) == 0 {
			t.Errorf("VM line %v", vm)
		}
	}
	mig, ok := rep["migration"].(map[string]any)
	if !ok {
		t.Fatalf("JSON lacks the migration: %s", out.String())
	}
	for _, k := range []string{"vm", "from", "to", "total_ms", "downtime_ms", "blackout_ms", "precopy_rounds", "bytes_transferred", "phases", "blackout_end_us", "start_unix_ns"} {
		if _, ok := mig[k]; !ok {
			t.Errorf("migration lacks %q", k)
		}
	}
	if mig["vm"] != "web-1" || mig["from"] != "esx1" || mig["to"] != "esx2" || mig["blackout_ms"].(float64) <= 0 || mig["bytes_transferred"].(float64) <= 0 {
		t.Errorf("migration %v", mig)
	}
	var names []string
	for _, p := range mig["phases"].([]any) {
		names = append(names, p.(map[string]any)["name"].(string))
	}
	for _, want := range []string{"freeze", "vic_to_emulated", "precopy", "stop_and_copy", "resume", "emulated_to_vic"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("phases %v lack %s", names, want)
		}
	}
	for _, v := range vms {
		if vm := v.(map[string]any); vm["name"] == "web-1" && vm["host"] != "esx2" {
			t.Errorf("web-1 reported on %v after its move", vm["host"])
		}
	}
	if st, err := os.Stat(capFile); err != nil || st.Size() < 1000 {
		t.Errorf("capture file: %v", err)
	}
}

func TestDemoRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		o    demoOpts
		want string
	}{
		{demoOpts{duration: time.Second, frameLen: 10}, "--frame-size"},
		{demoOpts{duration: 0, frameLen: 64}, "--duration"},
		{demoOpts{duration: time.Second, frameLen: 64, capture: filepath.Join(t.TempDir(), "x.pcap"), capHost: "esx9"}, "--capture-host"},
		{demoOpts{duration: time.Second, frameLen: 64, capture: "/nonexistent-dir/x.pcap", capHost: "esx1"}, "--capture"},
		{demoOpts{duration: time.Second, frameLen: 64, migrate: "web-1", transport: "udp"}, "--migrate-transport"},
		{demoOpts{duration: time.Second, frameLen: 64, memMiB: 2}, "--vm-memory"},
		{demoOpts{duration: 100 * time.Millisecond, frameLen: 64, migrate: "db-9", transport: "tcp"}, "--migrate"},
	} {
		err := runDemo(context.Background(), &bytes.Buffer{}, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("runDemo(%+v) = %v, want an error about %s", tc.o, err, tc.want)
		}
	}
}
