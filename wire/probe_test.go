package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strconv"
	"testing"
)

var testProbe = Probe{SrcVM: 11, DstVM: 22, Flags: 0x5, Seq: 0x0102030405060708, SentNs: 1_700_000_000_123_456_789}

func TestProbeRoundTrip(t *testing.T) {
	var b [ProbeLen]byte
	if n := PutProbe(b[:], testProbe); n != ProbeLen {
		t.Fatalf("PutProbe = %d", n)
	}
	want := unhexFrame(t, `564d4658 0000000b 00000016 00000005
		0102030405060708 17979cfe3d85cd15`)
	if !bytes.Equal(b[:], want) {
		t.Errorf("PutProbe\n got %x\nwant %x", b[:], want)
	}
	got, err := ParseProbe(b[:])
	if err != nil || got != testProbe {
		t.Errorf("ParseProbe = %+v, %v; want %+v", got, err, testProbe)
	}
	if _, err := ParseProbe(b[:ProbeLen-1]); !errors.Is(err, ErrShort) {
		t.Errorf("ParseProbe(31 bytes) = %v, want ErrShort", err)
	}
	b[3] ^= 1
	if _, err := ParseProbe(b[:]); !errors.Is(err, ErrBadMagic) {
		t.Errorf("ParseProbe(bad magic) = %v, want ErrBadMagic", err)
	}
	if PutProbe(b[:ProbeLen-1], testProbe) != 0 {
		t.Errorf("PutProbe into 31 bytes did not return 0")
	}
}

func TestBuildProbeFrame(t *testing.T) {
	tests := []struct {
		frameLen, want int
	}{
		{0, ProbeFrameMinLen},
		{MinFrameLen, ProbeFrameMinLen},
		{ProbeFrameMinLen, ProbeFrameMinLen},
		{ProbeFrameMinLen + 1, ProbeFrameMinLen + 1}, // odd UDP length
		{128, 128},
		{1514, 1514},
		{9014, 9014},
	}
	for _, tt := range tests {
		b := bytes.Repeat([]byte{0xcc}, 9100) // dirty: padding must be cleared
		n := BuildProbeFrame(b, vmMAC2, vmMAC, vmIP, vmIP2, testProbe, tt.frameLen)
		if n != tt.want {
			t.Errorf("BuildProbeFrame(frameLen %d) = %d, want %d", tt.frameLen, n, tt.want)
			continue
		}
		f := b[:n]
		if Dst(f) != vmMAC2 || Src(f) != vmMAC || binary.BigEndian.Uint16(f[12:]) != EtherTypeIPv4 {
			t.Errorf("frameLen %d: Ethernet header %x", tt.frameLen, f[:14])
		}
		ip, _, err := ParseIPv4Checked(f[EthHeaderLen:])
		if err != nil || int(ip.TotalLen) != n-EthHeaderLen || ip.TTL != defaultTTL || ip.Flags != IPv4DontFragment {
			t.Errorf("frameLen %d: IPv4 %+v, %v", tt.frameLen, ip, err)
		}
		dgram := f[EthHeaderLen+IPv4HeaderLen:]
		if !VerifyUDPChecksum(dgram, vmIP, vmIP2) || binary.BigEndian.Uint16(dgram[6:]) == 0 {
			t.Errorf("frameLen %d: UDP checksum %x wrong", tt.frameLen, dgram[6:8])
		}
		if pad := dgram[UDPHeaderLen+ProbeLen:]; !bytes.Equal(pad, make([]byte, len(pad))) {
			t.Errorf("frameLen %d: padding not zero", tt.frameLen)
		}
		if p, ok := ParseProbeFrame(f); !ok || p != testProbe {
			t.Errorf("frameLen %d: ParseProbeFrame = %+v, %v", tt.frameLen, p, ok)
		}
	}
}

func TestBuildProbeFrameLimits(t *testing.T) {
	if n := BuildProbeFrame(make([]byte, ProbeFrameMinLen-1), vmMAC2, vmMAC, vmIP, vmIP2, testProbe, 0); n != 0 {
		t.Errorf("BuildProbeFrame into %d bytes = %d, want 0", ProbeFrameMinLen-1, n)
	}
	if n := BuildProbeFrame(make([]byte, 100), vmMAC2, vmMAC, vmIP, vmIP2, testProbe, 101); n != 0 {
		t.Errorf("BuildProbeFrame(frameLen 101) into 100 bytes = %d, want 0", n)
	}
	big := make([]byte, EthHeaderLen+0x10000)
	if n := BuildProbeFrame(big, vmMAC2, vmMAC, vmIP, vmIP2, testProbe, len(big)); n != 0 {
		t.Errorf("BuildProbeFrame(IPv4 length 65536) = %d, want 0", n)
	}
	if n := BuildProbeFrame(big, vmMAC2, vmMAC, vmIP, vmIP2, testProbe, len(big)-1); n != len(big)-1 {
		t.Errorf("BuildProbeFrame(IPv4 length 65535) = %d, want %d", n, len(big)-1)
	}
	if _, ok := ParseProbeFrame(big[:len(big)-1]); !ok {
		t.Errorf("ParseProbeFrame rejected the largest probe frame")
	}
}

// TestBuildProbeFrameChecksumZero finds a probe whose UDP checksum computes
// to 0 and checks it goes out as 0xffff.
func TestBuildProbeFrameChecksumZero(t *testing.T) {
	b := make([]byte, ProbeFrameMinLen)
	p := testProbe
	p.Flags = 0
	BuildProbeFrame(b, vmMAC2, vmMAC, vmIP, vmIP2, p, 0)
	// Adding the current checksum into a zero 16-bit field of the probe
	// makes the sum all ones.
	p.Flags = uint32(binary.BigEndian.Uint16(b[EthHeaderLen+IPv4HeaderLen+6:]))
	BuildProbeFrame(b, vmMAC2, vmMAC, vmIP, vmIP2, p, 0)
	if got := binary.BigEndian.Uint16(b[EthHeaderLen+IPv4HeaderLen+6:]); got != 0xffff {
		t.Fatalf("UDP checksum = %#04x, want 0xffff", got)
	}
	if got, ok := ParseProbeFrame(b); !ok || got != p {
		t.Errorf("ParseProbeFrame = %+v, %v", got, ok)
	}
}

func TestParseProbeFrame(t *testing.T) {
	base := make([]byte, 128)
	BuildProbeFrame(base, vmMAC2, vmMAC, vmIP, vmIP2, testProbe, len(base))
	const (
		ipOff  = EthHeaderLen
		udpOff = ipOff + IPv4HeaderLen
	)
	mut := func(f func(b []byte)) []byte {
		b := bytes.Clone(base)
		f(b)
		return b
	}
	// fixIP recomputes the IPv4 header checksum after a header change.
	fixIP := func(b []byte) {
		b[ipOff+10], b[ipOff+11] = 0, 0
		binary.BigEndian.PutUint16(b[ipOff+10:], Checksum(b[ipOff:udpOff], 0))
	}
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"untagged", base, true},
		{"dot1q", pushTags(base, nil, &specTCI), true},
		{"vntag", pushTags(base, &specTag, nil), true},
		{"vntag-dot1q", pushTags(base, &specTag, &specTCI), true},
		{"vntag-reserved-bit", func() []byte {
			b := pushTags(base, &specTag, &specTCI)
			b[16] |= 0x40 // bit 14 of the tag word
			return b
		}(), true},
		{"ethernet-trailer", append(bytes.Clone(base), 0xde, 0xad), true},
		{"no-udp-checksum", mut(func(b []byte) { b[udpOff+6], b[udpOff+7] = 0, 0 }), true},
		{"empty", nil, false},
		{"truncated-eth", base[:13], false},
		{"truncated-ip", base[:udpOff-1], false},
		{"truncated-payload", base[:len(base)-1], false},
		{"double-dot1q", pushTags(pushTags(base, nil, &specTCI), nil, &specTCI), false},
		{"arp", func() []byte { b := make([]byte, 60); BuildRARPAnnounce(b, vmMAC); return b }(), false},
		{"ipv6-ethertype", mut(func(b []byte) { b[12], b[13] = 0x86, 0xdd }), false},
		{"bad-ip-checksum", mut(func(b []byte) { b[ipOff+8]-- }), false},
		{"tcp", mut(func(b []byte) { b[ipOff+9] = 6; fixIP(b) }), false},
		{"fragment-mf", mut(func(b []byte) { b[ipOff+6] = 0x20; fixIP(b) }), false},
		{"fragment-offset", mut(func(b []byte) { b[ipOff+7] = 1; fixIP(b) }), false},
		{"other-port", mut(func(b []byte) { b[udpOff+3]++ }), false},
		{"corrupt-probe", mut(func(b []byte) { b[udpOff+8+20] ^= 0x10 }), false},
		{"corrupt-padding", mut(func(b []byte) { b[len(b)-1] = 1 }), false},
		{"udp-length-7", mut(func(b []byte) { b[udpOff+4], b[udpOff+5] = 0, 7 }), false},
		{"udp-past-ip", mut(func(b []byte) { b[udpOff+4]++ }), false},
		{"bad-magic-good-checksum", mut(func(b []byte) {
			b[udpOff+8] = 'X'
			SetUDPChecksum(b[udpOff:], vmIP, vmIP2)
		}), false},
		{"udp-too-short-for-probe", mut(func(b []byte) {
			binary.BigEndian.PutUint16(b[udpOff+4:], UDPHeaderLen+ProbeLen-1)
			SetUDPChecksum(b[udpOff:udpOff+UDPHeaderLen+ProbeLen-1], vmIP, vmIP2)
		}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ok := ParseProbeFrame(tt.in)
			if ok != tt.ok || (ok && p != testProbe) {
				t.Errorf("ParseProbeFrame = %+v, %v; want ok %v", p, ok, tt.ok)
			}
		})
	}
}

// TestAllocs keeps the per-frame functions at zero allocations.
func TestAllocs(t *testing.T) {
	frame := pushTags(func() []byte {
		b := make([]byte, 256)
		return b[:BuildProbeFrame(b, vmMAC2, vmMAC, vmIP, vmIP2, testProbe, 256)]
	}(), &specTag, &specTCI)
	out := make([]byte, 1514)
	arp := make([]byte, 60)
	BuildRARPAnnounce(arp, vmMAC)
	var h FabricHeader
	funcs := []struct {
		name string
		f    func()
	}{
		{"ParseFabric", func() { _ = ParseFabric(frame, &h) }},
		{"ParseProbeFrame", func() { _, _ = ParseProbeFrame(frame) }},
		{"BuildProbeFrame", func() { BuildProbeFrame(out, vmMAC2, vmMAC, vmIP, vmIP2, testProbe, 1514) }},
		{"ParseARP", func() { _, _ = ParseARP(arp[EthHeaderLen:]) }},
		{"BuildRARPAnnounce", func() { BuildRARPAnnounce(out, vmMAC) }},
		{"ParseIPv4Checked", func() { _, _, _ = ParseIPv4Checked(frame[EthHeaderLen+VNTagLen+VLANTagLen:]) }},
		{"Checksum", func() { Checksum(out, 0) }},
	}
	for _, fn := range funcs {
		if n := testing.AllocsPerRun(100, fn.f); n != 0 {
			t.Errorf("%s: %v allocs per run, want 0", fn.name, n)
		}
	}
}

func BenchmarkParseFabric(b *testing.B) {
	frame := make([]byte, 128)
	BuildProbeFrame(frame, vmMAC2, vmMAC, vmIP, vmIP2, testProbe, len(frame))
	frame = pushTags(frame, &specTag, &specTCI)
	var h FabricHeader
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		if err := ParseFabric(frame, &h); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBuildProbeFrame(b *testing.B) {
	for _, size := range []int{ProbeFrameMinLen, 1514, 9014} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			buf := make([]byte, size)
			p := testProbe
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				p.Seq++
				if BuildProbeFrame(buf, vmMAC2, vmMAC, vmIP, vmIP2, p, size) != size {
					b.Fatal("short build")
				}
			}
		})
	}
}

func BenchmarkParseProbeFrame(b *testing.B) {
	for _, size := range []int{ProbeFrameMinLen, 1514, 9014} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			buf := make([]byte, size)
			BuildProbeFrame(buf, vmMAC2, vmMAC, vmIP, vmIP2, testProbe, size)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				if _, ok := ParseProbeFrame(buf); !ok {
					b.Fatal("not parsed")
				}
			}
		})
	}
}

func BenchmarkChecksum(b *testing.B) {
	for _, size := range []int{20, 1500, 9000} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			buf := bytes.Repeat([]byte{0xa5, 0x5a, 0xff}, size/3+1)[:size]
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				Checksum(buf, 0)
			}
		})
	}
}
