package linuxguest

// The TAP's offloads: frames behind a virtio_net_hdr, as a TAP with
// IFF_VNET_HDR and TSO gives them, become OM_CSUM and OM_TSO posts; what
// comes out of the (fake) device verifies with gopacket and RFC 1071.

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// tcpFrame serializes Ethernet/IPv4 or IPv6/TCP (timestamps option, as
// Linux sends) with payload bytes, lengths and checksums correct
// (gopacket), and returns it with the offset of the TCP header.
func tcpFrame(t testing.TB, v6 bool, src, dst wire.MAC, payload int) ([]byte, int) {
	t.Helper()
	p := make([]byte, payload)
	for i := range p {
		p[i] = byte(i*11 + i>>8)
	}
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr(src[:]), DstMAC: net.HardwareAddr(dst[:])}
	tcp := &layers.TCP{SrcPort: 5201, DstPort: 40001, Seq: 1000, Ack: 2000, Window: 500, ACK: true, PSH: true,
		Options: []layers.TCPOption{
			{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 0, 1, 0, 0, 0, 2}},
		}}
	var ip gopacket.SerializableLayer
	l4 := 14 + 20
	if v6 {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: net.ParseIP("fd00::31"), DstIP: net.ParseIP("fd00::32")}
		_ = tcp.SetNetworkLayerForChecksum(ip6)
		ip, l4 = ip6, 14+40
	} else {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, Id: 7, Flags: layers.IPv4DontFragment,
			SrcIP: net.IP{198, 18, 100, 31}, DstIP: net.IP{198, 18, 100, 32}}
		_ = tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload(p)); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...), l4
}

// partial leaves f's TCP checksum as the kernel does for CHECKSUM_PARTIAL:
// the pseudo-header sum (with the TCP length), not complemented.
func partial(f []byte, l4 int) {
	var s uint32
	if f[14]>>4 == 6 {
		s = naiveSum16(f[14+8:14+40], 0)
	} else {
		s = naiveSum16(f[14+12:14+20], 0)
	}
	s = naiveSum16(nil, s+6+uint32(len(f)-l4))
	binary.BigEndian.PutUint16(f[l4+16:], uint16(s))
}

// naiveSum16 is RFC 1071's ones'-complement sum, folded.
func naiveSum16(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xFFFF + s>>16
	}
	return s
}

// verifyTCP checks f's IPv4 header checksum (RFC 1071) and its TCP
// checksum (gopacket), and returns its TCP layer.
func verifyTCP(t *testing.T, f []byte) *layers.TCP {
	t.Helper()
	pkt := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
	tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tcp == nil {
		t.Fatalf("no TCP layer: %v", pkt.ErrorLayer())
	}
	if ip4, ok := pkt.NetworkLayer().(*layers.IPv4); ok {
		if s := naiveSum16(f[14:14+int(ip4.IHL)*4], 0); s != 0xFFFF {
			t.Errorf("IPv4 header checksum does not verify")
		}
	}
	_ = tcp.SetNetworkLayerForChecksum(pkt.NetworkLayer())
	if err, res := tcp.VerifyChecksum(); err != nil || !res.Valid {
		t.Errorf("TCP checksum %#04x, correct %#04x (%v)", res.Actual, res.Correct, err)
	}
	return tcp
}

// vnet returns a virtio_net_hdr.
func vnet(flags, gsoType uint8, hdrLen, gsoSize, csumStart, csumOffset uint16) []byte {
	b := make([]byte, vnetHdrLen)
	b[0], b[1] = flags, gsoType
	binary.LittleEndian.PutUint16(b[2:], hdrLen)
	binary.LittleEndian.PutUint16(b[4:], gsoSize)
	binary.LittleEndian.PutUint16(b[6:], csumStart)
	binary.LittleEndian.PutUint16(b[8:], csumOffset)
	return b
}

// TestOffloadsTx: what the kernel hands over with partial checksums and
// GSO leaves the device as frames that verify.
func TestOffloadsTx(t *testing.T) {
	peer := testMAC(2)
	type want struct {
		mode   uint8
		frames int
	}
	cases := []struct {
		name string
		v6   bool
		pay  int
		hdr  func(l4 int) []byte
		want want
	}{
		{"checksum IPv4", false, 1000, func(l4 int) []byte { return vnet(1, 0, 0, 0, uint16(l4), 16) }, want{vmxnet3.OMCsum, 1}},
		{"checksum IPv6", true, 777, func(l4 int) []byte { return vnet(1, 0, 0, 0, uint16(l4), 16) }, want{vmxnet3.OMCsum, 1}},
		// hdr_len is the kernel's linear length, only a hint: the header
		// length comes from csum_start and the TCP header.
		{"TSO IPv4 64 KiB", false, 65535 - 20 - 32, func(l4 int) []byte { return vnet(1, 1, 200, 1448, uint16(l4), 16) }, want{vmxnet3.OMTSO, 46}},
		{"TSO IPv6 64 KiB", true, 65535 - 32, func(l4 int) []byte { return vnet(1, 4, 90, 1428, uint16(l4), 16) }, want{vmxnet3.OMTSO, 46}},
		{"TSO ECN", false, 5000, func(l4 int) []byte { return vnet(1, 1|0x80, 0, 1448, uint16(l4), 16) }, want{vmxnet3.OMTSO, 4}},
		{"GSO of one segment", false, 1000, func(l4 int) []byte { return vnet(1, 1, 0, 1448, uint16(l4), 16) }, want{vmxnet3.OMCsum, 1}},
		{"no offload", false, 1000, func(int) []byte { return vnet(0, 0, 0, 0, 0, 0) }, want{vmxnet3.OMNone, 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := Config{Name: uniqueName(t, "off"), MAC: testMAC(1)}
			w, kern := socketGuestVnet(t, cfg, true)
			var got [][]byte
			dev := &fakeDev{m: w.m, mac: cfg.MAC, pa: testTxPA, size: testTxRoom, out: func(f []byte) { got = append(got, f) }}
			f, l4 := tcpFrame(t, c.v6, cfg.MAC, peer, c.pay)
			orig := append([]byte(nil), f...)
			h := c.hdr(l4)
			if h[0]&vnetFlagNeedsCsum != 0 {
				partial(f, l4)
			}
			if _, err := unix.Write(kern, append(h, f...)); err != nil {
				t.Fatal(err)
			}
			w.Step(dev, 0)
			if s := w.Stats(); s.TxFrames != 1 || s.TxBytes != uint64(len(f)) || s.Dropped() != 0 {
				t.Fatalf("Stats %+v, want 1 frame of %d bytes, no drops", s, len(f))
			}
			if len(dev.offs) != 1 || dev.offs[0].Mode != c.want.mode || len(got) != c.want.frames {
				t.Fatalf("posted %+v, device sent %d frames; want mode %d, %d frames", dev.offs, len(got), c.want.mode, c.want.frames)
			}
			if o := dev.offs[0]; o.Mode == vmxnet3.OMTSO && int(o.HLen) != l4+32 {
				t.Errorf("TSO hlen %d, want %d", o.HLen, l4+32)
			}
			var payload []byte
			for _, g := range got {
				verifyTCP(t, g)
				payload = append(payload, g[l4+32:]...)
			}
			if !bytes.Equal(payload, orig[l4+32:]) {
				t.Errorf("payload differs (%d bytes, want %d)", len(payload), len(orig)-l4-32)
			}
		})
	}
}

// TestOffloadsSoftwareChecksum: a checksum field past what the
// descriptor's msscof can say is completed by the guest, posted plain.
func TestOffloadsSoftwareChecksum(t *testing.T) {
	cfg := Config{Name: uniqueName(t, "swcsum"), MAC: testMAC(1)}
	w, kern := socketGuestVnet(t, cfg, true)
	var got [][]byte
	dev := &fakeDev{m: w.m, mac: cfg.MAC, pa: testTxPA, size: testTxRoom, out: func(f []byte) { got = append(got, f) }}
	// An IPv4 "UDP" datagram whose checksum field sits 1100 bytes into
	// the L4 payload: csum_offset is 16 bits in virtio, 10 in VMXNET3.
	f := make([]byte, 1400)
	copy(f, cfg.MAC[:])
	f[12], f[13] = 0x08, 0x00
	for i := 14; i < len(f); i++ {
		f[i] = byte(i)
	}
	f[1134], f[1135] = 0x12, 0x34 // the seed
	if _, err := unix.Write(kern, append(vnet(1, 0, 0, 0, 34, 1100), f...)); err != nil {
		t.Fatal(err)
	}
	w.Step(dev, 0)
	if len(got) != 1 || dev.offs[0].Mode != vmxnet3.OMNone {
		t.Fatalf("sent %d frames, offloads %+v; want 1 plain", len(got), dev.offs)
	}
	// The seed stands for the pseudo-header: with it, the sum verifies.
	if s := naiveSum16(got[0][34:], 0x1234); s != 0xFFFF {
		t.Errorf("the completed checksum does not verify (sum %#04x)", s)
	}
}

// TestOffloadsDrops: what the NIC cannot do is dropped and counted, never
// posted.
func TestOffloadsDrops(t *testing.T) {
	cfg := Config{Name: uniqueName(t, "offdrop"), MAC: testMAC(1)}
	w, kern := socketGuestVnet(t, cfg, true)
	var got int
	dev := &fakeDev{m: w.m, mac: cfg.MAC, pa: testTxPA, size: testTxRoom, out: func([]byte) { got++ }}
	f, l4 := tcpFrame(t, false, cfg.MAC, testMAC(2), 20000)
	write := func(b []byte) {
		t.Helper()
		if _, err := unix.Write(kern, b); err != nil {
			t.Fatal(err)
		}
	}
	s := uint16(l4)
	write(vnet(1, 0, 0, 0, 0, 0)[:6])                      // shorter than the vnet header
	write(append(vnet(1, 3, 0, 1448, s, 6), f...))         // UDP GSO: never enabled
	write(append(vnet(1, 1, 0, 100, s, 16), f...))         // 200 segments
	write(append(vnet(1, 1, 0, 1449, s, 16), f...))        // a segment over the MTU
	write(append(vnet(0, 1, 0, 1448, s, 16), f...))        // GSO without NEEDS_CSUM
	write(append(vnet(1, 0, 0, 0, s, 20000), f[:1000]...)) // checksum past the frame
	write(append(vnet(0, 0, 0, 0, 0, 0), f...))            // no GSO, over the MTU
	w.Step(dev, 0)
	st := w.Stats()
	want := map[DropReason]uint64{DropTxRunt: 1, DropTxBadOffload: 4, DropTxOverMTU: 2}
	for r := range numDropReasons {
		if st.Drops[r] != want[r] {
			t.Errorf("drops[%v] = %d, want %d", r, st.Drops[r], want[r])
		}
	}
	if got != 0 || st.TxFrames != 0 {
		t.Errorf("sent %d frames (TxFrames %d), want none", got, st.TxFrames)
	}
}

// TestOffloadsRx: a received frame reaches the TAP behind a
// virtio_net_hdr without flags (the kernel verifies the checksum).
func TestOffloadsRx(t *testing.T) {
	cfg := Config{Name: uniqueName(t, "offrx"), MAC: testMAC(1)}
	w, kern := socketGuestVnet(t, cfg, true)
	in := frame(cfg.MAC, testMAC(2), 1514, 0xcd)
	if err := w.m.Write(testRxPA, in); err != nil {
		t.Fatal(err)
	}
	w.Receive(nil, testRxPA, len(in), 0)
	buf := make([]byte, 4096)
	n, err := unix.Read(kern, buf)
	if err != nil || n != vnetHdrLen+len(in) || !bytes.Equal(buf[:vnetHdrLen], make([]byte, vnetHdrLen)) || !bytes.Equal(buf[vnetHdrLen:n], in) {
		t.Fatalf("kernel read %d bytes (%v), want a zero vnet header and the %d-byte frame", n, err, len(in))
	}
}

// FuzzTxOffload: no virtio_net_hdr and frame make txOffload panic, and
// what it accepts the device can do: a TSO post cuts (SegmentTCP) into
// segments whose L3 packets fit the MTU, a checksum post fits the
// descriptor's limits, a plain post fits the MTU.
func FuzzTxOffload(f *testing.F) {
	fr, l4 := tcpFrame(f, false, testMAC(1), testMAC(2), 3000)
	f.Add(vnet(1, 1, 0, 1448, uint16(l4), 16), fr)
	f6, l6 := tcpFrame(f, true, testMAC(1), testMAC(2), 3000)
	f.Add(vnet(1, 4, 0, 1428, uint16(l6), 16), f6)
	f.Add(vnet(1, 0, 0, 0, uint16(l4), 16), fr[:1000])
	f.Add(vnet(1, 0, 0, 0, 30, 2000), fr)
	f.Add(vnet(0, 0, 0, 0, 0, 0), []byte{1, 2, 3})
	out := make([][]byte, vmxnet3.MaxTSOSegs)
	for i := range out {
		out[i] = make([]byte, 1500+18)
	}
	lens := make([]int, len(out))
	f.Fuzz(func(t *testing.T, hdr, fr []byte) {
		if len(hdr) < vnetHdrLen {
			return
		}
		fr = append([]byte(nil), fr...)
		o, why, ok := txOffload(decodeVnetHdr(hdr), fr, 1500)
		if !ok {
			if why >= numDropReasons {
				t.Fatalf("drop reason %d", why)
			}
			return
		}
		switch o.Mode {
		case vmxnet3.OMNone:
			if len(fr) > 1518 {
				t.Fatalf("plain frame of %d bytes", len(fr))
			}
		case vmxnet3.OMCsum:
			if len(fr) > 1518 || o.HLen > vmxnet3.MaxHLen || !vmxnet3.ChecksumOffload(fr, int(o.HLen), int(o.MSSCOF)) {
				t.Fatalf("checksum offload %+v on %d bytes the device refuses", o, len(fr))
			}
		case vmxnet3.OMTSO:
			checkTSOPost(t, fr, o, out, lens)
		default:
			t.Fatalf("mode %d", o.Mode)
		}
	})
}

func checkTSOPost(t *testing.T, fr []byte, o guest.TxOffload, out [][]byte, lens []int) {
	t.Helper()
	if o.HLen > vmxnet3.MaxHLen || o.MSSCOF > vmxnet3.MaxMSS || len(fr) > vmxnet3.MaxTSOLen {
		t.Fatalf("TSO %+v on %d bytes: fields out of range", o, len(fr))
	}
	n, ok := vmxnet3.SegmentTCP(fr, int(o.HLen), int(o.MSSCOF), out, lens)
	if !ok {
		t.Fatalf("TSO %+v on %d bytes: the device refuses it", o, len(fr))
	}
	l3 := 14
	if fr[12] == 0x81 && fr[13] == 0 {
		l3 = 18
	}
	if int(o.HLen)-l3+int(o.MSSCOF) > 1500 {
		t.Fatalf("TSO %+v: segments over the MTU", o)
	}
	for i := range n {
		if lens[i]-l3 > 1500 {
			t.Fatalf("segment %d: %d bytes", i, lens[i])
		}
	}
}
