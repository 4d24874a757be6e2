package fabric

import (
	"cmp"
	"slices"

	"github.com/vmfex/vmfex/wire"
)

// snapshot is everything the data path reads except the MAC table: ports,
// vif bindings, compiled profiles and flood lists. It is immutable once
// published; every configuration change builds a new one under FI.mu and
// swaps it in through FI.snap (STYLE item 7).
type snapshot struct {
	// ports are all ports by index (port objects are shared between
	// snapshots; their fields used here are immutable).
	ports []*port
	// vifs[i][vif] is the vEth bound to vif on port i (nil slice for an
	// uplink; shorter than 4096 when the highest vif is lower).
	vifs [][]*vethView
	// slots[s] is the vEth in MAC table slot s, or nil.
	slots []*vethView
	// flood[vlan] lists the vEths whose profile carries vlan, in vEth
	// number order.
	flood map[uint16][]*vethView
	// uplinks are the uplink ports, in the order they were added.
	uplinks []*port
	// uplinkVLANs is the uplink trunk's allowed set: every VLAN a port
	// profile uses.
	uplinkVLANs vlanSet
}

// vethView is a vEth as one snapshot sees it. Immutable.
type vethView struct {
	v    *veth // identity, name and counters
	port *port
	vif  uint16
	mac  wire.MAC
	prof *profileView
	// held and holdGen copy v.hold's on and gen when the snapshot was
	// built, so that stage 9 costs no lock for a vEth that is not held.
	// Only a hint: the hold queue decides (worker.holdFrame).
	held    bool
	holdGen uint64
}

// vethAt returns the vEth d names, or nil if it no longer exists.
func (s *snapshot) vethAt(d macDst) *vethView {
	i := d.index()
	if d.isUplink() || int(i) >= len(s.slots) {
		return nil
	}
	v := s.slots[i]
	if v == nil || v.v.inc != d.inc() {
		return nil
	}
	return v
}

// vifAt returns the vEth bound to vif on port index pi, or nil.
func (s *snapshot) vifAt(pi int, vif uint16) *vethView {
	t := s.vifs[pi]
	if int(vif) >= len(t) {
		return nil
	}
	return t[vif]
}

// rebuildLocked builds a snapshot from the configuration and publishes it.
func (f *FI) rebuildLocked() {
	s := &snapshot{
		ports: append([]*port(nil), f.ports...),
		vifs:  make([][]*vethView, len(f.ports)),
		slots: make([]*vethView, len(f.slots)),
		flood: make(map[uint16][]*vethView),
	}
	for _, p := range f.ports {
		if p.kind == PortUplink {
			s.uplinks = append(s.uplinks, p)
		}
	}
	for _, pv := range f.profiles {
		s.uplinkVLANs.union(&pv.allowed)
	}
	// Sizes first, so each vif table is allocated once.
	maxVif := make([]int, len(f.ports))
	for _, v := range f.veths {
		maxVif[v.port.idx] = max(maxVif[v.port.idx], int(v.vif))
	}
	for i, p := range f.ports {
		if p.kind == PortServer {
			s.vifs[i] = make([]*vethView, maxVif[i]+1)
		}
	}
	views := make([]*vethView, 0, len(f.veths))
	for _, v := range f.veths {
		vv := &vethView{v: v, port: v.port, vif: v.vif, mac: v.mac, prof: f.profiles[v.profile]}
		vv.held, vv.holdGen = v.hold.snapState()
		views = append(views, vv)
		s.vifs[v.port.idx][v.vif] = vv
		s.slots[v.slot] = vv
	}
	slices.SortFunc(views, func(a, b *vethView) int { return cmp.Compare(a.v.id, b.v.id) })
	for _, vv := range views {
		for _, vid := range vv.prof.vlans {
			s.flood[vid] = append(s.flood[vid], vv)
		}
	}
	f.snap.Store(s)
}
