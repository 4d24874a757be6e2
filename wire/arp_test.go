package wire

import (
	"bytes"
	"errors"
	"testing"
)

func TestARPRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		a    ARP
	}{
		{"request", ARP{Op: ARPRequest, SHA: vmMAC, SPA: vmIP, TPA: vmIP2}},
		{"reply", ARP{Op: ARPReply, SHA: vmMAC2, SPA: vmIP2, THA: vmMAC, TPA: vmIP}},
		{"rarp-request", ARP{Op: RARPRequest, SHA: vmMAC, THA: vmMAC}},
		{"rarp-reply", ARP{Op: RARPReply, SHA: vmMAC, SPA: vmIP, THA: vmMAC2, TPA: vmIP2}},
		{"unknown-op", ARP{Op: 9, SHA: vmMAC}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b [ARPLen + 4]byte
			if n := PutARP(b[:], tt.a); n != ARPLen {
				t.Fatalf("PutARP = %d, want %d", n, ARPLen)
			}
			got, err := ParseARP(b[:])
			if err != nil {
				t.Fatalf("ParseARP: %v", err)
			}
			if got != tt.a {
				t.Errorf("ParseARP(PutARP(a)) = %+v, want %+v", got, tt.a)
			}
		})
	}
}

func TestParseARPErrors(t *testing.T) {
	var good [ARPLen]byte
	PutARP(good[:], ARP{Op: ARPRequest, SHA: vmMAC})
	mut := func(i int, v byte) []byte {
		b := bytes.Clone(good[:])
		b[i] = v
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"truncated", good[:ARPLen-1], ErrShort},
		{"htype-ieee802", mut(1, 6), ErrBadHeader},
		{"ptype-ipv6", mut(2, 0x86), ErrBadHeader},
		{"hlen-8", mut(4, 8), ErrBadHeader},
		{"plen-16", mut(5, 16), ErrBadHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseARP(tt.in); !errors.Is(err, tt.want) {
				t.Errorf("ParseARP = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestBuildRARPAnnounce pins the announce frame byte for byte to the layout
// of protocols.md §6.1.
func TestBuildRARPAnnounce(t *testing.T) {
	want := unhexFrame(t, `
		ffffffffffff 0025b500001a 8035
		0001 0800 06 04 0003
		0025b500001a 00000000
		0025b500001a 00000000
		000000000000000000000000000000000000`)
	b := bytes.Repeat([]byte{0xee}, 128) // dirty: padding must be cleared
	n := BuildRARPAnnounce(b, vmMAC)
	if n != MinFrameLen {
		t.Fatalf("BuildRARPAnnounce = %d, want %d", n, MinFrameLen)
	}
	if !bytes.Equal(b[:n], want) {
		t.Errorf("BuildRARPAnnounce frame\n got %x\nwant %x", b[:n], want)
	}
}

func TestBuildARPFrames(t *testing.T) {
	tests := []struct {
		name    string
		build   func(b []byte) int
		wantDst MAC
		wantET  uint16
		want    ARP
	}{
		{
			name:    "request",
			build:   func(b []byte) int { return BuildARPRequest(b, vmMAC, vmIP, vmIP2) },
			wantDst: Broadcast, wantET: EtherTypeARP,
			want: ARP{Op: ARPRequest, SHA: vmMAC, SPA: vmIP, TPA: vmIP2},
		},
		{
			name:    "announcement",
			build:   func(b []byte) int { return BuildARPRequest(b, vmMAC, vmIP, vmIP) },
			wantDst: Broadcast, wantET: EtherTypeARP,
			want: ARP{Op: ARPRequest, SHA: vmMAC, SPA: vmIP, TPA: vmIP},
		},
		{
			name:    "reply",
			build:   func(b []byte) int { return BuildARPReply(b, vmMAC2, vmIP2, vmMAC, vmIP) },
			wantDst: vmMAC, wantET: EtherTypeARP,
			want: ARP{Op: ARPReply, SHA: vmMAC2, SPA: vmIP2, THA: vmMAC, TPA: vmIP},
		},
		{
			name:    "gratuitous-reply",
			build:   func(b []byte) int { return BuildARPReply(b, vmMAC, vmIP, Broadcast, vmIP) },
			wantDst: Broadcast, wantET: EtherTypeARP,
			want: ARP{Op: ARPReply, SHA: vmMAC, SPA: vmIP, THA: Broadcast, TPA: vmIP},
		},
		{
			name:    "rarp",
			build:   func(b []byte) int { return BuildRARPAnnounce(b, vmMAC2) },
			wantDst: Broadcast, wantET: EtherTypeRARP,
			want: ARP{Op: RARPRequest, SHA: vmMAC2, THA: vmMAC2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := bytes.Repeat([]byte{0xa5}, 100)
			n := tt.build(b)
			if n != MinFrameLen {
				t.Fatalf("build = %d, want %d", n, MinFrameLen)
			}
			var h FabricHeader
			if err := ParseFabric(b[:n], &h); err != nil {
				t.Fatalf("ParseFabric: %v", err)
			}
			if h.Dst != tt.wantDst || h.Src != tt.want.SHA || h.EtherType != tt.wantET {
				t.Errorf("header dst %v src %v type %#04x, want %v %v %#04x",
					h.Dst, h.Src, h.EtherType, tt.wantDst, tt.want.SHA, tt.wantET)
			}
			a, err := ParseARP(b[h.L3Off:n])
			if err != nil || a != tt.want {
				t.Errorf("ParseARP = %+v, %v; want %+v", a, err, tt.want)
			}
			if pad := b[EthHeaderLen+ARPLen : n]; !bytes.Equal(pad, make([]byte, len(pad))) {
				t.Errorf("padding not zero: %x", pad)
			}
		})
	}
}

func TestARPShortBuffers(t *testing.T) {
	b := make([]byte, MinFrameLen-1)
	if n := BuildRARPAnnounce(b, vmMAC); n != 0 {
		t.Errorf("BuildRARPAnnounce(59-byte buffer) = %d, want 0", n)
	}
	if n := BuildARPRequest(b, vmMAC, vmIP, vmIP2); n != 0 {
		t.Errorf("BuildARPRequest(59-byte buffer) = %d, want 0", n)
	}
	if n := PutARP(b[:ARPLen-1], ARP{}); n != 0 {
		t.Errorf("PutARP(27-byte buffer) = %d, want 0", n)
	}
}
