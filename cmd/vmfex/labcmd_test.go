package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/lab"
	"github.com/vmfex/vmfex/manager"
)

// labCLI runs one vmfex command line through cobra with the lab commands
// registered, the way main does.
func labCLI(args ...string) (string, error) {
	root := &cobra.Command{Use: "vmfex", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(withShowMigration(newShowCmd()), newLabCmd(), newVNICCmd(), newVMotionCmd())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// apiGet GETs path from the lab API with token (none if empty) and decodes
// the body into out; it returns the status.
func apiGet(t *testing.T, base, token, path string, out any) int {
	t.Helper()
	req, err := http.NewRequest("GET", base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, b)
	}
	return res.StatusCode
}

// TestLabEndToEnd runs the demo fabric from examples/demo.yaml with traffic,
// serves its API, and drives it through the CLI: mode switches, a vMotion
// followed phase by phase, the migration list and the error cases; then it
// proves that no frame was lost or duplicated through all of it.
func TestLabEndToEnd(t *testing.T) {
	demo, err := os.ReadFile(filepath.Join("..", "..", "examples", "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// A modest rate keeps the test quick under the race detector.
	topo := strings.Replace(string(demo), "rate: 0 ", "rate: 20000 ", 1)
	if topo == string(demo) {
		t.Fatal("examples/demo.yaml has no traffic rate line to adjust")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "demo.yaml")
	if err := os.WriteFile(path, []byte(topo), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	r, err := startLab(labOpts{topology: path, listen: "127.0.0.1:0", tokenDir: dir, traffic: true}, &logs)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			r.stop()
		}
	}()
	if !r.tokenCreated || r.tokenPath != filepath.Join(dir, "token") {
		t.Errorf("token %s created=%v, want one generated in %s", r.tokenPath, r.tokenCreated, dir)
	}
	tokenBytes, err := os.ReadFile(r.tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tokenBytes))
	conn := []string{"--server", r.url, "--token-file", r.tokenPath}
	run := func(args ...string) string {
		t.Helper()
		out, err := labCLI(append(args, conn...)...)
		if err != nil {
			t.Fatalf("vmfex %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	fail := func(want string, args ...string) {
		t.Helper()
		out, err := labCLI(append(args, conn...)...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("vmfex %s: err %v, want %q\n%s", strings.Join(args, " "), err, want, out)
		}
	}
	vm := func(name string) labVM {
		t.Helper()
		var res struct{ Items []labVM }
		if st := apiGet(t, r.url, token, "/api/v1/vms", &res); st != http.StatusOK {
			t.Fatalf("GET /api/v1/vms: %d", st)
		}
		for _, v := range res.Items {
			if v.Name == name {
				return v
			}
		}
		t.Fatalf("no VM %s in %+v", name, res.Items)
		return labVM{}
	}

	if v := vm("web-1"); v.Mode != "direct" || v.Host != "esx1" || v.Interface != "Veth32769" || v.VLAN != 100 {
		t.Errorf("web-1 at start: %+v", v)
	}
	if out := run("vnic", "mode", "web-1", "emulated"); !strings.Contains(out, "web-1: vNIC direct -> emulated, guest paused") {
		t.Errorf("vnic mode printed %q", out)
	}
	if v := vm("web-1"); v.Mode != "emulated" {
		t.Errorf("web-1 after vnic mode emulated: %+v", v)
	}
	fail("already in emulated mode", "vnic", "mode", "web-1", "emulated")
	run("vnic", "mode", "web-1", "direct")
	if v := vm("web-1"); v.Mode != "direct" {
		t.Errorf("web-1 after vnic mode direct: %+v", v)
	}

	out := run("vmotion", "web-1", "--to", "esx2")
	for _, p := range []string{lab.PhasePrepare, lab.PhaseVICToEmulated, lab.PhasePrecopy, lab.PhaseFreeze,
		lab.PhaseStopAndCopy, lab.PhaseResume, lab.PhaseEmulatedToVIC} {
		if !strings.Contains(out, "  "+p+" ") || !strings.Contains(out, phaseLine(p, 0)[:20]) {
			t.Errorf("vmotion output lacks phase %s:\n%s", p, out)
		}
	}
	if !strings.Contains(out, "web-1 now runs on esx2: total") {
		t.Errorf("vmotion printed no summary:\n%s", out)
	}
	if v := vm("web-1"); v.Host != "esx2" || v.Mode != "direct" || v.VEth != 32769 {
		t.Errorf("web-1 after vmotion: %+v", v)
	}
	// The moved VM still switches modes: the API follows it to its new
	// hypervisor VM.
	run("vnic", "mode", "web-1", "emulated")
	run("vnic", "mode", "web-1", "direct")

	var jobs []migrationJob
	if err := json.Unmarshal([]byte(run("show", "migration", "-o", "json")), &jobs); err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].State != manager.MigrationSucceeded || jobs[0].From != "esx1" || jobs[0].To != "esx2" ||
		len(jobs[0].Phases) != 7 || jobs[0].BytesTransferred == 0 || jobs[0].Transport != "tcp" {
		t.Errorf("show migration -o json: %+v", jobs)
	}
	if out := run("show", "migration"); !strings.Contains(out, "succeeded") || !strings.Contains(out, "Downtime(ms)") {
		t.Errorf("show migration:\n%s", out)
	}
	if out := run("show", "migration", "1"); !strings.Contains(out, "emulated_to_vic") || !strings.Contains(out, "Duration(ms)") {
		t.Errorf("show migration 1:\n%s", out)
	}

	// Errors.
	fail(`VM "nope" not found`, "vnic", "mode", "nope", "direct")
	fail("not a vNIC mode", "vnic", "mode", "web-1", "fast")
	fail("already runs on esx2", "vmotion", "web-1", "--to", "esx2")
	fail(`host "esx9" not found`, "vmotion", "web-1", "--to", "esx9")
	fail(`VM "nope" not found`, "vmotion", "nope", "--to", "esx1")
	fail(`migration "7" not found`, "show", "migration", "7")
	var apiErr struct{ Error, Hint string }
	if st := apiGet(t, r.url, "", "/api/v1/vms", &apiErr); st != http.StatusUnauthorized || apiErr.Error != "missing bearer token" || apiErr.Hint == "" {
		t.Errorf("no token: %d %+v", st, apiErr)
	}
	if st := apiGet(t, r.url, "wrong", "/api/v1/vms", &apiErr); st != http.StatusUnauthorized || apiErr.Error != "invalid bearer token" {
		t.Errorf("wrong token: %d %+v", st, apiErr)
	}
	// The raw API refuses a bad mode with 400 before the CLI's own check.
	var c modeResult
	cl, err := (&clientOpts{server: r.url, tokenFile: r.tokenPath, output: "table"}).connect()
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Do(context.Background(), "POST", "/api/v1/vms/web-1/mode", modeRequest{Mode: "fast"}, &c); err == nil ||
		!strings.Contains(err.Error(), "hint:") {
		t.Errorf("POST bad mode: %v", err)
	}

	// Stop as Ctrl-C does: traffic off, drain, exactly-once accounting.
	stopped = true
	sum, err := r.stop()
	if err != nil {
		t.Fatalf("stop: %v\n%s", err, logs.String())
	}
	if sum.Sent == 0 || sum.Lost != 0 || sum.Duplicated != 0 || sum.Misdelivered != 0 {
		t.Errorf("exactly-once summary: sent %d, lost %d, duplicated %d, misdelivered %d", sum.Sent, sum.Lost, sum.Duplicated, sum.Misdelivered)
	}
	var b bytes.Buffer
	printLabSummary(&b, sum, true)
	if !strings.Contains(b.String(), "lost 0, duplicated 0") {
		t.Errorf("summary line %q", b.String())
	}
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLabDown: vmfex lab down stops a running lab up as Ctrl-C does:
// drain, summary, exit.
func TestLabDown(t *testing.T) {
	dir := t.TempDir()
	demo, err := os.ReadFile(filepath.Join("..", "..", "examples", "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "demo.yaml")
	if err := os.WriteFile(path, []byte(strings.Replace(string(demo), "rate: 0 ", "rate: 2000 ", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t, "tcp")
	var out, logs lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- runLab(context.Background(), &out, &logs, labOpts{topology: path, listen: addr, tokenDir: dir, traffic: true})
	}()
	tokenFile := filepath.Join(dir, manager.TokenFileName)
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(out.String(), "stop with Ctrl-C") {
		if time.Now().After(deadline) {
			t.Fatalf("lab did not start:\n%s\n%s", out.String(), logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	res, err := labCLI("lab", "down", "--server", "http://"+addr, "--token-file", tokenFile)
	if err != nil || !strings.Contains(res, "lab stopped") {
		t.Errorf("lab down: %v\n%s", err, res)
	}
	if err := <-done; err != nil {
		t.Errorf("lab up: %v\n%s", err, out.String())
	}
	if s := out.String(); !strings.Contains(s, "lab down asked for") || !strings.Contains(s, "lost 0, duplicated 0") {
		t.Errorf("lab up output:\n%s", s)
	}
}
