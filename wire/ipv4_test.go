package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func TestChecksumKnownValues(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		initial uint32
		want    uint16
	}{
		// RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
		{"rfc1071", "0001f203f4f5f6f7", 0, ^uint16(0xddf2)},
		// A header with its checksum field zeroed (checksum b861).
		{"ipv4-header", "450000730000400040110000c0a80001c0a800c7", 0, 0xb861},
		{"ipv4-header-verify", "45000073000040004011b861c0a80001c0a800c7", 0, 0},
		{"empty", "", 0, 0xffff},
		{"odd", "01", 0, ^uint16(0x0100)},
		{"initial-only", "", 0x1234, ^uint16(0x1234)},
		{"initial-carries", "ffff", 0xffffffff, ^uint16(0xffff)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := unhexFrame(t, tt.in)
			if got := Checksum(b, tt.initial); got != tt.want {
				t.Errorf("Checksum(%s, %#x) = %#04x, want %#04x", tt.in, tt.initial, got, tt.want)
			}
		})
	}
}

// TestChecksumOracle compares the 64-bit summing against the word-by-word
// definition for every length up to a few unrolled loops, every start
// alignment and extreme data.
func TestChecksumOracle(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 300)
	for _, fill := range []string{"random", "ones", "zeros"} {
		for i := range buf {
			switch fill {
			case "random":
				buf[i] = byte(r.Uint32())
			case "ones":
				buf[i] = 0xff
			default:
				buf[i] = 0
			}
		}
		for off := 0; off < 8; off++ {
			for n := 0; off+n <= len(buf); n++ {
				b := buf[off : off+n]
				for _, init := range []uint32{0, 1, 0xffff, math.MaxUint32, r.Uint32()} {
					if got, want := Checksum(b, init), naiveChecksum(b, init); got != want {
						t.Fatalf("%s: Checksum(len %d, off %d, %#x) = %#04x, want %#04x",
							fill, n, off, init, got, want)
					}
				}
			}
		}
	}
}

// ipv4Fixture is a 20-byte header (checksum b861) followed by 95 payload
// bytes, 115 = 0x73 in all.
func ipv4Fixture(t testing.TB) []byte {
	h := unhexFrame(t, "45000073000040004011b861c0a80001c0a800c7")
	return append(h, make([]byte, 0x73-20)...)
}

func TestParseIPv4(t *testing.T) {
	good := ipv4Fixture(t)
	want := IPv4{
		TotalLen: 0x73, Flags: IPv4DontFragment, TTL: 64, Protocol: IPProtoUDP,
		Checksum: 0xb861, Src: [4]byte{192, 168, 0, 1}, Dst: [4]byte{192, 168, 0, 199},
	}
	h, n, err := ParseIPv4Checked(good)
	if err != nil || n != IPv4HeaderLen || h != want {
		t.Fatalf("ParseIPv4Checked = %+v, %d, %v; want %+v, 20, nil", h, n, err, want)
	}
	if h.SrcAddr() != netip.MustParseAddr("192.168.0.1") || h.DstAddr() != netip.MustParseAddr("192.168.0.199") {
		t.Errorf("SrcAddr, DstAddr = %v, %v", h.SrcAddr(), h.DstAddr())
	}

	mut := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	withOptions := mut(func(b []byte) {
		b[0] = 0x46 // IHL 6: one option word, here NOPs
		copy(b[20:24], []byte{1, 1, 1, 0})
		b[10], b[11] = 0, 0
		binary.BigEndian.PutUint16(b[10:], Checksum(b[:24], 0))
	})
	tests := []struct {
		name    string
		in      []byte
		wantLen int
		wantErr error
		checked error // of ParseIPv4Checked when it differs
	}{
		{"good", good, 20, nil, nil},
		{"ethernet-padding", append(bytes.Clone(good), 0, 0, 0), 20, nil, nil},
		{"options", withOptions, 24, nil, nil},
		{"empty", nil, 0, ErrShort, nil},
		{"short-header", good[:19], 0, ErrShort, nil},
		{"truncated-payload", good[:0x72], 0, ErrShort, nil},
		{"version-6", mut(func(b []byte) { b[0] = 0x65 }), 0, ErrNotIPv4, nil},
		{"ihl-4", mut(func(b []byte) { b[0] = 0x44 }), 0, ErrBadHeader, nil},
		{"ihl-0", mut(func(b []byte) { b[0] = 0x40 }), 0, ErrBadHeader, nil},
		{"ihl-past-end", mut(func(b []byte) { b[0] = 0x4f })[:40], 0, ErrShort, nil},
		{"total-below-header", mut(func(b []byte) { b[2], b[3] = 0, 19 }), 0, ErrBadHeader, nil},
		{"total-past-end", mut(func(b []byte) { b[2], b[3] = 0xff, 0xff }), 0, ErrShort, nil},
		{"bad-checksum", mut(func(b []byte) { b[8] = 63 }), 20, nil, ErrBadChecksum},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, n, err := ParseIPv4(tt.in)
			if !errors.Is(err, tt.wantErr) || (err == nil && n != tt.wantLen) {
				t.Errorf("ParseIPv4 = %d, %v; want %d, %v", n, err, tt.wantLen, tt.wantErr)
			}
			wantChecked := tt.wantErr
			if tt.checked != nil {
				wantChecked = tt.checked
			}
			if _, _, err := ParseIPv4Checked(tt.in); !errors.Is(err, wantChecked) {
				t.Errorf("ParseIPv4Checked = %v, want %v", err, wantChecked)
			}
		})
	}
}

func TestPutIPv4(t *testing.T) {
	good := ipv4Fixture(t)
	h, _, err := ParseIPv4(good)
	if err != nil {
		t.Fatal(err)
	}
	h.Checksum = 0x1234 // ignored
	var b [IPv4HeaderLen]byte
	if n := PutIPv4(b[:], h); n != IPv4HeaderLen {
		t.Fatalf("PutIPv4 = %d", n)
	}
	if !bytes.Equal(b[:], good[:20]) {
		t.Errorf("PutIPv4\n got %x\nwant %x", b[:], good[:20])
	}
	frag := IPv4{TotalLen: 20, Flags: IPv4MoreFragments | 4, FragOff: 0x1abc, TTL: 1}
	PutIPv4(b[:], frag)
	got, _, err := ParseIPv4Checked(b[:])
	frag.Checksum = got.Checksum
	if err != nil || got != frag || !got.IsFragment() {
		t.Errorf("fragment round trip = %+v, %v; want %+v", got, err, frag)
	}
	if n := PutIPv4(b[:19], h); n != 0 {
		t.Errorf("PutIPv4(19 bytes) = %d, want 0", n)
	}
}

func TestAddr4(t *testing.T) {
	tests := []struct {
		in   netip.Addr
		want [4]byte
		ok   bool
	}{
		{netip.MustParseAddr("10.0.0.1"), [4]byte{10, 0, 0, 1}, true},
		{netip.MustParseAddr("::ffff:10.0.0.2"), [4]byte{10, 0, 0, 2}, true},
		{netip.MustParseAddr("fe80::1"), [4]byte{}, false},
		{netip.Addr{}, [4]byte{}, false},
	}
	for _, tt := range tests {
		got, ok := Addr4(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("Addr4(%v) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseUDP(t *testing.T) {
	good := []byte{0x1b, 0x59, 0x1b, 0x59, 0x00, 0x0a, 0x00, 0x00, 'h', 'i', 0, 0}
	tests := []struct {
		name string
		in   []byte
		want UDP
		err  error
	}{
		{"good", good, UDP{SrcPort: ProbePort, DstPort: ProbePort, Length: 10}, nil},
		{"header-only", []byte{0, 1, 0, 2, 0, 8, 0xab, 0xcd}, UDP{1, 2, 8, 0xabcd}, nil},
		{"empty", nil, UDP{}, ErrShort},
		{"short", good[:7], UDP{}, ErrShort},
		{"length-7", []byte{0, 1, 0, 2, 0, 7, 0, 0}, UDP{}, ErrBadHeader},
		{"length-past-end", good[:9], UDP{}, ErrShort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseUDP(tt.in)
			if !errors.Is(err, tt.err) || (err == nil && got != tt.want) {
				t.Errorf("ParseUDP = %+v, %v; want %+v, %v", got, err, tt.want, tt.err)
			}
			if err != nil {
				return
			}
			var b [UDPHeaderLen]byte
			if PutUDP(b[:], got) != UDPHeaderLen || !bytes.Equal(b[:], tt.in[:8]) {
				t.Errorf("PutUDP = %x, want %x", b, tt.in[:8])
			}
		})
	}
}

func TestUDPChecksum(t *testing.T) {
	dgram := make([]byte, 8+13)
	PutUDP(dgram, UDP{SrcPort: 5000, DstPort: ProbePort, Length: uint16(len(dgram))})
	copy(dgram[8:], "hello, fabric")
	SetUDPChecksum(dgram, vmIP, vmIP2)
	if !VerifyUDPChecksum(dgram, vmIP, vmIP2) {
		t.Fatalf("VerifyUDPChecksum after SetUDPChecksum = false")
	}
	// The pseudo-header is covered: other addresses fail.
	if VerifyUDPChecksum(dgram, vmIP, [4]byte{10, 0, 0, 3}) {
		t.Errorf("checksum does not depend on the destination address")
	}
	// Cross-check against the oracle over an explicit pseudo-header.
	ph := append([]byte{10, 0, 0, 1, 10, 0, 0, 2, 0, IPProtoUDP, 0, byte(len(dgram))}, dgram...)
	ph[12+6], ph[12+7] = 0, 0
	if got, want := binary.BigEndian.Uint16(dgram[6:]), naiveChecksum(ph, 0); got != want {
		t.Errorf("UDP checksum = %#04x, want %#04x", got, want)
	}
	// A flipped payload bit fails.
	dgram[10] ^= 1
	if VerifyUDPChecksum(dgram, vmIP, vmIP2) {
		t.Errorf("VerifyUDPChecksum accepted a corrupted datagram")
	}
	dgram[10] ^= 1
	// No checksum (0) passes.
	dgram[6], dgram[7] = 0, 0
	if !VerifyUDPChecksum(dgram, vmIP, vmIP2) {
		t.Errorf("VerifyUDPChecksum rejected a datagram without checksum")
	}
	if VerifyUDPChecksum(dgram[:7], vmIP, vmIP2) {
		t.Errorf("VerifyUDPChecksum accepted 7 bytes")
	}
}

// TestUDPChecksumZeroSentAsOnes builds a datagram whose checksum computes
// to 0 and checks it is sent as 0xffff (RFC 768) and still verifies.
func TestUDPChecksumZeroSentAsOnes(t *testing.T) {
	dgram := make([]byte, 8+2)
	PutUDP(dgram, UDP{SrcPort: 1, DstPort: 2, Length: 10})
	SetUDPChecksum(dgram, vmIP, vmIP2)
	// Putting the checksum into the payload makes the sum all ones.
	copy(dgram[8:], dgram[6:8])
	SetUDPChecksum(dgram, vmIP, vmIP2)
	if got := binary.BigEndian.Uint16(dgram[6:]); got != 0xffff {
		t.Fatalf("checksum = %#04x, want 0xffff", got)
	}
	if !VerifyUDPChecksum(dgram, vmIP, vmIP2) {
		t.Errorf("VerifyUDPChecksum rejected checksum 0xffff")
	}
}

func TestICMPEcho(t *testing.T) {
	data := []byte("abcdefghijklmnopqrstuvwabcdefghi") // what Windows ping sends
	b := make([]byte, 64)
	e := ICMPEcho{Type: ICMPEchoRequest, ID: 0x1234, Seq: 7, Checksum: 0xdead}
	n := PutICMPEcho(b, e, data)
	if n != ICMPEchoLen+len(data) {
		t.Fatalf("PutICMPEcho = %d", n)
	}
	if got, want := binary.BigEndian.Uint16(b[2:]), func() uint16 {
		c := bytes.Clone(b[:n])
		c[2], c[3] = 0, 0
		return naiveChecksum(c, 0)
	}(); got != want {
		t.Errorf("checksum = %#04x, want %#04x", got, want)
	}
	got, err := ParseICMPEcho(b[:n])
	e.Checksum = got.Checksum
	if err != nil || got != e || !bytes.Equal(b[ICMPEchoLen:n], data) {
		t.Fatalf("ParseICMPEcho = %+v, %v; want %+v", got, err, e)
	}

	// A reply built in place over the request's data.
	reply := ICMPEcho{Type: ICMPEchoReply, ID: e.ID, Seq: e.Seq}
	if m := PutICMPEcho(b, reply, b[ICMPEchoLen:n]); m != n {
		t.Fatalf("PutICMPEcho in place = %d, want %d", m, n)
	}
	if got, err := ParseICMPEcho(b[:n]); err != nil || got.Type != ICMPEchoReply || !bytes.Equal(b[ICMPEchoLen:n], data) {
		t.Errorf("in-place reply = %+v, %v, data %q", got, err, b[ICMPEchoLen:n])
	}

	mut := func(i int, v byte) []byte {
		c := bytes.Clone(b[:n])
		c[i] = v
		return c
	}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"short", b[:7], ErrShort},
		{"dest-unreachable", mut(0, 3), ErrNotEcho},
		{"code-1", mut(1, 1), ErrNotEcho},
		{"bad-checksum", mut(9, 'X'), ErrBadChecksum},
		{"truncated-data", b[:n-1], ErrBadChecksum},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseICMPEcho(tt.in); !errors.Is(err, tt.want) {
				t.Errorf("ParseICMPEcho = %v, want %v", err, tt.want)
			}
		})
	}
	if PutICMPEcho(b[:ICMPEchoLen+len(data)-1], e, data) != 0 {
		t.Errorf("PutICMPEcho into a short buffer did not return 0")
	}
}

func TestBuildICMPEchoFrame(t *testing.T) {
	tests := []struct {
		name    string
		data    []byte
		wantLen int
	}{
		{"empty-padded", nil, MinFrameLen},
		{"exactly-60", make([]byte, 18), MinFrameLen},
		{"large", make([]byte, 1000), EthHeaderLen + IPv4HeaderLen + ICMPEchoLen + 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := bytes.Repeat([]byte{0x77}, 1100)
			e := ICMPEcho{Type: ICMPEchoRequest, ID: 1, Seq: 2}
			n := BuildICMPEchoFrame(b, vmMAC2, vmMAC, vmIP, vmIP2, e, tt.data)
			if n != tt.wantLen {
				t.Fatalf("BuildICMPEchoFrame = %d, want %d", n, tt.wantLen)
			}
			ip, hl, err := ParseIPv4Checked(b[EthHeaderLen:n])
			if err != nil || ip.Protocol != IPProtoICMP || ip.Src != vmIP || ip.Dst != vmIP2 {
				t.Fatalf("ParseIPv4Checked = %+v, %v", ip, err)
			}
			if _, err := ParseICMPEcho(b[EthHeaderLen+hl : EthHeaderLen+int(ip.TotalLen)]); err != nil {
				t.Errorf("ParseICMPEcho: %v", err)
			}
			if pad := b[EthHeaderLen+int(ip.TotalLen) : n]; !bytes.Equal(pad, make([]byte, len(pad))) {
				t.Errorf("padding not zero: %x", pad)
			}
		})
	}
	if n := BuildICMPEchoFrame(make([]byte, 59), vmMAC2, vmMAC, vmIP, vmIP2, ICMPEcho{}, nil); n != 0 {
		t.Errorf("BuildICMPEchoFrame into 59 bytes = %d, want 0", n)
	}
	if n := BuildICMPEchoFrame(make([]byte, 70000), vmMAC2, vmMAC, vmIP, vmIP2, ICMPEcho{}, make([]byte, 65535-27)); n != 0 {
		t.Errorf("BuildICMPEchoFrame with oversized data = %d, want 0", n)
	}
}

// TestSumChains: a partial Sum passed on as the next one's initial value
// gives the sum of the whole (split at even offsets), and its complement
// is Checksum's.
func TestSumChains(t *testing.T) {
	b := make([]byte, 1501)
	for i := range b {
		b[i] = byte(i*31 + 7)
	}
	whole := Sum(b, 0)
	for _, k := range []int{0, 2, 8, 20, 64, 1000, 1500} {
		if got := Sum(b[k:], Sum(b[:k], 0)); got != whole {
			t.Errorf("split at %d: %#x, want %#x", k, got, whole)
		}
	}
	if ^uint16(whole) != Checksum(b, 0) {
		t.Errorf("^Sum = %#x, Checksum = %#x", ^uint16(whole), Checksum(b, 0))
	}
	if whole > 0xffff {
		t.Errorf("Sum %#x is not folded to 16 bits", whole)
	}
}
