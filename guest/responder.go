package guest

// Responder is the guest's minimal IPv4 host stack: it answers ARP requests
// for its address and ICMP echo requests (ping) to it, so that a peer, a
// switch or a real Linux namespace can resolve and ping the VM.
//
// A frame passes these stages, inside one Receive on the vCPU:
//
//  1. The rx buffer is viewed in place; ParseFabric reads the MACs and an
//     optional 802.1Q tag (a VN-Tag is accepted and ignored).
//  2. Frames to another unicast MAC, ARP other than a request for our IPv4,
//     and IPv4 other than an intact, unfragmented echo request to our IPv4
//     are counted as ignored.
//  3. The reply is built in the scratch buffer (untagged, then the request's
//     802.1Q tag pushed in front of the EtherType so it returns on the same
//     VLAN), copied into the reserved tx buffer with one mem.Write and
//     committed; on a full tx ring it is dropped and counted.
//  4. The reply counter is advanced after the commit.

import (
	"fmt"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/wire"
)

// Guest memory layout of a Responder state region, little-endian, offsets
// from ResponderConfig.Base:
//
//	0  u32 magic         responderMagic; absent means "fresh region"
//	4  u32 version       responderVersion
//	8  u64 arp replies   ARP replies sent
//	16 u64 echo replies  ICMP echo replies sent
//	24 u64 tx full       replies dropped because the tx ring was full
//	32 u64 tx too small  replies dropped because the tx buffer was too short
//	40 u64 ignored       frames not answered (not ours, not a request, bad)
//	48 u32 announced     1 once the boot-time ARP announcement went out
//	56 u64 announcements ARP announcements sent
const (
	responderMagic   = 0x5052_4d56 // "VMRP" in memory order
	responderVersion = 1

	rspOffMagic       = 0
	rspOffVersion     = 4
	rspOffARPReplies  = 8
	rspOffEchoReplies = 16
	rspOffTxFull      = 24
	rspOffTxTooSmall  = 32
	rspOffIgnored     = 40
	rspOffAnnounced   = 48
	rspOffAnnounces   = 56

	// ResponderStateSize is the bytes of guest memory a Responder needs.
	ResponderStateSize = 64
)

// ResponderConfig is the immutable configuration of a Responder.
type ResponderConfig struct {
	Base uint64   // guest-physical address of the state region (8-aligned)
	MAC  wire.MAC // own MAC: source of replies, accepted destination
	IP   [4]byte  // own IPv4: what ARP requests and pings must ask for
}

// Responder answers ARP and ICMP echo requests. Receive runs on the vCPU
// goroutine only; the value holds the memory, immutable configuration and a
// scratch buffer that holds nothing between calls.
type Responder struct {
	m   *mem.Memory     // the VM's guest memory; immutable
	cfg ResponderConfig // immutable

	// scratch holds the reply under construction, large enough for an echo
	// of a jumbo (link.MaxFrame) request; the first wire.VLANTagLen bytes
	// are headroom for the tag. vCPU goroutine only.
	scratch [link.MaxFrame + wire.VLANTagLen]byte
}

var _ Workload = (*Responder)(nil)

// NewResponder returns the Responder over its state region in m,
// initialising the region if it is fresh (boot) and resuming from it if it
// holds Responder state (after a migration).
func NewResponder(m *mem.Memory, cfg ResponderConfig) (*Responder, error) {
	switch {
	case m == nil:
		return nil, fmt.Errorf("%w: nil memory", ErrWorkloadConfig)
	case cfg.Base%8 != 0 || !m.InRange(cfg.Base, ResponderStateSize):
		return nil, fmt.Errorf("%w: responder state at %#x not 8-aligned in guest memory", ErrWorkloadConfig, cfg.Base)
	case cfg.MAC.IsMulticast() || cfg.MAC.IsZero():
		return nil, fmt.Errorf("%w: own MAC %v is not a unicast address", ErrWorkloadConfig, cfg.MAC)
	}
	r := &Responder{m: m, cfg: cfg}
	b := cfg.Base
	if m.U32(b+rspOffMagic) != responderMagic {
		_ = m.Zero(b, ResponderStateSize) // in range: checked above
		m.PutU32(b+rspOffVersion, responderVersion)
		m.PutU32(b+rspOffMagic, responderMagic)
		return r, nil
	}
	if v := m.U32(b + rspOffVersion); v != responderVersion {
		return nil, fmt.Errorf("%w: responder state version %d, want %d", ErrWorkloadState, v, responderVersion)
	}
	return r, nil
}

// Step implements Workload. Once after boot it sends an RFC 5227 ARP
// Announcement for its address, as a host stack does when its interface
// comes up, so that switches learn its MAC before it is spoken to;
// otherwise a responder only reacts to frames.
func (r *Responder) Step(dev NetDev, now int64) int64 {
	m, b := r.m, r.cfg.Base
	if m.U32(b+rspOffAnnounced) != 0 {
		return 0
	}
	pa, size, ok := dev.TxReserve()
	if !ok {
		return now // retry after tx completions
	}
	n := wire.BuildARPRequest(r.scratch[:], r.cfg.MAC, r.cfg.IP, r.cfg.IP)
	if n == 0 || n > size {
		workloadAdd(m, b+rspOffTxTooSmall, 1)
		m.PutU32(b+rspOffAnnounced, 1)
		return 0
	}
	_ = m.Write(pa, r.scratch[:n])
	dev.TxCommit(n)
	m.PutU32(b+rspOffAnnounced, 1)
	workloadAdd(m, b+rspOffAnnounces, 1)
	return 0
}

// Receive implements Workload: it answers the frame if it is an ARP request
// or ICMP echo request for this VM, and counts it as ignored otherwise.
func (r *Responder) Receive(dev NetDev, pa uint64, n int, _ int64) {
	m, b := r.m, r.cfg.Base
	var f []byte
	var ok bool
	if n > 0 {
		f, ok = m.View(pa, uint64(n))
	}
	var h wire.FabricHeader
	if !ok || wire.ParseFabric(f, &h) != nil || (h.Dst != r.cfg.MAC && !h.Dst.IsBroadcast()) {
		workloadAdd(m, b+rspOffIgnored, 1)
		return
	}
	// The reply is built after the headroom, untagged; tagging moves its
	// start back by VLANTagLen.
	out := r.scratch[wire.VLANTagLen:]
	var reply, counter int
	switch h.EtherType {
	case wire.EtherTypeARP:
		a, err := wire.ParseARP(f[h.L3Off:])
		if err != nil || a.Op != wire.ARPRequest || a.TPA != r.cfg.IP {
			break
		}
		reply = wire.BuildARPReply(out, r.cfg.MAC, r.cfg.IP, a.SHA, a.SPA)
		counter = rspOffARPReplies
	case wire.EtherTypeIPv4:
		pkt := f[h.L3Off:]
		ip, hl, err := wire.ParseIPv4Checked(pkt)
		if err != nil || ip.Protocol != wire.IPProtoICMP || ip.IsFragment() || ip.Dst != r.cfg.IP {
			break
		}
		msg := pkt[hl:ip.TotalLen]
		e, err := wire.ParseICMPEcho(msg)
		if err != nil || e.Type != wire.ICMPEchoRequest {
			break
		}
		// Swap the addresses; identifier, sequence and data are echoed.
		e.Type = wire.ICMPEchoReply
		reply = wire.BuildICMPEchoFrame(out, h.Src, r.cfg.MAC, r.cfg.IP, ip.Src, e, msg[wire.ICMPEchoLen:])
		counter = rspOffEchoReplies
	}
	if reply == 0 {
		workloadAdd(m, b+rspOffIgnored, 1)
		return
	}
	frame := out[:reply]
	if h.HasVLAN {
		// Open a tag gap after the MACs by moving them back into the
		// headroom: 12 bytes moved instead of the whole frame.
		frame = r.scratch[:reply+wire.VLANTagLen]
		copy(frame[0:12], frame[wire.VLANTagLen:wire.VLANTagLen+12])
		wire.PutVLANTag(frame[12:16], h.TCI)
	}
	txPA, size, ok := dev.TxReserve()
	if !ok {
		workloadAdd(m, b+rspOffTxFull, 1)
		return
	}
	if len(frame) > size || m.Write(txPA, frame) != nil {
		workloadAdd(m, b+rspOffTxTooSmall, 1)
		return
	}
	dev.TxCommit(len(frame))
	workloadAdd(m, b+uint64(counter), 1)
}

// ResponderStats is a snapshot of a Responder's counters.
type ResponderStats struct {
	ARPReplies  uint64
	EchoReplies uint64
	TxFull      uint64 // replies dropped: tx ring full
	TxTooSmall  uint64 // replies dropped: tx buffer shorter than the reply
	Ignored     uint64 // frames not answered
	Announces   uint64 // ARP announcements sent at boot
}

// Stats reads the counters from m, the program's guest memory or a copy of
// it. Each counter is an aligned word read whole, so it is safe while the
// vCPU runs, though not a snapshot of one instant.
func (r *Responder) Stats(m *mem.Memory) ResponderStats {
	b := r.cfg.Base
	return ResponderStats{
		ARPReplies:  m.U64(b + rspOffARPReplies),
		EchoReplies: m.U64(b + rspOffEchoReplies),
		TxFull:      m.U64(b + rspOffTxFull),
		TxTooSmall:  m.U64(b + rspOffTxTooSmall),
		Ignored:     m.U64(b + rspOffIgnored),
		Announces:   m.U64(b + rspOffAnnounces),
	}
}
