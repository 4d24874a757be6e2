package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfex/vmfex/agent"
	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
)

// TestMain lets the test binary run as vmfex itself, so that the
// end-to-end test starts the manager and agents as real processes (built
// with the same flags as the test, -race included).
func TestMain(m *testing.M) {
	if os.Getenv("VMFEX_TEST_AS_VMFEX") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fabricProcs is a fabric of vmfex processes: manager, FI and host agents.
type fabricProcs struct {
	t       *testing.T
	dir     string
	exe     string
	env     []string
	mu      sync.Mutex
	procs   map[string]*exec.Cmd
	mgrAddr string
	c       *client.Client
}

func newFabricProcs(t *testing.T) *fabricProcs {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f := &fabricProcs{t: t, dir: t.TempDir(), exe: exe, procs: map[string]*exec.Cmd{}}
	f.mgrAddr = freeAddr(t, "tcp")
	f.env = append(os.Environ(), "VMFEX_TEST_AS_VMFEX=1", "VMFEX_SERVER=http://"+f.mgrAddr,
		"VMFEX_TOKEN=", "GORACE=halt_on_error=1")
	t.Cleanup(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for name, p := range f.procs {
			stopProcess(p, 30*time.Second)
			delete(f.procs, name)
		}
		if t.Failed() {
			f.dumpLogs()
		}
	})
	return f
}

// freeAddr returns a loopback address with a port nobody uses now.
func freeAddr(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (f *fabricProcs) logPath(name string) string { return filepath.Join(f.dir, name+".log") }

func (f *fabricProcs) dumpLogs() {
	ents, _ := os.ReadDir(f.dir)
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".log") {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(f.dir, e.Name()))
		lines := strings.Split(string(b), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		f.t.Logf("--- %s (last lines) ---\n%s", e.Name(), strings.Join(lines, "\n"))
	}
}

// start runs a daemon: vmfex args..., logging to name.log.
func (f *fabricProcs) start(name string, args ...string) {
	f.t.Helper()
	lf, err := os.OpenFile(f.logPath(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		f.t.Fatal(err)
	}
	cmd := exec.Command(f.exe, args...)
	cmd.Env = f.env
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		f.t.Fatalf("start %s: %v", name, err)
	}
	lf.Close()
	f.mu.Lock()
	f.procs[name] = cmd
	f.mu.Unlock()
}

// kill9 kills a daemon with SIGKILL and reaps it.
func (f *fabricProcs) kill9(name string) {
	f.t.Helper()
	f.mu.Lock()
	p := f.procs[name]
	delete(f.procs, name)
	f.mu.Unlock()
	if p == nil {
		f.t.Fatalf("no process %s", name)
	}
	p.Process.Kill()
	p.Wait()
}

// run runs one CLI command and returns its output.
func (f *fabricProcs) run(args ...string) (string, error) {
	cmd := exec.Command(f.exe, args...)
	cmd.Env = f.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (f *fabricProcs) must(args ...string) string {
	f.t.Helper()
	out, err := f.run(args...)
	if err != nil {
		f.t.Fatalf("vmfex %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (f *fabricProcs) startManager() {
	f.t.Helper()
	f.start("manager", "manager", "--data-dir", filepath.Join(f.dir, "data"), "--listen", f.mgrAddr)
	tokenFile := filepath.Join(f.dir, "data", manager.TokenFileName)
	f.waitFor("the manager", func() bool {
		tok, err := manager.LoadToken(tokenFile)
		if err != nil {
			return false
		}
		c, err := client.New("http://"+f.mgrAddr, tok)
		if err != nil {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var fis []manager.FabricInterconnect
		if _, err := c.List(ctx, manager.KindFabricInterconnects, &fis); err != nil {
			return false
		}
		f.c = c
		for i, e := range f.env {
			if strings.HasPrefix(e, "VMFEX_TOKEN=") {
				f.env[i] = "VMFEX_TOKEN=" + tok
			}
		}
		return true
	})
}

// waitFor polls cond every 20 ms for up to two minutes: race-built
// processes on two busy cores get minutes, not seconds.
func (f *fabricProcs) waitFor(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hostStatus returns what each host agent last reported, and whether it
// is up.
func (f *fabricProcs) hostStatus() (map[string]agent.HostStatus, map[string]bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var agents []manager.Agent
	if _, err := f.c.List(ctx, manager.KindAgents, &agents); err != nil {
		return nil, nil
	}
	st, up := map[string]agent.HostStatus{}, map[string]bool{}
	for _, a := range agents {
		if a.Role != manager.RoleHost {
			continue
		}
		s, err := agent.HostStatusOf(a)
		if err == nil {
			st[a.Object] = s
			up[a.Object] = a.Up(time.Now())
		}
	}
	return st, up
}

// receivedFrames sums the probe frames the guests of the host agent
// serving metrics at addr received (0 if it cannot be scraped).
func receivedFrames(addr string) float64 {
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var n float64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, `vmfex_guest_traffic_frames_total{direction="received"`) {
			if i := strings.LastIndexByte(line, ' '); i > 0 {
				v, _ := strconv.ParseFloat(line[i+1:], 64)
				n += v
			}
		}
	}
	return n
}

// fiStatus returns what the FI agent last reported.
func (f *fabricProcs) fiStatus() agent.FIStatus {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var a manager.Agent
	if err := f.c.Get(ctx, manager.KindAgents, manager.AgentName(manager.RoleFI, "fi-a"), &a); err != nil {
		return agent.FIStatus{}
	}
	st, _ := agent.FIStatusOf(a)
	return st
}

// stats returns the probe counters of every VM the host agents report,
// keyed by VM id, and where each VM runs.
func (f *fabricProcs) stats() (map[uint32]guest.TrafficStats, map[string]string) {
	st, _ := f.hostStatus()
	out, where := map[uint32]guest.TrafficStats{}, map[string]string{}
	for host, s := range st {
		for _, v := range s.VMs {
			out[v.VEth] = v.Traffic
			where[v.Name] = host + "/" + v.Mode
		}
	}
	return out, where
}

// TestAgentsEndToEnd runs manager, FI and three hosts as separate
// processes, configures them through the CLI, runs traffic, migrates VMs
// with vmotion between host processes over TCP, kills the destination
// host's process in the middle of a migration, kills the manager during
// traffic, and checks through the API that every probe arrived exactly
// once.
func TestAgentsEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	f := newFabricProcs(t)
	f.startManager()

	f.must("fi", "create", "fi-a")
	for i, h := range []string{"esx1", "esx2", "esx3"} {
		f.must("host", "create", h, "--fi", "fi-a", "--server-port", fmt.Sprintf("Ethernet1/%d", i+1),
			"--uplink-addr", freeAddr(t, "udp"), "--fi-addr", freeAddr(t, "udp"))
	}
	f.must("host", "create", "esx4", "--fi", "fi-a", "--server-port", "Ethernet1/4", "--max-vnics", "1")
	f.must("port-profile", "create", "web", "--access-vlan", "100", "--high-performance")
	f.must("port-profile", "create", "lone", "--access-vlan", "300", "--high-performance")
	vm := func(name, host, profile, mac, ip, mem string) {
		f.must("vm", "create", name, "--host", host, "--port-profile", profile, "--mac", mac, "--ip", ip,
			"--mem-mib", mem, "--probe-rate", "300")
	}
	vm("web-1", "esx1", "web", "00:25:b5:00:00:11", "198.18.100.11", "16")
	vm("web-2", "esx2", "web", "00:25:b5:00:00:12", "198.18.100.12", "16")
	vm("web-3", "esx1", "web", "00:25:b5:00:00:13", "198.18.100.13", "16")
	vm("big-1", "esx1", "lone", "00:25:b5:00:00:31", "198.18.30.31", "512")
	vm("lone-3", "esx3", "lone", "00:25:b5:00:00:33", "198.18.30.33", "16")
	vm("stub-4", "esx4", "lone", "00:25:b5:00:00:34", "198.18.30.34", "16")

	fiMetrics, hostMetrics := freeAddr(t, "tcp"), freeAddr(t, "tcp")
	f.start("fi-a", "fi", "run", "fi-a", "--metrics-listen", fiMetrics)
	f.start("esx1", "host", "run", "esx1", "--metrics-listen", hostMetrics)
	for _, h := range []string{"esx2", "esx3"} {
		f.start(h, "host", "run", h)
	}
	f.waitFor("every VM running on its host", func() bool {
		_, where := f.stats()
		return where["web-1"] == "esx1/direct" && where["web-2"] == "esx2/direct" && where["web-3"] == "esx1/direct" &&
			where["big-1"] == "esx1/direct" && where["lone-3"] == "esx3/direct"
	})
	if out := f.must("show", "vm", "stub-4"); !strings.Contains(out, "unknown") {
		t.Errorf("a VM of a host without an agent:\n%s", out)
	}

	f.must("traffic", "start", "web-1", "web-2", "web-3")
	// webVEths are the VMs with probe traffic between them.
	webVEths := map[uint32]bool{32769: true, 32770: true, 32771: true}
	waitFlowing := func(what string) {
		t.Helper()
		base, _ := f.stats()
		f.waitFor(what, func() bool {
			now, _ := f.stats()
			for id := range webVEths {
				for _, p := range now[id].Peers {
					b, _ := base[id].Peer(p.VM)
					if p.Received.Unique <= b.Received.Unique {
						return false
					}
				}
				if len(now[id].Peers) != 2 {
					return false
				}
			}
			return true
		})
	}
	waitFlowing("traffic between the web VMs")

	// vmotion between host processes, there and back, and another VM.
	for _, mv := range [][2]string{{"web-1", "esx2"}, {"web-1", "esx1"}, {"web-2", "esx1"}} {
		out := f.must("vmotion", mv[0], "--to", mv[1])
		if !strings.Contains(out, mv[0]+" now runs on "+mv[1]) || !strings.Contains(out, "emulated_to_vic") {
			t.Errorf("vmotion %s --to %s:\n%s", mv[0], mv[1], out)
		}
		f.waitFor(mv[0]+" reported on "+mv[1], func() bool {
			_, where := f.stats()
			return where[mv[0]] == mv[1]+"/direct"
		})
	}
	waitFlowing("traffic after the migrations")

	// Mode switches through the manager, applied by the host agent live.
	if out := f.must("vnic", "mode", "web-3", "emulated"); !strings.Contains(out, "esx1 runs it emulated") {
		t.Errorf("vnic mode web-3 emulated:\n%s", out)
	}
	waitFlowing("traffic with web-3 emulated")
	if out := f.must("vnic", "mode", "web-3", "direct"); !strings.Contains(out, "esx1 runs it direct") {
		t.Errorf("vnic mode web-3 direct:\n%s", out)
	}

	// A port profile change reaches the vEths using it, live: the QoS
	// class on the FI, and without high performance the VMs' vNICs go to
	// the emulated path (and show vm says why).
	f.must("port-profile", "update", "web", "--qos-class", "platinum", "--high-performance=false")
	f.waitFor("the web VMs emulated, their vEths platinum", func() bool {
		_, where := f.stats()
		fis := f.fiStatus()
		for _, n := range []string{"web-1", "web-2", "web-3"} {
			if !strings.HasSuffix(where[n], "/emulated") {
				return false
			}
		}
		for _, v := range fis.VEths {
			if webVEths[v.ID] && v.QoSClass != "platinum" {
				return false
			}
		}
		return len(fis.VEths) > 0
	})
	if out := f.must("show", "vm", "web-1"); !strings.Contains(out, "emulated (port profile web is not high-performance)") {
		t.Errorf("show vm web-1 after the profile lost high performance:\n%s", out)
	}
	waitFlowing("traffic on the emulated path")
	f.must("port-profile", "update", "web", "--high-performance")
	f.waitFor("the web VMs direct again", func() bool {
		_, where := f.stats()
		return where["web-1"] == "esx1/direct" && where["web-2"] == "esx1/direct" && where["web-3"] == "esx1/direct"
	})

	// Bad requests change nothing.
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"vmotion", "web-3", "--to", "esx9"}, `host "esx9"`},
		{[]string{"vmotion", "web-3", "--to", "esx1"}, "already runs on esx1"},
		{[]string{"vmotion", "web-3", "--to", "esx4"}, "no free dynamic vNIC"},
		{[]string{"vm", "create", "x", "--host", "esx1", "--port-profile", "web", "--mac", "00:25:b5:00:00:11"}, "already used by VM web-1"},
		{[]string{"port-profile", "create", "bad", "--access-vlan", "4095"}, "out of range"},
	} {
		out, err := f.run(bad.args...)
		if err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("vmfex %s: err %v, output %q; want an error with %q", strings.Join(bad.args, " "), err, out, bad.want)
		}
	}

	// The destination host's process dies during a migration: the VM
	// stays on its source, direct, and nothing else is disturbed.
	vmotion := exec.Command(f.exe, "vmotion", "big-1", "--to", "esx3")
	vmotion.Env = f.env
	pr, pw := io.Pipe()
	vmotion.Stdout, vmotion.Stderr = pw, pw
	if err := vmotion.Start(); err != nil {
		t.Fatal(err)
	}
	var vout strings.Builder
	killed, read := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(pr)
		once := false
		for sc.Scan() {
			vout.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), "vic_to_emulated") {
				once = true
				f.kill9("esx3")
				close(killed)
			}
		}
	}()
	verr := vmotion.Wait()
	pw.Close()
	<-read
	select {
	case <-killed:
	case <-time.After(time.Minute):
		t.Fatalf("vmotion never reached the pre-copy:\n%s", vout.String())
	}
	if verr == nil || !strings.Contains(vout.String(), "rolled back") {
		t.Errorf("vmotion to a host that died: err %v\n%s", verr, vout.String())
	}
	f.waitFor("big-1 back on the direct path on esx1", func() bool {
		_, where := f.stats()
		return where["big-1"] == "esx1/direct"
	})
	f.waitFor("lone-3 reported down", func() bool {
		out, _ := f.run("show", "vm", "lone-3")
		return strings.Contains(out, "down")
	})

	// kill -9 of the manager during traffic: forwarding goes on; after a
	// restart every object is there and the agents report again.
	before, _ := f.stats()
	f.kill9("manager")
	// Headless: esx1's guests keep receiving, as its own /metrics (which
	// needs no manager) shows.
	atKill := receivedFrames(hostMetrics)
	f.waitFor("esx1's guests receiving without the manager", func() bool {
		return receivedFrames(hostMetrics) > atKill+1000
	})
	f.startManager()
	out := f.must("show", "vm")
	for _, name := range []string{"web-1", "web-2", "web-3", "big-1", "lone-3", "stub-4"} {
		if !strings.Contains(out, name) {
			t.Errorf("after the manager's restart, show vm lacks %s:\n%s", name, out)
		}
	}
	f.waitFor("the agents reporting to the restarted manager", func() bool {
		after, _ := f.stats()
		for id, st := range after {
			b, ok := before[id]
			if webVEths[id] && (!ok || st.Sent.Frames <= b.Sent.Frames) {
				return false
			}
		}
		return len(after) >= 4
	})

	// The end: every probe arrived exactly once.
	f.must("traffic", "stop")
	var last guest.Summary
	f.waitFor("every frame sent to arrive", func() bool {
		st, _ := f.stats()
		web := map[uint32]guest.TrafficStats{}
		for id, s := range st {
			if webVEths[id] {
				web[id] = s
			}
		}
		if len(web) != 3 {
			return false
		}
		s := guest.Reconcile(web)
		if s.Sent == last.Sent && s.Unique == last.Unique && s.Lost == 0 && s.Sent > 0 {
			return true
		}
		last = s
		time.Sleep(300 * time.Millisecond) // let the next report come
		return false
	})
	t.Logf("probes: sent %d, unique %d, lost %d, duplicated %d, reordered %d", last.Sent, last.Unique, last.Lost, last.Duplicated, last.Reordered)
	if last.Lost != 0 || last.Duplicated != 0 || last.Misdelivered != 0 {
		t.Errorf("probes: %+v; want 0 lost, 0 duplicated", last)
	}
	for addr, want := range map[string][]string{
		fiMetrics: {`vmfex_fi_veth_frames_total{direction="ingress",veth="Veth32769"}`, `vmfex_fi_drops_total{reason=`},
		hostMetrics: {`vmfex_hypervisor_vnic_mode{mode="direct",vm="web-1"} 1`, `vmfex_guest_traffic_frames_total{direction="sent",peer="web-2",vm="web-1"}`,
			`vmfex_migration_total{outcome="succeeded"} 1`, `vmfex_migration_total{outcome="rolled-back"} 1`, `vmfex_migration_phase_seconds_bucket{phase="precopy"`},
	} {
		res, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Errorf("scrape %s: %v", addr, err)
			continue
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		for _, w := range want {
			if !strings.Contains(string(body), w) {
				t.Errorf("metrics at %s lack %s", addr, w)
			}
		}
	}
	if out := f.must("show", "vethernet"); !strings.Contains(out, "In-Frames") {
		t.Errorf("show vethernet without the FI's counters:\n%s", out)
	}
	if out := f.must("show", "mac", "address-table", "--vlan", "100"); strings.Count(out, "Veth") != 3 {
		t.Errorf("show mac address-table --vlan 100:\n%s", out)
	}
	if out := f.must("show", "migration"); strings.Count(out, "succeeded") != 3 || !strings.Contains(out, "rolled-back") ||
		strings.Contains(out, "not confirmed") {
		t.Errorf("show migration:\n%s", out)
	}
}
