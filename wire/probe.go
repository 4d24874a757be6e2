package wire

import (
	"encoding/binary"
	"errors"
)

// The test-traffic probe: what the VM traffic generator sends to measure
// delivery, loss, reordering and latency through the fabric. It rides in
// IPv4/UDP to ProbePort, in a fixed 32-octet payload, all big-endian:
//
//	 0       4       8       12      16              24              32
//	+-------+-------+-------+-------+---------------+---------------+
//	| magic | srcVM | dstVM | flags |   sequence    |  sent (ns)    |
//	+-------+-------+-------+-------+---------------+---------------+
//
// Frames longer than the minimum carry zeros after the probe, inside the
// UDP payload, so that the UDP and IPv4 lengths cover the whole frame and
// no decoder sees trailing garbage.

// Probe constants.
const (
	ProbePort  = 7001       // UDP source and destination port of probes
	ProbeMagic = 0x564D4658 // "VMFX"
	ProbeLen   = 32         // probe payload, octets

	// ProbeFrameMinLen is the shortest probe frame: untagged Ethernet,
	// IPv4 without options, UDP and the probe. It is above MinFrameLen, so
	// probe frames never need Ethernet padding.
	ProbeFrameMinLen = EthHeaderLen + IPv4HeaderLen + UDPHeaderLen + ProbeLen
)

// ErrBadMagic is returned by ParseProbe for a payload that is not a probe.
var ErrBadMagic = errors.New("wire: bad probe magic")

// Probe is the payload of one test frame.
type Probe struct {
	SrcVM  uint32 // id of the sending VM
	DstVM  uint32 // id of the VM it is meant for
	Flags  uint32 // owned by the traffic generator; carried unchanged
	Seq    uint64 // per (SrcVM, DstVM) stream sequence number
	SentNs uint64 // send time in ns on the sender's clock
}

// PutProbe writes p (with the magic) into b and returns ProbeLen, or 0 if b
// is too short.
func PutProbe(b []byte, p Probe) int {
	if len(b) < ProbeLen {
		return 0
	}
	binary.BigEndian.PutUint32(b[0:4], ProbeMagic)
	binary.BigEndian.PutUint32(b[4:8], p.SrcVM)
	binary.BigEndian.PutUint32(b[8:12], p.DstVM)
	binary.BigEndian.PutUint32(b[12:16], p.Flags)
	binary.BigEndian.PutUint64(b[16:24], p.Seq)
	binary.BigEndian.PutUint64(b[24:32], p.SentNs)
	return ProbeLen
}

// ParseProbe parses the probe at the start of a UDP payload; bytes after
// the first ProbeLen are padding and ignored.
func ParseProbe(b []byte) (Probe, error) {
	var p Probe
	if len(b) < ProbeLen {
		return p, ErrShort
	}
	if binary.BigEndian.Uint32(b[0:4]) != ProbeMagic {
		return p, ErrBadMagic
	}
	p.SrcVM = binary.BigEndian.Uint32(b[4:8])
	p.DstVM = binary.BigEndian.Uint32(b[8:12])
	p.Flags = binary.BigEndian.Uint32(b[12:16])
	p.Seq = binary.BigEndian.Uint64(b[16:24])
	p.SentNs = binary.BigEndian.Uint64(b[24:32])
	return p, nil
}

// BuildProbeFrame writes an untagged Ethernet/IPv4/UDP frame carrying p
// into b, frameLen bytes long counted from the destination MAC, FCS
// excluded; shorter requests are raised to ProbeFrameMinLen. The UDP
// payload is the probe followed by zeros. Both checksums are set. It
// returns the frame length, or 0 if b is too short or frameLen too long
// for one IPv4 packet. Tags are pushed afterwards by the sender (vNIC or
// adapter), in the headroom in front of b.
func BuildProbeFrame(b []byte, dst, src MAC, srcIP, dstIP [4]byte, p Probe, frameLen int) int {
	n := max(frameLen, ProbeFrameMinLen)
	if n > len(b) || n-EthHeaderLen > 0xffff {
		return 0
	}
	PutEth(b, dst, src, EtherTypeIPv4)
	ip := b[EthHeaderLen:n]
	dgram := ip[IPv4HeaderLen:]
	PutUDP(dgram, UDP{SrcPort: ProbePort, DstPort: ProbePort, Length: uint16(len(dgram))})
	PutProbe(dgram[UDPHeaderLen:], p)
	pad := dgram[UDPHeaderLen+ProbeLen:]
	clear(pad)
	// Zeros add nothing to a one's complement sum, so the checksum covers
	// only the header and the probe; the pseudo-header still counts the
	// full length. This keeps large frames as cheap as small ones.
	c := Checksum(dgram[:UDPHeaderLen+ProbeLen], PseudoHeaderSum(srcIP, dstIP, IPProtoUDP, uint16(len(dgram))))
	if c == 0 {
		c = 0xffff // RFC 768: 0 would mean "no checksum"
	}
	binary.BigEndian.PutUint16(dgram[6:8], c)
	PutIPv4(ip, IPv4{
		TotalLen: uint16(len(ip)),
		// With DF set the ID only needs to differ between nearby packets
		// (RFC 6864); the low sequence bits also help match captures.
		ID:       uint16(p.Seq),
		Flags:    IPv4DontFragment,
		TTL:      defaultTTL,
		Protocol: IPProtoUDP,
		Src:      srcIP,
		Dst:      dstIP,
	})
	return n
}

// ParseProbeFrame extracts the probe from a frame as seen on any port: it
// may carry a VN-Tag and/or an 802.1Q tag (ParseFabric). It reports false
// for anything but an unfragmented IPv4/UDP datagram to ProbePort with
// intact IPv4 and UDP checksums and the probe magic, so a frame corrupted
// on its way through the fabric is never counted as delivered.
func ParseProbeFrame(f []byte) (Probe, bool) {
	var h FabricHeader
	if ParseFabric(f, &h) != nil || h.EtherType != EtherTypeIPv4 {
		return Probe{}, false
	}
	pkt := f[h.L3Off:]
	ip, hl, err := ParseIPv4Checked(pkt)
	if err != nil || ip.Protocol != IPProtoUDP || ip.IsFragment() {
		return Probe{}, false
	}
	dgram := pkt[hl:ip.TotalLen]
	u, err := ParseUDP(dgram)
	if err != nil || u.DstPort != ProbePort {
		return Probe{}, false
	}
	dgram = dgram[:u.Length]
	if !VerifyUDPChecksum(dgram, ip.Src, ip.Dst) {
		return Probe{}, false
	}
	p, err := ParseProbe(dgram[UDPHeaderLen:])
	if err != nil {
		return Probe{}, false
	}
	return p, true
}
