package agent

import (
	"testing"

	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/manager"
)

// TestVMConfig: a VM's probe peers are the other VMs of its VLAN, in a
// stable order (the destination of a migration rebuilds the same state
// layout from it), and its identity is the manager's.
func TestVMConfig(t *testing.T) {
	profiles := map[string]manager.PortProfile{
		"web":   {Name: "web", Mode: "access", AccessVLAN: 100, HighPerformance: true},
		"web2":  {Name: "web2", Mode: "trunk", AllowedVLANs: []int{100, 200}, NativeVLAN: 100},
		"other": {Name: "other", Mode: "access", AccessVLAN: 200},
	}
	vms := map[string]manager.VM{
		"c": {Name: "c", PortProfile: "web2", MAC: "00:25:b5:00:00:03", IP: "10.0.0.3", VEth: 32771, Vif: 3},
		"a": {Name: "a", PortProfile: "web", MAC: "00:25:b5:00:00:01", IP: "10.0.0.1", VEth: 32769, Vif: 1, MemMiB: 16, ProbeRate: 500, ProbeFrameLen: 128, ModeRequested: "direct"},
		"b": {Name: "b", PortProfile: "web", MAC: "00:25:b5:00:00:02", VEth: 32770, Vif: 2},
		"d": {Name: "d", PortProfile: "other", MAC: "00:25:b5:00:00:04", VEth: 32772, Vif: 4},
	}
	c, err := VMConfig(vms["a"], vms, profiles)
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != 32769 || c.VEth != 32769 || c.Vif != 1 || c.VLAN != 100 || c.Spec.MemSize != 16<<20 ||
		c.Traffic.Rate != 500 || c.Traffic.FrameLen != 128 || c.Spec.IP != [4]byte{10, 0, 0, 1} {
		t.Errorf("config = %+v", c)
	}
	if len(c.Peers) != 2 || c.Peers[0].VM != 32770 || c.Peers[1].VM != 32771 {
		t.Errorf("peers = %+v, want b then c (VLAN 100, by name)", c.Peers)
	}
	if _, err := VMConfig(manager.VM{Name: "v6", MAC: "00:25:b5:00:00:09", IP: "2001:db8::1"}, vms, profiles); err == nil {
		t.Error("an IPv6 address for the IPv4 probe workload was accepted")
	}
	if wantMode(vms["a"], profiles["web"]) != hypervisor.ModeDirect {
		t.Error("direct on a high-performance profile is not direct")
	}
	a := vms["a"]
	a.ModeRequested = "direct"
	if wantMode(a, profiles["other"]) != hypervisor.ModeEmulated {
		t.Error("direct on a profile without high performance is not emulated")
	}
}
