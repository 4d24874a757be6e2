package vmxnet3_test

// Misbehaving-driver tests (STYLE item 17): a guest that writes a bad
// DriverShared, hostile tx chains or bad rx buffers must get the spec's
// answer (ACTIVATE fails, the queue stops with its §4.9 code and an ECR
// event), never a panic, and must not disturb a second device next to it.

import (
	"testing"
	"time"

	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/vmxnet3/vmxnet3test"
)

// §2.5, §3, §4.1, §5.1: ACTIVATE_DEV reads back non-zero and leaves the
// device inactive for every configuration it must refuse.
func TestActivateRejects(t *testing.T) {
	type rig = vmxnet3test.Rig
	ds := func(r *rig) uint64 { return r.G.Layout().Shared }
	tq := func(r *rig) uint64 { return r.G.QueueDescPA(true, 0) }
	rq := func(r *rig) uint64 { return r.G.QueueDescPA(false, 0) }
	size := func(r *rig) uint64 { return r.Mem.Size() }
	cases := []struct {
		name   string
		cfg    func(*vmxnet3test.Config)
		mutate func(r *rig)
	}{
		{"bad magic", nil, func(r *rig) { r.Mem.PutU32(ds(r)+vmxnet3.DSMagic, 0xBABEFEE0) }},
		{"zero magic", nil, func(r *rig) { r.Mem.PutU32(ds(r)+vmxnet3.DSMagic, 0) }},
		{"0 tx queues", nil, func(r *rig) { r.Mem.PutU8(ds(r)+vmxnet3.DSNumTxQueues, 0) }},
		{"0 rx queues", nil, func(r *rig) { r.Mem.PutU8(ds(r)+vmxnet3.DSNumRxQueues, 0) }},
		{"9 tx queues", nil, func(r *rig) { r.Mem.PutU8(ds(r)+vmxnet3.DSNumTxQueues, 9) }},
		{"17 rx queues", nil, func(r *rig) { r.Mem.PutU8(ds(r)+vmxnet3.DSNumRxQueues, 17) }},
		{"255 tx queues", nil, func(r *rig) { r.Mem.PutU8(ds(r)+vmxnet3.DSNumTxQueues, 255) }},
		{"tx ring size 48", nil, func(r *rig) { r.Mem.PutU32(tq(r)+vmxnet3.TQTxRingSize, 48) }},
		{"tx ring size 0", nil, func(r *rig) { r.Mem.PutU32(tq(r)+vmxnet3.TQTxRingSize, 0) }},
		{"tx ring size 4128", nil, func(r *rig) { r.Mem.PutU32(tq(r)+vmxnet3.TQTxRingSize, 4128) }},
		{"rx ring 0 size 40", nil, func(r *rig) { r.Mem.PutU32(rq(r)+vmxnet3.RQRxRingSize0, 40) }},
		{"rx ring 0 size 8192", nil, func(r *rig) { r.Mem.PutU32(rq(r)+vmxnet3.RQRxRingSize0, 8192) }},
		{"rx ring 1 size 33", nil, func(r *rig) { r.Mem.PutU32(rq(r)+vmxnet3.RQRxRingSize1, 33) }},
		{"rx ring 1 size 4160", nil, func(r *rig) { r.Mem.PutU32(rq(r)+vmxnet3.RQRxRingSize1, 4160) }},
		{"tx comp size 4097", nil, func(r *rig) { r.Mem.PutU32(tq(r)+vmxnet3.TQCompRingSize, 4097) }},
		{"tx comp size 0", nil, func(r *rig) { r.Mem.PutU32(tq(r)+vmxnet3.TQCompRingSize, 0) }},
		{"rx comp size 8193", nil, func(r *rig) { r.Mem.PutU32(rq(r)+vmxnet3.RQCompRingSize, 8193) }},
		{"tx ring base +256", nil, func(r *rig) { r.Mem.PutU64(tq(r)+vmxnet3.TQTxRingBasePA, r.G.Layout().Tx[0].Ring+256) }},
		{"tx comp base +16", nil, func(r *rig) { r.Mem.PutU64(tq(r)+vmxnet3.TQCompRingBasePA, r.G.Layout().Tx[0].Comp+16) }},
		{"rx ring 0 base +8", nil, func(r *rig) { r.Mem.PutU64(rq(r)+vmxnet3.RQRxRingBasePA0, r.G.Layout().Rx[0].Ring[0]+8) }},
		{"rx ring 1 base +128", nil, func(r *rig) { r.Mem.PutU64(rq(r)+vmxnet3.RQRxRingBasePA1, r.G.Layout().Rx[0].Ring[1]+128) }},
		{"rx comp base +64", nil, func(r *rig) { r.Mem.PutU64(rq(r)+vmxnet3.RQCompRingBasePA, r.G.Layout().Rx[0].Comp+64) }},
		{"tx ring past memory", nil, func(r *rig) { r.Mem.PutU64(tq(r)+vmxnet3.TQTxRingBasePA, size(r)) }},
		{"tx ring straddles end", nil, func(r *rig) { r.Mem.PutU64(tq(r)+vmxnet3.TQTxRingBasePA, size(r)-512) }},
		{"tx comp far away", nil, func(r *rig) { r.Mem.PutU64(tq(r)+vmxnet3.TQCompRingBasePA, 1<<40) }},
		{"rx ring 0 wraps 2^64", nil, func(r *rig) { r.Mem.PutU64(rq(r)+vmxnet3.RQRxRingBasePA0, 0xFFFFFFFFFFFFFE00) }},
		{"rx ring 1 past memory", nil, func(r *rig) { r.Mem.PutU64(rq(r)+vmxnet3.RQRxRingBasePA1, size(r)) }},
		{"rx comp straddles end", nil, func(r *rig) { r.Mem.PutU64(rq(r)+vmxnet3.RQCompRingBasePA, size(r)-512) }},
		{"queue table past memory", nil, func(r *rig) { r.Mem.PutU64(ds(r)+vmxnet3.DSQueueDescPA, size(r)) }},
		{"queue table straddles end", nil, func(r *rig) { r.Mem.PutU64(ds(r)+vmxnet3.DSQueueDescPA, size(r)-256) }},
		{"queue table wraps 2^64", nil, func(r *rig) { r.Mem.PutU64(ds(r)+vmxnet3.DSQueueDescPA, 0xFFFFFFFFFFFFFF80) }},
		{"queue table not 128-aligned", nil, func(r *rig) { r.Mem.PutU64(ds(r)+vmxnet3.DSQueueDescPA, r.G.Layout().QueueDesc+64) }},
		{"queue table too short for 8 tx queues", nil, func(r *rig) {
			r.Mem.PutU8(ds(r)+vmxnet3.DSNumTxQueues, 8)
			r.Mem.PutU64(ds(r)+vmxnet3.DSQueueDescPA, size(r)-4*256)
		}},
		{"MTU 59", nil, func(r *rig) { r.Mem.PutU32(ds(r)+vmxnet3.DSMTU, 59) }},
		{"MTU 0", nil, func(r *rig) { r.Mem.PutU32(ds(r)+vmxnet3.DSMTU, 0) }},
		{"MTU 9001", nil, func(r *rig) { r.Mem.PutU32(ds(r)+vmxnet3.DSMTU, 9001) }},
		{"MTU 65536", nil, func(r *rig) { r.Mem.PutU32(ds(r)+vmxnet3.DSMTU, 65536) }},
		{"tx intrIdx 25", nil, func(r *rig) { r.Mem.PutU8(tq(r)+vmxnet3.TQIntrIdx, 25) }},
		{"rx intrIdx 255", nil, func(r *rig) { r.Mem.PutU8(rq(r)+vmxnet3.RQIntrIdx, 255) }},
		{"eventIntrIdx 25", nil, func(r *rig) { r.Mem.PutU8(ds(r)+vmxnet3.DSEventIntrIdx, 25) }},
		{"second rx queue intrIdx 25", func(c *vmxnet3test.Config) { c.NumRxQueues = 2 },
			func(r *rig) { r.Mem.PutU8(r.G.QueueDescPA(false, 1)+vmxnet3.RQIntrIdx, 25) }},
		{"second tx queue ring unaligned", func(c *vmxnet3test.Config) { c.NumTxQueues = 2 },
			func(r *rig) {
				r.Mem.PutU64(r.G.QueueDescPA(true, 1)+vmxnet3.TQTxRingBasePA, r.G.Layout().Tx[1].Ring+32)
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := vmxnet3test.DefaultConfig()
			if c.cfg != nil {
				c.cfg(&cfg)
			}
			r := newRig(t, cfg)
			r.G.Prepare()
			c.mutate(r)
			if got := r.G.Activate(); got == 0 {
				t.Fatalf("ACTIVATE_DEV: CMD reads 0, want non-zero")
			}
			if r.Dev.Active() {
				t.Fatalf("Active() = true after a failed ACTIVATE_DEV")
			}
			// Nothing moves while inactive.
			if err := r.G.PostTx(0, ethFrame(otherMAC, ownMAC, 60, 1)); err != nil {
				t.Fatal(err)
			}
			if sent, n := vmxnet3test.NewWire(4, 2048).Drain(r.Dev, 0); n != 0 || len(sent) != 0 {
				t.Errorf("inactive device sent %d frames, consumed %d", len(sent), n)
			}
			if res := r.Dev.DeliverBatch(0, [][]byte{ethFrame(ownMAC, otherMAC, 60, 1)}); res.Written != 0 {
				t.Errorf("inactive device received: %+v", res)
			}
			// The same device accepts a correct configuration afterwards.
			r.G.Prepare()
			if got := r.G.Activate(); got != 0 || !r.Dev.Active() {
				t.Fatalf("ACTIVATE_DEV after fixing DriverShared: CMD %#x, Active %v; want 0, true", got, r.Dev.Active())
			}
			if err := r.CheckGuard(); err != nil {
				t.Error(err)
			}
		})
	}
}

// §1.4, §2.5: DriverShared itself outside memory, or a DSAL never
// completed by DSAH, cannot be activated.
func TestActivateSharedAddress(t *testing.T) {
	for _, c := range []struct {
		name  string
		write func(r *vmxnet3test.Rig)
	}{
		{"past memory", func(r *vmxnet3test.Rig) {
			r.Dev.BAR1().Write32(vmxnet3.RegDSAL, uint32(r.Mem.Size()))
			r.Dev.BAR1().Write32(vmxnet3.RegDSAH, 0)
		}},
		{"straddles end", func(r *vmxnet3test.Rig) {
			r.Dev.BAR1().Write32(vmxnet3.RegDSAL, uint32(r.Mem.Size()-512))
			r.Dev.BAR1().Write32(vmxnet3.RegDSAH, 0)
		}},
		{"high half", func(r *vmxnet3test.Rig) {
			r.Dev.BAR1().Write32(vmxnet3.RegDSAL, uint32(r.G.Layout().Shared))
			r.Dev.BAR1().Write32(vmxnet3.RegDSAH, 1)
		}},
		{"DSAL without DSAH", func(r *vmxnet3test.Rig) {
			r.Dev.BAR1().Write32(vmxnet3.RegDSAL, uint32(r.G.Layout().Shared))
		}},
		{"nothing written", func(r *vmxnet3test.Rig) {}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, vmxnet3test.DefaultConfig())
			r.G.Prepare()
			c.write(r)
			if got := r.G.Command(vmxnet3.CmdActivateDev); got == 0 || r.Dev.Active() {
				t.Errorf("ACTIVATE_DEV: CMD %#x, Active %v; want non-zero, false", got, r.Dev.Active())
			}
		})
	}
}

// A failed ACTIVATE_DEV on a running device stops it.
func TestActivateFailureStopsRunningDevice(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	r.Mem.PutU32(r.G.Layout().Shared+vmxnet3.DSMagic, 0)
	if got := r.G.Command(vmxnet3.CmdActivateDev); got == 0 {
		t.Fatalf("ACTIVATE_DEV with bad magic: CMD 0, want non-zero")
	}
	if r.Dev.Active() {
		t.Fatalf("device still active after a failed ACTIVATE_DEV")
	}
}

type txErrCase struct {
	name string
	code uint32
	// noTail: the slot after the chain must stay unpublished (a published
	// packet there would end the chain).
	noTail bool
	post   func(t *testing.T, r *vmxnet3test.Rig)
}

func txErrCases() []txErrCase {
	desc := func(addr uint64, n uint32, eop bool) vmxnet3.TxDesc {
		return vmxnet3.TxDesc{Addr: addr, Len: n, EOP: eop, CQ: eop}
	}
	buf := func(r *vmxnet3test.Rig) uint64 { return r.G.Layout().Tx[0].Bufs }
	chain := func(r *vmxnet3test.Rig, n int, last bool) []vmxnet3.TxDesc {
		var ds []vmxnet3.TxDesc
		for i := 0; i < n; i++ {
			ds = append(ds, desc(buf(r)+uint64(i)*64, 64, last && i == n-1))
		}
		return ds
	}
	return []txErrCase{
		{"addr past memory", vmxnet3.QErrInvalidDesc, false, func(t *testing.T, r *vmxnet3test.Rig) {
			r.G.PostTxRaw(0, desc(r.Mem.Size(), 64, true))
		}},
		{"addr straddles end", vmxnet3.QErrInvalidDesc, false, func(t *testing.T, r *vmxnet3test.Rig) {
			r.G.PostTxRaw(0, desc(r.Mem.Size()-10, 64, true))
		}},
		{"addr wraps 2^64", vmxnet3.QErrInvalidDesc, false, func(t *testing.T, r *vmxnet3test.Rig) {
			r.G.PostTxRaw(0, desc(0xFFFFFFFFFFFFFFF0, 64, true))
		}},
		{"len 0 means 16384, past end", vmxnet3.QErrInvalidDesc, false, func(t *testing.T, r *vmxnet3test.Rig) {
			r.G.PostTxRaw(0, desc(r.Mem.Size()-16000, 0, true))
		}},
		{"third descriptor outside memory", vmxnet3.QErrInvalidDesc, false, func(t *testing.T, r *vmxnet3test.Rig) {
			ds := chain(r, 4, true)
			ds[2].Addr = 1 << 50
			r.G.PostTxRaw(0, ds...)
		}},
		{"17 descriptors", vmxnet3.QErrTooManyDescs, false, func(t *testing.T, r *vmxnet3test.Rig) {
			r.G.PostTxRaw(0, chain(r, 17, true)...)
		}},
		{"40 descriptors", vmxnet3.QErrTooManyDescs, false, func(t *testing.T, r *vmxnet3test.Rig) {
			r.G.PostTxRaw(0, chain(r, 40, true)...)
		}},
		{"dtype 1 on SOP", vmxnet3.QErrDescType, false, func(t *testing.T, r *vmxnet3test.Rig) {
			d := desc(buf(r), 64, true)
			d.DType = true
			r.G.PostTxRaw(0, d)
		}},
		{"dtype 1 mid-chain", vmxnet3.QErrDescType, false, func(t *testing.T, r *vmxnet3test.Rig) {
			ds := chain(r, 3, true)
			ds[1].DType = true
			r.G.PostTxRaw(0, ds...)
		}},
		{"no EOP, chain ends", vmxnet3.QErrNoEOP, true, func(t *testing.T, r *vmxnet3test.Rig) {
			r.G.PostTxRaw(0, chain(r, 3, false)...)
		}},
		{"no EOP, TSO chain ends", vmxnet3.QErrNoEOP, true, func(t *testing.T, r *vmxnet3test.Rig) {
			ds := chain(r, 20, false)
			ds[0].OM, ds[0].HLen, ds[0].MSSCOF = vmxnet3.OMTSO, 54, 1448
			r.G.PostTxRaw(0, ds...)
		}},
	}
}

// §4.9: a hostile tx chain stops the queue with its code. The packet before
// it is sent and completed, the packet after it is not sent, GET_QUEUE_STATUS
// reports the stop, ECR carries TQERR with the event vector raised, and a
// second device keeps working throughout. RESET_DEV + ACTIVATE recovers.
func TestTxQueueErrors(t *testing.T) {
	p := startPeer(t)
	for _, c := range txErrCases() {
		t.Run(c.name, func(t *testing.T) {
			cfg := vmxnet3test.DefaultConfig()
			r := upRig(t, cfg)
			wire := vmxnet3test.NewWire(8, 1<<16)
			before := ethFrame(otherMAC, ownMAC, 100, 1)
			after := ethFrame(otherMAC, ownMAC, 100, 2)
			if err := r.G.PostTx(0, before); err != nil {
				t.Fatal(err)
			}
			c.post(t, r)
			if !c.noTail {
				if err := r.G.PostTx(0, after); err != nil {
					t.Fatal(err)
				}
			}
			drops := r.Dev.Drops().TxQueueError.Load()

			sent, _ := wire.Drain(r.Dev, 0)
			if len(sent) != 1 || string(sent[0].Frame) != string(before) {
				t.Fatalf("sent %d frames, want only the packet before the bad chain", len(sent))
			}
			idx, err := r.G.ReapTxCompletions(0)
			if err != nil || len(idx) != 1 || idx[0] != 0 {
				t.Errorf("completions %v (%v), want [0]", idx, err)
			}
			if stopped, code := r.Dev.QueueError(true, 0); !stopped || code != c.code {
				t.Errorf("QueueError(tx 0) = %v, %#x; want true, %#x", stopped, code, c.code)
			}
			if stopped, code := r.G.QueueStatus(true, 0); !stopped || code != c.code {
				t.Errorf("GET_QUEUE_STATUS: queue desc stopped %v error %#x; want true, %#x", stopped, code, c.code)
			}
			if stopped, code := r.G.QueueStatus(false, 0); stopped || code != 0 {
				t.Errorf("GET_QUEUE_STATUS: rx queue stopped %v error %#x; want false, 0", stopped, code)
			}
			if ecr := r.G.ECR(); ecr != vmxnet3.EventTQErr {
				t.Errorf("DriverShared.ecr = %#x, want TQERR %#x", ecr, vmxnet3.EventTQErr)
			}
			if n := r.Sink.Count(cfg.EventVector()); n != 1 {
				t.Errorf("event vector %d delivered %d times, want 1", cfg.EventVector(), n)
			}
			if d := r.Dev.Drops().TxQueueError.Load() - drops; d != 1 {
				t.Errorf("Drops().TxQueueError grew by %d, want 1", d)
			}
			// A stopped queue stays stopped, whatever the driver rings.
			r.G.KickTx(0)
			if sent, n := wire.Drain(r.Dev, 0); n != 0 || len(sent) != 0 {
				t.Errorf("stopped queue sent %d frames, consumed %d", len(sent), n)
			}
			// The rx side of the same device still works.
			in := ethFrame(ownMAC, otherMAC, 80, 3)
			if res := r.Dev.DeliverBatch(0, [][]byte{in}); res.Written != 1 {
				t.Errorf("rx on a device whose tx queue stopped: %+v", res)
			}
			if err := sameFrames(receive(t, r, 0), [][]byte{in}); err != nil {
				t.Error(err)
			}
			// ECR acknowledge clears the bit (write-1-to-clear).
			if got := r.G.AckEvents(); got != vmxnet3.EventTQErr || r.G.ECR() != 0 {
				t.Errorf("after ECR ack: acked %#x, ecr %#x; want %#x, 0", got, r.G.ECR(), vmxnet3.EventTQErr)
			}
			p.check(t)

			// Recovery: QUIESCE, RESET, open again.
			r.G.Reset()
			if r.Dev.Active() {
				t.Fatal("active after RESET_DEV")
			}
			if err := r.G.Up(); err != nil {
				t.Fatalf("Up after reset: %v", err)
			}
			if stopped, code := r.G.QueueStatus(true, 0); stopped || code != 0 {
				t.Errorf("after reset: queue stopped %v error %#x", stopped, code)
			}
			good := ethFrame(otherMAC, ownMAC, 200, 4)
			if err := r.G.PostTx(0, good); err != nil {
				t.Fatal(err)
			}
			sent, _ = wire.Drain(r.Dev, 0)
			if len(sent) != 1 || string(sent[0].Frame) != string(good) {
				t.Errorf("after reset: sent %d frames, want the new one", len(sent))
			}
			if err := r.CheckGuard(); err != nil {
				t.Error(err)
			}
		})
	}
	p.check(t)
}

// Sixteen descriptors is the limit, not an error.
func TestTx16Descriptors(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	var segs [][]byte
	var want []byte
	for i := 0; i < 16; i++ {
		s := ethFrame(otherMAC, ownMAC, 64, byte(i))
		if i > 0 {
			s = s[14:]
		}
		segs = append(segs, s)
		want = append(want, s...)
	}
	eop, err := r.G.PostTxPacket(0, vmxnet3test.Packet{Segs: segs})
	if err != nil {
		t.Fatal(err)
	}
	sent, _ := vmxnet3test.NewWire(4, 1<<16).Drain(r.Dev, 0)
	if len(sent) != 1 || string(sent[0].Frame) != string(want) {
		t.Fatalf("sent %d frames, want one gathered from 16 descriptors", len(sent))
	}
	idx, err := r.G.ReapTxCompletions(0)
	if err != nil || len(idx) != 1 || idx[0] != eop || eop != 15 {
		t.Errorf("completions %v (%v), want [15] (EOP %d)", idx, err, eop)
	}
	if stopped, code := r.Dev.QueueError(true, 0); stopped {
		t.Errorf("queue stopped with %#x", code)
	}
}

// §4.8, §4.9: a HEAD buffer under 128 bytes or a buffer outside memory stops
// the rx queue with RQERR; nothing is written for the frame; RESET_DEV +
// ACTIVATE recovers; a second device keeps working.
func TestRxQueueErrors(t *testing.T) {
	p := startPeer(t)
	type rig = vmxnet3test.Rig
	cases := []struct {
		name string
		mtu  uint32
		size int // frame length
		code uint32
		post func(r *rig)
	}{
		{"HEAD 127 bytes", 1500, 100, vmxnet3.QErrHeadTooSmall, func(r *rig) {
			r.G.PostRxRaw(0, 0, vmxnet3.RxDesc{Addr: r.G.Layout().Rx[0].Bufs[0], Len: 127})
		}},
		{"HEAD 0 bytes", 1500, 100, vmxnet3.QErrHeadTooSmall, func(r *rig) {
			r.G.PostRxRaw(0, 0, vmxnet3.RxDesc{Addr: r.G.Layout().Rx[0].Bufs[0], Len: 0})
		}},
		{"HEAD past memory", 1500, 100, vmxnet3.QErrInvalidDesc, func(r *rig) {
			r.G.PostRxRaw(0, 0, vmxnet3.RxDesc{Addr: r.Mem.Size(), Len: 2048})
		}},
		{"HEAD straddles end", 1500, 100, vmxnet3.QErrInvalidDesc, func(r *rig) {
			r.G.PostRxRaw(0, 0, vmxnet3.RxDesc{Addr: r.Mem.Size() - 1024, Len: 2048})
		}},
		{"HEAD wraps 2^64", 1500, 100, vmxnet3.QErrInvalidDesc, func(r *rig) {
			r.G.PostRxRaw(0, 0, vmxnet3.RxDesc{Addr: 0xFFFFFFFFFFFFF800, Len: 2048})
		}},
		{"BODY in ring 1 past memory", 9000, 5000, vmxnet3.QErrInvalidDesc, func(r *rig) {
			r.G.PostRxRaw(0, 0, vmxnet3.RxDesc{Addr: r.G.Layout().Rx[0].Bufs[0], Len: 2048})
			r.G.PostRxRaw(0, 1, vmxnet3.RxDesc{Addr: r.Mem.Size(), Len: 4096, Body: true})
		}},
		{"BODY in ring 0 past memory", 9000, 5000, vmxnet3.QErrInvalidDesc, func(r *rig) {
			r.G.PostRxRaw(0, 0,
				vmxnet3.RxDesc{Addr: r.G.Layout().Rx[0].Bufs[0], Len: 2048},
				vmxnet3.RxDesc{Addr: 1 << 48, Len: 4096, Body: true})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := vmxnet3test.DefaultConfig()
			cfg.NoFill, cfg.MTU = true, c.mtu
			r := upRig(t, cfg)
			c.post(r)
			r.G.KickRx(0)
			f := ethFrame(ownMAC, otherMAC, c.size, 1)
			res := r.Dev.DeliverBatch(0, [][]byte{f})
			if res.Written != 0 || res.Full {
				t.Errorf("DeliverBatch = %+v, want nothing written and not Full", res)
			}
			if comps, err := r.G.ReadRxCompletions(0); len(comps) != 0 || err != nil {
				t.Errorf("%d completions written (%v), want none", len(comps), err)
			}
			if stopped, code := r.Dev.QueueError(false, 0); !stopped || code != c.code {
				t.Errorf("QueueError(rx 0) = %v, %#x; want true, %#x", stopped, code, c.code)
			}
			if stopped, code := r.G.QueueStatus(false, 0); !stopped || code != c.code {
				t.Errorf("GET_QUEUE_STATUS: queue desc stopped %v error %#x; want true, %#x", stopped, code, c.code)
			}
			if ecr := r.G.ECR(); ecr != vmxnet3.EventRQErr {
				t.Errorf("DriverShared.ecr = %#x, want RQERR %#x", ecr, vmxnet3.EventRQErr)
			}
			if n := r.Sink.Count(cfg.EventVector()); n != 1 {
				t.Errorf("event vector delivered %d times, want 1", n)
			}
			// The stopped queue drops and counts what comes next.
			drops := r.Dev.Drops().RxQueueError.Load()
			if res := r.Dev.DeliverBatch(0, [][]byte{f, f}); res.Written != 0 || res.Consumed != 2 {
				t.Errorf("DeliverBatch on a stopped queue = %+v, want 2 consumed, 0 written", res)
			}
			if d := r.Dev.Drops().RxQueueError.Load() - drops; d != 2 {
				t.Errorf("Drops().RxQueueError grew by %d, want 2", d)
			}
			// tx still works on the same device.
			out := ethFrame(otherMAC, ownMAC, 90, 2)
			if err := r.G.PostTx(0, out); err != nil {
				t.Fatal(err)
			}
			if sent, _ := vmxnet3test.NewWire(4, 2048).Drain(r.Dev, 0); len(sent) != 1 {
				t.Errorf("tx on a device whose rx queue stopped sent %d frames", len(sent))
			}
			p.check(t)

			r.G.Reset()
			cfgFill := cfg
			cfgFill.NoFill = false
			g, err := vmxnet3test.New(r.Mem, r.Dev.BAR0(), r.Dev.BAR1(), cfgFill)
			if err != nil {
				t.Fatal(err)
			}
			if err := g.Up(); err != nil {
				t.Fatalf("Up after reset: %v", err)
			}
			if res := r.Dev.DeliverBatch(0, [][]byte{f}); res.Written != 1 {
				t.Fatalf("DeliverBatch after reset = %+v", res)
			}
			got, err := g.ReceiveFrames(0)
			if err != nil {
				t.Fatal(err)
			}
			if err := sameFrames(got, [][]byte{f}); err != nil {
				t.Errorf("after reset: %v", err)
			}
			if err := r.CheckGuard(); err != nil {
				t.Error(err)
			}
		})
	}
	p.check(t)
}

// §2.2, §2.5: queues beyond the configured count do not exist, even when an
// earlier activation configured them.
func TestUnconfiguredQueues(t *testing.T) {
	cfg := vmxnet3test.DefaultConfig()
	cfg.NumTxQueues, cfg.NumRxQueues = 2, 2
	one := vmxnet3test.DefaultConfig()
	cfg.Extra = one.Layout().End // room to reopen without overwriting the old rings
	r := upRig(t, cfg)
	// Leave a valid packet on tx queue 1, then reopen with one queue pair.
	if err := r.G.PostTx(1, ethFrame(otherMAC, ownMAC, 60, 1)); err != nil {
		t.Fatal(err)
	}
	r.G.Reset()
	one.Base = r.G.Layout().End
	g, err := vmxnet3test.New(r.Mem, r.Dev.BAR0(), r.Dev.BAR1(), one)
	if err != nil {
		t.Fatal(err)
	}
	g.Prepare()
	// The reopened driver's layout is elsewhere: tx queue 1's old ring,
	// with its valid packet, is still intact in memory.
	if got := g.Activate(); got != 0 {
		t.Fatalf("ACTIVATE_DEV: %#x", got)
	}
	w := vmxnet3test.NewWire(4, 2048)
	for q := 1; q < vmxnet3.MaxTxQueues; q++ {
		if sent, n := w.Drain(r.Dev, q); n != 0 || len(sent) != 0 {
			t.Errorf("tx queue %d (not configured) sent %d frames, consumed %d", q, len(sent), n)
		}
	}
	for _, q := range []int{-1, vmxnet3.MaxTxQueues, 1 << 20} {
		if n := r.Dev.ProcessTx(q, nil, nil, nil, func(int) {}); n != 0 {
			t.Errorf("ProcessTx(%d) = %d", q, n)
		}
	}
	for _, q := range []int{1, vmxnet3.MaxRxQueues - 1} {
		if res := r.Dev.DeliverBatch(q, [][]byte{ethFrame(ownMAC, otherMAC, 60, 1)}); res.Written != 0 {
			t.Errorf("DeliverBatch(%d) on an unconfigured queue = %+v", q, res)
		}
	}
	for _, q := range []int{-1, vmxnet3.MaxRxQueues} {
		if res := r.Dev.DeliverBatch(q, [][]byte{ethFrame(ownMAC, otherMAC, 60, 1)}); res.Written != 0 {
			t.Errorf("DeliverBatch(%d) = %+v", q, res)
		}
	}
}

// §2.1–2.2, §1.4: GET commands, MAC registers, link, DSAL = 0.
func TestCommands(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	b1 := r.Dev.BAR1()
	lo, hi := vmxnet3.MACToRegs(vmxnet3test.RigMAC)
	for _, c := range []struct {
		name string
		cmd  uint32
		want uint32
	}{
		{"GET_LINK", vmxnet3.CmdGetLink, 10000<<16 | 1},
		{"GET_PERM_MAC_LO", vmxnet3.CmdGetPermMACLo, lo},
		{"GET_PERM_MAC_HI", vmxnet3.CmdGetPermMACHi, hi},
		{"GET_DID_LO", vmxnet3.CmdGetDIDLo, 0x07B0},
		{"GET_DID_HI", vmxnet3.CmdGetDIDHi, 1},
		{"GET_QUEUE_STATUS", vmxnet3.CmdGetQueueStatus, 0},
		{"GET_STATS", vmxnet3.CmdGetStats, 0},
		{"GET_DEV_EXTRA_INFO", vmxnet3.CmdGetDevExtraInfo, 0},
		{"unknown GET", 0xF00D00FF, 0},
		{"unknown SET", 0xCAFE00FF, 0},
		{"garbage", 0x12345678, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := r.G.Command(c.cmd); got != c.want {
				t.Errorf("CMD %#x reads %#x, want %#x", c.cmd, got, c.want)
			}
			if !r.Dev.Active() {
				t.Errorf("CMD %#x deactivated the device", c.cmd)
			}
		})
	}
	t.Run("CMD readback after unknown", func(t *testing.T) {
		if got := b1.Read32(vmxnet3.RegCMD); got != 0 {
			t.Errorf("CMD after a GET reads %#x", got)
		}
	})
	t.Run("VRRS/UVRS", func(t *testing.T) {
		if v := b1.Read32(vmxnet3.RegVRRS); v != 1 {
			t.Errorf("VRRS = %#x, want 1 (Rev 1)", v)
		}
		if v := b1.Read32(vmxnet3.RegUVRS); v != 1 {
			t.Errorf("UVRS = %#x, want 1 (UPT v1)", v)
		}
	})
	t.Run("link down raises LINK", func(t *testing.T) {
		ev := r.G.Config().EventVector()
		n := r.Sink.Count(ev)
		r.Dev.SetLink(false)
		if got := r.G.Command(vmxnet3.CmdGetLink); got&1 != 0 {
			t.Errorf("GET_LINK with link down = %#x, want bit 0 clear", got)
		}
		if r.G.ECR()&vmxnet3.EventLink == 0 {
			t.Errorf("ecr = %#x, want LINK", r.G.ECR())
		}
		if r.Sink.Count(ev) != n+1 {
			t.Errorf("event vector delivered %d times, want %d", r.Sink.Count(ev), n+1)
		}
		in := ethFrame(ownMAC, otherMAC, 60, 1)
		if res := r.Dev.DeliverBatch(0, [][]byte{in}); res.Written != 0 {
			t.Errorf("received with link down: %+v", res)
		}
		r.G.AckEvents()
		r.G.Unmask(ev)
		r.Dev.SetLink(true)
		if got := r.G.Command(vmxnet3.CmdGetLink); got != 10000<<16|1 {
			t.Errorf("GET_LINK = %#x after link up", got)
		}
		if r.G.ECR() != vmxnet3.EventLink {
			t.Errorf("ecr = %#x, want LINK", r.G.ECR())
		}
		r.G.AckEvents()
		r.Dev.SetLink(true) // no change, no event
		if r.G.ECR() != 0 {
			t.Errorf("ecr = %#x after a non-change", r.G.ECR())
		}
	})
}

// §1.4: MACL is latched; the new MAC applies on the MACH write, and rx
// filtering follows it.
func TestMACLatch(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	b1 := r.Dev.BAR1()
	newMAC := [6]byte{0x02, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE}
	lo, hi := vmxnet3.MACToRegs(newMAC)
	oldLo, oldHi := vmxnet3.MACToRegs(ownMAC)

	b1.Write32(vmxnet3.RegMACL, lo)
	if got := r.Dev.MAC(); got != ownMAC {
		t.Errorf("after MACL only: MAC % x, want unchanged % x", got, ownMAC)
	}
	if l, h := b1.Read32(vmxnet3.RegMACL), b1.Read32(vmxnet3.RegMACH); l != oldLo || h != oldHi {
		t.Errorf("after MACL only: MACL/MACH read %#x/%#x, want %#x/%#x", l, h, oldLo, oldHi)
	}
	b1.Write32(vmxnet3.RegMACH, hi)
	if got := r.Dev.MAC(); got != newMAC {
		t.Errorf("after MACH: MAC % x, want % x", got, newMAC)
	}
	if l, h := b1.Read32(vmxnet3.RegMACL), b1.Read32(vmxnet3.RegMACH); l != lo || h != hi {
		t.Errorf("after MACH: MACL/MACH read %#x/%#x, want %#x/%#x", l, h, lo, hi)
	}
	// The permanent MAC does not change.
	pl, ph := r.G.Command(vmxnet3.CmdGetPermMACLo), r.G.Command(vmxnet3.CmdGetPermMACHi)
	if vmxnet3.RegsToMAC(pl, ph) != ownMAC {
		t.Errorf("permanent MAC % x, want % x", vmxnet3.RegsToMAC(pl, ph), ownMAC)
	}
	// A second MACH write without a new MACL reuses the latched MACL.
	b1.Write32(vmxnet3.RegMACH, 0x1122)
	if got, want := r.Dev.MAC(), [6]byte{0x02, 0xAA, 0xBB, 0xCC, 0x22, 0x11}; got != want {
		t.Errorf("MACH alone: MAC % x, want % x", got, want)
	}
	b1.Write32(vmxnet3.RegMACH, hi)

	toNew := ethFrame(newMAC, otherMAC, 60, 1)
	toOld := ethFrame(ownMAC, otherMAC, 60, 2)
	if res := r.Dev.DeliverBatch(0, [][]byte{toOld, toNew}); res.Written != 1 || res.Consumed != 2 {
		t.Errorf("DeliverBatch = %+v, want 2 consumed, 1 written", res)
	}
	if err := sameFrames(receive(t, r, 0), [][]byte{toNew}); err != nil {
		t.Error(err)
	}
}

// §1.4: writing DSAL = 0 deactivates the device.
func TestDSALZeroDeactivates(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	if err := r.G.PostTx(0, ethFrame(otherMAC, ownMAC, 60, 1)); err != nil {
		t.Fatal(err)
	}
	r.Dev.BAR1().Write32(vmxnet3.RegDSAL, 0)
	r.Dev.BAR1().Write32(vmxnet3.RegDSAH, 0)
	if r.Dev.Active() {
		t.Fatal("Active() after DSAL = 0")
	}
	if sent, n := vmxnet3test.NewWire(4, 2048).Drain(r.Dev, 0); n != 0 || len(sent) != 0 {
		t.Errorf("deactivated device sent %d frames", len(sent))
	}
	inactive := r.Dev.Drops().RxInactive.Load()
	if res := r.Dev.DeliverBatch(0, [][]byte{ethFrame(ownMAC, otherMAC, 60, 1)}); res.Written != 0 || res.Consumed != 1 {
		t.Errorf("DeliverBatch = %+v, want dropped", res)
	}
	if d := r.Dev.Drops().RxInactive.Load() - inactive; d != 1 {
		t.Errorf("Drops().RxInactive grew by %d, want 1", d)
	}
	// Re-activating works.
	if err := r.G.Up(); err != nil {
		t.Fatal(err)
	}
}

// §5.2: a vector that fires while masked stays pending and is delivered on
// unmask; autoMask masks a vector as it delivers it; IRQCounts.
func TestInterrupts(t *testing.T) {
	send := func(t *testing.T, r *vmxnet3test.Rig) {
		t.Helper()
		if err := r.G.PostTx(0, ethFrame(otherMAC, ownMAC, 60, 1)); err != nil {
			t.Fatal(err)
		}
		vmxnet3test.NewWire(4, 2048).Drain(r.Dev, 0)
		if _, err := r.G.ReapTx(0); err != nil {
			t.Fatal(err)
		}
	}
	imr := func(r *vmxnet3test.Rig, v int) uint32 { return r.Dev.BAR0().Read32(vmxnet3.IMR(v)) }

	t.Run("masked stays pending", func(t *testing.T) {
		cfg := vmxnet3test.DefaultConfig()
		cfg.Masked = true
		r := upRig(t, cfg)
		v := cfg.TxVector(0)
		if imr(r, v) != 1 {
			t.Fatalf("IMR[%d] = %d after bring-up with masked vectors", v, imr(r, v))
		}
		send(t, r)
		send(t, r)
		raised, delivered := r.Dev.IRQCounts()
		if raised[v] != 2 || delivered[v] != 0 || r.Sink.Count(v) != 0 {
			t.Fatalf("while masked: raised %d delivered %d sink %d; want 2, 0, 0", raised[v], delivered[v], r.Sink.Count(v))
		}
		r.G.Unmask(v)
		raised, delivered = r.Dev.IRQCounts()
		if delivered[v] != 1 || r.Sink.Count(v) != 1 {
			t.Fatalf("after unmask: delivered %d sink %d; want 1, 1 (pending delivered once)", delivered[v], r.Sink.Count(v))
		}
		// autoMask: delivering masked it again.
		if imr(r, v) != 1 {
			t.Errorf("IMR[%d] = 0 after an auto-masked delivery, want 1", v)
		}
		r.G.Unmask(v) // nothing pending now
		if r.Sink.Count(v) != 1 {
			t.Errorf("unmask with nothing pending delivered")
		}
		if imr(r, v) != 0 {
			t.Errorf("IMR[%d] = 1 after unmask with nothing pending", v)
		}
		send(t, r)
		if r.Sink.Count(v) != 2 || imr(r, v) != 1 {
			t.Errorf("unmasked delivery: sink %d IMR %d; want 2, 1", r.Sink.Count(v), imr(r, v))
		}
		// Other vectors were not touched.
		for u := 0; u < vmxnet3.MaxIntrs; u++ {
			if u != v && r.Sink.Count(u) != 0 {
				t.Errorf("vector %d delivered %d times", u, r.Sink.Count(u))
			}
		}
	})

	t.Run("no autoMask", func(t *testing.T) {
		cfg := vmxnet3test.DefaultConfig()
		cfg.AutoMask = false
		r := upRig(t, cfg)
		v := cfg.TxVector(0)
		send(t, r)
		send(t, r)
		if r.Sink.Count(v) != 2 || imr(r, v) != 0 {
			t.Errorf("sink %d IMR %d; want 2 deliveries, vector still unmasked", r.Sink.Count(v), imr(r, v))
		}
		r.G.Mask(v)
		send(t, r)
		if r.Sink.Count(v) != 2 {
			t.Errorf("delivered while masked")
		}
		r.G.Unmask(v)
		if r.Sink.Count(v) != 3 {
			t.Errorf("pending not delivered on unmask: sink %d", r.Sink.Count(v))
		}
		raised, delivered := r.Dev.IRQCounts()
		if raised[v] != 3 || delivered[v] != 3 {
			t.Errorf("IRQCounts: raised %d delivered %d, want 3, 3", raised[v], delivered[v])
		}
	})

	t.Run("rx vector", func(t *testing.T) {
		cfg := vmxnet3test.DefaultConfig()
		r := upRig(t, cfg)
		v := cfg.RxVector(0)
		r.Dev.DeliverBatch(0, [][]byte{ethFrame(ownMAC, otherMAC, 60, 1), ethFrame(ownMAC, otherMAC, 60, 2)})
		if r.Sink.Count(v) != 1 {
			t.Errorf("rx vector %d delivered %d times for one batch, want 1", v, r.Sink.Count(v))
		}
		// A batch that writes nothing raises nothing.
		r.Dev.DeliverBatch(0, [][]byte{ethFrame(otherMAC, otherMAC, 60, 1)})
		if raised, _ := r.Dev.IRQCounts(); raised[v] != 1 {
			t.Errorf("rx vector raised %d times, want 1", raised[v])
		}
	})

	t.Run("reset masks all", func(t *testing.T) {
		r := upRig(t, vmxnet3test.DefaultConfig())
		r.G.Reset()
		for v := 0; v < vmxnet3.MaxIntrs; v++ {
			if imr(r, v) != 1 {
				t.Errorf("IMR[%d] = 0 after RESET_DEV", v)
			}
		}
	})

	t.Run("bad IMR offsets ignored", func(t *testing.T) {
		r := upRig(t, vmxnet3test.DefaultConfig())
		b0 := r.Dev.BAR0()
		for _, off := range []uint32{4, 0xC4, vmxnet3.IMR(25), 0x5F8, 0xFFC, 0x1000, 0xFFFFFFFC} {
			b0.Write32(off, 1)
			_ = b0.Read32(off)
		}
		for v := 0; v <= r.G.Config().EventVector(); v++ {
			if imr(r, v) != 0 {
				t.Errorf("IMR[%d] changed by a write elsewhere", v)
			}
		}
	})
}

// §2.2 GET_STATS: the device's UPT1 counters land in each queue
// descriptor's stats at +88, in spec order.
func TestStatsInGuestMemory(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	frames := [][]byte{
		ethFrame(otherMAC, ownMAC, 100, 1), // unicast
		ethFrame(otherMAC, ownMAC, 200, 2), // unicast
		ethFrame(mcastMAC, ownMAC, 300, 3), // multicast
		ethFrame(bcastMAC, ownMAC, 400, 4), // broadcast
	}
	if err := r.G.PostTx(0, frames...); err != nil {
		t.Fatal(err)
	}
	// One packet with an unsupported offload is dropped and counted.
	if _, err := r.G.PostTxPacket(0, vmxnet3test.Packet{Segs: [][]byte{frames[0]}, OM: vmxnet3.OMTSO, HLen: 54, MSSCOF: 1000}); err != nil {
		t.Fatal(err)
	}
	sent, n := vmxnet3test.NewWire(8, 2048).Drain(r.Dev, 0)
	if len(sent) != 4 || n != 5 {
		t.Fatalf("sent %d consumed %d, want 4, 5", len(sent), n)
	}
	rx := [][]byte{
		ethFrame(ownMAC, otherMAC, 70, 1),
		ethFrame(bcastMAC, otherMAC, 80, 2),
		ethFrame(bcastMAC, otherMAC, 90, 3),
	}
	r.Dev.DeliverBatch(0, rx)

	r.G.Command(vmxnet3.CmdGetStats)
	read := func(tx bool, i int) uint64 {
		return r.Mem.U64(r.G.QueueDescPA(tx, 0) + 88 + uint64(i)*8)
	}
	for _, c := range []struct {
		name string
		tx   bool
		i    int
		want uint64
	}{
		{"tx TSOPktsTxOK", true, 0, 0},
		{"tx ucastPktsTxOK", true, 2, 2},
		{"tx ucastBytesTxOK", true, 3, 300},
		{"tx mcastPktsTxOK", true, 4, 1},
		{"tx mcastBytesTxOK", true, 5, 300},
		{"tx bcastPktsTxOK", true, 6, 1},
		{"tx bcastBytesTxOK", true, 7, 400},
		{"tx pktsTxError", true, 8, 1},
		{"rx LROPktsRxOK", false, 0, 0},
		{"rx ucastPktsRxOK", false, 2, 1},
		{"rx ucastBytesRxOK", false, 3, 70},
		{"rx mcastPktsRxOK", false, 4, 0},
		{"rx bcastPktsRxOK", false, 6, 2},
		{"rx bcastBytesRxOK", false, 7, 170},
		{"rx pktsRxOutOfBuf", false, 8, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := read(c.tx, c.i); got != c.want {
				t.Errorf("queue desc +%d = %d, want %d", 88+8*c.i, got, c.want)
			}
		})
	}
	tx, rxs := r.Dev.Stats()
	if tx != r.G.Stats(true, 0) || rxs != r.G.Stats(false, 0) {
		t.Errorf("Stats() %v/%v differs from guest memory %v/%v", tx, rxs, r.G.Stats(true, 0), r.G.Stats(false, 0))
	}
	// GET_STATS writes nothing else in the queue descriptors.
	for _, tx := range []bool{true, false} {
		pa := r.G.QueueDescPA(tx, 0)
		for off := uint64(vmxnet3.QTSConf); off < vmxnet3.QueueDescSize; off++ {
			if r.Mem.U8(pa+off) != 0 {
				t.Errorf("queue desc (tx %v) byte %d = %#x after GET_STATS", tx, off, r.Mem.U8(pa+off))
			}
		}
	}
}

// Commands, doorbells and traffic from several goroutines at once: no race,
// no deadlock, no panic (run with -race).
func TestConcurrentControlAndData(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	stop := make(chan struct{})
	done := make(chan struct{}, 3)
	frames := [][]byte{ethFrame(ownMAC, otherMAC, 60, 1), ethFrame(bcastMAC, otherMAC, 1500, 2)}
	go func() { // rx engine
		defer func() { done <- struct{}{} }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			r.Dev.DeliverBatch(0, frames)
			_, _ = r.Dev.QueueError(false, 0)
		}
	}()
	go func() { // tx engine
		defer func() { done <- struct{}{} }()
		bufs := [][]byte{make([]byte, 2048)}
		lens, metas := make([]int, 1), make([]vmxnet3.TxMeta, 1)
		for {
			select {
			case <-stop:
				return
			default:
			}
			r.Dev.ProcessTx(0, bufs, lens, metas, func(int) {})
			r.Dev.Stats()
		}
	}()
	go func() { // doorbells and masks, as a vCPU writes them
		defer func() { done <- struct{}{} }()
		b0 := r.Dev.BAR0()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b0.Write32(vmxnet3.RxPROD(0), uint32(i))
			b0.Write32(vmxnet3.IMR(i%3), uint32(i&1))
			r.Dev.IRQCounts()
		}
	}()
	b1 := r.Dev.BAR1()
	sh := r.G.Layout().Shared
	deadline := time.Now().Add(300 * time.Millisecond)
	for i := 0; time.Now().Before(deadline); i++ {
		for _, cmd := range []uint32{vmxnet3.CmdGetQueueStatus, vmxnet3.CmdGetStats, vmxnet3.CmdUpdateRxMode,
			vmxnet3.CmdUpdateVLANFilters, vmxnet3.CmdUpdateMACFilters, vmxnet3.CmdQuiesceDev, vmxnet3.CmdResetDev} {
			b1.Write32(vmxnet3.RegCMD, cmd)
			_ = b1.Read32(vmxnet3.RegCMD)
		}
		b1.Write32(vmxnet3.RegDSAL, uint32(sh))
		b1.Write32(vmxnet3.RegDSAH, 0)
		b1.Write32(vmxnet3.RegCMD, vmxnet3.CmdActivateDev)
		if got := b1.Read32(vmxnet3.RegCMD); got != 0 {
			t.Errorf("ACTIVATE_DEV under load: %#x", got)
			break
		}
		r.Dev.SetLink(i%2 == 0)
		b1.Write32(vmxnet3.RegECR, 0xFFFFFFFF)
	}
	close(stop)
	for i := 0; i < 3; i++ {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("engine goroutine stuck")
		}
	}
	if err := r.CheckGuard(); err != nil {
		t.Error(err)
	}
}
