package vmxnet3_test

// Fuzz targets for the two rings a guest writes and the device parses: tx
// descriptors (FuzzTxRing) and rx descriptors (FuzzRxRing). The fuzzer's
// bytes become raw 16-byte descriptors, gen bits included. Whatever they
// say, the device must not panic, must write guest memory only where the
// spec lets it (completion ring, ecr, and for rx the buffers it reports),
// and each queue must either make progress or stop with a §4.9 code. The
// tx target also checks the device against a naive model of §4.2/§4.6/§4.7.
// Seeds live in testdata/fuzz/<Name>/, so plain `go test` runs them.

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/vmxnet3/vmxnet3test"
)

// Fuzz input, both targets: byte 0 holds flags; for rx bytes 1..3 shape the
// frames; the rest are descriptors, 16 bytes each.
const (
	fuzzMapAddr = 1 << 0 // map every address into the buffer area
	// bits 1..2: the tx batch size (FuzzTxRing)
	fuzzTCPBuf = 1 << 3 // the buffer area starts with a TCP packet ready for TSO (FuzzTxRing)
	fuzzTCPv6  = 1 << 4 // ... over IPv6
)

const fuzzRing = 32

func fuzzConfig() vmxnet3test.Config {
	cfg := vmxnet3test.DefaultConfig()
	cfg.TxRingSize, cfg.TxCompSize, cfg.TxBufSize = fuzzRing, fuzzRing, 256
	cfg.RxRingSize0, cfg.RxRingSize1, cfg.RxCompSize = fuzzRing, fuzzRing, 2*fuzzRing
	cfg.RxBufSize0, cfg.RxBufSize1 = 256, 512
	cfg.MTU = 9000
	cfg.NoFill = true
	cfg.RxMode = vmxnet3.RxModePromisc
	return cfg
}

// fuzzAddr maps a fuzzer address into [BufStart, GuardStart) when asked,
// so descriptors mostly point at real buffers.
func fuzzAddr(r *vmxnet3test.Rig, a uint64, mapAddr bool) uint64 {
	if !mapAddr {
		return a
	}
	l := r.G.Layout()
	return l.BufStart + a%(r.GuardStart-l.BufStart)
}

// region is a guest-physical byte range [lo, hi).
type region struct{ lo, hi uint64 }

func (g region) overlaps(o region) bool { return g.lo < o.hi && o.lo < g.hi }

func inRegions(pa uint64, rs []region) bool {
	for _, r := range rs {
		if pa >= r.lo && pa < r.hi {
			return true
		}
	}
	return false
}

// checkWrites fails for every byte that differs between before and the
// memory now, outside the allowed regions.
func checkWrites(t *testing.T, r *vmxnet3test.Rig, before []byte, allowed []region) {
	t.Helper()
	now, _ := r.Mem.View(0, r.Mem.Size())
	bad := 0
	for i := range now {
		if now[i] != before[i] && !inRegions(uint64(i), allowed) {
			if bad < 5 {
				t.Errorf("device wrote %#x at PA %#x (was %#x), outside the regions it may write", now[i], i, before[i])
			}
			bad++
		}
	}
	if bad > 0 {
		t.Fatalf("%d bytes written outside the allowed regions", bad)
	}
}

func snapshot(r *vmxnet3test.Rig) []byte {
	v, _ := r.Mem.View(0, r.Mem.Size())
	return append([]byte(nil), v...)
}

// fillPattern writes a recognisable pattern over the buffer area.
func fillPattern(r *vmxnet3test.Rig) {
	l := r.G.Layout()
	p := make([]byte, r.GuardStart-l.BufStart)
	for i := range p {
		p[i] = byte(i*131 + i>>8)
	}
	_ = r.Mem.Write(l.BufStart, p)
}

// controlRegions are where the device writes for a queue pair: DriverShared
// (ecr), the queue table (txThreshold, status, stats) and both completion
// rings.
func controlRegions(r *vmxnet3test.Rig) []region {
	l := r.G.Layout()
	return []region{
		{l.Shared, l.Shared + 4096},
		{l.QueueDesc, l.QueueDesc + 4096},
		{l.Tx[0].Comp, l.Tx[0].Comp + fuzzRing*16},
		{l.Rx[0].Comp, l.Rx[0].Comp + 2*fuzzRing*16},
	}
}

// txModelPkt is what the naive model expects of one tx packet.
type txModelPkt struct {
	eop    uint32
	cq     bool
	sent   bool     // handed to the wire (not oversize, offload accepted)
	frames [][]byte // what goes on the wire, when sent and checkable: the gathered bytes, or TSO's segments
	nsent  int      // frames on the wire, when sent
	csum   int      // offset of a checksum the device fills in, or -1
}

const fuzzTxBuf = 4096

// tsoModel is what the device sends for a gathered TSO packet: the
// segments of SegmentTCP (tested on its own against gopacket and RFC 1071
// in offload_test.go) into fuzzTxBuf-sized buffers, unless a segment's L3
// packet would exceed the fuzz config's MTU (9000).
func tsoModel(pkt []byte, hlen, mss int) ([][]byte, int, bool) {
	l3 := 14
	if len(pkt) >= 14 && binary.BigEndian.Uint16(pkt[12:]) == 0x8100 {
		l3 = 18
	}
	if hlen-l3+mss > 9000 {
		return nil, 0, false
	}
	out := make([][]byte, vmxnet3.MaxTSOSegs)
	for i := range out {
		out[i] = make([]byte, fuzzTxBuf)
	}
	lens := make([]int, len(out))
	n, ok := vmxnet3.SegmentTCP(pkt, hlen, mss, out, lens)
	if !ok {
		return nil, 0, false
	}
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = out[i][:lens[i]]
	}
	return frames, n, true
}

// txModel walks the ring the way §4.2/§4.6/§4.7 describe, from slot 0 with
// gen 1. It returns the packets the device must consume and, if the ring
// holds a malformed chain, the codes acceptable for it (the first defective
// descriptor decides; when it has several defects any of their codes is).
//
// Gathered bytes are compared only for buffers in the buffer area
// (from bufStart): elsewhere the device's own writes may change them.
func txModel(m []byte, ring, memSize, bufStart uint64) (pkts []txModelPkt, codes []uint32) {
	r := vmxnet3.Ring{Base: ring, Size: fuzzRing}
	r.Reset()
	desc := func(i uint32) vmxnet3.TxDesc {
		pa := r.Addr(i)
		return vmxnet3.DecodeTxDesc(binary.LittleEndian.Uint64(m[pa:]), binary.LittleEndian.Uint32(m[pa+8:]), binary.LittleEndian.Uint32(m[pa+12:]))
	}
	for len(pkts) < 4*fuzzRing {
		if desc(r.Next).Gen != r.Gen {
			return pkts, nil // idle
		}
		c := r
		var sop vmxnet3.TxDesc
		var frame []byte
		checkable := true
		n := 0
		for {
			d := desc(c.Next)
			if n > 0 && d.Gen != c.Gen {
				return pkts, []uint32{vmxnet3.QErrNoEOP}
			}
			n++
			if n == 1 {
				sop = d
			}
			var errs []uint32
			if d.DType {
				errs = append(errs, vmxnet3.QErrDescType)
			}
			if n > vmxnet3.MaxTxDescPerPkt && sop.OM != vmxnet3.OMTSO {
				errs = append(errs, vmxnet3.QErrTooManyDescs)
			}
			if d.Addr > memSize || uint64(d.Len) > memSize-d.Addr {
				errs = append(errs, vmxnet3.QErrInvalidDesc)
			}
			if len(errs) > 0 {
				return pkts, errs
			}
			// A TSO packet is gathered into the device's own buffer.
			room := fuzzTxBuf
			if sop.OM == vmxnet3.OMTSO {
				room = vmxnet3.MaxTSOLen
			}
			if len(frame)+int(d.Len) <= room {
				frame = append(frame, m[d.Addr:d.Addr+uint64(d.Len)]...)
				checkable = checkable && d.Addr >= bufStart
			} else {
				frame = append(frame, make([]byte, room+1)...) // marks oversize
			}
			if d.EOP {
				p := txModelPkt{eop: c.Next, cq: d.CQ, csum: -1, nsent: 1}
				c.Advance()
				p.sent = len(frame) <= fuzzTxBuf
				switch sop.OM {
				case vmxnet3.OMTSO:
					p.sent = false
					if len(frame) <= vmxnet3.MaxTSOLen {
						p.frames, p.nsent, p.sent = tsoModel(frame, int(sop.HLen), int(sop.MSSCOF))
					}
				case vmxnet3.OMNone:
				case vmxnet3.OMCsum:
					start, at := int(sop.HLen), int(sop.MSSCOF)
					if at > vmxnet3.MaxCsumOffset+start || start > len(frame) || at+2 > len(frame) || at < start {
						p.sent = false
					}
					p.csum = at
				default:
					p.sent = false
				}
				if p.sent && sop.OM != vmxnet3.OMTSO {
					p.frames = [][]byte{frame}
				}
				if !checkable {
					p.frames = nil
				}
				pkts = append(pkts, p)
				break
			}
			c.Advance()
			if n >= fuzzRing {
				return pkts, []uint32{vmxnet3.QErrNoEOP}
			}
		}
		r = c
	}
	return pkts, nil
}

func FuzzTxRing(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		flags := data[0]
		data = data[1:]
		r := newRig(t, fuzzConfig())
		if err := r.G.Up(); err != nil {
			t.Fatal(err)
		}
		fillPattern(r)
		l := r.G.Layout()
		if flags&fuzzTCPBuf != 0 {
			// Something TSO can cut: a TCP packet whose checksum field
			// holds PrepareTSO's seed (3066 bytes over IPv4 with hlen 66,
			// 3086 over IPv6 with hlen 86).
			p, hlen := tcpPacket(t, tcpSpec{v6: flags&fuzzTCPv6 != 0, payload: 3000, psh: true})
			vmxnet3.PrepareTSO(p, hlen)
			_ = r.Mem.Write(l.BufStart, p)
		}
		for k := 0; k < fuzzRing && len(data) >= 16; k++ {
			var raw [16]byte
			copy(raw[:], data[:16])
			data = data[16:]
			a := fuzzAddr(r, binary.LittleEndian.Uint64(raw[:]), flags&fuzzMapAddr != 0)
			binary.LittleEndian.PutUint64(raw[:], a)
			r.G.WriteTxDescRaw(0, uint32(k), raw)
		}
		r.G.KickTx(0)
		before := snapshot(r)
		ctl := controlRegions(r)
		model, codes := txModel(before, l.Tx[0].Ring, r.Mem.Size(), l.BufStart)

		// Batches of 1..8 frames; a TSO packet that needs more buffers is
		// retried with as many as TxBufsNeeded says, as the adapter and
		// the emulated device do.
		batch := 1 << (flags >> 1 & 3)
		bufs := make([][]byte, vmxnet3.MaxTSOSegs)
		for i := range bufs {
			bufs[i] = make([]byte, fuzzTxBuf)
		}
		lens, metas := make([]int, len(bufs)), make([]vmxnet3.TxMeta, len(bufs))
		var sent [][]byte
		send := func(n int) {
			for k := 0; k < n; k++ {
				sent = append(sent, append([]byte(nil), bufs[k][:lens[k]]...))
			}
		}
		consumed := 0
		for i := 0; i < 8*fuzzRing; i++ {
			n := r.Dev.ProcessTx(0, bufs[:batch], lens, metas, send)
			if need := r.Dev.TxBufsNeeded(0); n == 0 && need > batch {
				if need > vmxnet3.MaxTSOSegs {
					t.Fatalf("TxBufsNeeded = %d > MaxTSOSegs", need)
				}
				n = r.Dev.ProcessTx(0, bufs[:need], lens, metas, send)
			}
			if n == 0 {
				break
			}
			consumed += n
		}
		checkWrites(t, r, before, ctl)
		if err := r.CheckGuard(); err != nil {
			t.Fatal(err)
		}

		// Progress: exactly the model's packets were consumed.
		if consumed != len(model) {
			t.Fatalf("device consumed %d packets, model %d", consumed, len(model))
		}
		var wantComp []uint32
		nsent := 0
		for _, p := range model {
			if p.sent {
				nsent += p.nsent
			}
			if p.cq {
				wantComp = append(wantComp, p.eop)
			}
		}
		if len(sent) != nsent {
			t.Fatalf("device sent %d frames, model %d", len(sent), nsent)
		}
		i := 0
		for _, p := range model {
			if !p.sent {
				continue
			}
			for j, want := range p.frames {
				got := sent[i+j]
				if p.csum >= 0 {
					got = append([]byte(nil), got...)
					got[p.csum], got[p.csum+1] = want[p.csum], want[p.csum+1]
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("frame %d: device sent % x…, model % x…", i+j, head(got), head(want))
				}
			}
			i += p.nsent
		}
		// Completions: in order, txdIdx = EOP, gen 1 on the first lap.
		for i := 0; i < fuzzRing; i++ {
			pa := l.Tx[0].Comp + uint64(i)*16
			dw0, dw3 := r.Mem.U32(pa), r.Mem.U32(pa+12)
			if i < len(wantComp) {
				if dw0 != wantComp[i] || dw3 != vmxnet3.CompGenBit {
					t.Fatalf("completion %d: dw0 %#x dw3 %#x, want %#x, %#x", i, dw0, dw3, wantComp[i], uint32(vmxnet3.CompGenBit))
				}
			} else if dw3 != 0 || dw0 != 0 {
				t.Fatalf("completion slot %d written (dw0 %#x dw3 %#x), model has %d completions", i, dw0, dw3, len(wantComp))
			}
		}
		// Stop state, as the driver sees it.
		stopped, code := r.G.QueueStatus(true, 0)
		if dstop, dcode := r.Dev.QueueError(true, 0); dstop != stopped || dcode != code {
			t.Fatalf("QueueError %v %#x, GET_QUEUE_STATUS %v %#x", dstop, dcode, stopped, code)
		}
		if (codes != nil) != stopped {
			t.Fatalf("queue stopped %v (code %#x), model expects stopped %v (codes %#x)", stopped, code, codes != nil, codes)
		}
		if stopped {
			ok := false
			for _, c := range codes {
				ok = ok || c == code
			}
			if !ok {
				t.Fatalf("queue stopped with %#x, want one of %#x", code, codes)
			}
			if r.G.ECR()&vmxnet3.EventTQErr == 0 {
				t.Fatalf("queue stopped but ecr = %#x", r.G.ECR())
			}
		}
		fuzzRecover(t, r)
	})
}

// fuzzRecover: after whatever happened, RESET_DEV and a fresh open give a
// working device.
func fuzzRecover(t *testing.T, r *vmxnet3test.Rig) {
	t.Helper()
	r.G.Reset()
	cfg := fuzzConfig()
	cfg.NoFill = false
	g, err := vmxnet3test.New(r.Mem, r.Dev.BAR0(), r.Dev.BAR1(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Up(); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	out := ethFrame(otherMAC, ownMAC, 100, 1)
	if err := g.PostTx(0, out); err != nil {
		t.Fatal(err)
	}
	sent, _ := vmxnet3test.NewWire(1, 2048).Drain(r.Dev, 0)
	if len(sent) != 1 || !bytes.Equal(sent[0].Frame, out) {
		t.Fatalf("after reset: sent %d frames", len(sent))
	}
	in := ethFrame(ownMAC, otherMAC, 100, 2)
	if res := r.Dev.DeliverBatch(0, [][]byte{in}); res.Written != 1 {
		t.Fatalf("after reset: DeliverBatch %+v", res)
	}
	got, err := g.ReceiveFrames(0)
	if err != nil || sameFrames(got, [][]byte{in}) != nil {
		t.Fatalf("after reset: received %d frames (%v)", len(got), err)
	}
}

func FuzzRxRing(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 4 {
			return
		}
		flags, nframes, size := data[0], 1+int(data[1]%8), int(binary.LittleEndian.Uint16(data[2:]))
		data = data[4:]
		cfg := fuzzConfig()
		cfg.MaxNumRxSG = uint16(flags >> 1 & 0x1F)
		r := newRig(t, cfg)
		if err := r.G.Up(); err != nil {
			t.Fatal(err)
		}
		mapAddr := flags&fuzzMapAddr != 0
		l := r.G.Layout()
		ctl := controlRegions(r)
		// Descriptors 0..31 go to ring 0, 32..63 to ring 1.
		type slot struct {
			d     vmxnet3.RxDesc
			valid bool // gen bit matches the device's first lap
		}
		var slots [2][fuzzRing]slot
		// hostile: a valid buffer overlaps the layout's rings and control
		// structures or the guard; then only the weaker checks apply.
		hostile := false
		outside := []region{{0, l.BufStart}, {r.GuardStart, r.Mem.Size()}}
		for k := 0; k < 2*fuzzRing && len(data) >= 16; k++ {
			var raw [16]byte
			copy(raw[:], data[:16])
			data = data[16:]
			a := fuzzAddr(r, binary.LittleEndian.Uint64(raw[:]), mapAddr)
			binary.LittleEndian.PutUint64(raw[:], a)
			ring, idx := k/fuzzRing, uint32(k%fuzzRing)
			r.G.WriteRxDescRaw(0, ring, idx, raw)
			d := vmxnet3.DecodeRxDesc(a, binary.LittleEndian.Uint32(raw[8:]))
			slots[ring][idx] = slot{d, d.Gen}
			br := region{a, a + uint64(d.Len)}
			if a+uint64(d.Len) < a {
				br.hi = ^uint64(0)
			}
			for _, o := range outside {
				hostile = hostile || (d.Gen && br.overlaps(o))
			}
		}
		r.G.KickRx(0)
		var frames [][]byte
		for i := 0; i < nframes; i++ {
			n := (size + i*1237) % (int(cfg.MTU) + 40)
			if n < 14 && i%2 == 0 {
				n += 14
			}
			frames = append(frames, ethFrame(ownMAC, otherMAC, max(n, 14), byte(i))[:max(n, 1)])
		}
		before := snapshot(r)
		res := r.Dev.DeliverBatch(0, frames)
		stopped, code := r.Dev.QueueError(false, 0)

		// Completions, as written.
		type chunk struct {
			c  vmxnet3.RxComp
			br region
		}
		var comps []chunk
		for i := 0; i < 2*fuzzRing; i++ {
			pa := l.Rx[0].Comp + uint64(i)*16
			c := vmxnet3.DecodeRxComp(r.Mem.U32(pa), r.Mem.U32(pa+4), r.Mem.U32(pa+8), r.Mem.U32(pa+12))
			if !c.Gen {
				break
			}
			ring := int(c.RqID)
			if hostile {
				comps = append(comps, chunk{c: c})
				continue
			}
			if ring > 1 || c.RxdIdx >= fuzzRing || c.Type != vmxnet3.RxCompTypeRx {
				t.Fatalf("completion %d: rqID %d rxdIdx %d type %d", i, c.RqID, c.RxdIdx, c.Type)
			}
			s := slots[ring][c.RxdIdx]
			if !s.valid || c.Len == 0 || c.Len > s.d.Len || (c.SOP && (s.d.Body || s.d.Len < vmxnet3.MinHeadBufLen)) ||
				(!c.SOP && ring == 0 && !s.d.Body) {
				t.Fatalf("completion %d %+v names ring %d slot %d %+v (valid %v)", i, c, ring, c.RxdIdx, s.d, s.valid)
			}
			comps = append(comps, chunk{c, region{s.d.Addr, s.d.Addr + uint64(c.Len)}})
		}
		allowed := append([]region(nil), ctl...)
		if hostile {
			// Buffers may overlap anything; the device may write them all.
			for _, ss := range slots {
				for _, s := range ss {
					if s.valid {
						allowed = append(allowed, region{s.d.Addr, s.d.Addr + uint64(s.d.Len)})
					}
				}
			}
		} else {
			for _, c := range comps {
				allowed = append(allowed, c.br)
			}
		}
		checkWrites(t, r, before, allowed)
		if !hostile {
			if err := r.CheckGuard(); err != nil {
				t.Fatal(err)
			}
		}

		// Progress or a stop with a §4.9 code.
		if res.Consumed > len(frames) || res.Written > res.Consumed {
			t.Fatalf("DeliverBatch = %+v for %d frames", res, len(frames))
		}
		if stopped && code != vmxnet3.QErrHeadTooSmall && code != vmxnet3.QErrInvalidDesc {
			t.Fatalf("rx queue stopped with %#x", code)
		}
		if res.Consumed < len(frames) && !res.Full && !stopped {
			t.Fatalf("DeliverBatch = %+v: stopped early without Full or a queue error", res)
		}
		if stopped && res.Full {
			t.Fatalf("DeliverBatch = %+v and the queue stopped with %#x", res, code)
		}
		if stopped != (r.G.ECR()&vmxnet3.EventRQErr != 0) {
			t.Fatalf("queue stopped %v, ecr %#x", stopped, r.G.ECR())
		}
		if hostile {
			fuzzRecover(t, r)
			return
		}

		// sop..eop groups, in ring order, each the next admitted frame.
		var groups [][]chunk
		for i, c := range comps {
			if c.c.SOP != (i == 0 || comps[i-1].c.EOP) {
				t.Fatalf("completion %d: sop %v after eop %v", i, c.c.SOP, i > 0 && comps[i-1].c.EOP)
			}
			if c.c.SOP {
				groups = append(groups, nil)
			}
			groups[len(groups)-1] = append(groups[len(groups)-1], c)
		}
		if len(comps) > 0 && !comps[len(comps)-1].c.EOP {
			t.Fatalf("last completion has no eop")
		}
		if len(groups) != res.Written {
			t.Fatalf("%d frames in the completion ring, DeliverBatch wrote %d", len(groups), res.Written)
		}
		// Ring order: per ring, slot indices strictly increase (no reuse).
		last := [2]int{-1, -1}
		for _, c := range comps {
			ring := int(c.c.RqID)
			if int(c.c.RxdIdx) <= last[ring] {
				t.Fatalf("ring %d slot %d used after slot %d", ring, c.c.RxdIdx, last[ring])
			}
			last[ring] = int(c.c.RxdIdx)
		}
		// Each group is the next frame the device admitted (it drops frames
		// with a bad length or needing more than maxNumRxSG buffers). Chunks
		// a later chunk overwrote (overlapping buffers) are not compared.
		fi, pos := 0, 0
		for gi, g := range groups {
			total := 0
			for _, c := range g {
				total += int(c.c.Len)
			}
			for fi < len(frames) && len(padded(frames[fi])) != total {
				fi++
			}
			if fi == len(frames) {
				t.Fatalf("frame %d in the ring (%d bytes) matches no frame delivered", gi, total)
			}
			want := padded(frames[fi])
			fi++
			off := 0
			for ci, c := range g {
				pos++
				clobbered := false
				for _, later := range comps[pos:] {
					clobbered = clobbered || later.br.overlaps(c.br)
				}
				if got, _ := r.Mem.View(c.br.lo, uint64(c.c.Len)); !clobbered && !bytes.Equal(got, want[off:off+int(c.c.Len)]) {
					t.Fatalf("frame %d chunk %d: data differs", gi, ci)
				}
				off += int(c.c.Len)
			}
		}
		fuzzRecover(t, r)
	})
}
