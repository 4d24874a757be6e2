package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/lab"
	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
	"github.com/vmfex/vmfex/metrics"
	"github.com/vmfex/vmfex/wire"
)

// HostConfig configures a host agent.
type HostConfig struct {
	Name    string         // the host object's name
	Manager *client.Client // the manager
	Token   string         // the manager's token (the FI's control API takes it too)
	// TLS are the certificate files the agent presents to the FI agent's
	// control API when it serves TLS (the same as for the manager).
	TLS client.TLSFiles
	// MigrationListen is the migration listener's address (default
	// 127.0.0.1:0).
	MigrationListen string
	Reconcile       time.Duration // default DefaultReconcile
	Logger          *slog.Logger
}

// HostAgent runs a host for the manager: its adapter, cabled to the FI
// over UDP, its VEM, its VMs, and their migrations in and out.
type HostAgent struct {
	cfg  HostConfig
	log  *slog.Logger
	Host *lab.Host
	obj  manager.Host
	ln   net.Listener

	mu         sync.Mutex
	fc         *FIClient                  // the FI agent's control API; guarded by mu
	fcURL      string                     // guarded by mu
	vms        map[string]*lab.VM         // running here; guarded by mu
	traffic    map[string]bool            // probe switch as last applied; guarded by mu
	moving     map[string]bool            // migrating out; guarded by mu
	movedOut   map[string]string          // VM -> the host it left for, until the manager says so; guarded by mu
	incoming   int                        // migrations coming in; guarded by mu
	jobs       map[string]bool            // migrations taken; guarded by mu
	migrations *metrics.MigrationObserver // the migrations of this host's VMs, for /metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartHost starts a host agent. It waits for the manager to know the host
// (with its cable addresses), then builds the adapter and runs.
func StartHost(ctx context.Context, cfg HostConfig) (*HostAgent, error) {
	if cfg.Reconcile == 0 {
		cfg.Reconcile = DefaultReconcile
	}
	if cfg.MigrationListen == "" {
		cfg.MigrationListen = "127.0.0.1:0"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &HostAgent{cfg: cfg, log: log.With("host", cfg.Name), vms: map[string]*lab.VM{}, traffic: map[string]bool{},
		moving: map[string]bool{}, movedOut: map[string]string{}, jobs: map[string]bool{}, migrations: metrics.NewMigrationObserver()}
	for {
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := cfg.Manager.Get(gctx, manager.KindHosts, cfg.Name, &a.obj)
		cancel()
		if err == nil && a.obj.UplinkIf == "" && (a.obj.UplinkAddr == "" || a.obj.FIAddr == "") {
			err = fmt.Errorf("host %s has no cable; set --uplink-addr and --fi-addr (UDP) or --uplink-if and --fi-if (veth) with vmfex host create", cfg.Name)
		}
		if err == nil {
			break
		}
		a.log.Warn("waiting for the manager to know this host", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	up, err := hostCable(a.obj)
	if err != nil {
		return nil, fmt.Errorf("host agent: uplink cable: %w", err)
	}
	a.Host = lab.NewHost(cfg.Name, a.obj.ServerPort, up, a.log)
	a.Host.Adapter.Start()
	ln, err := net.Listen("tcp", cfg.MigrationListen)
	if err != nil {
		a.Host.Adapter.Close()
		return nil, fmt.Errorf("host agent: migration listener on %s: %w", cfg.MigrationListen, err)
	}
	a.ln = ln
	a.ctx, a.cancel = context.WithCancel(ctx)
	a.wg.Add(2)
	go a.acceptLoop()
	go a.loop()
	a.log.Info("host agent running", "server_port", a.obj.ServerPort, "cable", cableName(a.obj), "migration", ln.Addr().String())
	return a, nil
}

// MigrationAddr is the migration listener's address.
func (a *HostAgent) MigrationAddr() string { return a.ln.Addr().String() }

// Close stops the agent, its VMs and its adapter.
func (a *HostAgent) Close() error {
	a.cancel()
	a.ln.Close()
	a.wg.Wait()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, vm := range a.vms {
		vm.Teardown()
	}
	return a.Host.Adapter.Close()
}

func (a *HostAgent) loop() {
	defer a.wg.Done()
	reconcileLoop(a.ctx, a.log, a.cfg.Manager, []string{manager.KindVMs, manager.KindPortProfiles, manager.KindMigrations, manager.KindAgents},
		a.cfg.Reconcile, a.reconcile, a.report)
}

// desired is one reconcile's view of the manager.
type desired struct {
	vms      map[string]manager.VM
	profiles map[string]manager.PortProfile
	hosts    map[string]manager.Host
	agents   map[string]manager.Agent
	migs     []manager.Migration
}

func (a *HostAgent) fetch(ctx context.Context) (*desired, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var vms []manager.VM
	var profiles []manager.PortProfile
	var hosts []manager.Host
	var agents []manager.Agent
	d := &desired{vms: map[string]manager.VM{}, profiles: map[string]manager.PortProfile{},
		hosts: map[string]manager.Host{}, agents: map[string]manager.Agent{}}
	m := a.cfg.Manager
	for _, l := range []struct {
		kind string
		out  any
	}{{manager.KindVMs, &vms}, {manager.KindPortProfiles, &profiles}, {manager.KindHosts, &hosts},
		{manager.KindAgents, &agents}, {manager.KindMigrations, &d.migs}} {
		if _, err := m.List(ctx, l.kind, l.out); err != nil {
			return nil, err
		}
	}
	for _, v := range vms {
		d.vms[v.Name] = v
	}
	for _, p := range profiles {
		d.profiles[p.Name] = p
	}
	for _, h := range hosts {
		d.hosts[h.Name] = h
	}
	for _, ag := range agents {
		d.agents[ag.Name] = ag
	}
	return d, nil
}

func (a *HostAgent) reconcile(ctx context.Context) error {
	d, err := a.fetch(ctx)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if fa, ok := d.agents[manager.AgentName(manager.RoleFI, a.obj.FI)]; ok && fa.ControlURL != a.fcURL {
		fc, err := NewFIClient(fa.ControlURL, a.cfg.Token, a.cfg.TLS)
		if err != nil {
			return err
		}
		a.fc, a.fcURL = fc, fa.ControlURL
	}
	// A VM that left: tell the manager where it runs now.
	for name, to := range a.movedOut {
		v, ok := d.vms[name]
		if !ok || v.Host == to {
			delete(a.movedOut, name)
			continue
		}
		v.Host = to
		uctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := a.cfg.Manager.Update(uctx, manager.KindVMs, name, &v, nil)
		cancel()
		if err != nil {
			a.log.Warn("cannot record the VM's new host yet", "vm", name, "host", to, "err", err)
		}
	}
	// VMs deleted in the manager go away.
	for name, vm := range a.vms {
		if _, ok := d.vms[name]; !ok && !a.moving[name] {
			vm.Teardown()
			delete(a.vms, name)
			a.log.Info("VM removed: deleted in the manager", "vm", name)
		}
	}
	for name, v := range d.vms {
		vm := a.vms[name]
		if vm == nil {
			// Boot the VMs placed here, but never a second copy of one
			// that is arriving or that left and whose move the manager
			// has not recorded yet.
			if v.Host != a.cfg.Name || a.incoming > 0 || a.movedOut[name] != "" || a.fc == nil {
				continue
			}
			if err := a.boot(v, d); err != nil {
				a.log.Error("VM not started", "vm", name, "err", err)
			}
			continue
		}
		if a.moving[name] {
			continue
		}
		if on := v.Traffic; a.traffic[name] != on && vm.Traffic != nil {
			if on {
				vm.Traffic.Start(vm.Memory())
			} else {
				vm.Traffic.Stop(vm.Memory())
			}
			a.traffic[name] = on
		}
		// A profile's VLAN change reaches the adapter live.
		if vlan := vlanOf(d.profiles[v.PortProfile]); vlan != vm.VLAN {
			a.Host.Adapter.SetVifVLAN(vm.Vif, vlan)
			vm.VLAN = vlan
		}
		want := wantMode(v, d.profiles[v.PortProfile])
		if vm.Mode() != want {
			if _, err := vm.SwitchMode(ctx, want); err != nil {
				a.log.Error("mode switch", "vm", name, "to", want, "err", err)
			}
		}
	}
	// Migrations of VMs that run here.
	for _, mg := range d.migs {
		if mg.State != manager.MigrationPending || a.jobs[mg.Name] || a.vms[mg.VM] == nil || a.moving[mg.VM] {
			continue
		}
		a.jobs[mg.Name] = true
		a.moving[mg.VM] = true
		a.wg.Add(1)
		go a.migrate(mg, d)
	}
	return nil
}

// wantMode is the mode a VM's vNIC should run in: direct only when asked
// for and its profile is high-performance.
func wantMode(v manager.VM, p manager.PortProfile) hypervisor.Mode {
	if v.ModeRequested == "direct" && p.HighPerformance {
		return hypervisor.ModeDirect
	}
	return hypervisor.ModeEmulated
}

// vlanOf is the VLAN of a VM's untagged frames under profile p.
func vlanOf(p manager.PortProfile) uint16 {
	if p.Mode == "trunk" {
		return uint16(p.NativeVLAN)
	}
	return uint16(p.AccessVLAN)
}

// VMConfig returns the lab configuration of the manager's VM v: its probe
// peers are the VMs of its VLAN now.
func VMConfig(v manager.VM, vms map[string]manager.VM, profiles map[string]manager.PortProfile) (lab.VMConfig, error) {
	mac, err := wire.ParseMAC(v.MAC)
	if err != nil {
		return lab.VMConfig{}, err
	}
	ip, err := ipv4(v.IP)
	if err != nil {
		return lab.VMConfig{}, fmt.Errorf("VM %s: %w", v.Name, err)
	}
	vlan := vlanOf(profiles[v.PortProfile])
	guestProg := v.Guest
	if guestProg == "" {
		guestProg = lab.GuestProbe
	}
	c := lab.VMConfig{
		Spec: lab.VMSpec{Name: v.Name, Host: v.Host, Profile: v.PortProfile, MAC: mac, IP: ip, MemSize: uint64(v.MemMiB) << 20, Guest: guestProg},
		ID:   uint32(v.VEth), VEth: uint32(v.VEth), Vif: uint16(v.Vif), VLAN: vlan,
		Traffic: lab.TrafficSpec{FrameLen: v.ProbeFrameLen, Rate: uint64(v.ProbeRate)},
	}
	var names []string
	for n := range vms {
		names = append(names, n)
	}
	slicesSort(names)
	for _, n := range names {
		o := vms[n]
		// Probes go between probe VMs; a Linux guest runs its own programs.
		if o.Name == v.Name || vlanOf(profiles[o.PortProfile]) != vlan || !isProbe(o) || !isProbe(v) {
			continue
		}
		omac, err := wire.ParseMAC(o.MAC)
		if err != nil {
			continue
		}
		oip, _ := ipv4(o.IP)
		c.Peers = append(c.Peers, guest.TrafficPeer{VM: uint32(o.VEth), MAC: omac, IP: oip})
	}
	return c, nil
}

func isProbe(v manager.VM) bool { return v.Guest == "" || v.Guest == lab.GuestProbe }

func ipv4(s string) ([4]byte, error) {
	if s == "" {
		return [4]byte{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return [4]byte{}, fmt.Errorf("probe workload needs an IPv4 address, not %q", s)
	}
	return a.As4(), nil
}

// boot starts the manager's VM v here: the vNIC comes up, the FI creates
// its vEth, the VM runs.
func (a *HostAgent) boot(v manager.VM, d *desired) error {
	c, err := VMConfig(v, d.vms, d.profiles)
	if err != nil {
		return err
	}
	vm, err := a.Host.AttachVM(c, guest.DefaultDriverConfig())
	if err != nil {
		return err
	}
	if err := a.fc.Attach(c.VEth, AttachRequest{ServerPort: a.obj.ServerPort, Vif: c.Vif, MAC: v.MAC,
		Profile: v.PortProfile, Description: v.Name + " vNIC 1"}); err != nil {
		vm.Teardown()
		return fmt.Errorf("the FI did not attach Veth%d: %w", c.VEth, err)
	}
	vm.Port.Start()
	if err := vm.Start(); err != nil {
		vm.Teardown()
		return err
	}
	a.vms[v.Name] = vm
	a.traffic[v.Name] = false
	a.log.Info("VM started", "vm", v.Name, "veth", c.VEth, "vif", c.Vif, "peers", len(c.Peers))
	return nil
}

// migrate runs migration mg of a VM of this host, and reports it.
func (a *HostAgent) migrate(mg manager.Migration, d *desired) {
	defer a.wg.Done()
	a.mu.Lock()
	vm, fc := a.vms[mg.VM], a.fc
	a.mu.Unlock()
	rep := newJobReporter(a.ctx, a.cfg.Manager, mg)
	defer rep.close()
	var report lab.MigrationReport
	rep.update(func(m *manager.Migration) { m.State = manager.MigrationRunning })

	err := func() error {
		dst, ok := d.hosts[mg.To]
		if !ok {
			return fmt.Errorf("no host %s", mg.To)
		}
		ag, ok := d.agents[manager.AgentName(manager.RoleHost, mg.To)]
		if !ok || !ag.Up(time.Now()) || ag.MigrationAddr == "" {
			return fmt.Errorf("the agent of host %s is not running; start vmfex host run %s", mg.To, mg.To)
		}
		o := lab.MigrateOptions{Progress: func(p lab.MigrationPhase) {
			rep.update(func(m *manager.Migration) {
				m.Phases = append(m.Phases, manager.MigrationPhase(p))
			})
		}}
		if mg.Fault != "" {
			kind, phase, _ := strings.Cut(mg.Fault, "@")
			switch kind {
			case "refuse":
				o.Fault = lab.FaultRefuse
			case "cut":
				o.Fault = lab.FaultCut
			default:
				return fmt.Errorf("fault %q: use refuse@PHASE or cut@PHASE", mg.Fault)
			}
			o.FaultPhase = phase
		}
		var dialer net.Dialer
		dctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		conn, err := dialer.DialContext(dctx, "tcp", ag.MigrationAddr)
		cancel()
		if err != nil {
			return fmt.Errorf("%w: cannot reach host %s's migration listener: %w", lab.ErrRolledBack, mg.To, err)
		}
		r, err := lab.MigrateOut(a.ctx, vm, fc, conn, mg.To, dst.ServerPort, o)
		report = r
		rep.update(func(m *manager.Migration) {
			m.TotalMs, m.DowntimeMs, m.PrecopyRounds, m.BytesTransferred = r.TotalMs, r.DowntimeMs, r.PrecopyRounds, r.BytesTransferred
			m.CableLossAtFreeze = r.CableLossAtFreeze
		})
		return err
	}()
	a.mu.Lock()
	delete(a.moving, mg.VM)
	moved := err == nil || errors.Is(err, lab.ErrNotDirect)
	if moved {
		delete(a.vms, mg.VM)
		delete(a.traffic, mg.VM)
		a.movedOut[mg.VM] = mg.To
	}
	a.mu.Unlock()
	state := manager.MigrationFailed
	switch {
	case moved:
		state = manager.MigrationSucceeded
	case errors.Is(err, lab.ErrRolledBack):
		state = manager.MigrationRolledBack
	}
	a.migrations.Observe(report, state)
	rep.update(func(m *manager.Migration) {
		m.State = state
		if err != nil {
			m.Error = err.Error()
		}
	})
	a.log.Info("migration ended", "migration", mg.Name, "vm", mg.VM, "to", mg.To, "err", err)
}

func (a *HostAgent) acceptLoop() {
	defer a.wg.Done()
	for {
		conn, err := a.ln.Accept()
		if err != nil {
			return
		}
		a.mu.Lock()
		fc := a.fc
		a.incoming++
		a.mu.Unlock()
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			var in *lab.VM
			var err error
			if fc == nil {
				err = errors.New("the FI agent is not known yet")
				conn.Close()
			} else {
				in, err = lab.ServeIncoming(a.ctx, conn, a.Host, fc)
			}
			a.mu.Lock()
			a.incoming--
			if in != nil {
				a.vms[in.Name()] = in
				a.traffic[in.Name()] = in.Traffic != nil && !in.Traffic.Stopped(in.Memory())
			}
			a.mu.Unlock()
			if err != nil {
				a.log.Warn("incoming migration failed", "err", err, "runs_here", in != nil)
			} else {
				a.log.Info("VM arrived", "vm", in.Name())
			}
		}()
	}
}
