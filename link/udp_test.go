package link

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfex/vmfex/internal/testutil"
	"github.com/vmfex/vmfex/wire"
)

// listenLoopback binds a UDP socket to an ephemeral port of 127.0.0.1.
func listenLoopback(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("ListenUDP: %v", err)
	}
	return c
}

func udpAddr(c *net.UDPConn) *net.UDPAddr { return c.LocalAddr().(*net.UDPAddr) }

// newUDPPort returns the cable end over conn talking to remote, closed when
// the test ends.
func newUDPPort(t testing.TB, conn *net.UDPConn, remote *net.UDPAddr) *UDPPort {
	t.Helper()
	p, err := NewUDPPortConn(conn, remote)
	if err != nil {
		conn.Close()
		t.Fatalf("NewUDPPortConn: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// udpPair returns the two ends of a UDP cable on 127.0.0.1.
func udpPair(t testing.TB) (*UDPPort, *UDPPort) {
	t.Helper()
	ca, cb := listenLoopback(t), listenLoopback(t)
	return newUDPPort(t, ca, udpAddr(cb)), newUDPPort(t, cb, udpAddr(ca))
}

// frameOf returns a Buf holding p.
func frameOf(t testing.TB, p []byte) *Buf {
	t.Helper()
	b := Get()
	if !b.SetBytes(p) {
		t.Fatalf("SetBytes(%d bytes) failed", len(p))
	}
	return b
}

// recvFrames receives until it holds n frames and returns copies of them.
func recvFrames(t *testing.T, p Port, n int) [][]byte {
	t.Helper()
	var got [][]byte
	bufs := make([]*Buf, p.BatchSize())
	for len(got) < n {
		k, err := p.Recv(bufs[:min(len(bufs), n-len(got))])
		if err != nil {
			t.Fatalf("Recv after %d of %d frames: %v", len(got), n, err)
		}
		for _, b := range bufs[:k] {
			if b.Off != Headroom {
				t.Errorf("received frame at offset %d, want %d", b.Off, Headroom)
			}
			got = append(got, bytes.Clone(b.Bytes()))
		}
		ReleaseAll(bufs[:k])
	}
	return got
}

// TestUDPRoundTrip sends frames of every interesting size each way and checks
// they arrive byte for byte, in order, and are counted.
func TestUDPRoundTrip(t *testing.T) {
	testutil.CheckGoroutines(t)
	a, b := udpPair(t)
	sizes := []int{14, 15, 59, 60, 64, 1500, 1514, 1518, 1522, 4096, 9000, 9018, MaxFrame}
	var total uint64
	var frames [][]byte
	for i, n := range sizes {
		frames = append(frames, pattern(n, byte(i*31)))
		total += uint64(n)
	}

	for _, dir := range []struct {
		name     string
		from, to *UDPPort
	}{{"a to b", a, b}, {"b to a", b, a}} {
		t.Run(dir.name, func(t *testing.T) {
			bufs := make([]*Buf, len(frames))
			for i, f := range frames {
				bufs[i] = frameOf(t, f)
			}
			if n, err := dir.from.Send(bufs); n != len(bufs) || err != nil {
				t.Fatalf("Send(%d frames) = %d, %v", len(bufs), n, err)
			}
			got := recvFrames(t, dir.to, len(frames))
			for i := range frames {
				if !bytes.Equal(got[i], frames[i]) {
					t.Errorf("frame %d: got %d bytes, want the %d sent byte for byte", i, len(got[i]), len(frames[i]))
				}
			}
			if st := dir.from.Stats(); st.TxFrames != uint64(len(frames)) || st.TxBytes != total || st.Drops != 0 {
				t.Errorf("sender Stats() = %+v, want %d frames, %d bytes, 0 drops", st, len(frames), total)
			}
			if st := dir.to.Stats(); st.RxFrames != uint64(len(frames)) || st.RxBytes != total || st.Drops != 0 {
				t.Errorf("receiver Stats() = %+v, want %d frames, %d bytes, 0 drops", st, len(frames), total)
			}
		})
	}
}

// TestUDPBatching sends more than three batches in one call and checks Recv
// moves several frames per call, never more than UDPBatch, all in order.
func TestUDPBatching(t *testing.T) {
	a, b := udpPair(t)
	const count = 3*UDPBatch + 5
	bufs := make([]*Buf, count)
	for i := range bufs {
		bufs[i] = numbered(0, uint32(i))
	}
	if n, err := a.Send(bufs); n != count || err != nil {
		t.Fatalf("Send(%d frames) = %d, %v", count, n, err)
	}
	rx := make([]*Buf, 2*UDPBatch)
	most := 0
	for want := uint32(0); want < count; {
		n, err := b.Recv(rx)
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if n > UDPBatch {
			t.Fatalf("Recv returned %d frames, more than the batch size %d", n, UDPBatch)
		}
		most = max(most, n)
		for _, f := range rx[:n] {
			if _, seq := numberOf(f); seq != want {
				t.Fatalf("got seq %d, want %d", seq, want)
			}
			want++
		}
		ReleaseAll(rx[:n])
	}
	if most < 2 {
		t.Errorf("every Recv returned one frame; want batches")
	}
	if got := a.BatchSize(); got != UDPBatch {
		t.Errorf("BatchSize() = %d, want %d", got, UDPBatch)
	}
}

// TestUDPSendRefusesNonFrames checks Send takes, releases and counts frames
// too short or too long for the cable, and sends the rest.
func TestUDPSendRefusesNonFrames(t *testing.T) {
	a, b := udpPair(t)
	big := frameOf(t, make([]byte, MaxFrame))
	big.InsertAt(12, 4) // a 9216-byte frame tagged once more: too long
	short := frameOf(t, make([]byte, wire.EthHeaderLen-1))
	bufs := []*Buf{frameOf(t, pattern(60, 1)), Get(), short, big, frameOf(t, pattern(64, 2))}
	if n, err := a.Send(bufs); n != len(bufs) || err != nil {
		t.Fatalf("Send = %d, %v; want %d, nil", n, err, len(bufs))
	}
	got := recvFrames(t, b, 2)
	if !bytes.Equal(got[0], pattern(60, 1)) || !bytes.Equal(got[1], pattern(64, 2)) {
		t.Errorf("received %d and %d bytes, want the two valid frames", len(got[0]), len(got[1]))
	}
	if d, want := a.Drops(), (UDPDrops{Runt: 2, Oversize: 1}); d != want {
		t.Errorf("Drops() = %+v, want %+v", d, want)
	}
	if st := a.Stats(); st.TxFrames != 2 || st.TxBytes != 124 || st.Drops != 3 {
		t.Errorf("Stats() = %+v, want 2 frames, 124 bytes, 3 drops", st)
	}
}

// TestUDPGarbage has a plain socket, standing for a misbehaving peer, send
// datagrams that are not frames, and a stranger send a good frame. Only the
// peer's good frames are delivered; the rest is counted by reason.
func TestUDPGarbage(t *testing.T) {
	peer, stranger := listenLoopback(t), listenLoopback(t)
	defer peer.Close()
	defer stranger.Close()
	p := newUDPPort(t, listenLoopback(t), udpAddr(peer))
	to := p.LocalAddr()

	send := func(c *net.UDPConn, n int, seed byte) {
		t.Helper()
		if _, err := c.WriteToUDP(pattern(n, seed), to); err != nil {
			t.Fatalf("WriteToUDP(%d bytes): %v", n, err)
		}
	}
	send(peer, 0, 0)
	send(peer, wire.EthHeaderLen-1, 0)
	send(peer, MaxFrame+1, 0)
	send(peer, 65000, 0)
	send(stranger, 60, 0)
	send(peer, wire.EthHeaderLen, 14)
	send(peer, 60, 60) // marker

	want := UDPDrops{Runt: 2, Oversize: 2, Foreign: 1}
	bufs := make([]*Buf, UDPBatch)
	var got [][]byte
	// Loopback keeps each socket's order, not the order between two sockets:
	// resend the marker until the stranger's datagram has been seen too.
	for sawMarker := false; !sawMarker || p.Drops() != want; {
		if sawMarker {
			if len(got) > 100 {
				t.Fatalf("Drops() = %+v after %d markers, want %+v", p.Drops(), len(got), want)
			}
			send(peer, 60, 60)
		}
		n, err := p.Recv(bufs)
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		for _, b := range bufs[:n] {
			got = append(got, bytes.Clone(b.Bytes()))
			sawMarker = sawMarker || len(b.Bytes()) == 60
		}
		ReleaseAll(bufs[:n])
	}
	if !bytes.Equal(got[0], pattern(wire.EthHeaderLen, 14)) {
		t.Errorf("first frame delivered = %x, want the 14-byte frame", got[0])
	}
	for i, f := range got[1:] {
		if !bytes.Equal(f, pattern(60, 60)) {
			t.Errorf("frame %d delivered = %d bytes, want the marker", i+1, len(f))
		}
	}
	st := p.Stats()
	if st.Drops != 5 || st.RxFrames != uint64(len(got)) {
		t.Errorf("Stats() = %+v, want 5 drops, %d frames", st, len(got))
	}
}

// TestUDPAbsentPeer checks a port can send before its peer exists: the ICMP
// errors that come back do not reach Send or Recv.
func TestUDPAbsentPeer(t *testing.T) {
	gone := listenLoopback(t)
	addr := udpAddr(gone)
	gone.Close()
	p := newUDPPort(t, listenLoopback(t), addr)
	for i := range 3 {
		if n, err := p.Send([]*Buf{numbered(0, uint32(i))}); n != 1 || err != nil {
			t.Fatalf("Send #%d to an absent peer = %d, %v; want 1, nil", i, n, err)
		}
	}
	// The peer comes up; frames flow.
	conn, err := net.ListenUDP("udp", addr)
	if err != nil {
		t.Skipf("cannot rebind %v: %v", addr, err)
	}
	q := newUDPPort(t, conn, p.LocalAddr())
	if n, err := q.Send([]*Buf{numbered(1, 0)}); n != 1 || err != nil {
		t.Fatalf("Send = %d, %v", n, err)
	}
	if got := recvFrames(t, p, 1); len(got[0]) != numFrameLen {
		t.Errorf("received %d bytes, want %d", len(got[0]), numFrameLen)
	}
}

func TestUDPClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	a, b := udpPair(t)

	done := make(chan error, 1)
	go func() {
		n, err := a.Recv(make([]*Buf, 8))
		if n != 0 {
			err = fmt.Errorf("got %d frames from an idle cable", n)
		}
		done <- err
	}()
	// Wait for Recv to hold the receive side; Close then ends it whether
	// or not it is already in recvmmsg.
	for a.rx.mu.TryLock() {
		a.rx.mu.Unlock()
		runtime.Gosched()
	}
	if err := a.Close(); err != nil {
		t.Errorf("Close = %v, want nil", err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("Recv waiting when Close came = %v, want ErrClosed", err)
	}
	for i := range 2 {
		if err := a.Close(); err != nil {
			t.Errorf("Close #%d = %v, want nil", i+2, err)
		}
	}
	f := numbered(0, 0)
	if n, err := a.Send([]*Buf{f}); n != 0 || !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %d, %v; want 0, ErrClosed", n, err)
	}
	if n, err := a.Recv([]*Buf{nil}); n != 0 || !errors.Is(err, ErrClosed) {
		t.Errorf("Recv after Close = %d, %v; want 0, ErrClosed", n, err)
	}
	// The peer is not told; its frames are lost, as on a cut cable.
	if n, err := b.Send([]*Buf{f}); n != 1 || err != nil {
		t.Errorf("peer Send to a closed end = %d, %v; want 1, nil", n, err)
	}
}

func TestUDPNewErrors(t *testing.T) {
	for _, tt := range []struct{ local, remote string }{
		{"127.0.0.1:0", "127.0.0.1:0"},
		{"127.0.0.1:0", "0.0.0.0:7000"},
		{"127.0.0.1:0", "no port"},
		{"no port", "127.0.0.1:7000"},
		{"192.0.2.1:0", "127.0.0.1:7000"}, // not ours to bind
	} {
		if p, err := NewUDPPort(tt.local, tt.remote); err == nil {
			p.Close()
			t.Errorf("NewUDPPort(%q, %q) succeeded, want an error", tt.local, tt.remote)
		}
	}

	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7})
	if err != nil {
		t.Fatalf("DialUDP: %v", err)
	}
	defer c.Close()
	if p, err := NewUDPPortConn(c, udpAddr(c)); err == nil {
		p.Close()
		t.Errorf("NewUDPPortConn over a connected socket succeeded, want an error")
	}

	p, err := NewUDPPort("127.0.0.1:0", "127.0.0.1:7000")
	if err != nil {
		t.Fatalf("NewUDPPort: %v", err)
	}
	defer p.Close()
	if got := p.RemoteAddr().String(); got != "127.0.0.1:7000" {
		t.Errorf("RemoteAddr() = %s, want 127.0.0.1:7000", got)
	}
}

// TestUDPAllocs checks Send allocates nothing per frame, and pins what Recv
// allocates: x/net's ReadBatch builds a *net.UDPAddr (two allocations) for
// every datagram's source address.
func TestUDPAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops buffers at random under the race detector")
	}
	tx := make([]*Buf, UDPBatch)
	fill := func() {
		for i := range tx {
			tx[i] = Get()
			tx[i].Len = 64
		}
	}
	// Into the void: a port whose peer is gone.
	gone := listenLoopback(t)
	sink := newUDPPort(t, listenLoopback(t), udpAddr(gone))
	gone.Close()
	sendAllocs := testing.AllocsPerRun(50, func() {
		fill()
		if n, err := sink.Send(tx); n != len(tx) || err != nil {
			t.Fatalf("Send = %d, %v", n, err)
		}
	})
	if sendAllocs != 0 {
		t.Errorf("Send allocations per batch of %d = %v, want 0", UDPBatch, sendAllocs)
	}

	a, b := udpPair(t)
	rx := make([]*Buf, UDPBatch)
	const budget = 2 // per datagram, in x/net
	allocs := testing.AllocsPerRun(50, func() {
		fill()
		if n, err := a.Send(tx); n != len(tx) || err != nil {
			t.Fatalf("Send = %d, %v", n, err)
		}
		for got := 0; got < len(tx); {
			n, err := b.Recv(rx)
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			ReleaseAll(rx[:n])
			got += n
		}
	})
	t.Logf("allocations per frame: send %.2f, send and receive %.2f", sendAllocs/UDPBatch, allocs/UDPBatch)
	if perFrame := allocs / UDPBatch; perFrame > budget {
		t.Errorf("allocations per frame sent and received = %.2f, want <= %d", perFrame, budget)
	}
}

// BenchmarkUDPPort sends frames over loopback as fast as Send goes, one
// goroutine sending and one receiving; an op is one frame offered. The cable
// is lossy: rx frames/s is what arrived, loss% what the receiver's socket
// buffer dropped.
func BenchmarkUDPPort(b *testing.B) {
	for _, size := range []int{64, 1514} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			tx, rx := udpPair(b)
			var got atomic.Int64
			var last atomic.Int64 // when the last frame arrived, unix ns
			done := make(chan struct{})
			go func() {
				defer close(done)
				bufs := make([]*Buf, UDPBatch)
				for {
					n, err := rx.Recv(bufs)
					if err != nil {
						return
					}
					ReleaseAll(bufs[:n])
					got.Add(int64(n))
					last.Store(time.Now().UnixNano())
				}
			}()
			bufs := make([]*Buf, UDPBatch)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for sent := 0; sent < b.N; {
				k := min(UDPBatch, b.N-sent)
				for i := range k {
					bufs[i] = Get()
					bufs[i].Len = size
					binary.BigEndian.PutUint32(bufs[i].Bytes()[numSeq:], uint32(sent+i))
				}
				n, err := tx.Send(bufs[:k])
				if err != nil {
					b.Fatalf("Send: %v", err)
				}
				sent += n
			}
			sendTime := time.Since(start)
			b.StopTimer()
			// Wait for the receiver to catch up: until all frames are in or
			// none came for 100ms (a deadline for lost frames, not a measure).
			for prev := int64(-1); got.Load() < int64(b.N) && got.Load() != prev; {
				prev = got.Load()
				time.Sleep(100 * time.Millisecond)
			}
			rx.Close()
			<-done
			n := got.Load()
			b.ReportMetric(float64(b.N)/sendTime.Seconds(), "tx-frames/s")
			if n > 0 {
				b.ReportMetric(float64(n)/(time.Duration(last.Load()-start.UnixNano())).Seconds(), "rx-frames/s")
			}
			b.ReportMetric(100*float64(int64(b.N)-n)/float64(b.N), "loss%")
		})
	}
}
