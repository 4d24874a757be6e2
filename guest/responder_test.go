package guest

import (
	"bytes"
	"errors"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/wire"
)

// The responder under test is VM 5; requests come from VM 6.
var (
	rtMAC   = vmMAC(5)
	rtIP    = vmIP(5)
	rtPeer  = vmMAC(6)
	rtPeerI = vmIP(6)
)

func newResponder(tb testing.TB, m *mem.Memory) *Responder {
	tb.Helper()
	r, err := NewResponder(m, ResponderConfig{Base: wtResponder, MAC: rtMAC, IP: rtIP})
	if err != nil {
		tb.Fatalf("NewResponder: %v", err)
	}
	return r
}

// serialize builds a frame with gopacket, checksums and lengths computed.
func serialize(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		tb.Fatalf("serialize: %v", err)
	}
	return buf.Bytes()
}

// ethLayers returns the Ethernet layer (and an 802.1Q layer when vid != 0)
// for a frame of etherType from the peer to dst.
func ethLayers(dst wire.MAC, vid uint16, et layers.EthernetType) []gopacket.SerializableLayer {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr(rtPeer[:]), DstMAC: net.HardwareAddr(dst[:]), EthernetType: et}
	if vid == 0 {
		return []gopacket.SerializableLayer{eth}
	}
	eth.EthernetType = layers.EthernetTypeDot1Q
	return []gopacket.SerializableLayer{eth, &layers.Dot1Q{VLANIdentifier: vid, Type: et}}
}

func arpRequest(tb testing.TB, vid uint16, op uint16, target [4]byte) []byte {
	ls := ethLayers(wire.Broadcast, vid, layers.EthernetTypeARP)
	ls = append(ls, &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: op,
		SourceHwAddress: rtPeer[:], SourceProtAddress: rtPeerI[:],
		DstHwAddress: make([]byte, 6), DstProtAddress: target[:],
	})
	return serialize(tb, ls...)
}

func echoRequest(tb testing.TB, vid uint16, dst wire.MAC, dstIP [4]byte, typ uint8, data []byte) []byte {
	ls := ethLayers(dst, vid, layers.EthernetTypeIPv4)
	ls = append(ls,
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: rtPeerI[:], DstIP: dstIP[:]},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: 0x1234, Seq: 7},
		gopacket.Payload(data),
	)
	return serialize(tb, ls...)
}

// oneReply returns the single frame the responder sent, decoded.
func oneReply(tb testing.TB, nic *fakeNIC) gopacket.Packet {
	tb.Helper()
	frames := nic.take()
	if len(frames) != 1 {
		tb.Fatalf("responder sent %d frames, want 1", len(frames))
	}
	pkt := gopacket.NewPacket(frames[0], layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		tb.Fatalf("reply does not decode: %v\n% x", el.Error(), frames[0])
	}
	return pkt
}

func checkVLAN(tb testing.TB, pkt gopacket.Packet, vid uint16) {
	tb.Helper()
	q, _ := pkt.Layer(layers.LayerTypeDot1Q).(*layers.Dot1Q)
	switch {
	case vid == 0 && q != nil:
		tb.Errorf("reply tagged with VLAN %d, want untagged", q.VLANIdentifier)
	case vid != 0 && q == nil:
		tb.Errorf("reply untagged, want VLAN %d", vid)
	case vid != 0 && q.VLANIdentifier != vid:
		tb.Errorf("reply on VLAN %d, want %d", q.VLANIdentifier, vid)
	}
}

func TestResponderARP(t *testing.T) {
	for _, vid := range []uint16{0, 42} {
		m := newTestMem(t)
		nic := newFakeNIC(m, rtMAC, 8)
		r := newResponder(t, m)
		deliver(t, r, nic, m, arpRequest(t, vid, layers.ARPRequest, rtIP), 0)
		pkt := oneReply(t, nic)
		checkVLAN(t, pkt, vid)
		eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		arp, ok := pkt.Layer(layers.LayerTypeARP).(*layers.ARP)
		if !ok {
			t.Fatalf("vid %d: reply has no ARP layer: %v", vid, pkt)
		}
		if !bytes.Equal(eth.DstMAC, rtPeer[:]) || !bytes.Equal(eth.SrcMAC, rtMAC[:]) {
			t.Errorf("vid %d: reply %v -> %v, want %v -> %v", vid, eth.SrcMAC, eth.DstMAC, rtMAC, rtPeer)
		}
		if arp.Operation != layers.ARPReply ||
			!bytes.Equal(arp.SourceHwAddress, rtMAC[:]) || !bytes.Equal(arp.SourceProtAddress, rtIP[:]) ||
			!bytes.Equal(arp.DstHwAddress, rtPeer[:]) || !bytes.Equal(arp.DstProtAddress, rtPeerI[:]) {
			t.Errorf("vid %d: ARP reply %+v, want %v is at %v, to %v/%v", vid, arp, rtIP, rtMAC, rtPeerI, rtPeer)
		}
		if st := r.Stats(m); st != (ResponderStats{ARPReplies: 1}) {
			t.Errorf("vid %d: stats %+v", vid, st)
		}
	}
}

func TestResponderEcho(t *testing.T) {
	data := bytes.Repeat([]byte("vmfex ping "), 40)
	for _, vid := range []uint16{0, 7} {
		for _, n := range []int{0, 5, len(data)} {
			m := newTestMem(t)
			nic := newFakeNIC(m, rtMAC, 8)
			r := newResponder(t, m)
			deliver(t, r, nic, m, echoRequest(t, vid, rtMAC, rtIP, layers.ICMPv4TypeEchoRequest, data[:n]), 0)
			pkt := oneReply(t, nic)
			checkVLAN(t, pkt, vid)
			eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			ip, ok1 := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			icmp, ok2 := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			if !ok1 || !ok2 {
				t.Fatalf("vid %d len %d: reply is not IPv4/ICMP: %v", vid, n, pkt)
			}
			if !bytes.Equal(eth.DstMAC, rtPeer[:]) || !bytes.Equal(eth.SrcMAC, rtMAC[:]) {
				t.Errorf("reply %v -> %v, want %v -> %v", eth.SrcMAC, eth.DstMAC, rtMAC, rtPeer)
			}
			if !ip.SrcIP.Equal(net.IP(rtIP[:])) || !ip.DstIP.Equal(net.IP(rtPeerI[:])) {
				t.Errorf("reply %v -> %v, want %v -> %v", ip.SrcIP, ip.DstIP, rtIP, rtPeerI)
			}
			if err, res := ip.VerifyChecksum(); err != nil || !res.Valid {
				t.Errorf("vid %d len %d: IPv4 checksum %#x, want %#x (%v)", vid, n, res.Actual, res.Correct, err)
			}
			if err, res := icmp.VerifyChecksum(); err != nil || !res.Valid {
				t.Errorf("vid %d len %d: ICMP checksum %#x, want %#x (%v)", vid, n, res.Actual, res.Correct, err)
			}
			if icmp.TypeCode.Type() != layers.ICMPv4TypeEchoReply || icmp.Id != 0x1234 || icmp.Seq != 7 {
				t.Errorf("ICMP %v id %#x seq %d, want echo reply id 0x1234 seq 7", icmp.TypeCode, icmp.Id, icmp.Seq)
			}
			// Short replies are padded to 60 bytes; the echo data is what
			// the IPv4 length covers.
			if got := icmp.Payload; !bytes.Equal(got, data[:n]) {
				t.Errorf("vid %d: echo data %q, want %q", vid, got, data[:n])
			}
			if st := r.Stats(m); st != (ResponderStats{EchoReplies: 1}) {
				t.Errorf("stats %+v", st)
			}
		}
	}
}

func TestResponderIgnores(t *testing.T) {
	other := [4]byte{10, 9, 9, 9}
	badSum := echoRequest(t, 0, rtMAC, rtIP, layers.ICMPv4TypeEchoRequest, []byte("x"))
	badSum[wire.EthHeaderLen+wire.IPv4HeaderLen+wire.ICMPEchoLen] ^= 0x55 // the echo data; frames are padded past it
	frag := serialize(t, append(ethLayers(rtMAC, 0, layers.EthernetTypeIPv4),
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, Flags: layers.IPv4MoreFragments,
			SrcIP: rtPeerI[:], DstIP: rtIP[:]},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0)})...)
	udpIP := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: rtPeerI[:], DstIP: rtIP[:]}
	udpL := &layers.UDP{SrcPort: 1, DstPort: 2}
	_ = udpL.SetNetworkLayerForChecksum(udpIP)
	udp := serialize(t, append(ethLayers(rtMAC, 0, layers.EthernetTypeIPv4), udpIP, udpL)...)
	cases := map[string][]byte{
		"ARP for another IP":  arpRequest(t, 0, layers.ARPRequest, other),
		"ARP reply":           arpRequest(t, 0, layers.ARPReply, rtIP),
		"echo to another IP":  echoRequest(t, 0, rtMAC, other, layers.ICMPv4TypeEchoRequest, nil),
		"echo to another MAC": echoRequest(t, 0, vmMAC(77), rtIP, layers.ICMPv4TypeEchoRequest, nil),
		"echo reply":          echoRequest(t, 0, rtMAC, rtIP, layers.ICMPv4TypeEchoReply, nil),
		"bad ICMP checksum":   badSum,
		"IPv4 fragment":       frag,
		"UDP":                 udp,
		"probe":               probeFrame(6, 5, rtMAC, 1, 0),
		"short":               {1, 2, 3},
		"truncated ARP":       arpRequest(t, 0, layers.ARPRequest, rtIP)[:30],
		"empty":               {},
	}
	m := newTestMem(t)
	nic := newFakeNIC(m, rtMAC, 8)
	r := newResponder(t, m)
	for name, f := range cases {
		before := r.Stats(m).Ignored
		deliver(t, r, nic, m, f, 0)
		if got := r.Stats(m).Ignored; got != before+1 || len(nic.pending) != 0 {
			t.Errorf("%s: ignored %d -> %d, %d frames sent; want ignored and none", name, before, got, len(nic.pending))
		}
	}
	r.Receive(nic, wtMemSize-4, 64, 0) // buffer past the end of memory
	r.Receive(nic, wtRxBuf, -3, 0)
	if st := r.Stats(m); st != (ResponderStats{Ignored: uint64(len(cases) + 2)}) {
		t.Errorf("stats %+v, want only %d ignored", st, len(cases)+2)
	}
}

func TestResponderTxFull(t *testing.T) {
	m := newTestMem(t)
	nic := newFakeNIC(m, rtMAC, 1)
	r := newResponder(t, m)
	req := arpRequest(t, 0, layers.ARPRequest, rtIP)
	for range 3 {
		deliver(t, r, nic, m, req, 0)
	}
	nic.bufSize = 50 // shorter than the 60-byte reply
	nic.take()
	deliver(t, r, nic, m, req, 0)
	if st := r.Stats(m); st != (ResponderStats{ARPReplies: 1, TxFull: 2, TxTooSmall: 1}) {
		t.Errorf("stats %+v, want 1 reply, 2 dropped on a full ring, 1 on a short buffer", st)
	}
}

func TestNewResponder(t *testing.T) {
	m := newTestMem(t)
	if _, err := NewResponder(m, ResponderConfig{Base: wtResponder + 4, MAC: rtMAC}); !errors.Is(err, ErrWorkloadConfig) {
		t.Errorf("unaligned base: %v, want ErrWorkloadConfig", err)
	}
	if _, err := NewResponder(m, ResponderConfig{Base: wtResponder, MAC: wire.Broadcast}); !errors.Is(err, ErrWorkloadConfig) {
		t.Errorf("broadcast MAC: %v, want ErrWorkloadConfig", err)
	}
	r := newResponder(t, m)
	nic := newFakeNIC(m, rtMAC, 8)
	deliver(t, r, nic, m, arpRequest(t, 0, layers.ARPRequest, rtIP), 0)
	// A second value over the same (or copied) memory resumes the counters.
	r2 := newResponder(t, cloneMem(t, m))
	if st := r2.Stats(m); st.ARPReplies != 1 {
		t.Errorf("resumed responder: %+v", st)
	}
	m.PutU32(wtResponder+rspOffVersion, 99)
	if _, err := NewResponder(m, ResponderConfig{Base: wtResponder, MAC: rtMAC}); !errors.Is(err, ErrWorkloadState) {
		t.Errorf("other version: %v, want ErrWorkloadState", err)
	}
}

func FuzzResponderReceive(f *testing.F) {
	f.Add(arpRequest(f, 0, layers.ARPRequest, rtIP))
	f.Add(echoRequest(f, 3, rtMAC, rtIP, layers.ICMPv4TypeEchoRequest, []byte("abc")))
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) > 9000 {
			return
		}
		m := newTestMem(t)
		nic := newFakeNIC(m, rtMAC, 4)
		r := newResponder(t, m)
		deliver(t, r, nic, m, frame, 0)
		st := r.Stats(m)
		if st.ARPReplies+st.EchoReplies+st.Ignored+st.TxFull+st.TxTooSmall != 1 {
			t.Errorf("one frame counted as %+v", st)
		}
		for _, out := range nic.take() {
			if pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default); pkt.ErrorLayer() != nil {
				t.Errorf("reply does not decode: % x", out)
			}
		}
	})
}
