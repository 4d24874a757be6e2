package fabric

// The data path. Each port has one reader goroutine (FI.portReader) that
// owns a worker; every frame it receives passes these stages on that
// goroutine:
//
//  1. Receive. A batch of up to BatchSize frames comes from the port's Recv.
//     The worker marks the port busy (port.batchSeq odd), loads the
//     configuration snapshot and reads the clock once per batch, so a
//     configuration change applies to whole batches.
//  2. Parse. Server port: a VN-Tag (EtherType 0x8926, protocols.md §1.1)
//     must follow the source MAC and be upstream (d=0, p=0, version 0),
//     then at most one 802.1Q tag. Uplink: no VN-Tag, one 802.1Q tag.
//     Frames too short, stacked or oversized are dropped here.
//  3. Attribute (server ports). (port, svif) names the source vEth in the
//     snapshot; from here on the frame counts in the vEth's ingress
//     counters and any drop is the vEth's.
//  4. Classify. The VLAN is the 802.1Q VID; an untagged or priority-tagged
//     frame takes the profile's access or native VLAN (§7.2). The VLAN must
//     be one the profile (or the uplink trunk) carries.
//  5. Police. The source MAC must be unicast and, unless the profile allows
//     MAC forging, the vEth's own; reserved 802.1D destinations stop here.
//  6. Normalise. The frame gets exactly one 802.1Q tag with the VLAN and
//     the frame's PCP, right after the VN-Tag: rewritten in place, or
//     pushed into the buffer headroom (InsertAt) when it came untagged.
//  7. Learn. (VLAN, source MAC) -> source vEth or uplink.
//  8. Forward. A known unicast destination is one egress; a group or
//     unknown destination floods to every vEth carrying the VLAN and to the
//     uplinks, except the source. Flood copies come from the buffer pool;
//     the last destination takes the original.
//  9. Egress. Towards a vEth that is held (HoldVEth, live migration) the
//     frame stops here, before any rewrite: it joins the vEth's hold queue
//     with its ingress port, svif, VLAN and tag offset, and ReleaseVEth
//     runs the rest of this stage for it against the vEth's binding at
//     that time. Otherwise the destination's profile is checked again for
//     the VLAN (isolation invariant, DESIGN.md §4.3). Towards a vEth the
//     VN-Tag word is rewritten in place (d=1, dvif; svif and looped=1 when
//     the frame returns down the server port it came from), or pushed in
//     front when the frame came from an uplink; towards an uplink the
//     VN-Tag is removed (RemoveAt). The frame joins its egress port's
//     queue.
// 10. Send. After the whole batch each egress queue goes out in one Send,
//     under the port's txMu since several readers may send to one port.
//     In-memory cables are lossless: Send waits for room (backpressure).
//     Then the port is marked idle (port.batchSeq even), which ends any
//     grace period HoldVEth waits on.
//
// Ordering: frames from one port to another keep their order: one goroutine
// handles an ingress port, appends to each egress queue in order and sends
// each queue in one call. Frames from different ports to one egress port
// interleave batch by batch. Frames held for a vEth leave in the order they
// were held, before any frame that reaches the vEth after the release.
//
// Ownership: the worker owns a frame from Recv until it hands it to Send
// (stage 10), to a hold queue (stage 9) or releases it with a drop reason. Nothing on the unicast path
// allocates; a flood allocates only pooled buffers.

import (
	"encoding/binary"

	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/wire"
)

// Offsets of the 802.1Q tag in a normalised frame (stage 6): after the
// VN-Tag on server ports, after the source MAC on uplinks.
const (
	serverInner = 2*6 + wire.VNTagLen // 18
	uplinkInner = 2 * 6               // 12
)

// maxIngress is the largest frame accepted on any port: room is left for
// the tags stage 6 and stage 9 may push, so every copy fits link.MaxFrame.
const maxIngress = link.MaxFrame - wire.VNTagLen - wire.VLANTagLen

// worker is the per-reader state of the data path. Not shared.
type worker struct {
	fi   *FI
	in   *port     // the ingress port
	snap *snapshot // loaded at the start of each batch
	now  int64     // clock at the start of each batch, UnixNano
	h    wire.FabricHeader

	out     []egressQueue // by port index
	pending []int         // indices of out that hold frames
}

type egressQueue struct {
	port  *port // set when the first frame joins
	bufs  []*link.Buf
	bytes uint64
}

func newWorker(f *FI, in *port) *worker {
	return &worker{fi: f, in: in}
}

// process runs one received batch through the data path and sends the
// results. It takes ownership of every buffer and clears bufs.
func (w *worker) process(bufs []*link.Buf) {
	w.in.batchSeq.Add(1) // odd: busy; before the snapshot load (graceWait)
	w.begin()
	var bytes uint64
	for i, b := range bufs {
		bufs[i] = nil
		bytes += uint64(b.Len)
		w.ingress(b)
	}
	w.flush()
	// Counted last, so that once InFrames covers a frame its egress has
	// been sent (tests wait on this).
	w.in.ctr.inBytes.Add(bytes)
	w.in.ctr.inFrames.Add(uint64(len(bufs)))
	w.in.batchSeq.Add(1) // even: idle
	if w.fi.graceWaiters.Load() != 0 {
		w.fi.endGrace()
	}
}

// begin is stage 1 for a batch.
func (w *worker) begin() {
	w.snap = w.fi.snap.Load()
	w.now = w.fi.now().UnixNano()
	w.grow(len(w.snap.ports))
}

// grow makes room for n egress queues.
func (w *worker) grow(n int) {
	if len(w.out) < n {
		w.out = append(w.out, make([]egressQueue, n-len(w.out))...)
	}
}

// ingress runs stages 2-9 for one frame from the worker's port.
func (w *worker) ingress(b *link.Buf) {
	if w.in.kind == PortServer {
		w.serverIngress(b)
	} else {
		w.uplinkIngress(b)
	}
}

// drop releases b and counts it under r: on the vEth v if not nil (else as
// unattributed), FI-wide and on the ingress port.
func (w *worker) drop(b *link.Buf, v *veth, r DropReason) {
	b.Release()
	if v != nil {
		v.ctr.drops[r].Add(1)
	} else {
		w.fi.unattributed[r].Add(1)
	}
	w.fi.drops[r].Add(1)
	w.in.ctr.inDrops.Add(1)
}

// serverIngress handles a frame from an adapter.
func (w *worker) serverIngress(b *link.Buf) {
	f := b.Bytes()

	// Stage 2: the VN-Tag sits at offset 12 (protocols.md §1.1).
	if len(f) < wire.EthHeaderLen || len(f) > maxIngress {
		w.drop(b, nil, DropMalformed)
		return
	}
	if binary.BigEndian.Uint16(f[12:]) != wire.EtherTypeVNTag || len(f) < wire.EthHeaderLen+wire.VNTagLen {
		w.drop(b, nil, DropBadVNTag)
		return
	}
	tag := wire.ParseVNTagWord(binary.BigEndian.Uint32(f[14:]))
	badTag := tag.FromBridge || tag.Pointer || tag.Version != 0

	// Stage 3.
	src := w.snap.vifAt(w.in.idx, tag.SVIF)
	if src == nil {
		if badTag {
			w.drop(b, nil, DropBadVNTag)
		} else {
			w.drop(b, nil, DropUnknownVIF)
		}
		return
	}
	v := src.v
	v.ctr.ingressFrames.Add(1)
	v.ctr.ingressBytes.Add(uint64(len(f) - wire.VNTagLen))
	if badTag {
		w.drop(b, v, DropBadVNTag)
		return
	}
	h := &w.h
	if wire.ParseFabric(f, h) != nil {
		w.drop(b, v, DropMalformed)
		return
	}

	// Stage 4.
	prof := src.prof
	vid := h.VID()
	if vid == 0 {
		vid = prof.untagged // untagged or priority-tagged (protocols.md §7.2)
	}
	if vid == 0 || !prof.allowed.has(vid) {
		w.drop(b, v, DropVLANNotAllowed)
		return
	}

	// Stage 5.
	if h.Src.IsMulticast() || h.Src.IsZero() {
		w.drop(b, v, DropMalformed)
		return
	}
	if h.Src != src.mac && !prof.pp.AllowForgedMAC {
		w.drop(b, v, DropMACForged)
		return
	}
	if reservedDst(&h.Dst) {
		w.drop(b, v, DropReservedDst)
		return
	}

	// Stage 6: keep PCP and DEI, set the VID.
	if h.HasVLAN {
		binary.BigEndian.PutUint16(f[h.VLANOff+2:], h.TCI&^wire.VIDMask|vid)
	} else {
		b = headroom(b, wire.VLANTagLen)
		wire.PutVLANTag(b.InsertAt(serverInner, wire.VLANTagLen), vid)
	}

	// Stage 7.
	w.fi.macs.learn(makeMACKey(vid, h.Src), v.dst(), w.now)

	// Stages 8-9.
	w.forward(b, src, vid, serverInner)
}

// uplinkIngress handles a frame from the external LAN.
func (w *worker) uplinkIngress(b *link.Buf) {
	f := b.Bytes()
	h := &w.h

	// Stage 2.
	if len(f) < wire.EthHeaderLen || len(f) > maxIngress || wire.ParseFabric(f, h) != nil {
		w.drop(b, nil, DropMalformed)
		return
	}
	if h.HasVNTag {
		w.drop(b, nil, DropBadVNTag)
		return
	}

	// Stage 4: the uplink trunk has no native VLAN.
	vid := h.VID()
	if vid == 0 || !w.snap.uplinkVLANs.has(vid) {
		w.drop(b, nil, DropVLANNotAllowed)
		return
	}

	// Stage 5.
	if h.Src.IsMulticast() || h.Src.IsZero() {
		w.drop(b, nil, DropMalformed)
		return
	}
	if reservedDst(&h.Dst) {
		w.drop(b, nil, DropReservedDst)
		return
	}

	// Stage 6 has nothing to do: the tag is already at offset 12.
	// Stage 7.
	w.fi.macs.learn(makeMACKey(vid, h.Src), uplinkDst(w.in.idx), w.now)

	// Stages 8-9.
	w.forward(b, nil, vid, uplinkInner)
}

// reservedDst reports a destination in 01:80:c2:00:00:00-0f (802.1D
// link-local, never forwarded; protocols.md §7.3).
func reservedDst(m *wire.MAC) bool {
	return m[0] == 0x01 && m[1] == 0x80 && m[2] == 0xc2 && m[3] == 0 && m[4] == 0 && m[5] <= 0x0f
}

// forward is stage 8. src is the source vEth, nil for a frame from an
// uplink; inner is where the 802.1Q tag sits.
func (w *worker) forward(b *link.Buf, src *vethView, vid uint16, inner int) {
	var srcV *veth
	if src != nil {
		srcV = src.v
	}
	if dst := w.h.Dst; !dst.IsMulticast() {
		if d, ok := w.fi.macs.lookup(makeMACKey(vid, dst), w.now); ok {
			if d.isUplink() {
				if int(d.index()) < len(w.snap.ports) {
					up := w.snap.ports[d.index()]
					if up == w.in {
						w.drop(b, nil, DropSamePort)
						return
					}
					w.toUplink(b, up, srcV, vid, inner)
					return
				}
			} else if dv := w.snap.vethAt(d); dv != nil {
				if dv.v == srcV {
					w.drop(b, srcV, DropSamePort)
					return
				}
				w.toVEth(b, dv, src, vid, inner)
				return
			}
			// A stale entry (its vEth is gone): flood, and let learning fix it.
		}
	}
	w.flood(b, src, vid, inner)
}

// flood sends b to every member of vid except the source.
func (w *worker) flood(b *link.Buf, src *vethView, vid uint16, inner int) {
	var srcV *veth
	if src != nil {
		srcV = src.v
	}
	members := w.snap.flood[vid]
	uplinks := w.snap.uplinks
	if !w.snap.uplinkVLANs.has(vid) {
		uplinks = nil
	}
	n := 0
	for _, m := range members {
		if m.v != srcV {
			n++
		}
	}
	for _, u := range uplinks {
		if u != w.in {
			n++
		}
	}
	if n == 0 {
		w.drop(b, srcV, DropNoDestination)
		return
	}
	for _, m := range members {
		if m.v == srcV {
			continue
		}
		n--
		w.toVEth(w.copyFor(b, n), m, src, vid, inner)
	}
	for _, u := range uplinks {
		if u == w.in {
			continue
		}
		n--
		w.toUplink(w.copyFor(b, n), u, srcV, vid, inner)
	}
}

// copyFor returns b for the last destination of a flood (remaining == 0),
// else a pooled copy of it.
func (w *worker) copyFor(b *link.Buf, remaining int) *link.Buf {
	if remaining == 0 {
		return b
	}
	c := link.Get()
	c.SetBytes(b.Bytes()) // fits: stage 2 bounds the frame (maxIngress)
	return c
}

// headroom returns b, or a copy of it with the default headroom if b has
// less than n bytes in front of the frame (a peer may hand over buffers
// with their headroom used up).
func headroom(b *link.Buf, n int) *link.Buf {
	if b.Off >= n {
		return b
	}
	c := link.Get()
	c.SetBytes(b.Bytes())
	b.Release()
	return c
}

// toVEth is stage 9 towards a vEth.
func (w *worker) toVEth(b *link.Buf, dst, src *vethView, vid uint16, inner int) {
	var svif uint16
	if src != nil {
		svif = src.vif
	}
	if dst.held {
		w.holdFrame(b, dst, svif, vid, inner)
		return
	}
	w.egressVEth(b, dst, svif, vid, inner)
}

// egressVEth is stage 9 towards a vEth that is not held.
func (w *worker) egressVEth(b *link.Buf, dst *vethView, svif, vid uint16, inner int) {
	b, ok := vethEgress(b, dst, w.in, svif, vid, inner)
	if !ok {
		w.drop(b, dst.v, DropEgressVLANNotAllowed)
		return
	}
	w.queue(dst.port, b)
}

// vethEgress re-checks the VLAN against dst's profile and writes the
// downstream VN-Tag: it returns false, b untouched, if dst does not carry
// vid. in is the frame's ingress port and svif its source vif there (0
// from an uplink). A function of its arguments only, so that ReleaseVEth
// can run it for held frames against the binding of the release.
func vethEgress(b *link.Buf, dst *vethView, in *port, svif, vid uint16, inner int) (*link.Buf, bool) {
	if !dst.prof.allowed.has(vid) {
		return b, false
	}
	tag := wire.VNTag{FromBridge: true, DVIF: dst.vif}
	if in == dst.port { // never true from an uplink: vEths bind to server ports
		tag.SVIF, tag.Looped = svif, true // hairpin (protocols.md §1.2, l bit)
	}
	if inner == uplinkInner {
		b = headroom(b, wire.VNTagLen)
		wire.PutVNTag(b.InsertAt(2*6, wire.VNTagLen), tag)
	} else {
		binary.BigEndian.PutUint32(b.Bytes()[14:], tag.Word())
	}
	dst.v.ctr.egressFrames.Add(1)
	dst.v.ctr.egressBytes.Add(uint64(b.Len - wire.VNTagLen))
	return b, true
}

// toUplink is stage 9 towards an uplink. src is the source vEth or nil.
func (w *worker) toUplink(b *link.Buf, up *port, src *veth, vid uint16, inner int) {
	if !w.snap.uplinkVLANs.has(vid) {
		w.drop(b, src, DropEgressVLANNotAllowed)
		return
	}
	if inner == serverInner {
		b.RemoveAt(2*6, wire.VNTagLen)
	}
	w.queue(up, b)
}

// queue appends b to the egress queue of p.
func (w *worker) queue(p *port, b *link.Buf) {
	q := &w.out[p.idx] // p is in w.snap, or holdFrame grew w.out
	if len(q.bufs) == 0 {
		w.pending = append(w.pending, p.idx)
		q.port = p
	}
	q.bufs = append(q.bufs, b)
	q.bytes += uint64(b.Len)
}

// flush is stage 10: each pending egress queue goes out in one Send.
func (w *worker) flush() {
	for _, i := range w.pending {
		q := &w.out[i]
		w.fi.send(q.port, q.bufs, q.bytes)
		clear(q.bufs)
		q.bufs = q.bufs[:0]
		q.bytes = 0
		q.port = nil
	}
	w.pending = w.pending[:0]
}

// send hands bufs (bytes long in all) to p's Send and counts them.
func (f *FI) send(p *port, bufs []*link.Buf, bytes uint64) {
	p.txMu.Lock()
	n, err := p.link.Send(bufs)
	p.txMu.Unlock()
	if err != nil {
		// The port is closed: the frames it did not take are ours.
		for _, b := range bufs[n:] {
			bytes -= uint64(b.Len)
			b.Release()
			f.unattributed[DropPortDown].Add(1)
			f.drops[DropPortDown].Add(1)
			p.ctr.outDrops.Add(1)
		}
	}
	p.ctr.outFrames.Add(uint64(n))
	p.ctr.outBytes.Add(bytes)
}
