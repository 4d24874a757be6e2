// Package wire holds the frame formats of the fabric, byte for byte:
// Ethernet, 802.1Q, VN-Tag, ARP/RARP, IPv4, UDP, ICMP. It does no I/O and
// never allocates while parsing; every parser is fuzzed.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// EtherTypes (IEEE registry).
const (
	EtherTypeIPv4  = 0x0800
	EtherTypeARP   = 0x0806
	EtherTypeRARP  = 0x8035
	EtherTypeVLAN  = 0x8100 // IEEE 802.1Q C-tag
	EtherTypeVNTag = 0x8926 // Cisco VN-Tag (protocols.md §1)
	EtherTypeIPv6  = 0x86DD
)

// Header sizes.
const (
	EthHeaderLen = 14
	VLANTagLen   = 4  // TPID + TCI
	VNTagLen     = 6  // EtherType + 32-bit tag word
	MinFrameLen  = 60 // without FCS; shorter frames are padded
)

// Errors returned by the parsers. They are sentinels so the data path can
// count them by reason without allocating.
var (
	ErrShort     = errors.New("wire: frame too short")
	ErrBadTag    = errors.New("wire: malformed tag")
	ErrNotIPv4   = errors.New("wire: not IPv4")
	ErrBadHeader = errors.New("wire: malformed header")
)

// MAC is an IEEE 802 MAC address.
type MAC [6]byte

// Broadcast is ff:ff:ff:ff:ff:ff.
var Broadcast = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// IsMulticast reports whether the group bit is set (broadcast included).
func (m MAC) IsMulticast() bool { return m[0]&1 != 0 }

// IsBroadcast reports whether m is the broadcast address.
func (m MAC) IsBroadcast() bool { return m == Broadcast }

// IsZero reports whether m is all zeros.
func (m MAC) IsZero() bool { return m == MAC{} }

func (m MAC) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// ParseMAC parses "aa:bb:cc:dd:ee:ff" (also with '-' or '.' in NX-OS's
// aabb.ccdd.eeff form).
func ParseMAC(s string) (MAC, error) {
	var m MAC
	var hex []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ':' || c == '-' || c == '.':
			continue
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
			hex = append(hex, c)
		default:
			return m, fmt.Errorf("wire: bad MAC %q: unexpected %q", s, c)
		}
	}
	if len(hex) != 12 {
		return m, fmt.Errorf("wire: bad MAC %q: want 12 hex digits", s)
	}
	for i := 0; i < 6; i++ {
		m[i] = unhex(hex[2*i])<<4 | unhex(hex[2*i+1])
	}
	return m, nil
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// MarshalText implements encoding.TextMarshaler.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *MAC) UnmarshalText(b []byte) error {
	v, err := ParseMAC(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Dst returns the destination MAC of an Ethernet frame (len >= 6).
func Dst(f []byte) (m MAC) { copy(m[:], f[0:6]); return }

// Src returns the source MAC of an Ethernet frame (len >= 12).
func Src(f []byte) (m MAC) { copy(m[:], f[6:12]); return }

// PutEth writes an untagged Ethernet header at f[0:14].
func PutEth(f []byte, dst, src MAC, etherType uint16) {
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	binary.BigEndian.PutUint16(f[12:14], etherType)
}

// VLAN TCI helpers (IEEE 802.1Q): PCP 15..13, DEI 12, VID 11..0.
const (
	VIDMask = 0x0FFF
	// MaxVID is the highest usable VLAN; 0 (priority tag) and 4095 are reserved.
	MaxVID = 4094
)

// TCI builds a tag control word.
func TCI(pcp uint8, vid uint16) uint16 { return uint16(pcp&7)<<13 | vid&VIDMask }

// ValidVID reports whether vid names a usable VLAN (1..4094).
func ValidVID(vid uint16) bool { return vid >= 1 && vid <= MaxVID }

// FabricHeader is the parsed outer part of a frame on a server port or
// uplink: MACs, optional VN-Tag, optional 802.1Q tag and the payload
// EtherType. Offsets let the caller strip tags in place.
type FabricHeader struct {
	Dst, Src  MAC
	HasVNTag  bool
	VNTag     VNTag
	HasVLAN   bool
	TCI       uint16 // valid when HasVLAN
	EtherType uint16 // the payload's EtherType, after all tags
	VLANOff   int    // offset of the 802.1Q TPID when HasVLAN
	L3Off     int    // offset of the payload
}

// VID returns the VLAN ID of the tag (0 when untagged).
func (h *FabricHeader) VID() uint16 {
	if !h.HasVLAN {
		return 0
	}
	return h.TCI & VIDMask
}

// PCP returns the 802.1Q priority (0 when untagged).
func (h *FabricHeader) PCP() uint8 {
	if !h.HasVLAN {
		return 0
	}
	return uint8(h.TCI >> 13)
}

// ParseFabric parses the outer headers of f into h. It accepts at most one
// VN-Tag, directly after the source MAC, and at most one 802.1Q tag after it
// (protocols.md §1.1); a second VN-Tag or a VN-Tag after 802.1Q is malformed.
func ParseFabric(f []byte, h *FabricHeader) error {
	// Reset first: a reused header must never carry the previous frame's
	// tags out of an error return.
	*h = FabricHeader{}
	if len(f) < EthHeaderLen {
		return ErrShort
	}
	copy(h.Dst[:], f[0:6])
	copy(h.Src[:], f[6:12])
	off := 12
	et := binary.BigEndian.Uint16(f[off:])
	if et == EtherTypeVNTag {
		if len(f) < off+VNTagLen+2 {
			return ErrShort
		}
		h.HasVNTag = true
		h.VNTag = ParseVNTagWord(binary.BigEndian.Uint32(f[off+2:]))
		off += VNTagLen
		et = binary.BigEndian.Uint16(f[off:])
	}
	if et == EtherTypeVLAN {
		if len(f) < off+VLANTagLen+2 {
			return ErrShort
		}
		h.HasVLAN = true
		h.VLANOff = off
		h.TCI = binary.BigEndian.Uint16(f[off+2:])
		off += VLANTagLen
		et = binary.BigEndian.Uint16(f[off:])
	}
	if et == EtherTypeVNTag || et == EtherTypeVLAN {
		// Stacked tags are not used on a VM-FEX server port.
		return ErrBadTag
	}
	h.EtherType = et
	h.L3Off = off + 2
	return nil
}
