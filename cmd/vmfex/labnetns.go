package main

// vmfex lab up --netns: the fabric of a topology file as separate
// processes, each in its own network namespace — the manager (on a Unix
// socket, which every namespace reaches), the FI agent, one host agent per
// host — with each host's uplink a veth pair to the FI's namespace (raw
// Ethernet: tshark on either end shows the VN-Tagged frames) and the host
// agents' migration listeners on a vMotion network (a bridge in a
// namespace of its own).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmfex/vmfex/agent"
	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/lab"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
)

// netnsOpts configure a lab in namespaces.
type netnsOpts struct {
	stateDir string   // sockets, the manager's data, logs, the pid file
	prefix   string   // of every namespace's name, e.g. "vmfex-"
	exe      string   // the vmfex binary the processes run
	env      []string // their environment
}

// defaultNetnsStateDir is where a lab in namespaces keeps its state.
func defaultNetnsStateDir() string { return filepath.Join(os.TempDir(), "vmfex-lab-netns") }

// vmotionNet is the vMotion network's prefix: host i listens on .i+1.
var vmotionNet = netip.MustParsePrefix("10.77.0.0/24")

// netnsLab is a running lab in namespaces.
type netnsLab struct {
	o       netnsOpts
	topo    lab.Topology
	out     io.Writer
	nss     []string // namespaces made, in order
	procs   []*exec.Cmd
	names   []string // of procs
	c       *client.Client
	sock    string
	token   string
	fiNS    string
	hostNS  map[string]string
	fiIf    map[string]string // host -> the FI's end of its veth
	traffic bool
}

// serverPortIf names the FI's end of a host's veth after its server port:
// Ethernet1/3 is e1-3.
func serverPortIf(port string) string {
	return "e" + strings.ReplaceAll(strings.TrimPrefix(port, "Ethernet"), "/", "-")
}

// runLabNetns runs o's topology as processes in namespaces until ctx is
// done (or vmfex lab down signals it), then stops the traffic, checks that
// every probe arrived exactly once, and removes everything it made.
func runLabNetns(ctx context.Context, out io.Writer, o labOpts, no netnsOpts) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("lab up --netns makes network namespaces and veth pairs: run it as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("lab up --netns needs the ip command (iproute2)")
	}
	topo, err := lab.LoadTopology(o.topology)
	if err != nil {
		return err
	}
	if no.exe == "" {
		if no.exe, err = os.Executable(); err != nil {
			return err
		}
	}
	if no.env == nil {
		no.env = os.Environ()
	}
	if err := os.MkdirAll(no.stateDir, 0o700); err != nil {
		return err
	}
	pidFile := filepath.Join(no.stateDir, "lab.pid")
	if pid, ok := runningPid(pidFile); ok {
		return fmt.Errorf("a lab in namespaces already runs (pid %d); stop it with vmfex lab down --netns", pid)
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return err
	}
	defer os.Remove(pidFile)
	l := &netnsLab{o: no, topo: topo, out: out, hostNS: map[string]string{}, fiIf: map[string]string{}, traffic: o.traffic}
	defer func() {
		if cerr := l.teardown(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if err := l.plumb(); err != nil {
		return err
	}
	if err := l.startManager(ctx); err != nil {
		return err
	}
	if err := l.configure(ctx); err != nil {
		return err
	}
	if err := l.startAgents(ctx); err != nil {
		return err
	}
	fmt.Fprintf(out, "vmfex lab: %s up from %s in network namespaces: manager, FI %s (netns %s), %d hosts, %d VMs\n",
		topo.FI, o.topology, topo.FI, l.fiNS, len(topo.Hosts), len(topo.VMs))
	fmt.Fprintf(out, "vmfex lab: export VMFEX_SERVER=unix://%s VMFEX_TOKEN=$(cat %s)\n", l.sock, filepath.Join(no.stateDir, "manager", manager.TokenFileName))
	for _, h := range topo.Hosts {
		fmt.Fprintf(out, "vmfex lab: %s: netns %s, cable %s (netns %s) <-> uplink0; capture with: ip netns exec %s tshark -i %s\n",
			h.Name, l.hostNS[h.Name], l.fiIf[h.Name], l.fiNS, l.fiNS, l.fiIf[h.Name])
	}
	fmt.Fprintf(out, "vmfex lab: logs in %s; stop with vmfex lab down --netns or Ctrl-C\n", no.stateDir)
	<-ctx.Done()
	fmt.Fprintln(out, "vmfex lab: stopping")
	sum, err := l.drain()
	if err != nil {
		return err
	}
	printLabSummary(out, sum, l.traffic)
	cable := l.cableDrops()
	fmt.Fprintf(out, "vmfex lab: the veth cables dropped %d frames (socket receive overruns, link down, runts; counted by the agents' ports)\n", cable)
	if sum.Duplicated != 0 || sum.Misdelivered != 0 || sum.Lost > int64(cable) {
		return fmt.Errorf("frames lost %d (the cables dropped %d), duplicated %d, misdelivered %d", sum.Lost, cable, sum.Duplicated, sum.Misdelivered)
	}
	return nil
}

// runningPid returns the pid in file if that process still runs.
func runningPid(file string) (int, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, syscall.Kill(pid, 0) == nil
}

// plumb makes the namespaces, the veth pair of every host to the FI and
// the vMotion network.
func (l *netnsLab) plumb() error {
	p := l.o.prefix
	l.fiNS = p + l.topo.FI
	vmo := p + "vmotion"
	for _, ns := range []string{l.fiNS, vmo} {
		if err := l.addNS(ns); err != nil {
			return err
		}
	}
	if err := runIP("-n", vmo, "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	if err := runIP("-n", vmo, "link", "set", "br0", "up"); err != nil {
		return err
	}
	for i, h := range l.topo.Hosts {
		ns := p + h.Name
		if err := l.addNS(ns); err != nil {
			return err
		}
		l.hostNS[h.Name] = ns
		l.fiIf[h.Name] = serverPortIf(h.ServerPort)
		if err := link.SetupVethPair(l.fiNS, l.fiIf[h.Name], ns, "uplink0", 0); err != nil {
			return err
		}
		side := "h" + strconv.Itoa(i)
		if err := link.SetupVethPair(vmo, side, ns, "vmotion0", 0); err != nil {
			return err
		}
		if err := runIP("-n", vmo, "link", "set", side, "master", "br0"); err != nil {
			return err
		}
		addr := netip.PrefixFrom(l.vmotionAddr(i), vmotionNet.Bits())
		if err := runIP("-n", ns, "addr", "add", addr.String(), "dev", "vmotion0"); err != nil {
			return err
		}
		if err := runIP("-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	return nil
}

func (l *netnsLab) vmotionAddr(i int) netip.Addr {
	a := vmotionNet.Addr().As4()
	a[3] = byte(i + 1)
	return netip.AddrFrom4(a)
}

func (l *netnsLab) addNS(ns string) error {
	created, err := link.AddNetns(ns)
	if err != nil {
		return err
	}
	if !created {
		return fmt.Errorf("network namespace %s exists already: another lab runs, or one was not cleaned up (ip netns delete %s)", ns, ns)
	}
	l.nss = append(l.nss, ns)
	return nil
}

func runIP(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// start runs vmfex args... in namespace ns ("" for this one), logging to
// name.log in the state directory.
func (l *netnsLab) start(name, ns string, args ...string) error {
	lf, err := os.OpenFile(filepath.Join(l.o.stateDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	var cmd *exec.Cmd
	if ns == "" {
		cmd = exec.Command(l.o.exe, args...)
	} else {
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns, l.o.exe}, args...)...)
	}
	cmd.Env = append(append([]string(nil), l.o.env...), "VMFEX_SERVER=unix://"+l.sock, "VMFEX_TOKEN="+l.token)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	l.procs = append(l.procs, cmd)
	l.names = append(l.names, name)
	return nil
}

func (l *netnsLab) startManager(ctx context.Context) error {
	l.sock = filepath.Join(l.o.stateDir, "manager.sock")
	dataDir := filepath.Join(l.o.stateDir, "manager")
	os.RemoveAll(dataDir) // a lab starts from its topology file
	if err := l.start("manager", "", "manager", "--data-dir", dataDir, "--listen", "unix:"+l.sock); err != nil {
		return err
	}
	tokenFile := filepath.Join(dataDir, manager.TokenFileName)
	return waitUntil(ctx, "the manager", func() bool {
		tok, err := manager.LoadToken(tokenFile)
		if err != nil {
			return false
		}
		c, err := client.New("unix://"+l.sock, tok)
		if err != nil {
			return false
		}
		var fis []manager.FabricInterconnect
		if _, err := c.List(ctx, manager.KindFabricInterconnects, &fis); err != nil {
			return false
		}
		l.c, l.token = c, tok
		return true
	})
}

// waitUntil polls cond every 20 ms for up to two minutes.
func waitUntil(ctx context.Context, what string, cond func() bool) error {
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for %s", what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// configure writes the topology into the manager.
func (l *netnsLab) configure(ctx context.Context) error {
	t := l.topo
	if err := l.c.Create(ctx, manager.KindFabricInterconnects, &manager.FabricInterconnect{Name: t.FI}, nil); err != nil {
		return err
	}
	for _, h := range t.Hosts {
		if err := l.c.Create(ctx, manager.KindHosts, &manager.Host{Name: h.Name, FI: t.FI, ServerPort: h.ServerPort,
			UplinkIf: "uplink0", FIIf: l.fiIf[h.Name]}, nil); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
	}
	for _, pp := range t.Profiles {
		if err := l.c.Create(ctx, manager.KindPortProfiles, managerProfile(pp), nil); err != nil {
			return fmt.Errorf("port profile %s: %w", pp.Name, err)
		}
	}
	rate := int(t.Traffic.Rate)
	if rate == 0 {
		rate = manager.DefaultProbeRate // agents pace their probes
	}
	for _, v := range t.VMs {
		mem := int(v.MemSize >> 20)
		if mem == 0 {
			mem = lab.DefaultVMMemory >> 20
		}
		g := v.Guest
		if g == "" {
			g = lab.GuestProbe
		}
		vm := manager.VM{Name: v.Name, Host: v.Host, PortProfile: v.Profile, MAC: v.MAC.String(),
			IP: netip.AddrFrom4(v.IP).String(), MemMiB: mem, ProbeRate: rate, ProbeFrameLen: t.Traffic.FrameLen,
			Guest: g} // traffic starts once every VM runs (startAgents)
		if err := l.c.Create(ctx, manager.KindVMs, &vm, nil); err != nil {
			return fmt.Errorf("VM %s: %w", v.Name, err)
		}
	}
	return nil
}

// managerProfile is the manager's form of a topology's port profile.
func managerProfile(pp fabric.PortProfile) *manager.PortProfile {
	p := &manager.PortProfile{Name: pp.Name, QoSClass: pp.QoSClass, MaxPorts: pp.MaxPorts, HighPerformance: pp.HighPerformance, MACForging: "deny"}
	if pp.AllowForgedMAC {
		p.MACForging = "allow"
	}
	if p.MaxPorts == 0 {
		p.MaxPorts = manager.MaxMaxPorts // 0 is unlimited in a topology file
	}
	if pp.Mode == fabric.ModeTrunk {
		p.Mode = "trunk"
		for _, v := range pp.AllowedVLANs {
			p.AllowedVLANs = append(p.AllowedVLANs, int(v))
		}
		p.NativeVLAN = int(pp.NativeVLAN)
	} else {
		p.Mode, p.AccessVLAN = "access", int(pp.AccessVLAN)
	}
	return p
}

func (l *netnsLab) startAgents(ctx context.Context) error {
	if err := l.start("fi-"+l.topo.FI, l.fiNS, "fi", "run", l.topo.FI,
		"--control-listen", "unix:"+filepath.Join(l.o.stateDir, "fi.sock")); err != nil {
		return err
	}
	for i, h := range l.topo.Hosts {
		if err := l.start("host-"+h.Name, l.hostNS[h.Name], "host", "run", h.Name,
			"--migration-listen", netip.AddrPortFrom(l.vmotionAddr(i), 7000).String()); err != nil {
			return err
		}
	}
	err := waitUntil(ctx, "every VM running", func() bool {
		running := 0
		for _, st := range l.hostStatus() {
			running += len(st.VMs)
		}
		return running == len(l.topo.VMs)
	})
	if err != nil || !l.traffic {
		return err
	}
	// Probes start once every VM's vEth exists: before, a probe to a peer
	// the FI does not know yet would be dropped (no destination).
	return l.setTraffic(ctx, true)
}

// setTraffic switches every VM's probes on or off.
func (l *netnsLab) setTraffic(ctx context.Context, on bool) error {
	var vms []manager.VM
	if _, err := l.c.List(ctx, manager.KindVMs, &vms); err != nil {
		return err
	}
	for _, v := range vms {
		v.Traffic = on
		if err := l.c.Update(ctx, manager.KindVMs, v.Name, &v, nil); err != nil {
			return err
		}
	}
	return nil
}

func (l *netnsLab) hostStatus() map[string]agent.HostStatus {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var agents []manager.Agent
	if _, err := l.c.List(ctx, manager.KindAgents, &agents); err != nil {
		return nil
	}
	out := map[string]agent.HostStatus{}
	for _, a := range agents {
		if a.Role == manager.RoleHost && a.Up(time.Now()) {
			if st, err := agent.HostStatusOf(a); err == nil {
				out[a.Object] = st
			}
		}
	}
	return out
}

// drain stops the probes and waits until the host agents' reports show
// every probe sent arrived, or stop changing; it returns the accounting.
func (l *netnsLab) drain() (guest.Summary, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := l.setTraffic(ctx, false); err != nil {
		return guest.Summary{}, err
	}
	var last guest.Summary
	stable := 0
	for stable < 3 {
		all := map[uint32]guest.TrafficStats{}
		for _, st := range l.hostStatus() {
			for _, v := range st.VMs {
				if v.Guest == "" || v.Guest == lab.GuestProbe {
					all[v.VEth] = v.Traffic
				}
			}
		}
		s := guest.Reconcile(all)
		if s.Sent == last.Sent && s.Unique == last.Unique {
			stable++
		} else {
			stable = 0
		}
		last = s
		if s.Lost == 0 && stable >= 2 {
			break
		}
		select {
		case <-ctx.Done():
			return last, nil
		case <-time.After(manager.AgentHeartbeat):
		}
	}
	return last, nil
}

// teardown stops the processes (agents first, the manager last) and
// removes the namespaces; their veths go with them.
func (l *netnsLab) teardown() error {
	for i := len(l.procs) - 1; i >= 0; i-- {
		stopProcess(l.procs[i], 30*time.Second)
	}
	var errs []error
	for i := len(l.nss) - 1; i >= 0; i-- {
		if err := link.DeleteNetns(l.nss[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if l.sock != "" {
		os.Remove(l.sock)
	}
	os.Remove(filepath.Join(l.o.stateDir, "fi.sock"))
	return errors.Join(errs...)
}

// labDownNetns stops the lab in namespaces whose pid file is in stateDir.
func labDownNetns(ctx context.Context, out io.Writer, stateDir string) error {
	pid, ok := runningPid(filepath.Join(stateDir, "lab.pid"))
	if !ok {
		return fmt.Errorf("no lab in namespaces runs (no live pid in %s)", filepath.Join(stateDir, "lab.pid"))
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return err
	}
	err := waitUntil(ctx, "the lab to stop", func() bool { return syscall.Kill(pid, 0) != nil })
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, "lab stopped; its summary is in the output of vmfex lab up --netns")
	return err
}

// cableDrops returns the frames the raw-Ethernet cables dropped, as the
// agents' ports counted them: unlike the in-memory cables these are lossy,
// as Ethernet without a no-drop class is.
func (l *netnsLab) cableDrops() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var agents []manager.Agent
	if _, err := l.c.List(ctx, manager.KindAgents, &agents); err != nil {
		return 0
	}
	var n uint64
	for _, a := range agents {
		switch a.Role {
		case manager.RoleHost:
			if st, err := agent.HostStatusOf(a); err == nil {
				n += st.Uplink.Drops
			}
		case manager.RoleFI:
			if st, err := agent.FIStatusOf(a); err == nil {
				for _, p := range st.Ports {
					n += p.Stats.Link.Drops
				}
			}
		}
	}
	return n
}

// stopProcess asks p to stop (SIGTERM), gives it grace to do so, then kills
// it, and reaps it.
func stopProcess(p *exec.Cmd, grace time.Duration) {
	p.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		p.Process.Kill()
		<-done
	}
}
