package wire

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"net/netip"
)

// IPv4 (RFC 791), UDP (RFC 768), ICMP echo (RFC 792) and the internet
// checksum (RFC 1071). Only what the traffic generator, the guest's ARP/ping
// responder and the ERSPAN/NetFlow exporters need: no fragmentation, no
// option parsing. Addresses are [4]byte so that parsed headers are plain
// values that never allocate; Addr4 and the SrcAddr/DstAddr methods convert
// to and from netip.Addr at the edges.

// Header sizes and field values.
const (
	IPv4HeaderLen    = 20 // without options (IHL 5)
	IPv4MaxHeaderLen = 60 // IHL 15
	UDPHeaderLen     = 8
	ICMPEchoLen      = 8 // type, code, checksum, identifier, sequence

	ipv4Version = 4

	// IP protocol numbers (IANA).
	IPProtoICMP = 1
	IPProtoUDP  = 17

	// ICMP types of the echo messages (RFC 792). Their code is always 0.
	ICMPEchoReply   = 0
	ICMPEchoRequest = 8
)

// IPv4 flags: the 3 bits above the fragment offset (RFC 791 §3.1).
const (
	IPv4MoreFragments = 1 << 0
	IPv4DontFragment  = 1 << 1
	// Bit 2 is reserved and must be zero; it is kept as read so that
	// parsing and writing a header round-trips.
)

// Errors of the IPv4/UDP/ICMP parsers (see also ErrShort, ErrNotIPv4 and
// ErrBadHeader).
var (
	ErrBadChecksum = errors.New("wire: bad checksum")
	ErrNotEcho     = errors.New("wire: not an ICMP echo message")
)

// IPv4 is a parsed IPv4 header without its options. It is a plain value.
type IPv4 struct {
	TOS      uint8   // DSCP << 2 | ECN (protocols.md §5.2)
	TotalLen uint16  // header plus payload, in octets
	ID       uint16  // identification
	Flags    uint8   // IPv4DontFragment, IPv4MoreFragments (3 bits)
	FragOff  uint16  // fragment offset in 8-octet units (13 bits)
	TTL      uint8   // time to live
	Protocol uint8   // IPProtoUDP, IPProtoICMP, ...
	Checksum uint16  // header checksum as read; PutIPv4 computes its own
	Src, Dst [4]byte // addresses in network order
}

// IsFragment reports whether the packet is a fragment (first or later).
func (h *IPv4) IsFragment() bool { return h.Flags&IPv4MoreFragments != 0 || h.FragOff != 0 }

// SrcAddr returns the source address as a netip.Addr.
func (h *IPv4) SrcAddr() netip.Addr { return netip.AddrFrom4(h.Src) }

// DstAddr returns the destination address as a netip.Addr.
func (h *IPv4) DstAddr() netip.Addr { return netip.AddrFrom4(h.Dst) }

// Addr4 converts an IPv4 (or IPv4-mapped IPv6) address to its four octets.
// It reports false for any other address, including the zero Addr.
func Addr4(a netip.Addr) ([4]byte, bool) {
	a = a.Unmap()
	if !a.Is4() {
		return [4]byte{}, false
	}
	return a.As4(), true
}

// ParseIPv4 parses the IPv4 header at the start of b and returns it with
// the header length in octets (options, if any, are b[IPv4HeaderLen:hdrLen]).
// It checks the version, that IHL is at least 5 and that the total length
// covers the header and fits in b; bytes of b past TotalLen (Ethernet
// padding) are ignored, so the payload is b[hdrLen:h.TotalLen]. The header
// checksum is not verified: use ParseIPv4Checked for that.
func ParseIPv4(b []byte) (h IPv4, hdrLen int, err error) {
	if len(b) < IPv4HeaderLen {
		return h, 0, ErrShort
	}
	if b[0]>>4 != ipv4Version {
		return h, 0, ErrNotIPv4
	}
	hdrLen = int(b[0]&0x0f) * 4
	if hdrLen < IPv4HeaderLen {
		return h, 0, ErrBadHeader
	}
	if hdrLen > len(b) {
		return h, 0, ErrShort
	}
	h.TotalLen = binary.BigEndian.Uint16(b[2:4])
	if int(h.TotalLen) < hdrLen {
		return h, 0, ErrBadHeader
	}
	if int(h.TotalLen) > len(b) {
		return h, 0, ErrShort
	}
	h.TOS = b[1]
	h.ID = binary.BigEndian.Uint16(b[4:6])
	ff := binary.BigEndian.Uint16(b[6:8])
	h.Flags = uint8(ff >> 13)
	h.FragOff = ff & 0x1fff
	h.TTL = b[8]
	h.Protocol = b[9]
	h.Checksum = binary.BigEndian.Uint16(b[10:12])
	copy(h.Src[:], b[12:16])
	copy(h.Dst[:], b[16:20])
	return h, hdrLen, nil
}

// ParseIPv4Checked is ParseIPv4 that also verifies the header checksum,
// returning ErrBadChecksum when it is wrong.
func ParseIPv4Checked(b []byte) (IPv4, int, error) {
	h, n, err := ParseIPv4(b)
	if err != nil {
		return h, n, err
	}
	if Checksum(b[:n], 0) != 0 {
		return h, 0, ErrBadChecksum
	}
	return h, n, nil
}

// PutIPv4 writes h as a 20-octet header without options into b, computing
// the header checksum (h.Checksum is ignored). The caller sets TotalLen. It
// returns IPv4HeaderLen, or 0 if b is too short.
func PutIPv4(b []byte, h IPv4) int {
	if len(b) < IPv4HeaderLen {
		return 0
	}
	b[0] = ipv4Version<<4 | IPv4HeaderLen/4
	b[1] = h.TOS
	binary.BigEndian.PutUint16(b[2:4], h.TotalLen)
	binary.BigEndian.PutUint16(b[4:6], h.ID)
	binary.BigEndian.PutUint16(b[6:8], uint16(h.Flags&7)<<13|h.FragOff&0x1fff)
	b[8] = h.TTL
	b[9] = h.Protocol
	b[10], b[11] = 0, 0
	copy(b[12:16], h.Src[:])
	copy(b[16:20], h.Dst[:])
	binary.BigEndian.PutUint16(b[10:12], Checksum(b[:IPv4HeaderLen], 0))
	return IPv4HeaderLen
}

// Checksum returns the internet checksum (RFC 1071) of data: the one's
// complement of the one's complement sum of its big-endian 16-bit words, an
// odd last byte padded with a zero. initial is a partial sum added in, such
// as PseudoHeaderSum. Verifying a header that holds its checksum yields 0.
func Checksum(data []byte, initial uint32) uint16 {
	return ^fold(sum(data, uint64(initial)))
}

// Sum returns the one's complement sum (RFC 1071) of data's big-endian
// 16-bit words added to initial, folded to 16 bits and not complemented: a
// partial sum to pass on as another Sum's or Checksum's initial value. A
// header that holds its own checksum sums to 0xFFFF.
func Sum(data []byte, initial uint32) uint32 { return uint32(fold(sum(data, uint64(initial)))) }

// sum adds data to acc as a one's complement sum in 64-bit words. Because
// 2^16-1 divides 2^64-1, the end-around carries of a 64-bit sum fold to the
// same 16-bit result as RFC 1071's word-by-word sum (RFC 1071 §2(C)), at a
// quarter of the additions.
func sum(b []byte, acc uint64) uint64 {
	var c uint64
	for len(b) >= 32 {
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[0:8]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[8:16]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[16:24]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[24:32]), c)
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[0:8]), c)
		b = b[8:]
	}
	// The tail goes into the high end of one more word, keeping every byte
	// in its 16-bit lane; an odd last byte lands as the high half of its
	// word, which is RFC 1071's zero padding.
	var t uint64
	for i, x := range b {
		t |= uint64(x) << (56 - 8*i)
	}
	acc, c = bits.Add64(acc, t, c)
	// Add the last carry back in; this cannot carry again.
	acc, c = bits.Add64(acc, 0, c)
	return acc + c
}

// fold reduces a 64-bit one's complement sum to 16 bits.
func fold(s uint64) uint16 {
	s = s>>32 + s&0xffffffff
	s = s>>32 + s&0xffffffff
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return uint16(s)
}

// PseudoHeaderSum returns the partial sum of the IPv4 pseudo-header that
// the UDP and TCP checksums cover (RFC 768): source, destination, protocol
// and the transport length. Pass it as Checksum's initial value.
func PseudoHeaderSum(src, dst [4]byte, proto uint8, length uint16) uint32 {
	return (uint32(src[0])<<8 | uint32(src[1])) +
		(uint32(src[2])<<8 | uint32(src[3])) +
		(uint32(dst[0])<<8 | uint32(dst[1])) +
		(uint32(dst[2])<<8 | uint32(dst[3])) +
		uint32(proto) + uint32(length)
}

// UDP is a parsed UDP header.
type UDP struct {
	SrcPort  uint16
	DstPort  uint16
	Length   uint16 // header plus payload, in octets
	Checksum uint16 // 0 = not computed (RFC 768)
}

// ParseUDP parses the UDP header at the start of seg, normally the IPv4
// payload. It checks that Length covers the header and fits in seg; the
// datagram is seg[:u.Length]. The checksum is verified separately by
// VerifyUDPChecksum, which needs the addresses.
func ParseUDP(seg []byte) (UDP, error) {
	var u UDP
	if len(seg) < UDPHeaderLen {
		return u, ErrShort
	}
	u.SrcPort = binary.BigEndian.Uint16(seg[0:2])
	u.DstPort = binary.BigEndian.Uint16(seg[2:4])
	u.Length = binary.BigEndian.Uint16(seg[4:6])
	u.Checksum = binary.BigEndian.Uint16(seg[6:8])
	if u.Length < UDPHeaderLen {
		return u, ErrBadHeader
	}
	if int(u.Length) > len(seg) {
		return u, ErrShort
	}
	return u, nil
}

// PutUDP writes u into b as given, checksum included, and returns
// UDPHeaderLen, or 0 if b is too short. Fill the payload, then call
// SetUDPChecksum.
func PutUDP(b []byte, u UDP) int {
	if len(b) < UDPHeaderLen {
		return 0
	}
	binary.BigEndian.PutUint16(b[0:2], u.SrcPort)
	binary.BigEndian.PutUint16(b[2:4], u.DstPort)
	binary.BigEndian.PutUint16(b[4:6], u.Length)
	binary.BigEndian.PutUint16(b[6:8], u.Checksum)
	return UDPHeaderLen
}

// SetUDPChecksum computes and stores the checksum of the datagram dgram
// (header and payload; len(dgram) must be the UDP length) sent from src to
// dst. A computed 0 is sent as 0xFFFF, since 0 means "no checksum"
// (RFC 768).
func SetUDPChecksum(dgram []byte, src, dst [4]byte) {
	dgram[6], dgram[7] = 0, 0
	c := Checksum(dgram, PseudoHeaderSum(src, dst, IPProtoUDP, uint16(len(dgram))))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(dgram[6:8], c)
}

// VerifyUDPChecksum reports whether the checksum of dgram (header and
// payload, exactly the UDP length) is right for src and dst. A datagram
// sent without a checksum (0) passes.
func VerifyUDPChecksum(dgram []byte, src, dst [4]byte) bool {
	if len(dgram) < UDPHeaderLen {
		return false
	}
	if dgram[6] == 0 && dgram[7] == 0 {
		return true
	}
	return Checksum(dgram, PseudoHeaderSum(src, dst, IPProtoUDP, uint16(len(dgram)))) == 0
}

// ICMPEcho is the header of an ICMP echo request or reply.
type ICMPEcho struct {
	Type     uint8  // ICMPEchoRequest or ICMPEchoReply
	Code     uint8  // always 0
	Checksum uint16 // as read; PutICMPEcho computes its own
	ID       uint16 // identifier, echoed back by the reply
	Seq      uint16 // sequence number, echoed back by the reply
}

// ParseICMPEcho parses an ICMP echo request or reply; msg is the whole ICMP
// message (the IPv4 payload up to TotalLen), because the checksum covers
// all of it. The echo data is msg[ICMPEchoLen:]. Other ICMP messages give
// ErrNotEcho, a wrong checksum ErrBadChecksum.
func ParseICMPEcho(msg []byte) (ICMPEcho, error) {
	var e ICMPEcho
	if len(msg) < ICMPEchoLen {
		return e, ErrShort
	}
	e.Type, e.Code = msg[0], msg[1]
	if (e.Type != ICMPEchoRequest && e.Type != ICMPEchoReply) || e.Code != 0 {
		return e, ErrNotEcho
	}
	e.Checksum = binary.BigEndian.Uint16(msg[2:4])
	e.ID = binary.BigEndian.Uint16(msg[4:6])
	e.Seq = binary.BigEndian.Uint16(msg[6:8])
	if Checksum(msg, 0) != 0 {
		return e, ErrBadChecksum
	}
	return e, nil
}

// PutICMPEcho writes the echo header e followed by data into b and
// computes the checksum (e.Checksum is ignored). data may already sit at
// b[ICMPEchoLen:]. It returns the message length, or 0 if b is too short.
func PutICMPEcho(b []byte, e ICMPEcho, data []byte) int {
	n := ICMPEchoLen + len(data)
	if len(b) < n {
		return 0
	}
	copy(b[ICMPEchoLen:], data)
	b[0], b[1] = e.Type, e.Code
	b[2], b[3] = 0, 0
	binary.BigEndian.PutUint16(b[4:6], e.ID)
	binary.BigEndian.PutUint16(b[6:8], e.Seq)
	binary.BigEndian.PutUint16(b[2:4], Checksum(b[:n], 0))
	return n
}

// BuildICMPEchoFrame writes an untagged Ethernet/IPv4/ICMP echo frame from
// src/srcIP to dst/dstIP with the given echo data, zero-padded to
// MinFrameLen. It returns the frame length, or 0 if b is too short or the
// data too long for one IPv4 packet.
func BuildICMPEchoFrame(b []byte, dst, src MAC, srcIP, dstIP [4]byte, e ICMPEcho, data []byte) int {
	ipLen := IPv4HeaderLen + ICMPEchoLen + len(data)
	n := max(EthHeaderLen+ipLen, MinFrameLen)
	if ipLen > 0xffff || len(b) < n {
		return 0
	}
	PutEth(b, dst, src, EtherTypeIPv4)
	ip := b[EthHeaderLen:]
	PutICMPEcho(ip[IPv4HeaderLen:], e, data)
	PutIPv4(ip, IPv4{
		TotalLen: uint16(ipLen),
		ID:       e.Seq,
		Flags:    IPv4DontFragment,
		TTL:      defaultTTL,
		Protocol: IPProtoICMP,
		Src:      srcIP,
		Dst:      dstIP,
	})
	clear(b[EthHeaderLen+ipLen : n])
	return n
}

// defaultTTL is the TTL of packets we originate (Linux's default).
const defaultTTL = 64
