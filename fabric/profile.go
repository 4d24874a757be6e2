package fabric

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/vmfex/vmfex/wire"
)

// Mode is the switchport mode a port profile gives its vEths.
type Mode uint8

//go:generate stringer -type=Mode -linecomment -output=mode_string.go

// Modes (Nexus 1000V `switchport mode`).
const (
	// ModeAccess carries one VLAN, AccessVLAN; untagged frames belong to it.
	ModeAccess Mode = iota // access
	// ModeTrunk carries AllowedVLANs tagged and NativeVLAN untagged.
	ModeTrunk // trunk
)

// DefaultQoSClass is the QoS system class a profile reports when none is
// set (protocols.md §5.5: Best Effort always exists).
const DefaultQoSClass = "best-effort"

// PortProfile is a named set of policies that vEths inherit, as a UCS
// Manager port profile or a Nexus 1000V vethernet port-profile.
type PortProfile struct {
	Name string
	Mode Mode
	// AccessVLAN is the one VLAN of an access profile (1..4094).
	AccessVLAN uint16
	// AllowedVLANs are the VLANs of a trunk profile (1..4094 each; order
	// and duplicates do not matter; stored sorted).
	AllowedVLANs []uint16
	// NativeVLAN is the VLAN of untagged frames on a trunk; 0 = none, and
	// untagged frames are dropped. It is allowed even if AllowedVLANs does
	// not list it (in UCS the native VLAN is one of the vNIC's VLANs).
	NativeVLAN uint16
	// AllowForgedMAC is the network-control policy "MAC forging allow": a
	// vEth may send with source MACs other than its own. Default deny.
	AllowForgedMAC bool
	// MaxPorts bounds the vEths inheriting the profile; 0 = unlimited.
	MaxPorts int
	// QoSClass names the QoS system class, e.g. "best-effort" (stored and
	// reported; "" is stored as DefaultQoSClass).
	QoSClass string
	// HighPerformance is the VMDirectPath setting, stored for the control
	// plane.
	HighPerformance bool
}

// clone returns a deep copy.
func (pp PortProfile) clone() PortProfile {
	pp.AllowedVLANs = slices.Clone(pp.AllowedVLANs)
	return pp
}

// normalize validates pp and returns the stored form: VLAN list sorted and
// deduplicated, QoS class defaulted. Errors wrap ErrInvalidConfig and say
// which field to fix.
func (pp PortProfile) normalize() (PortProfile, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: port profile %q: %s", ErrInvalidConfig, pp.Name, fmt.Sprintf(format, args...))
	}
	if strings.TrimSpace(pp.Name) == "" || strings.ContainsAny(pp.Name, " \t\r\n") {
		return pp, fmt.Errorf("%w: port profile name %q: give a non-empty name without spaces", ErrInvalidConfig, pp.Name)
	}
	if pp.MaxPorts < 0 {
		return pp, bad("MaxPorts %d is negative; use 0 for unlimited", pp.MaxPorts)
	}
	switch pp.Mode {
	case ModeAccess:
		if !wire.ValidVID(pp.AccessVLAN) {
			return pp, bad("access VLAN %d is not usable; set AccessVLAN to 1..4094", pp.AccessVLAN)
		}
		if len(pp.AllowedVLANs) != 0 || pp.NativeVLAN != 0 {
			return pp, bad("AllowedVLANs and NativeVLAN apply to trunk profiles; set Mode to ModeTrunk or clear them")
		}
	case ModeTrunk:
		if pp.AccessVLAN != 0 {
			return pp, bad("AccessVLAN applies to access profiles; set Mode to ModeAccess or clear AccessVLAN")
		}
		if pp.NativeVLAN != 0 && !wire.ValidVID(pp.NativeVLAN) {
			return pp, bad("native VLAN %d is not usable; set NativeVLAN to 1..4094, or 0 for none", pp.NativeVLAN)
		}
		for _, v := range pp.AllowedVLANs {
			if !wire.ValidVID(v) {
				return pp, bad("allowed VLAN %d is not usable; list VLANs in 1..4094", v)
			}
		}
		if len(pp.AllowedVLANs) == 0 && pp.NativeVLAN == 0 {
			return pp, bad("a trunk needs AllowedVLANs or a NativeVLAN")
		}
	default:
		return pp, bad("mode %d is unknown; use ModeAccess or ModeTrunk", pp.Mode)
	}
	out := pp.clone()
	slices.Sort(out.AllowedVLANs)
	out.AllowedVLANs = slices.Compact(out.AllowedVLANs)
	if len(out.AllowedVLANs) == 0 {
		out.AllowedVLANs = nil
	}
	if out.QoSClass == "" {
		out.QoSClass = DefaultQoSClass
	}
	return out, nil
}

// vlanSet is a bitmap of the 4096 VLAN IDs.
type vlanSet [4096 / 64]uint64

func (s *vlanSet) add(v uint16)      { s[v>>6&63] |= 1 << (v & 63) }
func (s *vlanSet) has(v uint16) bool { return s[v>>6&63]&(1<<(v&63)) != 0 }

// union adds every VLAN of o to s.
func (s *vlanSet) union(o *vlanSet) {
	for i := range s {
		s[i] |= o[i]
	}
}

// list returns the members in increasing order.
func (s *vlanSet) list() []uint16 {
	var out []uint16
	for v := uint16(1); v <= wire.MaxVID; v++ {
		if s.has(v) {
			out = append(out, v)
		}
	}
	return out
}

// profileView is a port profile compiled for the data path. Immutable.
type profileView struct {
	pp      PortProfile // the stored (normalized) profile
	allowed vlanSet     // VLANs a vEth of this profile carries
	vlans   []uint16    // allowed, listed in increasing order
	// untagged is the VLAN of untagged and priority-tagged frames: the
	// access VLAN, or the native VLAN of a trunk; 0 = drop them.
	untagged uint16
}

func compileProfile(pp PortProfile) *profileView {
	v := &profileView{pp: pp}
	switch pp.Mode {
	case ModeAccess:
		v.allowed.add(pp.AccessVLAN)
		v.untagged = pp.AccessVLAN
	case ModeTrunk:
		for _, vid := range pp.AllowedVLANs {
			v.allowed.add(vid)
		}
		if pp.NativeVLAN != 0 {
			v.allowed.add(pp.NativeVLAN)
		}
		v.untagged = pp.NativeVLAN
	}
	v.vlans = v.allowed.list()
	return v
}

// vifConfig is what the adapter is told for a vEth of this profile.
func (v *profileView) vifConfig(mac wire.MAC) VifConfig {
	return VifConfig{DefaultVLAN: v.untagged, MAC: mac}
}

// SetPortProfile creates the port profile pp.Name or replaces it. A
// replacement reaches every vEth inheriting it at once: the data path uses
// it from its next batch, learned MACs in VLANs the profile no longer
// carries are flushed, and adapters whose VifConfig changed are
// reprogrammed. Lowering MaxPorts below the current number of vEths is
// refused.
func (f *FI) SetPortProfile(pp PortProfile) error {
	pp, err := pp.normalize()
	if err != nil {
		return err
	}
	f.mu.Lock()
	if f.state == stateClosed {
		f.mu.Unlock()
		return ErrClosed
	}
	old := f.profiles[pp.Name]
	users := f.profileUsersLocked(pp.Name)
	if pp.MaxPorts > 0 && len(users) > pp.MaxPorts {
		f.mu.Unlock()
		return fmt.Errorf("%w: port profile %q: %d vEths inherit it, more than MaxPorts %d; raise MaxPorts or move vEths first",
			ErrMaxPorts, pp.Name, len(users), pp.MaxPorts)
	}
	nv := compileProfile(pp)
	f.profiles[pp.Name] = nv
	f.rebuildLocked()

	var acts []progAction
	var flush []flushVLANs
	if old != nil {
		for _, v := range users {
			if old.vifConfig(v.mac) != nv.vifConfig(v.mac) {
				acts = append(acts, progAction{prog: v.port.prog, vif: v.vif, cfg: nv.vifConfig(v.mac)})
			}
			var gone vlanSet
			for i := range gone {
				gone[i] = old.allowed[i] &^ nv.allowed[i]
			}
			if gone != (vlanSet{}) {
				flush = append(flush, flushVLANs{dst: v.dst(), vlans: gone})
			}
		}
	}
	if old == nil {
		f.log.Info("port profile created", "profile", pp.Name, "mode", pp.Mode.String())
	} else {
		f.log.Info("port profile updated", "profile", pp.Name, "mode", pp.Mode.String(),
			"veths", len(users), "reprogrammed", len(acts))
	}
	for _, fl := range flush {
		f.macs.flushVEthVLANs(fl.dst, &fl.vlans)
	}
	f.unlockAndProgram(acts)
	return nil
}

type flushVLANs struct {
	dst   macDst
	vlans vlanSet
}

// DeletePortProfile removes an unused port profile. It fails with
// ErrProfileInUse while vEths inherit it.
func (f *FI) DeletePortProfile(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == stateClosed {
		return ErrClosed
	}
	if f.profiles[name] == nil {
		return fmt.Errorf("%w: %q", ErrUnknownProfile, name)
	}
	if users := f.profileUsersLocked(name); len(users) > 0 {
		names := make([]string, len(users))
		for i, v := range users {
			names[i] = v.name
		}
		sort.Strings(names)
		return fmt.Errorf("%w: %q is inherited by %s; delete those vEths or move them to another profile first",
			ErrProfileInUse, name, strings.Join(names, ", "))
	}
	delete(f.profiles, name)
	f.rebuildLocked()
	f.log.Info("port profile deleted", "profile", name)
	return nil
}

// PortProfiles returns a copy of every port profile, sorted by name.
func (f *FI) PortProfiles() []PortProfile {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]PortProfile, 0, len(f.profiles))
	for _, p := range f.profiles {
		out = append(out, p.pp.clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// PortProfile returns a copy of the named port profile.
func (f *FI) PortProfile(name string) (PortProfile, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.profiles[name]
	if p == nil {
		return PortProfile{}, false
	}
	return p.pp.clone(), true
}

// profileUsersLocked returns the vEths inheriting the named profile.
func (f *FI) profileUsersLocked(name string) []*veth {
	var out []*veth
	for _, v := range f.veths {
		if v.profile == name {
			out = append(out, v)
		}
	}
	return out
}
