package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/manager"
)

// cli runs one vmfex command line through cobra, the way main does, with
// the control-plane commands registered.
func cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "vmfex", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newManagerCmd(), newPortProfileCmd(), newHostCmd(), newFICmd(), newVMCmd(), newShowCmd())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := cli(t, args...)
	if err != nil {
		t.Fatalf("vmfex %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestManagerEndToEnd starts the real manager daemon code on a loopback
// port, drives it with the CLI and checks tables, JSON and errors.
func TestManagerEndToEnd(t *testing.T) {
	dataDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var daemonOut, daemonLog bytes.Buffer
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- runManager(ctx, &daemonOut, &daemonLog, managerOpts{dataDir: dataDir, listen: "127.0.0.1:0"}, ready)
	}()
	var url string
	select {
	case url = <-ready:
	case err := <-done:
		t.Fatalf("manager did not start: %v", err)
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	tokenFile := filepath.Join(dataDir, manager.TokenFileName)
	if !strings.Contains(daemonOut.String(), "generated into "+tokenFile) {
		t.Errorf("manager did not say where its token is:\n%s", daemonOut.String())
	}
	conn := []string{"--server", url, "--token-file", tokenFile}
	run := func(args ...string) string { return mustCLI(t, append(args, conn...)...) }

	run("fi", "create", "fi-a")
	run("host", "create", "esx1", "--fi", "fi-a", "--server-port", "Ethernet1/1")
	run("host", "create", "esx2", "--fi", "fi-a", "--server-port", "Ethernet1/2")
	if out := run("port-profile", "create", "web", "--access-vlan", "10", "--qos-class", "gold", "--high-performance", "--max-ports", "8"); out != "port-profile web created\n" {
		t.Errorf("port-profile create printed %q", out)
	}
	run("port-profile", "create", "db", "--trunk", "--allowed-vlans", "30,20", "--native-vlan", "20", "--mac-forging", "deny")
	if out := run("vm", "create", "web-1", "--host", "esx1", "--port-profile", "web", "--mac", "00:25:b5:00:00:01", "--ip", "10.0.10.11"); !strings.Contains(out, "Vethernet32769") {
		t.Errorf("vm create printed %q, want its vEth", out)
	}
	run("vm", "create", "db-1", "--host", "esx2", "--port-profile", "db", "--mac", "00:25:b5:00:00:02", "--mode", "emulated")

	veths := run("show", "vethernet")
	wantVeths := `Interface  VM     Port-Profile  VLAN         Host  Mode
---------  --     ------------  ----         ----  ----
Veth32769  web-1  web           10           esx1  direct
Veth32770  db-1   db            trunk 20,30  esx2  emulated
`
	if veths != wantVeths {
		t.Errorf("show vethernet:\n%s\nwant:\n%s", veths, wantVeths)
	}
	if out := run("show", "vethernet", "Veth32770"); !strings.Contains(out, "db-1") || strings.Contains(out, "web-1") {
		t.Errorf("show vethernet Veth32770:\n%s", out)
	}
	pps := run("show", "port-profile")
	for _, want := range []string{
		"Port-Profile  Mode    VLANs  Native  QoS-Class    MAC-Forging  Ports(used/max)  High-Perf  Description",
		"db            trunk   20,30  20      best-effort  deny         1/64             no         -",
		"web           access  10     -       gold         allow        1/8              yes        -",
	} {
		if !strings.Contains(pps, want+"\n") {
			t.Errorf("show port-profile lacks line %q:\n%s", want, pps)
		}
	}
	if out := run("show", "vm"); !strings.Contains(out, "web-1  esx1  web           Veth32769  00:25:b5:00:00:01  10.0.10.11  1024") {
		t.Errorf("show vm:\n%s", out)
	}

	var rows []vethRow
	if err := json.Unmarshal([]byte(run("show", "vethernet", "-o", "json")), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].VEth != 32769 || rows[0].VM != "web-1" || rows[0].VLAN != "10" || rows[1].ModeRequested != "emulated" {
		t.Errorf("show vethernet -o json = %+v", rows)
	}
	var pp manager.PortProfile
	if err := json.Unmarshal([]byte(run("show", "port-profile", "db", "-o", "json")), &pp); err != nil {
		t.Fatal(err)
	}
	if pp.Mode != "trunk" || pp.NativeVLAN != 20 || len(pp.AllowedVLANs) != 2 || pp.MACForging != "deny" {
		t.Errorf("show port-profile db -o json = %+v", pp)
	}

	// Errors come back with the manager's message and hint.
	_, err := cli(t, append([]string{"port-profile", "create", "bad", "--access-vlan", "4095"}, conn...)...)
	if err == nil || !strings.Contains(err.Error(), "access_vlan 4095 is out of range") || !strings.Contains(err.Error(), "hint: VLAN IDs are 1..4094") {
		t.Errorf("bad VLAN: err = %v", err)
	}
	_, err = cli(t, append([]string{"port-profile", "delete", "web"}, conn...)...)
	if err == nil || !strings.Contains(err.Error(), `port profile "web" is in use by VMs web-1`) {
		t.Errorf("delete used profile: err = %v", err)
	}
	_, err = cli(t, append([]string{"vm", "create", "x", "--host", "esx9", "--port-profile", "web", "--mac", "00:25:b5:00:00:09"}, conn...)...)
	if err == nil || !strings.Contains(err.Error(), `host "esx9"`) {
		t.Errorf("vm on missing host: err = %v", err)
	}
	_, err = cli(t, "show", "vm", "--server", url, "--token-file", writeToken(t, "wrong"))
	if err == nil || !strings.Contains(err.Error(), "invalid bearer token") {
		t.Errorf("wrong token: err = %v", err)
	}
	_, err = cli(t, "show", "vethernet", "40000", "--server", url, "--token-file", tokenFile)
	if err == nil || !strings.Contains(err.Error(), "vEth 40000 not found") {
		t.Errorf("missing vEth: err = %v", err)
	}

	// The environment works as well as flags.
	t.Setenv("VMFEX_SERVER", url)
	tok, _ := manager.LoadToken(tokenFile)
	t.Setenv("VMFEX_TOKEN", tok)
	mustCLI(t, "vm", "delete", "db-1")
	mustCLI(t, "port-profile", "delete", "db")
	if out := mustCLI(t, "show", "vethernet"); strings.Contains(out, "db-1") || !strings.Contains(out, "Veth32769") {
		t.Errorf("show vethernet after delete:\n%s", out)
	}
}

func writeToken(t *testing.T, tok string) string {
	p := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(p, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestManagerRefusesNonLoopback(t *testing.T) {
	err := runManager(context.Background(), &bytes.Buffer{}, &bytes.Buffer{}, managerOpts{dataDir: t.TempDir(), listen: "0.0.0.0:8443"}, nil)
	if err == nil || !strings.Contains(err.Error(), "not a loopback address") {
		t.Errorf("listen on 0.0.0.0: err = %v", err)
	}
}

func TestClientNeedsToken(t *testing.T) {
	t.Setenv("VMFEX_TOKEN", "")
	_, err := cli(t, "show", "vm", "--server", "http://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "--token-file") {
		t.Errorf("no token: err = %v", err)
	}
}
