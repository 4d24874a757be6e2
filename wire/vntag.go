package wire

import "encoding/binary"

// VNTag is the 32-bit Cisco VN-Tag word (protocols.md §1.2).
type VNTag struct {
	FromBridge bool   // d, bit 31: 1 = downstream (from the FI), 0 = towards it
	Pointer    bool   // p, bit 30: DVIF names a vif list, not one vif
	DVIF       uint16 // bits 29..16, 14 bits: destination vif (or list)
	Looped     bool   // l, bit 15: frame returns to the virtualizer it came from
	Version    uint8  // bits 13..12, always 0
	SVIF       uint16 // bits 11..0, 12 bits: source vif
}

// VN-Tag field limits.
const (
	MaxDVIF = 0x3FFF
	MaxSVIF = 0x0FFF
)

// Word encodes the tag; out-of-range fields are truncated to their width.
func (t VNTag) Word() uint32 {
	var w uint32
	if t.FromBridge {
		w |= 1 << 31
	}
	if t.Pointer {
		w |= 1 << 30
	}
	w |= uint32(t.DVIF&MaxDVIF) << 16
	if t.Looped {
		w |= 1 << 15
	}
	w |= uint32(t.Version&3) << 12
	w |= uint32(t.SVIF & MaxSVIF)
	return w
}

// ParseVNTagWord decodes a tag word. The reserved bit 14 is ignored.
func ParseVNTagWord(w uint32) VNTag {
	return VNTag{
		FromBridge: w&(1<<31) != 0,
		Pointer:    w&(1<<30) != 0,
		DVIF:       uint16(w>>16) & MaxDVIF,
		Looped:     w&(1<<15) != 0,
		Version:    uint8(w>>12) & 3,
		SVIF:       uint16(w) & MaxSVIF,
	}
}

// PutVNTag writes EtherType 0x8926 and the tag word into a 6-byte gap that
// sits right after the source MAC.
func PutVNTag(gap []byte, t VNTag) {
	binary.BigEndian.PutUint16(gap[0:2], EtherTypeVNTag)
	binary.BigEndian.PutUint32(gap[2:6], t.Word())
}

// PutVLANTag writes TPID 0x8100 and the TCI into a 4-byte gap.
func PutVLANTag(gap []byte, tci uint16) {
	binary.BigEndian.PutUint16(gap[0:2], EtherTypeVLAN)
	binary.BigEndian.PutUint16(gap[2:4], tci)
}
