package wire

import (
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"
)

// Test fixtures shared by the wire tests.
var (
	vmMAC  = MAC{0x00, 0x25, 0xb5, 0x00, 0x00, 0x1a} // UCS pool style
	vmMAC2 = MAC{0x00, 0x25, 0xb5, 0x00, 0x00, 0x2b}
	vmIP   = [4]byte{10, 0, 0, 1}
	vmIP2  = [4]byte{10, 0, 0, 2}

	// specTag is the tag verified against TShark in protocols.md §1.3.
	specTag = VNTag{FromBridge: true, DVIF: 0x123, Looped: true, SVIF: 0x045}
	// specTCI is the 802.1Q tag that follows it there: PCP 5, VID 100.
	specTCI = TCI(5, 100)
)

// unhexFrame decodes hex written with spaces and newlines for readability.
func unhexFrame(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatalf("bad hex fixture: %v", err)
	}
	return b
}

// pushTags returns a copy of the untagged frame f with a VN-Tag and/or an
// 802.1Q tag inserted after the source MAC, in wire order (VN-Tag outside).
func pushTags(f []byte, vn *VNTag, tci *uint16) []byte {
	out := make([]byte, 0, len(f)+VNTagLen+VLANTagLen)
	out = append(out, f[:12]...)
	if vn != nil {
		var g [VNTagLen]byte
		PutVNTag(g[:], *vn)
		out = append(out, g[:]...)
	}
	if tci != nil {
		var g [VLANTagLen]byte
		PutVLANTag(g[:], *tci)
		out = append(out, g[:]...)
	}
	return append(out, f[12:]...)
}

// naiveChecksum is RFC 1071 written word by word, the oracle for Checksum.
func naiveChecksum(b []byte, initial uint32) uint16 {
	s := uint64(initial)
	for i := 0; i+1 < len(b); i += 2 {
		s += uint64(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint64(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

func ptr[T any](v T) *T { return &v }
