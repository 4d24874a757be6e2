package vic_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/vmfex/vmfex/wire"
)

// TestUpstreamTagging: frames a guest sends with the real driver leave on
// the uplink with VN-Tag d=0, svif=vif, dvif=0, l=0, then 802.1Q with the
// vif's default VLAN (none for VLAN 0); a frame the guest tagged itself
// keeps its tag untouched. Every frame decodes as intact 802.1Q/IPv4/UDP in
// gopacket once the VN-Tag, which gopacket has no layer for, is removed.
func TestUpstreamTagging(t *testing.T) {
	const n = 300
	tests := []struct {
		name     string
		vif      uint16
		vlan     uint16  // SetVifVLAN
		guestTCI *uint16 // the guest's own 802.1Q tag
		frameLen int
		wantTCI  *uint16 // 802.1Q tag expected after the VN-Tag
	}{
		{"vlan100", 7, 100, nil, 0, ptr(wire.TCI(0, 100))},
		{"vlan0-untagged", 8, 0, nil, 0, nil},
		{"vlan4094-1514", 9, wire.MaxVID, nil, 1514, ptr(wire.TCI(0, wire.MaxVID))},
		{"svif-max", wire.MaxSVIF, 10, nil, 200, ptr(wire.TCI(0, 10))},
		{"guest-tagged-kept", 11, 100, ptr(wire.TCI(5, 300)), 0, ptr(wire.TCI(5, 300))},
		{"guest-tagged-vlan0", 12, 0, ptr(uint16(0x1000 | wire.TCI(3, 42))), 0, ptr(uint16(0x1000 | wire.TCI(3, 42)))},
		{"guest-priority-tag", 13, 100, ptr(wire.TCI(6, 0)), 0, ptr(wire.TCI(6, 0))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, 0, 0)
			fr := r.startReader()
			g := r.newVM(t, tt.vif, vmOpts{frameLen: tt.frameLen, tci: tt.guestTCI})
			r.a.SetVifVLAN(tt.vif, tt.vlan)
			if got := g.vnic.DefaultVLAN(); got != tt.vlan {
				t.Fatalf("DefaultVLAN() = %d, want %d", got, tt.vlan)
			}
			g.send(n)
			frames := fr.waitN(t, n)
			if len(frames) != n {
				t.Fatalf("uplink got %d frames, want %d", len(frames), n)
			}
			for i, f := range frames {
				want := probeFrame(fiMAC, vmMAC(tt.vif), vmIP(tt.vif), peerIP,
					wire.Probe{SrcVM: uint32(tt.vif), Seq: uint64(i)}, tt.frameLen)
				checkUpFrame(t, i, f, tt.vif, tt.wantTCI, want)
				if t.Failed() {
					return
				}
			}
			// The tx engine counts a batch once the uplink's Send returns,
			// which may be after the reader took its frames.
			st := g.vnic.Stats()
			for deadline := time.Now().Add(time.Minute); st.TxInFlight != 0 && time.Now().Before(deadline); st = g.vnic.Stats() {
				time.Sleep(time.Millisecond)
			}
			if st.TxFrames != n || st.TxDropped != 0 {
				t.Errorf("vNIC stats %+v, want TxFrames %d and no drops", st, n)
			}
			if d := dropsOf(r.a); d != (drops{}) {
				t.Errorf("adapter drops %+v, want none", d)
			}
			if us := r.a.UplinkStats(); us.TxFrames != n {
				t.Errorf("uplink TxFrames = %d, want %d", us.TxFrames, n)
			}
		})
	}
}

// checkUpFrame checks one upstream frame byte for byte: the VN-Tag word and
// position, the 802.1Q tag (wantTCI, nil: none) and that removing both
// gives back the guest's untagged frame want. Then it decodes the frame in
// gopacket from the inner 802.1Q on.
func checkUpFrame(t *testing.T, i int, f []byte, vif uint16, wantTCI *uint16, want []byte) {
	t.Helper()
	var h wire.FabricHeader
	if err := wire.ParseFabric(f, &h); err != nil {
		t.Fatalf("frame %d: ParseFabric: %v", i, err)
	}
	if got := binary.BigEndian.Uint16(f[12:]); got != wire.EtherTypeVNTag {
		t.Fatalf("frame %d: EtherType after the source MAC = %#04x, want VN-Tag %#04x", i, got, wire.EtherTypeVNTag)
	}
	wantTag := wire.VNTag{SVIF: vif} // d=0, p=0, dvif=0, l=0, ver=0
	if h.VNTag != wantTag || binary.BigEndian.Uint32(f[14:]) != uint32(vif) {
		t.Fatalf("frame %d: VN-Tag %+v (word %#08x), want %+v", i, h.VNTag, binary.BigEndian.Uint32(f[14:]), wantTag)
	}
	inner := append(bytes.Clone(f[:12]), f[12+wire.VNTagLen:]...)
	switch {
	case wantTCI == nil && h.HasVLAN:
		t.Fatalf("frame %d: unexpected 802.1Q tag TCI %#04x", i, h.TCI)
	case wantTCI != nil && (!h.HasVLAN || h.TCI != *wantTCI || h.VLANOff != 12+wire.VNTagLen):
		t.Fatalf("frame %d: 802.1Q present=%v TCI %#04x at %d, want TCI %#04x at %d", i, h.HasVLAN, h.TCI, h.VLANOff, *wantTCI, 12+wire.VNTagLen)
	}
	untagged := inner
	if wantTCI != nil {
		untagged = append(bytes.Clone(inner[:12]), inner[12+wire.VLANTagLen:]...)
	}
	if !bytes.Equal(untagged, want) {
		t.Fatalf("frame %d: payload changed on the way up:\n got % x\nwant % x", i, untagged, want)
	}
	decodeUp(t, i, inner, wantTCI, vif)
}

// decodeUp decodes an upstream frame without its VN-Tag in gopacket and
// checks the layers and both checksums.
func decodeUp(t *testing.T, i int, f []byte, wantTCI *uint16, vif uint16) {
	t.Helper()
	pkt := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		t.Fatalf("frame %d: gopacket: %v", i, el.Error())
	}
	eth, _ := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	mac := vmMAC(vif)
	if eth == nil || !bytes.Equal(eth.SrcMAC, mac[:]) || !bytes.Equal(eth.DstMAC, fiMAC[:]) {
		t.Fatalf("frame %d: gopacket Ethernet = %+v", i, eth)
	}
	q, _ := pkt.Layer(layers.LayerTypeDot1Q).(*layers.Dot1Q)
	switch {
	case wantTCI == nil && q != nil:
		t.Fatalf("frame %d: gopacket found a Dot1Q layer %+v, want none", i, q)
	case wantTCI != nil && q == nil:
		t.Fatalf("frame %d: gopacket found no Dot1Q layer", i)
	case wantTCI != nil:
		if q.VLANIdentifier != *wantTCI&wire.VIDMask || q.Priority != uint8(*wantTCI>>13) ||
			q.DropEligible != (*wantTCI&0x1000 != 0) || q.Type != layers.EthernetTypeIPv4 {
			t.Fatalf("frame %d: gopacket Dot1Q = %+v, want TCI %#04x over IPv4", i, q, *wantTCI)
		}
	}
	ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	udp, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if ip == nil || udp == nil {
		t.Fatalf("frame %d: gopacket IPv4 %v UDP %v", i, ip != nil, udp != nil)
	}
	src := vmIP(vif)
	if !ip.SrcIP.Equal(net.IP(src[:])) || !ip.DstIP.Equal(net.IP(peerIP[:])) || ip.Protocol != layers.IPProtocolUDP {
		t.Fatalf("frame %d: gopacket IPv4 = %+v", i, ip)
	}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	if err, mism := pkt.VerifyChecksums(); err != nil || len(mism) != 0 {
		t.Fatalf("frame %d: gopacket checksums: err %v, mismatches %+v", i, err, mism)
	}
	p, err := wire.ParseProbe(udp.Payload)
	if err != nil || p.Seq != uint64(i) || p.SrcVM != uint32(vif) {
		t.Fatalf("frame %d: probe in the UDP payload = %+v, %v; want seq %d from %d", i, p, err, i, vif)
	}
}

// TestUpstreamDescriptorTag: a packet whose tx descriptor asks for 802.1Q
// insertion (ti/tci, spec §4.2) leaves with that tag instead of the vif's
// default VLAN; one without ti gets the default; a frame that is already
// tagged is never tagged twice.
func TestUpstreamDescriptorTag(t *testing.T) {
	r := newRig(t, 0, 0)
	fr := r.startReader()
	const vif = 21
	g := r.newVM(t, vif, vmOpts{noRun: true})
	r.a.SetVifVLAN(vif, 100)
	tx := newRawTx(g)
	mk := func(seq uint64) []byte {
		return probeFrame(fiMAC, vmMAC(vif), vmIP(vif), peerIP, wire.Probe{SrcVM: vif, Seq: seq}, 0)
	}
	tests := []struct {
		name    string
		frame   []byte
		ti      bool
		tci     uint16
		wantTCI *uint16
	}{
		{"ti", mk(0), true, wire.TCI(4, 555), ptr(wire.TCI(4, 555))},
		{"no-ti-default", mk(1), false, 0, ptr(wire.TCI(0, 100))},
		{"ti-vid0-priority", mk(2), true, wire.TCI(7, 0), ptr(wire.TCI(7, 0))},
		{"ti-on-tagged-frame", pushTags(mk(3), nil, ptr(wire.TCI(1, 77))), true, wire.TCI(4, 555), ptr(wire.TCI(1, 77))},
	}
	for _, tt := range tests {
		tx.frame(tt.frame, tt.ti, tt.tci)
	}
	tx.doorbell()
	frames := fr.waitN(t, len(tests))
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkUpFrame(t, i, frames[i], vif, tt.wantTCI, mk(uint64(i)))
		})
	}
}

// TestUpstreamRuntFrames: a guest that posts frames shorter than an
// Ethernet header (a buggy driver can: the descriptor length is its own)
// neither crashes the adapter nor gets them onto the uplink untagged or
// half-tagged; they are counted (TxTagFail), and the guest's next good
// frame goes out normally.
func TestUpstreamRuntFrames(t *testing.T) {
	for _, vlan := range []uint16{0, 100} {
		for _, ti := range []bool{false, true} {
			name := "vlan0"
			if vlan != 0 {
				name = "vlan100"
			}
			if ti {
				name += "-ti"
			}
			t.Run(name, func(t *testing.T) {
				r := newRig(t, 0, 0)
				fr := r.startReader()
				const vif = 31
				g := r.newVM(t, vif, vmOpts{noRun: true})
				r.a.SetVifVLAN(vif, vlan)
				tx := newRawTx(g)
				good := probeFrame(fiMAC, vmMAC(vif), vmIP(vif), peerIP, wire.Probe{SrcVM: vif}, 0)
				runts := []int{1, 6, 11, 12, 13}
				for _, n := range runts {
					tx.frame(good[:n], ti, wire.TCI(0, 9))
				}
				tx.frame(good, false, 0)
				tx.doorbell()
				frames := fr.waitN(t, 1)
				// The good frame is the last posted, so once it is on the
				// uplink every runt has been handled.
				if len(frames) != 1 {
					t.Fatalf("uplink got %d frames, want only the good one: % x", len(frames), frames)
				}
				var wantTCI *uint16
				if vlan != 0 {
					wantTCI = ptr(wire.TCI(0, vlan))
				}
				checkUpFrame(t, 0, frames[0], vif, wantTCI, good)
				if got := r.a.Drops().TxTagFail.Load(); got != uint64(len(runts)) {
					t.Errorf("TxTagFail = %d, want %d", got, len(runts))
				}
				if st := g.vnic.Stats(); st.TxFrames != 1 {
					t.Errorf("vNIC TxFrames = %d, want 1", st.TxFrames)
				}
			})
		}
	}
}
