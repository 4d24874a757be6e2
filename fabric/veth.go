package fabric

import (
	"fmt"
	"slices"
	"sort"
	"strconv"

	"github.com/vmfex/vmfex/wire"
)

// VifProgrammer is the adapter side of a server port: the VIC that owns the
// dynamic vNICs behind it. The FI calls it, in configuration order, when a
// vEth is created on the port or rebound to it (ProgramVif), when the
// VifConfig of a vEth changes because its port profile changed
// (ProgramVif), and when a vEth leaves the port (RemoveVif). Calls must not
// block for long and must not call FI configuration methods synchronously.
type VifProgrammer interface {
	ProgramVif(vif uint16, cfg VifConfig)
	RemoveVif(vif uint16)
}

// VifConfig is what an adapter needs to know about one vif.
type VifConfig struct {
	// DefaultVLAN is the VLAN the adapter tags untagged guest frames with and
	// strips on the way down (the profile's access or native VLAN); 0 = the
	// vif passes tagged frames only.
	DefaultVLAN uint16
	// MAC is the vNIC's address.
	MAC wire.MAC
}

// VEthConfig creates a vEth.
type VEthConfig struct {
	// ID is the vEth number, e.g. 32769 as UCS numbers dynamic vEths; > 0.
	ID uint32
	// ServerPort names the server port whose adapter holds the vNIC.
	ServerPort string
	// VIF is the vNIC's vif on that port (1..4095; the VN-Tag svif is 12
	// bits, protocols.md §1.2).
	VIF uint16
	// MAC is the vNIC's address: unicast, not zero.
	MAC wire.MAC
	// Profile names the port profile the vEth inherits.
	Profile     string
	Description string
}

// VEthInfo describes a vEth, for `show interface vethernet`.
type VEthInfo struct {
	ID          uint32
	Name        string // "Veth32769"
	ServerPort  string
	VIF         uint16
	MAC         wire.MAC
	Description string
	Profile     string
	Mode        Mode
	// VLAN is the access VLAN, or a trunk's native VLAN (0 = none).
	VLAN uint16
	// AllowedVLANs are every VLAN the vEth carries, sorted.
	AllowedVLANs []uint16
	QoSClass     string
	// State is up while the reader of its server port runs.
	State LinkState
	// Held is set between HoldVEth and ReleaseVEth (live migration);
	// HeldFrames is the number of frames the FI holds for the vEth.
	Held       bool
	HeldFrames int
	Counters   VEthCounters
	// Claimed is set once the adapter of the current binding claimed the
	// vEth (ClaimVEth; at creation); a RebindVEth clears it.
	Claimed bool
	// BaseEgressFrames and BaseIngressFrames are the vEth's counters when
	// its binding was last claimed: what the FI counts beyond them went to,
	// or came from, the vNIC that claimed it.
	BaseEgressFrames, BaseIngressFrames uint64
}

// veth is one vEth. The object lives as long as the vEth: its identity
// (slot, inc) keys MAC table entries and its counters survive profile
// changes and rebinding.
type veth struct {
	id   uint32 // immutable
	name string // immutable: "Veth<id>"
	slot uint32 // immutable: index in snapshot.slots
	inc  uint32 // immutable: incarnation of the slot, never 0
	ctr  vethCounters
	hold holdQueue // HoldVEth; internally synchronised

	// Guarded by FI.mu; the data path reads copies in vethView.
	port    *port
	vif     uint16
	mac     wire.MAC
	profile string
	desc    string
	// claimed and base: see VEthInfo.Claimed and BaseEgressFrames.
	claimed                 bool
	baseEgress, baseIngress uint64
}

// dst is the MAC table destination naming this vEth.
func (v *veth) dst() macDst { return vethDst(v.slot, v.inc) }

type binding struct {
	port *port
	vif  uint16
}

// progAction is one VifProgrammer call to make after FI.mu is released.
type progAction struct {
	prog   VifProgrammer
	remove bool
	vif    uint16
	cfg    VifConfig
}

// unlockAndProgram queues acts, releases f.mu and makes every queued call
// in the order the configuration changed. When it returns, acts have been
// made, by this goroutine or by another one that was draining the queue.
func (f *FI) unlockAndProgram(acts []progAction) {
	f.progQueue = append(f.progQueue, acts...)
	f.mu.Unlock()
	if len(acts) == 0 {
		return
	}
	f.progMu.Lock()
	defer f.progMu.Unlock()
	for {
		f.mu.Lock()
		batch := f.progQueue
		f.progQueue = nil
		f.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		for _, a := range batch {
			switch {
			case a.prog == nil:
			case a.remove:
				a.prog.RemoveVif(a.vif)
			default:
				a.prog.ProgramVif(a.vif, a.cfg)
			}
		}
	}
}

func validVIF(vif uint16) bool { return vif >= 1 && vif <= wire.MaxSVIF }

// serverPortLocked returns the server port named name.
func (f *FI) serverPortLocked(name string) (*port, error) {
	p := f.portByName[name]
	if p == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownPort, name)
	}
	if p.kind != PortServer {
		return nil, fmt.Errorf("%w: %q is an uplink; vEths bind to server ports", ErrUnknownPort, name)
	}
	return p, nil
}

// CreateVEth creates a vEth bound to (c.ServerPort, c.VIF) with the policy
// of c.Profile and programs the adapter of the port.
func (f *FI) CreateVEth(c VEthConfig) error {
	if c.ID == 0 {
		return fmt.Errorf("%w: vEth number 0; use a number above 0 (UCS dynamic vEths start at 32769)", ErrInvalidConfig)
	}
	if !validVIF(c.VIF) {
		return fmt.Errorf("%w: Veth%d: vif %d; use 1..4095", ErrInvalidConfig, c.ID, c.VIF)
	}
	if c.MAC.IsZero() || c.MAC.IsMulticast() {
		return fmt.Errorf("%w: Veth%d: MAC %v; give a unicast, non-zero address", ErrInvalidConfig, c.ID, c.MAC)
	}
	f.mu.Lock()
	if f.state == stateClosed {
		f.mu.Unlock()
		return ErrClosed
	}
	err := f.createVEthLocked(c)
	if err != nil {
		f.mu.Unlock()
		return err
	}
	v := f.veths[c.ID]
	f.log.Info("vEth created", "veth", v.name, "port", v.port.name, "vif", v.vif,
		"mac", v.mac.String(), "profile", v.profile)
	f.unlockAndProgram([]progAction{{prog: v.port.prog, vif: v.vif, cfg: f.profiles[v.profile].vifConfig(v.mac)}})
	return nil
}

func (f *FI) createVEthLocked(c VEthConfig) error {
	if f.veths[c.ID] != nil {
		return fmt.Errorf("%w: Veth%d; pick another number or delete it first", ErrVEthExists, c.ID)
	}
	p, err := f.serverPortLocked(c.ServerPort)
	if err != nil {
		return fmt.Errorf("Veth%d: %w", c.ID, err)
	}
	prof := f.profiles[c.Profile]
	if prof == nil {
		return fmt.Errorf("Veth%d: %w: %q; create it with SetPortProfile first", c.ID, ErrUnknownProfile, c.Profile)
	}
	if o := f.bindings[binding{p, c.VIF}]; o != nil {
		return fmt.Errorf("%w: %s vif %d is %s", ErrVifInUse, p.name, c.VIF, o.name)
	}
	if n := len(f.profileUsersLocked(c.Profile)); prof.pp.MaxPorts > 0 && n >= prof.pp.MaxPorts {
		return fmt.Errorf("Veth%d: %w: %q allows %d; raise MaxPorts or use another profile",
			c.ID, ErrMaxPorts, c.Profile, prof.pp.MaxPorts)
	}
	v := &veth{
		id: c.ID, name: "Veth" + strconv.FormatUint(uint64(c.ID), 10),
		port: p, vif: c.VIF, mac: c.MAC, profile: c.Profile, desc: c.Description,
		claimed: true, // by the vNIC that exists as the vEth is created
	}
	v.slot, v.inc = f.allocSlotLocked(v)
	f.veths[c.ID] = v
	f.bindings[binding{p, c.VIF}] = v
	f.rebuildLocked()
	return nil
}

// allocSlotLocked gives v a slot in snapshot.slots and a fresh incarnation.
func (f *FI) allocSlotLocked(v *veth) (slot, inc uint32) {
	f.nextInc++
	if n := len(f.freeSlots); n > 0 {
		slot = f.freeSlots[n-1]
		f.freeSlots = f.freeSlots[:n-1]
		f.slots[slot] = v
	} else {
		slot = uint32(len(f.slots))
		f.slots = append(f.slots, v)
	}
	return slot, f.nextInc
}

// DeleteVEth removes a vEth, flushes its MAC entries and tells its adapter.
// Its counters are gone with it.
func (f *FI) DeleteVEth(id uint32) error {
	f.mu.Lock()
	if f.state == stateClosed {
		f.mu.Unlock()
		return ErrClosed
	}
	v := f.veths[id]
	if v == nil {
		f.mu.Unlock()
		return fmt.Errorf("%w: Veth%d", ErrUnknownVEth, id)
	}
	delete(f.veths, id)
	delete(f.bindings, binding{v.port, v.vif})
	f.slots[v.slot] = nil
	f.freeSlots = append(f.freeSlots, v.slot)
	f.rebuildLocked()
	n := f.macs.flushDst(v.dst())
	held := f.dropHoldLocked(v) // after the rebuild: no snapshot shows it held
	f.log.Info("vEth deleted", "veth", v.name, "port", v.port.name, "vif", v.vif, "macs_flushed", n,
		"held_dropped", held)
	f.unlockAndProgram([]progAction{{prog: v.port.prog, remove: true, vif: v.vif}})
	return nil
}

// RebindVEth moves a vEth to another (server port, vif), as when its VM
// live-migrates to another host. The vEth keeps its number, MAC, profile
// and counters; its MAC entries are flushed so they are learned again at
// the new place. The new binding is not claimed until its adapter calls
// ClaimVEth (claim.go). The old adapter is told RemoveVif, then the new one
// ProgramVif. Rebinding to the current place does nothing. A held vEth
// stays held (HoldVEth): its frames go to the new place at ReleaseVEth.
func (f *FI) RebindVEth(id uint32, serverPort string, vif uint16) error {
	return f.rebind(id, serverPort, vif, nil, false)
}

// rebind is RebindVEth; check, if set, vets the vEth under the locks first,
// and claimed is the claim state of the new binding.
func (f *FI) rebind(id uint32, serverPort string, vif uint16, check func(*veth) error, claimed bool) error {
	if !validVIF(vif) {
		return fmt.Errorf("%w: Veth%d: vif %d; use 1..4095", ErrInvalidConfig, id, vif)
	}
	// Not while a ReleaseVEth drains: its frames go to one binding.
	f.holdMu.Lock()
	defer f.holdMu.Unlock()
	f.mu.Lock()
	if f.state == stateClosed {
		f.mu.Unlock()
		return ErrClosed
	}
	v := f.veths[id]
	if v == nil {
		f.mu.Unlock()
		return fmt.Errorf("%w: Veth%d", ErrUnknownVEth, id)
	}
	if check != nil {
		if err := check(v); err != nil {
			f.mu.Unlock()
			return err
		}
	}
	p, err := f.serverPortLocked(serverPort)
	if err != nil {
		f.mu.Unlock()
		return fmt.Errorf("%s: %w", v.name, err)
	}
	if p == v.port && vif == v.vif {
		f.mu.Unlock()
		return nil
	}
	if o := f.bindings[binding{p, vif}]; o != nil {
		f.mu.Unlock()
		return fmt.Errorf("%w: %s vif %d is %s", ErrVifInUse, p.name, vif, o.name)
	}
	oldPort, oldVif := v.port, v.vif
	delete(f.bindings, binding{oldPort, oldVif})
	v.port, v.vif = p, vif
	v.claimed = claimed
	f.bindings[binding{p, vif}] = v
	f.rebuildLocked()
	n := f.macs.flushDst(v.dst())
	f.log.Info("vEth rebound", "veth", v.name, "from_port", oldPort.name, "from_vif", oldVif,
		"port", p.name, "vif", vif, "macs_flushed", n)
	f.unlockAndProgram([]progAction{
		{prog: oldPort.prog, remove: true, vif: oldVif},
		{prog: p.prog, vif: vif, cfg: f.profiles[v.profile].vifConfig(v.mac)},
	})
	return nil
}

// SetVEthProfile makes a vEth inherit another port profile (Nexus 1000V
// `inherit port-profile`). MAC entries of the vEth in VLANs the new profile
// does not carry are flushed; the adapter is reprogrammed if its VifConfig
// changes.
func (f *FI) SetVEthProfile(id uint32, profile string) error {
	f.mu.Lock()
	if f.state == stateClosed {
		f.mu.Unlock()
		return ErrClosed
	}
	v := f.veths[id]
	if v == nil {
		f.mu.Unlock()
		return fmt.Errorf("%w: Veth%d", ErrUnknownVEth, id)
	}
	nv := f.profiles[profile]
	if nv == nil {
		f.mu.Unlock()
		return fmt.Errorf("%s: %w: %q; create it with SetPortProfile first", v.name, ErrUnknownProfile, profile)
	}
	if v.profile == profile {
		f.mu.Unlock()
		return nil
	}
	if n := len(f.profileUsersLocked(profile)); nv.pp.MaxPorts > 0 && n >= nv.pp.MaxPorts {
		f.mu.Unlock()
		return fmt.Errorf("%s: %w: %q allows %d; raise MaxPorts or use another profile",
			v.name, ErrMaxPorts, profile, nv.pp.MaxPorts)
	}
	old := f.profiles[v.profile]
	oldName := v.profile
	v.profile = profile
	f.rebuildLocked()
	var gone vlanSet
	for i := range gone {
		gone[i] = old.allowed[i] &^ nv.allowed[i]
	}
	f.macs.flushVEthVLANs(v.dst(), &gone)
	f.log.Info("vEth profile changed", "veth", v.name, "from", oldName, "profile", profile)
	var acts []progAction
	if old.vifConfig(v.mac) != nv.vifConfig(v.mac) {
		acts = append(acts, progAction{prog: v.port.prog, vif: v.vif, cfg: nv.vifConfig(v.mac)})
	}
	f.unlockAndProgram(acts)
	return nil
}

// VEth returns the vEth numbered id.
func (f *FI) VEth(id uint32) (VEthInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.veths[id]
	if v == nil {
		return VEthInfo{}, false
	}
	return f.vethInfoLocked(v), true
}

// VEths returns every vEth, sorted by number.
func (f *FI) VEths() []VEthInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]VEthInfo, 0, len(f.veths))
	for _, v := range f.veths {
		out = append(out, f.vethInfoLocked(v))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (f *FI) vethInfoLocked(v *veth) VEthInfo {
	prof := f.profiles[v.profile]
	state := LinkDown
	if v.port.up.Load() {
		state = LinkUp
	}
	held, nheld := v.hold.state()
	return VEthInfo{
		ID: v.id, Name: v.name, ServerPort: v.port.name, VIF: v.vif, MAC: v.mac,
		Description: v.desc, Profile: v.profile, Mode: prof.pp.Mode, VLAN: prof.untagged,
		AllowedVLANs: slices.Clone(prof.vlans), QoSClass: prof.pp.QoSClass,
		State: state, Held: held, HeldFrames: nheld, Counters: v.ctr.load(),
		Claimed: v.claimed, BaseEgressFrames: v.baseEgress, BaseIngressFrames: v.baseIngress,
	}
}
