package vmxnet3_test

// Data-path tests: rx filtering (§6), rx buffer use (§4.8), full rings,
// tx completions across ring wraps (§4.3, §4.6, §4.7), tx offloads (§4.2).

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/vmxnet3/vmxnet3test"
)

// §6: the filter order is promiscuous, VLAN, then destination class.
func TestRxFilters(t *testing.T) {
	const (
		ucast = vmxnet3.RxModeUcast
		mcast = vmxnet3.RxModeMcast
		bcast = vmxnet3.RxModeBcast
		allm  = vmxnet3.RxModeAllMulti
		promi = vmxnet3.RxModePromisc
	)
	other := [6]byte{0x01, 0x00, 0x5E, 0x7F, 0xFF, 0xFA} // multicast, not in the table
	type drop int
	const (
		pass drop = iota
		byFilter
		byVLAN
	)
	cases := []struct {
		name  string
		mode  uint32
		vlans []uint16
		mc    [][6]byte
		frame []byte
		want  drop
	}{
		{"unicast own MAC, UCAST", ucast, []uint16{0}, nil, ethFrame(ownMAC, otherMAC, 60, 1), pass},
		{"unicast own MAC, no UCAST", bcast | allm, []uint16{0}, nil, ethFrame(ownMAC, otherMAC, 60, 1), byFilter},
		{"unicast own MAC, mode 0", 0, []uint16{0}, nil, ethFrame(ownMAC, otherMAC, 60, 1), byFilter},
		{"unicast other MAC, UCAST", ucast | bcast | allm, []uint16{0}, nil, ethFrame(otherMAC, ownMAC, 60, 1), byFilter},
		{"unicast other MAC, PROMISC", promi, nil, nil, ethFrame(otherMAC, ownMAC, 60, 1), pass},
		{"broadcast, BCAST", bcast, []uint16{0}, nil, ethFrame(bcastMAC, otherMAC, 60, 1), pass},
		{"broadcast, UCAST only", ucast, []uint16{0}, nil, ethFrame(bcastMAC, otherMAC, 60, 1), byFilter},
		{"broadcast, ALL_MULTI only", allm, []uint16{0}, nil, ethFrame(bcastMAC, otherMAC, 60, 1), byFilter},
		{"multicast in table, MCAST", mcast, []uint16{0}, [][6]byte{otherMAC, mcastMAC}, ethFrame(mcastMAC, otherMAC, 60, 1), pass},
		{"multicast not in table, MCAST", mcast, []uint16{0}, [][6]byte{mcastMAC}, ethFrame(other, otherMAC, 60, 1), byFilter},
		{"multicast in table, no MCAST", ucast | bcast, []uint16{0}, [][6]byte{mcastMAC}, ethFrame(mcastMAC, otherMAC, 60, 1), byFilter},
		{"multicast, MCAST with empty table", mcast, []uint16{0}, nil, ethFrame(mcastMAC, otherMAC, 60, 1), byFilter},
		{"multicast, ALL_MULTI", allm, []uint16{0}, nil, ethFrame(other, otherMAC, 60, 1), pass},
		{"multicast, PROMISC", promi, []uint16{0}, nil, ethFrame(other, otherMAC, 60, 1), pass},
		{"VID 100 not in table", ucast, []uint16{0}, nil, vlanFrame(ownMAC, otherMAC, 100, 64, 1), byVLAN},
		{"VID 100 in table", ucast, []uint16{0, 100}, nil, vlanFrame(ownMAC, otherMAC, 100, 64, 1), pass},
		{"VID 4094 in table", ucast, []uint16{4094}, nil, vlanFrame(ownMAC, otherMAC, 4094, 64, 1), pass},
		{"VID 31 with only 32 set", ucast, []uint16{32}, nil, vlanFrame(ownMAC, otherMAC, 31, 64, 1), byVLAN},
		{"VID 100 broadcast not in table", bcast, []uint16{0}, nil, vlanFrame(bcastMAC, otherMAC, 100, 64, 1), byVLAN},
		{"VID 4095 always passes", ucast, []uint16{0}, nil, vlanFrame(ownMAC, otherMAC, 0xFFF, 64, 1), pass},
		{"VID 0 priority tag, table has 0", ucast, []uint16{0}, nil, vlanFrame(ownMAC, otherMAC, 0, 64, 1), pass},
		{"VID 0 priority tag, empty table", ucast, nil, nil, vlanFrame(ownMAC, otherMAC, 0, 64, 1), pass},
		{"untagged, empty table", ucast, nil, nil, ethFrame(ownMAC, otherMAC, 60, 1), pass},
		{"VID 100, PROMISC skips VLAN", promi, []uint16{0}, nil, vlanFrame(otherMAC, otherMAC, 100, 64, 1), pass},
		{"VID 100 in table, wrong MAC", ucast, []uint16{100}, nil, vlanFrame(otherMAC, ownMAC, 100, 64, 1), byFilter},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := vmxnet3test.DefaultConfig()
			cfg.RxMode, cfg.VLANs, cfg.MCast = c.mode, c.vlans, c.mc
			r := upRig(t, cfg)
			filt, vlan := r.Dev.Drops().RxFiltered.Load(), r.Dev.Drops().RxVLANFilter.Load()
			res := r.Dev.DeliverBatch(0, [][]byte{c.frame})
			if res.Consumed != 1 {
				t.Fatalf("DeliverBatch = %+v, want the frame consumed", res)
			}
			got := receive(t, r, 0)
			df := r.Dev.Drops().RxFiltered.Load() - filt
			dv := r.Dev.Drops().RxVLANFilter.Load() - vlan
			switch c.want {
			case pass:
				if err := sameFrames(got, [][]byte{c.frame}); err != nil || res.Written != 1 {
					t.Errorf("want delivered: %v (%+v)", err, res)
				}
				if df != 0 || dv != 0 {
					t.Errorf("drops filtered %d vlan %d, want 0, 0", df, dv)
				}
			case byFilter:
				if len(got) != 0 || res.Written != 0 || df != 1 || dv != 0 {
					t.Errorf("got %d frames, drops filtered %d vlan %d; want 0 frames, 1, 0", len(got), df, dv)
				}
			case byVLAN:
				if len(got) != 0 || res.Written != 0 || df != 0 || dv != 1 {
					t.Errorf("got %d frames, drops filtered %d vlan %d; want 0 frames, 0, 1", len(got), df, dv)
				}
			}
		})
	}
}

// §6: filters change only when the driver issues the UPDATE command.
func TestRxFilterUpdates(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	mc := ethFrame(mcastMAC, otherMAC, 60, 1)
	tagged := vlanFrame(ownMAC, otherMAC, 7, 64, 2)
	try := func(f []byte) bool {
		t.Helper()
		r.Dev.DeliverBatch(0, [][]byte{f})
		return len(receive(t, r, 0)) == 1
	}
	if try(mc) || try(tagged) {
		t.Fatal("multicast or VID 7 admitted by the default filter")
	}
	// Written to shared memory but not announced: no effect.
	sh := r.G.Layout().Shared
	r.Mem.PutU32(sh+vmxnet3.DSRxMode, vmxnet3.RxModeUcast|vmxnet3.RxModeAllMulti)
	r.Mem.PutU32(sh+vmxnet3.DSVFTable, 1|1<<7)
	if try(mc) || try(tagged) {
		t.Error("filters changed before UPDATE_RX_MODE / UPDATE_VLAN_FILTERS")
	}
	r.G.Command(vmxnet3.CmdUpdateRxMode)
	if !try(mc) {
		t.Error("ALL_MULTI not applied by UPDATE_RX_MODE")
	}
	if try(tagged) {
		t.Error("VLAN table applied by UPDATE_RX_MODE")
	}
	r.G.Command(vmxnet3.CmdUpdateVLANFilters)
	if !try(tagged) {
		t.Error("VID 7 not admitted after UPDATE_VLAN_FILTERS")
	}
	r.G.SetRxMode(vmxnet3.RxModeUcast | vmxnet3.RxModeMcast)
	if try(mc) {
		t.Error("multicast admitted with MCAST and an empty table")
	}
	r.G.SetMulticast(mcastMAC)
	if !try(mc) {
		t.Error("multicast in the table not admitted after UPDATE_MAC_FILTERS")
	}
	r.G.SetVLANs(0)
	if try(tagged) {
		t.Error("VID 7 still admitted after it left the table")
	}
}

// §6: frames shorter than 60 bytes are zero-padded to 60.
func TestRxRuntPadded(t *testing.T) {
	for _, n := range []int{14, 42, 59, 60, 61} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			r := upRig(t, vmxnet3test.DefaultConfig())
			// Dirty the buffer the frame will land in.
			buf := r.G.Layout().Rx[0].Bufs[0]
			_ = r.Mem.Write(buf, bytes.Repeat([]byte{0xEE}, 128))
			f := ethFrame(ownMAC, otherMAC, n, 9)
			if res := r.Dev.DeliverBatch(0, [][]byte{f}); res.Written != 1 {
				t.Fatalf("DeliverBatch = %+v", res)
			}
			comps, err := r.G.ReadRxCompletions(0)
			if err != nil || len(comps) != 1 {
				t.Fatalf("%d completions (%v), want 1", len(comps), err)
			}
			want := padded(f)
			if c := comps[0]; int(c.Len) != len(want) || !c.SOP || !c.EOP || !bytes.Equal(c.Data, want) {
				t.Errorf("completion len %d sop %v eop %v data % x; want len %d, sop, eop, % x",
					c.Len, c.SOP, c.EOP, c.Data, len(want), want)
			}
		})
	}
}

// §4.8: a frame larger than its HEAD buffer continues in BODY buffers, from
// ring 0 if the next ring-0 slot is a BODY, else from ring 1; rqID = r for
// ring 0 and r + numRxQueues for ring 1; sop on the first, eop on the last.
func TestRxHeadAndBody(t *testing.T) {
	type chunk struct {
		ring int
		idx  uint32
		len  uint32
		rqID uint16
	}
	cases := []struct {
		name  string
		nrx   int
		q     int
		size  int
		body0 int // BODY buffers posted in ring 0 after the first HEAD
		want  []chunk
	}{
		{"one HEAD", 1, 0, 3000, 0, []chunk{{0, 0, 3000, 0}}},
		{"HEAD + ring 1 BODYs", 1, 0, 9014, 0, []chunk{{0, 0, 3072, 0}, {1, 0, 4096, 1}, {1, 1, 1846, 1}}},
		{"queue 1 of 2: rqID 1 and 3", 2, 1, 9014, 0, []chunk{{0, 0, 3072, 1}, {1, 0, 4096, 3}, {1, 1, 1846, 3}}},
		{"queue 0 of 3: rqID 0 and 3", 3, 0, 5000, 0, []chunk{{0, 0, 3072, 0}, {1, 0, 1928, 3}}},
		{"BODY interleaved in ring 0", 1, 0, 9014, 2, []chunk{{0, 0, 3072, 0}, {0, 1, 4096, 0}, {0, 2, 1846, 0}}},
		{"one ring-0 BODY then ring 1", 1, 0, 9014, 1, []chunk{{0, 0, 3072, 0}, {0, 1, 4096, 0}, {1, 0, 1846, 1}}},
		{"exactly one HEAD", 1, 0, 3072, 0, []chunk{{0, 0, 3072, 0}}},
		{"one byte over", 1, 0, 3073, 0, []chunk{{0, 0, 3072, 0}, {1, 0, 1, 1}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := vmxnet3test.DefaultConfig()
			cfg.MTU, cfg.RxBufSize0, cfg.NumRxQueues, cfg.NoFill = 9000, 3072, c.nrx, true
			r := upRig(t, cfg)
			l := r.G.Layout().Rx[c.q]
			r.G.PostRxRaw(c.q, 0, vmxnet3.RxDesc{Addr: l.Bufs[0], Len: 3072})
			for i := 0; i < c.body0; i++ {
				r.G.PostRxRaw(c.q, 0, vmxnet3.RxDesc{Addr: l.Bufs[0] + uint64(i+1)*4096, Len: 4096, Body: true})
			}
			r.G.PostRxRing(c.q, 1, 8)
			r.G.KickRx(c.q)
			f := ethFrame(ownMAC, otherMAC, c.size, 3)
			if res := r.Dev.DeliverBatch(c.q, [][]byte{f}); res.Written != 1 {
				t.Fatalf("DeliverBatch = %+v", res)
			}
			comps, err := r.G.ReadRxCompletions(c.q)
			if err != nil {
				t.Fatal(err)
			}
			if len(comps) != len(c.want) {
				t.Fatalf("%d completions, want %d: %+v", len(comps), len(c.want), comps)
			}
			var data []byte
			for i, w := range c.want {
				got := comps[i]
				if got.Ring != w.ring || uint32(got.RxdIdx) != w.idx || got.Len != w.len || got.RqID != w.rqID ||
					got.SOP != (i == 0) || got.EOP != (i == len(c.want)-1) || got.Err || got.Type != vmxnet3.RxCompTypeRx {
					t.Errorf("completion %d: ring %d idx %d len %d rqID %d sop %v eop %v err %v type %d; want ring %d idx %d len %d rqID %d sop %v eop %v",
						i, got.Ring, got.RxdIdx, got.Len, got.RqID, got.SOP, got.EOP, got.Err, got.Type,
						w.ring, w.idx, w.len, w.rqID, i == 0, i == len(c.want)-1)
				}
				data = append(data, got.Data...)
			}
			if !bytes.Equal(data, f) {
				t.Errorf("reassembled %d bytes differ from the %d-byte frame", len(data), len(f))
			}
			if err := r.CheckGuard(); err != nil {
				t.Error(err)
			}
		})
	}
}

// §4.6, §4.8: many laps of small rx rings with frames of one, two and three
// buffers: completions keep ring order, gen flips on every wrap of the
// completion ring and of both buffer rings, nothing is lost or reordered.
func TestRxAcrossWraps(t *testing.T) {
	cfg := vmxnet3test.DefaultConfig()
	cfg.MTU, cfg.RxBufSize0 = 9000, 3072
	cfg.RxRingSize0, cfg.RxRingSize1, cfg.RxCompSize = 32, 32, 64
	r := upRig(t, cfg)
	var want, got [][]byte
	seq := 0
	for round := 0; round < 120; round++ {
		var batch [][]byte
		for k := 0; k < 1+round%5; k++ {
			seq++
			batch = append(batch, ethFrame(ownMAC, otherMAC, 60+(seq*1777)%8950, byte(seq)))
		}
		want = append(want, batch...)
		for len(batch) > 0 {
			res := r.Dev.DeliverBatch(0, batch)
			batch = batch[res.Consumed:]
			if res.Consumed == 0 && !res.Full {
				t.Fatalf("round %d: DeliverBatch = %+v", round, res)
			}
			got = append(got, receive(t, r, 0)...) // refills, writes RXPROD
		}
	}
	if err := sameFrames(got, want); err != nil {
		t.Fatal(err)
	}
	if s := r.G.Stats(false, 0); s[vmxnet3.RxStatUcastPkts] != uint64(len(want)) {
		t.Errorf("ucastPktsRxOK = %d, want %d", s[vmxnet3.RxStatUcastPkts], len(want))
	}
	// Laps actually run: ring 0 takes one buffer per frame, ring 1 the rest.
	body := 0
	for _, f := range want {
		if len(f) > 3072 {
			body += (len(f) - 3072 + 4095) / 4096
		}
	}
	if len(want) < 3*32 || body < 3*32 || len(want)+body < 3*64 {
		t.Errorf("%d HEAD and %d BODY buffers used: fewer than 3 laps of every ring", len(want), body)
	}
}

// §4.8: HEAD-less slots where a HEAD is expected are skipped; they count as
// returned.
func TestRxSkipsBodyWhereHeadExpected(t *testing.T) {
	cfg := vmxnet3test.DefaultConfig()
	cfg.NoFill = true
	r := upRig(t, cfg)
	l := r.G.Layout().Rx[0]
	r.G.PostRxRaw(0, 0,
		vmxnet3.RxDesc{Addr: l.Bufs[0], Len: 2048, Body: true},
		vmxnet3.RxDesc{Addr: l.Bufs[0] + 2048, Len: 2048, Body: true},
		vmxnet3.RxDesc{Addr: l.Bufs[0] + 4096, Len: 2048})
	f := ethFrame(ownMAC, otherMAC, 500, 1)
	if res := r.Dev.DeliverBatch(0, [][]byte{f}); res.Written != 1 {
		t.Fatalf("DeliverBatch = %+v", res)
	}
	comps, err := r.G.ReadRxCompletions(0)
	if err != nil || len(comps) != 1 || comps[0].RxdIdx != 2 || !bytes.Equal(comps[0].Data, f) {
		t.Fatalf("completions %+v (%v), want one for slot 2", comps, err)
	}
	// The next HEAD goes into slot 3, not back into a skipped slot.
	r.G.PostRxRaw(0, 0, vmxnet3.RxDesc{Addr: l.Bufs[0] + 8192, Len: 2048})
	r.Dev.DeliverBatch(0, [][]byte{f})
	comps, err = r.G.ReadRxCompletions(0)
	if err != nil || len(comps) != 1 || comps[0].RxdIdx != 3 {
		t.Fatalf("second completions %+v (%v), want one for slot 3", comps, err)
	}
}

// §4.8: the number of buffers per packet is capped by maxNumRxSG (0 = 1).
func TestRxMaxNumRxSG(t *testing.T) {
	for _, c := range []struct {
		sg      uint16
		written int
	}{{0, 0}, {1, 0}, {2, 0}, {3, 1}, {16, 1}} {
		t.Run(fmt.Sprint(c.sg), func(t *testing.T) {
			cfg := vmxnet3test.DefaultConfig()
			cfg.MTU, cfg.RxBufSize0, cfg.MaxNumRxSG = 9000, 3072, c.sg
			r := upRig(t, cfg)
			f := ethFrame(ownMAC, otherMAC, 9014, 1) // 3 buffers
			res := r.Dev.DeliverBatch(0, [][]byte{f})
			if res.Written != c.written || res.Consumed != 1 || res.Full {
				t.Errorf("DeliverBatch = %+v, want %d written, 1 consumed, not Full", res, c.written)
			}
			got := receive(t, r, 0)
			if len(got) != c.written {
				t.Errorf("received %d frames, want %d", len(got), c.written)
			}
			// Nothing was consumed from the rings for a frame that could not fit.
			small := ethFrame(ownMAC, otherMAC, 100, 2)
			r.Dev.DeliverBatch(0, [][]byte{small})
			if err := sameFrames(receive(t, r, 0), [][]byte{small}); err != nil {
				t.Error(err)
			}
		})
	}
}

// §4.8: frames longer than the MTU allows are dropped and counted.
func TestRxTooLong(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig()) // MTU 1500
	ok := ethFrame(ownMAC, otherMAC, 1514, 1)
	long := ethFrame(ownMAC, otherMAC, 1600, 2)
	n := r.Dev.Drops().RxTooLong.Load()
	res := r.Dev.DeliverBatch(0, [][]byte{ok, long, ok})
	if res.Consumed != 3 || res.Written != 2 {
		t.Errorf("DeliverBatch = %+v, want 3 consumed, 2 written", res)
	}
	if d := r.Dev.Drops().RxTooLong.Load() - n; d != 1 {
		t.Errorf("Drops().RxTooLong grew by %d, want 1", d)
	}
	if err := sameFrames(receive(t, r, 0), [][]byte{ok, ok}); err != nil {
		t.Error(err)
	}
}

// Full ring: with no buffers DeliverBatch holds the frames (copies, in
// order) and reports Full; after the driver posts buffers and writes RXPROD,
// RxSpace fires and the next call, with or without new frames, writes the
// held frames first. Past PendingLimit it stops consuming (backpressure).
func TestRxFullThenSpace(t *testing.T) {
	cfg := vmxnet3test.DefaultConfig()
	cfg.NoFill = true
	r := upRig(t, cfg)
	space := r.Dev.RxSpace(0)
	select { // bring-up wrote RXPROD once
	case <-space:
	default:
	}
	var frames [][]byte
	for i := 0; i < 5; i++ {
		frames = append(frames, ethFrame(ownMAC, otherMAC, 100+i, byte(i)))
	}
	res := r.Dev.DeliverBatch(0, frames)
	if res.Consumed != 5 || res.Held != 5 || res.Written != 0 || !res.Full {
		t.Fatalf("DeliverBatch with no buffers = %+v, want all 5 held and Full", res)
	}
	if r.Dev.HeldFrames(0) != 5 {
		t.Fatalf("HeldFrames = %d", r.Dev.HeldFrames(0))
	}
	// The caller's buffers are free to reuse: the device copied them.
	for _, f := range frames {
		f[20] ^= 0xff
	}
	for _, f := range frames {
		f[20] ^= 0xff
	}
	if comps, _ := r.G.ReadRxCompletions(0); len(comps) != 0 {
		t.Fatalf("%d completions written with no buffers", len(comps))
	}
	if s := r.G.Stats(false, 0); s[vmxnet3.RxStatOutOfBuf] == 0 {
		t.Errorf("pktsRxOutOfBuf = 0 after a full ring")
	}
	select {
	case <-space:
		t.Fatal("RxSpace fired before the driver posted anything")
	default:
	}

	if n := r.G.PostRx(0, 2); n != 2 {
		t.Fatalf("PostRx posted %d", n)
	}
	select {
	case <-space:
	case <-time.After(5 * time.Second):
		t.Fatal("RxSpace did not fire after RXPROD")
	}
	extra := ethFrame(ownMAC, otherMAC, 200, 9)
	res = r.Dev.DeliverBatch(0, [][]byte{extra})
	if res.Consumed != 1 || res.Held != 1 || res.Written != 2 || !res.Full {
		t.Fatalf("DeliverBatch with 2 buffers = %+v, want 2 held frames written, the new one held, Full", res)
	}
	got := receive(t, r, 0) // refills the 2 slots and writes RXPROD (updateRxProd)
	select {
	case <-space:
	case <-time.After(5 * time.Second):
		t.Fatal("RxSpace did not fire after the refill")
	}
	r.G.PostRx(0, 8)
	if res = r.Dev.DeliverBatch(0, nil); res.Written != 4 || res.Full {
		t.Fatalf("DeliverBatch(nil) after refill = %+v, want the 4 held frames written", res)
	}
	got = append(got, receive(t, r, 0)...)
	if err := sameFrames(got, append(frames, extra)); err != nil {
		t.Errorf("frames out of order or lost: %v", err)
	}

	// Backpressure: with no buffers, at most PendingLimit frames are taken.
	var many [][]byte
	for i := 0; i < vmxnet3.PendingLimit+40; i++ {
		many = append(many, ethFrame(ownMAC, otherMAC, 100, byte(i)))
	}
	cfg2 := vmxnet3test.DefaultConfig()
	cfg2.NoFill = true
	r2 := upRig(t, cfg2)
	res = r2.Dev.DeliverBatch(0, many)
	if res.Consumed != vmxnet3.PendingLimit || !res.Full {
		t.Fatalf("DeliverBatch of %d with no buffers = %+v, want %d consumed", len(many), res, vmxnet3.PendingLimit)
	}
}

// §2.5: ACTIVATE writes txThreshold = 1 into every TxQueueDesc, sets
// updateRxProd (this device wants RXPROD writes), and zeroes both
// completion rings.
func TestActivateWritesQueueControl(t *testing.T) {
	cfg := vmxnet3test.DefaultConfig()
	cfg.NumTxQueues, cfg.NumRxQueues = 3, 2
	r := newRig(t, cfg)
	r.G.Prepare()
	l := r.G.Layout()
	for q := range l.Tx {
		_ = r.Mem.Write(l.Tx[q].Comp, bytes.Repeat([]byte{0xFF}, int(cfg.TxCompSize)*16))
	}
	for q := range l.Rx {
		_ = r.Mem.Write(l.Rx[q].Comp, bytes.Repeat([]byte{0xFF}, int(cfg.RxRingSize0+cfg.RxRingSize1)*16))
	}
	if got := r.G.Activate(); got != 0 {
		t.Fatalf("ACTIVATE: %#x", got)
	}
	for q := range l.Tx {
		if v := r.Mem.U32(r.G.QueueDescPA(true, q) + 4); v != 1 {
			t.Errorf("tx queue %d txThreshold (+4) = %d, want 1", q, v)
		}
		if v, _ := r.Mem.View(l.Tx[q].Comp, uint64(cfg.TxCompSize)*16); !bytes.Equal(v, make([]byte, len(v))) {
			t.Errorf("tx queue %d completion ring not zeroed", q)
		}
	}
	for q := range l.Rx {
		if v := r.Mem.U8(r.G.QueueDescPA(false, q) + 0); v != 1 {
			t.Errorf("rx queue %d updateRxProd (+0) = %d, want 1", q, v)
		}
		if v, _ := r.Mem.View(l.Rx[q].Comp, uint64(cfg.RxRingSize0+cfg.RxRingSize1)*16); !bytes.Equal(v, make([]byte, len(v))) {
			t.Errorf("rx queue %d completion ring not zeroed", q)
		}
	}
}

// §4.3, §4.6, §4.7: one completion per packet, in ring order, txdIdx = the
// EOP index, gen flipping on every wrap of the completion ring, over many
// laps of both rings, with multi-descriptor packets.
func TestTxCompletionsAcrossWraps(t *testing.T) {
	cfg := vmxnet3test.DefaultConfig()
	cfg.TxRingSize, cfg.TxCompSize, cfg.TxBufSize = 32, 32, 512
	r := upRig(t, cfg)
	wire := vmxnet3test.NewWire(4, 2048)
	l := r.G.Layout().Tx[0]
	pos := uint32(0) // driver's next tx slot, tracked independently
	ncomp := 0       // completions written so far
	seq := byte(0)
	for round := 0; round < 150; round++ {
		var frames [][]byte
		var eops []uint32
		for k := 0; k < 1+round%4; k++ {
			seq++
			n := 60 + (int(seq)*97)%1400 // up to 3 descriptors of 512
			frames = append(frames, ethFrame(otherMAC, ownMAC, n, seq))
			pos = (pos + uint32((n+511)/512)) % 32
			eops = append(eops, (pos+31)%32)
		}
		if err := r.G.PostTx(0, frames...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		sent, consumed := wire.Drain(r.Dev, 0)
		if consumed != len(frames) || len(sent) != len(frames) {
			t.Fatalf("round %d: sent %d consumed %d, want %d", round, len(sent), consumed, len(frames))
		}
		for i := range sent {
			if !bytes.Equal(sent[i].Frame, frames[i]) {
				t.Fatalf("round %d: frame %d differs", round, i)
			}
		}
		// The raw completion descriptors, byte for byte.
		for i, eop := range eops {
			c := ncomp + i
			pa := l.Comp + uint64(c%32)*16
			gen := byte(0)
			if (c/32)%2 == 0 {
				gen = 0x80
			}
			var got [16]byte
			_ = r.Mem.Read(pa, got[:])
			want := [16]byte{byte(eop), byte(eop >> 8), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, gen}
			if got != want {
				t.Fatalf("round %d: completion %d (slot %d) = % x, want % x", round, c, c%32, got, want)
			}
		}
		idx, err := r.G.ReapTxCompletions(0)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if fmt.Sprint(idx) != fmt.Sprint(eops) {
			t.Fatalf("round %d: txdIdx %v, want %v", round, idx, eops)
		}
		ncomp += len(eops)
	}
	if ncomp < 3*32 {
		t.Fatalf("only %d completions: fewer than 3 laps", ncomp)
	}
	if r.G.TxOutstanding(0) != 0 {
		t.Errorf("%d descriptors outstanding at the end", r.G.TxOutstanding(0))
	}
}

// §4.3: a packet without cq gets no completion; a later completion frees it.
func TestTxNoCQ(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	f := ethFrame(otherMAC, ownMAC, 60, 1)
	for i := 0; i < 3; i++ {
		if _, err := r.G.PostTxPacket(0, vmxnet3test.Packet{Segs: [][]byte{f}, NoCQ: i < 2}); err != nil {
			t.Fatal(err)
		}
	}
	r.G.KickTx(0)
	sent, _ := vmxnet3test.NewWire(4, 2048).Drain(r.Dev, 0)
	idx, err := r.G.ReapTxCompletions(0)
	if len(sent) != 3 || err != nil || fmt.Sprint(idx) != "[2]" {
		t.Errorf("sent %d, completions %v (%v); want 3, [2]", len(sent), idx, err)
	}
	if r.G.TxOutstanding(0) != 0 {
		t.Errorf("%d descriptors outstanding", r.G.TxOutstanding(0))
	}
}

// §4.2: ti/tci come from the SOP descriptor only.
func TestTxVLANInsertMeta(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	f := ethFrame(otherMAC, ownMAC, 100, 1)
	if _, err := r.G.PostTxPacket(0, vmxnet3test.Packet{Segs: [][]byte{f[:50], f[50:]}, TI: true, TCI: 0x2064}); err != nil {
		t.Fatal(err)
	}
	buf := r.G.Layout().Tx[0].Bufs + 16*2048
	_ = r.Mem.Write(buf, f)
	r.G.PostTxRaw(0,
		vmxnet3.TxDesc{Addr: buf, Len: 50},
		vmxnet3.TxDesc{Addr: buf + 50, Len: 50, EOP: true, CQ: true, TI: true, TCI: 0x0FFF, OM: vmxnet3.OMTSO})
	sent, n := vmxnet3test.NewWire(4, 2048).Drain(r.Dev, 0)
	if n != 2 || len(sent) != 2 {
		t.Fatalf("sent %d consumed %d, want 2, 2", len(sent), n)
	}
	if m := sent[0].Meta; !m.TI || m.TCI != 0x2064 {
		t.Errorf("SOP ti/tci: meta %+v, want TI, 0x2064", m)
	}
	if m := sent[1].Meta; m.TI || m.TCI != 0 {
		t.Errorf("ti/tci/om on the EOP descriptor were used: meta %+v", m)
	}
	for i := range sent {
		if !bytes.Equal(sent[i].Frame, f) {
			t.Errorf("frame %d differs", i)
		}
	}
}

// A packet larger than the caller's buffer is dropped, completed and counted.
func TestTxOversize(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	small, big := ethFrame(otherMAC, ownMAC, 80, 1), ethFrame(otherMAC, ownMAC, 200, 2)
	if err := r.G.PostTx(0, small, big, small); err != nil {
		t.Fatal(err)
	}
	sent, n := vmxnet3test.NewWire(4, 128).Drain(r.Dev, 0)
	if n != 3 || len(sent) != 2 {
		t.Fatalf("sent %d consumed %d, want 2, 3", len(sent), n)
	}
	if idx, err := r.G.ReapTxCompletions(0); err != nil || len(idx) != 3 {
		t.Errorf("completions %v (%v), want 3", idx, err)
	}
	if d := r.Dev.Drops().TxOversize.Load(); d != 1 {
		t.Errorf("Drops().TxOversize = %d, want 1", d)
	}
	if s := r.G.Stats(true, 0); s[vmxnet3.TxStatErrors] != 1 {
		t.Errorf("pktsTxError = %d, want 1", s[vmxnet3.TxStatErrors])
	}
}

// udpFrame serializes Ethernet/IPv4/UDP with correct checksums (gopacket).
func udpFrame(t *testing.T, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr(ownMAC[:]), DstMAC: net.HardwareAddr(otherMAC[:]), EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: net.IP{10, 1, 2, 3}, DstIP: net.IP{192, 168, 200, 7}}
	udp := &layers.UDP{SrcPort: 40000, DstPort: 4789}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// pseudoSum is the folded (not complemented) IPv4 pseudo-header sum a
// driver seeds the L4 checksum field with for OM_CSUM (§4.2).
func pseudoSum(f []byte) uint16 {
	ip := f[14:34]
	s := uint32(0)
	for i := 12; i < 20; i += 2 {
		s += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	s += uint32(ip[9])
	s += uint32(binary.BigEndian.Uint16(f[38:])) // UDP length (the frame may be padded)
	for s>>16 != 0 {
		s = s&0xFFFF + s>>16
	}
	return uint16(s)
}

// §4.2 OM_CSUM: hlen = L2+L3 length, msscof = hlen + 6 for UDP; the device
// computes the UDP checksum. Checked against gopacket's serializer and its
// checksum verification.
func TestTxChecksumOffloadUDP(t *testing.T) {
	zeroSum := func(t *testing.T) []byte {
		// A payload whose UDP checksum computes to 0, which RFC 768
		// transmits as 0xFFFF (0 would mean "no checksum").
		p := make([]byte, 64)
		for i := range p[:62] {
			p[i] = byte(i * 13)
		}
		f := udpFrame(t, p) // its checksum is ^sum(everything but p[62:64])
		c := binary.BigEndian.Uint16(f[40:])
		binary.BigEndian.PutUint16(p[62:], c)
		return p
	}
	cases := []struct {
		name    string
		payload func(t *testing.T) []byte
		split   []int // descriptor boundaries
	}{
		{"empty", func(*testing.T) []byte { return nil }, nil},
		{"1 byte", func(*testing.T) []byte { return []byte{0xAB} }, nil},
		{"odd 17", func(*testing.T) []byte { return bytes.Repeat([]byte{0x5A}, 17) }, nil},
		{"1000 in 3 descriptors", func(*testing.T) []byte { return bytes.Repeat([]byte{1, 2, 3, 4, 5}, 200) }, []int{35, 301}},
		{"1472 max", func(*testing.T) []byte { return bytes.Repeat([]byte{0xFF, 0x00, 0x7F}, 491)[:1472] }, []int{41}},
		{"checksum computes to zero", zeroSum, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := upRig(t, vmxnet3test.DefaultConfig())
			want := udpFrame(t, c.payload(t))
			f := append([]byte(nil), want...)
			binary.BigEndian.PutUint16(f[40:], pseudoSum(f))
			var segs [][]byte
			at := 0
			for _, s := range c.split {
				segs = append(segs, f[at:s])
				at = s
			}
			segs = append(segs, f[at:])
			if _, err := r.G.PostTxPacket(0, vmxnet3test.Packet{Segs: segs, OM: vmxnet3.OMCsum, HLen: 34, MSSCOF: 34 + 6}); err != nil {
				t.Fatal(err)
			}
			sent, _ := vmxnet3test.NewWire(4, 2048).Drain(r.Dev, 0)
			if len(sent) != 1 {
				t.Fatalf("sent %d frames, want 1", len(sent))
			}
			got := sent[0].Frame
			pkt := gopacket.NewPacket(got, layers.LayerTypeEthernet, gopacket.Default)
			udp, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if udp == nil || pkt.NetworkLayer() == nil {
				t.Fatalf("gopacket found no IPv4/UDP layers: %v", pkt.ErrorLayer())
			}
			if err := udp.SetNetworkLayerForChecksum(pkt.NetworkLayer()); err != nil {
				t.Fatal(err)
			}
			err, res := udp.VerifyChecksum()
			if err != nil || !res.Valid || res.Actual != res.Correct {
				t.Errorf("UDP checksum %#04x: valid %v, correct %#04x (%v)", res.Actual, res.Valid, res.Correct, err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("frame differs from gopacket's: checksum %#04x, want %#04x", binary.BigEndian.Uint16(got[40:]), binary.BigEndian.Uint16(want[40:]))
			}
			// The guest's buffer is not modified (the device reads it only).
			if v, _ := r.Mem.View(r.G.Layout().Tx[0].Bufs+34, 8); binary.BigEndian.Uint16(v[6:]) != pseudoSum(f) && len(c.split) == 0 {
				t.Errorf("device wrote the checksum into guest memory")
			}
		})
	}
}

// §4.2: a checksum offset past the frame or beyond hlen + 1024 is refused,
// counted, and the packet completed.
func TestTxChecksumOffloadBadOffsets(t *testing.T) {
	for _, c := range []struct {
		name         string
		hlen, msscof uint16
	}{
		{"offset past end", 34, 200},
		{"offset before hlen", 34, 20},
		{"hlen past end", 300, 306},
		{"offset > hlen + 1024", 0, 1026},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := upRig(t, vmxnet3test.DefaultConfig())
			f := ethFrame(otherMAC, ownMAC, 100, 1)
			if c.name == "offset > hlen + 1024" {
				f = ethFrame(otherMAC, ownMAC, 1400, 1)
			}
			if _, err := r.G.PostTxPacket(0, vmxnet3test.Packet{Segs: [][]byte{f}, OM: vmxnet3.OMCsum, HLen: c.hlen, MSSCOF: c.msscof}); err != nil {
				t.Fatal(err)
			}
			sent, n := vmxnet3test.NewWire(4, 2048).Drain(r.Dev, 0)
			if n != 1 || len(sent) != 0 {
				t.Errorf("sent %d consumed %d, want 0, 1", len(sent), n)
			}
			if idx, err := r.G.ReapTxCompletions(0); err != nil || len(idx) != 1 {
				t.Errorf("completions %v (%v), want 1", idx, err)
			}
			if d := r.Dev.Drops().TxUnsupported.Load(); d != 1 {
				t.Errorf("Drops().TxUnsupported = %d, want 1", d)
			}
		})
	}
}

// §4.5, §4.8: the raw bytes of a written RxCompDesc.
func TestRxCompletionBytes(t *testing.T) {
	cfg := vmxnet3test.DefaultConfig()
	cfg.NumRxQueues = 2
	r := upRig(t, cfg)
	f := ethFrame(ownMAC, otherMAC, 1000, 1)
	if res := r.Dev.DeliverBatch(1, [][]byte{f}); res.Written != 1 {
		t.Fatalf("DeliverBatch = %+v", res)
	}
	var got [16]byte
	_ = r.Mem.Read(r.G.Layout().Rx[1].Comp, got[:])
	// dw0: rxdIdx 0, eop|sop (0xC000), rqID 1 (<<16), cnc (bit 30);
	// dw1 0; dw2: len 1000 = 0x3E8; dw3: type 3 (<<24), gen (bit 31).
	want := [16]byte{0x00, 0xC0, 0x01, 0x40, 0, 0, 0, 0, 0xE8, 0x03, 0, 0, 0, 0, 0, 0x83}
	if got != want {
		t.Errorf("RxCompDesc = % x, want % x", got, want)
	}
}
