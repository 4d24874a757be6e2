package vmxnet3

// Transmit engine (spec §4.7). For one batch, under the tx queue lock:
//
//  1. From the device's tx-ring index, read descriptors while their gen bit
//     matches (acquire load of dw2, the publish word).
//  2. Gather each packet's buffers up to EOP into the caller's buffer (a
//     TSO packet into the queue's own 64 KiB buffer), validating every
//     address and length against guest memory.
//  3. Apply SOP metadata (offload.go): checksum offload, or TSO, which
//     cuts the packet into one caller's buffer per segment; 802.1Q
//     insertion is reported to the caller in TxMeta.
//  4. Hand the batch to the caller's send function (the wire).
//  5. Write one TxCompDesc per packet that asked for one, in ring order,
//     publishing each with a release store of dw3, then raise the vector.
//
// Because the lock is held from 1 to 5, a quiesce never sees a packet that
// was sent but not completed, nor completed but not sent (spec §7.4 step 2).

// TxMeta is per-frame metadata the caller applies while sending.
type TxMeta struct {
	TI  bool   // insert an 802.1Q tag with TCI
	TCI uint16 // tag control information
}

// ProcessTx gathers packets from tx queue q into frames in bufs (each
// slice's full length is the room for one frame), sets lens and metas per
// frame, and calls send(n) with the number of frames; send must have
// finished with the buffers when it returns. Then it writes the
// completions and raises the queue's interrupt once. A packet is one frame,
// except a TSO packet, which becomes one frame per segment (all in this
// call: a packet whose segments do not fit the buffers left is not taken,
// and TxBufsNeeded says how many it needs). Packets the device drops
// (oversize, offload it cannot honour) are completed but not sent. It
// returns the number of packets consumed from the ring (sent or dropped);
// 0 means the ring had nothing ready, or nothing that fits bufs, the
// device is inactive or the queue is stopped.
func (d *Device) ProcessTx(q int, bufs [][]byte, lens []int, metas []TxMeta, send func(n int)) int {
	if q < 0 || q >= MaxTxQueues || !d.active.Load() {
		return 0
	}
	tq := &d.txq[q]
	tq.mu.Lock()
	if !d.active.Load() || d.frozen.Load() || tq.stopped || tq.ring.Size == 0 {
		tq.mu.Unlock()
		return 0
	}
	m := d.mem
	tq.eop = tq.eop[:0]
	tq.cq = tq.cq[:0]
	tq.need = 1
	k := 0
	var qerr uint32
	for k < len(bufs) {
		sop := tq.ring.Addr(tq.ring.Next)
		dw2 := m.LoadU32Acquire(sop + TxDescDW2)
		if (dw2&TxGenBit != 0) != tq.ring.Gen {
			break // not yet published
		}
		r := tq.ring
		dst := bufs[k]
		total := 0
		oversize := false
		var sopDesc TxDesc
		ndesc := 0
		var eop uint32
		var cq bool
		for {
			pa := r.Addr(r.Next)
			if ndesc > 0 {
				dw2 = m.LoadU32Acquire(pa + TxDescDW2)
				if (dw2&TxGenBit != 0) != r.Gen {
					// The SOP was valid but the chain ends before EOP: the
					// driver published half a packet.
					qerr = QErrNoEOP
					break
				}
			}
			desc := DecodeTxDesc(m.U64(pa+TxDescAddr), dw2, m.U32(pa+TxDescDW3))
			ndesc++
			if ndesc == 1 {
				sopDesc = desc
				if desc.OM == OMTSO {
					// A TSO packet is gathered whole before it is cut.
					dst = tq.tsoBuf()
				}
			}
			if desc.DType {
				qerr = QErrDescType
				break
			}
			if ndesc > MaxTxDescPerPkt && sopDesc.OM != OMTSO {
				qerr = QErrTooManyDescs
				break
			}
			if !m.InRange(desc.Addr, uint64(desc.Len)) {
				qerr = QErrInvalidDesc
				break
			}
			if total+int(desc.Len) <= len(dst) && !oversize {
				_ = m.Read(desc.Addr, dst[total:total+int(desc.Len)])
				total += int(desc.Len)
			} else {
				oversize = true
			}
			if desc.EOP {
				eop, cq = r.Next, desc.CQ
				r.Advance()
				break
			}
			r.Advance()
			if ndesc >= int(r.Size) {
				qerr = QErrNoEOP
				break
			}
		}
		if qerr != 0 {
			break
		}
		if sopDesc.OM == OMTSO && !oversize {
			nseg, ok := d.planTSO(dst[:total], sopDesc)
			if ok && nseg > len(bufs)-k {
				// Not now: the packet stays in the ring for a call with
				// enough buffers (spec §7.4: a packet is sent whole or
				// not started).
				tq.need = nseg
				break
			}
			tq.ring = r
			tq.eop = append(tq.eop, eop)
			tq.cq = append(tq.cq, cq)
			if ok {
				ok = d.sendTSO(tq, dst[:total], sopDesc, bufs[k:k+nseg], lens[k:k+nseg], metas[k:k+nseg])
			}
			if !ok {
				tq.stats[TxStatErrors]++
				continue
			}
			k += nseg
			continue
		}
		tq.ring = r
		tq.eop = append(tq.eop, eop)
		tq.cq = append(tq.cq, cq)
		ok := !oversize
		if oversize {
			d.drops.TxOversize.Add(1)
		}
		if ok {
			ok = d.txOffload(dst[:total], sopDesc)
		}
		if !ok {
			tq.stats[TxStatErrors]++
			continue
		}
		d.countTx(tq, dst[:total])
		lens[k] = total
		metas[k] = TxMeta{TI: sopDesc.TI, TCI: sopDesc.TCI}
		k++
	}
	if k > 0 {
		send(k)
	}
	ncomp := 0
	for i, idx := range tq.eop {
		if !tq.cq[i] {
			continue
		}
		c := tq.comp.Addr(tq.comp.Next)
		m.PutU32(c+TxCompDW0, idx&TxCompIdxMask)
		m.PutU32(c+4, 0)
		m.PutU32(c+8, 0)
		w := uint32(TxCompTypeTx) << CompTypeShift
		if tq.comp.Gen {
			w |= CompGenBit
		}
		// Publish: txdIdx is written before the gen bit (release).
		m.StoreU32Release(c+TxCompDW3, w)
		tq.comp.Advance()
		ncomp++
	}
	consumed := len(tq.eop)
	if qerr != 0 {
		tq.stopped, tq.err = true, qerr
		d.drops.TxQueueError.Add(1)
	}
	vec := int(tq.intrIdx)
	tq.mu.Unlock()
	if ncomp > 0 {
		d.irq.raise(vec, d.sink)
	}
	if qerr != 0 {
		d.raiseEvent(EventTQErr)
	}
	return consumed
}

// TxBufsNeeded returns how many frame buffers the packet at the head of tx
// queue q needs, as the last ProcessTx found: more than 1 only when a TSO
// packet did not fit the buffers it was offered. A caller that offered
// fewer waits until it can offer that many (at most MaxTSOSegs).
func (d *Device) TxBufsNeeded(q int) int {
	if q < 0 || q >= MaxTxQueues {
		return 1
	}
	tq := &d.txq[q]
	tq.mu.Lock()
	defer tq.mu.Unlock()
	return max(tq.need, 1)
}

// tsoBuf returns the queue's TSO gather buffer, allocated on the first
// TSO packet: a guest that never asks for TSO costs nothing. Callers hold
// tq.mu.
func (tq *txQueue) tsoBuf() []byte {
	if tq.tso == nil {
		tq.tso = make([]byte, MaxTSOLen)
	}
	return tq.tso
}

// planTSO checks a gathered TSO packet against its headers, the MSS and
// the MTU, and returns how many frames it becomes. A packet it refuses is
// counted; the caller completes it.
func (d *Device) planTSO(pkt []byte, sop TxDesc) (int, bool) {
	hlen, mss := int(sop.HLen), int(sop.MSSCOF)
	h, ok := parseTSO(pkt, hlen)
	// Every segment is an L3 packet of at most the MTU the driver set, so
	// it leaves with its tags within link.MaxFrame.
	if !ok || mss < 1 || hlen-h.l3+mss > int(d.mtu.Load()) {
		d.drops.TxUnsupported.Add(1)
		return 0, false
	}
	n := tsoSegs(len(pkt), hlen, mss)
	if n > MaxTSOSegs {
		d.drops.TxUnsupported.Add(1)
		return 0, false
	}
	return n, true
}

// sendTSO cuts pkt into out, one frame per buffer, and counts the frames.
func (d *Device) sendTSO(tq *txQueue, pkt []byte, sop TxDesc, out [][]byte, lens []int, metas []TxMeta) bool {
	hlen, mss := int(sop.HLen), int(sop.MSSCOF)
	for _, b := range out {
		if len(b) < hlen+min(mss, len(pkt)-hlen) {
			d.drops.TxOversize.Add(1)
			return false
		}
	}
	h, _ := parseTSO(pkt, hlen) // planTSO accepted it
	segmentTCP(pkt, h, mss, out, lens)
	for i := range out {
		d.countTx(tq, out[i][:lens[i]])
		metas[i] = TxMeta{TI: sop.TI, TCI: sop.TCI}
	}
	tq.stats[TxStatTSOPkts]++
	tq.stats[TxStatTSOBytes] += uint64(len(pkt))
	return true
}

func (d *Device) countTx(tq *txQueue, f []byte) {
	n := uint64(len(f))
	switch {
	case len(f) >= 6 && f[0]&f[1]&f[2]&f[3]&f[4]&f[5] == 0xff:
		tq.stats[TxStatBcastPkts]++
		tq.stats[TxStatBcastBytes] += n
	case len(f) >= 1 && f[0]&1 != 0:
		tq.stats[TxStatMcastPkts]++
		tq.stats[TxStatMcastBytes] += n
	default:
		tq.stats[TxStatUcastPkts]++
		tq.stats[TxStatUcastBytes] += n
	}
}

// txOffload applies the SOP offload mode of a packet that is not TSO
// (spec §4.2): checksum offload here; encapsulation offload is not
// implemented by this model and drops the packet, counted.
func (d *Device) txOffload(f []byte, sop TxDesc) bool {
	switch sop.OM {
	case OMNone:
		return true
	case OMCsum:
		if !ChecksumOffload(f, int(sop.HLen), int(sop.MSSCOF)) {
			d.drops.TxUnsupported.Add(1)
			return false
		}
		return true
	default:
		d.drops.TxUnsupported.Add(1)
		return false
	}
}
