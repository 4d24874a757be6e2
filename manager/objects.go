package manager

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Kinds, used both as URL path segments under /api/v1 and as store kinds.
const (
	KindPortProfiles        = "port-profiles"
	KindHosts               = "hosts"
	KindFabricInterconnects = "fabric-interconnects"
	KindVMs                 = "vms"
)

// Kinds lists the public kinds in the order they depend on each other.
var Kinds = []string{KindFabricInterconnects, KindHosts, KindPortProfiles, KindVMs, KindAgents, KindMigrations}

// Defaults applied when a field is left out (or zero).
const (
	// DefaultMaxPorts is UCS Manager's default for a port profile's
	// maximum number of bound vEths.
	DefaultMaxPorts = 64
	// DefaultMaxVNICs is the number of dynamic vNICs a VIC offers a host.
	DefaultMaxVNICs = 256
	// DefaultProbeRate is a VM's probe rate, frames/s to each peer.
	DefaultProbeRate = 1000
	// MaxProbeRate bounds it.
	MaxProbeRate = 10_000_000
	// DefaultMemMiB is a VM's memory when none is given.
	DefaultMemMiB = 1024
	// FirstVEth is the first vEth number the manager assigns; lower
	// numbers are left to statically configured vEths, as on a UCS FI.
	FirstVEth = 32769
)

// Limits of field values.
const (
	MinVLAN     = 1    // 802.1Q: VID 0 means "priority tag only"
	MaxVLAN     = 4094 // 802.1Q: VID 4095 is reserved
	MaxMaxPorts = 4096
	MaxMaxVNICs = 1024
	MaxMemMiB   = 1 << 22 // 4 TiB
	maxDescLen  = 256
)

// Port profile modes, QoS classes (the UCS system classes), MAC forging
// policies and VM modes.
var (
	PortModes   = []string{"access", "trunk"}
	QoSClasses  = []string{"best-effort", "bronze", "silver", "gold", "platinum", "fc"}
	MACForgings = []string{"allow", "deny"}
	VMModes     = []string{"direct", "emulated"}
	VMGuests    = []string{"probe", "linux"}
)

// PortProfile is the policy a vEth gets from the FI: VLANs, QoS class and
// network control policy.
type PortProfile struct {
	Name     string `json:"name"`
	Revision int64  `json:"revision,omitempty"` // store revision; on PUT, the expected one
	// Mode is "access" (one untagged VLAN) or "trunk" (802.1Q tagged).
	Mode            string `json:"mode"`
	AccessVLAN      int    `json:"access_vlan,omitempty"`
	AllowedVLANs    []int  `json:"allowed_vlans,omitempty"`
	NativeVLAN      int    `json:"native_vlan,omitempty"` // trunk only; 0: none
	QoSClass        string `json:"qos_class"`
	MACForging      string `json:"mac_forging"`
	MaxPorts        int    `json:"max_ports"`
	HighPerformance bool   `json:"high_performance"` // allows direct (VMDirectPath) mode
	Description     string `json:"description,omitempty"`
}

// Host is a server with a VIC adapter, cabled to an FI server port.
type Host struct {
	Name       string `json:"name"`
	Revision   int64  `json:"revision,omitempty"`
	FI         string `json:"fi"`
	ServerPort string `json:"server_port"` // FI port, e.g. "Ethernet1/1"
	MaxVNICs   int    `json:"max_vnics"`   // dynamic vNICs the adapter offers
	// The host's cable to its FI server port, when FI and host run as
	// agents: UDP datagrams between UplinkAddr (the host's end) and FIAddr
	// (the FI's end), each "ip:port".
	UplinkAddr string `json:"uplink_addr,omitempty"`
	FIAddr     string `json:"fi_addr,omitempty"`
	// Or raw Ethernet (AF_PACKET) on the two ends of a veth pair: the
	// interface in the host agent's network namespace and the one in the
	// FI agent's (vmfex lab up --netns).
	UplinkIf string `json:"uplink_if,omitempty"`
	FIIf     string `json:"fi_if,omitempty"`
}

// FabricInterconnect is an FI that hosts connect to.
type FabricInterconnect struct {
	Name     string `json:"name"`
	Revision int64  `json:"revision,omitempty"`
}

// VM is a virtual machine with one vNIC, bound to a vEth on the FI.
type VM struct {
	Name        string `json:"name"`
	Revision    int64  `json:"revision,omitempty"`
	Host        string `json:"host"`
	PortProfile string `json:"port_profile"`
	MAC         string `json:"mac"`
	IP          string `json:"ip,omitempty"`
	MemMiB      int    `json:"mem_mib"`
	// VEth is assigned by the manager at creation and never changes or is
	// reused (DESIGN §4.2: the vEth is the VM's).
	VEth int `json:"veth,omitempty"`
	// Vif is assigned by the manager at creation: the vif of the VM's
	// dynamic vNIC on whichever host carries it.
	Vif           int    `json:"vif,omitempty"`
	ModeRequested string `json:"mode_requested"`
	// The probe workload: frames/s to each peer (the VMs of its VLAN when
	// it boots), frame length, and whether it sends.
	ProbeRate     int  `json:"probe_rate"`
	ProbeFrameLen int  `json:"probe_frame_len"`
	Traffic       bool `json:"traffic"`
	// Guest is the VM's program: probe (the probe workload) or linux (a
	// network namespace named after the VM on a TAP; its host agent needs
	// root).
	Guest string `json:"guest"`
}

// object is what the generic handlers need of each kind.
type object interface {
	objName() string
	setName(string)
	rev() int64
	setRev(int64)
	// normalize fills defaults and checks the object on its own (no other
	// objects); errors are *Error with status 400.
	normalize() error
}

func (p *PortProfile) objName() string        { return p.Name }
func (p *PortProfile) setName(n string)       { p.Name = n }
func (p *PortProfile) rev() int64             { return p.Revision }
func (p *PortProfile) setRev(r int64)         { p.Revision = r }
func (h *Host) objName() string               { return h.Name }
func (h *Host) setName(n string)              { h.Name = n }
func (h *Host) rev() int64                    { return h.Revision }
func (h *Host) setRev(r int64)                { h.Revision = r }
func (f *FabricInterconnect) objName() string { return f.Name }
func (f *FabricInterconnect) setName(n string) {
	f.Name = n
}
func (f *FabricInterconnect) rev() int64     { return f.Revision }
func (f *FabricInterconnect) setRev(r int64) { f.Revision = r }
func (v *VM) objName() string                { return v.Name }
func (v *VM) setName(n string)               { v.Name = n }
func (v *VM) rev() int64                     { return v.Revision }
func (v *VM) setRev(r int64)                 { v.Revision = r }

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidName reports whether s can name an object.
func ValidName(s string) bool { return nameRE.MatchString(s) }

func checkName(noun, s string) error {
	if s == "" {
		return badRequest(noun+" has no name", `set "name"`)
	}
	if !ValidName(s) {
		return badRequest(fmt.Sprintf("%s name %q is not valid", noun, s),
			"use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	return nil
}

func checkEnum(field, v string, allowed []string) error {
	if slices.Contains(allowed, v) {
		return nil
	}
	return badRequest(fmt.Sprintf("%s %q is not valid", field, v), "use one of: "+strings.Join(allowed, ", "))
}

func checkVLAN(field string, v int) error {
	if v >= MinVLAN && v <= MaxVLAN {
		return nil
	}
	return badRequest(fmt.Sprintf("%s %d is out of range", field, v),
		fmt.Sprintf("VLAN IDs are %d..%d (0 and 4095 are reserved by 802.1Q)", MinVLAN, MaxVLAN))
}

func (p *PortProfile) normalize() error {
	if err := checkName("port profile", p.Name); err != nil {
		return err
	}
	if p.Mode == "" {
		p.Mode = "access"
	}
	if err := checkEnum("mode", p.Mode, PortModes); err != nil {
		return err
	}
	switch p.Mode {
	case "access":
		if p.AccessVLAN == 0 {
			return badRequest("access port profile "+p.Name+" has no access_vlan",
				fmt.Sprintf("set access_vlan to a VLAN ID in %d..%d, or use mode trunk with allowed_vlans", MinVLAN, MaxVLAN))
		}
		if err := checkVLAN("access_vlan", p.AccessVLAN); err != nil {
			return err
		}
		if len(p.AllowedVLANs) != 0 || p.NativeVLAN != 0 {
			return badRequest("allowed_vlans and native_vlan apply to trunk port profiles only",
				"remove them, or set mode to trunk")
		}
	case "trunk":
		if p.AccessVLAN != 0 {
			return badRequest("access_vlan applies to access port profiles only",
				"remove access_vlan, or set mode to access")
		}
		if len(p.AllowedVLANs) == 0 {
			return badRequest("trunk port profile "+p.Name+" has no allowed_vlans",
				"list the VLANs the trunk carries in allowed_vlans, e.g. [10, 20]")
		}
		for _, v := range p.AllowedVLANs {
			if err := checkVLAN("allowed_vlans entry", v); err != nil {
				return err
			}
		}
		slices.Sort(p.AllowedVLANs)
		p.AllowedVLANs = slices.Compact(p.AllowedVLANs)
		if p.NativeVLAN != 0 {
			if err := checkVLAN("native_vlan", p.NativeVLAN); err != nil {
				return err
			}
			if !slices.Contains(p.AllowedVLANs, p.NativeVLAN) {
				return badRequest(fmt.Sprintf("native_vlan %d is not in allowed_vlans", p.NativeVLAN),
					"add it to allowed_vlans or choose one of them")
			}
		}
	}
	if p.QoSClass == "" {
		p.QoSClass = "best-effort"
	}
	if err := checkEnum("qos_class", p.QoSClass, QoSClasses); err != nil {
		return err
	}
	// UCS Manager's default network control policy allows forged MACs.
	if p.MACForging == "" {
		p.MACForging = "allow"
	}
	if err := checkEnum("mac_forging", p.MACForging, MACForgings); err != nil {
		return err
	}
	if p.MaxPorts == 0 {
		p.MaxPorts = DefaultMaxPorts
	}
	if p.MaxPorts < 1 || p.MaxPorts > MaxMaxPorts {
		return badRequest(fmt.Sprintf("max_ports %d is out of range", p.MaxPorts),
			fmt.Sprintf("use 1..%d, or leave it out for %d", MaxMaxPorts, DefaultMaxPorts))
	}
	if len(p.Description) > maxDescLen {
		return badRequest(fmt.Sprintf("description is %d bytes long", len(p.Description)),
			fmt.Sprintf("keep it to %d bytes", maxDescLen))
	}
	return nil
}

// VLANs says which VLANs the profile carries, as a show command prints it.
func (p *PortProfile) VLANs() string {
	if p.Mode == "access" {
		return strconv.Itoa(p.AccessVLAN)
	}
	s := make([]string, len(p.AllowedVLANs))
	for i, v := range p.AllowedVLANs {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

var ifNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,15}$`)

var serverPortRE = regexp.MustCompile(`^Ethernet[1-9][0-9]{0,2}/[1-9][0-9]{0,2}$`)

func (h *Host) normalize() error {
	if err := checkName("host", h.Name); err != nil {
		return err
	}
	if h.FI == "" {
		return badRequest("host "+h.Name+" has no fi", "set fi to the Fabric Interconnect the host is cabled to")
	}
	if !serverPortRE.MatchString(h.ServerPort) {
		return badRequest(fmt.Sprintf("server_port %q is not valid", h.ServerPort),
			`name the FI port the host is cabled to as "Ethernet<slot>/<port>", e.g. "Ethernet1/1"`)
	}
	if h.MaxVNICs == 0 {
		h.MaxVNICs = DefaultMaxVNICs
	}
	for _, a := range []struct{ field, v string }{{"uplink_if", h.UplinkIf}, {"fi_if", h.FIIf}} {
		if a.v != "" && !ifNameRE.MatchString(a.v) {
			return badRequest(fmt.Sprintf("%s %q is not an interface name", a.field, a.v), "use 1 to 15 letters, digits, '.', '_' or '-'")
		}
	}
	if (h.UplinkIf != "" || h.FIIf != "") && (h.UplinkAddr != "" || h.FIAddr != "") {
		return badRequest("host "+h.Name+" has both a UDP cable (uplink_addr, fi_addr) and a veth (uplink_if, fi_if)",
			"give one cable: the UDP addresses, or the veth's interface names")
	}
	for _, a := range []struct{ field, v string }{{"uplink_addr", h.UplinkAddr}, {"fi_addr", h.FIAddr}} {
		if a.v == "" {
			continue
		}
		if ap, err := netip.ParseAddrPort(a.v); err != nil || ap.Port() == 0 || ap.Addr().IsUnspecified() {
			return badRequest(fmt.Sprintf("%s %q is not one ip:port", a.field, a.v), `give an address such as "127.0.0.1:47001"`)
		}
	}
	if h.MaxVNICs < 1 || h.MaxVNICs > MaxMaxVNICs {
		return badRequest(fmt.Sprintf("max_vnics %d is out of range", h.MaxVNICs),
			fmt.Sprintf("use 1..%d, or leave it out for %d", MaxMaxVNICs, DefaultMaxVNICs))
	}
	return nil
}

func (f *FabricInterconnect) normalize() error {
	return checkName("fabric interconnect", f.Name)
}

func (v *VM) normalize() error {
	if err := checkName("VM", v.Name); err != nil {
		return err
	}
	if v.Host == "" {
		return badRequest("VM "+v.Name+" has no host", "set host to the host the VM runs on")
	}
	if v.PortProfile == "" {
		return badRequest("VM "+v.Name+" has no port_profile", "set port_profile to the profile its vEth gets")
	}
	mac, err := net.ParseMAC(v.MAC)
	if err != nil || len(mac) != 6 {
		return badRequest(fmt.Sprintf("mac %q is not a MAC address", v.MAC),
			`give a 48-bit MAC such as "00:25:b5:00:00:01"`)
	}
	// Bit 0 of the first octet is the I/G bit: 1 means group (multicast).
	if mac[0]&1 != 0 {
		return badRequest(fmt.Sprintf("mac %s is not unicast (a multicast or broadcast address)", mac),
			"a vNIC needs a unicast MAC: the first octet must be even")
	}
	if string(mac) == "\x00\x00\x00\x00\x00\x00" {
		return badRequest("mac 00:00:00:00:00:00 is not a usable address", "give the vNIC a real unicast MAC")
	}
	v.MAC = mac.String() // one spelling, so duplicates are found
	if v.IP != "" {
		a, err := netip.ParseAddr(v.IP)
		if err != nil || a.Zone() != "" {
			return badRequest(fmt.Sprintf("ip %q is not an IP address", v.IP), `give an IPv4 or IPv6 address without prefix length, e.g. "10.0.10.11"`)
		}
		v.IP = a.String()
	}
	if v.MemMiB == 0 {
		v.MemMiB = DefaultMemMiB
	}
	if v.MemMiB < 1 || v.MemMiB > MaxMemMiB {
		return badRequest(fmt.Sprintf("mem_mib %d is out of range", v.MemMiB), fmt.Sprintf("use 1..%d", MaxMemMiB))
	}
	if v.ProbeRate == 0 {
		v.ProbeRate = DefaultProbeRate
	}
	if v.ProbeRate < 1 || v.ProbeRate > MaxProbeRate {
		return badRequest(fmt.Sprintf("probe_rate %d is out of range", v.ProbeRate), fmt.Sprintf("use 1..%d frames/s per peer", MaxProbeRate))
	}
	if v.ProbeFrameLen == 0 {
		v.ProbeFrameLen = 64
	}
	if v.ProbeFrameLen < 64 || v.ProbeFrameLen > 1518 {
		return badRequest(fmt.Sprintf("probe_frame_len %d is out of range", v.ProbeFrameLen), "use 64..1518 bytes")
	}
	if v.Guest == "" {
		v.Guest = "probe"
	}
	if err := checkEnum("guest", v.Guest, VMGuests); err != nil {
		return err
	}
	if v.ModeRequested == "" {
		v.ModeRequested = "direct"
	}
	return checkEnum("mode_requested", v.ModeRequested, VMModes)
}

// Error is an API error: an HTTP status, what is wrong, and how to fix it.
type Error struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Hint    string `json:"hint,omitempty"`
}

func (e *Error) Error() string {
	if e.Hint == "" {
		return e.Message
	}
	return e.Message + "; " + e.Hint
}

func apiError(status int, msg, hint string) *Error {
	return &Error{Status: status, Message: msg, Hint: hint}
}

func badRequest(msg, hint string) *Error { return apiError(http.StatusBadRequest, msg, hint) }
