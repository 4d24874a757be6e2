package linuxguest

// Receive coalescing: batching the TAP's writes. A TAP takes one frame per
// write, and each write runs the kernel's receive path for that frame
// (netif_rx, IP, TCP) inside the syscall; at MTU-sized frames that is most
// of a Linux guest's receive cost. Kernel GRO cannot help: a TAP written by
// write(2) hands each frame to NAPI on its own. So, as the kernel's GRO
// would, the guest merges the in-order TCP segments of one flow that
// arrive in one vCPU step into one frame of up to 64 KiB, and writes it
// once, behind a virtio_net_hdr that says GSO TCPV4 with gso_size = the
// segments' MSS and NEEDS_CSUM (the kernel takes the payload as checked,
// which it has been: every merged segment's checksums are verified here,
// and a segment whose checksums fail is never merged but written as it
// came, for the kernel to drop and count).
//
// What merges (the kernel's GRO rules, conservatively): untagged IPv4
// without options or fragmentation, the total length exactly the frame's
// (no padding), TCP with ACK and at most PSH set and a payload; the next
// segment of the run has the same IP header but for length, ID and
// checksum, the same TCP header and options but for the sequence number,
// checksum and PSH, a sequence number that continues the run, and a
// payload no longer than the first's; every segment but the last is of
// the first's length. PSH ends a run. Anything else is written as it
// came, after the run, so the order of frames is kept. A lone segment
// goes as it came, flagged DATA_VALID (its checksum was verified).
//
// A run never outlives the vCPU step that received its segments: Step
// writes it first thing, and the vCPU steps after every poll, so nothing
// is held at a step boundary, where a migration or a mode switch pauses
// the guest.

import (
	"encoding/binary"

	"github.com/vmfex/vmfex/wire"
)

// groMax bounds a merged frame: an IPv4 total length of 64 KiB - 1.
const groMax = wire.EthHeaderLen + 65535

// virtio_net_hdr flag of a frame whose checksum was verified.
const vnetFlagDataValid = 2

// groRun is the run being merged, in b behind room for the vnet header.
// vCPU only.
type groRun struct {
	b     []byte // vnetHdrLen + groMax bytes
	n     int    // frame bytes in b[vnetHdrLen:]; 0: no run
	segs  int
	bytes int    // the segments' bytes as received, for the counters
	hlen  int    // L2+L3+L4 header length
	mss   int    // the first segment's payload length
	next  uint32 // the sequence number the next segment must carry
	last  int    // the last segment's payload length
	psh   bool   // the last segment had PSH: the run is closed
}

// tcp4Segment reports whether f is a segment that may merge, and returns
// its header length. It verifies the IPv4 header and TCP checksums.
func tcp4Segment(f []byte) (hlen int, ok bool) {
	const l3, l4 = wire.EthHeaderLen, wire.EthHeaderLen + 20
	if len(f) < l4+20 || f[12] != 0x08 || f[13] != 0x00 {
		return 0, false
	}
	ip := f[l3:]
	if ip[0] != 0x45 || ip[9] != 6 || binary.BigEndian.Uint16(ip[6:])&0x3FFF != 0 ||
		int(binary.BigEndian.Uint16(ip[2:])) != len(f)-l3 {
		return 0, false
	}
	doff := int(f[l4+12]>>4) * 4
	flags := f[l4+13]
	if doff < 20 || l4+doff >= len(f) || flags&^0x08 != 0x10 { // ACK, maybe PSH
		return 0, false
	}
	if uint16(wire.Sum(ip[:20], 0)) != 0xFFFF {
		return 0, false
	}
	pseudo := wire.Sum(ip[12:20], 6+uint32(len(f)-l4))
	if uint16(wire.Sum(f[l4:], pseudo)) != 0xFFFF {
		return 0, false
	}
	return l4 + doff, true
}

// add merges segment f (tcp4Segment said hlen) into the run, or reports
// false when it does not continue the run.
func (g *groRun) add(f []byte, hlen int) bool {
	const l4 = wire.EthHeaderLen + 20
	pay := len(f) - hlen
	seq := binary.BigEndian.Uint32(f[l4+4:])
	psh := f[l4+13]&0x08 != 0
	if g.n == 0 {
		copy(g.b[vnetHdrLen:], f)
		*g = groRun{b: g.b, n: len(f), segs: 1, bytes: len(f), hlen: hlen, mss: pay, next: seq + uint32(pay), last: pay, psh: psh}
		return true
	}
	r := g.b[vnetHdrLen : vnetHdrLen+g.n]
	switch {
	case g.psh || g.last != g.mss || pay > g.mss || hlen != g.hlen || seq != g.next ||
		g.n+pay > groMax || g.segs == 64:
		return false
	// The same flow and headers: MACs, EtherType, IP version to protocol
	// but for the total length and ID, addresses; TCP ports, ack, data
	// offset, flags but PSH, window, urgent pointer, options.
	case string(r[:16]) != string(f[:16]) || string(r[20:24]) != string(f[20:24]) ||
		string(r[26:l4+4]) != string(f[26:l4+4]) || string(r[l4+8:l4+13]) != string(f[l4+8:l4+13]) ||
		r[l4+13]&^0x08 != f[l4+13]&^0x08 || string(r[l4+14:l4+16]) != string(f[l4+14:l4+16]) ||
		string(r[l4+18:hlen]) != string(f[l4+18:hlen]):
		return false
	}
	copy(g.b[vnetHdrLen+g.n:], f[hlen:])
	g.n += pay
	g.segs++
	g.bytes += len(f)
	g.next += uint32(pay)
	g.last = pay
	if psh {
		g.psh = true
		g.b[vnetHdrLen+l4+13] |= 0x08
	}
	return true
}

// frame finishes the run for writing: the vnet header and, for a merged
// run, the IPv4 total length and checksum and the TCP checksum field
// holding the pseudo-header sum, as for a partial checksum. It returns the
// bytes to write, the segments and their bytes as received, and empties
// the run.
func (g *groRun) frame() (b []byte, segs, bytes int) {
	const l3, l4 = wire.EthHeaderLen, wire.EthHeaderLen + 20
	h, f := g.b[:vnetHdrLen], g.b[vnetHdrLen:vnetHdrLen+g.n]
	clear(h)
	if g.segs == 1 {
		h[0] = vnetFlagDataValid
	} else {
		ip := f[l3:]
		binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-l3))
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], ^uint16(wire.Sum(ip[:20], 0)))
		binary.BigEndian.PutUint16(f[l4+16:], uint16(wire.Sum(ip[12:20], 6+uint32(len(f)-l4))))
		h[0], h[1] = vnetFlagNeedsCsum, vnetGSOTCPv4
		binary.LittleEndian.PutUint16(h[2:], uint16(g.hlen))
		binary.LittleEndian.PutUint16(h[4:], uint16(g.mss))
		binary.LittleEndian.PutUint16(h[6:], l4)
		binary.LittleEndian.PutUint16(h[8:], 16)
	}
	b, segs, bytes = g.b[:vnetHdrLen+g.n], g.segs, g.bytes
	g.n, g.segs, g.bytes = 0, 0, 0
	return b, segs, bytes
}
