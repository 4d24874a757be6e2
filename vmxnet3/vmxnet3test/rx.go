package vmxnet3test

import (
	"fmt"

	"github.com/vmfex/vmfex/vmxnet3"
)

// PostRx posts up to n HEAD buffers on ring 0 of rx queue q, then writes
// RXPROD[q]. It returns how many it posted (at most ring size − 1 are ever
// outstanding, spec §4.6).
func (g *Guest) PostRx(q, n int) int {
	k := g.PostRxRing(q, 0, n)
	g.BAR0.Write32(vmxnet3.RxPROD(q), g.rx[q].fill[0].Next)
	return k
}

// PostRxRing posts up to n buffers on ring r (0: HEAD buffers, 1: BODY
// buffers) of rx queue q without writing a producer register. Slot i always
// gets buffer i of that ring's buffer array.
func (g *Guest) PostRxRing(q, r, n int) int {
	s := &g.rx[q]
	size, bs := g.cfg.RxRingSize0, g.cfg.RxBufSize0
	if r == 1 {
		size, bs = g.cfg.RxRingSize1, g.cfg.RxBufSize1
	}
	free := int(size - 1 - s.outst[r])
	n = min(n, free)
	for i := 0; i < n; i++ {
		idx := s.fill[r].Next
		g.putRxDesc(q, r, vmxnet3.RxDesc{
			Addr: g.l.Rx[q].Bufs[r] + uint64(idx)*uint64(bs),
			Len:  bs,
			Body: r == 1,
		})
	}
	return max(n, 0)
}

// PostRxRaw writes descs as given at the next slots of ring r of rx queue
// q, forcing only their gen bits; no ring-full check is made. It is the
// hook for hostile rx descriptors (small HEAD buffers, addresses outside
// memory, BODY where a HEAD is expected).
func (g *Guest) PostRxRaw(q, r int, descs ...vmxnet3.RxDesc) {
	for _, d := range descs {
		g.putRxDesc(q, r, d)
	}
}

func (g *Guest) putRxDesc(q, r int, d vmxnet3.RxDesc) {
	s := &g.rx[q]
	idx := s.fill[r].Next
	pa := s.fill[r].Addr(idx)
	d.Gen = s.fill[r].Gen
	g.M.PutU64(pa+vmxnet3.RxDescAddr, d.Addr)
	g.M.PutU32(pa+12, 0)
	// Publish: addr before dw2, which holds the gen bit.
	g.M.StoreU32Release(pa+vmxnet3.RxDescDW2, d.Word2())
	s.slot[r][idx] = rxSlot{addr: d.Addr, len: d.Len}
	s.outst[r]++
	s.fill[r].Advance()
}

// WriteRxDescRaw writes 16 arbitrary bytes as descriptor idx of ring r of
// rx queue q, gen bit included, with no bookkeeping.
func (g *Guest) WriteRxDescRaw(q, r int, idx uint32, raw [vmxnet3.DescSize]byte) {
	_ = g.M.Write(g.l.Rx[q].Ring[r]+uint64(idx)*vmxnet3.DescSize, raw[:])
}

// KickRx writes RXPROD[q] and RXPROD2[q] with the fill indices.
func (g *Guest) KickRx(q int) {
	g.BAR0.Write32(vmxnet3.RxPROD(q), g.rx[q].fill[0].Next)
	g.BAR0.Write32(vmxnet3.RxPROD2(q), g.rx[q].fill[1].Next)
}

// RxCompletion is one rx completion with the bytes it names.
type RxCompletion struct {
	vmxnet3.RxComp
	Ring int    // 0 or 1 from rqID (spec §4.8); -1 when rqID names neither
	Data []byte // the Len bytes written into the buffer (a copy)
}

// ReadRxCompletions consumes every rx completion of queue q that is ready,
// returning them with their data. The returned slots (and any slots the
// device skipped before them) are remembered for Refill. The error reports
// the first completion that does not match what was posted.
func (g *Guest) ReadRxCompletions(q int) ([]RxCompletion, error) {
	var out []RxCompletion
	err := g.pollRx(q, func(c RxCompletion, addr uint64) {
		if c.Ring >= 0 && c.Len > 0 {
			c.Data = make([]byte, c.Len)
			_ = g.M.Read(addr, c.Data)
		}
		out = append(out, c)
	})
	return out, err
}

// ReceiveFrames consumes the ready rx completions of queue q, assembles
// sop..eop into frames (dropping a frame whose eop carries err), refills
// the returned slots and returns the frames.
func (g *Guest) ReceiveFrames(q int) ([][]byte, error) {
	var frames [][]byte
	err := g.recv(q, func(f []byte) { frames = append(frames, append([]byte(nil), f...)) })
	g.Refill(q)
	return frames, err
}

// ConsumeRx is ReceiveFrames without copying the frames out: it returns how
// many whole frames were received. It allocates nothing unless it reports
// an error.
func (g *Guest) ConsumeRx(q int) (int, error) {
	n := 0
	err := g.recv(q, func([]byte) { n++ })
	g.Refill(q)
	return n, err
}

func (g *Guest) recv(q int, frame func([]byte)) error {
	s := &g.rx[q]
	return g.pollRx(q, func(c RxCompletion, addr uint64) {
		if c.SOP {
			s.asm, s.inPkt, s.pktErr = s.asm[:0], true, false
		}
		if !s.inPkt || c.Ring < 0 {
			s.pktErr = true
		}
		if c.Len > 0 && c.Ring >= 0 {
			v, ok := g.M.View(addr, uint64(c.Len))
			if ok {
				s.asm = append(s.asm, v...)
			} else {
				s.pktErr = true
			}
		}
		if c.Err {
			s.pktErr = true
		}
		if c.EOP {
			if s.inPkt && !s.pktErr && len(s.asm) > 0 {
				frame(s.asm)
			}
			s.inPkt = false
		}
	})
}

// pollRx consumes ready completions, handing each with its buffer address
// to fn, and accounts the returned slots.
func (g *Guest) pollRx(q int, fn func(c RxCompletion, addr uint64)) error {
	s := &g.rx[q]
	m := g.M
	var err error
	for {
		pa := s.comp.Addr(s.comp.Next)
		dw3 := m.LoadU32Acquire(pa + vmxnet3.RxCompDW3)
		if (dw3&vmxnet3.CompGenBit != 0) != s.comp.Gen {
			return err
		}
		c := RxCompletion{RxComp: vmxnet3.DecodeRxComp(m.U32(pa+vmxnet3.RxCompDW0), m.U32(pa+vmxnet3.RxCompDW1), m.U32(pa+vmxnet3.RxCompDW2), dw3)}
		s.comp.Advance()
		var addr uint64
		c.Ring, addr, err = g.returnSlot(q, c.RxComp, err)
		fn(c, addr)
	}
}

// returnSlot accounts one completion: every slot of its ring from the
// oldest outstanding up to rxdIdx comes back (spec §4.8).
func (g *Guest) returnSlot(q int, c vmxnet3.RxComp, err error) (ring int, addr uint64, _ error) {
	s := &g.rx[q]
	fail := func(format string, a ...any) error {
		if err != nil {
			return err
		}
		return fmt.Errorf("%w: rx queue %d: "+format, append([]any{ErrBadCompletion, q}, a...)...)
	}
	n := g.cfg.NumRxQueues
	switch int(c.RqID) {
	case q:
		ring = 0
	case q + n:
		ring = 1
	default:
		return -1, 0, fail("rqID %d", c.RqID)
	}
	size := uint32(len(s.slot[ring]))
	idx := uint32(c.RxdIdx)
	if c.Type != vmxnet3.RxCompTypeRx {
		err = fail("completion type %d", c.Type)
	}
	if idx >= size {
		return -1, 0, fail("rxdIdx %d ≥ ring %d size %d", idx, ring, size)
	}
	back := (idx+size-s.cons[ring])%size + 1
	if back > s.outst[ring] {
		return -1, 0, fail("ring %d rxdIdx %d returns %d buffers, %d outstanding", ring, idx, back, s.outst[ring])
	}
	s.outst[ring] -= back
	s.refill[ring] += back
	s.cons[ring] = (idx + 1) % size
	sl := s.slot[ring][idx]
	if c.Len > sl.len {
		err = fail("ring %d slot %d: len %d > buffer %d", ring, idx, c.Len, sl.len)
	}
	return ring, sl.addr, err
}

// Refill re-posts the slots returned since the last refill and, when the
// device asks for it (updateRxProd, spec §3.7), writes RXPROD/RXPROD2.
func (g *Guest) Refill(q int) {
	s := &g.rx[q]
	prod := g.M.U8(g.QueueDescPA(false, q)+vmxnet3.RQUpdateRxProd) != 0
	for r := 0; r < 2; r++ {
		if s.refill[r] == 0 {
			continue
		}
		g.PostRxRing(q, r, int(s.refill[r]))
		s.refill[r] = 0
		if prod {
			if r == 0 {
				g.BAR0.Write32(vmxnet3.RxPROD(q), s.fill[0].Next)
			} else {
				g.BAR0.Write32(vmxnet3.RxPROD2(q), s.fill[1].Next)
			}
		}
	}
}
