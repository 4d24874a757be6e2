package wire

// Round-trip fuzz targets, one per wire format: whatever a parser accepts
// must encode back to the same bytes (up to the documented losses), and no
// input may panic. Seed corpora live in testdata/fuzz/<FuzzName>/ so that a
// plain `go test` replays them.

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// vnTagReserved is bit 14 of the VN-Tag word, which ParseVNTagWord drops
// (protocols.md §1.2).
const vnTagReserved = 1 << 14

func FuzzVNTagWord(f *testing.F) {
	f.Fuzz(func(t *testing.T, w uint32) {
		if got, want := ParseVNTagWord(w).Word(), w&^vnTagReserved; got != want {
			t.Fatalf("Word(ParseVNTagWord(%#08x)) = %#08x, want %#08x", w, got, want)
		}
	})
}

func FuzzParseFabric(f *testing.F) {
	f.Fuzz(func(t *testing.T, frame []byte) {
		var h FabricHeader
		if err := ParseFabric(frame, &h); err != nil {
			return
		}
		if h.L3Off > len(frame) {
			t.Fatalf("L3Off %d past the end of %d bytes", h.L3Off, len(frame))
		}
		// Re-encode the header the way a port pushes tags.
		out := make([]byte, h.L3Off)
		PutEth(out, h.Dst, h.Src, 0)
		off := 12
		if h.HasVNTag {
			PutVNTag(out[off:], h.VNTag)
			off += VNTagLen
		}
		if h.HasVLAN {
			if h.VLANOff != off {
				t.Fatalf("VLANOff = %d, want %d", h.VLANOff, off)
			}
			PutVLANTag(out[off:], h.TCI)
			off += VLANTagLen
		}
		binary.BigEndian.PutUint16(out[off:], h.EtherType)
		if off+2 != h.L3Off {
			t.Fatalf("L3Off = %d, want %d", h.L3Off, off+2)
		}
		want := bytes.Clone(frame[:h.L3Off])
		if h.HasVNTag {
			want[12+2+2] &^= vnTagReserved >> 8 // bits 15..8 of the word
		}
		if !bytes.Equal(out, want) {
			t.Fatalf("re-encoded header\n got %x\nwant %x", out, want)
		}
	})
}

func FuzzParseARP(f *testing.F) {
	f.Fuzz(func(t *testing.T, payload []byte) {
		a, err := ParseARP(payload)
		if err != nil {
			return
		}
		var out [ARPLen]byte
		if PutARP(out[:], a) != ARPLen || !bytes.Equal(out[:], payload[:ARPLen]) {
			t.Fatalf("PutARP(ParseARP(x))\n got %x\nwant %x", out[:], payload[:ARPLen])
		}
	})
}

func FuzzParseIPv4(f *testing.F) {
	f.Fuzz(func(t *testing.T, pkt []byte) {
		h, n, err := ParseIPv4(pkt)
		_, cn, cerr := ParseIPv4Checked(pkt)
		if err != nil {
			if cerr == nil {
				t.Fatalf("ParseIPv4Checked accepted what ParseIPv4 rejected: %v", err)
			}
			return
		}
		if n < IPv4HeaderLen || n > IPv4MaxHeaderLen || n > int(h.TotalLen) || int(h.TotalLen) > len(pkt) {
			t.Fatalf("header length %d, total %d, buffer %d", n, h.TotalLen, len(pkt))
		}
		var out [IPv4HeaderLen]byte
		PutIPv4(out[:], h)
		// PutIPv4 writes no options and its own checksum; all else must
		// match.
		if out[0]>>4 != pkt[0]>>4 || !bytes.Equal(out[1:10], pkt[1:10]) || !bytes.Equal(out[12:20], pkt[12:20]) {
			t.Fatalf("PutIPv4(ParseIPv4(x))\n got %x\nwant %x", out[:], pkt[:20])
		}
		if cerr == nil && cn == IPv4HeaderLen && !bytes.Equal(out[:], pkt[:IPv4HeaderLen]) {
			t.Fatalf("checksummed header did not round-trip\n got %x\nwant %x", out[:], pkt[:20])
		}
		if _, _, err := ParseIPv4Checked(out[:]); err != nil && h.TotalLen == IPv4HeaderLen {
			t.Fatalf("ParseIPv4Checked(PutIPv4(h)) = %v", err)
		}
	})
}

func FuzzParseUDP(f *testing.F) {
	f.Fuzz(func(t *testing.T, seg []byte) {
		u, err := ParseUDP(seg)
		if err != nil {
			return
		}
		var out [UDPHeaderLen]byte
		if PutUDP(out[:], u) != UDPHeaderLen || !bytes.Equal(out[:], seg[:UDPHeaderLen]) {
			t.Fatalf("PutUDP(ParseUDP(x))\n got %x\nwant %x", out[:], seg[:UDPHeaderLen])
		}
		dgram := bytes.Clone(seg[:u.Length])
		VerifyUDPChecksum(dgram, vmIP, vmIP2) // must not panic
		SetUDPChecksum(dgram, vmIP, vmIP2)
		if !VerifyUDPChecksum(dgram, vmIP, vmIP2) {
			t.Fatalf("VerifyUDPChecksum after SetUDPChecksum failed for %x", dgram)
		}
	})
}

func FuzzParseICMPEcho(f *testing.F) {
	f.Fuzz(func(t *testing.T, msg []byte) {
		e, err := ParseICMPEcho(msg)
		if err != nil {
			return
		}
		out := make([]byte, len(msg))
		if PutICMPEcho(out, e, msg[ICMPEchoLen:]) != len(msg) {
			t.Fatalf("PutICMPEcho short")
		}
		// Only the checksum may differ, and then only between the two one's
		// complement zeros.
		if !bytes.Equal(out[:2], msg[:2]) || !bytes.Equal(out[4:], msg[4:]) {
			t.Fatalf("PutICMPEcho(ParseICMPEcho(x))\n got %x\nwant %x", out, msg)
		}
		if _, err := ParseICMPEcho(out); err != nil {
			t.Fatalf("ParseICMPEcho(PutICMPEcho(e)) = %v", err)
		}
	})
}

func FuzzParseProbeFrame(f *testing.F) {
	f.Fuzz(func(t *testing.T, frame []byte) {
		p, ok := ParseProbeFrame(frame)
		if !ok {
			return
		}
		// Rebuild the same probe untagged with the frame's addresses; it
		// must parse back to the same probe.
		var h FabricHeader
		if err := ParseFabric(frame, &h); err != nil {
			t.Fatalf("ParseProbeFrame accepted a frame ParseFabric rejects: %v", err)
		}
		ip, _, err := ParseIPv4Checked(frame[h.L3Off:])
		if err != nil {
			t.Fatalf("ParseProbeFrame accepted a bad IPv4 header: %v", err)
		}
		out := make([]byte, EthHeaderLen+int(ip.TotalLen))
		n := BuildProbeFrame(out, h.Dst, h.Src, ip.Src, ip.Dst, p, len(out))
		if n == 0 {
			t.Fatalf("BuildProbeFrame(%d bytes) failed", len(out))
		}
		if got, ok := ParseProbeFrame(out[:n]); !ok || got != p {
			t.Fatalf("ParseProbeFrame(BuildProbeFrame(p)) = %+v, %v; want %+v", got, ok, p)
		}
	})
}

// FuzzChecksum compares Checksum with the word-by-word definition.
func FuzzChecksum(f *testing.F) {
	f.Add([]byte{}, uint32(0))
	f.Add(bytes.Repeat([]byte{0xff}, 67), uint32(0xffffffff))
	f.Fuzz(func(t *testing.T, b []byte, initial uint32) {
		if got, want := Checksum(b, initial), naiveChecksum(b, initial); got != want {
			t.Fatalf("Checksum(%x, %#x) = %#04x, want %#04x", b, initial, got, want)
		}
	})
}
