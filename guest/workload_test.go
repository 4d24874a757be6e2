package guest

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/wire"
)

// Guest memory map of the test VMs.
const (
	wtMemSize      = 1 << 20
	wtTrafficBase  = 0x1000
	wtResponder    = 0x9000
	wtTxBufs       = 0x10000
	wtTxBufSize    = 2048
	wtTxBufCount   = 256     // physical tx buffers, reused in turn whatever the ring size
	wtRxBuf        = 0xC0000 // one rx buffer, large enough for a jumbo frame
	wtDefaultSlots = 64
)

// fakeNIC is a NetDev over guest memory: tx buffers at wtTxBufs, handed out
// in turn (a test must take frames before wtTxBufCount more are posted), and a list of committed frames that the test's "fabric" takes
// and then completes. It never allocates once pending has its capacity.
type fakeNIC struct {
	m       *mem.Memory
	mac     wire.MAC
	slots   int       // tx ring capacity
	next    int       // buffers handed out so far
	pending []txFrame // committed, not yet completed, in order
	commits int       // TxCommit calls
	reserve int       // TxReserve calls that succeeded
	bufSize int       // size TxReserve reports
}

type txFrame struct {
	pa uint64
	n  int
}

var _ NetDev = (*fakeNIC)(nil)

func newFakeNIC(m *mem.Memory, mac wire.MAC, slots int) *fakeNIC {
	return &fakeNIC{m: m, mac: mac, slots: slots, pending: make([]txFrame, 0, slots), bufSize: wtTxBufSize}
}

func (d *fakeNIC) MAC() wire.MAC { return d.mac }

func (d *fakeNIC) TxReserve() (uint64, int, bool) {
	if len(d.pending) >= d.slots {
		return 0, 0, false
	}
	d.reserve++
	return wtTxBufs + uint64(d.next%wtTxBufCount)*wtTxBufSize, d.bufSize, true
}

func (d *fakeNIC) TxCommit(n int) {
	pa := wtTxBufs + uint64(d.next%wtTxBufCount)*wtTxBufSize
	d.pending = append(d.pending, txFrame{pa, n})
	d.next++
	d.commits++
}

// TxRoom and TxSend: the probe workloads never use the offload-aware send.
func (d *fakeNIC) TxRoom() int { return 0 }

func (d *fakeNIC) TxSend([]byte, TxOffload) bool { return false }

// take returns copies of the committed frames and completes them.
func (d *fakeNIC) take() [][]byte {
	var out [][]byte
	for _, f := range d.pending {
		v, ok := d.m.View(f.pa, uint64(f.n))
		if !ok {
			panic("fakeNIC: committed frame outside memory")
		}
		out = append(out, bytes.Clone(v))
	}
	d.pending = d.pending[:0]
	return out
}

// moveTo hands the device state (committed frames) to a NIC over a copy of
// the memory, as the emulated device's state follows a migrated VM.
func (d *fakeNIC) moveTo(m *mem.Memory) *fakeNIC {
	n := newFakeNIC(m, d.mac, d.slots)
	n.next = d.next
	n.pending = append(n.pending, d.pending...)
	return n
}

func newTestMem(tb testing.TB) *mem.Memory {
	tb.Helper()
	m, err := mem.New(wtMemSize)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// cloneMem copies every page of m into a new arena, as the stop-and-copy
// phase of a migration does.
func cloneMem(tb testing.TB, m *mem.Memory) *mem.Memory {
	tb.Helper()
	c, err := mem.New(m.Size())
	if err != nil {
		tb.Fatal(err)
	}
	for p := range m.Pages() {
		if err := c.LoadPage(p, m.Page(p)); err != nil {
			tb.Fatal(err)
		}
	}
	return c
}

// deliver writes f into the rx buffer of m and hands it to w.
func deliver(tb testing.TB, w Workload, dev NetDev, m *mem.Memory, f []byte, now int64) {
	tb.Helper()
	if err := m.Write(wtRxBuf, f); err != nil {
		tb.Fatal(err)
	}
	w.Receive(dev, wtRxBuf, len(f), now)
}

func vmMAC(vm uint32) wire.MAC { return wire.MAC{0x02, 0, 0, 0, byte(vm >> 8), byte(vm)} }
func vmIP(vm uint32) [4]byte   { return [4]byte{10, 0, byte(vm >> 8), byte(vm)} }

func TestMultiStepEarliest(t *testing.T) {
	w := NewMulti(stepAt(0), stepAt(50), stepAt(20), stepAt(0))
	if got := w.Step(nil, 10); got != 20 {
		t.Errorf("Multi.Step = %d, want 20", got)
	}
	if got := NewMulti(stepAt(0)).Step(nil, 10); got != 0 {
		t.Errorf("Multi.Step with only reactive parts = %d, want 0", got)
	}
}

type stepAt int64

func (s stepAt) Receive(NetDev, uint64, int, int64) {}
func (s stepAt) Step(NetDev, int64) int64           { return int64(s) }

// TestMultiMigrationExactlyOnce runs two VMs, each with Traffic and
// Responder on one NIC, through a fake fabric, migrates VM 2 in the middle
// (freeze, copy every page, new workload values over the copy, device state
// handed over) and checks the fabric-wide accounting: nothing lost or
// duplicated, counters continuous.
func TestMultiMigrationExactlyOnce(t *testing.T) {
	type vm struct {
		m   *mem.Memory
		nic *fakeNIC
		tr  *Traffic
		rsp *Responder
		w   *Multi
	}
	cfgs := map[uint32]TrafficConfig{
		1: trafficConfig(1, 0, 2),       // as fast as the ring allows
		2: trafficConfig(2, 100_000, 1), // paced: one frame per 10µs
	}
	boot := func(id uint32, m *mem.Memory, nic *fakeNIC) *vm {
		tr := newTraffic(t, m, cfgs[id])
		rsp, err := NewResponder(m, ResponderConfig{Base: wtResponder, MAC: vmMAC(id), IP: vmIP(id)})
		if err != nil {
			t.Fatal(err)
		}
		return &vm{m: m, nic: nic, tr: tr, rsp: rsp, w: NewMulti(tr, rsp)}
	}
	vms := map[uint32]*vm{}
	for id := range cfgs {
		m := newTestMem(t)
		vms[id] = boot(id, m, newFakeNIC(m, vmMAC(id), 32))
	}

	type inFlight struct {
		dst uint32
		f   []byte
	}
	var fabric []inFlight
	external := 0 // frames to the outside host (responder replies)
	outside := vmMAC(99)
	now := int64(1_000_000_000)
	frozen := uint32(0) // VM whose vCPU is stopped; the fabric holds its frames
	pump := func(id uint32) {
		for _, f := range vms[id].nic.take() {
			dst := wire.Dst(f)
			switch dst {
			case vmMAC(1):
				fabric = append(fabric, inFlight{1, f})
			case vmMAC(2):
				fabric = append(fabric, inFlight{2, f})
			case outside:
				external++
			case wire.Broadcast:
				// The responder's boot-time ARP announcement: nobody in
				// this fabric needs it.
			default:
				t.Fatalf("frame to unknown MAC %v", dst)
			}
		}
	}
	arps := 0
	round := func(i int) {
		now += 20_000
		for _, id := range []uint32{1, 2} {
			if id == frozen {
				continue
			}
			v := vms[id]
			v.w.Step(v.nic, now)
			pump(id)
		}
		if i%10 == 0 && frozen != 2 { // someone outside resolves VM 2
			req := make([]byte, 64)
			req = req[:wire.BuildARPRequest(req, outside, [4]byte{10, 9, 9, 9}, vmIP(2))]
			fabric = append(fabric, inFlight{2, req})
			arps++
		}
		rest := fabric[:0]
		for _, x := range fabric {
			if x.dst == frozen {
				rest = append(rest, x)
				continue
			}
			v := vms[x.dst]
			deliver(t, v.w, v.nic, v.m, x.f, now)
			pump(x.dst)
		}
		fabric = rest
	}

	for i := range 50 {
		round(i)
	}
	// Migrate VM 2: the vCPU stops after a Step whose frames are still in
	// the device, VM 1 keeps sending into the fabric for a while.
	old := vms[2]
	old.w.Step(old.nic, now)
	frozen = 2
	for i := 50; i < 55; i++ {
		round(i)
	}
	before := old.tr.Stats(old.m)
	m2 := cloneMem(t, old.m)
	vms[2] = boot(2, m2, old.nic.moveTo(m2))
	if after := vms[2].tr.Stats(m2); !reflect.DeepEqual(before, after) {
		t.Fatalf("stats on the destination differ:\n got %+v\nwant %+v", after, before)
	}
	// The old memory is scribbled over, as the source frees it.
	for p := range old.m.Pages() {
		_ = old.m.Zero(p*mem.PageSize, mem.PageSize)
	}
	frozen = 0
	pump(2)
	for i := 55; i < 120; i++ {
		round(i)
	}
	// Stop generation (guest agent command), then drain.
	for _, v := range vms {
		v.tr.Stop(v.m)
	}
	for i := 120; i < 130; i++ {
		round(i)
	}
	all := map[uint32]TrafficStats{}
	for id, v := range vms {
		if !v.tr.Stopped(v.m) {
			t.Errorf("VM %d has not acted on Stop", id)
		}
		all[id] = v.tr.Stats(v.m)
	}
	if len(fabric) != 0 {
		t.Fatalf("%d frames still in the fabric after draining", len(fabric))
	}
	s := Reconcile(all)
	if s.Lost != 0 || s.Duplicated != 0 || s.Late != 0 || s.Misdelivered != 0 || s.UnknownPeer != 0 {
		t.Errorf("summary %+v, want nothing lost, duplicated, late or misdelivered", s)
	}
	for _, p := range s.Pairs {
		if p.Sent < 100 {
			t.Errorf("stream %d->%d sent only %d frames", p.Src, p.Dst, p.Sent)
		}
	}
	if s.NotProbe != uint64(arps) {
		t.Errorf("NotProbe = %d, want the %d ARP requests", s.NotProbe, arps)
	}
	if st := vms[2].rsp.Stats(vms[2].m); st.ARPReplies != uint64(arps) || external != arps {
		t.Errorf("ARP replies %d (%d reached the outside host), want %d", st.ARPReplies, external, arps)
	}
	// Sequence numbers continued across the move: one stream, no restart.
	p, _ := all[2].Peer(1)
	if p.NextSeq != p.Sent.Frames+1 {
		t.Errorf("VM 2 to VM 1: next seq %d after %d frames", p.NextSeq, p.Sent.Frames)
	}
	q, _ := all[1].Peer(2)
	if q.HighestSeq != p.Sent.Frames {
		t.Errorf("VM 1 saw highest seq %d from VM 2, which sent %d", q.HighestSeq, p.Sent.Frames)
	}
}

// TestWorkloadAllocs holds the per-frame path to zero allocations.
func TestWorkloadAllocs(t *testing.T) {
	mA, mB := newTestMem(t), newTestMem(t)
	nicA, nicB := newFakeNIC(mA, vmMAC(1), 1), newFakeNIC(mB, vmMAC(2), 1)
	a := newTraffic(t, mA, trafficConfig(1, 0, 2))
	rb, err := NewResponder(mB, ResponderConfig{Base: wtResponder, MAC: vmMAC(2), IP: vmIP(2)})
	if err != nil {
		t.Fatal(err)
	}
	b := NewMulti(newTraffic(t, mB, trafficConfig(2, 0, 1)), rb)
	ping := make([]byte, 128)
	ping = ping[:wire.BuildICMPEchoFrame(ping, vmMAC(2), vmMAC(1), vmIP(1), vmIP(2),
		wire.ICMPEcho{Type: wire.ICMPEchoRequest, ID: 1, Seq: 1}, make([]byte, 56))]
	now := int64(0)
	allocs := testing.AllocsPerRun(200, func() {
		now += 1000
		a.Step(nicA, now)
		for _, f := range nicA.pending {
			v, _ := mA.View(f.pa, uint64(f.n))
			_ = mB.Write(wtRxBuf, v)
			b.Receive(nicB, wtRxBuf, f.n, now)
		}
		nicA.pending = nicA.pending[:0]
		_ = mB.Write(wtRxBuf, ping)
		b.Receive(nicB, wtRxBuf, len(ping), now)
		nicB.pending = nicB.pending[:0]
	})
	if allocs != 0 {
		t.Errorf("Step + Receive: %v allocs per frame, want 0", allocs)
	}
	if st := rb.Stats(mB); st.EchoReplies == 0 {
		t.Errorf("responder answered no ping: %+v", st)
	}
}

// BenchmarkTrafficStepReceive measures one probe through Step on the
// sender (amortised over a 64-entry ring) and Receive on the receiver.
func BenchmarkTrafficStepReceive(b *testing.B) {
	for _, frameLen := range []int{64, 1518} {
		b.Run(fmt.Sprintf("len=%d", frameLen), func(b *testing.B) {
			mA, mB := newTestMem(b), newTestMem(b)
			nicA, nicB := newFakeNIC(mA, vmMAC(1), 64), newFakeNIC(mB, vmMAC(2), 64)
			ca, cb := trafficConfig(1, 0, 2), trafficConfig(2, 0, 1)
			ca.FrameLen = frameLen
			a, rb := newTraffic(b, mA, ca), newTraffic(b, mB, cb)
			b.ReportAllocs()
			b.ResetTimer()
			b.SetBytes(int64(max(frameLen, wire.ProbeFrameMinLen)))
			now := int64(0)
			for i := 0; i < b.N; {
				now += 1000
				a.Step(nicA, now)
				for _, f := range nicA.pending {
					v, _ := mA.View(f.pa, uint64(f.n))
					_ = mB.Write(wtRxBuf, v)
					rb.Receive(nicB, wtRxBuf, f.n, now)
					i++
				}
				nicA.pending = nicA.pending[:0]
			}
			if st := rb.Stats(mB); st.Received.Unique == 0 || st.Received.Duplicates != 0 {
				b.Fatalf("receiver stats %+v", st.Received)
			}
		})
	}
}
