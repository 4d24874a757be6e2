package vmxnet3

// Transmit offloads (spec §4.2), as the device performs them on a packet it
// has gathered:
//
//   - OM_CSUM: hlen is where checksumming starts, msscof the offset of the
//     16-bit checksum field from the start of the frame (hlen + the field's
//     offset inside the L4 header, as Linux's driver writes it). The driver
//     seeded the field with the pseudo-header sum; the device sums from
//     hlen to the end of the frame and stores the complement.
//   - OM_TSO: hlen is the L2+L3+L4 header length, msscof the MSS. The
//     driver seeded the TCP checksum field with the pseudo-header sum
//     computed with a length of 0 (PrepareTSO, as Linux's driver does);
//     the device cuts the payload into MSS-sized pieces and gives each the
//     headers, with the IPv4 total length, identification (+1 per segment)
//     and header checksum, or the IPv6 payload length, the TCP sequence
//     number, the flags (FIN and PSH only on the last segment, CWR only on
//     the first) and the TCP checksum (seed + this segment's TCP length +
//     header + payload) fixed up.
//
// Where TSO happens: in this fabric every frame leaves a vNIC through a
// cable (the uplink to the FI, or the VEM and then the uplink), and a cable
// carries at most link.MaxFrame bytes — the vNIC's MTU plus its tags. So
// the device model, whichever of the adapter or the hypervisor's emulated
// device fetches the descriptors (the same code), is the one place where a
// large segment must become MTU-sized frames, exactly as a NIC segments
// before the wire. Each segment's L3 packet is checked against the MTU the
// driver configured, so the segments always fit the caller's buffers with
// room for the 802.1Q and VN-Tag pushed in front of them. The counters
// that the FI, the adapter and UPT1's ucast/mcast/bcast keep are per frame
// on the wire; UPT1's TSO counters count the guest's TSO packets.
//
// Nothing here trusts the packet: every offset is checked against the
// frame before use, and a packet whose fields contradict its headers is
// refused (the device completes it and counts it, spec §4.3: completions
// are never skipped).

import (
	"encoding/binary"

	"github.com/vmfex/vmfex/wire"
)

// TSO limits of this device model.
const (
	// MaxTSOSegs is the most frames one TSO packet may become: the
	// device's gso_max_segs. A caller that carries TSO packets offers
	// ProcessTx at least this many buffers.
	MaxTSOSegs = 64
	// MaxTSOLen is the largest TSO packet the device gathers: 64 KiB of
	// IP packet plus room for L2 headers and tags. Linux's gso_max_size
	// is 65536 for a TAP.
	MaxTSOLen = 1<<16 + 1<<10
	// MaxHLen is the largest hlen the 10-bit descriptor field holds.
	MaxHLen = TxHLenMask
	// MaxMSS is the largest MSS the 14-bit msscof field holds.
	MaxMSS = 1<<14 - 1
)

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86DD
	etherTypeVLAN = 0x8100
	protoTCP      = 6

	tcpFIN = 0x01
	tcpPSH = 0x08
	tcpCWR = 0x80
)

// tsoHeaders is where a TSO packet's headers are.
type tsoHeaders struct {
	l3, l4, hlen int
	v6           bool
}

// parseTSO locates the IP and TCP headers of frame f, whose driver said
// they end at hlen. It reports false unless f is Ethernet (optionally
// 802.1Q-tagged), IPv4 without fragmentation or IPv6 with at most a few
// hop-by-hop/routing/destination-options extension headers, then TCP whose
// header ends exactly at hlen.
func parseTSO(f []byte, hlen int) (h tsoHeaders, ok bool) {
	if hlen > len(f) || hlen < 14 {
		return h, false
	}
	l3 := 14
	et := binary.BigEndian.Uint16(f[12:])
	if et == etherTypeVLAN {
		if hlen < 18 {
			return h, false
		}
		et, l3 = binary.BigEndian.Uint16(f[16:]), 18
	}
	switch et {
	case etherTypeIPv4:
		if l3+20 > hlen {
			return h, false
		}
		ip := f[l3:hlen]
		ihl := int(ip[0]&0x0F) * 4
		// A fragment (MF or an offset) is not a TCP segment to split.
		if ip[0]>>4 != 4 || ihl < 20 || ip[9] != protoTCP || binary.BigEndian.Uint16(ip[6:])&0x3FFF != 0 {
			return h, false
		}
		h.l4 = l3 + ihl
	case etherTypeIPv6:
		if l3+40 > hlen || f[l3]>>4 != 6 {
			return h, false
		}
		next, off := f[l3+6], l3+40
		for i := 0; next != protoTCP; i++ {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
			default:
				return h, false
			}
			if i == 8 || off+8 > hlen {
				return h, false
			}
			next, off = f[off], off+(int(f[off+1])+1)*8
		}
		h.l4, h.v6 = off, true
	default:
		return h, false
	}
	if h.l4+20 > hlen {
		return h, false
	}
	if doff := int(f[h.l4+12]>>4) * 4; doff < 20 || h.l4+doff != hlen {
		return h, false
	}
	h.l3, h.hlen = l3, hlen
	return h, true
}

// tsoSegs returns how many frames a packet of n bytes with headers of hlen
// becomes at mss: at least one, also with no payload.
func tsoSegs(n, hlen, mss int) int {
	return max(1, (n-hlen+mss-1)/mss)
}

// segmentTCP writes the segments of pkt into out (one frame each, len(out)
// of them, each buffer long enough) and their lengths into lens.
func segmentTCP(pkt []byte, h tsoHeaders, mss int, out [][]byte, lens []int) {
	hl := h.hlen
	payload := pkt[hl:]
	seq0 := binary.BigEndian.Uint32(pkt[h.l4+4:])
	flags0 := pkt[h.l4+13]
	var id0 uint16
	if !h.v6 {
		id0 = binary.BigEndian.Uint16(pkt[h.l3+4:])
	}
	n := len(out)
	for i := range n {
		lo := min(i*mss, len(payload))
		hi := min(lo+mss, len(payload))
		f := out[i][:hl+hi-lo]
		copy(f, pkt[:hl])
		copy(f[hl:], payload[lo:hi])
		lens[i] = len(f)
		if h.v6 {
			binary.BigEndian.PutUint16(f[h.l3+4:], uint16(len(f)-h.l3-40))
		} else {
			ip := f[h.l3:h.l4]
			binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-h.l3))
			binary.BigEndian.PutUint16(ip[4:], id0+uint16(i))
			ip[10], ip[11] = 0, 0
			binary.BigEndian.PutUint16(ip[10:], ^uint16(wire.Sum(ip, 0)))
		}
		tcp := f[h.l4:]
		binary.BigEndian.PutUint32(tcp[4:], seq0+uint32(lo))
		fl := flags0
		if i > 0 {
			fl &^= tcpCWR
		}
		if i < n-1 {
			fl &^= tcpFIN | tcpPSH
		}
		tcp[13] = fl
		// The field holds the driver's seed: the pseudo-header sum with
		// a length of 0. Summing it with the segment and the segment's
		// TCP length gives the full pseudo-header checksum.
		binary.BigEndian.PutUint16(tcp[16:], ^uint16(wire.Sum(tcp, uint32(len(tcp)))))
	}
}

// SegmentTCP performs OM_TSO on pkt as the device does (spec §4.2), for
// tests and for software that must do what a NIC would: it writes each
// segment into out[i] and its length into lens[i] and returns how many
// frames it wrote. ok is false, and nothing is written, when the headers
// do not parse as TCP over IPv4/IPv6 ending at hlen, mss is out of range,
// pkt needs more than len(out) frames, or a frame does not fit its buffer.
// pkt's TCP checksum field must hold the seed PrepareTSO writes.
func SegmentTCP(pkt []byte, hlen, mss int, out [][]byte, lens []int) (n int, ok bool) {
	h, ok := parseTSO(pkt, hlen)
	if !ok || mss < 1 || mss > MaxMSS {
		return 0, false
	}
	n = tsoSegs(len(pkt), hlen, mss)
	if n > len(out) || n > len(lens) {
		return 0, false
	}
	for i := range n {
		if len(out[i]) < hlen+min(mss, len(pkt)-hlen) {
			return 0, false
		}
	}
	segmentTCP(pkt, h, mss, out[:n], lens)
	return n, true
}

// PrepareTSO does to frame f what a driver does before posting it with
// OM_TSO and hlen (spec §4.2, as Linux's vmxnet3 driver does): it zeroes
// the IPv4 header checksum and seeds the TCP checksum field with the
// pseudo-header sum computed with a length of 0. It reports false, changing
// nothing, when f's headers do not parse as TCP ending at hlen.
func PrepareTSO(f []byte, hlen int) bool {
	h, ok := parseTSO(f, hlen)
	if !ok {
		return false
	}
	var sum uint32
	if h.v6 {
		sum = wire.Sum(f[h.l3+8:h.l3+40], protoTCP) // source and destination
	} else {
		f[h.l3+10], f[h.l3+11] = 0, 0
		sum = wire.Sum(f[h.l3+12:h.l3+20], protoTCP)
	}
	binary.BigEndian.PutUint16(f[h.l4+16:], uint16(sum))
	return true
}

// ChecksumOffload performs OM_CSUM on frame f as the device does (spec
// §4.2), start being hlen and at msscof. It reports false, changing
// nothing, when the offsets break the spec's limits (at must not precede
// start nor lie more than MaxCsumOffset past it) or do not fit f.
func ChecksumOffload(f []byte, start, at int) bool {
	return at <= MaxCsumOffset+start && FinishChecksum(f, start, at)
}

// FinishChecksum completes a partial checksum in f, as a NIC does: the
// complement of the ones'-complement sum from start to the end of f, the
// seed already in the field included, is stored at at. It reports false,
// changing nothing, when at precedes start or the offsets do not fit f.
// Drivers use it where the descriptor cannot carry the offsets.
func FinishChecksum(f []byte, start, at int) bool {
	if start < 0 || at < start || start > len(f) || at+2 > len(f) {
		return false
	}
	c := ^uint16(wire.Sum(f[start:], 0))
	if c == 0 {
		// RFC 768: a UDP checksum that computes to zero is sent as 0xFFFF
		// (0 means "no checksum"); for TCP both encode zero.
		c = 0xFFFF
	}
	f[at], f[at+1] = byte(c>>8), byte(c)
	return true
}
