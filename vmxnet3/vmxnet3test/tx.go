package vmxnet3test

import (
	"fmt"

	"github.com/vmfex/vmfex/vmxnet3"
)

// Packet is one tx packet: one descriptor per segment, with the SOP
// metadata of spec §4.2.
type Packet struct {
	Segs   [][]byte // one descriptor each; each at most Config.TxBufSize bytes
	OM     uint8    // offload mode (SOP)
	HLen   uint16   // header length (SOP)
	MSSCOF uint16   // checksum offset or MSS (SOP)
	TI     bool     // insert an 802.1Q tag (SOP)
	TCI    uint16   // the tag (SOP)
	NoCQ   bool     // do not request a completion
}

// PostTx posts each frame as one packet, split over as many descriptors as
// its length needs (TxBufSize bytes each), then rings TXPROD once. It posts
// nothing and returns ErrRingFull if the frames do not all fit.
func (g *Guest) PostTx(q int, frames ...[]byte) error {
	need := uint32(0)
	for _, f := range frames {
		need += g.descsFor(len(f))
	}
	if g.tx[q].outst+need > g.cfg.TxRingSize-1 {
		return ErrRingFull
	}
	for _, f := range frames {
		n := int(g.descsFor(len(f)))
		bs := int(g.cfg.TxBufSize)
		g.writePacket(q, n, func(j int) []byte {
			return f[j*bs : min((j+1)*bs, len(f))]
		}, &Packet{})
	}
	g.KickTx(q)
	return nil
}

func (g *Guest) descsFor(n int) uint32 {
	if n == 0 {
		return 1
	}
	return uint32((n + int(g.cfg.TxBufSize) - 1) / int(g.cfg.TxBufSize))
}

// PostTxPacket posts p without ringing the doorbell and returns the index
// of its EOP descriptor.
func (g *Guest) PostTxPacket(q int, p Packet) (eop uint32, err error) {
	if len(p.Segs) == 0 {
		return 0, fmt.Errorf("vmxnet3test: packet without segments")
	}
	for _, s := range p.Segs {
		if len(s) > int(g.cfg.TxBufSize) {
			return 0, fmt.Errorf("%w: %d > %d", ErrTooLong, len(s), g.cfg.TxBufSize)
		}
	}
	if g.tx[q].outst+uint32(len(p.Segs)) > g.cfg.TxRingSize-1 {
		return 0, ErrRingFull
	}
	return g.writePacket(q, len(p.Segs), func(j int) []byte { return p.Segs[j] }, &p), nil
}

// writePacket copies n segments into the slots' buffers and publishes them
// as one packet. SOP-gen-last (spec §4.6): every descriptor but the SOP is
// written with the current gen; the SOP is first written with the inverted
// gen and flipped by a release store after the whole chain is in place, so
// a device scanning by gen never sees half a packet.
func (g *Guest) writePacket(q, n int, seg func(j int) []byte, p *Packet) uint32 {
	t := &g.tx[q]
	m := g.M
	bufs := g.l.Tx[q].Bufs
	sop := t.ring.Addr(t.ring.Next)
	var eop uint32
	for j := 0; j < n; j++ {
		s := seg(j)
		idx := t.ring.Next
		buf := bufs + uint64(idx)*uint64(g.cfg.TxBufSize)
		_ = m.Write(buf, s)
		d := vmxnet3.TxDesc{Addr: buf, Len: uint32(len(s)), Gen: t.ring.Gen}
		if j == 0 {
			d.Gen = !t.ring.Gen
			d.OM, d.HLen, d.MSSCOF, d.TI, d.TCI = p.OM, p.HLen, p.MSSCOF, p.TI, p.TCI
		}
		if j == n-1 {
			d.EOP, d.CQ = true, !p.NoCQ
			eop = idx
		}
		g.putTxDesc(t.ring.Addr(idx), d)
		t.ring.Advance()
	}
	// Publish: the whole chain is written before the SOP gen flips.
	m.StoreU32Release(sop+vmxnet3.TxDescDW2, m.U32(sop+vmxnet3.TxDescDW2)^vmxnet3.TxGenBit)
	g.pushPkt(t, txPkt{eop: eop, ndesc: uint32(n), cq: !p.NoCQ})
	return eop
}

func (g *Guest) putTxDesc(pa uint64, d vmxnet3.TxDesc) {
	addr, dw2, dw3 := d.Words()
	g.M.PutU64(pa+vmxnet3.TxDescAddr, addr)
	g.M.PutU32(pa+vmxnet3.TxDescDW3, dw3)
	// Publish: addr and dw3 before dw2, which holds the gen bit.
	g.M.StoreU32Release(pa+vmxnet3.TxDescDW2, dw2)
}

func (g *Guest) pushPkt(t *txState, p txPkt) {
	t.outst += p.ndesc
	if t.npkt == len(t.pkts) {
		// A hostile test posted more than a ring's worth; forget the oldest.
		t.head = (t.head + 1) % len(t.pkts)
		t.npkt--
	}
	t.pkts[(t.head+t.npkt)%len(t.pkts)] = p
	t.npkt++
}

// PostTxRaw writes descs as given (addresses, lengths, flags, dtype) at the
// driver's next tx slots, forcing only their gen bits, SOP-gen-last, and
// returns the SOP index. No buffer is written and no ring-full check is
// made: it is the hook for hostile chains (no EOP, dtype 1, addresses
// outside memory, too many descriptors).
func (g *Guest) PostTxRaw(q int, descs ...vmxnet3.TxDesc) (sop uint32) {
	t := &g.tx[q]
	sop = t.ring.Next
	sopPA := t.ring.Addr(sop)
	last, cq := sop, false
	for j, d := range descs {
		d.Gen = t.ring.Gen
		if j == 0 {
			d.Gen = !d.Gen
		}
		last, cq = t.ring.Next, d.EOP && d.CQ
		g.putTxDesc(t.ring.Addr(t.ring.Next), d)
		t.ring.Advance()
	}
	if len(descs) > 0 {
		// Publish the SOP last.
		g.M.StoreU32Release(sopPA+vmxnet3.TxDescDW2, g.M.U32(sopPA+vmxnet3.TxDescDW2)^vmxnet3.TxGenBit)
		g.pushPkt(t, txPkt{eop: last, ndesc: uint32(len(descs)), cq: cq})
	}
	return sop
}

// WriteTxDescRaw writes 16 arbitrary bytes as descriptor idx of tx queue q,
// gen bit included, with no bookkeeping.
func (g *Guest) WriteTxDescRaw(q int, idx uint32, raw [vmxnet3.DescSize]byte) {
	_ = g.M.Write(g.l.Tx[q].Ring+uint64(idx)*vmxnet3.DescSize, raw[:])
}

// KickTx writes TXPROD[q] with the driver's next-to-fill index.
func (g *Guest) KickTx(q int) { g.BAR0.Write32(vmxnet3.TxPROD(q), g.tx[q].ring.Next) }

// TxFree returns how many descriptors can be posted on tx queue q.
func (g *Guest) TxFree(q int) int { return int(g.cfg.TxRingSize - 1 - g.tx[q].outst) }

// ReapTx consumes the tx completions of queue q, frees the descriptors up
// to each txdIdx, and checks that every completion names the EOP of the
// oldest packet still waiting for one (in order, none skipped, spec §4.3).
// It returns the completions consumed and allocates nothing unless it
// reports an error.
func (g *Guest) ReapTx(q int) (int, error) { return g.reapTx(q, nil) }

// ReapTxCompletions is ReapTx returning the txdIdx of every completion.
func (g *Guest) ReapTxCompletions(q int) ([]uint32, error) {
	var idx []uint32
	_, err := g.reapTx(q, &idx)
	return idx, err
}

func (g *Guest) reapTx(q int, out *[]uint32) (int, error) {
	t := &g.tx[q]
	m := g.M
	n := 0
	for {
		pa := t.comp.Addr(t.comp.Next)
		dw3 := m.LoadU32Acquire(pa + vmxnet3.TxCompDW3)
		if (dw3&vmxnet3.CompGenBit != 0) != t.comp.Gen {
			return n, nil
		}
		idx := m.U32(pa+vmxnet3.TxCompDW0) & vmxnet3.TxCompIdxMask
		t.comp.Advance()
		n++
		if out != nil {
			*out = append(*out, idx)
		}
		if typ := dw3 >> vmxnet3.CompTypeShift & vmxnet3.CompTypeMask; typ != vmxnet3.TxCompTypeTx {
			return n, fmt.Errorf("%w: tx completion type %d", ErrBadCompletion, typ)
		}
		for {
			if t.npkt == 0 {
				return n, fmt.Errorf("%w: txdIdx %d with no packet outstanding", ErrBadCompletion, idx)
			}
			p := t.pkts[t.head]
			t.head = (t.head + 1) % len(t.pkts)
			t.npkt--
			t.outst -= p.ndesc
			if p.eop == idx && p.cq {
				break
			}
			if p.cq {
				return n, fmt.Errorf("%w: txdIdx %d, want %d (reordered or skipped)", ErrBadCompletion, idx, p.eop)
			}
		}
	}
}
