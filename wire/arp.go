package wire

import "encoding/binary"

// ARP and RARP for Ethernet/IPv4 (RFC 826, RFC 903; protocols.md §6.1).
// Both use the same 28-octet body:
//
//	 0      2      4    5    6      8         14     18        24     28
//	+------+------+----+----+------+---------+------+---------+------+
//	|htype |ptype |hlen|plen|  op  |   SHA   | SPA  |   THA   | TPA  |
//	+------+------+----+----+------+---------+------+---------+------+
//
// A switch learns VM moves from the Ethernet source address alone
// (protocols.md §6.4); the body is parsed for the guest's ARP responder and
// for tests.

// ARP body constants (protocols.md §6.1).
const (
	ARPLen = 28 // body length for Ethernet/IPv4

	arpHTypeEthernet = 1
	arpPTypeIPv4     = EtherTypeIPv4
	arpHLenEthernet  = 6
	arpPLenIPv4      = 4
)

// ARP opcodes (RFC 826, RFC 903; protocols.md §6.1).
const (
	ARPRequest  = 1
	ARPReply    = 2
	RARPRequest = 3 // what vMotion and QEMU send after a move (§6.2)
	RARPReply   = 4
)

// ARP is an Ethernet/IPv4 ARP or RARP body. It is a plain value: parsing
// copies the addresses out of the frame.
type ARP struct {
	Op  uint16  // opcode, ARPRequest..RARPReply (others are passed through)
	SHA MAC     // sender hardware address
	SPA [4]byte // sender protocol (IPv4) address
	THA MAC     // target hardware address
	TPA [4]byte // target protocol (IPv4) address
}

// IsRARP reports whether a carries a RARP opcode; such frames travel with
// EtherType 0x8035 rather than 0x0806.
func (a ARP) IsRARP() bool { return a.Op == RARPRequest || a.Op == RARPReply }

// ParseARP parses an ARP or RARP body (the bytes after the EtherType).
// Trailing bytes (Ethernet padding) are ignored. Only Ethernet/IPv4
// bodies are accepted; any opcode is returned as is, and callers switch on
// it.
func ParseARP(payload []byte) (ARP, error) {
	var a ARP
	if len(payload) < ARPLen {
		return a, ErrShort
	}
	if binary.BigEndian.Uint16(payload[0:2]) != arpHTypeEthernet ||
		binary.BigEndian.Uint16(payload[2:4]) != arpPTypeIPv4 ||
		payload[4] != arpHLenEthernet || payload[5] != arpPLenIPv4 {
		return a, ErrBadHeader
	}
	a.Op = binary.BigEndian.Uint16(payload[6:8])
	copy(a.SHA[:], payload[8:14])
	copy(a.SPA[:], payload[14:18])
	copy(a.THA[:], payload[18:24])
	copy(a.TPA[:], payload[24:28])
	return a, nil
}

// PutARP writes the 28-octet body of a into b and returns ARPLen, or 0 if b
// is too short.
func PutARP(b []byte, a ARP) int {
	if len(b) < ARPLen {
		return 0
	}
	binary.BigEndian.PutUint16(b[0:2], arpHTypeEthernet)
	binary.BigEndian.PutUint16(b[2:4], arpPTypeIPv4)
	b[4] = arpHLenEthernet
	b[5] = arpPLenIPv4
	binary.BigEndian.PutUint16(b[6:8], a.Op)
	copy(b[8:14], a.SHA[:])
	copy(b[14:18], a.SPA[:])
	copy(b[18:24], a.THA[:])
	copy(b[24:28], a.TPA[:])
	return ARPLen
}

// BuildARPFrame writes a whole untagged Ethernet frame carrying a to dst,
// from a.SHA, zero-padded to MinFrameLen. The EtherType is 0x8035 for RARP
// opcodes and 0x0806 otherwise (protocols.md §6.1). It returns the frame
// length, or 0 if b is shorter than MinFrameLen.
func BuildARPFrame(b []byte, dst MAC, a ARP) int {
	if len(b) < MinFrameLen {
		return 0
	}
	et := uint16(EtherTypeARP)
	if a.IsRARP() {
		et = EtherTypeRARP
	}
	PutEth(b, dst, a.SHA, et)
	n := EthHeaderLen + PutARP(b[EthHeaderLen:], a)
	// The buffer may hold an old frame; padding must be zeros.
	clear(b[n:MinFrameLen])
	return MinFrameLen
}

// BuildRARPAnnounce writes the broadcast RARP that announces mac on its new
// port after a live migration, as vMotion and QEMU send it (protocols.md
// §6.1, §6.2): opcode 3, SHA = THA = mac, SPA = TPA = 0.0.0.0, 60 bytes.
// It returns the frame length, or 0 if b is too short.
func BuildRARPAnnounce(b []byte, mac MAC) int {
	return BuildARPFrame(b, Broadcast, ARP{Op: RARPRequest, SHA: mac, THA: mac})
}

// BuildARPRequest writes a broadcast "who has tpa? tell spa" request with a
// zero THA. With spa == tpa it is an RFC 5227 ARP Announcement
// (protocols.md §6.3). It returns the frame length, or 0 if b is too short.
func BuildARPRequest(b []byte, sha MAC, spa, tpa [4]byte) int {
	return BuildARPFrame(b, Broadcast, ARP{Op: ARPRequest, SHA: sha, SPA: spa, TPA: tpa})
}

// BuildARPReply writes "spa is at sha", unicast to tha. A gratuitous reply
// (protocols.md §6.3) passes tha = Broadcast and spa == tpa. It returns the
// frame length, or 0 if b is too short.
func BuildARPReply(b []byte, sha MAC, spa [4]byte, tha MAC, tpa [4]byte) int {
	return BuildARPFrame(b, tha, ARP{Op: ARPReply, SHA: sha, SPA: spa, THA: tha, TPA: tpa})
}
