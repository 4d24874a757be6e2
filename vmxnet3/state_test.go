package vmxnet3_test

// Tests of the hand-off state (spec §7.3, §7.4; STYLE 13): a device frozen
// with traffic in flight saves to a State that restores into a fresh device
// over the same guest memory, which then carries on exactly where the first
// one stopped; invalid states fail whole; a frozen device idles its engines
// and holds every frame for whichever device runs next.

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/vmxnet3/vmxnet3test"
)

// guestMAC is the MAC the guest programs over the permanent one, so that a
// restore that fell back to the permanent MAC would filter every frame.
var guestMAC = [6]byte{0x00, 0x50, 0x56, 0x00, 0x00, 0x42}

// mcastMAC2 is a second joined multicast group.
var mcastMAC2 = [6]byte{0x01, 0x00, 0x5E, 0x00, 0x00, 0x01}

// stateConfig is two queue pairs with 32-entry rings (so a test wraps them
// quickly), vectors not auto-masked (masks change only by the guest's
// writes), and rx rings left empty at bring-up.
func stateConfig() vmxnet3test.Config {
	cfg := vmxnet3test.DefaultConfig()
	cfg.NumTxQueues, cfg.NumRxQueues = 2, 2
	cfg.TxRingSize, cfg.TxCompSize = 32, 32
	cfg.RxRingSize0, cfg.RxRingSize1 = 32, 32
	cfg.AutoMask = false
	cfg.NoFill = true
	cfg.RxMode = vmxnet3.RxModeUcast | vmxnet3.RxModeBcast | vmxnet3.RxModeMcast
	cfg.VLANs = []uint16{0, 5, 100}
	cfg.MCast = [][6]byte{mcastMAC, mcastMAC2}
	return cfg
}

// Vectors of stateConfig (tx queues first, then rx queues, then events).
const (
	vecTx0, vecTx1, vecRx0, vecRx1, vecEvent = 0, 1, 2, 3, 4
	stateNumIntrs                            = 5
)

// txFrame is tx frame i of a test: unicast, multicast or broadcast, of a
// length and content unique to i.
func txFrame(i int) []byte {
	dst := otherMAC
	switch i % 7 {
	case 3:
		dst = mcastMAC
	case 5:
		dst = bcastMAC
	}
	return ethFrame(dst, guestMAC, 60+(i*53)%1400, byte(i))
}

// rxFrame is rx frame i of a test, one the guest's filters admit:
// unicast to guestMAC, a joined group, broadcast, or tagged with VID 5.
func rxFrame(i int) []byte {
	n, seed := 60+(i*37)%1400, byte(100+i)
	switch i % 5 {
	case 1:
		return ethFrame(mcastMAC, otherMAC, n, seed)
	case 2:
		return ethFrame(bcastMAC, otherMAC, n, seed)
	case 3:
		return vlanFrame(guestMAC, otherMAC, 5, n, seed)
	}
	return ethFrame(guestMAC, otherMAC, n, seed)
}

func frameRange(f func(int) []byte, from, to int) [][]byte {
	var out [][]byte
	for i := from; i < to; i++ {
		out = append(out, f(i))
	}
	return out
}

// midFlight is a device frozen in the middle of traffic, with what a test
// needs to check that its successor carries on exactly.
type midFlight struct {
	r *vmxnet3test.Rig

	sent    [][]byte // tx frames the device sent before the freeze (queue 0)
	posted  [][]byte // tx frames posted on queue 0 that it never fetched
	nextTx  int      // index of the next txFrame
	unread  [][]byte // rx frames written to queue 0 that the guest has not read
	held    [2][][]byte
	nextRx  int // index of the next rxFrame
	txStats [vmxnet3.NumUPT1Stats]uint64
	rxStats [vmxnet3.NumUPT1Stats]uint64
	drops   vmxnet3.DropCounts
	ecr     uint32
	s       vmxnet3.State // what Save returned
}

// newMidFlight brings a device up and leaves it, frozen and saved, with:
// tx queue 0 ring and completion ring at 28 of 32 after one wrap (gen 0)
// and five packets posted but not fetched (they wrap the ring again); tx
// queue 1 stopped by a descriptor error; rx queue 0 past a wrap of ring 0
// with 20 frames written but not read and 3 held for lack of buffers; rx queue 1 holding 2 frames; vector
// 0 masked with an interrupt pending, vector 3 masked, the rest unmasked;
// a guest-set MAC, two multicast groups, three VLANs; UPT1 and drop
// counters non-zero; a TQERR event in ecr, not yet acknowledged.
func newMidFlight(t testing.TB) *midFlight {
	t.Helper()
	r := upRig(t, stateConfig())
	mf := &midFlight{r: r}
	g := r.G
	g.SetMAC(guestMAC)
	g.Mask(vecTx0)
	g.Mask(vecRx1)

	// tx queue 0: 60 packets sent and completed, wrapping both rings once
	// (their vector is masked, so it stays pending).
	wire := vmxnet3test.NewWire(8, 2048)
	for round := 0; round < 6; round++ {
		frames := frameRange(txFrame, mf.nextTx, mf.nextTx+10)
		mf.nextTx += 10
		if err := g.PostTx(0, frames...); err != nil {
			t.Fatalf("PostTx: %v", err)
		}
		sent, n := wire.Drain(r.Dev, 0)
		if n != 10 {
			t.Fatalf("round %d: device consumed %d packets, want 10", round, n)
		}
		for _, s := range sent {
			mf.sent = append(mf.sent, s.Frame)
		}
		if n, err := g.ReapTx(0); err != nil || n != 10 {
			t.Fatalf("ReapTx = %d, %v; want 10 completions", n, err)
		}
	}
	if err := sameFrames(mf.sent, frameRange(txFrame, 0, 60)); err != nil {
		t.Fatalf("warm-up tx: %v", err)
	}

	// tx queue 1: a descriptor of the wrong type stops it (spec §4.9).
	g.PostTxRaw(1, vmxnet3.TxDesc{Addr: g.Layout().BufStart, Len: 60, DType: true, EOP: true, CQ: true})
	wire.Drain(r.Dev, 1)
	if stopped, code := r.Dev.QueueError(true, 1); !stopped || code != vmxnet3.QErrDescType {
		t.Fatalf("tx queue 1 after a dtype descriptor: stopped %v code %#x", stopped, code)
	}

	// rx queue 0: two rounds of 20 frames written and read (the guest
	// refills behind them), with frames the filters drop mixed in.
	if n := g.PostRx(0, 20); n != 20 {
		t.Fatalf("PostRx posted %d", n)
	}
	for round := 0; round < 2; round++ {
		good := frameRange(rxFrame, mf.nextRx, mf.nextRx+20)
		mf.nextRx += 20
		batch := append([][]byte{
			ethFrame(otherMAC, peerMAC, 80, 1),                         // not our MAC
			vlanFrame(guestMAC, otherMAC, 7, 80, 2),                    // VLAN not joined
			ethFrame([6]byte{0x01, 0, 0x5E, 0, 0, 9}, otherMAC, 80, 3), // group not joined
		}, good...)
		res := r.Dev.DeliverBatch(0, batch)
		if res.Written != 20 || res.Dropped != 3 || res.Held != 0 || res.Full {
			t.Fatalf("rx round %d: DeliverBatch = %+v, want 20 written, 3 dropped", round, res)
		}
		if err := sameFrames(receive(t, r, 0), good); err != nil {
			t.Fatalf("rx round %d: %v", round, err)
		}
	}
	// 20 more fill the buffers the guest posted back; 3 are held.
	batch := frameRange(rxFrame, mf.nextRx, mf.nextRx+23)
	mf.nextRx += 23
	mf.unread, mf.held[0] = batch[:20], batch[20:]
	if res := r.Dev.DeliverBatch(0, batch); res.Written != 20 || res.Held != 3 || !res.Full {
		t.Fatalf("DeliverBatch with 20 buffers for 23 frames = %+v, want 20 written, 3 held, Full", res)
	}
	// rx queue 1 has no buffers at all.
	mf.held[1] = [][]byte{ethFrame(guestMAC, otherMAC, 300, 0xE1), ethFrame(bcastMAC, otherMAC, 400, 0xE2)}
	if res := r.Dev.DeliverBatch(1, mf.held[1]); res.Held != 2 || !res.Full {
		t.Fatalf("DeliverBatch to rx queue 1 without buffers = %+v, want 2 held", res)
	}

	// Five packets posted (doorbell written) but never fetched: indices
	// 28..31 and 0, across the second wrap.
	mf.posted = frameRange(txFrame, mf.nextTx, mf.nextTx+5)
	mf.nextTx += 5
	if err := g.PostTx(0, mf.posted...); err != nil {
		t.Fatalf("PostTx: %v", err)
	}

	mf.txStats = g.Stats(true, 0)
	mf.rxStats = g.Stats(false, 0)
	mf.drops = dropCounts(r.Dev)
	mf.ecr = g.ECR()
	if mf.ecr&vmxnet3.EventTQErr == 0 {
		t.Fatalf("ecr = %#x, want TQERR pending", mf.ecr)
	}

	r.Dev.Freeze()
	s, err := r.Dev.Save()
	if err != nil {
		t.Fatalf("Save of a frozen device: %v", err)
	}
	mf.s = s
	return mf
}

// dropCounts reads a device's drop counters as plain data.
func dropCounts(d *vmxnet3.Device) vmxnet3.DropCounts {
	c := d.Drops()
	return vmxnet3.DropCounts{
		RxFiltered: c.RxFiltered.Load(), RxVLANFilter: c.RxVLANFilter.Load(), RxInactive: c.RxInactive.Load(),
		RxTooLong: c.RxTooLong.Load(), RxQueueError: c.RxQueueError.Load(),
		TxOversize: c.TxOversize.Load(), TxQueueError: c.TxQueueError.Load(), TxUnsupported: c.TxUnsupported.Load(),
	}
}

// cloneState deep-copies s, keeping nil slices nil.
func cloneState(s vmxnet3.State) vmxnet3.State {
	c := s
	if s.Config.MCastList != nil {
		c.Config.MCastList = append([][6]byte{}, s.Config.MCastList...)
	}
	if s.TxQueues != nil {
		c.TxQueues = append([]vmxnet3.TxQueueState{}, s.TxQueues...)
	}
	if s.RxQueues != nil {
		c.RxQueues = make([]vmxnet3.RxQueueState, len(s.RxQueues))
		for i, q := range s.RxQueues {
			if q.Pending != nil {
				p := make([][]byte, len(q.Pending))
				for j, f := range q.Pending {
					p[j] = append([]byte{}, f...)
				}
				q.Pending = p
			}
			c.RxQueues[i] = q
		}
	}
	return c
}

// stateDiff lists the fields in which a and b differ, for a failure
// message that fits on a screen.
func stateDiff(a, b vmxnet3.State) []string {
	var out []string
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	ty := va.Type()
	for i := 0; i < ty.NumField(); i++ {
		fa, fb := va.Field(i).Interface(), vb.Field(i).Interface()
		if reflect.DeepEqual(fa, fb) {
			continue
		}
		switch ty.Field(i).Name {
		case "RxQueues":
			if len(a.RxQueues) != len(b.RxQueues) {
				out = append(out, fmt.Sprintf("RxQueues: %d queues, want %d", len(a.RxQueues), len(b.RxQueues)))
				continue
			}
			for q := range a.RxQueues {
				x, y := a.RxQueues[q], b.RxQueues[q]
				if !reflect.DeepEqual(x.Pending, y.Pending) {
					out = append(out, fmt.Sprintf("RxQueues[%d].Pending: %v", q, sameFrames(x.Pending, y.Pending)))
				}
				x.Pending, y.Pending = nil, nil
				if !reflect.DeepEqual(x, y) {
					out = append(out, fmt.Sprintf("RxQueues[%d]: %+v, want %+v", q, x, y))
				}
			}
		default:
			out = append(out, fmt.Sprintf("%s: %+v, want %+v", ty.Field(i).Name, fa, fb))
		}
	}
	return out
}

// checkStatesEqual fails unless got and want are deep-equal.
func checkStatesEqual(t testing.TB, what string, got, want vmxnet3.State) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	t.Errorf("%s: states differ:", what)
	for _, d := range stateDiff(got, want) {
		t.Errorf("  %s", d)
	}
}

// memBytes copies the whole guest memory.
func memBytes(m *mem.Memory) []byte {
	v, _ := m.View(0, m.Size())
	return append([]byte(nil), v...)
}

// TestStateRoundTrip: save → restore into a fresh device over the same
// memory → save again gives the same State, directly and through an
// encoding (STYLE 17), and the State carries everything the mid-flight
// device had (spec §7.3 items 3–11).
func TestStateRoundTrip(t *testing.T) {
	mf := newMidFlight(t)
	s1 := mf.s

	// What the first save must carry (spec §7.3).
	t.Run("contents", func(t *testing.T) {
		checks := []struct {
			name      string
			got, want any
		}{
			{"Version", s1.Version, uint32(vmxnet3.StateVersion)},
			{"Active", s1.Active, true},
			{"LinkUp", s1.LinkUp, true},
			{"MAC", s1.MAC, guestMAC},
			{"PermMAC", s1.PermMAC, vmxnet3test.RigMAC},
			{"DSPA", s1.DSPA, mf.r.G.Layout().Shared},
			{"Config.NumTxQueues", s1.Config.NumTxQueues, 2},
			{"Config.NumRxQueues", s1.Config.NumRxQueues, 2},
			{"Config.MCastList", s1.Config.MCastList, [][6]byte{mcastMAC, mcastMAC2}},
			{"Config.VLANTable[0]", s1.Config.VLANTable[0], uint32(1<<0 | 1<<5)},
			{"Config.VLANTable[3]", s1.Config.VLANTable[3], uint32(1 << (100 % 32))},
			{"Config.RxMode", s1.Config.RxMode, stateConfig().RxMode},
			{"tx 0 ring", [2]any{s1.TxQueues[0].Ring.Next, s1.TxQueues[0].Ring.Gen}, [2]any{uint32(28), false}},
			{"tx 0 comp", [2]any{s1.TxQueues[0].Comp.Next, s1.TxQueues[0].Comp.Gen}, [2]any{uint32(28), false}},
			{"tx 0 stats", s1.TxQueues[0].Stats, mf.txStats},
			{"tx 1 stopped", [2]any{s1.TxQueues[1].Stopped, s1.TxQueues[1].Err}, [2]any{true, uint32(vmxnet3.QErrDescType)}},
			{"rx 0 ring 0 next", s1.RxQueues[0].Rings[0].Next, uint32(60 % 32)},
			{"rx 0 ring 0 gen", s1.RxQueues[0].Rings[0].Gen, false},
			{"rx 0 comp next", s1.RxQueues[0].Comp.Next, uint32(60)},
			{"rx 0 stats", s1.RxQueues[0].Stats, mf.rxStats},
			{"rx 0 pending", s1.RxQueues[0].Pending, mf.held[0]},
			{"rx 1 pending", s1.RxQueues[1].Pending, mf.held[1]},
			{"vector 0", s1.Vectors[vecTx0], vmxnet3.VectorState{Masked: true, Pending: true}},
			{"vector 1", s1.Vectors[vecTx1], vmxnet3.VectorState{}},
			{"vector 3", s1.Vectors[vecRx1], vmxnet3.VectorState{Masked: true}},
			{"Drops", s1.Drops, mf.drops},
		}
		for _, c := range checks {
			if !reflect.DeepEqual(c.got, c.want) {
				t.Errorf("Save: %s = %v, want %v", c.name, c.got, c.want)
			}
		}
		if s1.Drops.RxFiltered == 0 || s1.Drops.RxVLANFilter == 0 || s1.Drops.TxQueueError == 0 {
			t.Errorf("Save: drop counters %+v, want filtered, VLAN and tx queue error drops counted", s1.Drops)
		}
	})

	t.Run("direct", func(t *testing.T) {
		d2 := vmxnet3.New(mf.r.Mem, &vmxnet3test.Sink{}, vmxnet3test.RigMAC, nil)
		if err := d2.Restore(s1); err != nil {
			t.Fatalf("Restore of a saved state: %v", err)
		}
		if !d2.Frozen() {
			t.Fatalf("Restore left the device running; it must stay frozen until Thaw")
		}
		s2, err := d2.Save()
		if err != nil {
			t.Fatalf("Save after Restore: %v", err)
		}
		checkStatesEqual(t, "Save(Restore(s)) vs s", s2, s1)
	})

	t.Run("gob", func(t *testing.T) {
		var buf bytes.Buffer
		if err := gob.NewEncoder(&buf).Encode(s1); err != nil {
			t.Fatalf("gob encode: %v", err)
		}
		var s3 vmxnet3.State
		if err := gob.NewDecoder(&buf).Decode(&s3); err != nil {
			t.Fatalf("gob decode: %v", err)
		}
		d3 := vmxnet3.New(mf.r.Mem, &vmxnet3test.Sink{}, vmxnet3test.RigMAC, nil)
		if err := d3.Restore(s3); err != nil {
			t.Fatalf("Restore of a decoded state: %v", err)
		}
		s4, err := d3.Save()
		if err != nil {
			t.Fatal(err)
		}
		checkStatesEqual(t, "Save(Restore(decode(encode(s)))) vs s", s4, s1)
	})

	// The state is the caller's: changing it changes nothing in the
	// device, and a second save is the same.
	t.Run("copies", func(t *testing.T) {
		mut := s1 // shares the slices with s1 on purpose
		keep := cloneState(s1)
		mut.RxQueues[0].Pending[0][0] ^= 0xFF
		mut.Config.MCastList[0][5] ^= 0xFF
		again, err := mf.r.Dev.Save()
		again = cloneState(again) // before the edits are undone
		mut.RxQueues[0].Pending[0][0] ^= 0xFF
		mut.Config.MCastList[0][5] ^= 0xFF
		if err != nil {
			t.Fatal(err)
		}
		checkStatesEqual(t, "second Save after the caller edited the first", again, keep)
	})
}

// TestRestoreContinues: after Restore and Thaw the new device carries on
// exactly (spec §7.4 steps 5–8): the posted tx packets are sent once, with
// completions continuing both rings across a wrap; held rx frames come
// first, in order; UPT1 counters continue; a pending vector is delivered
// when unmasked and every unmasked one is raised once; no LINK event.
func TestRestoreContinues(t *testing.T) {
	mf := newMidFlight(t)
	r, g := mf.r, mf.r.G
	old := r.Dev
	sink := &vmxnet3test.Sink{}
	d2 := vmxnet3.New(r.Mem, sink, vmxnet3test.RigMAC, nil)
	if err := d2.Restore(mf.s); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	// The hand-off: the old device is emptied, the guest re-pointed.
	old.Discard()
	g.BAR0, g.BAR1 = d2.BAR0(), d2.BAR1()
	wire := vmxnet3test.NewWire(4, 2048)

	if sent, n := wire.Drain(d2, 0); n != 0 || len(sent) != 0 {
		t.Fatalf("restored device sent %d packets before Thaw", n)
	}
	if got := sink.Counts(); got != ([vmxnet3.MaxIntrs]uint64{}) {
		t.Fatalf("interrupts before Thaw: %v", got)
	}
	d2.Thaw()

	t.Run("vectors", func(t *testing.T) {
		// §7.4 step 8: every unmasked vector in use raised once; masked ones
		// not delivered (vector 0 stays pending).
		want := map[int]uint64{vecTx0: 0, vecTx1: 1, vecRx0: 1, vecRx1: 0, vecEvent: 1}
		for v := 0; v < vmxnet3.MaxIntrs; v++ {
			if got := sink.Count(v); got != want[v] {
				t.Errorf("vector %d delivered %d times at Thaw, want %d", v, got, want[v])
			}
		}
		g.Unmask(vecTx0)
		if got := sink.Count(vecTx0); got != 1 {
			t.Errorf("unmasking vector 0, pending since before the hand-off: delivered %d times, want 1", got)
		}
		g.Unmask(vecRx1)
		if got := sink.Count(vecRx1); got != 0 {
			t.Errorf("unmasking vector 3, never pending: delivered %d times, want 0", got)
		}
	})

	t.Run("no LINK event", func(t *testing.T) {
		if got := g.ECR(); got != mf.ecr {
			t.Errorf("ecr = %#x after the hand-off, want %#x (unchanged; no LINK event)", got, mf.ecr)
		}
		if got := g.Command(vmxnet3.CmdGetLink); got&vmxnet3.LinkUp == 0 {
			t.Errorf("GET_LINK = %#x after the hand-off, want link up", got)
		}
	})

	t.Run("counters continue", func(t *testing.T) {
		if got := g.Stats(true, 0); got != mf.txStats {
			t.Errorf("GET_STATS tx 0 after Restore = %v, want %v", got, mf.txStats)
		}
		if got := g.Stats(false, 0); got != mf.rxStats {
			t.Errorf("GET_STATS rx 0 after Restore = %v, want %v", got, mf.rxStats)
		}
		if got := dropCounts(d2); got != mf.drops {
			t.Errorf("drop counters after Restore = %+v, want %+v", got, mf.drops)
		}
		if stopped, code := g.QueueStatus(true, 1); !stopped || code != vmxnet3.QErrDescType {
			t.Errorf("GET_QUEUE_STATUS tx 1 after Restore: stopped %v code %#x, want the dtype error", stopped, code)
		}
		if stopped, _ := g.QueueStatus(true, 0); stopped {
			t.Errorf("GET_QUEUE_STATUS tx 0 after Restore: stopped")
		}
	})

	t.Run("tx", func(t *testing.T) {
		sent, n := wire.Drain(d2, 0)
		if n != len(mf.posted) {
			t.Fatalf("restored device consumed %d packets, want the %d posted before the freeze", n, len(mf.posted))
		}
		got := make([][]byte, len(sent))
		for i, s := range sent {
			got[i] = s.Frame
		}
		if err := sameFrames(got, mf.posted); err != nil {
			t.Fatalf("packets posted before the freeze: %v", err)
		}
		idx, err := g.ReapTxCompletions(0)
		if err != nil {
			t.Fatalf("completions after the hand-off: %v", err)
		}
		if want := []uint32{28, 29, 30, 31, 0}; !reflect.DeepEqual(idx, want) {
			t.Fatalf("txdIdx of the completions = %v, want %v (continuing the ring across its wrap)", idx, want)
		}
		if sent, n := wire.Drain(d2, 0); n != 0 {
			t.Fatalf("a second drain sent %d packets again", len(sent))
		}
		if sent, n := wire.Drain(old, 0); n != 0 {
			t.Fatalf("the discarded device sent %d packets", len(sent))
		}
		// More traffic, wrapping both rings once more.
		for round := 0; round < 4; round++ {
			frames := frameRange(txFrame, mf.nextTx, mf.nextTx+10)
			mf.nextTx += 10
			if err := g.PostTx(0, frames...); err != nil {
				t.Fatal(err)
			}
			sent, _ := wire.Drain(d2, 0)
			got := make([][]byte, len(sent))
			for i, s := range sent {
				got[i] = s.Frame
			}
			if err := sameFrames(got, frames); err != nil {
				t.Fatalf("round %d after the hand-off: %v", round, err)
			}
			if n, err := g.ReapTx(0); err != nil || n != 10 {
				t.Fatalf("round %d: ReapTx = %d, %v", round, n, err)
			}
		}
		after := g.Stats(true, 0)
		for i := range after {
			if after[i] < mf.txStats[i] {
				t.Errorf("tx counter %d went back: %d -> %d", i, mf.txStats[i], after[i])
			}
		}
		pkts := func(s [vmxnet3.NumUPT1Stats]uint64) uint64 {
			return s[vmxnet3.TxStatUcastPkts] + s[vmxnet3.TxStatMcastPkts] + s[vmxnet3.TxStatBcastPkts]
		}
		if got, want := pkts(after)-pkts(mf.txStats), uint64(len(mf.posted)+40); got != want {
			t.Errorf("tx packets counted after the hand-off: %d, want %d", got, want)
		}
	})

	t.Run("rx", func(t *testing.T) {
		// The 20 frames the old device wrote are in guest memory; reading
		// them refills 20 buffers and writes RXPROD to the new device.
		if err := sameFrames(receive(t, r, 0), mf.unread); err != nil {
			t.Fatalf("frames written before the freeze: %v", err)
		}
		fresh := frameRange(rxFrame, mf.nextRx, mf.nextRx+10)
		mf.nextRx += 10
		res := d2.DeliverBatch(0, fresh)
		if res.Consumed != 10 || res.Written != 13 || res.Held != 0 || res.Full {
			t.Fatalf("DeliverBatch after the hand-off = %+v, want the 3 held and 10 new frames written", res)
		}
		if err := sameFrames(receive(t, r, 0), append(append([][]byte{}, mf.held[0]...), fresh...)); err != nil {
			t.Fatalf("held frames first, then new ones: %v", err)
		}
		// Once more round both rings.
		for round := 0; round < 3; round++ {
			fresh := frameRange(rxFrame, mf.nextRx, mf.nextRx+15)
			mf.nextRx += 15
			if res := d2.DeliverBatch(0, fresh); res.Written != 15 {
				t.Fatalf("round %d: DeliverBatch = %+v", round, res)
			}
			if err := sameFrames(receive(t, r, 0), fresh); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		// rx queue 1 holds two frames until the guest posts buffers.
		g.PostRx(1, 4)
		if res := d2.DeliverBatch(1, nil); res.Written != 2 || res.Full {
			t.Fatalf("DeliverBatch(1, nil) after posting buffers = %+v, want the 2 held frames", res)
		}
		if err := sameFrames(receive(t, r, 1), mf.held[1]); err != nil {
			t.Fatalf("rx queue 1: %v", err)
		}
		after := g.Stats(false, 0)
		for i := range after {
			if after[i] < mf.rxStats[i] {
				t.Errorf("rx counter %d went back: %d -> %d", i, mf.rxStats[i], after[i])
			}
		}
		if d2.HeldFrames(0) != 0 || d2.HeldFrames(1) != 0 || old.HeldFrames(0) != 0 {
			t.Errorf("frames still held: new %d/%d, old %d", d2.HeldFrames(0), d2.HeldFrames(1), old.HeldFrames(0))
		}
	})

	if err := r.CheckGuard(); err != nil {
		t.Error(err)
	}
}

// TestThawRaisesPendingUnmaskedVector: a vector saved pending and unmasked
// is delivered once at Thaw; vectors outside the device's NumIntrs are not
// raised, and a masked pending vector waits for its unmask.
func TestThawRaisesPendingUnmaskedVector(t *testing.T) {
	mf := newMidFlight(t)
	s := cloneState(mf.s)
	s.Vectors[vecRx1] = vmxnet3.VectorState{Pending: true}
	s.Vectors[10] = vmxnet3.VectorState{Pending: true} // not in use
	sink := &vmxnet3test.Sink{}
	d := vmxnet3.New(mf.r.Mem, sink, vmxnet3test.RigMAC, nil)
	if err := d.Restore(s); err != nil {
		t.Fatal(err)
	}
	d.Thaw()
	for _, c := range []struct {
		v    int
		want uint64
	}{{vecTx0, 0}, {vecRx1, 1}, {10, 0}} {
		if got := sink.Count(c.v); got != c.want {
			t.Errorf("vector %d delivered %d times at Thaw, want %d", c.v, got, c.want)
		}
	}
}

// TestSaveNotFrozen: Save and AddPending refuse a running device.
func TestSaveNotFrozen(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	if _, err := r.Dev.Save(); !errors.Is(err, vmxnet3.ErrNotFrozen) {
		t.Errorf("Save of a running device: %v, want ErrNotFrozen", err)
	}
	if err := r.Dev.AddPending(0, [][]byte{ethFrame(ownMAC, otherMAC, 60, 1)}); !errors.Is(err, vmxnet3.ErrNotFrozen) {
		t.Errorf("AddPending to a running device: %v, want ErrNotFrozen", err)
	}
	r.Dev.Freeze()
	if _, err := r.Dev.Save(); err != nil {
		t.Errorf("Save of a frozen device: %v", err)
	}
	if err := r.Dev.AddPending(vmxnet3.MaxRxQueues, nil); !errors.Is(err, vmxnet3.ErrQueue) {
		t.Errorf("AddPending to queue %d: %v, want ErrQueue", vmxnet3.MaxRxQueues, err)
	}
	r.Dev.Thaw()
	if _, err := r.Dev.Save(); !errors.Is(err, vmxnet3.ErrNotFrozen) {
		t.Errorf("Save after Thaw: %v, want ErrNotFrozen", err)
	}
}

// badStates are invalid variants of a valid state (two queue pairs, 32-entry
// tx rings) and the error each must be refused with.
func badStates(memSize uint64) []struct {
	name string
	edit func(s *vmxnet3.State)
	want error
} {
	return []struct {
		name string
		edit func(s *vmxnet3.State)
		want error
	}{
		{"version 0", func(s *vmxnet3.State) { s.Version = 0 }, vmxnet3.ErrStateVersion},
		{"version from the future", func(s *vmxnet3.State) { s.Version = vmxnet3.StateVersion + 1 }, vmxnet3.ErrStateVersion},
		{"tx ring next = size", func(s *vmxnet3.State) { s.TxQueues[0].Ring.Next = s.TxQueues[0].Ring.Size }, vmxnet3.ErrBadState},
		{"tx comp next > size", func(s *vmxnet3.State) { s.TxQueues[1].Comp.Next = s.TxQueues[1].Comp.Size + 7 }, vmxnet3.ErrBadState},
		{"rx ring 1 next = size", func(s *vmxnet3.State) { s.RxQueues[0].Rings[1].Next = s.RxQueues[0].Rings[1].Size }, vmxnet3.ErrBadState},
		{"rx comp next = size", func(s *vmxnet3.State) { s.RxQueues[1].Comp.Next = s.RxQueues[1].Comp.Size }, vmxnet3.ErrBadState},
		{"tx ring at end of memory", func(s *vmxnet3.State) { s.TxQueues[0].Ring.Base = memSize }, vmxnet3.ErrBadState},
		{"tx comp ring straddles end of memory", func(s *vmxnet3.State) {
			s.TxQueues[0].Comp.Base, s.TxQueues[0].Comp.Size = memSize-512, 64
		}, vmxnet3.ErrBadState},
		{"rx ring 0 base near 2^64", func(s *vmxnet3.State) { s.RxQueues[0].Rings[0].Base = ^uint64(0) &^ 511 }, vmxnet3.ErrBadState},
		{"rx comp far outside memory", func(s *vmxnet3.State) { s.RxQueues[1].Comp.Base = memSize << 4 }, vmxnet3.ErrBadState},
		{"tx ring size 0", func(s *vmxnet3.State) { s.TxQueues[0].Ring.Size, s.TxQueues[0].Ring.Next = 0, 0 }, vmxnet3.ErrBadState},
		{"tx ring size not a multiple of 32", func(s *vmxnet3.State) { s.TxQueues[0].Ring.Size = 48 }, vmxnet3.ErrBadState},
		{"rx ring size above the maximum", func(s *vmxnet3.State) { s.RxQueues[0].Rings[0].Size = vmxnet3.MaxRxRingSize + 32 }, vmxnet3.ErrBadState},
		{"tx ring base misaligned", func(s *vmxnet3.State) { s.TxQueues[1].Ring.Base += 16 }, vmxnet3.ErrBadState},
		{"tx queue count mismatch", func(s *vmxnet3.State) { s.Config.NumTxQueues = 1 }, vmxnet3.ErrBadState},
		{"rx queue state missing", func(s *vmxnet3.State) { s.RxQueues = s.RxQueues[:1] }, vmxnet3.ErrBadState},
		{"no tx queues", func(s *vmxnet3.State) { s.Config.NumTxQueues, s.TxQueues = 0, nil }, vmxnet3.ErrBadState},
		{"9 tx queues", func(s *vmxnet3.State) {
			for len(s.TxQueues) < vmxnet3.MaxTxQueues+1 {
				s.TxQueues = append(s.TxQueues, s.TxQueues[0])
			}
			s.Config.NumTxQueues = len(s.TxQueues)
		}, vmxnet3.ErrBadState},
		{"inactive with queues", func(s *vmxnet3.State) { s.Active = false }, vmxnet3.ErrBadState},
		{"MTU 0", func(s *vmxnet3.State) { s.Config.MTU = 0 }, vmxnet3.ErrBadState},
		{"MTU 59", func(s *vmxnet3.State) { s.Config.MTU = vmxnet3.MinMTU - 1 }, vmxnet3.ErrBadState},
		{"MTU 9001", func(s *vmxnet3.State) { s.Config.MTU = vmxnet3.MaxMTU + 1 }, vmxnet3.ErrBadState},
		{"event vector 25", func(s *vmxnet3.State) { s.Config.EventIntrIdx = vmxnet3.MaxIntrs }, vmxnet3.ErrBadState},
		{"tx vector 25", func(s *vmxnet3.State) { s.TxQueues[1].IntrIdx = vmxnet3.MaxIntrs }, vmxnet3.ErrBadState},
		{"rx vector 255", func(s *vmxnet3.State) { s.RxQueues[0].IntrIdx = 255 }, vmxnet3.ErrBadState},
		{"pending frame of 3 bytes", func(s *vmxnet3.State) {
			s.RxQueues[0].Pending = append(s.RxQueues[0].Pending, []byte{1, 2, 3})
		}, vmxnet3.ErrBadState},
		{"pending frame of 13 bytes", func(s *vmxnet3.State) {
			s.RxQueues[1].Pending = append([][]byte{make([]byte, 13)}, s.RxQueues[1].Pending...)
		}, vmxnet3.ErrBadState},
		{"pending frame of 9065 bytes", func(s *vmxnet3.State) {
			s.RxQueues[1].Pending = append(s.RxQueues[1].Pending, make([]byte, vmxnet3.MaxMTU+65))
		}, vmxnet3.ErrBadState},
	}
}

// TestRestoreInvalid: Restore of an invalid state fails with an error
// wrapping ErrBadState or ErrStateVersion and changes nothing: not the
// target device (fresh, frozen with state of its own, or running) and not
// guest memory.
func TestRestoreInvalid(t *testing.T) {
	mf := newMidFlight(t)
	valid := mf.s
	memSize := mf.r.Mem.Size()
	if err := valid.Validate(memSize); err != nil {
		t.Fatalf("Validate of a saved state: %v", err)
	}
	// A running device over a second guest memory laid out the same way.
	running := upRig(t, stateConfig())
	running.G.PostRx(0, 4)

	targets := []struct {
		name string
		dev  *vmxnet3.Device
	}{
		{"fresh", vmxnet3.New(mf.r.Mem, &vmxnet3test.Sink{}, vmxnet3test.RigMAC, nil)},
		{"frozen with state", mf.r.Dev},
		{"running", running.Dev},
	}
	for _, bc := range badStates(memSize) {
		t.Run(bc.name, func(t *testing.T) {
			s := cloneState(valid)
			bc.edit(&s)
			if err := s.Validate(memSize); !errors.Is(err, bc.want) {
				t.Errorf("Validate = %v, want an error wrapping %v", err, bc.want)
			}
			for _, tg := range targets {
				snap, held := tg.dev.Snapshot()
				frozen := tg.dev.Frozen()
				var saved vmxnet3.State
				if frozen {
					saved, _ = tg.dev.Save()
				}
				memBefore := memBytes(tg.dev.Memory())
				err := tg.dev.Restore(s)
				if !errors.Is(err, bc.want) {
					t.Errorf("%s device: Restore = %v, want an error wrapping %v", tg.name, err, bc.want)
				}
				snap2, held2 := tg.dev.Snapshot()
				checkStatesEqual(t, tg.name+" device: Snapshot after a failed Restore", snap2, snap)
				if !reflect.DeepEqual(held2, held) {
					t.Errorf("%s device: held frames %v after a failed Restore, want %v", tg.name, held2, held)
				}
				if tg.dev.Frozen() != frozen {
					t.Errorf("%s device: Frozen = %v after a failed Restore, want %v", tg.name, tg.dev.Frozen(), frozen)
				}
				if frozen {
					again, _ := tg.dev.Save()
					checkStatesEqual(t, tg.name+" device: Save after a failed Restore", again, saved)
				}
				if !bytes.Equal(memBytes(tg.dev.Memory()), memBefore) {
					t.Errorf("%s device: a failed Restore wrote guest memory", tg.name)
				}
			}
		})
	}
	// The running device still runs.
	if running.Dev.Frozen() {
		t.Fatal("running device frozen by failed Restores")
	}
	f := ethFrame(ownMAC, otherMAC, 100, 1)
	if res := running.Dev.DeliverBatch(0, [][]byte{f}); res.Written != 1 {
		t.Fatalf("running device after failed Restores: DeliverBatch = %+v", res)
	}
}

// TestFrozen: while frozen, ProcessTx does nothing and DeliverBatch holds
// every frame, unfiltered, even with buffers posted; after Thaw the held
// frames go through the filters in order (spec §7.4 steps 2–3, 7).
func TestFrozen(t *testing.T) {
	r := upRig(t, vmxnet3test.DefaultConfig())
	wire := vmxnet3test.NewWire(4, 2048)
	tx := [][]byte{ethFrame(otherMAC, ownMAC, 100, 1), ethFrame(otherMAC, ownMAC, 200, 2), ethFrame(bcastMAC, ownMAC, 300, 3)}
	if err := r.G.PostTx(0, tx...); err != nil {
		t.Fatal(err)
	}
	r.Dev.Freeze()
	if !r.Dev.Frozen() {
		t.Fatal("Frozen() = false after Freeze")
	}
	if sent, n := wire.Drain(r.Dev, 0); n != 0 || len(sent) != 0 {
		t.Fatalf("ProcessTx while frozen consumed %d packets", n)
	}

	good1 := ethFrame(ownMAC, otherMAC, 100, 1)
	good2 := ethFrame(bcastMAC, otherMAC, 120, 2)
	filtered := ethFrame(otherMAC, peerMAC, 140, 3)   // not our MAC
	vlanOut := vlanFrame(ownMAC, otherMAC, 9, 160, 4) // VLAN not joined
	good3 := vlanFrame(ownMAC, otherMAC, 0, 180, 5)   // priority-tagged
	rx := [][]byte{good1, filtered, good2, vlanOut, good3}
	drops := dropCounts(r.Dev)
	res := r.Dev.DeliverBatch(0, rx)
	if want := (vmxnet3.RxResult{Consumed: 5, Held: 5, Full: true}); res != want {
		t.Fatalf("DeliverBatch while frozen = %+v, want %+v", res, want)
	}
	if got := dropCounts(r.Dev); got != drops {
		t.Fatalf("drop counters changed while frozen: %+v -> %+v", drops, got)
	}
	if r.Dev.HeldFrames(0) != 5 {
		t.Fatalf("HeldFrames = %d while frozen, want 5", r.Dev.HeldFrames(0))
	}
	if comps, _ := r.G.ReadRxCompletions(0); len(comps) != 0 {
		t.Fatalf("%d rx completions written while frozen", len(comps))
	}
	// The device copied them.
	for _, f := range rx {
		f[20] ^= 0xFF
	}
	more := ethFrame(ownMAC, otherMAC, 200, 6)
	if res := r.Dev.DeliverBatch(0, [][]byte{more}); res.Held != 1 || !res.Full {
		t.Fatalf("second DeliverBatch while frozen = %+v", res)
	}
	for _, f := range rx {
		f[20] ^= 0xFF
	}

	r.Dev.Thaw()
	if r.Dev.Frozen() {
		t.Fatal("Frozen() = true after Thaw")
	}
	res = r.Dev.DeliverBatch(0, nil)
	if res.Written != 4 || res.Full || res.Held != 0 {
		t.Fatalf("DeliverBatch(nil) after Thaw = %+v, want the 4 admitted held frames written", res)
	}
	if err := sameFrames(receive(t, r, 0), [][]byte{good1, good2, good3, more}); err != nil {
		t.Fatalf("held frames after Thaw: %v", err)
	}
	got := dropCounts(r.Dev)
	if got.RxFiltered != drops.RxFiltered+1 || got.RxVLANFilter != drops.RxVLANFilter+1 {
		t.Errorf("drops after Thaw = %+v, want one filtered and one VLAN drop more than %+v", got, drops)
	}
	sent, n := wire.Drain(r.Dev, 0)
	if n != 3 {
		t.Fatalf("ProcessTx after Thaw consumed %d packets, want 3", n)
	}
	frames := make([][]byte, len(sent))
	for i, s := range sent {
		frames[i] = s.Frame
	}
	if err := sameFrames(frames, tx); err != nil {
		t.Fatalf("tx after Thaw: %v", err)
	}
}

// TestSavedStateValidates: whatever a frozen device holds, the state it
// saves must restore; otherwise one odd frame from the wire fails the
// whole hand-off. A frozen device holds frames unfiltered, so it holds a
// runt or an over-long frame as readily as a good one.
func TestSavedStateValidates(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    []byte
	}{
		{"runt of 3 bytes", []byte{1, 2, 3}},
		{"13 bytes", ethFrame(ownMAC, otherMAC, 14, 1)[:13]},
		{"9065 bytes", ethFrame(ownMAC, otherMAC, vmxnet3.MaxMTU+65, 2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := upRig(t, vmxnet3test.DefaultConfig())
			r.Dev.Freeze()
			good := ethFrame(ownMAC, otherMAC, 100, 9)
			r.Dev.DeliverBatch(0, [][]byte{good, tc.f, good})
			s, err := r.Dev.Save()
			if err != nil {
				t.Fatal(err)
			}
			d2 := vmxnet3.New(r.Mem, &vmxnet3test.Sink{}, vmxnet3test.RigMAC, nil)
			if err := d2.Restore(s); err != nil {
				t.Fatalf("Restore of the state a frozen device saved after DeliverBatch of a %d-byte frame: %v", len(tc.f), err)
			}
		})
	}
}

// TestValidateQueueTableAddresses: ACTIVATE refuses a DriverShared or queue
// descriptor table outside guest memory (spec §2.5); Validate must not
// accept in a State what ACTIVATE refuses from the guest, since the
// restored device writes there (updateRxProd at Restore, status and stats
// on GET_QUEUE_STATUS / GET_STATS, ecr on events).
func TestValidateQueueTableAddresses(t *testing.T) {
	mf := newMidFlight(t)
	memSize := mf.r.Mem.Size()
	for _, tc := range []struct {
		name string
		edit func(s *vmxnet3.State)
	}{
		{"tx queue descriptor outside memory", func(s *vmxnet3.State) { s.TxQueues[0].DescPA = memSize + vmxnet3.QueueDescSize }},
		{"rx queue descriptor outside memory", func(s *vmxnet3.State) { s.RxQueues[1].DescPA = memSize }},
		{"rx queue descriptor across the end of memory", func(s *vmxnet3.State) { s.RxQueues[0].DescPA = memSize - 64 }},
		{"DriverShared outside memory", func(s *vmxnet3.State) { s.DSPA = memSize + 4096 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := cloneState(mf.s)
			tc.edit(&s)
			if err := s.Validate(memSize); !errors.Is(err, vmxnet3.ErrBadState) {
				t.Errorf("Validate = %v, want an error wrapping ErrBadState", err)
			}
		})
	}
}

// ---- fuzzing ----

// Fuzz input of FuzzStateValidate: a list of edits applied to a valid
// mid-flight state, each one selector byte and 8 value bytes (little
// endian; missing bytes at the end of the input are zero). The selector
// picks a field (fuzzOp*); for per-queue fields the value's top byte picks
// the queue, and for ring fields the next byte picks the part (0 base
// (48 bits), 1 size, 2 next, 3 gen).
const (
	fuzzOpVersion = iota
	fuzzOpActive
	fuzzOpNumTx
	fuzzOpNumRx
	fuzzOpMTU
	fuzzOpEventIdx
	fuzzOpNumIntrs
	fuzzOpMaxSG
	fuzzOpTxQueues // resize TxQueues to v % 12 (copies of queue 0)
	fuzzOpRxQueues // resize RxQueues to v % 20
	fuzzOpTxRing
	fuzzOpTxComp
	fuzzOpRxRing // part byte: ring 0, ring 1, comp (mod 3) in bits 40..47
	fuzzOpTxIntr
	fuzzOpRxIntr
	fuzzOpPending // append a frame of v % 10000 bytes to rx queue q
	fuzzOpPendingClear
	fuzzOpVector // vector v % 25: masked bit 8, pending bit 9
	fuzzOpAutoMask
	fuzzOpMCast
	fuzzOpTxDescPA
	fuzzOpRxDescPA
	fuzzOpDSPA
	fuzzOpTxStop
	fuzzOpRxStop
	fuzzOpStats
	fuzzOpDrops
	fuzzOpVLAN
	fuzzOpRxMode
	fuzzOpHugeBase // a ring base just below 2^64
	fuzzOpRegs
	fuzzOpLink
	fuzzOpCount
)

func setRingPart(r *vmxnet3.Ring, v uint64) {
	switch (v >> 48) & 3 {
	case 0:
		r.Base = v & (1<<48 - 1)
	case 1:
		r.Size = uint32(v)
	case 2:
		r.Next = uint32(v)
	case 3:
		r.Gen = v&1 != 0
	}
}

// applyFuzzEdits applies the edits in data to s.
func applyFuzzEdits(s *vmxnet3.State, data []byte) {
	for len(data) > 0 {
		op := data[0] % fuzzOpCount
		var vb [8]byte
		n := copy(vb[:], data[1:])
		data = data[1+n:]
		v := binary.LittleEndian.Uint64(vb[:])
		q := int(v >> 56)
		var tq *vmxnet3.TxQueueState
		if len(s.TxQueues) > 0 {
			tq = &s.TxQueues[q%len(s.TxQueues)]
		}
		var rq *vmxnet3.RxQueueState
		if len(s.RxQueues) > 0 {
			rq = &s.RxQueues[q%len(s.RxQueues)]
		}
		switch op {
		case fuzzOpVersion:
			s.Version = uint32(v)
		case fuzzOpActive:
			s.Active = v&1 != 0
		case fuzzOpNumTx:
			s.Config.NumTxQueues = int(int8(v))
		case fuzzOpNumRx:
			s.Config.NumRxQueues = int(int8(v))
		case fuzzOpMTU:
			s.Config.MTU = uint32(v)
		case fuzzOpEventIdx:
			s.Config.EventIntrIdx = uint8(v)
		case fuzzOpNumIntrs:
			s.Config.NumIntrs = uint8(v)
		case fuzzOpMaxSG:
			s.Config.MaxNumRxSG = uint16(v)
		case fuzzOpTxQueues:
			n := int(v % 12)
			for len(s.TxQueues) < n {
				var x vmxnet3.TxQueueState
				if len(s.TxQueues) > 0 {
					x = s.TxQueues[0]
				}
				s.TxQueues = append(s.TxQueues, x)
			}
			s.TxQueues = s.TxQueues[:n]
		case fuzzOpRxQueues:
			n := int(v % 20)
			for len(s.RxQueues) < n {
				var x vmxnet3.RxQueueState
				if len(s.RxQueues) > 0 {
					x = s.RxQueues[0]
					x.Pending = nil
				}
				s.RxQueues = append(s.RxQueues, x)
			}
			s.RxQueues = s.RxQueues[:n]
		case fuzzOpTxRing:
			if tq != nil {
				setRingPart(&tq.Ring, v)
			}
		case fuzzOpTxComp:
			if tq != nil {
				setRingPart(&tq.Comp, v)
			}
		case fuzzOpRxRing:
			if rq != nil {
				switch (v >> 40 & 0xFF) % 3 {
				case 0, 1:
					setRingPart(&rq.Rings[(v>>40&0xFF)%3], v)
				case 2:
					setRingPart(&rq.Comp, v)
				}
			}
		case fuzzOpTxIntr:
			if tq != nil {
				tq.IntrIdx = uint8(v)
			}
		case fuzzOpRxIntr:
			if rq != nil {
				rq.IntrIdx = uint8(v)
			}
		case fuzzOpPending:
			if rq != nil {
				f := make([]byte, int(v&0xFFFF)%10000)
				for i := range f {
					f[i] = byte(v>>24) + byte(i)
				}
				rq.Pending = append(rq.Pending, f)
			}
		case fuzzOpPendingClear:
			if rq != nil {
				rq.Pending = nil
			}
		case fuzzOpVector:
			s.Vectors[v%vmxnet3.MaxIntrs] = vmxnet3.VectorState{Masked: v>>8&1 != 0, Pending: v>>9&1 != 0}
		case fuzzOpAutoMask:
			s.AutoMask, s.Config.AutoMask = v&1 != 0, v&2 != 0
		case fuzzOpMCast:
			var m [6]byte
			binary.LittleEndian.PutUint32(m[:], uint32(v))
			m[0] |= 1
			s.Config.MCastList = append(s.Config.MCastList, m)
		case fuzzOpTxDescPA:
			if tq != nil {
				tq.DescPA = v &^ (0xFF << 56)
			}
		case fuzzOpRxDescPA:
			if rq != nil {
				rq.DescPA = v &^ (0xFF << 56)
			}
		case fuzzOpDSPA:
			s.DSPA = v
		case fuzzOpTxStop:
			if tq != nil {
				tq.Stopped, tq.Err = v&1 != 0, uint32(v>>8)
			}
		case fuzzOpRxStop:
			if rq != nil {
				rq.Stopped, rq.Err = v&1 != 0, uint32(v>>8)
			}
		case fuzzOpStats:
			if tq != nil {
				tq.Stats[v%vmxnet3.NumUPT1Stats] = v
			}
			if rq != nil {
				rq.Stats[(v>>8)%vmxnet3.NumUPT1Stats] = v
				rq.Prod[v>>16&1] = uint32(v)
			}
		case fuzzOpDrops:
			s.Drops.RxFiltered, s.Drops.TxOversize = v, v>>1
		case fuzzOpVLAN:
			s.Config.VLANTable[v%vmxnet3.VLANTableWords] = uint32(v >> 8)
		case fuzzOpRxMode:
			s.Config.RxMode = uint32(v)
		case fuzzOpHugeBase:
			if tq != nil {
				tq.Ring.Base = ^uint64(0) - (v & 0xFFFF)
			}
		case fuzzOpRegs:
			s.VRRS, s.UVRS, s.LastCmd = uint32(v), uint32(v>>32), uint32(v>>16)
			s.DSAL, s.DSALValid, s.MACL = uint32(v>>8), v&1 != 0, uint32(v>>24)
			binary.LittleEndian.PutUint32(s.MAC[:], uint32(v))
		case fuzzOpLink:
			s.LinkUp, s.ActivateOK = v&1 != 0, v&2 != 0
		}
	}
}

// normalState maps empty slices to nil: a State does not distinguish them.
func normalState(s vmxnet3.State) vmxnet3.State {
	s = cloneState(s)
	if len(s.Config.MCastList) == 0 {
		s.Config.MCastList = nil
	}
	if len(s.TxQueues) == 0 {
		s.TxQueues = nil
	}
	if len(s.RxQueues) == 0 {
		s.RxQueues = nil
	}
	for i := range s.RxQueues {
		if len(s.RxQueues[i].Pending) == 0 {
			s.RxQueues[i].Pending = nil
		}
	}
	return s
}

// FuzzStateValidate edits a valid mid-flight state at random. Whatever the
// edits, Validate must not panic and must agree with Restore; a Restore that
// fails changes nothing (device or memory), one that succeeds saves back the
// same state, and the restored device then survives running its engines.
// Seeds (one per invalid case of TestRestoreInvalid and a few valid edits)
// are in testdata/fuzz/FuzzStateValidate.
func FuzzStateValidate(f *testing.F) {
	mf := newMidFlight(f)
	base := mf.s
	image := memBytes(mf.r.Mem)
	memSize := mf.r.Mem.Size()
	f.Fuzz(func(t *testing.T, data []byte) {
		s := cloneState(base)
		applyFuzzEdits(&s, data)
		m, err := mem.New(memSize)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Write(0, image); err != nil {
			t.Fatal(err)
		}
		verr := s.Validate(memSize)
		dev := vmxnet3.New(m, &vmxnet3test.Sink{}, vmxnet3test.RigMAC, nil)
		if err := dev.Restore(cloneState(base)); err != nil {
			t.Fatalf("Restore of the base state: %v", err)
		}
		before, _ := dev.Save()
		snap, held := dev.Snapshot()
		memBefore := memBytes(m)

		err = dev.Restore(cloneState(s))
		if (err == nil) != (verr == nil) {
			t.Fatalf("Restore = %v but Validate = %v", err, verr)
		}
		if err != nil {
			if !errors.Is(err, vmxnet3.ErrBadState) && !errors.Is(err, vmxnet3.ErrStateVersion) {
				t.Fatalf("Restore = %v, want an error wrapping ErrBadState or ErrStateVersion", err)
			}
			after, _ := dev.Save()
			checkStatesEqual(t, "Save after a failed Restore", after, before)
			snap2, held2 := dev.Snapshot()
			checkStatesEqual(t, "Snapshot after a failed Restore", snap2, snap)
			if !reflect.DeepEqual(held2, held) {
				t.Errorf("held frames %v after a failed Restore, want %v", held2, held)
			}
			if !bytes.Equal(memBytes(m), memBefore) {
				t.Errorf("a failed Restore wrote guest memory")
			}
			return
		}
		after, err := dev.Save()
		if err != nil {
			t.Fatalf("Save after Restore: %v", err)
		}
		checkStatesEqual(t, "Save(Restore(s)) vs s", normalState(after), normalState(s))
		// The engines run on whatever was accepted without panicking.
		dev.Thaw()
		wire := vmxnet3test.NewWire(4, 2048)
		for q := 0; q < vmxnet3.MaxTxQueues; q++ {
			wire.Drain(dev, q)
		}
		for q := 0; q < len(s.RxQueues); q++ {
			dev.DeliverBatch(q, [][]byte{ethFrame(s.MAC, otherMAC, 100, byte(q))})
		}
	})
}

// TestSaveInactiveAccountsHeldFrames: a device frozen before the guest
// activated it still holds what it is sent (unfiltered); the state it saves
// must carry those frames or count them as dropped (STYLE 10), never lose
// them silently.
func TestSaveInactiveAccountsHeldFrames(t *testing.T) {
	r := newRig(t, vmxnet3test.DefaultConfig()) // not brought up
	r.Dev.Freeze()
	frames := [][]byte{ethFrame(ownMAC, otherMAC, 100, 1), ethFrame(ownMAC, otherMAC, 100, 2)}
	if res := r.Dev.DeliverBatch(0, frames); res.Held != len(frames) {
		t.Fatalf("DeliverBatch to a frozen inactive device = %+v, want %d held", res, len(frames))
	}
	s, err := r.Dev.Save()
	if err != nil {
		t.Fatal(err)
	}
	carried := 0
	for _, q := range s.RxQueues {
		carried += len(q.Pending)
	}
	if counted := s.Drops.RxInactive; carried+int(counted) != len(frames) {
		t.Errorf("state of an inactive device that held %d frames carries %d and counts %d dropped; every frame must be one or the other",
			len(frames), carried, counted)
	}
}
