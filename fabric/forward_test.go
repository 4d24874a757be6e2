package fabric_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/fabric/fabrictest"
	"github.com/vmfex/vmfex/internal/testutil"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/wire"
)

// checkOne asserts that fs holds exactly one frame with the given VN-Tag,
// VLAN and id.
func checkOne(t *testing.T, where string, fs []fabrictest.Frame, tag wire.VNTag, vlan uint16, id uint32) fabrictest.Frame {
	t.Helper()
	if len(fs) != 1 {
		t.Fatalf("%s received %d frames, want 1: %+v", where, len(fs), fs)
	}
	f := fs[0]
	if !f.HasVNTag || f.VNTag != tag {
		t.Errorf("%s: VN-Tag = %v %+v, want %+v", where, f.HasVNTag, f.VNTag, tag)
	}
	if !f.HasVLAN || f.VLAN != vlan {
		t.Errorf("%s: VLAN = %v %d, want %d", where, f.HasVLAN, f.VLAN, vlan)
	}
	if got := frameID(f); got != id {
		t.Errorf("%s: frame id = %d, want %d", where, got, id)
	}
	return f
}

func TestUnicastBetweenServerPorts(t *testing.T) {
	r := newRig(t, 2, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	a, b := mac(1), mac(2)
	r.veth(32769, "Ethernet1/1", 1, a, "web")
	r.veth(32770, "Ethernet1/2", 5, b, "web")

	// A broadcasts untagged (its adapter's default VLAN): flooded to B only;
	// the FI pushes the 802.1Q tag.
	r.send("Ethernet1/1", 1, 0, wire.Broadcast, a, 1)
	r.settle()
	got := r.take()
	checkOne(t, "Ethernet1/2", got["Ethernet1/2"], downTag(5, 0), 10, 1)
	if n := len(got["Ethernet1/1"]); n != 0 {
		t.Errorf("the source port received %d frames of its own broadcast", n)
	}

	// B answers A, tagged with PCP 5: known unicast, PCP kept.
	eth := frame(a, b, 2)
	if err := r.end("Ethernet1/2").Send(5, 10, 5, eth); err != nil {
		t.Fatal(err)
	}
	r.settle()
	got = r.take()
	f := checkOne(t, "Ethernet1/1", got["Ethernet1/1"], downTag(1, 0), 10, 2)
	if f.PCP != 5 {
		t.Errorf("PCP = %d, want 5", f.PCP)
	}
	if f.Dst != a || f.Src != b {
		t.Errorf("MACs = %v <- %v, want %v <- %v", f.Dst, f.Src, a, b)
	}
	if !bytes.Equal(f.Payload, eth[14:]) {
		t.Errorf("payload changed: %x, want %x", f.Payload, eth[14:])
	}
	// The exact bytes: DA SA | 8926 d=1 dvif=1 | 8100 pcp5 vid10 | payload.
	want := fabrictest.Tagged(eth, false, 0, 10, 5)
	want = append(append(append([]byte{}, want[:12]...), 0x89, 0x26, 0x80, 0x01, 0x00, 0x00), want[12:]...)
	if !bytes.Equal(f.Raw, want) {
		t.Errorf("frame bytes\n got %x\nwant %x", f.Raw, want)
	}

	// A to B: now known.
	r.send("Ethernet1/1", 1, 10, b, a, 3)
	r.settle()
	got = r.take()
	checkOne(t, "Ethernet1/2", got["Ethernet1/2"], downTag(5, 0), 10, 3)

	ca, cb := r.counters(32769), r.counters(32770)
	if ca.IngressFrames != 2 || ca.EgressFrames != 1 || cb.IngressFrames != 1 || cb.EgressFrames != 2 {
		t.Errorf("counters A %+v B %+v; want A in 2 out 1, B in 1 out 2", ca, cb)
	}
	// Bytes exclude the VN-Tag and include the 802.1Q tag on both sides.
	if wantB := uint64(2 * (60 + 4)); cb.EgressBytes != wantB {
		t.Errorf("B egress bytes = %d, want %d", cb.EgressBytes, wantB)
	}
	if ca.Drops.Total()+cb.Drops.Total() != 0 {
		t.Errorf("drops: A %v B %v", ca.Drops, cb.Drops)
	}
	tab := r.fi.MACTable(10)
	if len(tab) != 2 || tab[0].Port != "Veth32769" || tab[1].Port != "Veth32770" || tab[0].Type != "dynamic" {
		t.Errorf("MACTable(10) = %+v", tab)
	}
	if len(r.fi.MACTable(20)) != 0 {
		t.Errorf("MACTable(20) not empty")
	}
}

func TestHairpin(t *testing.T) {
	r := newRig(t, 1, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	a, b := mac(1), mac(2)
	r.veth(32769, "Ethernet1/1", 7, a, "web")
	r.veth(32770, "Ethernet1/1", 9, b, "web")

	// Broadcast from vif 7 comes back down the same port for vif 9 only,
	// marked looped with svif 7.
	r.send("Ethernet1/1", 7, 10, wire.Broadcast, a, 1)
	r.settle()
	checkOne(t, "flood", r.end("Ethernet1/1").Take(), downTag(9, 7), 10, 1)

	r.send("Ethernet1/1", 9, 10, a, b, 2)
	r.settle()
	f := checkOne(t, "unicast", r.end("Ethernet1/1").Take(), downTag(7, 9), 10, 2)
	if f.VNTagWord() != 0x8007_8009 {
		t.Errorf("VN-Tag word = %#08x, want 0x80078009", f.VNTagWord())
	}

	// To itself: dropped and counted.
	r.send("Ethernet1/1", 9, 10, b, b, 3)
	r.settle()
	if fs := r.end("Ethernet1/1").Take(); len(fs) != 0 {
		t.Errorf("frame to self delivered: %+v", fs)
	}
	if n := r.counters(32770).Drops[fabric.DropSamePort]; n != 1 {
		t.Errorf("same-port-filter drops = %d, want 1", n)
	}
}

func TestFloodWithinVLAN(t *testing.T) {
	r := newRig(t, 2, 1, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "v10", AccessVLAN: 10})
	r.profile(fabric.PortProfile{Name: "v20", AccessVLAN: 20})
	r.profile(fabric.PortProfile{Name: "trunk", Mode: fabric.ModeTrunk, AllowedVLANs: []uint16{20, 10}})
	r.veth(1, "Ethernet1/1", 1, mac(1), "v10")
	r.veth(2, "Ethernet1/2", 1, mac(2), "v10")
	r.veth(3, "Ethernet1/2", 2, mac(3), "v20")
	r.veth(4, "Ethernet1/1", 2, mac(4), "trunk")

	for i, dst := range []wire.MAC{wire.Broadcast, {0x01, 0x00, 0x5e, 0, 0, 1}, mac(99)} {
		id := uint32(i + 1)
		r.send("Ethernet1/1", 1, 10, dst, mac(1), id)
		r.settle()
		got := r.take()
		checkOne(t, "v10 peer", got["Ethernet1/2"], downTag(1, 0), 10, id)
		checkOne(t, "trunk", got["Ethernet1/1"], downTag(2, 1), 10, id)
		up := got["Ethernet1/17"]
		if len(up) != 1 || up[0].HasVNTag || up[0].VLAN != 10 || frameID(up[0]) != id {
			t.Errorf("dst %v: uplink got %+v, want one VLAN 10 frame without VN-Tag", dst, up)
		}
	}
	if c := r.counters(3); c.EgressFrames != 0 {
		t.Errorf("VLAN 20 vEth received %d frames of VLAN 10", c.EgressFrames)
	}

	// The trunk sends in VLAN 20: only vEth 3 and the uplink.
	r.send("Ethernet1/1", 2, 20, wire.Broadcast, mac(4), 9)
	r.settle()
	got := r.take()
	checkOne(t, "v20", got["Ethernet1/2"], downTag(2, 0), 20, 9)
	if len(got["Ethernet1/1"]) != 0 {
		t.Errorf("VLAN 20 flood reached Ethernet1/1: %+v", got["Ethernet1/1"])
	}
}

func TestMACForging(t *testing.T) {
	for _, allow := range []bool{false, true} {
		name := map[bool]string{false: "deny", true: "allow"}[allow]
		t.Run(name, func(t *testing.T) {
			r := newRig(t, 2, 0, fabric.Config{})
			r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10, AllowForgedMAC: allow})
			r.veth(1, "Ethernet1/1", 1, mac(1), "web")
			r.veth(2, "Ethernet1/2", 1, mac(2), "web")
			forged := mac(66)
			r.send("Ethernet1/1", 1, 10, mac(2), forged, 1)
			r.settle()
			fs := r.end("Ethernet1/2").Take()
			drops := r.counters(1).Drops[fabric.DropMACForged]
			tab := r.fi.MACTable(0)
			if allow {
				if len(fs) != 1 || drops != 0 {
					t.Fatalf("allowed forging: delivered %d, mac-forged %d; want 1, 0", len(fs), drops)
				}
				if len(tab) != 1 || tab[0].MAC != forged || tab[0].Port != "Veth1" {
					t.Errorf("forged MAC not learned on Veth1: %+v", tab)
				}
			} else {
				if len(fs) != 0 || drops != 1 {
					t.Fatalf("denied forging: delivered %d, mac-forged %d; want 0, 1", len(fs), drops)
				}
				if len(tab) != 0 {
					t.Errorf("forged frame was learned: %+v", tab)
				}
				if n := r.fi.Stats().Drops[fabric.DropMACForged]; n != 1 {
					t.Errorf("FI-wide mac-forged = %d, want 1", n)
				}
			}
		})
	}
}

func TestMaxPorts(t *testing.T) {
	r := newRig(t, 1, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "db", AccessVLAN: 30, MaxPorts: 2})
	r.veth(1, "Ethernet1/1", 1, mac(1), "db")
	r.veth(2, "Ethernet1/1", 2, mac(2), "db")
	err := r.fi.CreateVEth(fabric.VEthConfig{ID: 3, ServerPort: "Ethernet1/1", VIF: 3, MAC: mac(3), Profile: "db"})
	if !errors.Is(err, fabric.ErrMaxPorts) {
		t.Fatalf("third vEth: err = %v, want ErrMaxPorts", err)
	}
	if err := r.fi.SetPortProfile(fabric.PortProfile{Name: "db", AccessVLAN: 30, MaxPorts: 1}); !errors.Is(err, fabric.ErrMaxPorts) {
		t.Errorf("lowering MaxPorts below use: err = %v, want ErrMaxPorts", err)
	}
	if err := r.fi.DeleteVEth(2); err != nil {
		t.Fatal(err)
	}
	r.veth(3, "Ethernet1/1", 3, mac(3), "db")
	r.profile(fabric.PortProfile{Name: "other", AccessVLAN: 30})
	r.veth(4, "Ethernet1/1", 4, mac(4), "other")
	if err := r.fi.SetVEthProfile(4, "db"); !errors.Is(err, fabric.ErrMaxPorts) {
		t.Errorf("SetVEthProfile into a full profile: err = %v, want ErrMaxPorts", err)
	}
	r.profile(fabric.PortProfile{Name: "db", AccessVLAN: 30}) // unlimited
	if err := r.fi.SetVEthProfile(4, "db"); err != nil {
		t.Errorf("SetVEthProfile after raising MaxPorts: %v", err)
	}
}

func TestDeletePortProfileInUse(t *testing.T) {
	r := newRig(t, 1, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	r.profile(fabric.PortProfile{Name: "app", Mode: fabric.ModeTrunk, AllowedVLANs: []uint16{30, 20, 30}, NativeVLAN: 20})
	r.veth(1, "Ethernet1/1", 1, mac(1), "web")
	err := r.fi.DeletePortProfile("web")
	if !errors.Is(err, fabric.ErrProfileInUse) {
		t.Fatalf("DeletePortProfile(web) = %v, want ErrProfileInUse", err)
	}
	if !bytes.Contains([]byte(err.Error()), []byte("Veth1")) {
		t.Errorf("error %q does not name the vEth in the way", err)
	}
	if err := r.fi.DeletePortProfile("nope"); !errors.Is(err, fabric.ErrUnknownProfile) {
		t.Errorf("DeletePortProfile(nope) = %v, want ErrUnknownProfile", err)
	}
	pps := r.fi.PortProfiles()
	if len(pps) != 2 || pps[0].Name != "app" || pps[1].Name != "web" {
		t.Fatalf("PortProfiles() = %+v, want app, web", pps)
	}
	if !slices.Equal(pps[0].AllowedVLANs, []uint16{20, 30}) || pps[0].QoSClass != fabric.DefaultQoSClass {
		t.Errorf("stored trunk profile = %+v, want VLANs [20 30], QoS best-effort", pps[0])
	}
	if err := r.fi.DeleteVEth(1); err != nil {
		t.Fatal(err)
	}
	if err := r.fi.DeletePortProfile("web"); err != nil {
		t.Errorf("DeletePortProfile(web) after its vEth left: %v", err)
	}
}

func TestProfileValidation(t *testing.T) {
	f := fabric.New(fabric.Config{})
	defer f.Close()
	tests := []struct {
		name string
		pp   fabric.PortProfile
		ok   bool
	}{
		{"access", fabric.PortProfile{Name: "a", AccessVLAN: 1}, true},
		{"access 4094", fabric.PortProfile{Name: "a", AccessVLAN: 4094}, true},
		{"access 0", fabric.PortProfile{Name: "a"}, false},
		{"access 4095", fabric.PortProfile{Name: "a", AccessVLAN: 4095}, false},
		{"access with allowed list", fabric.PortProfile{Name: "a", AccessVLAN: 5, AllowedVLANs: []uint16{5}}, false},
		{"access with native", fabric.PortProfile{Name: "a", AccessVLAN: 5, NativeVLAN: 5}, false},
		{"no name", fabric.PortProfile{AccessVLAN: 5}, false},
		{"name with space", fabric.PortProfile{Name: "a b", AccessVLAN: 5}, false},
		{"negative max ports", fabric.PortProfile{Name: "a", AccessVLAN: 5, MaxPorts: -1}, false},
		{"trunk", fabric.PortProfile{Name: "t", Mode: fabric.ModeTrunk, AllowedVLANs: []uint16{1, 4094}}, true},
		{"trunk native only", fabric.PortProfile{Name: "t", Mode: fabric.ModeTrunk, NativeVLAN: 7}, true},
		{"trunk empty", fabric.PortProfile{Name: "t", Mode: fabric.ModeTrunk}, false},
		{"trunk VLAN 0", fabric.PortProfile{Name: "t", Mode: fabric.ModeTrunk, AllowedVLANs: []uint16{0}}, false},
		{"trunk VLAN 4095", fabric.PortProfile{Name: "t", Mode: fabric.ModeTrunk, AllowedVLANs: []uint16{10, 4095}}, false},
		{"trunk native 5000", fabric.PortProfile{Name: "t", Mode: fabric.ModeTrunk, AllowedVLANs: []uint16{10}, NativeVLAN: 5000}, false},
		{"trunk with access VLAN", fabric.PortProfile{Name: "t", Mode: fabric.ModeTrunk, AllowedVLANs: []uint16{10}, AccessVLAN: 10}, false},
		{"bad mode", fabric.PortProfile{Name: "t", Mode: 7, AccessVLAN: 10}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.SetPortProfile(tt.pp)
			if tt.ok && err != nil {
				t.Errorf("SetPortProfile(%+v) = %v, want nil", tt.pp, err)
			}
			if !tt.ok && !errors.Is(err, fabric.ErrInvalidConfig) {
				t.Errorf("SetPortProfile(%+v) = %v, want ErrInvalidConfig", tt.pp, err)
			}
		})
	}
}

func TestVEthErrors(t *testing.T) {
	r := newRig(t, 1, 1, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	r.veth(1, "Ethernet1/1", 1, mac(1), "web")
	tests := []struct {
		name string
		c    fabric.VEthConfig
		want error
	}{
		{"duplicate id", fabric.VEthConfig{ID: 1, ServerPort: "Ethernet1/1", VIF: 2, MAC: mac(2), Profile: "web"}, fabric.ErrVEthExists},
		{"duplicate vif", fabric.VEthConfig{ID: 2, ServerPort: "Ethernet1/1", VIF: 1, MAC: mac(2), Profile: "web"}, fabric.ErrVifInUse},
		{"unknown port", fabric.VEthConfig{ID: 2, ServerPort: "Ethernet9/9", VIF: 2, MAC: mac(2), Profile: "web"}, fabric.ErrUnknownPort},
		{"uplink port", fabric.VEthConfig{ID: 2, ServerPort: "Ethernet1/17", VIF: 2, MAC: mac(2), Profile: "web"}, fabric.ErrUnknownPort},
		{"unknown profile", fabric.VEthConfig{ID: 2, ServerPort: "Ethernet1/1", VIF: 2, MAC: mac(2), Profile: "nope"}, fabric.ErrUnknownProfile},
		{"vif 0", fabric.VEthConfig{ID: 2, ServerPort: "Ethernet1/1", VIF: 0, MAC: mac(2), Profile: "web"}, fabric.ErrInvalidConfig},
		{"vif 4096", fabric.VEthConfig{ID: 2, ServerPort: "Ethernet1/1", VIF: 4096, MAC: mac(2), Profile: "web"}, fabric.ErrInvalidConfig},
		{"id 0", fabric.VEthConfig{ID: 0, ServerPort: "Ethernet1/1", VIF: 2, MAC: mac(2), Profile: "web"}, fabric.ErrInvalidConfig},
		{"multicast MAC", fabric.VEthConfig{ID: 2, ServerPort: "Ethernet1/1", VIF: 2, MAC: wire.Broadcast, Profile: "web"}, fabric.ErrInvalidConfig},
		{"zero MAC", fabric.VEthConfig{ID: 2, ServerPort: "Ethernet1/1", VIF: 2, Profile: "web"}, fabric.ErrInvalidConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := r.fi.CreateVEth(tt.c); !errors.Is(err, tt.want) {
				t.Errorf("CreateVEth(%+v) = %v, want %v", tt.c, err, tt.want)
			}
		})
	}
	if err := r.fi.DeleteVEth(99); !errors.Is(err, fabric.ErrUnknownVEth) {
		t.Errorf("DeleteVEth(99) = %v, want ErrUnknownVEth", err)
	}
	if err := r.fi.RebindVEth(99, "Ethernet1/1", 5); !errors.Is(err, fabric.ErrUnknownVEth) {
		t.Errorf("RebindVEth(99) = %v, want ErrUnknownVEth", err)
	}
	r.veth(2, "Ethernet1/1", 2, mac(2), "web")
	if err := r.fi.RebindVEth(2, "Ethernet1/1", 1); !errors.Is(err, fabric.ErrVifInUse) {
		t.Errorf("RebindVEth onto a bound vif = %v, want ErrVifInUse", err)
	}
	if err := r.fi.AddServerPort("Ethernet1/1", nil, nil); !errors.Is(err, fabric.ErrInvalidConfig) {
		t.Errorf("AddServerPort(nil port) = %v, want ErrInvalidConfig", err)
	}
	vs := r.fi.VEths()
	if len(vs) != 2 || vs[0].ID != 1 || vs[1].ID != 2 || vs[0].Name != "Veth1" || vs[0].VLAN != 10 || vs[0].State != fabric.LinkUp {
		t.Errorf("VEths() = %+v", vs)
	}
}

func TestLiveProfileChange(t *testing.T) {
	r := newRig(t, 2, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "p", AccessVLAN: 10})
	r.profile(fabric.PortProfile{Name: "stay10", AccessVLAN: 10})
	r.profile(fabric.PortProfile{Name: "v20", AccessVLAN: 20})
	a, d, c := mac(1), mac(4), mac(3)
	r.veth(1, "Ethernet1/1", 1, a, "p")
	r.veth(4, "Ethernet1/2", 4, d, "stay10")
	r.veth(3, "Ethernet1/2", 3, c, "v20")
	ad := r.end("Ethernet1/1")

	r.send("Ethernet1/1", 1, 10, d, a, 1)
	r.send("Ethernet1/2", 4, 10, a, d, 2)
	r.settle()
	got := r.take()
	checkOne(t, "before: D", got["Ethernet1/2"], downTag(4, 0), 10, 1)
	checkOne(t, "before: A", got["Ethernet1/1"], downTag(1, 0), 10, 2)
	if cfg, _ := ad.Vif(1); cfg.DefaultVLAN != 10 || cfg.MAC != a {
		t.Errorf("adapter vif 1 = %+v, want VLAN 10 MAC %v", cfg, a)
	}

	// Move profile p to VLAN 20 while traffic is set up.
	r.profile(fabric.PortProfile{Name: "p", AccessVLAN: 20})
	if cfg, _ := ad.Vif(1); cfg.DefaultVLAN != 20 {
		t.Errorf("adapter vif 1 not reprogrammed: %+v", cfg)
	}
	if tab := r.fi.MACTable(10); len(tab) != 1 || tab[0].MAC != d {
		t.Errorf("VLAN 10 entries after the change = %+v, want only D's", tab)
	}
	if v, _ := r.fi.VEth(1); v.VLAN != 20 || !slices.Equal(v.AllowedVLANs, []uint16{20}) {
		t.Errorf("VEth(1) = %+v, want VLAN 20", v)
	}

	// Old VLAN: A's tagged VLAN 10 frames are dropped; D's frames to A flood
	// in VLAN 10, where nobody else is.
	r.send("Ethernet1/1", 1, 10, d, a, 3)
	r.send("Ethernet1/2", 4, 10, a, d, 4)
	r.send("Ethernet1/2", 4, 10, wire.Broadcast, d, 5)
	// New VLAN: A's untagged frames are VLAN 20 and reach C.
	r.send("Ethernet1/1", 1, 0, c, a, 6)
	r.settle()
	got = r.take()
	if len(got["Ethernet1/1"]) != 0 {
		t.Errorf("A still receives VLAN 10 traffic: %+v", got["Ethernet1/1"])
	}
	checkOne(t, "after: C", got["Ethernet1/2"], downTag(3, 0), 20, 6)
	if n := r.counters(1).Drops[fabric.DropVLANNotAllowed]; n != 1 {
		t.Errorf("A vlan-not-allowed = %d, want 1", n)
	}
	if n := r.counters(4).Drops[fabric.DropNoDestination]; n != 2 {
		t.Errorf("D no-destination = %d, want 2", n)
	}

	// SetVEthProfile moves D to VLAN 20 too.
	if err := r.fi.SetVEthProfile(4, "v20"); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := r.end("Ethernet1/2").Vif(4); cfg.DefaultVLAN != 20 {
		t.Errorf("adapter vif 4 = %+v, want VLAN 20", cfg)
	}
	r.send("Ethernet1/2", 4, 0, a, d, 7)
	r.settle()
	checkOne(t, "after SetVEthProfile: A", r.end("Ethernet1/1").Take(), downTag(1, 0), 20, 7)
}

func TestMACAging(t *testing.T) {
	r := newRig(t, 2, 0, fabric.Config{MACAgingTime: 30 * time.Second})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	r.veth(1, "Ethernet1/1", 1, mac(1), "web")
	r.veth(2, "Ethernet1/2", 1, mac(2), "web")
	r.veth(3, "Ethernet1/2", 2, mac(3), "web")

	r.send("Ethernet1/1", 1, 10, mac(9), mac(1), 1) // learn A
	r.settle()
	r.take()
	r.clock.Advance(29 * time.Second)
	tab := r.fi.MACTable(10)
	if len(tab) != 1 || tab[0].Age != 29*time.Second {
		t.Fatalf("MACTable after 29 s = %+v, want A aged 29s", tab)
	}
	r.send("Ethernet1/2", 1, 10, mac(1), mac(2), 2) // known: only A
	r.settle()
	got := r.take()
	checkOne(t, "known", got["Ethernet1/1"], downTag(1, 0), 10, 2)
	if len(got["Ethernet1/2"]) != 0 {
		t.Errorf("known unicast flooded to %+v", got["Ethernet1/2"])
	}

	r.clock.Advance(2 * time.Second) // A: 31 s; B: 2 s
	if tab := r.fi.MACTable(10); len(tab) != 1 || tab[0].MAC != mac(2) {
		t.Errorf("MACTable after A expired = %+v, want only B", tab)
	}
	// Unicast to A floods again (lazily removed on lookup).
	r.send("Ethernet1/2", 2, 10, mac(1), mac(3), 3)
	r.settle()
	got = r.take()
	checkOne(t, "flood to A", got["Ethernet1/1"], downTag(1, 0), 10, 3)
	checkOne(t, "flood to B", got["Ethernet1/2"], downTag(1, 2), 10, 3)

	r.clock.Advance(31 * time.Second)
	// The FI's own ager may run at any moment too, so count what is left.
	before := r.fi.Stats().MACEntries
	if n := r.fi.AgeOut(); n != before || before > 2 {
		t.Errorf("AgeOut() = %d with %d entries, want all of at most 2 (B and C) removed", n, before)
	}
	if s := r.fi.Stats(); s.MACEntries != 0 {
		t.Errorf("MAC entries after AgeOut = %d, want 0", s.MACEntries)
	}
}

func TestMACMove(t *testing.T) {
	r := newRig(t, 2, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "any", AccessVLAN: 10, AllowForgedMAC: true})
	r.veth(1, "Ethernet1/1", 1, mac(1), "any")
	r.veth(2, "Ethernet1/2", 1, mac(2), "any")
	vm := mac(50)
	r.send("Ethernet1/1", 1, 10, wire.Broadcast, vm, 1)
	r.settle()
	// A RARP-like announcement from the other vEth moves the MAC at once.
	r.send("Ethernet1/2", 1, 10, wire.Broadcast, vm, 2)
	r.settle()
	tab := r.fi.MACTable(10)
	if len(tab) != 1 || tab[0].Port != "Veth2" {
		t.Errorf("after move: %+v, want %v on Veth2", tab, vm)
	}
	if n := r.fi.Stats().MACMoves; n != 1 {
		t.Errorf("MACMoves = %d, want 1", n)
	}
}

func TestRebindKeepsCounters(t *testing.T) {
	r := newRig(t, 2, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	a, b := mac(1), mac(2)
	r.veth(32769, "Ethernet1/1", 1, a, "web")
	r.veth(32770, "Ethernet1/2", 2, b, "web")
	for i := range 5 {
		r.send("Ethernet1/1", 1, 10, b, a, uint32(i))
	}
	r.send("Ethernet1/1", 1, 99, b, a, 5) // one drop
	r.settle()
	r.take()
	before := r.counters(32769)
	if before.IngressFrames != 6 || before.Drops[fabric.DropVLANNotAllowed] != 1 {
		t.Fatalf("counters before = %+v", before)
	}

	// The VM moves to the host behind Ethernet1/2, vif 7.
	if err := r.fi.RebindVEth(32769, "Ethernet1/2", 7); err != nil {
		t.Fatal(err)
	}
	if log := r.end("Ethernet1/1").ProgLog(); log[len(log)-1] != "remove 1" {
		t.Errorf("old adapter log = %q, want it to end with remove 1", log)
	}
	if _, ok := r.end("Ethernet1/2").Vif(7); !ok {
		t.Errorf("new adapter not programmed for vif 7")
	}
	v, _ := r.fi.VEth(32769)
	if v.ServerPort != "Ethernet1/2" || v.VIF != 7 || v.MAC != a || v.Profile != "web" || v.Counters != before {
		t.Errorf("after rebind: %+v; want Ethernet1/2 vif 7, same MAC, profile and counters %+v", v, before)
	}
	for _, e := range r.fi.MACTable(0) {
		if e.Port == "Veth32769" {
			t.Errorf("entry still points at the rebound vEth: %+v", e)
		}
	}

	// Old binding is gone; new one carries traffic, counters continue.
	r.send("Ethernet1/1", 1, 10, b, a, 10)
	r.send("Ethernet1/2", 2, 10, a, b, 11)
	r.send("Ethernet1/2", 7, 10, b, a, 12)
	r.settle()
	got := r.take()["Ethernet1/2"]
	if len(got) != 2 {
		t.Fatalf("Ethernet1/2 got %d frames, want 2: %+v", len(got), got)
	}
	for _, f := range got {
		switch frameID(f) {
		case 11:
			if f.VNTag != downTag(7, 2) {
				t.Errorf("B->A after rebind: tag %+v, want dvif 7 svif 2 looped", f.VNTag)
			}
		case 12:
			if f.VNTag != downTag(2, 7) {
				t.Errorf("A->B after rebind: tag %+v, want dvif 2 svif 7 looped", f.VNTag)
			}
		default:
			t.Errorf("unexpected frame %d", frameID(f))
		}
	}
	after := r.counters(32769)
	if after.IngressFrames != before.IngressFrames+1 || after.EgressFrames != before.EgressFrames+1 {
		t.Errorf("counters after = %+v, want one more in and out than %+v", after, before)
	}
	if n := r.fi.Stats().Unattributed[fabric.DropUnknownVIF]; n != 1 {
		t.Errorf("unknown-vif = %d, want 1 (the old binding)", n)
	}
	if err := r.fi.RebindVEth(32769, "Ethernet1/2", 7); err != nil {
		t.Errorf("rebind to the same place: %v", err)
	}
}

func TestUplinkLearnFlood(t *testing.T) {
	r := newRig(t, 1, 2, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	r.profile(fabric.PortProfile{Name: "unused", Mode: fabric.ModeTrunk, AllowedVLANs: []uint16{30}})
	a, x := mac(1), mac(0x100)
	r.veth(1, "Ethernet1/1", 3, a, "web")
	up1, up2 := r.end("Ethernet1/17"), r.end("Ethernet1/18")

	r.send("Ethernet1/1", 3, 10, wire.Broadcast, a, 1)
	r.settle()
	got := r.take()
	for _, name := range []string{"Ethernet1/17", "Ethernet1/18"} {
		fs := got[name]
		if len(fs) != 1 || fs[0].HasVNTag || !fs[0].HasVLAN || fs[0].VLAN != 10 || frameID(fs[0]) != 1 {
			t.Errorf("%s got %+v, want one 802.1Q VLAN 10 frame without VN-Tag", name, fs)
		}
	}

	// From the LAN to A: known, VN-Tag pushed in front of the 802.1Q tag.
	if err := up1.Send(0, 10, 2, frame(a, x, 2)); err != nil {
		t.Fatal(err)
	}
	r.settle()
	got = r.take()
	f := checkOne(t, "A from LAN", got["Ethernet1/1"], downTag(3, 0), 10, 2)
	if f.PCP != 2 {
		t.Errorf("PCP = %d, want 2", f.PCP)
	}
	if len(got["Ethernet1/18"]) != 0 {
		t.Errorf("known unicast also went to the other uplink")
	}
	tab := r.fi.MACTable(10)
	if len(tab) != 2 || tab[1].MAC != x || tab[1].Port != "Eth1/17" || !tab[1].Uplink {
		t.Errorf("MACTable(10) = %+v, want x on Eth1/17", tab)
	}

	// A to x: only uplink 1.
	r.send("Ethernet1/1", 3, 10, x, a, 3)
	// Unknown unicast from uplink 1: A and uplink 2, never back to uplink 1.
	if err := up1.Send(0, 10, 0, frame(mac(0x200), x, 4)); err != nil {
		t.Fatal(err)
	}
	// VLAN 30 is on the trunk (a profile uses it) though no vEth is in it.
	if err := up1.Send(0, 30, 0, frame(wire.Broadcast, x, 5)); err != nil {
		t.Fatal(err)
	}
	r.settle()
	got = r.take()
	if fs := got["Ethernet1/17"]; len(fs) != 1 || frameID(fs[0]) != 3 {
		t.Errorf("uplink 1 got %+v, want only frame 3", fs)
	}
	if fs := got["Ethernet1/18"]; len(fs) != 2 || frameID(fs[0]) != 4 || frameID(fs[1]) != 5 || fs[1].VLAN != 30 {
		t.Errorf("uplink 2 got %+v, want frames 4 and 5", fs)
	}
	checkOne(t, "A", got["Ethernet1/1"], downTag(3, 0), 10, 4)

	// Bad frames from the LAN.
	before := r.fi.Stats()
	send := func(raw []byte) {
		if err := up2.SendRaw(raw); err != nil {
			t.Fatal(err)
		}
	}
	send(frame(a, x, 6))                                                  // untagged: no native VLAN on the trunk
	send(fabrictest.Tagged(frame(a, x, 7), false, 0, 99, 0))              // VLAN no profile uses
	send(fabrictest.Tagged(frame(a, x, 8), true, 1, 10, 0))               // VN-Tag on an uplink
	send(fabrictest.Tagged(frame(a, wire.Broadcast, 9), false, 0, 10, 0)) // group source
	send([]byte{1, 2, 3})                                                 // short
	r.settle()
	if got := r.take(); len(got["Ethernet1/1"])+len(got["Ethernet1/17"]) != 0 {
		t.Errorf("bad uplink frames were forwarded: %+v", got)
	}
	after := r.fi.Stats()
	want := map[fabric.DropReason]uint64{fabric.DropVLANNotAllowed: 2, fabric.DropBadVNTag: 1, fabric.DropMalformed: 2}
	for reason, n := range want {
		if d := after.Unattributed[reason] - before.Unattributed[reason]; d != n {
			t.Errorf("unattributed %v = %d, want %d", reason, d, n)
		}
	}
	if pi, _ := r.fi.Port("Ethernet1/18"); pi.Stats.InDrops != 5 || pi.Kind != fabric.PortUplink {
		t.Errorf("Ethernet1/18 = %+v, want 5 in-drops", pi)
	}
}

func TestMalformedServerFrames(t *testing.T) {
	r := newRig(t, 1, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	r.profile(fabric.PortProfile{Name: "trunk", Mode: fabric.ModeTrunk, AllowedVLANs: []uint16{10}})
	a := mac(1)
	r.veth(1, "Ethernet1/1", 1, a, "web")
	r.veth(2, "Ethernet1/1", 2, mac(2), "trunk")
	r.send("Ethernet1/1", 2, 10, wire.Broadcast, mac(2), 0)
	r.settle()
	r.take()
	good := fabrictest.Tagged(frame(mac(2), a, 1), true, 1, 10, 0) // a valid frame from vif 1
	word := func(w uint32) []byte {
		f := append([]byte(nil), good...)
		f[14], f[15], f[16], f[17] = byte(w>>24), byte(w>>16), byte(w>>8), byte(w)
		return f
	}
	insert := func(at int, b ...byte) []byte {
		return slices.Insert(append([]byte(nil), good...), at, b...)
	}
	tests := []struct {
		name   string
		raw    []byte
		reason fabric.DropReason
		veth   uint32 // 0 = unattributed
	}{
		{"empty", []byte{}, fabric.DropMalformed, 0},
		{"short", good[:10], fabric.DropMalformed, 0},
		{"no VN-Tag", frame(mac(2), a, 1), fabric.DropBadVNTag, 0},
		{"802.1Q only", fabrictest.Tagged(frame(mac(2), a, 1), false, 0, 10, 0), fabric.DropBadVNTag, 0},
		{"truncated VN-Tag", good[:17], fabric.DropBadVNTag, 0},
		{"d=1", word(0x8000_0001), fabric.DropBadVNTag, 1},
		{"d=1 unknown vif", word(0x8000_0fff), fabric.DropBadVNTag, 0},
		{"p=1", word(0x4000_0001), fabric.DropBadVNTag, 1},
		{"version 1", word(0x0000_1001), fabric.DropBadVNTag, 1},
		{"unknown vif", word(0x0000_0033), fabric.DropUnknownVIF, 0},
		{"svif 0", word(0), fabric.DropUnknownVIF, 0},
		{"double VN-Tag", insert(18, 0x89, 0x26, 0, 0, 0, 1), fabric.DropMalformed, 1},
		{"double 802.1Q", insert(22, 0x81, 0x00, 0, 10), fabric.DropMalformed, 1},
		{"truncated 802.1Q", good[:21], fabric.DropMalformed, 1},
		{"VID 4095", fabrictest.Tagged(frame(mac(2), a, 1), true, 1, 4095, 0), fabric.DropVLANNotAllowed, 1},
		{"other VLAN", fabrictest.Tagged(frame(mac(2), a, 1), true, 1, 11, 0), fabric.DropVLANNotAllowed, 1},
		{"untagged on trunk without native", fabrictest.Tagged(frame(a, mac(2), 1), true, 2, 0, 0), fabric.DropVLANNotAllowed, 2},
		{"group source", fabrictest.Tagged(frame(mac(2), wire.Broadcast, 1), true, 1, 10, 0), fabric.DropMalformed, 1},
		{"zero source", fabrictest.Tagged(frame(mac(2), wire.MAC{}, 1), true, 1, 10, 0), fabric.DropMalformed, 1},
		{"forged", fabrictest.Tagged(frame(mac(2), mac(3), 1), true, 1, 10, 0), fabric.DropMACForged, 1},
		{"STP destination", fabrictest.Tagged(frame(wire.MAC{1, 0x80, 0xc2, 0, 0, 0}, a, 1), true, 1, 10, 0), fabric.DropReservedDst, 1},
		{"oversize", append(append([]byte(nil), good...), make([]byte, 9140)...), fabric.DropMalformed, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, vbefore := r.fi.Stats(), r.fi.VEths()
			if err := r.end("Ethernet1/1").SendRaw(tt.raw); err != nil {
				t.Fatal(err)
			}
			r.settle()
			if got := r.end("Ethernet1/1").Take(); len(got) != 0 {
				t.Errorf("frame was forwarded: %+v", got)
			}
			after := r.fi.Stats()
			for reason := range fabric.NumDropReasons {
				want := uint64(0)
				if fabric.DropReason(reason) == tt.reason {
					want = 1
				}
				if d := after.Drops[reason] - before.Drops[reason]; d != want {
					t.Errorf("FI %v drops += %d, want %d", fabric.DropReason(reason), d, want)
				}
			}
			unattr := after.Unattributed[tt.reason] - before.Unattributed[tt.reason]
			for i, v := range r.fi.VEths() {
				d := v.Counters.Drops[tt.reason] - vbefore[i].Counters.Drops[tt.reason]
				if want := map[bool]uint64{true: 1}[v.ID == tt.veth]; d != want {
					t.Errorf("%s %v drops += %d, want %d", v.Name, tt.reason, d, want)
				}
			}
			if want := map[bool]uint64{true: 1}[tt.veth == 0]; unattr != want {
				t.Errorf("unattributed %v += %d, want %d", tt.reason, unattr, want)
			}
		})
	}
	// Still forwarding afterwards.
	if err := r.end("Ethernet1/1").SendRaw(good); err != nil {
		t.Fatal(err)
	}
	r.settle()
	checkOne(t, "good frame", r.end("Ethernet1/1").Take(), downTag(2, 1), 10, 1)
}

func TestVifProgrammer(t *testing.T) {
	r := newRig(t, 1, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	r.profile(fabric.PortProfile{Name: "trunk", Mode: fabric.ModeTrunk, AllowedVLANs: []uint16{10, 20}, NativeVLAN: 20})
	r.veth(1, "Ethernet1/1", 1, mac(1), "web")
	r.veth(2, "Ethernet1/1", 2, mac(2), "trunk")
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10, QoSClass: "gold"}) // same VifConfig: no call
	r.profile(fabric.PortProfile{Name: "trunk", Mode: fabric.ModeTrunk, AllowedVLANs: []uint16{10, 20}})
	if err := r.fi.DeleteVEth(1); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"program 1 vlan=10 mac=02:00:00:00:00:01",
		"program 2 vlan=20 mac=02:00:00:00:00:02",
		"program 2 vlan=0 mac=02:00:00:00:00:02",
		"remove 1",
	}
	if got := r.end("Ethernet1/1").ProgLog(); !slices.Equal(got, want) {
		t.Errorf("programming calls\n got %q\nwant %q", got, want)
	}
}

func TestLifecycle(t *testing.T) {
	r := newRig(t, 1, 0, fabric.Config{})
	if err := r.fi.Start(); err != nil {
		t.Errorf("second Start = %v, want nil", err)
	}
	// A port added while running starts at once.
	fiSide, far := link.NewMemCable(0)
	e := fabrictest.NewAdapter("Ethernet1/2", far)
	r.ends = append(r.ends, e)
	if err := r.fi.AddServerPort("Ethernet1/2", fiSide, e); err != nil {
		t.Fatal(err)
	}
	if err := r.fi.AddServerPort("Ethernet1/2", fiSide, e); !errors.Is(err, fabric.ErrPortExists) {
		t.Errorf("duplicate port = %v, want ErrPortExists", err)
	}
	if pi, _ := r.fi.Port("Ethernet1/2"); pi.State != fabric.LinkUp || pi.Kind != fabric.PortServer {
		t.Errorf("new port = %+v, want up server port", pi)
	}
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	r.veth(1, "Ethernet1/1", 1, mac(1), "web")
	r.veth(2, "Ethernet1/2", 1, mac(2), "web")
	r.send("Ethernet1/1", 1, 10, mac(2), mac(1), 1)
	r.settle()
	checkOne(t, "late port", e.Take(), downTag(1, 0), 10, 1)

	// The far end goes away: the port goes down.
	e.Close()
	deadline := time.Now().Add(settleTimeout)
	for {
		if pi, _ := r.fi.Port("Ethernet1/2"); pi.State == fabric.LinkDown {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("port did not go down after its cable closed")
		}
		time.Sleep(time.Millisecond)
	}
	if v, _ := r.fi.VEth(2); v.State != fabric.LinkDown {
		t.Errorf("vEth on a down port is %v", v.State)
	}

	for range 2 {
		if err := r.fi.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	if err := r.fi.Start(); !errors.Is(err, fabric.ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
	if err := r.fi.SetPortProfile(fabric.PortProfile{Name: "x", AccessVLAN: 1}); !errors.Is(err, fabric.ErrClosed) {
		t.Errorf("SetPortProfile after Close = %v, want ErrClosed", err)
	}
	if err := r.fi.CreateVEth(fabric.VEthConfig{ID: 9, ServerPort: "Ethernet1/1", VIF: 9, MAC: mac(9), Profile: "web"}); !errors.Is(err, fabric.ErrClosed) {
		t.Errorf("CreateVEth after Close = %v, want ErrClosed", err)
	}
}

func TestDropReasonNames(t *testing.T) {
	want := []string{"malformed", "bad-vntag", "unknown-vif", "vlan-not-allowed", "mac-forged",
		"reserved-destination", "same-port-filter", "no-destination", "egress-vlan-not-allowed", "port-down",
		"hold-overflow", "veth-deleted"}
	if len(want) != fabric.NumDropReasons {
		t.Fatalf("NumDropReasons = %d, want %d", fabric.NumDropReasons, len(want))
	}
	for i, name := range want {
		r := fabric.DropReason(i)
		if r.String() != name {
			t.Errorf("DropReason(%d).String() = %q, want %q", i, r, name)
		}
		if p, ok := fabric.ParseDropReason(name); !ok || p != r {
			t.Errorf("ParseDropReason(%q) = %v, %v", name, p, ok)
		}
	}
	var d fabric.DropCounts
	d[fabric.DropMACForged] = 3
	if b, _ := d.MarshalJSON(); string(b) != `{"mac-forged":3}` {
		t.Errorf("DropCounts JSON = %s", b)
	}
}

// readingProg is a VifProgrammer that reads the FI from inside its calls,
// as an adapter agent reporting state might.
type readingProg struct {
	fi *fabric.FI
	mu sync.Mutex
	n  int // guarded by mu: calls
}

func (p *readingProg) ProgramVif(vif uint16, cfg fabric.VifConfig) { p.read() }
func (p *readingProg) RemoveVif(vif uint16)                        { p.read() }
func (p *readingProg) read() {
	p.fi.VEths()
	p.fi.MACTable(0)
	p.fi.PortProfiles()
	p.mu.Lock()
	p.n++
	p.mu.Unlock()
}

// TestProgrammerMayReadFI checks that a VifProgrammer reading the FI while
// other goroutines configure it does not deadlock, and that every call is
// made before the configuration call returns.
func TestProgrammerMayReadFI(t *testing.T) {
	testutil.CheckGoroutines(t)
	f := fabric.New(fabric.Config{})
	defer f.Close()
	prog := &readingProg{fi: f}
	fiSide, far := link.NewMemCable(0)
	defer far.Close()
	if err := f.AddServerPort("Ethernet1/1", fiSide, prog); err != nil {
		t.Fatal(err)
	}
	if err := f.SetPortProfile(fabric.PortProfile{Name: "web", AccessVLAN: 10}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 50 {
					id := uint32(g*100 + i + 1)
					if err := f.CreateVEth(fabric.VEthConfig{ID: id, ServerPort: "Ethernet1/1", VIF: uint16(id), MAC: mac(int(id)), Profile: "web"}); err != nil {
						t.Error(err)
					}
					if err := f.SetPortProfile(fabric.PortProfile{Name: "web", AccessVLAN: uint16(10 + i%2)}); err != nil {
						t.Error(err)
					}
					if err := f.DeleteVEth(id); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
	}()
	select {
	case <-done:
	case <-time.After(settleTimeout):
		t.Fatal("configuration with a reading VifProgrammer deadlocked")
	}
	prog.mu.Lock()
	defer prog.mu.Unlock()
	if prog.n < 4*50*2 {
		t.Errorf("%d programmer calls, want at least %d", prog.n, 4*50*2)
	}
}

func TestJSON(t *testing.T) {
	var pp fabric.PortProfile
	if err := json.Unmarshal([]byte(`{"Name":"t","Mode":"trunk","AllowedVLANs":[10]}`), &pp); err != nil || pp.Mode != fabric.ModeTrunk {
		t.Fatalf("unmarshal profile: %+v, %v", pp, err)
	}
	if err := json.Unmarshal([]byte(`{"Mode":"hybrid"}`), &pp); !errors.Is(err, fabric.ErrInvalidConfig) {
		t.Errorf("unmarshal bad mode: %v, want ErrInvalidConfig", err)
	}
	b, err := json.Marshal(fabric.VEthInfo{Mode: fabric.ModeAccess, State: fabric.LinkUp, MAC: mac(1)})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"Mode":"access"`, `"State":"up"`, `"MAC":"02:00:00:00:00:01"`, `"Drops":{}`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("VEthInfo JSON %s lacks %s", b, want)
		}
	}
}
