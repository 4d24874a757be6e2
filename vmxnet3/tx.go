package vmxnet3

// Transmit engine (spec §4.7). For one batch, under the tx queue lock:
//
//  1. From the device's tx-ring index, read descriptors while their gen bit
//     matches (acquire load of dw2, the publish word).
//  2. Gather each packet's buffers up to EOP into the caller's buffer,
//     validating every address and length against guest memory.
//  3. Apply SOP metadata: checksum offload here, 802.1Q insertion reported
//     to the caller in TxMeta.
//  4. Hand the batch to the caller's send function (the wire).
//  5. Write one TxCompDesc per packet that asked for one, in ring order,
//     publishing each with a release store of dw3, then raise the vector.
//
// Because the lock is held from 1 to 5, a quiesce never sees a packet that
// was sent but not completed, nor completed but not sent (spec §7.4 step 2).

// TxMeta is per-packet metadata the caller applies while sending.
type TxMeta struct {
	TI  bool   // insert an 802.1Q tag with TCI
	TCI uint16 // tag control information
}

// ProcessTx gathers up to len(bufs) packets from tx queue q into bufs (each
// slice's full length is the room for one frame), sets lens and metas, and
// calls send(n) with the number of packets gathered; send must have finished
// with the buffers when it returns. Then it writes the completions and
// raises the queue's interrupt once. Packets the device drops (oversize,
// unsupported offload) are completed but not sent. It returns the number of
// descriptors' packets consumed from the ring (sent or dropped); 0 means the
// ring had nothing ready, the device is inactive or the queue is stopped.
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
				tq.eop = append(tq.eop, r.Next)
				tq.cq = append(tq.cq, desc.CQ)
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
		tq.ring = r
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

// txOffload applies the SOP offload mode (spec §4.2). Checksum offload is
// done here; TSO and encapsulation offload are not implemented by this
// model and drop the packet, counted.
func (d *Device) txOffload(f []byte, sop TxDesc) bool {
	switch sop.OM {
	case OMNone:
		return true
	case OMCsum:
		start, at := int(sop.HLen), int(sop.MSSCOF)
		if at > MaxCsumOffset+start || start > len(f) || at+2 > len(f) || at < start {
			d.drops.TxUnsupported.Add(1)
			return false
		}
		// The driver seeded the field with the pseudo-header sum; the
		// device folds in everything from hlen to the end.
		sum := onesSum(f[start:], 0)
		c := ^fold(sum)
		if c == 0 {
			// RFC 768: a UDP checksum that computes to zero is sent as
			// 0xFFFF (0 means "no checksum"); for TCP both encode zero.
			c = 0xFFFF
		}
		f[at], f[at+1] = byte(c>>8), byte(c)
		return true
	default:
		d.drops.TxUnsupported.Add(1)
		return false
	}
}

// onesSum adds b as big-endian 16-bit words (RFC 1071).
func onesSum(b []byte, sum uint32) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
