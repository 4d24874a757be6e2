package wire

// Cross-checks against an independent decoder: frames we build must decode
// field for field, checksums included, in gopacket; frames gopacket builds
// must parse with ours. gopacket has no VN-Tag layer (protocols.md §1.3
// lists the decoders that have one), so VN-Tag frames are checked by
// removing the tag and decoding the rest.

import (
	"bytes"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// decode decodes f as Ethernet and fails the test on any decoding error or
// checksum mismatch. A RARP body is left undecoded by gopacket, which
// registers ARP only for 0x0806 (protocols.md §6.4); that is not an error.
func decode(t *testing.T, f []byte) gopacket.Packet {
	t.Helper()
	pkt := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		eth, ok := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		if !ok || eth.EthernetType != EtherTypeRARP {
			t.Fatalf("gopacket: %v", el.Error())
		}
	}
	// The UDP checksum covers the IPv4 pseudo-header; gopacket needs to be
	// told which layer holds it.
	if ip, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		if udp, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP); ok {
			if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
				t.Fatal(err)
			}
		}
	}
	err, mism := pkt.VerifyChecksums()
	if err != nil {
		t.Fatalf("gopacket VerifyChecksums: %v", err)
	}
	for _, m := range mism {
		t.Errorf("gopacket: checksum mismatch in %v: %+v", m.Layer.LayerType(), m.ChecksumVerificationResult)
	}
	return pkt
}

func TestGopacketDecodesProbeFrames(t *testing.T) {
	tests := []struct {
		name     string
		frameLen int
		vn       *VNTag
		tci      *uint16
	}{
		{"min", 0, nil, nil},
		{"odd", ProbeFrameMinLen + 3, nil, nil},
		{"1514", 1514, nil, nil},
		{"dot1q", 200, nil, &specTCI},
		{"dot1q-dei-vid4094", 200, nil, ptr(uint16(0x1000 | TCI(7, MaxVID)))},
		{"vntag-dot1q", 200, &specTag, &specTCI},
		{"vntag-only", 200, &VNTag{SVIF: MaxSVIF, DVIF: MaxDVIF, Pointer: true}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := make([]byte, 2000)
			n := BuildProbeFrame(b, vmMAC2, vmMAC, vmIP, vmIP2, testProbe, tt.frameLen)
			f := pushTags(b[:n], tt.vn, tt.tci)
			var h FabricHeader
			if err := ParseFabric(f, &h); err != nil {
				t.Fatalf("ParseFabric: %v", err)
			}
			if tt.vn != nil {
				// Check the tag word on the wire, then hide it from gopacket.
				if !h.HasVNTag || h.VNTag != *tt.vn {
					t.Errorf("ParseFabric VN-Tag = %+v, want %+v", h.VNTag, *tt.vn)
				}
				f = append(bytes.Clone(f[:12]), f[12+VNTagLen:]...)
			}
			pkt := decode(t, f)
			eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			if !bytes.Equal(eth.DstMAC, vmMAC2[:]) || !bytes.Equal(eth.SrcMAC, vmMAC[:]) {
				t.Errorf("gopacket Ethernet %v -> %v", eth.SrcMAC, eth.DstMAC)
			}
			if tt.tci != nil {
				q, ok := pkt.Layer(layers.LayerTypeDot1Q).(*layers.Dot1Q)
				if !ok {
					t.Fatalf("gopacket found no Dot1Q layer")
				}
				if q.VLANIdentifier != h.VID() || q.Priority != h.PCP() || q.DropEligible != (*tt.tci&0x1000 != 0) {
					t.Errorf("gopacket Dot1Q = %+v, want TCI %#04x", q, *tt.tci)
				}
			}
			ip, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			if !ok {
				t.Fatalf("gopacket found no IPv4 layer")
			}
			if !ip.SrcIP.Equal(net.IP(vmIP[:])) || !ip.DstIP.Equal(net.IP(vmIP2[:])) ||
				ip.Protocol != layers.IPProtocolUDP || ip.TTL != defaultTTL ||
				ip.Flags != layers.IPv4DontFragment || ip.IHL != 5 ||
				int(ip.Length) != max(tt.frameLen, ProbeFrameMinLen)-EthHeaderLen {
				t.Errorf("gopacket IPv4 = %+v", ip)
			}
			udp, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if !ok {
				t.Fatalf("gopacket found no UDP layer")
			}
			if udp.SrcPort != ProbePort || udp.DstPort != ProbePort || int(udp.Length) != int(ip.Length)-IPv4HeaderLen {
				t.Errorf("gopacket UDP = %+v", udp)
			}
			got, err := ParseProbe(udp.Payload)
			if err != nil || got != testProbe {
				t.Errorf("ParseProbe(gopacket UDP payload) = %+v, %v", got, err)
			}
		})
	}
}

func TestGopacketDecodesARP(t *testing.T) {
	tests := []struct {
		name  string
		build func(b []byte) int
		want  ARP
	}{
		{"request", func(b []byte) int { return BuildARPRequest(b, vmMAC, vmIP, vmIP2) },
			ARP{Op: ARPRequest, SHA: vmMAC, SPA: vmIP, TPA: vmIP2}},
		{"reply", func(b []byte) int { return BuildARPReply(b, vmMAC2, vmIP2, vmMAC, vmIP) },
			ARP{Op: ARPReply, SHA: vmMAC2, SPA: vmIP2, THA: vmMAC, TPA: vmIP}},
		{"rarp-announce", func(b []byte) int { return BuildRARPAnnounce(b, vmMAC) },
			ARP{Op: RARPRequest, SHA: vmMAC, THA: vmMAC}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := make([]byte, MinFrameLen)
			f := b[:tt.build(b)]
			pkt := decode(t, f)
			eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			var a *layers.ARP
			if tt.want.IsRARP() {
				// gopacket registers ARP only for 0x0806 (protocols.md
				// §6.4); the RARP body has the same layout.
				if eth.EthernetType != EtherTypeRARP {
					t.Fatalf("gopacket EtherType = %#04x, want 0x8035", uint16(eth.EthernetType))
				}
				a = new(layers.ARP)
				if err := a.DecodeFromBytes(eth.Payload, gopacket.NilDecodeFeedback); err != nil {
					t.Fatalf("gopacket ARP decode of RARP body: %v", err)
				}
			} else {
				var ok bool
				if a, ok = pkt.Layer(layers.LayerTypeARP).(*layers.ARP); !ok {
					t.Fatalf("gopacket found no ARP layer")
				}
			}
			if a.AddrType != layers.LinkTypeEthernet || a.Protocol != layers.EthernetTypeIPv4 ||
				a.HwAddressSize != 6 || a.ProtAddressSize != 4 || a.Operation != tt.want.Op ||
				!bytes.Equal(a.SourceHwAddress, tt.want.SHA[:]) || !bytes.Equal(a.SourceProtAddress, tt.want.SPA[:]) ||
				!bytes.Equal(a.DstHwAddress, tt.want.THA[:]) || !bytes.Equal(a.DstProtAddress, tt.want.TPA[:]) {
				t.Errorf("gopacket ARP = %+v, want %+v", a, tt.want)
			}
		})
	}
}

func TestGopacketDecodesICMPEcho(t *testing.T) {
	for _, typ := range []uint8{ICMPEchoRequest, ICMPEchoReply} {
		b := make([]byte, 200)
		data := []byte("0123456789abcdefg") // odd length
		n := BuildICMPEchoFrame(b, vmMAC2, vmMAC, vmIP, vmIP2, ICMPEcho{Type: typ, ID: 0xbeef, Seq: 42}, data)
		pkt := decode(t, b[:n])
		ic, ok := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if !ok {
			t.Fatalf("type %d: gopacket found no ICMPv4 layer", typ)
		}
		if ic.TypeCode.Type() != typ || ic.TypeCode.Code() != 0 || ic.Id != 0xbeef || ic.Seq != 42 ||
			!bytes.Equal(ic.Payload, data) {
			t.Errorf("type %d: gopacket ICMPv4 = %+v payload %q", typ, ic, ic.Payload)
		}
	}
}

// serialize builds a frame with gopacket, lengths and checksums computed by
// gopacket.
func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		t.Fatalf("gopacket serialize: %v", err)
	}
	return buf.Bytes()
}

func TestParseGopacketFrames(t *testing.T) {
	var pl [ProbeLen]byte
	PutProbe(pl[:], testProbe)
	eth := &layers.Ethernet{SrcMAC: vmMAC[:], DstMAC: vmMAC2[:], EthernetType: layers.EthernetTypeDot1Q}
	q := &layers.Dot1Q{Priority: 5, VLANIdentifier: 100, Type: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 9, TOS: 0xb8, Id: 77, Protocol: layers.IPProtocolUDP,
		SrcIP: net.IP(vmIP[:]), DstIP: net.IP(vmIP2[:])}
	udp := &layers.UDP{SrcPort: 40000, DstPort: ProbePort}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	f := serialize(t, eth, q, ip, udp, gopacket.Payload(append(pl[:], make([]byte, 50)...)))

	p, ok := ParseProbeFrame(f)
	if !ok || p != testProbe {
		t.Fatalf("ParseProbeFrame(gopacket frame) = %+v, %v", p, ok)
	}
	var h FabricHeader
	if err := ParseFabric(f, &h); err != nil || h.VID() != 100 || h.PCP() != 5 || h.EtherType != EtherTypeIPv4 {
		t.Errorf("ParseFabric = %+v, %v", h, err)
	}
	got, hl, err := ParseIPv4Checked(f[h.L3Off:])
	if err != nil || got.TOS != 0xb8 || got.ID != 77 || got.TTL != 9 {
		t.Errorf("ParseIPv4Checked = %+v, %v", got, err)
	}
	u, err := ParseUDP(f[h.L3Off+hl:])
	if err != nil || u.SrcPort != 40000 || int(u.Length) != UDPHeaderLen+ProbeLen+50 {
		t.Errorf("ParseUDP = %+v, %v", u, err)
	}

	// ARP and RARP built by gopacket. RARP needs the EtherType set by hand.
	for _, op := range []uint16{layers.ARPRequest, layers.ARPReply, RARPRequest, RARPReply} {
		et := layers.EthernetTypeARP
		if op >= RARPRequest {
			et = EtherTypeRARP
		}
		a := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: op,
			SourceHwAddress: vmMAC[:], SourceProtAddress: vmIP[:],
			DstHwAddress: vmMAC2[:], DstProtAddress: vmIP2[:]}
		f := serialize(t, &layers.Ethernet{SrcMAC: vmMAC[:], DstMAC: Broadcast[:], EthernetType: et}, a)
		want := ARP{Op: op, SHA: vmMAC, SPA: vmIP, THA: vmMAC2, TPA: vmIP2}
		if got, err := ParseARP(f[EthHeaderLen:]); err != nil || got != want {
			t.Errorf("op %d: ParseARP(gopacket) = %+v, %v; want %+v", op, got, err, want)
		}
		// Our builder gives the same bytes, up to padding.
		b := make([]byte, MinFrameLen)
		BuildARPFrame(b, Broadcast, want)
		if !bytes.Equal(b[:len(f)], f) {
			t.Errorf("op %d: BuildARPFrame\n got %x\nwant %x", op, b[:len(f)], f)
		}
	}

	// ICMP echo built by gopacket.
	ip.Protocol = layers.IPProtocolICMPv4
	ic := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 3, Seq: 4}
	eth.EthernetType = layers.EthernetTypeIPv4
	f = serialize(t, eth, ip, ic, gopacket.Payload("ping"))
	iph, hl, err := ParseIPv4Checked(f[EthHeaderLen:])
	if err != nil {
		t.Fatalf("ParseIPv4Checked(gopacket ICMP) = %v", err)
	}
	e, err := ParseICMPEcho(f[EthHeaderLen+hl : EthHeaderLen+int(iph.TotalLen)])
	if err != nil || e.Type != ICMPEchoRequest || e.ID != 3 || e.Seq != 4 {
		t.Errorf("ParseICMPEcho(gopacket) = %+v, %v", e, err)
	}
}

// TestGopacketChecksumCheckBites makes sure the cross-check above would
// notice a wrong checksum: gopacket must reject a corrupted probe frame.
func TestGopacketChecksumCheckBites(t *testing.T) {
	b := make([]byte, 128)
	n := BuildProbeFrame(b, vmMAC2, vmMAC, vmIP, vmIP2, testProbe, len(b))
	b[n-1] ^= 0x80      // UDP payload
	b[EthHeaderLen+8]-- // IPv4 TTL
	pkt := gopacket.NewPacket(b[:n], layers.LayerTypeEthernet, gopacket.Default)
	ip := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	udp := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	err, mism := pkt.VerifyChecksums()
	if err != nil || len(mism) != 2 {
		t.Errorf("gopacket VerifyChecksums on a corrupted frame = %v, %d mismatches; want 2", err, len(mism))
	}
}
