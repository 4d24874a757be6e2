package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
)

// TestLabNetns runs examples/demo.yaml as separate processes in network
// namespaces joined by veth pairs: tshark on the FI's end of a host's veth
// decodes VN-Tagged frames, a VM migrates between the host processes over
// the vMotion network, and at the end every probe arrived exactly once.
func TestLabNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("lab up --netns needs root (network namespaces, veth pairs)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2)")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	demo, err := os.ReadFile(filepath.Join("..", "..", "examples", "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	topo := filepath.Join(dir, "demo.yaml")
	if err := os.WriteFile(topo, []byte(strings.Replace(string(demo), "rate: 0 ", "rate: 500 ", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	prefix := fmt.Sprintf("vx%d-", os.Getpid()%100000)
	env := append(os.Environ(), "VMFEX_TEST_AS_VMFEX=1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- runLabNetns(ctx, &out, labOpts{topology: topo, traffic: true}, netnsOpts{stateDir: state, prefix: prefix, exe: exe, env: env})
	}()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
		if t.Failed() {
			t.Logf("lab output:\n%s", out.String())
			for _, n := range []string{"manager", "fi-fi-a", "host-esx1", "host-esx2"} {
				b, _ := os.ReadFile(filepath.Join(state, n+".log"))
				t.Logf("--- %s.log ---\n%s", n, tail(string(b), 40))
			}
		}
	}()
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(out.String(), "stop with vmfex lab down") {
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("lab up --netns ended: %v\n%s", err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("lab up --netns did not come up:\n%s", out.String())
		}
	}
	sock := filepath.Join(state, "manager.sock")
	tok, err := manager.LoadToken(filepath.Join(state, "manager", manager.TokenFileName))
	if err != nil {
		t.Fatal(err)
	}
	cliEnv := append(env, "VMFEX_SERVER=unix://"+sock, "VMFEX_TOKEN="+tok)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(exe, args...)
		cmd.Env = cliEnv
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("vmfex %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}

	// The frames on a veth are the fabric's, VN-Tag and all.
	if _, err := exec.LookPath("tshark"); err == nil {
		var b bytes.Buffer
		cap := exec.Command("ip", "netns", "exec", prefix+"fi-a", "tshark", "-i", "e1-1", "-c", "5", "-a", "duration:60", "-V")
		cap.Stdout, cap.Stderr = &b, &b
		if err := cap.Run(); err != nil || !strings.Contains(b.String(), "VN-Tag") || !strings.Contains(b.String(), "802.1Q Virtual LAN") {
			t.Errorf("tshark on the FI's end of esx1's veth: %v\n%s", err, tail(b.String(), 60))
		}
	} else {
		t.Log("tshark not installed: the capture check is skipped")
	}

	if o := run("vmotion", "web-1", "--to", "esx2"); !strings.Contains(o, "web-1 now runs on esx2") {
		t.Errorf("vmotion:\n%s", o)
	}
	c, err := client.New("unix://"+sock, tok)
	if err != nil {
		t.Fatal(err)
	}
	err = waitUntil(ctx, "web-1 recorded on esx2", func() bool {
		var v manager.VM
		return c.Get(ctx, manager.KindVMs, "web-1", &v) == nil && v.Host == "esx2"
	})
	if err != nil {
		t.Fatal(err)
	}
	if o := run("show", "vm"); strings.Count(o, "running") != 4 {
		t.Errorf("show vm:\n%s", o)
	}

	stopped = true
	cancel()
	if err := <-done; err != nil {
		t.Errorf("lab up --netns: %v", err)
	}
	if o := out.String(); !strings.Contains(o, "lost 0, duplicated 0") {
		t.Errorf("no exactly-once summary:\n%s", o)
	}
	list, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(list), prefix) {
		t.Errorf("namespaces left behind:\n%s", list)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
