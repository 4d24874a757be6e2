package linuxguest

// The TAP's offloads. eth0 is a TAP opened with IFF_VNET_HDR and
// TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4|TUN_F_TSO6|TUN_F_TSO_ECN), so the
// kernel hands over TCP segments of up to 64 KiB with partial checksums,
// each behind a struct virtio_net_hdr that says what is left to do. The
// workload then does what Linux's vmxnet3 driver does with such an skb:
//
//   - NEEDS_CSUM, no GSO: post it with OM_CSUM, hlen = csum_start,
//     msscof = csum_start + csum_offset (the field's offset from the
//     frame's start, spec §4.2); the kernel already seeded the field with
//     the pseudo-header sum. Offsets beyond the descriptor's limits (hlen
//     over 10 bits, the field over MaxCsumOffset past hlen) are finished
//     here in software, as Linux falls back to skb_checksum_help.
//   - GSO TCPV4/TCPV6 (ECN or not): post it with OM_TSO, hlen = the L2+L3+L4
//     header length (csum_start + the TCP header's length: the header's
//     hdr_len is only a hint, the kernel's linear length), msscof =
//     gso_size, after PrepareTSO (IPv4 header checksum zeroed, the TCP
//     checksum seeded with the length-0 pseudo-header sum). A "GSO" packet
//     that is one segment anyway goes as OM_CSUM: its seed is already right.
//   - anything else the device cannot do (UDP GSO, which is never enabled;
//     a GSO packet of more segments than vmxnet3.MaxTSOSegs, which eth0's
//     gso_max_segs prevents) is dropped and counted, never truncated.
//
// The frame is segmented by the device model, where it leaves for the
// cable at the MTU (see vmxnet3's offload.go). On receive, every frame
// written to the TAP carries a virtio_net_hdr with no flags: the device
// does not verify checksums (its completions say cnc), so the kernel does.

import (
	"encoding/binary"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// vnetHdrLen is the size of struct virtio_net_hdr (without num_buffers),
// the TAP's default vnet header size.
const vnetHdrLen = 10

// virtio_net_hdr fields (include/uapi/linux/virtio_net.h).
const (
	vnetFlagNeedsCsum = 1
	vnetGSONone       = 0
	vnetGSOTCPv4      = 1
	vnetGSOTCPv6      = 4
	vnetGSOECN        = 0x80
)

// vnetHdr is a decoded struct virtio_net_hdr. The TAP writes it in the
// host's byte order for a legacy header, little-endian here (TUNSETVNETLE
// need not be set on a little-endian host).
type vnetHdr struct {
	flags, gsoType                         uint8
	hdrLen, gsoSize, csumStart, csumOffset uint16
}

func decodeVnetHdr(b []byte) vnetHdr {
	return vnetHdr{
		flags:      b[0],
		gsoType:    b[1],
		hdrLen:     binary.LittleEndian.Uint16(b[2:]),
		gsoSize:    binary.LittleEndian.Uint16(b[4:]),
		csumStart:  binary.LittleEndian.Uint16(b[6:]),
		csumOffset: binary.LittleEndian.Uint16(b[8:]),
	}
}

// txOffload turns a frame f read from the TAP behind header h into what
// the driver is asked to post: the offload (and f may be modified: a
// software checksum, PrepareTSO). A frame without GSO must fit eth0's MTU
// with an Ethernet header and an 802.1Q tag; a GSO frame may be longer,
// but each of its segments' L3 packets must fit the MTU, as the device
// checks. On failure it names the drop reason.
func txOffload(h vnetHdr, f []byte, mtu int) (guest.TxOffload, DropReason, bool) {
	var o guest.TxOffload
	maxFrame := mtu + wire.EthHeaderLen + 4
	if len(f) < 14 {
		return o, DropTxRunt, false
	}
	switch h.gsoType &^ vnetGSOECN {
	case vnetGSONone:
		if len(f) > maxFrame {
			return o, DropTxOverMTU, false
		}
		if h.flags&vnetFlagNeedsCsum == 0 {
			return o, 0, true
		}
		return csumOffload(f, int(h.csumStart), int(h.csumStart)+int(h.csumOffset))
	case vnetGSOTCPv4, vnetGSOTCPv6:
		start := int(h.csumStart)
		if h.flags&vnetFlagNeedsCsum == 0 || start+20 > len(f) || h.csumOffset != 16 {
			return o, DropTxBadOffload, false
		}
		hlen, mss := start+int(f[start+12]>>4)*4, int(h.gsoSize)
		l3 := wire.EthHeaderLen
		if f[12] == 0x81 && f[13] == 0x00 {
			l3 += 4
		}
		switch {
		case hlen > len(f) || mss < 1 || hlen < l3:
			return o, DropTxBadOffload, false
		case hlen-l3+mss > mtu:
			// Its segments would not fit the MTU.
			return o, DropTxOverMTU, false
		case len(f)-hlen <= mss:
			// One segment: the kernel's seed, for this length, is right.
			return csumOffload(f, start, start+16)
		case hlen > vmxnet3.MaxHLen || mss > vmxnet3.MaxMSS || len(f) > vmxnet3.MaxTSOLen ||
			(len(f)-hlen+mss-1)/mss > vmxnet3.MaxTSOSegs:
			return o, DropTxBadOffload, false
		}
		if !vmxnet3.PrepareTSO(f, hlen) {
			return o, DropTxBadOffload, false
		}
		return guest.TxOffload{Mode: vmxnet3.OMTSO, HLen: uint16(hlen), MSSCOF: uint16(mss)}, 0, true
	default:
		return o, DropTxBadOffload, false
	}
}

// csumOffload asks for OM_CSUM from start with the field at at, or, past
// what the descriptor can say, finishes the checksum here.
func csumOffload(f []byte, start, at int) (guest.TxOffload, DropReason, bool) {
	if start > len(f) || at+2 > len(f) {
		return guest.TxOffload{}, DropTxBadOffload, false
	}
	if start <= vmxnet3.MaxHLen && at <= start+vmxnet3.MaxCsumOffset {
		return guest.TxOffload{Mode: vmxnet3.OMCsum, HLen: uint16(start), MSSCOF: uint16(at)}, 0, true
	}
	if !vmxnet3.FinishChecksum(f, start, at) {
		return guest.TxOffload{}, DropTxBadOffload, false
	}
	return guest.TxOffload{}, 0, true
}
