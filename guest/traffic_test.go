package guest

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"reflect"
	"runtime"
	"testing"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/wire"
)

// trafficConfig returns the config of VM vm sending to peers.
func trafficConfig(vm uint32, rate uint64, peers ...uint32) TrafficConfig {
	c := TrafficConfig{
		Base:     wtTrafficBase,
		Size:     TrafficStateSize(len(peers)),
		VM:       vm,
		MAC:      vmMAC(vm),
		IP:       vmIP(vm),
		FrameLen: 128,
		Rate:     rate,
	}
	for _, p := range peers {
		c.Peers = append(c.Peers, TrafficPeer{VM: p, MAC: vmMAC(p), IP: vmIP(p)})
	}
	return c
}

func newTraffic(tb testing.TB, m *mem.Memory, cfg TrafficConfig) *Traffic {
	tb.Helper()
	tr, err := NewTraffic(m, cfg)
	if err != nil {
		tb.Fatalf("NewTraffic: %v", err)
	}
	return tr
}

// probeFrame builds the probe src would send to dst, to dstMAC.
func probeFrame(src, dst uint32, dstMAC wire.MAC, seq uint64, sent int64) []byte {
	b := make([]byte, 256)
	p := wire.Probe{SrcVM: src, DstVM: dst, Seq: seq, SentNs: uint64(sent)}
	n := wire.BuildProbeFrame(b, dstMAC, vmMAC(src), vmIP(src), vmIP(dst), p, 100)
	return b[:n]
}

// tagged inserts an 802.1Q tag after the MACs.
func tagged(f []byte, vid uint16) []byte {
	out := make([]byte, 0, len(f)+wire.VLANTagLen)
	out = append(out, f[:12]...)
	out = binary.BigEndian.AppendUint16(out, wire.EtherTypeVLAN)
	out = binary.BigEndian.AppendUint16(out, wire.TCI(0, vid))
	return append(out, f[12:]...)
}

// parseSent decodes the probes a NIC committed.
func parseSent(tb testing.TB, frames [][]byte) []wire.Probe {
	tb.Helper()
	var ps []wire.Probe
	for _, f := range frames {
		p, ok := wire.ParseProbeFrame(f)
		if !ok {
			tb.Fatalf("committed frame is not a probe: % x", f)
		}
		ps = append(ps, p)
	}
	return ps
}

func TestNewTrafficValidates(t *testing.T) {
	m := newTestMem(t)
	ok := trafficConfig(1, 0, 2, 3)
	for _, tc := range []struct {
		name string
		mod  func(*TrafficConfig)
	}{
		{"short frame", func(c *TrafficConfig) { c.FrameLen = 63 }},
		{"long frame", func(c *TrafficConfig) { c.FrameLen = 1519 }},
		{"unaligned base", func(c *TrafficConfig) { c.Base++ }},
		{"small region", func(c *TrafficConfig) { c.Size-- }},
		{"outside memory", func(c *TrafficConfig) { c.Base = wtMemSize - 8 }},
		{"self as peer", func(c *TrafficConfig) { c.Peers[0].VM = 1 }},
		{"duplicate peer", func(c *TrafficConfig) { c.Peers[1].VM = 2 }},
		{"multicast MAC", func(c *TrafficConfig) { c.MAC = wire.Broadcast }},
	} {
		c := ok
		c.Peers = append([]TrafficPeer(nil), ok.Peers...)
		tc.mod(&c)
		if _, err := NewTraffic(m, c); !errors.Is(err, ErrWorkloadConfig) {
			t.Errorf("%s: NewTraffic error = %v, want ErrWorkloadConfig", tc.name, err)
		}
	}
	if _, err := NewTraffic(m, ok); err != nil {
		t.Fatalf("NewTraffic(valid) = %v", err)
	}
	// Resuming over the state needs the same VM and peers in the same order.
	swapped := trafficConfig(1, 0, 3, 2)
	if _, err := NewTraffic(m, swapped); !errors.Is(err, ErrWorkloadState) {
		t.Errorf("NewTraffic over state with other peer order = %v, want ErrWorkloadState", err)
	}
	other := trafficConfig(1, 500, 2, 3) // rate and frame length may change
	other.FrameLen = 1500
	if _, err := NewTraffic(m, other); err != nil {
		t.Errorf("NewTraffic over state with another rate = %v, want nil", err)
	}
}

// TestTrafficExactlyOnce feeds a scripted mix of in-order, duplicate,
// reordered, late, foreign and malformed frames to VM 2.
func TestTrafficExactlyOnce(t *testing.T) {
	m := newTestMem(t)
	nic := newFakeNIC(m, vmMAC(2), wtDefaultSlots)
	tr := newTraffic(t, m, trafficConfig(2, 0, 1, 3))
	const now = 1_000_000

	feed := func(f []byte) { deliver(t, tr, nic, m, f, now) }
	a := func(seq uint64) []byte { return probeFrame(1, 2, vmMAC(2), seq, now-100) }
	calls := 0
	for _, f := range [][]byte{
		a(1), a(2), a(3), // in order
		a(2),       // duplicate
		a(5), a(4), // 4 reordered
		a(5),         // duplicate
		a(5000),      // jump: the window is now 905..5000
		a(6), a(904), // late: older than the window
		a(905),              // in the window, never seen: reordered
		a(905),              // duplicate
		tagged(a(5001), 10), // 802.1Q tagged
		probeFrame(1, 2, wire.Broadcast, 5002, now-100),
		probeFrame(3, 2, vmMAC(2), 1, now-300), // from the other peer
	} {
		feed(f)
		calls++
	}
	foreign := [][]byte{
		probeFrame(1, 7, vmMAC(2), 1, now),                            // for VM 7
		probeFrame(1, 2, vmMAC(9), 6000, now),                         // for another MAC
		probeFrame(1, 2, wire.MAC{0x01, 0, 0x5e, 0, 0, 1}, 6001, now), // multicast
	}
	for _, f := range foreign {
		feed(f)
		calls++
	}
	feed(probeFrame(9, 2, vmMAC(2), 1, now)) // unknown peer
	calls++

	corrupt := a(6002)
	corrupt[len(corrupt)-40] ^= 0xff // inside the probe: UDP checksum fails
	arp := make([]byte, 64)
	arp = arp[:wire.BuildARPRequest(arp, vmMAC(1), vmIP(1), vmIP(2))]
	malformed := [][]byte{
		a(6003)[:50], // truncated
		corrupt,
		arp,
		{0xff},
		a(0), // sequence 0 is never sent
	}
	for _, f := range malformed {
		feed(f)
		calls++
	}
	// Hostile lengths and addresses from a broken driver.
	for _, c := range []struct {
		pa uint64
		n  int
	}{{wtRxBuf, 0}, {wtRxBuf, -1}, {wtMemSize - 10, 100}, {1 << 62, 64}, {wtRxBuf, 1 << 40}} {
		tr.Receive(nic, c.pa, c.n, now)
		calls++
	}
	if len(nic.pending) != 0 {
		t.Errorf("Receive transmitted %d frames", len(nic.pending))
	}

	st := tr.Stats(m)
	fromA, _ := st.Peer(1)
	fromC, _ := st.Peer(3)
	wantA := RxCounters{Frames: 14, Unique: 9, Duplicates: 3, Reordered: 2, Late: 2}
	gotA := fromA.Received
	gotA.Bytes, gotA.Latency = 0, Latency{}
	if gotA != wantA {
		t.Errorf("from VM 1:\n got %+v\nwant %+v", gotA, wantA)
	}
	if fromA.HighestSeq != 5002 {
		t.Errorf("highest seq from VM 1 = %d, want 5002", fromA.HighestSeq)
	}
	if fromC.Received.Unique != 1 || fromC.Received.Frames != 1 {
		t.Errorf("from VM 3: %+v, want 1 unique frame", fromC.Received)
	}
	if st.Misdelivered != 3 || st.UnknownPeer != 1 || st.NotProbe != uint64(len(malformed)+5) {
		t.Errorf("misdelivered %d, unknown peer %d, not probe %d; want 3, 1, %d",
			st.Misdelivered, st.UnknownPeer, st.NotProbe, len(malformed)+5)
	}
	// Every Receive is counted exactly once, under one reason.
	if got := st.Received.Frames + st.Misdelivered + st.UnknownPeer + st.NotProbe; got != uint64(calls) {
		t.Errorf("frames accounted = %d, Receive calls = %d", got, calls)
	}
	lat := fromA.Received.Latency
	if lat.Count != 9 || lat.Min != 100 || lat.Max != 100 || lat.Mean() != 100 {
		t.Errorf("latency from VM 1 = %+v, want 9 samples of 100ns", lat)
	}
	if l := fromC.Received.Latency; l.Min != 300 || l.Max != 300 {
		t.Errorf("latency from VM 3 = %+v, want 300ns", l)
	}
	if st.Received.Latency.Min != 100 || st.Received.Latency.Max != 300 || st.Received.Latency.Count != 10 {
		t.Errorf("total latency = %+v", st.Received.Latency)
	}
}

// TestTrafficWindowOracle checks the window against a model that remembers
// every sequence number, on random streams with duplicates, reordering,
// jumps and stragglers.
func TestTrafficWindowOracle(t *testing.T) {
	for seed := range uint64(8) {
		rng := rand.New(rand.NewPCG(seed, 99))
		m := newTestMem(t)
		nic := newFakeNIC(m, vmMAC(2), 1)
		tr := newTraffic(t, m, trafficConfig(2, 0, 1))

		var want RxCounters
		seen := map[uint64]bool{}
		var hi, base uint64
		for range 20000 {
			var seq uint64
			switch r := rng.IntN(100); {
			case r < 70:
				base++
				seq = base
			case r < 80: // duplicate or reordered nearby
				seq = base - min(base-1, rng.Uint64N(64))
			case r < 88: // anywhere in or just below the window
				seq = base - min(base-1, rng.Uint64N(TrafficWindow+200))
			case r < 90: // jump ahead
				base += rng.Uint64N(3 * TrafficWindow)
				seq = base
			default:
				base += 1 + rng.Uint64N(4)
				seq = base
			}
			if seq == 0 {
				seq = 1
			}
			want.Frames++
			switch {
			case seq > hi:
				want.Unique++
				hi = seq
				seen[seq] = true
			case hi-seq >= TrafficWindow:
				want.Late++
			case seen[seq]:
				want.Duplicates++
			default:
				want.Unique++
				want.Reordered++
				seen[seq] = true
			}
			deliver(t, tr, nic, m, probeFrame(1, 2, vmMAC(2), seq, 0), 0)
		}
		p, _ := tr.Stats(m).Peer(1)
		got := p.Received
		got.Bytes, got.Latency = 0, Latency{}
		if got != want {
			t.Errorf("seed %d:\n got %+v\nwant %+v", seed, got, want)
		}
		if p.HighestSeq != hi {
			t.Errorf("seed %d: highest %d, want %d", seed, p.HighestSeq, hi)
		}
	}
}

// stepIdle steps tr at now until it returns a later time (burst cap),
// completing every frame, and returns that time and the frames sent.
func stepIdle(tb testing.TB, tr *Traffic, nic *fakeNIC, now int64) (int64, [][]byte) {
	tb.Helper()
	var frames [][]byte
	for range 1000 {
		next := tr.Step(nic, now)
		frames = append(frames, nic.take()...)
		if next != now {
			return next, frames
		}
	}
	tb.Fatalf("Step keeps returning now at %d", now)
	return 0, nil
}

func TestTrafficPacing(t *testing.T) {
	const t0 = int64(5_000_000_000)
	const rate = 1000 // per peer: one frame per ms
	m := newTestMem(t)
	nic := newFakeNIC(m, vmMAC(1), 1024)
	tr := newTraffic(t, m, trafficConfig(1, rate, 2, 3))

	sent := map[uint32]uint64{}
	for now := t0; now <= t0+1_000_000_000; now += 50_000 {
		next, frames := stepIdle(t, tr, nic, now)
		for _, p := range parseSent(t, frames) {
			sent[p.DstVM]++
			if p.Seq != sent[p.DstVM] {
				t.Fatalf("at %d: probe to %d has seq %d, want %d", now, p.DstVM, p.Seq, sent[p.DstVM])
			}
			if p.SentNs != uint64(now) {
				t.Fatalf("probe SentNs %d, want %d", p.SentNs, now)
			}
		}
		// Frame k is due at t0 + k ms: by now, floor(elapsed/1ms)+1 frames.
		want := uint64((now-t0)/1_000_000) + 1
		if sent[2] != want || sent[3] != want {
			t.Fatalf("at t0+%dns: sent %d/%d frames, want %d each", now-t0, sent[2], sent[3], want)
		}
		if wantNext := t0 + int64(want)*1_000_000; next != wantNext {
			t.Fatalf("at t0+%dns: Step = %d, want next due t0+%d", now-t0, next, wantNext-t0)
		}
	}
	st := tr.Stats(m)
	if st.Sent.Frames != 2002 || st.Sent.Bytes != 2002*128 {
		t.Errorf("sent %+v, want 2002 frames of 128 bytes", st.Sent)
	}
}

// TestTrafficPacingExact steps only at the times Step asks for, at a rate
// that does not divide a second, and checks every send time.
func TestTrafficPacingExact(t *testing.T) {
	const t0 = int64(1_000)
	m := newTestMem(t)
	nic := newFakeNIC(m, vmMAC(1), 16)
	tr := newTraffic(t, m, trafficConfig(1, 3, 2))
	now := t0
	var got []uint64
	for len(got) < 7 {
		next, frames := stepIdle(t, tr, nic, now)
		for _, p := range parseSent(t, frames) {
			got = append(got, p.SentNs-uint64(t0))
		}
		now = next
	}
	want := []uint64{0, 333_333_334, 666_666_667, 1_000_000_000, 1_333_333_334, 1_666_666_667, 2_000_000_000}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("send times\n got %v\nwant %v", got, want)
	}
}

func TestTrafficBacklog(t *testing.T) {
	const t0 = int64(1_000_000)
	const rate = 1_000_000 // 1 frame per µs
	m := newTestMem(t)
	nic := newFakeNIC(m, vmMAC(1), 4096)
	tr := newTraffic(t, m, trafficConfig(1, rate, 2))
	_, f := stepIdle(t, tr, nic, t0)
	// A short stall is caught up (in bursts of trafficBurst per Step).
	_, g := stepIdle(t, tr, nic, t0+500_000)
	if len(f)+len(g) != 501 {
		t.Errorf("after 500µs: sent %d, want 501", len(f)+len(g))
	}
	// A long one (a paused vCPU) slips the schedule: one frame now, then
	// the rate resumes from here.
	now := t0 + 50_000_000
	_, h := stepIdle(t, tr, nic, now)
	_, i := stepIdle(t, tr, nic, now+10_000)
	if len(h) != 1 || len(i) != 10 {
		t.Errorf("after a 50ms stall: sent %d then %d, want 1 then 10", len(h), len(i))
	}
}

func TestTrafficRoundRobin(t *testing.T) {
	m := newTestMem(t)
	nic := newFakeNIC(m, vmMAC(1), 10)
	tr := newTraffic(t, m, trafficConfig(1, 0, 2, 3, 4))
	var order []uint32
	seqs := map[uint32]uint64{}
	for step := range 6 {
		if next := tr.Step(nic, 100); next != 100 {
			t.Fatalf("Step with a full ring = %d, want now", next)
		}
		if len(nic.pending) != 10 {
			t.Fatalf("step %d: %d frames posted, want a full ring of 10", step, len(nic.pending))
		}
		for _, p := range parseSent(t, nic.take()) {
			order = append(order, p.DstVM)
			seqs[p.DstVM]++
			if p.Seq != seqs[p.DstVM] {
				t.Fatalf("probe to %d: seq %d, want %d", p.DstVM, p.Seq, seqs[p.DstVM])
			}
		}
	}
	for i, d := range order {
		if want := uint32(2 + i%3); d != want {
			t.Fatalf("frame %d went to %d, want %d (order %v)", i, d, want, order[:i+1])
		}
	}
	if st := tr.Stats(m); st.TxBusy != 6 {
		t.Errorf("TxBusy = %d, want 6 (one per Step that filled the ring)", st.TxBusy)
	}

	// A ring that never fills is still left after trafficBurst frames.
	big := newFakeNIC(m, vmMAC(1), 100_000)
	if next := tr.Step(big, 200); next != 200 || len(big.pending) != trafficBurst {
		t.Errorf("Step on a huge ring = %d with %d frames, want now and %d", next, len(big.pending), trafficBurst)
	}
}

func TestTrafficTxTooSmall(t *testing.T) {
	m := newTestMem(t)
	nic := newFakeNIC(m, vmMAC(1), 8)
	nic.bufSize = 100
	tr := newTraffic(t, m, trafficConfig(1, 0, 2))
	if next := tr.Step(nic, 5); next != 0 || nic.commits != 0 {
		t.Errorf("Step with 100-byte buffers = %d after %d commits, want 0 and none", next, nic.commits)
	}
	if st := tr.Stats(m); st.TxTooSmall != 1 || st.Sent.Frames != 0 {
		t.Errorf("stats %+v, want TxTooSmall 1 and nothing sent", st)
	}
}

func TestTrafficStopStart(t *testing.T) {
	m := newTestMem(t)
	nic := newFakeNIC(m, vmMAC(1), 64)
	cfg := trafficConfig(1, 1000, 2)
	cfg.Stopped = true
	tr := newTraffic(t, m, cfg)
	if next := tr.Step(nic, 0); next != trafficCommandPoll || len(nic.pending) != 0 {
		t.Fatalf("Step while booted stopped = %d with %d frames", next, len(nic.pending))
	}
	if !tr.Stopped(m) || tr.Stats(m).Running {
		t.Fatal("booted stopped, but Stopped() false or Running true")
	}
	tr.Start(m)
	if tr.Stopped(m) {
		t.Error("Stopped true after Start")
	}
	// Pacing starts at the Step that sees the Start, not at boot.
	const t1 = 10_000_000_000
	_, f := stepIdle(t, tr, nic, t1)
	_, g := stepIdle(t, tr, nic, t1+2_500_000)
	if len(f) != 1 || len(g) != 2 {
		t.Fatalf("after Start: %d then %d frames, want 1 then 2", len(f), len(g))
	}
	tr.Stop(m)
	if tr.Stopped(m) {
		t.Error("Stopped true before the program saw the Stop")
	}
	if next := tr.Step(nic, t1+5_000_000); next != t1+5_000_000+trafficCommandPoll || len(nic.pending) != 0 {
		t.Errorf("Step after Stop = %d with %d frames", next, len(nic.pending))
	}
	if !tr.Stopped(m) {
		t.Error("Stopped false after the program saw the Stop")
	}
	// A Stop and Start between two Steps still re-arms: no catch-up burst.
	tr.Stop(m)
	tr.Start(m)
	_, h := stepIdle(t, tr, nic, t1+9_000_000_000)
	if len(h) != 1 {
		t.Errorf("after Stop+Start: %d frames, want 1", len(h))
	}
	p := parseSent(t, h)[0]
	if p.Seq != 4 {
		t.Errorf("seq after restart = %d, want 4 (numbers continue)", p.Seq)
	}
}

// TestTrafficResume runs a program, copies its memory, builds a second
// value over the copy and checks that the pair sends exactly what one
// uninterrupted program sends, byte for byte, and ends in the same state.
func TestTrafficResume(t *testing.T) {
	for _, rate := range []uint64{0, 100_000} {
		cfg := trafficConfig(1, rate, 2, 3, 4)
		cfg.FrameLen = 90
		run := func(tr *Traffic, nic *fakeNIC, m *mem.Memory, from, to int) [][]byte {
			var out [][]byte
			for i := from; i < to; i++ {
				now := int64(1_000_000 + i*7_000)
				tr.Step(nic, now)
				if i%3 != 0 { // let the ring fill now and then
					out = append(out, nic.take()...)
				}
				// Echo traffic from the peers, so receive state moves too.
				deliver(t, tr, nic, m, probeFrame(2+uint32(i%3), 1, vmMAC(1), uint64(i/3+1), int64(now-500)), now)
			}
			return append(out, nic.take()...)
		}

		refMem := newTestMem(t)
		refNIC := newFakeNIC(refMem, vmMAC(1), 16)
		want := run(newTraffic(t, refMem, cfg), refNIC, refMem, 0, 200)

		mA := newTestMem(t)
		nicA := newFakeNIC(mA, vmMAC(1), 16)
		a := newTraffic(t, mA, cfg)
		got := run(a, nicA, mA, 0, 77)
		before := a.Stats(mA)

		mB := cloneMem(t, mA)
		nicB := nicA.moveTo(mB)
		b := newTraffic(t, mB, cfg)
		if after := b.Stats(mB); !reflect.DeepEqual(before, after) {
			t.Fatalf("rate %d: stats over the copy differ:\n got %+v\nwant %+v", rate, after, before)
		}
		got = append(got, run(b, nicB, mB, 77, 200)...)

		if len(got) != len(want) {
			t.Fatalf("rate %d: resumed run sent %d frames, uninterrupted %d", rate, len(got), len(want))
		}
		for i := range want {
			if string(got[i]) != string(want[i]) {
				t.Fatalf("rate %d: frame %d differs after resume:\n got % x\nwant % x", rate, i, got[i], want[i])
			}
		}
		size := TrafficStateSize(3)
		vb, _ := mB.View(wtTrafficBase, size)
		vr, _ := refMem.View(wtTrafficBase, size)
		if string(vb) != string(vr) {
			t.Errorf("rate %d: state region after resume differs from the uninterrupted run", rate)
		}
		if len(want) < 100 {
			t.Errorf("rate %d: only %d frames sent; the test is too weak", rate, len(want))
		}
	}
}

func TestReconcile(t *testing.T) {
	all := map[uint32]TrafficStats{
		1: {VM: 1, Misdelivered: 1, Peers: []PeerTraffic{
			{VM: 2, Sent: TxCounters{Frames: 100}, Received: RxCounters{Frames: 52, Unique: 50, Duplicates: 2}},
			{VM: 9, Sent: TxCounters{Frames: 7}, Received: RxCounters{Frames: 3}},
		}},
		2: {VM: 2, NotProbe: 4, Peers: []PeerTraffic{
			{VM: 1, Sent: TxCounters{Frames: 50}, Received: RxCounters{Frames: 98, Unique: 97, Reordered: 5, Late: 1}},
		}},
	}
	s := Reconcile(all)
	want := Summary{
		Sent: 150, Received: 150, Unique: 147, Lost: 3, Duplicated: 2, Reordered: 5, Late: 1,
		Misdelivered: 1, NotProbe: 4, UnmatchedSent: 7, UnmatchedReceived: 3,
		Pairs: []PairSummary{
			{Src: 1, Dst: 2, Sent: 100, Unique: 97, Lost: 3, Reordered: 5, Late: 1},
			{Src: 2, Dst: 1, Sent: 50, Unique: 50, Lost: 0, Duplicated: 2},
		},
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("Reconcile:\n got %+v\nwant %+v", s, want)
	}
}

// FuzzTrafficReceive feeds arbitrary frames: Receive must not panic and
// must count each frame exactly once.
func FuzzTrafficReceive(f *testing.F) {
	f.Add(probeFrame(1, 2, vmMAC(2), 1, 0))
	f.Add(tagged(probeFrame(1, 2, vmMAC(2), 77, 0), 3))
	f.Add([]byte{})
	f.Add(make([]byte, 14))
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) > 9000 {
			return
		}
		m := newTestMem(t)
		nic := newFakeNIC(m, vmMAC(2), 4)
		tr := newTraffic(t, m, trafficConfig(2, 0, 1))
		deliver(t, tr, nic, m, frame, 0)
		deliver(t, tr, nic, m, frame, 0)
		st := tr.Stats(m)
		if n := st.Received.Frames + st.NotProbe + st.Misdelivered + st.UnknownPeer; n != 2 {
			t.Errorf("2 frames counted %d times: %+v", n, st)
		}
		if st.Received.Unique > 1 {
			t.Errorf("the same frame twice counted %d unique", st.Received.Unique)
		}
	})
}

// TestTrafficLiveControl drives a running program from another goroutine,
// as a controller does: Stats and Stop while the vCPU steps, then waits for
// Stopped. Run with -race.
func TestTrafficLiveControl(t *testing.T) {
	m := newTestMem(t)
	nic := newFakeNIC(m, vmMAC(1), 32)
	tr := newTraffic(t, m, trafficConfig(1, 0, 2, 3))
	done := make(chan struct{})
	quit := make(chan struct{})
	go func() { // the vCPU
		defer close(done)
		for now := int64(1); ; now++ {
			select {
			case <-quit:
				return
			default:
			}
			tr.Step(nic, now)
			nic.pending = nic.pending[:0]
		}
	}()
	for tr.Stats(m).Sent.Frames < 1000 {
		runtime.Gosched()
	}
	tr.Stop(m)
	for !tr.Stopped(m) {
		runtime.Gosched()
	}
	sent := tr.Stats(m).Sent.Frames
	for range 100 {
		runtime.Gosched()
	}
	close(quit)
	<-done
	if got := tr.Stats(m).Sent.Frames; got != sent {
		t.Errorf("sent %d frames after Stopped reported true (%d -> %d)", got-sent, sent, got)
	}
}

// TestTrafficGaps checks the blackout measure: the longest time between two
// unique receptions of a stream, forgotten by ResetGaps, blind to
// duplicates and to other peers' streams.
func TestTrafficGaps(t *testing.T) {
	m := newTestMem(t)
	nic := newFakeNIC(m, vmMAC(2), wtDefaultSlots)
	tr := newTraffic(t, m, trafficConfig(2, 0, 1, 3))
	a := func(seq uint64, at int64) { deliver(t, tr, nic, m, probeFrame(1, 2, vmMAC(2), seq, at), at) }
	c := func(seq uint64, at int64) { deliver(t, tr, nic, m, probeFrame(3, 2, vmMAC(2), seq, at), at) }
	gapOf := func(vm uint32) RxCounters {
		p, _ := tr.Stats(m).Peer(vm)
		return p.Received
	}
	a(1, 1_000)
	a(2, 2_000)
	a(3, 50_000) // gap 48 µs
	a(3, 90_000) // duplicate: does not end a gap
	a(4, 91_000) // gap 41 µs < 48
	c(1, 95_000)
	c(2, 500_000) // the other stream's gap is its own
	if g := gapOf(1); g.MaxGap != 48_000 || g.MaxGapEnd != 50_000 {
		t.Fatalf("stream 1->2: max gap %v ending %d, want 48µs ending 50000", g.MaxGap, g.MaxGapEnd)
	}
	if g := gapOf(3); g.MaxGap != 405_000 {
		t.Fatalf("stream 3->2: max gap %v, want 405µs", g.MaxGap)
	}
	tr.ResetGaps(m, 100_000)
	if g := gapOf(1); g.MaxGap != 0 {
		t.Fatalf("after ResetGaps: max gap %v, want 0", g.MaxGap)
	}
	a(5, 120_000) // 29 µs, ends after the epoch
	a(6, 121_000)
	if g := gapOf(1); g.MaxGap != 29_000 || g.MaxGapEnd != 120_000 {
		t.Fatalf("after ResetGaps: max gap %v ending %d, want 29µs ending 120000", g.MaxGap, g.MaxGapEnd)
	}
	if s := Reconcile(map[uint32]TrafficStats{1: {VM: 1, Peers: []PeerTraffic{{VM: 2, Sent: TxCounters{Frames: 6}}}}, 2: tr.Stats(m)}); s.Pairs[0].MaxGap != 29_000 {
		t.Fatalf("reconciled pair %+v, want max gap 29µs", s.Pairs[0])
	}
}
