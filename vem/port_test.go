package vem_test

// Tests of a VEM pass-through port between a fake vNIC uplink and a fake
// emulated device: frames taken from the adapter reach the guest once, in
// order, with back-pressure both ways; detach hands back exactly what is
// still queued; transmit never waits; Close frees everything and stops the
// port's goroutine.

import (
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/vmfex/vmfex/internal/testutil"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vem"
	"github.com/vmfex/vmfex/vmxnet3"
)

// deadline bounds every wait for a condition; it is a failure deadline, not
// a model of anything.
const deadline = 10 * time.Second

// fakeUplink is a vNIC's host tx queue: it records what HostQueue took,
// takes at most room frames, and calls the OnHostTxRoom function when the
// test gives it room after a HostWantRoom found none.
type fakeUplink struct {
	mu     sync.Mutex
	room   int
	calls  []int    // frames offered per HostQueue call
	frames [][]byte // copies of the frames taken, in order
	want   bool
	fn     func()
}

var _ vem.Uplink = (*fakeUplink)(nil)

func (u *fakeUplink) HostQueue(bufs []*link.Buf) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.calls = append(u.calls, len(bufs))
	n := min(len(bufs), u.room)
	for _, b := range bufs[:n] {
		u.frames = append(u.frames, append([]byte(nil), b.Bytes()...))
		b.Release()
	}
	u.room -= n
	return n
}

func (u *fakeUplink) HostTxRoom() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.room
}

func (u *fakeUplink) HostWantRoom() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.room > 0 {
		return true
	}
	u.want = true
	return false
}

func (u *fakeUplink) OnHostTxRoom(fn func()) {
	u.mu.Lock()
	u.fn = fn
	u.mu.Unlock()
}

// giveRoom adds room and, if someone asked for it, calls them back once.
func (u *fakeUplink) giveRoom(n int) {
	u.mu.Lock()
	u.room += n
	fn, want := u.fn, u.want
	u.want = false
	u.mu.Unlock()
	if want && fn != nil {
		fn()
	}
}

func (u *fakeUplink) taken() [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.frames...)
}

// fakeGuest is an emulated device's rx queue: it copies up to room frames
// per DeliverBatch and reports Full for the rest, until the test grants
// room (signalling RxSpace). blocked receives when it reports Full, called
// after every DeliverBatch.
type fakeGuest struct {
	mu      sync.Mutex
	room    int
	got     [][]byte
	space   chan struct{}
	blocked chan struct{}
	called  chan struct{}
}

var _ vem.GuestRx = (*fakeGuest)(nil)

func newFakeGuest(room int) *fakeGuest {
	return &fakeGuest{room: room, space: make(chan struct{}, 1), blocked: make(chan struct{}, 1), called: make(chan struct{}, 1)}
}

func (g *fakeGuest) DeliverBatch(q int, frames [][]byte) vmxnet3.RxResult {
	g.mu.Lock()
	defer g.mu.Unlock()
	defer signalChan(g.called)
	n := min(len(frames), g.room)
	for _, f := range frames[:n] {
		g.got = append(g.got, append([]byte(nil), f...))
	}
	g.room -= n
	r := vmxnet3.RxResult{Consumed: n, Written: n, Full: n < len(frames)}
	if r.Full {
		signalChan(g.blocked)
	}
	return r
}

func signalChan(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (g *fakeGuest) RxSpace(int) <-chan struct{} { return g.space }

// grant gives the guest n more buffers and signals RxSpace.
func (g *fakeGuest) grant(n int) {
	g.mu.Lock()
	g.room += n
	g.mu.Unlock()
	signalChan(g.space)
}

func (g *fakeGuest) received() [][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([][]byte(nil), g.got...)
}

// frame i is a 64-byte Ethernet frame carrying i.
func frame(i int) []byte {
	f := make([]byte, 64)
	copy(f, []byte{0x00, 0x50, 0x56, 0x00, 0x00, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x88, 0xB5})
	binary.BigEndian.PutUint32(f[14:], uint32(i))
	f[63] = byte(i)
	return f
}

func seqOf(f []byte) int { return int(binary.BigEndian.Uint32(f[14:])) }

func bufsOf(from, to int) []*link.Buf {
	var out []*link.Buf
	for i := from; i < to; i++ {
		b := link.Get()
		b.SetBytes(frame(i))
		out = append(out, b)
	}
	return out
}

// checkSeq fails unless got carries exactly the frames from..to-1 in order.
func checkSeq(t *testing.T, what string, got [][]byte, from, to int) {
	t.Helper()
	if len(got) != to-from {
		t.Errorf("%s: %d frames, want %d (%d..%d)", what, len(got), to-from, from, to-1)
	}
	for i, f := range got {
		if i >= to-from {
			break
		}
		if want := frame(from + i); string(f) != string(want) {
			t.Errorf("%s: frame %d carries %d (%d bytes), want %d", what, i, seqOf(f), len(f), from+i)
			return
		}
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s", deadline, what)
		}
		time.Sleep(time.Millisecond) // polling a condition, not modelling time
	}
}

func recvWithin(t *testing.T, what string, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(deadline):
		t.Fatalf("timed out after %v waiting for %s", deadline, what)
	}
}

func newPort(t *testing.T, up vem.Uplink) *vem.Port {
	t.Helper()
	sw := vem.New("host1", nil)
	if sw.Mode() != vem.ModePassThrough {
		t.Fatalf("new VEM mode %d, want pass-through", sw.Mode())
	}
	p := sw.AddPort("vm1/eth0", up)
	if p.Name() != "vm1/eth0" {
		t.Fatalf("port name %q", p.Name())
	}
	t.Cleanup(p.Close)
	return p
}

// TestRxExactlyOnceInOrder: an adapter pushing 5000 frames through Take,
// waiting on Space when the port is full, and a guest that accepts a few
// frames at a time: every frame reaches the guest once, in order.
func TestRxExactlyOnceInOrder(t *testing.T) {
	testutil.CheckGoroutines(t)
	const total = 5000
	p := newPort(t, &fakeUplink{})
	g := newFakeGuest(10)
	p.AttachGuest(g)
	p.Start()

	errc := make(chan error, 1)
	go func() { // the adapter's rx engine
		next := 0
		for next < total {
			bufs := bufsOf(next, min(next+37, total))
			for len(bufs) > 0 {
				n, full := p.Take(bufs)
				next += n
				bufs = bufs[n:]
				if full != (len(bufs) > 0) {
					errc <- fmt.Errorf("Take reported full=%v with %d buffers left", full, len(bufs))
					return
				}
				if full {
					select {
					case <-p.Space():
					case <-time.After(deadline):
						errc <- fmt.Errorf("no Space after %d frames", next)
						return
					}
				}
			}
		}
		errc <- nil
	}()
	// The guest's driver: refill a few buffers whenever it runs dry.
	end := time.After(deadline)
	for len(g.received()) < total {
		select {
		case <-g.blocked:
			g.grant(13)
		case <-g.called:
		case <-end:
			t.Fatalf("guest received %d of %d frames; port %+v", len(g.received()), total, p.Stats())
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	checkSeq(t, "guest", g.received(), 0, total)
	if st := p.Stats(); st.RxFrames != total || st.Queued != 0 {
		t.Errorf("Stats = %+v, want %d rx frames, nothing queued", st, total)
	}
}

// TestTakeFullAtQueueDepth: with no guest to deliver to, Take accepts
// exactly QueueDepth frames and reports full; Space fires once delivery
// makes room.
func TestTakeFullAtQueueDepth(t *testing.T) {
	testutil.CheckGoroutines(t)
	p := newPort(t, &fakeUplink{})
	p.Start()
	select {
	case <-p.Space():
		t.Fatal("Space signalled before anything was taken")
	default:
	}
	bufs := bufsOf(0, vem.QueueDepth+5)
	n, full := p.Take(bufs)
	if n != vem.QueueDepth || !full {
		t.Fatalf("Take(%d) = %d, %v; want %d, true", len(bufs), n, full, vem.QueueDepth)
	}
	if q := p.Queued(); q != vem.QueueDepth {
		t.Fatalf("Queued = %d, want %d", q, vem.QueueDepth)
	}
	if n, full := p.Take(bufs[n:]); n != 0 || !full {
		t.Fatalf("Take on a full port = %d, %v; want 0, true", n, full)
	}
	if n, full := p.Take(nil); n != 0 || full {
		t.Fatalf("Take(nil) = %d, %v; want 0, false", n, full)
	}
	rest := bufs[vem.QueueDepth:] // still ours

	// A detach empties the queue: the adapter waiting for Space goes on.
	t.Run("detach makes room", func(t *testing.T) {
		p := newPort(t, &fakeUplink{})
		p.Start()
		if n, full := p.Take(bufsOf(0, vem.QueueDepth+1)); n != vem.QueueDepth || !full {
			t.Fatalf("Take = %d, %v", n, full)
		}
		if out := p.DetachGuest(); len(out) != vem.QueueDepth {
			t.Fatalf("DetachGuest returned %d frames, want %d", len(out), vem.QueueDepth)
		}
		recvWithin(t, "Space after DetachGuest emptied a full queue", p.Space())
	})

	g := newFakeGuest(100)
	p.AttachGuest(g)
	recvWithin(t, "Space after the guest took frames", p.Space())
	waitFor(t, "100 frames delivered", func() bool { return len(g.received()) == 100 })
	if q := p.Queued(); q != vem.QueueDepth-100 {
		t.Fatalf("Queued = %d after 100 delivered, want %d", q, vem.QueueDepth-100)
	}
	n, full = p.Take(rest)
	if n != len(rest) || full {
		t.Fatalf("Take after room was made = %d, %v; want %d, false", n, full, len(rest))
	}
	g.grant(vem.QueueDepth)
	waitFor(t, "every frame delivered", func() bool { return len(g.received()) == vem.QueueDepth+5 })
	checkSeq(t, "guest", g.received(), 0, vem.QueueDepth+5)
}

// TestDetachAttach: DetachGuest returns copies of exactly the frames still
// queued, oldest first, and empties the queue; nothing more reaches the
// detached guest; AttachGuest of another resumes delivery, frames queued
// meanwhile first.
func TestDetachAttach(t *testing.T) {
	testutil.CheckGoroutines(t)
	for _, tc := range []struct {
		name string
		room int // frames the first guest accepts before detach
	}{
		{"guest full", 0},
		{"some delivered", 4},
		{"all delivered", 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPort(t, &fakeUplink{})
			g1 := newFakeGuest(tc.room)
			p.AttachGuest(g1)
			p.Start()
			if n, _ := p.Take(bufsOf(0, 10)); n != 10 {
				t.Fatalf("Take took %d of 10", n)
			}
			waitFor(t, "the guest's share delivered", func() bool { return len(g1.received()) == tc.room })
			if tc.room < 10 {
				recvWithin(t, "the guest reporting full", g1.blocked)
			}
			out := p.DetachGuest()
			checkSeq(t, "DetachGuest", out, tc.room, 10)
			checkSeq(t, "first guest", g1.received(), 0, tc.room)
			if q := p.Queued(); q != 0 {
				t.Fatalf("Queued = %d after DetachGuest, want 0", q)
			}
			// Copies: the released buffers are reused; the frames stay.
			for _, b := range bufsOf(1000, 1020) {
				b.SetBytes(make([]byte, 64))
				b.Release()
			}
			checkSeq(t, "DetachGuest after the buffers were reused", out, tc.room, 10)

			// Detached: frames queue, nobody gets them.
			g1.grant(100)
			if n, _ := p.Take(bufsOf(10, 15)); n != 5 {
				t.Fatalf("Take while detached took %d of 5", n)
			}
			if again := p.DetachGuest(); len(again) != 5 {
				t.Fatalf("second DetachGuest returned %d frames, want the 5 queued while detached", len(again))
			}
			if n, _ := p.Take(bufsOf(15, 20)); n != 5 {
				t.Fatalf("Take while detached took %d of 5", n)
			}
			g2 := newFakeGuest(100)
			p.AttachGuest(g2)
			waitFor(t, "frames queued while detached delivered on attach", func() bool { return len(g2.received()) == 5 })
			p.Take(bufsOf(20, 25))
			waitFor(t, "new frames delivered", func() bool { return len(g2.received()) == 10 })
			checkSeq(t, "second guest", g2.received(), 15, 25)
			checkSeq(t, "first guest after detach", g1.received(), 0, tc.room)
		})
	}
}

// TestDetachRaceExactlyOnce: an adapter streams frames while the hand-off
// repeatedly detaches the guest (holding the adapter's rx, as the vNIC
// does) and attaches a new one; the guests' frames and the detached ones,
// taken in hand-off order, are every frame once, in order.
func TestDetachRaceExactlyOnce(t *testing.T) {
	testutil.CheckGoroutines(t)
	const total = 20000
	p := newPort(t, &fakeUplink{})
	p.Start()
	var rxMu sync.Mutex // the adapter's rx: held across a detach
	var stream [][]byte // what left the port, in hand-off order
	guest := newFakeGuest(1 << 30)
	p.AttachGuest(guest)

	done := make(chan error, 1)
	go func() {
		next := 0
		for next < total {
			rxMu.Lock()
			n, full := p.Take(bufsOf(next, min(next+64, total)))
			next += n
			rxMu.Unlock()
			if full {
				select {
				case <-p.Space():
				case <-time.After(deadline):
					done <- fmt.Errorf("no Space after %d frames", next)
					return
				}
			}
		}
		done <- nil
	}()
	switches := 0
	for running := true; running; switches++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			running = false
		default:
		}
		rxMu.Lock()
		out := p.DetachGuest()
		stream = append(stream, guest.received()...)
		stream = append(stream, out...)
		guest = newFakeGuest(1 << 30)
		p.AttachGuest(guest)
		rxMu.Unlock()
	}
	waitFor(t, "the last frames delivered", func() bool { return len(stream)+len(guest.received()) >= total })
	stream = append(stream, guest.received()...)
	checkSeq(t, fmt.Sprintf("frames across %d detaches", switches), stream, 0, total)
}

// TestSend: Send queues no more than TxRoom frames on the vNIC and never
// waits; WantTxRoom and OnTxRoom reach the uplink's room call-back.
func TestSend(t *testing.T) {
	testutil.CheckGoroutines(t)
	up := &fakeUplink{room: 3}
	p := newPort(t, up)
	p.Start()
	if r := p.TxRoom(); r != 3 {
		t.Fatalf("TxRoom = %d, want 3", r)
	}
	bufs := bufsOf(0, 5)
	if n := p.Send(bufs); n != 3 {
		t.Fatalf("Send(5) with room 3 = %d", n)
	}
	checkSeq(t, "uplink", up.taken(), 0, 3)
	rest := bufs[3:] // still ours

	if r := p.TxRoom(); r != 0 {
		t.Fatalf("TxRoom = %d after filling it, want 0", r)
	}
	sent := make(chan int, 1)
	go func() { sent <- p.Send(rest) }()
	select {
	case n := <-sent:
		if n != 0 {
			t.Fatalf("Send with no room = %d, want 0", n)
		}
	case <-time.After(deadline):
		t.Fatal("Send blocked with no room")
	}

	called := make(chan struct{}, 4)
	p.OnTxRoom(func() { called <- struct{}{} })
	if p.WantTxRoom() {
		t.Fatal("WantTxRoom = true with no room")
	}
	up.giveRoom(2)
	recvWithin(t, "the OnTxRoom call-back", called)
	if !p.WantTxRoom() {
		t.Fatal("WantTxRoom = false with room")
	}
	up.giveRoom(1) // nobody asked: no call-back
	select {
	case <-called:
		t.Fatal("OnTxRoom called without a WantTxRoom")
	default:
	}
	if n := p.Send(rest); n != 2 {
		t.Fatalf("Send(2) with room 3 = %d", n)
	}
	checkSeq(t, "uplink", up.taken(), 0, 5)
	if st := p.Stats(); st.TxFrames != 5 {
		t.Errorf("Stats.TxFrames = %d, want 5", st.TxFrames)
	}
	up.mu.Lock()
	for i, c := range up.calls {
		if c == 0 {
			t.Errorf("HostQueue call %d offered no frames", i)
		}
	}
	up.mu.Unlock()

	t.Run("no uplink", func(t *testing.T) {
		p := vem.New("host1", nil).AddPort("vm2/eth0", nil)
		defer p.Close()
		b := bufsOf(0, 1)
		if p.TxRoom() != 0 || p.WantTxRoom() || p.Send(b) != 0 {
			t.Errorf("a port without uplink: TxRoom %d WantTxRoom %v Send %d; want 0, false, 0", p.TxRoom(), p.WantTxRoom(), p.Send(b))
		}
		p.OnTxRoom(func() {})
		link.ReleaseAll(b)
	})
}

// TestClose: Close releases the queued buffers, stops the delivery
// goroutine (even while it waits for guest room), and is idempotent; a
// closed port takes and sends nothing.
func TestClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	up := &fakeUplink{room: 10}
	sw := vem.New("host1", nil)
	p := sw.AddPort("vm1/eth0", up)
	g := newFakeGuest(2)
	p.AttachGuest(g)
	p.Start()
	bufs := bufsOf(0, 6)
	// Mark the buffers that will stay queued (the guest takes two):
	// Release resets Off to the headroom and Len to 0.
	for _, b := range bufs[2:] {
		b.InsertAt(0, 8)
	}
	if n, _ := p.Take(bufs); n != 6 {
		t.Fatalf("Take took %d of 6", n)
	}
	recvWithin(t, "the guest reporting full", g.blocked)
	// The guest reports full from inside DeliverBatch; the port dequeues
	// what it took once that returns.
	for deadline := time.Now().Add(5 * time.Second); p.Queued() != 4 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if q := p.Queued(); q != 4 {
		t.Fatalf("Queued = %d, want 4", q)
	}
	sw.RemovePort("vm1/eth0") // closes it
	if q := p.Queued(); q != 0 {
		t.Errorf("Queued = %d after Close, want 0", q)
	}
	// The port owned these and released them; a released buffer has its
	// offsets reset. (Reading a pooled buffer is for this check only.)
	for i, b := range bufs[2:] {
		if b.Off != link.Headroom || b.Len != 0 {
			t.Errorf("queued buffer %d not released by Close: Off %d Len %d", i+2, b.Off, b.Len)
		}
	}
	p.Close() // idempotent
	if n, full := p.Take(bufsOf(6, 7)); n != 0 || !full {
		t.Errorf("Take after Close = %d, %v; want 0, true", n, full)
	}
	if n := p.Send(bufsOf(6, 7)); n != 0 {
		t.Errorf("Send after Close = %d, want 0", n)
	}
	checkSeq(t, "guest", g.received(), 0, 2)
}
