package fabric_test

import (
	"sync"
	"testing"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/wire"
)

// TestConfigChurnUnderTraffic changes profiles and bindings while frames
// flow from two ports and an uplink. Under -race it checks the snapshot
// swap; throughout, the vEths whose configuration never changes must only
// ever see their own VLAN, and every frame must be accounted for.
func TestConfigChurnUnderTraffic(t *testing.T) {
	r := newRig(t, 2, 1, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "p10", AccessVLAN: 10})
	r.profile(fabric.PortProfile{Name: "p20", AccessVLAN: 20})
	r.profile(fabric.PortProfile{Name: "trunk", Mode: fabric.ModeTrunk, AllowedVLANs: []uint16{10, 20}})
	a, b, c := mac(1), mac(2), mac(3)
	r.veth(1, "Ethernet1/1", 1, a, "p10") // fixed, VLAN 10
	r.veth(3, "Ethernet1/2", 1, c, "p20") // fixed, VLAN 20
	r.veth(2, "Ethernet1/2", 2, b, "p10") // churned
	const frames = 3000

	var wg sync.WaitGroup
	wg.Add(3)
	go func() { // A talks in VLAN 10
		defer wg.Done()
		for i := range frames {
			dst := []wire.MAC{wire.Broadcast, b, c, mac(99)}[i%4]
			if err := r.end("Ethernet1/1").Send(1, 10, 0, frame(dst, a, uint32(i))); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() { // the LAN talks in both VLANs
		defer wg.Done()
		for i := range frames {
			vlan := uint16(10 + 10*(i%2))
			if err := r.end("Ethernet1/17").Send(0, vlan, 0, frame(wire.Broadcast, mac(0x300), uint32(i))); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() { // the operator
		defer wg.Done()
		profiles := []string{"p20", "trunk", "p10"}
		for i := range 300 {
			if err := r.fi.SetVEthProfile(2, profiles[i%3]); err != nil {
				t.Error(err)
			}
			port, vif := "Ethernet1/1", uint16(5)
			if i%2 == 1 {
				port, vif = "Ethernet1/2", 2
			}
			if err := r.fi.RebindVEth(2, port, vif); err != nil {
				t.Error(err)
			}
			if err := r.fi.SetPortProfile(fabric.PortProfile{Name: "trunk", Mode: fabric.ModeTrunk,
				AllowedVLANs: []uint16{10, 20}, QoSClass: []string{"gold", "silver"}[i%2]}); err != nil {
				t.Error(err)
			}
			if err := r.fi.CreateVEth(fabric.VEthConfig{ID: 4, ServerPort: "Ethernet1/2", VIF: 4, MAC: mac(4), Profile: "trunk"}); err != nil {
				t.Error(err)
			}
			r.fi.VEths()
			r.fi.MACTable(0)
			if err := r.fi.DeleteVEth(4); err != nil {
				t.Error(err)
			}
		}
	}()
	wg.Wait()
	r.settle()

	got := r.take()
	for _, f := range got["Ethernet1/1"] {
		if f.VNTag.DVIF == 1 && f.VLAN != 10 {
			t.Fatalf("ISOLATION: Veth1 (VLAN 10) got a VLAN %d frame", f.VLAN)
		}
	}
	for _, f := range got["Ethernet1/2"] {
		if f.VNTag.DVIF == 1 && f.VLAN != 20 {
			t.Fatalf("ISOLATION: Veth3 (VLAN 20) got a VLAN %d frame", f.VLAN)
		}
	}
	if c := r.counters(1); c.IngressFrames != frames || c.Drops.Total() != 0 {
		t.Errorf("Veth1 counters %+v: want %d in and no drops", c, frames)
	}
	if c := r.counters(3); c.EgressFrames != frames/2 {
		t.Errorf("Veth3 received %d frames, want the LAN's %d VLAN 20 broadcasts", c.EgressFrames, frames/2)
	}
}
