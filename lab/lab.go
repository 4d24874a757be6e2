// Package lab assembles a whole fabric from a topology: one Fabric
// Interconnect, hosts with their VIC adapters cabled to the FI's server
// ports, port profiles, and VMs whose dynamic vNICs become vEths. This
// version runs everything in one process over in-memory cables.
//
// Goroutines: Start runs the FI's port readers, each adapter's engines and
// each VM's vCPU; Close stops them all. A Lab's methods are safe for
// concurrent use after Build.
package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vem"
	"github.com/vmfex/vmfex/vic"
	"github.com/vmfex/vmfex/wire"
)

// Topology describes a fabric.
type Topology struct {
	FI       string                         // FI name, e.g. "fi-a"
	Profiles []fabric.PortProfile           // port profiles
	Hosts    []HostSpec                     // hosts, each cabled to its own server port
	VMs      []VMSpec                       // VMs and where they run
	Traffic  TrafficSpec                    // what the VMs send
	Driver   guest.DriverConfig             // guest driver rings (zero: defaults)
	Logger   *slog.Logger                   // nil: discard
	Tap      func(host string) link.TapFunc // optional capture of a host's server-port cable
}

// HostSpec is one server with its adapter.
type HostSpec struct {
	Name       string // e.g. "esx1"
	ServerPort string // FI port, e.g. "Ethernet1/1"
}

// VMSpec is one VM with one vNIC.
type VMSpec struct {
	Name    string
	Host    string
	Profile string
	MAC     wire.MAC
	IP      [4]byte
	MemSize uint64 // default 8 MiB
	Guest   string // guest program: "" or "probe" (probe traffic), "linux" (guest_linux.go)
}

// TrafficSpec is the probe traffic every VM runs to every other VM in its
// VLAN.
type TrafficSpec struct {
	FrameLen int    // bytes per frame, without FCS (default 64)
	Rate     uint64 // frames/s to each peer; 0 = as fast as the ring allows
}

// Lab is a built fabric.
type Lab struct {
	topo  Topology
	FI    *fabric.FI
	hosts []*Host
	vms   []*VM
	log   *slog.Logger

	mu      sync.Mutex // guards started, closed and a migrating VM's fields
	started bool
	closed  bool

	migrating sync.Mutex // one migration at a time
}

// VM is a built VM with its fabric identity.
type VM struct {
	*hypervisor.VM
	Host    *Host
	VEth    uint32
	Vif     uint16
	Profile string
	VLAN    uint16
	IP      [4]byte
	Traffic *guest.Traffic
	VNIC    *vic.VNIC
	Port    *vem.Port

	cfg VMConfig // what it was built from; travels with it in a migration
}

// vifProgrammer lets the FI program an adapter's vifs (fabric cannot import
// vic, nor vic fabric).
type vifProgrammer struct{ a *vic.Adapter }

func (p vifProgrammer) ProgramVif(vif uint16, cfg fabric.VifConfig) {
	p.a.SetVifVLAN(vif, cfg.DefaultVLAN)
}
func (p vifProgrammer) RemoveVif(vif uint16) { p.a.SetVifVLAN(vif, 0) }

// FirstDynamicVEth is the number UCS Manager gives the first dynamic vEth.
const FirstDynamicVEth = 32769

// isProbe reports whether the VM runs the probe workload.
func isProbe(vs VMSpec) bool { return vs.Guest == "" || vs.Guest == GuestProbe }

// vlanOf returns the VLAN a VM's untagged frames belong to.
func vlanOf(pp fabric.PortProfile) uint16 {
	if pp.Mode == fabric.ModeTrunk {
		return pp.NativeVLAN
	}
	return pp.AccessVLAN
}

// Build creates the FI, hosts, adapters, vEths and VMs of t, cabled in
// memory. Nothing runs until Start.
func Build(t Topology) (*Lab, error) {
	log := t.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if t.Driver.TxRingSize == 0 {
		t.Driver = guest.DefaultDriverConfig()
	}
	if t.Traffic.FrameLen == 0 {
		t.Traffic.FrameLen = 64
	}
	l := &Lab{topo: t, log: log}
	l.FI = fabric.New(fabric.Config{Name: t.FI, Logger: log})
	for _, pp := range t.Profiles {
		if err := l.FI.SetPortProfile(pp); err != nil {
			return nil, err
		}
	}
	hosts := map[string]*Host{}
	for _, hs := range t.Hosts {
		if _, dup := hosts[hs.Name]; dup {
			return nil, fmt.Errorf("lab: host %q defined twice", hs.Name)
		}
		fiEnd, hostEnd := link.NewMemCable(0)
		var up link.Port = hostEnd
		if t.Tap != nil {
			if fn := t.Tap(hs.Name); fn != nil {
				up = link.NewTap(hostEnd, fn)
			}
		}
		h := NewHost(hs.Name, hs.ServerPort, up, log)
		if err := l.FI.AddServerPort(hs.ServerPort, fiEnd, h.VifProgrammer()); err != nil {
			return nil, err
		}
		hosts[hs.Name] = h
		l.hosts = append(l.hosts, h)
	}
	// Peers: every other VM in the same VLAN.
	vlans := map[string]uint16{}
	for _, vs := range t.VMs {
		pp, ok := l.FI.PortProfile(vs.Profile)
		if !ok {
			return nil, fmt.Errorf("lab: VM %s: no port profile %q", vs.Name, vs.Profile)
		}
		vlans[vs.Name] = vlanOf(pp)
	}
	for i, vs := range t.VMs {
		h, ok := hosts[vs.Host]
		if !ok {
			return nil, fmt.Errorf("lab: VM %s: no host %q", vs.Name, vs.Host)
		}
		id := uint32(i + 1)
		var peers []guest.TrafficPeer
		for j, o := range t.VMs {
			// Probes go between probe VMs; a Linux guest runs its own
			// programs.
			if j != i && vlans[o.Name] == vlans[vs.Name] && isProbe(o) && isProbe(vs) {
				peers = append(peers, guest.TrafficPeer{VM: uint32(j + 1), MAC: o.MAC, IP: o.IP})
			}
		}
		vm, err := l.buildVM(h, vs, id, vlans[vs.Name], peers)
		if err != nil {
			return nil, err
		}
		l.vms = append(l.vms, vm)
	}
	return l, nil
}

func (l *Lab) buildVM(h *Host, vs VMSpec, id uint32, vlan uint16, peers []guest.TrafficPeer) (*VM, error) {
	// The vif is the VM's on every host, as its vEth is: a migration's
	// destination gives its vNIC the same one.
	c := VMConfig{Spec: vs, ID: id, VEth: uint32(FirstDynamicVEth + len(l.vms)), Vif: uint16(id),
		VLAN: vlan, Peers: peers, Traffic: l.topo.Traffic}
	vm, err := h.AttachVM(c, l.topo.Driver)
	if err != nil {
		return nil, err
	}
	if err := l.FI.CreateVEth(fabric.VEthConfig{
		ID: vm.VEth, ServerPort: h.ServerPort, VIF: vm.Vif, MAC: vs.MAC, Profile: vs.Profile,
		Description: vs.Name + " vNIC 1",
	}); err != nil {
		return nil, err
	}
	return vm, nil
}

// Start runs the FI, the adapters and every VM (drivers come up; traffic
// stays off until StartTraffic).
func (l *Lab) Start() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.started {
		return nil
	}
	l.started = true
	if err := l.FI.Start(); err != nil {
		return err
	}
	for _, h := range l.hosts {
		h.Adapter.Start()
	}
	for _, vm := range l.vms {
		vm.Port.Start()
		if err := vm.Start(); err != nil {
			return err
		}
	}
	return nil
}

// VMs returns the lab's VMs in topology order.
func (l *Lab) VMs() []*VM { return l.vms }

// Hosts returns the lab's hosts.
func (l *Lab) Hosts() []*Host { return l.hosts }

// StartTraffic switches every VM's generator on.
func (l *Lab) StartTraffic() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, vm := range l.vms {
		if vm.Traffic != nil { // a Linux guest has no probe generator
			vm.Traffic.Start(vm.Memory())
		}
	}
}

// StopTraffic switches every VM's generator off.
func (l *Lab) StopTraffic() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, vm := range l.vms {
		if vm.Traffic != nil {
			vm.Traffic.Stop(vm.Memory())
		}
	}
}

// Stats returns every VM's traffic counters, keyed by VM id.
func (l *Lab) Stats() map[uint32]guest.TrafficStats {
	out := make(map[uint32]guest.TrafficStats, len(l.vms))
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, vm := range l.vms {
		if vm.Traffic != nil {
			out[vm.ID()] = vm.Traffic.Stats(vm.Memory())
		}
	}
	return out
}

// ErrDrainTimeout is returned by Drain when frames stay in flight.
var ErrDrainTimeout = errors.New("lab: frames still in flight")

// Drain waits, after StopTraffic, until every frame sent has arrived (sent =
// received for every stream) or nothing has moved for quiet. What is still
// missing then is lost. It polls counters: nothing here waits for a modelled
// delay.
func (l *Lab) Drain(ctx context.Context, quiet time.Duration) error {
	var last guest.Summary
	lastChange := time.Now()
	for {
		s := guest.Reconcile(l.Stats())
		if s.Lost == 0 && s.Sent > 0 {
			return nil
		}
		if s.Unique != last.Unique || s.Sent != last.Sent {
			last = s
			lastChange = time.Now()
		} else if time.Since(lastChange) > quiet {
			return ErrDrainTimeout
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Close stops every VM, adapter and the FI. Idempotent.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	var errs []error
	for _, vm := range l.vms {
		if err := vm.Stop(); err != nil {
			errs = append(errs, err)
		}
		vm.Port.Close()
	}
	errs = append(errs, closeGuests(l.vms)...)
	for _, h := range l.hosts {
		if err := h.Adapter.Close(); err != nil && !errors.Is(err, link.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if err := l.FI.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// DemoTopology is the fabric of `vmfex demo`: one FI, two hosts, four VMs
// with high-performance vNICs on two VLANs. VLAN 100 spans both hosts
// (through the FI); VLAN 200 has both its VMs on esx1, so their traffic
// hairpins: up to the FI and back down the same server port.
func DemoTopology() Topology {
	mac := func(n byte) wire.MAC { return wire.MAC{0x00, 0x25, 0xb5, 0x00, 0x00, n} }
	return Topology{
		FI: "fi-a",
		Profiles: []fabric.PortProfile{
			{Name: "web-vlan100", Mode: fabric.ModeAccess, AccessVLAN: 100, QoSClass: "best-effort", HighPerformance: true},
			{Name: "app-vlan200", Mode: fabric.ModeAccess, AccessVLAN: 200, QoSClass: "best-effort", HighPerformance: true},
		},
		Hosts: []HostSpec{{Name: "esx1", ServerPort: "Ethernet1/1"}, {Name: "esx2", ServerPort: "Ethernet1/2"}},
		VMs: []VMSpec{
			{Name: "web-1", Host: "esx1", Profile: "web-vlan100", MAC: mac(0x11), IP: [4]byte{198, 18, 100, 11}},
			{Name: "web-2", Host: "esx2", Profile: "web-vlan100", MAC: mac(0x12), IP: [4]byte{198, 18, 100, 12}},
			{Name: "app-1", Host: "esx1", Profile: "app-vlan200", MAC: mac(0x21), IP: [4]byte{198, 18, 200, 21}},
			{Name: "app-2", Host: "esx1", Profile: "app-vlan200", MAC: mac(0x22), IP: [4]byte{198, 18, 200, 22}},
		},
	}
}

// SortedVMs returns VM names sorted, for stable reports.
func (l *Lab) SortedVMs() []string {
	var out []string
	for _, vm := range l.vms {
		out = append(out, vm.Name())
	}
	sort.Strings(out)
	return out
}

// ResetGaps starts a new blackout measurement on every VM: from now on each
// stream's MaxGap counts only silences that end after this moment.
func (l *Lab) ResetGaps() {
	now := time.Now().UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, vm := range l.vms {
		if vm.Traffic != nil {
			vm.Traffic.ResetGaps(vm.Memory(), now)
		}
	}
}

// Blackout returns the longest silence, since the last ResetGaps, of any
// stream to or from the VM named name, as its receivers saw it, and the
// wall-clock time (Unix ns) at which it ended.
func (l *Lab) Blackout(name string) (time.Duration, int64) {
	var id uint32
	for _, vm := range l.VMs() {
		if vm.Name() == name {
			id = vm.ID()
		}
	}
	var worst time.Duration
	var end int64
	for vmID, st := range l.Stats() {
		for _, p := range st.Peers {
			if (vmID == id || p.VM == id) && p.Received.MaxGap > worst {
				worst, end = p.Received.MaxGap, p.Received.MaxGapEnd
			}
		}
	}
	return worst, end
}
