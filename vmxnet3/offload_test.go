package vmxnet3_test

// Transmit offload tests (§4.2): TSO over IPv4 and IPv6 and checksum
// offload for TCP, through the device's tx engine, each result decoded by
// gopacket and its checksums verified by gopacket and by a naive RFC 1071
// sum written here; hostile offload fields; a TSO packet that waits for
// buffers; and a fuzz target of the segmentation itself.

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/vmxnet3/vmxnet3test"
)

// tcpSpec describes a TCP packet for tcpPacket.
type tcpSpec struct {
	v6            bool
	vlan          bool // an 802.1Q tag in the frame
	payload       int
	fin, psh, cwr bool
}

const (
	testSeq  = 0xFFFFF000 // the sequence numbers wrap inside a 64 KiB segment
	testIPID = 0xFFF0     // so does the IPv4 identification
)

// tcpPacket serializes Ethernet/[802.1Q/]IPv4 or IPv6/TCP with correct
// lengths and checksums (gopacket), with Linux's 12 bytes of timestamp
// options, and returns it with its header length. IPv4 lengths that do not
// fit 16 bits are left to the caller.
func tcpPacket(t testing.TB, s tcpSpec) ([]byte, int) {
	t.Helper()
	payload := make([]byte, s.payload)
	for i := range payload {
		payload[i] = byte(i*7 + i>>8)
	}
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr(ownMAC[:]), DstMAC: net.HardwareAddr(otherMAC[:])}
	var ls []gopacket.SerializableLayer
	ls = append(ls, eth)
	l3 := 14
	if s.vlan {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: 100})
		l3 = 18
	}
	tcp := &layers.TCP{SrcPort: 40001, DstPort: 5201, Seq: testSeq, Ack: 0x01020304, Window: 512,
		ACK: true, FIN: s.fin, PSH: s.psh, CWR: s.cwr,
		Options: []layers.TCPOption{
			{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 1, 2, 0, 0, 3, 4}},
		}}
	var hlen int
	if s.v6 {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2")}
		setType(ls, layers.EthernetTypeIPv6)
		if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, ip)
		hlen = l3 + 40 + 32
	} else {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, Id: testIPID,
			Flags: layers.IPv4DontFragment, SrcIP: net.IP{198, 18, 100, 31}, DstIP: net.IP{198, 18, 100, 32}}
		setType(ls, layers.EthernetTypeIPv4)
		if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, ip)
		hlen = l3 + 20 + 32
	}
	ls = append(ls, tcp, gopacket.Payload(payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...), hlen
}

// setType sets the EtherType of the last Ethernet or 802.1Q layer.
func setType(ls []gopacket.SerializableLayer, et layers.EthernetType) {
	switch l := ls[len(ls)-1].(type) {
	case *layers.Ethernet:
		l.EthernetType = et
	case *layers.Dot1Q:
		l.Type = et
	}
}

// naiveSum is RFC 1071's ones'-complement sum, 16 bits at a time: the
// oracle the device's 64-bit sum is checked against.
func naiveSum(b []byte, sum uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xFFFF + sum>>16
	}
	return sum
}

// checkTCPFrame verifies one frame's IPv4 header checksum and TCP checksum
// with naiveSum (the pseudo-header built from the frame's own addresses
// and lengths), and the lengths against the frame's size.
func checkTCPFrame(t *testing.T, f []byte) {
	t.Helper()
	l3 := 14
	if binary.BigEndian.Uint16(f[12:]) == 0x8100 {
		l3 = 18
	}
	var pseudo uint32
	var l4 int
	if f[l3]>>4 == 4 {
		ihl := int(f[l3]&0xF) * 4
		if s := naiveSum(f[l3:l3+ihl], 0); s != 0xFFFF {
			t.Errorf("IPv4 header checksum does not verify (sum %#04x)", s)
		}
		if tl := int(binary.BigEndian.Uint16(f[l3+2:])); tl != len(f)-l3 {
			t.Errorf("IPv4 total length %d, frame carries %d", tl, len(f)-l3)
		}
		l4 = l3 + ihl
		pseudo = naiveSum(f[l3+12:l3+20], 6+uint32(len(f)-l4))
	} else {
		if pl := int(binary.BigEndian.Uint16(f[l3+4:])); pl != len(f)-l3-40 {
			t.Errorf("IPv6 payload length %d, frame carries %d", pl, len(f)-l3-40)
		}
		// Walk the extension headers to TCP (protocol 6).
		next := f[l3+6]
		for l4 = l3 + 40; next != 6; {
			next, l4 = f[l4], l4+(int(f[l4+1])+1)*8
		}
		pseudo = naiveSum(f[l3+8:l3+40], 6+uint32(len(f)-l4))
	}
	if s := naiveSum(f[l4:], pseudo); s != 0xFFFF {
		t.Errorf("TCP checksum %#04x does not verify (sum %#04x)", binary.BigEndian.Uint16(f[l4+16:]), s)
	}
}

// gopacketTCP decodes f and verifies its TCP checksum with gopacket.
func gopacketTCP(t *testing.T, f []byte) (*layers.TCP, gopacket.Packet) {
	t.Helper()
	pkt := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
	tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tcp == nil || pkt.NetworkLayer() == nil {
		t.Fatalf("gopacket found no IP/TCP layers: %v", pkt.ErrorLayer())
	}
	if err := tcp.SetNetworkLayerForChecksum(pkt.NetworkLayer()); err != nil {
		t.Fatal(err)
	}
	if err, res := tcp.VerifyChecksum(); err != nil || !res.Valid {
		t.Errorf("gopacket: TCP checksum %#04x, correct %#04x (%v)", res.Actual, res.Correct, err)
	}
	return tcp, pkt
}

// postChunks posts f as one packet over descriptors of at most chunk bytes.
func postChunks(t *testing.T, r *vmxnet3test.Rig, f []byte, chunk int, p vmxnet3test.Packet) {
	t.Helper()
	for at := 0; at < len(f); at += chunk {
		p.Segs = append(p.Segs, f[at:min(at+chunk, len(f))])
	}
	if len(f) == 0 {
		p.Segs = [][]byte{nil}
	}
	if _, err := r.G.PostTxPacket(0, p); err != nil {
		t.Fatal(err)
	}
	r.G.KickTx(0)
}

// §4.2 OM_TSO: a 64 KiB TCP segment over IPv4 or IPv6 becomes MSS-sized
// frames with the headers fixed up, every one verified independently.
func TestTxTSO(t *testing.T) {
	cases := []struct {
		name string
		s    tcpSpec
		mss  int
	}{
		{"IPv4 64 KiB", tcpSpec{payload: 65535 - 20 - 32, psh: true}, 1448},
		{"IPv6 64 KiB", tcpSpec{v6: true, payload: 65535 - 32, psh: true}, 1428},
		{"IPv4 FIN PSH CWR", tcpSpec{payload: 10000, fin: true, psh: true, cwr: true}, 1448},
		{"IPv6 CWR odd tail", tcpSpec{v6: true, payload: 3*1000 + 1, cwr: true}, 1000},
		{"802.1Q-tagged IPv4", tcpSpec{vlan: true, payload: 20000}, 1444},
		{"one segment", tcpSpec{payload: 1000, psh: true}, 1448},
		{"no payload", tcpSpec{payload: 0, fin: true}, 1448},
		{"MSS 1", tcpSpec{payload: 64}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := upRig(t, vmxnet3test.DefaultConfig())
			f, hlen := tcpPacket(t, c.s)
			orig := append([]byte(nil), f...)
			if !vmxnet3.PrepareTSO(f, hlen) {
				t.Fatal("PrepareTSO refused the packet")
			}
			postChunks(t, r, f, 2048, vmxnet3test.Packet{OM: vmxnet3.OMTSO, HLen: uint16(hlen), MSSCOF: uint16(c.mss)})
			sent, n := vmxnet3test.NewWire(vmxnet3.MaxTSOSegs, 2048).Drain(r.Dev, 0)
			want := max(1, (c.s.payload+c.mss-1)/c.mss)
			if n != 1 || len(sent) != want {
				t.Fatalf("consumed %d packets, sent %d frames; want 1, %d", n, len(sent), want)
			}
			var payload []byte
			for i, s := range sent {
				g := s.Frame
				checkTCPFrame(t, g)
				tcp, pkt := gopacketTCP(t, g)
				last := i == len(sent)-1
				if tcp.Seq != testSeq+uint32(i*c.mss) {
					t.Errorf("frame %d: seq %#x, want %#x", i, tcp.Seq, testSeq+uint32(i*c.mss))
				}
				if tcp.FIN != (c.s.fin && last) || tcp.PSH != (c.s.psh && last) || tcp.CWR != (c.s.cwr && i == 0) || !tcp.ACK {
					t.Errorf("frame %d: FIN %v PSH %v CWR %v ACK %v", i, tcp.FIN, tcp.PSH, tcp.CWR, tcp.ACK)
				}
				if ip, ok := pkt.NetworkLayer().(*layers.IPv4); ok {
					if ip.Id != uint16(testIPID+i) || ip.Flags != layers.IPv4DontFragment {
						t.Errorf("frame %d: IPv4 id %#x flags %v, want %#x DF", i, ip.Id, ip.Flags, uint16(testIPID+i))
					}
				}
				if len(g) > hlen+c.mss || (!last && len(g) != hlen+c.mss) {
					t.Errorf("frame %d: %d bytes, header %d + MSS %d", i, len(g), hlen, c.mss)
				}
				// Everything the device must not change is as posted: MACs,
				// tag, addresses, ports, ack, data offset, window, options.
				l4, addrs := hlen-32, 8
				if c.s.v6 {
					addrs = 32
				}
				same := func(lo, hi int) bool { return bytes.Equal(g[lo:hi], orig[lo:hi]) }
				if !same(0, 14) || !same(l4-addrs, l4) || !same(l4, l4+4) || !same(l4+8, l4+13) ||
					!same(l4+14, l4+16) || !same(l4+18, hlen) {
					t.Errorf("frame %d: headers differ from the packet's beyond the fixed-up fields", i)
				}
				payload = append(payload, g[hlen:]...)
			}
			if !bytes.Equal(payload, orig[hlen:]) {
				t.Errorf("the segments' payloads (%d bytes) are not the packet's (%d)", len(payload), len(orig)-hlen)
			}
			if idx, err := r.G.ReapTxCompletions(0); err != nil || len(idx) != 1 {
				t.Errorf("completions %v (%v), want 1", idx, err)
			}
			st := r.G.Stats(true, 0)
			if st[vmxnet3.TxStatTSOPkts] != 1 || st[vmxnet3.TxStatTSOBytes] != uint64(len(f)) || st[vmxnet3.TxStatUcastPkts] != uint64(want) {
				t.Errorf("UPT1 TSO %d/%d bytes, ucast %d frames; want 1/%d, %d", st[vmxnet3.TxStatTSOPkts], st[vmxnet3.TxStatTSOBytes],
					st[vmxnet3.TxStatUcastPkts], len(f), want)
			}
		})
	}
}

// A TSO packet whose segments do not fit the buffers left in a batch stays
// in the ring; TxBufsNeeded says how many it needs; nothing is lost or sent
// twice.
func TestTxTSOWaitsForBuffers(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	for i := range 20 {
		if _, err := r.G.PostTxPacket(0, vmxnet3test.Packet{Segs: [][]byte{ethFrame(otherMAC, ownMAC, 100, byte(i))}}); err != nil {
			t.Fatal(err)
		}
	}
	f, hlen := tcpPacket(t, tcpSpec{payload: 45 * 1448})
	vmxnet3.PrepareTSO(f, hlen)
	postChunks(t, r, f, 2048, vmxnet3test.Packet{OM: vmxnet3.OMTSO, HLen: uint16(hlen), MSSCOF: 1448})

	bufs := make([][]byte, vmxnet3.MaxTSOSegs)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	lens, metas := make([]int, len(bufs)), make([]vmxnet3.TxMeta, len(bufs))
	var sent int
	process := func(n int) int {
		return r.Dev.ProcessTx(0, bufs[:n], lens, metas, func(n int) { sent += n })
	}
	if n := process(64); n != 20 || sent != 20 { // 44 buffers left
		t.Fatalf("first batch: consumed %d, sent %d; want 20, 20", n, sent)
	}
	if need := r.Dev.TxBufsNeeded(0); need != 45 {
		t.Errorf("TxBufsNeeded = %d, want 45", need)
	}
	if n := process(10); n != 0 || sent != 20 {
		t.Fatalf("with 10 buffers: consumed %d, sent %d; want 0, 20", n, sent)
	}
	if n := process(45); n != 1 || sent != 65 {
		t.Fatalf("with 45 buffers: consumed %d, sent %d; want 1, 65", n, sent)
	}
	if need := r.Dev.TxBufsNeeded(0); need != 1 {
		t.Errorf("TxBufsNeeded after = %d, want 1", need)
	}
	if idx, err := r.G.ReapTxCompletions(0); err != nil || len(idx) != 21 {
		t.Errorf("completions %d (%v), want 21", len(idx), err)
	}
}

// Hostile TSO fields: the packet is completed, not sent, and counted.
func TestTxTSOBadFields(t *testing.T) {
	v4, hlen := tcpPacket(t, tcpSpec{payload: 5000})
	vmxnet3.PrepareTSO(v4, hlen)
	edit := func(f func(p []byte)) []byte {
		p := append([]byte(nil), v4...)
		f(p)
		return p
	}
	cases := []struct {
		name      string
		pkt       []byte
		hlen, mss int
		oversize  bool
	}{
		{"hlen short of TCP header", v4, hlen - 4, 1448, false},
		{"hlen past TCP header", v4, hlen + 4, 1448, false},
		{"hlen past packet", v4[:60], hlen, 1448, false},
		{"MSS 0", v4, hlen, 0, false},
		{"segment over MTU", v4, hlen, 1500 - 52 + 1, false},
		{"more than MaxTSOSegs", v4, hlen, 5000/vmxnet3.MaxTSOSegs - 1, false},
		{"UDP", edit(func(p []byte) { p[14+9] = 17 }), hlen, 1448, false},
		{"IPv4 fragment", edit(func(p []byte) { p[14+6] |= 0x20 }), hlen, 1448, false},
		{"IPv4 IHL 4", edit(func(p []byte) { p[14] = 0x44 }), hlen, 1448, false},
		{"not IP", edit(func(p []byte) { p[12], p[13] = 0x88, 0xB5 }), hlen, 1448, false},
		{"IPv6 unknown extension", func() []byte {
			p, _ := tcpPacket(t, tcpSpec{v6: true, payload: 3000})
			p[14+6] = 50 // ESP
			return p
		}(), 14 + 40 + 32, 1428, false},
		{"larger than MaxTSOLen", make([]byte, vmxnet3.MaxTSOLen+1), hlen, 1448, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := upRig(t, vmxnet3test.DefaultConfig())
			postChunks(t, r, c.pkt, 2048, vmxnet3test.Packet{OM: vmxnet3.OMTSO, HLen: uint16(c.hlen), MSSCOF: uint16(c.mss)})
			sent, n := vmxnet3test.NewWire(vmxnet3.MaxTSOSegs, 2048).Drain(r.Dev, 0)
			if n != 1 || len(sent) != 0 {
				t.Errorf("consumed %d, sent %d; want 1, 0", n, len(sent))
			}
			if idx, err := r.G.ReapTxCompletions(0); err != nil || len(idx) != 1 {
				t.Errorf("completions %v (%v), want 1", idx, err)
			}
			d := r.Dev.Drops()
			if got := d.TxUnsupported.Load() + d.TxOversize.Load(); got != 1 || (d.TxOversize.Load() == 1) != c.oversize {
				t.Errorf("TxUnsupported %d, TxOversize %d; want one of them (oversize %v)", d.TxUnsupported.Load(), d.TxOversize.Load(), c.oversize)
			}
			if s := r.G.Stats(true, 0); s[vmxnet3.TxStatErrors] != 1 {
				t.Errorf("pktsTxError = %d, want 1", s[vmxnet3.TxStatErrors])
			}
		})
	}
}

// §4.2 OM_CSUM for TCP over IPv4 and IPv6: the driver seeds the field with
// the pseudo-header sum (as the kernel leaves it for CHECKSUM_PARTIAL);
// the device completes it. msscof is the field's offset from the frame's
// start.
func TestTxChecksumOffloadTCP(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		r := upRig(t, vmxnet3test.DefaultConfig())
		f, hlen := tcpPacket(t, tcpSpec{v6: v6, payload: 1333, psh: true})
		want := append([]byte(nil), f...)
		l4 := hlen - 32
		var pseudo uint32
		if v6 {
			pseudo = naiveSum(f[14+8:14+40], 6+uint32(len(f)-l4))
		} else {
			pseudo = naiveSum(f[14+12:14+20], 6+uint32(len(f)-l4))
		}
		binary.BigEndian.PutUint16(f[l4+16:], uint16(pseudo))
		postChunks(t, r, f, 700, vmxnet3test.Packet{OM: vmxnet3.OMCsum, HLen: uint16(l4), MSSCOF: uint16(l4 + 16)})
		sent, _ := vmxnet3test.NewWire(4, 2048).Drain(r.Dev, 0)
		if len(sent) != 1 {
			t.Fatalf("v6 %v: sent %d frames, want 1", v6, len(sent))
		}
		checkTCPFrame(t, sent[0].Frame)
		gopacketTCP(t, sent[0].Frame)
		if !bytes.Equal(sent[0].Frame, want) {
			t.Errorf("v6 %v: frame differs from gopacket's", v6)
		}
	}
}

// FuzzSegmentTCP: whatever the packet, hlen and MSS, SegmentTCP never
// panics, refuses exactly what PrepareTSO refuses, and what it accepts
// comes out as frames whose payloads rebuild the packet's and whose
// checksums verify.
func FuzzSegmentTCP(f *testing.F) {
	for _, s := range []tcpSpec{{payload: 3000}, {v6: true, payload: 2000, cwr: true}, {vlan: true, payload: 100, fin: true}} {
		p, hlen := tcpPacket(f, s)
		f.Add(p, uint16(hlen), uint16(536))
	}
	f.Add([]byte{}, uint16(0), uint16(0))
	out := make([][]byte, vmxnet3.MaxTSOSegs)
	for i := range out {
		out[i] = make([]byte, 4096)
	}
	lens := make([]int, len(out))
	f.Fuzz(func(t *testing.T, pkt []byte, hlen, mss uint16) {
		pkt = append([]byte(nil), pkt...)
		prepared := vmxnet3.PrepareTSO(pkt, int(hlen))
		n, ok := vmxnet3.SegmentTCP(pkt, int(hlen), int(mss), out, lens)
		if ok && !prepared {
			t.Fatalf("SegmentTCP accepted what PrepareTSO refused")
		}
		if !ok {
			return
		}
		h := int(hlen)
		var payload []byte
		for i := range n {
			g := out[i][:lens[i]]
			if len(g) < h || len(g) > h+int(mss) || (i < n-1 && len(g) != h+int(mss)) {
				t.Fatalf("frame %d: %d bytes, hlen %d, MSS %d", i, len(g), h, mss)
			}
			checkTCPFrame(t, g)
			payload = append(payload, g[h:]...)
		}
		if !bytes.Equal(payload, pkt[h:]) {
			t.Fatalf("payloads do not rebuild the packet")
		}
	})
}
