package vmxnet3

// Receive engine (spec §4.8, §6). For one frame, under the rx queue lock:
//
//  1. Filter: promiscuous, else VLAN table, then destination class against
//     the rx mode and the multicast list.
//  2. Plan the buffers: the next HEAD buffer of ring 0, then BODY buffers
//     from ring 0 or ring 1, each found valid by an acquire load of its dw2.
//     If the frame cannot be placed whole, nothing is consumed and the
//     caller keeps the frame (the frame is never cut: completions cannot be
//     withdrawn once written).
//  3. Copy the frame (zero-padded to 60 bytes) into the buffers, then write
//     one RxCompDesc per buffer, publishing dw3 with a release store.
//  4. After the batch, raise the queue's vector once.

// RxResult is what DeliverBatch did.
type RxResult struct {
	Consumed int // input frames taken: written, held, or dropped and counted
	Written  int // frames written to guest buffers by this call (held ones included)
	// WrittenBytes are the bytes of the Written frames.
	WrittenBytes int
	Held         int  // input frames the device holds because the guest has no buffers
	Dropped      int  // input frames dropped and counted by a filter or check
	Full         bool // the device holds frames: wait for RxSpace, then call again
}

// PendingLimit bounds the frames an rx queue holds while the guest has no
// buffers posted; beyond it DeliverBatch stops consuming, which pushes back
// on the caller (lossless) instead of dropping.
const PendingLimit = 256

type rxChunk struct {
	ring int
	idx  uint32
	addr uint64
	len  uint32
}

// placeResult is what happened to one frame at the rings.
type placeResult uint8

const (
	placed  placeResult = iota // written to guest buffers
	dropped                    // rejected by a filter or malformed, counted
	noRoom                     // the guest has no buffers for it now
	qError                     // a malformed descriptor stopped the queue
)

// DeliverBatch offers frames to rx queue q in order. Frames already held by
// the queue go first; a frame the guest has no buffers for is held (copied)
// rather than cut or dropped, and every later frame queues behind it, up to
// PendingLimit. Frames the filters reject or that are malformed are dropped
// and counted. A frozen device (a hand-off in progress) holds everything
// unfiltered: the filters apply when the frames reach the rings. The caller
// keeps ownership of the frames; the device copies them.
func (d *Device) DeliverBatch(q int, frames [][]byte) RxResult {
	var res RxResult
	if q < 0 || q >= MaxRxQueues {
		return res
	}
	rq := &d.rxq[q]
	if d.frozen.Load() {
		rq.mu.Lock()
		if d.frozen.Load() {
			res = d.holdFrozenLocked(rq, frames)
			rq.mu.Unlock()
			return res
		}
		rq.mu.Unlock()
	}
	if !d.active.Load() {
		d.drops.RxInactive.Add(uint64(len(frames)))
		res.Consumed, res.Dropped = len(frames), len(frames)
		return res
	}
	d.ctl.mu.Lock()
	cfg := &d.ctl.cfg
	st := rxState{
		mtu: cfg.MTU, maxSG: int(cfg.MaxNumRxSG), nrx: cfg.NumRxQueues,
		filters: rxFilter{mode: cfg.RxMode, mac: d.ctl.mac, vlan: cfg.VLANTable, mcast: cfg.MCastList},
	}
	linkUp := d.ctl.linkUp
	rq.mu.Lock()
	// ctl is held only to read the filters consistently; release it before
	// copying frames so commands are not held up by a busy queue.
	d.ctl.mu.Unlock()
	if !d.active.Load() || q >= st.nrx || rq.stopped || !linkUp || d.frozen.Load() {
		stopped, frozen := rq.stopped, d.frozen.Load() // read under rq.mu
		if frozen {
			res = d.holdFrozenLocked(rq, frames)
			rq.mu.Unlock()
			return res
		}
		rq.mu.Unlock()
		if stopped {
			d.drops.RxQueueError.Add(uint64(len(frames)))
		} else {
			d.drops.RxInactive.Add(uint64(len(frames)))
		}
		res.Consumed, res.Dropped = len(frames), len(frames)
		return res
	}
	var qerr uint32
	// 1. Held frames first, in order.
	for rq.npending() > 0 && qerr == 0 {
		switch r, e := d.place(rq, q, &st, rq.pending[rq.phead]); r {
		case placed:
			res.Written++
			res.WrittenBytes += len(rq.pending[rq.phead])
			rq.pop()
		case dropped:
			// Held while frozen, unfiltered; counted in Drops, not in
			// res.Dropped, which is about this call's frames.
			rq.pop()
		case noRoom:
			goto fresh
		case qError:
			qerr = e
		}
	}
fresh:
	// 2. The new frames, behind anything still held.
	for _, f := range frames {
		if qerr != 0 {
			break
		}
		if rq.npending() > 0 {
			if rq.npending() >= PendingLimit {
				break
			}
			rq.hold(f)
			res.Held++
			res.Consumed++
			continue
		}
		r, e := d.place(rq, q, &st, f)
		switch r {
		case placed:
			res.Written++
			res.WrittenBytes += len(f)
		case dropped:
			res.Dropped++
		case noRoom:
			rq.stats[RxStatOutOfBuf]++
			rq.hold(f)
			res.Held++
		case qError:
			qerr = e
			continue
		}
		res.Consumed++
	}
	if qerr != 0 {
		rq.stopped, rq.err = true, qerr
	}
	res.Full = rq.npending() > 0 && qerr == 0
	vec := int(rq.intrIdx)
	rq.mu.Unlock()
	if res.Written > 0 {
		d.irq.raise(vec, d.sink)
	}
	if qerr != 0 {
		d.raiseEvent(EventRQErr)
	}
	return res
}

// holdFrozenLocked holds frames for a frozen device: unfiltered (the
// filters apply when they reach the rings), except runts and giants, which
// no guest buffer could ever take and no saved state may carry.
func (d *Device) holdFrozenLocked(rq *rxQueue, frames [][]byte) RxResult {
	var res RxResult
	for _, f := range frames {
		switch {
		case len(f) < 14:
			rq.stats[RxStatErrors]++
			res.Dropped++
		case len(f) > MaxMTU+64:
			d.drops.RxTooLong.Add(1)
			rq.stats[RxStatErrors]++
			res.Dropped++
		default:
			rq.hold(f)
			res.Held++
		}
	}
	res.Consumed, res.Full = len(frames), true
	return res
}

// rxState is the configuration one DeliverBatch call works with.
type rxState struct {
	mtu     uint32
	maxSG   int
	nrx     int
	filters rxFilter
}

// place filters one frame and writes it to the rings.
func (d *Device) place(rq *rxQueue, q int, st *rxState, f []byte) (placeResult, uint32) {
	if len(f) < 14 {
		rq.stats[RxStatErrors]++
		return dropped, 0
	}
	if st.filters.admit(f, d) {
		return dropped, 0
	}
	// MTU counts the L3 payload; allow Ethernet and one 802.1Q tag.
	if len(f) > int(st.mtu)+18 {
		d.drops.RxTooLong.Add(1)
		rq.stats[RxStatErrors]++
		return dropped, 0
	}
	flen := max(len(f), 60)
	var plan [MaxTxDescPerPkt]rxChunk
	n, ok, e := d.planRx(rq, flen, st.maxSG, plan[:])
	switch {
	case e != 0:
		return qError, e
	case !ok && n < 0:
		// More buffers than maxNumRxSG allows: it can never fit.
		rq.stats[RxStatErrors]++
		return dropped, 0
	case !ok:
		return noRoom, 0
	}
	d.writeRx(rq, q, st.nrx, f, flen, plan[:n])
	d.countRx(rq, f)
	return placed, 0
}

type rxFilter struct {
	mode  uint32
	mac   [6]byte
	vlan  [VLANTableWords]uint32
	mcast [][6]byte
}

// admit applies the receive filter (spec §6); it returns true when the
// frame is dropped (and counts it).
func (r *rxFilter) admit(f []byte, d *Device) (drop bool) {
	if r.mode&RxModePromisc != 0 {
		return false
	}
	var vid uint16
	if f[12] == 0x81 && f[13] == 0x00 && len(f) >= 18 {
		vid = (uint16(f[14])<<8 | uint16(f[15])) & 0x0FFF
	}
	if vid != 0 && vid != 0xFFF && r.vlan[vid/32]&(1<<(vid%32)) == 0 {
		d.drops.RxVLANFilter.Add(1)
		return true
	}
	switch {
	case f[0]&f[1]&f[2]&f[3]&f[4]&f[5] == 0xff:
		if r.mode&RxModeBcast != 0 {
			return false
		}
	case f[0]&1 != 0:
		if r.mode&RxModeAllMulti != 0 {
			return false
		}
		if r.mode&RxModeMcast != 0 {
			for _, m := range r.mcast {
				if m[0] == f[0] && m[1] == f[1] && m[2] == f[2] && m[3] == f[3] && m[4] == f[4] && m[5] == f[5] {
					return false
				}
			}
		}
	default:
		if r.mode&RxModeUcast != 0 && f[0] == r.mac[0] && f[1] == r.mac[1] && f[2] == r.mac[2] &&
			f[3] == r.mac[3] && f[4] == r.mac[4] && f[5] == r.mac[5] {
			return false
		}
	}
	d.drops.RxFiltered.Add(1)
	return true
}

// planRx finds buffers for flen bytes without consuming them. It returns the
// number of chunks and ok; n < 0 with !ok means the frame needs more than
// maxSG buffers; a non-zero qerr means a malformed descriptor.
func (d *Device) planRx(rq *rxQueue, flen, maxSG int, plan []rxChunk) (n int, ok bool, qerr uint32) {
	m := d.mem
	r0, r1 := rq.ring[0], rq.ring[1]
	need := flen
	for need > 0 {
		if n == len(plan) || n == maxSG {
			return -1, false, 0
		}
		var c rxChunk
		found := false
		// The first chunk needs a HEAD in ring 0; BODY slots found where a
		// HEAD is expected are skipped (they count as consumed, spec §4.8).
		if n == 0 {
			for skipped := uint32(0); skipped < r0.Size; skipped++ {
				pa := r0.Addr(r0.Next)
				dw2 := m.LoadU32Acquire(pa + RxDescDW2)
				if (dw2&RxGenBit != 0) != r0.Gen {
					return 0, false, 0
				}
				desc := DecodeRxDesc(m.U64(pa+RxDescAddr), dw2)
				if desc.Body {
					r0.Advance()
					continue
				}
				if desc.Len < MinHeadBufLen {
					return 0, false, QErrHeadTooSmall
				}
				c = rxChunk{ring: 0, idx: r0.Next, addr: desc.Addr, len: desc.Len}
				r0.Advance()
				found = true
				break
			}
		} else {
			// Continuation: the next ring-0 slot if it is a valid BODY, else
			// the next valid ring-1 slot.
			pa := r0.Addr(r0.Next)
			dw2 := m.LoadU32Acquire(pa + RxDescDW2)
			if (dw2&RxGenBit != 0) == r0.Gen && dw2&RxBTypeBody != 0 {
				desc := DecodeRxDesc(m.U64(pa+RxDescAddr), dw2)
				c = rxChunk{ring: 0, idx: r0.Next, addr: desc.Addr, len: desc.Len}
				r0.Advance()
				found = true
			} else {
				pa = r1.Addr(r1.Next)
				dw2 = m.LoadU32Acquire(pa + RxDescDW2)
				if (dw2&RxGenBit != 0) == r1.Gen {
					desc := DecodeRxDesc(m.U64(pa+RxDescAddr), dw2)
					c = rxChunk{ring: 1, idx: r1.Next, addr: desc.Addr, len: desc.Len}
					r1.Advance()
					found = true
				}
			}
		}
		if !found {
			return 0, false, 0
		}
		if c.len == 0 || !m.InRange(c.addr, uint64(c.len)) {
			return 0, false, QErrInvalidDesc
		}
		if int(c.len) > need {
			c.len = uint32(need)
		}
		need -= int(c.len)
		plan[n] = c
		n++
	}
	return n, true, 0
}

// writeRx copies f into the planned buffers and writes the completions.
func (d *Device) writeRx(rq *rxQueue, q, nrx int, f []byte, flen int, plan []rxChunk) {
	m := d.mem
	off := 0
	for i, c := range plan {
		end := off + int(c.len)
		if end <= len(f) {
			_ = m.Write(c.addr, f[off:end])
		} else {
			// Zero padding of a runt up to 60 bytes.
			if off < len(f) {
				_ = m.Write(c.addr, f[off:])
			}
			pad := end - max(off, len(f))
			_ = m.Zero(c.addr+uint64(int(c.len)-pad), uint64(pad))
		}
		off = end
		rqID := uint16(q)
		if c.ring == 1 {
			rqID = uint16(q + nrx)
		}
		comp := RxComp{
			RxdIdx: uint16(c.idx),
			SOP:    i == 0,
			EOP:    i == len(plan)-1,
			RqID:   rqID,
			CNC:    true, // checksums not verified by this device
			Len:    c.len,
			Type:   RxCompTypeRx,
			Gen:    rq.comp.Gen,
		}
		dw0, dw1, dw2, dw3 := comp.Words()
		pa := rq.comp.Addr(rq.comp.Next)
		m.PutU32(pa+RxCompDW0, dw0)
		m.PutU32(pa+RxCompDW1, dw1)
		m.PutU32(pa+RxCompDW2, dw2)
		// Publish: the buffer and dw0–dw2 are written before the gen bit.
		m.StoreU32Release(pa+RxCompDW3, dw3)
		rq.comp.Advance()
	}
	// Commit the ring positions the plan consumed (including skipped slots).
	for _, c := range plan {
		r := &rq.ring[c.ring]
		for r.Next != c.idx {
			r.Advance()
		}
		r.Advance()
	}
}

func (d *Device) countRx(rq *rxQueue, f []byte) {
	n := uint64(len(f))
	switch {
	case f[0]&f[1]&f[2]&f[3]&f[4]&f[5] == 0xff:
		rq.stats[RxStatBcastPkts]++
		rq.stats[RxStatBcastBytes] += n
	case f[0]&1 != 0:
		rq.stats[RxStatMcastPkts]++
		rq.stats[RxStatMcastBytes] += n
	default:
		rq.stats[RxStatUcastPkts]++
		rq.stats[RxStatUcastBytes] += n
	}
}
