package vic_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// TestIsolationQueueErrors: on one adapter, misbehaving guests post
// descriptors that point outside their guest memory. Each one's queue stops
// with status error 0x80000007 (invalid descriptor, spec §4.9), the event
// is raised in its DriverShared.ecr, and GET_QUEUE_STATUS reports it in the
// queue descriptor; meanwhile vNIC B on the same adapter sends and receives
// thousands of frames with exact counts.
func TestIsolationQueueErrors(t *testing.T) {
	r := newRig(t, 0, 0)
	fr := r.startReader()
	const bVif, chunk = 20, 700
	b := r.newVM(t, bVif, vmOpts{})
	r.a.SetVifVLAN(bVif, 10)

	// B's traffic runs across all the misbehaving guests below: its guest
	// sends a chunk as each one misbehaves, and the FI sends to it all along.
	const nB = chunk * 7 // a chunk now, one per fault below, one at the end
	b.send(chunk)
	down := make([][]byte, nB)
	for i := range down {
		down[i] = downFrame(bVif, uint64(i), ptr(wire.TCI(0, 10)))
	}
	var wg sync.WaitGroup
	var sendErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		sendErr = sendFrames(r.fiPort, down)
	}()

	memEnd := uint64(8 << 20)
	txCases := []struct {
		name  string
		descs []vmxnet3.TxDesc // the bad packet, Addr 0 = a valid buffer
	}{
		{"beyond-end", []vmxnet3.TxDesc{{Addr: memEnd, Len: 100, EOP: true, CQ: true}}},
		{"straddles-end", []vmxnet3.TxDesc{{Addr: memEnd - 50, Len: 100, EOP: true, CQ: true}}},
		{"wraps-2^64", []vmxnet3.TxDesc{{Addr: ^uint64(0) - 20, Len: 100, EOP: true, CQ: true}}},
		{"len0-is-16K-past-end", []vmxnet3.TxDesc{{Addr: memEnd - 4096, Len: 16384, EOP: true, CQ: true}}},
		{"second-buffer-of-packet", []vmxnet3.TxDesc{{Len: 40}, {Addr: memEnd + 4096, Len: 60, EOP: true, CQ: true}}},
	}
	for i, tc := range txCases {
		t.Run("tx/"+tc.name, func(t *testing.T) {
			b.send(chunk)
			vif := uint16(100 + i)
			a := r.newVM(t, vif, vmOpts{noRun: true})
			tx := newRawTx(a)
			mk := func(seq uint64) []byte {
				return probeFrame(fiMAC, vmMAC(vif), vmIP(vif), peerIP, wire.Probe{SrcVM: uint32(vif), Seq: seq}, 0)
			}
			tx.frame(mk(0), false, 0) // a good packet before the bad one goes out
			for _, d := range tc.descs {
				if d.Addr == 0 {
					d.Addr = tx.buf(tx.next)
				}
				tx.post(d)
			}
			tx.frame(mk(1), false, 0) // never sent: the queue has stopped
			tx.doorbell()
			dev := a.vnic.Device()
			waitUntil(t, "the tx queue to stop", func() bool { s, _ := dev.QueueError(true, 0); return s })
			if s, code := dev.QueueError(true, 0); !s || code != vmxnet3.QErrInvalidDesc {
				t.Errorf("QueueError(tx) = %v, %#x; want true, %#x", s, code, vmxnet3.QErrInvalidDesc)
			}
			checkQueueErrorSeen(t, a, true)
			got := fr.waitVif(t, vif, 1)
			if seqs := seqsOf(t, got); len(seqs) != 1 || seqs[0] != 0 {
				t.Errorf("uplink got seqs %v from vif %d, want [0]", seqs, vif)
			}
			// The good packet was completed (gen 1, txdIdx 0), and nothing else.
			l := a.drv.Layout()
			if dw3 := a.m.U32(l.TxComp + vmxnet3.TxCompDW3); dw3&vmxnet3.CompGenBit == 0 || a.m.U32(l.TxComp)&vmxnet3.TxCompIdxMask != 0 {
				t.Errorf("first tx completion dw0 %#x dw3 %#x, want txdIdx 0 with gen 1", a.m.U32(l.TxComp), dw3)
			}
			if dw3 := a.m.U32(l.TxComp + vmxnet3.DescSize + vmxnet3.TxCompDW3); dw3 != 0 {
				t.Errorf("second tx completion dw3 = %#x, want none written", dw3)
			}
			if n := dev.Drops().TxQueueError.Load(); n != 1 {
				t.Errorf("device TxQueueError drops = %d, want 1", n)
			}
			// A doorbell on a stopped queue sends nothing; rx still works.
			tx.frame(mk(2), false, 0)
			tx.doorbell()
			r.sendDown(t, downFrame(vif, 0, nil), downFrame(vif, 1, nil))
			waitUntil(t, "A's rx to take 2 frames", func() bool { return a.vnic.Stats().RxFrames == 2 })
			if s, code := dev.QueueError(false, 0); s || code != 0 {
				t.Errorf("QueueError(rx) = %v, %#x; want a running rx queue", s, code)
			}
		})
	}

	t.Run("rx/head-buffer-outside-memory", func(t *testing.T) {
		b.send(chunk)
		const vif = 120
		a := r.newVM(t, vif, vmOpts{noRun: true})
		// Re-post rx ring 0 slot 0 with a buffer beyond guest memory, keeping
		// its gen, before the device uses it.
		l := a.drv.Layout()
		a.m.PutU64(l.RxRing0+vmxnet3.RxDescAddr, memEnd-64)
		r.sendDown(t, downFrame(vif, 0, nil), downFrame(vif, 1, nil), downFrame(vif, 2, nil))
		dev := a.vnic.Device()
		waitUntil(t, "the rx queue to stop", func() bool { s, _ := dev.QueueError(false, 0); return s })
		if s, code := dev.QueueError(false, 0); !s || code != vmxnet3.QErrInvalidDesc {
			t.Errorf("QueueError(rx) = %v, %#x; want true, %#x", s, code, vmxnet3.QErrInvalidDesc)
		}
		waitUntil(t, "the 3 frames to be counted as dropped", func() bool { return a.vnic.Stats().RxDropped == 3 })
		checkQueueErrorSeen(t, a, false)
		if st := a.vnic.Stats(); st.RxFrames != 0 {
			t.Errorf("vNIC RxFrames = %d, want 0", st.RxFrames)
		}
	})

	b.send(nB - int(b.wl.target.Load()))
	wg.Wait()
	if sendErr != nil {
		t.Fatalf("FI send to B: %v", sendErr)
	}
	waitUntil(t, fmt.Sprintf("B's guest to receive %d frames", nB), func() bool { return b.wl.rx.Load() >= nB })
	up := fr.waitVif(t, bVif, nB)
	checkSeqs(t, "uplink from B", seqsOf(t, up), nB)
	checkSeqs(t, "B's guest", b.wl.received(), nB)
	st := b.vnic.Stats()
	if st.TxFrames != nB || st.RxFrames != nB || st.RxDropped != 0 || st.TxDropped != 0 {
		t.Errorf("B's vNIC stats %+v, want %d each way and no drops", st, nB)
	}
	if ds := b.drv.Stats(); ds.TxPackets != nB || ds.RxPackets != nB || ds.QueueErrors != 0 || ds.Resets != 0 {
		t.Errorf("B's driver stats %+v", ds)
	}
	for i := range txCases {
		if n := fr.count(uint16(100 + i)); n != 1 {
			t.Errorf("uplink got %d frames from misbehaving vif %d, want 1", n, 100+i)
		}
	}
	if d := dropsOf(r.a); d != (drops{}) {
		t.Errorf("adapter drops %+v, want none", d)
	}
}

// checkQueueErrorSeen checks what the guest of a stopped queue sees: the
// event bit in DriverShared.ecr and the event vector raised, then, after
// GET_QUEUE_STATUS, status.stopped and status.error in the queue
// descriptor in guest memory (spec §4.9, §5.4).
func checkQueueErrorSeen(t *testing.T, g *vm, tx bool) {
	t.Helper()
	l := g.drv.Layout()
	bit, qd, other := uint32(vmxnet3.EventRQErr), l.QueueDesc+vmxnet3.QueueDescSize, l.QueueDesc
	if tx {
		bit, qd, other = vmxnet3.EventTQErr, l.QueueDesc, l.QueueDesc+vmxnet3.QueueDescSize
	}
	waitUntil(t, "the queue error event in DriverShared.ecr", func() bool {
		return g.m.LoadU32Acquire(l.Shared+vmxnet3.DSECR)&bit != 0
	})
	const eventVector = 1 // the driver's eventIntrIdx
	waitUntil(t, "the event interrupt", func() bool { return g.sink.n[eventVector].Load() > 0 })
	bar1 := g.vnic.BAR1()
	bar1.Write32(vmxnet3.RegCMD, vmxnet3.CmdGetQueueStatus)
	if res := bar1.Read32(vmxnet3.RegCMD); res != 0 {
		t.Errorf("GET_QUEUE_STATUS result %#x, want 0", res)
	}
	if s, e := g.m.U8(qd+vmxnet3.QStatusStopped), g.m.U32(qd+vmxnet3.QStatusError); s != 1 || e != vmxnet3.QErrInvalidDesc {
		t.Errorf("queue descriptor status stopped=%d error=%#x, want 1, %#x", s, e, vmxnet3.QErrInvalidDesc)
	}
	if s, e := g.m.U8(other+vmxnet3.QStatusStopped), g.m.U32(other+vmxnet3.QStatusError); s != 0 || e != 0 {
		t.Errorf("the other queue's status stopped=%d error=%#x, want 0, 0", s, e)
	}
	// Acknowledging clears the bit (write-1-to-clear).
	bar1.Write32(vmxnet3.RegECR, bit)
	if ecr := g.m.LoadU32Acquire(l.Shared + vmxnet3.DSECR); ecr&bit != 0 {
		t.Errorf("ecr = %#x after acknowledging %#x", ecr, bit)
	}
}

// TestRxWaitsLossless: a guest whose rx ring runs empty makes the rx engine
// wait, not drop; once the guest posts buffers delivery resumes in order,
// with no frame lost or duplicated, under a burst several times the ring.
func TestRxWaitsLossless(t *testing.T) {
	r := newRig(t, 0, 0)
	const vif = 4
	g := r.newVM(t, vif, vmOpts{noRun: true})
	posted := int(g.drv.Layout().RxSize0) - 1 // Up posts all but one slot
	n := 3*int(g.drv.Layout().RxSize0) + 17
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = downFrame(vif, uint64(i), nil)
	}
	errc := make(chan error, 1)
	go func() { errc <- sendFrames(r.fiPort, frames) }()
	waitUntil(t, "the adapter to wait for rx buffers", func() bool {
		st := g.vnic.Stats()
		return st.RxWaits > 0 && st.RxFrames == uint64(posted)
	})
	if st := g.vnic.Stats(); st.RxDropped != 0 || dropTotal(r.a) != 0 {
		t.Fatalf("frames dropped while the guest had no buffers: vNIC %+v, adapter %+v", st, dropsOf(r.a))
	}
	g.run()
	if err := <-errc; err != nil {
		t.Fatalf("FI send: %v", err)
	}
	waitUntil(t, fmt.Sprintf("%d frames in the guest", n), func() bool { return g.wl.rx.Load() >= int64(n) })
	checkSeqs(t, "guest", g.wl.received(), n)
	// The engine counts a batch after the guest can see it.
	waitUntil(t, "the vNIC to count every frame", func() bool { return g.vnic.Stats().RxFrames >= uint64(n) })
	st := g.vnic.Stats()
	if st.RxFrames != uint64(n) || st.RxDropped != 0 || st.RxWaits == 0 {
		t.Errorf("vNIC stats %+v, want RxFrames %d, no drops, some waits", st, n)
	}
	if ds := g.drv.Stats(); ds.RxPackets != uint64(n) || ds.RxErrors != 0 {
		t.Errorf("driver stats %+v", ds)
	}
}

// TestDeletedVNIC: once its vNIC is deleted, a vif's frames are dropped as
// unknown-vif and its guest's doorbells send nothing; a vNIC deleted while
// the rx engine waits for its buffers releases the engine for the others.
func TestDeletedVNIC(t *testing.T) {
	t.Run("frames-dropped-unknown-vif", func(t *testing.T) {
		r := newRig(t, 0, 0)
		const dVif, eVif = 7, 8
		d := r.newVM(t, dVif, vmOpts{})
		e := r.newVM(t, eVif, vmOpts{})
		r.sendDown(t, downFrame(dVif, 0, nil), downFrame(dVif, 1, nil))
		waitUntil(t, "D's 2 frames", func() bool { return d.wl.rx.Load() == 2 })
		if err := r.a.DeleteVNIC(dVif); err != nil {
			t.Fatal(err)
		}
		if _, ok := r.a.VNIC(dVif); ok {
			t.Error("VNIC(deleted vif) still found")
		}
		const n = 10
		for i := 0; i < n; i++ {
			r.sendDown(t, downFrame(dVif, uint64(2+i), nil))
		}
		r.sendDown(t, downFrame(eVif, 0, nil))
		waitUntil(t, "E's frame", func() bool { return e.wl.rx.Load() == 1 })
		if got := dropsOf(r.a); got != (drops{UnknownVif: n}) {
			t.Errorf("adapter drops %+v, want UnknownVif %d only", got, n)
		}
		if st := d.vnic.Stats(); st.RxFrames != 2 || st.RxDropped != 0 {
			t.Errorf("deleted vNIC stats %+v, want the 2 frames before deletion", st)
		}
		if got := d.wl.rx.Load(); got != 2 {
			t.Errorf("deleted vNIC's guest received %d frames, want 2", got)
		}
	})

	t.Run("doorbell-after-delete-sends-nothing", func(t *testing.T) {
		r := newRig(t, 0, 0)
		fr := r.startReader()
		const dVif, eVif = 7, 8
		d := r.newVM(t, dVif, vmOpts{noRun: true})
		e := r.newVM(t, eVif, vmOpts{})
		tx := newRawTx(d)
		tx.frame(probeFrame(fiMAC, vmMAC(dVif), vmIP(dVif), peerIP, wire.Probe{}, 0), false, 0)
		if err := r.a.DeleteVNIC(dVif); err != nil {
			t.Fatal(err)
		}
		tx.doorbell()
		e.send(1)
		fr.waitVif(t, eVif, 1)
		if n := fr.count(dVif); n != 0 {
			t.Errorf("uplink got %d frames from the deleted vif", n)
		}
		if err := r.a.DeleteVNIC(dVif); err == nil {
			t.Error("second DeleteVNIC succeeded")
		}
	})

	t.Run("delete-while-rx-waits", func(t *testing.T) {
		r := newRig(t, 0, 0)
		const dVif, eVif = 7, 8
		d := r.newVM(t, dVif, vmOpts{noRun: true})
		e := r.newVM(t, eVif, vmOpts{})
		nD := int(d.drv.Layout().RxSize0) + 100
		const nE = 50
		var frames [][]byte
		for i := 0; i < nD; i++ {
			frames = append(frames, downFrame(dVif, uint64(i), nil))
		}
		for i := 0; i < nE; i++ {
			frames = append(frames, downFrame(eVif, uint64(i), nil))
		}
		for i := 0; i < 20; i++ {
			frames = append(frames, downFrame(dVif, uint64(nD+i), nil))
		}
		r.sendDown(t, frames...)
		waitUntil(t, "the adapter to wait for D's buffers", func() bool { return d.vnic.Stats().RxWaits > 0 })
		if err := r.a.DeleteVNIC(dVif); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, fmt.Sprintf("E's %d frames behind D's", nE), func() bool { return e.wl.rx.Load() >= nE })
		checkSeqs(t, "E's guest", e.wl.received(), nE)
		waitUntil(t, "every D frame accounted for", func() bool {
			st := d.vnic.Stats()
			return st.RxFrames+st.RxDropped+r.a.Drops().UnknownVif.Load() == uint64(nD+20)
		})
		st := d.vnic.Stats()
		if st.RxFrames != uint64(d.drv.Layout().RxSize0-1) {
			t.Errorf("D's RxFrames = %d, want the %d buffers it had", st.RxFrames, d.drv.Layout().RxSize0-1)
		}
		if got := r.a.Drops().UnknownVif.Load(); got < 20 {
			t.Errorf("UnknownVif = %d, want at least the 20 frames sent after deletion", got)
		}
	})

	t.Run("vif-reused", func(t *testing.T) {
		r := newRig(t, 0, 0)
		const vif = 9
		old := r.newVM(t, vif, vmOpts{})
		if err := r.a.DeleteVNIC(vif); err != nil {
			t.Fatal(err)
		}
		fresh := r.newVM(t, vif, vmOpts{})
		r.sendDown(t, downFrame(vif, 0, nil))
		waitUntil(t, "the new vNIC's frame", func() bool { return fresh.wl.rx.Load() == 1 })
		if old.wl.rx.Load() != 0 || old.vnic.Stats().RxFrames != 0 {
			t.Error("the deleted vNIC received a frame for its reused vif")
		}
	})
}
