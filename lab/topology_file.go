package lab

// A topology file is the YAML form of a Topology, so that `vmfex lab up`
// can run a fabric other than the built-in demo without recompiling.
// Everything is checked here, before Build, so that a mistake is reported
// with the file and the entry it is in rather than as a fabric error about
// an object the user never named.

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/wire"
)

// topologyFile is the schema of a topology file. Field names are the YAML
// keys; unknown keys are rejected so that a typo never passes silently.
type topologyFile struct {
	FI           string            `yaml:"fi"`
	PortProfiles []portProfileFile `yaml:"port_profiles"`
	Hosts        []hostFile        `yaml:"hosts"`
	VMs          []vmFile          `yaml:"vms"`
	Traffic      trafficFile       `yaml:"traffic"`
}

type portProfileFile struct {
	Name            string   `yaml:"name"`
	Mode            string   `yaml:"mode"` // access | trunk
	AccessVLAN      uint16   `yaml:"access_vlan"`
	AllowedVLANs    []uint16 `yaml:"allowed_vlans"`
	NativeVLAN      uint16   `yaml:"native_vlan"`
	QoSClass        string   `yaml:"qos_class"`
	MACForging      string   `yaml:"mac_forging"` // allow | deny (default deny)
	MaxPorts        int      `yaml:"max_ports"`
	HighPerformance bool     `yaml:"high_performance"`
}

type hostFile struct {
	Name       string `yaml:"name"`
	ServerPort string `yaml:"server_port"`
}

type vmFile struct {
	Name        string `yaml:"name"`
	Host        string `yaml:"host"`
	PortProfile string `yaml:"port_profile"`
	MAC         string `yaml:"mac"`
	IP          string `yaml:"ip"`
	MemoryMiB   uint64 `yaml:"memory_mib"` // 0: the lab's default, 8 MiB
	// Guest is the VM's program: probe (default) or linux (a network
	// namespace named after the VM with a TAP eth0; needs root).
	Guest string `yaml:"guest"`
}

type trafficFile struct {
	FrameSize int    `yaml:"frame_size"` // 0: 64
	Rate      uint64 `yaml:"rate"`       // frames/s to each peer; 0: as fast as the ring allows
}

// maxMemoryMiB bounds a lab VM's memory: every VM lives in this process,
// and pre-copy sends all of it, so a typo like 8192 for 8 should fail here
// rather than exhaust the machine.
const maxMemoryMiB = 1024

// LoadTopology reads a topology from the YAML file at path. Its keys are
// fi, port_profiles, hosts, vms and traffic; see examples/demo.yaml. The
// result has no Logger, Tap or Driver: callers set those.
func LoadTopology(path string) (Topology, error) {
	f, err := os.Open(path)
	if err != nil {
		return Topology{}, fmt.Errorf("topology: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	var tf topologyFile
	if err := dec.Decode(&tf); err != nil {
		if errors.Is(err, io.EOF) {
			return Topology{}, fmt.Errorf("topology %s: the file is empty; describe fi, port_profiles, hosts and vms (see examples/demo.yaml)", path)
		}
		return Topology{}, fmt.Errorf("topology %s: %v (keys are fi, port_profiles, hosts, vms, traffic; see examples/demo.yaml)", path, err)
	}
	// A second document would be ignored silently otherwise.
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Topology{}, fmt.Errorf("topology %s: more than one YAML document; keep the whole topology in one (remove the extra ---)", path)
	}
	t, err := tf.topology()
	if err != nil {
		return Topology{}, fmt.Errorf("topology %s: %w", path, err)
	}
	return t, nil
}

// topology validates tf and converts it.
func (tf *topologyFile) topology() (Topology, error) {
	var t Topology
	t.FI = strings.TrimSpace(tf.FI)
	if t.FI == "" {
		return t, errors.New(`fi is missing; name the Fabric Interconnect, e.g. "fi: fi-a"`)
	}
	if len(tf.Hosts) == 0 {
		return t, errors.New("hosts is empty; list at least one host with a name and a server_port")
	}
	profiles := map[string]fabric.PortProfile{}
	for i, p := range tf.PortProfiles {
		pp, err := p.profile()
		if err != nil {
			return t, fmt.Errorf("port_profiles[%d] (%s): %w", i, orUnnamed(p.Name), err)
		}
		if _, dup := profiles[pp.Name]; dup {
			return t, fmt.Errorf("port_profiles[%d]: port profile %q is defined twice; rename or remove one", i, pp.Name)
		}
		profiles[pp.Name] = pp
		t.Profiles = append(t.Profiles, pp)
	}
	hosts := map[string]bool{}
	ports := map[string]string{}
	for i, h := range tf.Hosts {
		what := fmt.Sprintf("hosts[%d] (%s)", i, orUnnamed(h.Name))
		switch {
		case !validName(h.Name):
			return t, fmt.Errorf("%s: name %q: give a non-empty name without spaces", what, h.Name)
		case hosts[h.Name]:
			return t, fmt.Errorf("%s: host %q is defined twice; rename or remove one", what, h.Name)
		case !validName(h.ServerPort):
			return t, fmt.Errorf("%s: server_port %q: give the FI port the host is cabled to, e.g. Ethernet1/1", what, h.ServerPort)
		case ports[h.ServerPort] != "":
			return t, fmt.Errorf("%s: server_port %s is already host %s's; give each host its own port", what, h.ServerPort, ports[h.ServerPort])
		}
		hosts[h.Name] = true
		ports[h.ServerPort] = h.Name
		t.Hosts = append(t.Hosts, HostSpec{Name: h.Name, ServerPort: h.ServerPort})
	}
	vms := map[string]bool{}
	macs := map[wire.MAC]string{}
	for i, v := range tf.VMs {
		vs, err := v.spec(hosts, profiles)
		if err != nil {
			return t, fmt.Errorf("vms[%d] (%s): %w", i, orUnnamed(v.Name), err)
		}
		if vms[vs.Name] {
			return t, fmt.Errorf("vms[%d]: VM %q is defined twice; rename or remove one", i, vs.Name)
		}
		if other, dup := macs[vs.MAC]; dup {
			return t, fmt.Errorf("vms[%d] (%s): mac %s is already VM %s's; give each VM its own MAC", i, vs.Name, vs.MAC, other)
		}
		vms[vs.Name] = true
		macs[vs.MAC] = vs.Name
		t.VMs = append(t.VMs, vs)
	}
	tr := tf.Traffic
	if tr.FrameSize != 0 && (tr.FrameSize < guest.MinTrafficFrameLen || tr.FrameSize > guest.MaxTrafficFrameLen) {
		return t, fmt.Errorf("traffic: frame_size %d: use %d..%d bytes (Ethernet without FCS), or leave it out for %d",
			tr.FrameSize, guest.MinTrafficFrameLen, guest.MaxTrafficFrameLen, guest.MinTrafficFrameLen)
	}
	t.Traffic = TrafficSpec{FrameLen: tr.FrameSize, Rate: tr.Rate}
	return t, nil
}

func (p portProfileFile) profile() (fabric.PortProfile, error) {
	pp := fabric.PortProfile{
		Name: p.Name, AccessVLAN: p.AccessVLAN, AllowedVLANs: p.AllowedVLANs, NativeVLAN: p.NativeVLAN,
		MaxPorts: p.MaxPorts, QoSClass: p.QoSClass, HighPerformance: p.HighPerformance,
	}
	if !validName(p.Name) {
		return pp, fmt.Errorf("name %q: give a non-empty name without spaces", p.Name)
	}
	switch p.Mode {
	case "access", "":
		// Access is the Nexus 1000V default switchport mode.
		pp.Mode = fabric.ModeAccess
		if !wire.ValidVID(p.AccessVLAN) {
			return pp, fmt.Errorf("access_vlan %d: an access profile needs access_vlan 1..4094", p.AccessVLAN)
		}
		if len(p.AllowedVLANs) != 0 || p.NativeVLAN != 0 {
			return pp, errors.New("allowed_vlans and native_vlan apply to trunks; set mode: trunk or remove them")
		}
	case "trunk":
		pp.Mode = fabric.ModeTrunk
		if p.AccessVLAN != 0 {
			return pp, errors.New("access_vlan applies to access profiles; set mode: access or remove it")
		}
		if len(p.AllowedVLANs) == 0 && p.NativeVLAN == 0 {
			return pp, errors.New("a trunk needs allowed_vlans or a native_vlan")
		}
		if p.NativeVLAN != 0 && !wire.ValidVID(p.NativeVLAN) {
			return pp, fmt.Errorf("native_vlan %d: use 1..4094, or leave it out for none", p.NativeVLAN)
		}
		for _, v := range p.AllowedVLANs {
			if !wire.ValidVID(v) {
				return pp, fmt.Errorf("allowed_vlans: VLAN %d: list VLANs in 1..4094", v)
			}
		}
	default:
		return pp, fmt.Errorf("mode %q: use access or trunk", p.Mode)
	}
	switch p.MACForging {
	case "allow":
		pp.AllowForgedMAC = true
	case "deny", "":
	default:
		return pp, fmt.Errorf("mac_forging %q: use allow or deny", p.MACForging)
	}
	if p.MaxPorts < 0 {
		return pp, fmt.Errorf("max_ports %d is negative; use 0 for unlimited", p.MaxPorts)
	}
	return pp, nil
}

func (v vmFile) spec(hosts map[string]bool, profiles map[string]fabric.PortProfile) (VMSpec, error) {
	vs := VMSpec{Name: v.Name, Host: v.Host, Profile: v.PortProfile}
	if !validName(v.Name) {
		return vs, fmt.Errorf("name %q: give a non-empty name without spaces", v.Name)
	}
	if !hosts[v.Host] {
		return vs, fmt.Errorf("host %q is not in hosts; use one of the hosts listed there", v.Host)
	}
	pp, ok := profiles[v.PortProfile]
	if !ok {
		return vs, fmt.Errorf("port_profile %q is not in port_profiles; use one of the profiles listed there", v.PortProfile)
	}
	if pp.Mode == fabric.ModeTrunk && pp.NativeVLAN == 0 {
		// Lab VMs send untagged probes, which a trunk without a native
		// VLAN drops.
		return vs, fmt.Errorf("port_profile %q is a trunk without native_vlan, and lab VMs send untagged frames; give it a native_vlan", v.PortProfile)
	}
	mac, err := wire.ParseMAC(v.MAC)
	if err != nil {
		return vs, fmt.Errorf("mac %q: write six hex bytes, e.g. 00:25:b5:00:00:11", v.MAC)
	}
	if mac[0]&1 != 0 || mac == (wire.MAC{}) {
		return vs, fmt.Errorf("mac %s is multicast or zero; give a unicast MAC, e.g. 00:25:b5:00:00:11", mac)
	}
	vs.MAC = mac
	ip, err := netip.ParseAddr(v.IP)
	if err != nil || !ip.Is4() {
		return vs, fmt.Errorf("ip %q: give an IPv4 address, e.g. 198.18.100.11", v.IP)
	}
	vs.IP = ip.As4()
	if v.MemoryMiB > maxMemoryMiB {
		return vs, fmt.Errorf("memory_mib %d: use at most %d (or leave it out for 8)", v.MemoryMiB, maxMemoryMiB)
	}
	vs.MemSize = v.MemoryMiB << 20
	switch v.Guest {
	case "", GuestProbe, GuestLinux:
		vs.Guest = v.Guest
	default:
		return vs, fmt.Errorf("guest %q: use %s (the probe workload, default) or %s (a Linux network namespace; needs root)", v.Guest, GuestProbe, GuestLinux)
	}
	return vs, nil
}

func validName(s string) bool {
	return strings.TrimSpace(s) != "" && !strings.ContainsAny(s, " \t\r\n")
}

func orUnnamed(s string) string {
	if s == "" {
		return "unnamed"
	}
	return s
}
