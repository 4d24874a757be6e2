package link

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	"github.com/vmfex/vmfex/internal/testutil"
)

// Numbered test frames: 14 bytes of Ethernet header, then the sender's id and
// a per-sender sequence number.
const (
	numFrameLen = 64
	numSender   = 14 // offset of the sender id (1 byte)
	numSeq      = 15 // offset of the sequence number (uint32, big endian)
)

func numbered(sender byte, seq uint32) *Buf {
	b := Get()
	b.Len = numFrameLen
	p := b.Bytes()
	clear(p)
	p[numSender] = sender
	binary.BigEndian.PutUint32(p[numSeq:], seq)
	return b
}

func numberOf(b *Buf) (sender byte, seq uint32) {
	p := b.Bytes()
	return p[numSender], binary.BigEndian.Uint32(p[numSeq:])
}

// waitBlocked returns once n goroutines wait on q (in Send or Recv).
func waitBlocked(t *testing.T, q *queue, n int) {
	t.Helper()
	for {
		q.mu.Lock()
		w := q.waiters
		q.mu.Unlock()
		if w >= n {
			return
		}
		runtime.Gosched()
	}
}

func queued(q *queue) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// TestMemConcurrentSenders has several goroutines send numbered frames through
// one port, in batches of random size, over a cable small enough that they
// keep waiting for room. The receiver checks each sender's frames arrive in
// order, every one exactly once.
func TestMemConcurrentSenders(t *testing.T) {
	testutil.CheckGoroutines(t)
	const (
		senders   = 4
		perSender = 5000
		depth     = 16
	)
	a, b := NewMemCable(depth)
	defer a.Close()
	defer b.Close()

	errs := make(chan error, senders)
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(s), 1))
			bufs := make([]*Buf, MemBatch)
			for seq := 0; seq < perSender; {
				k := min(1+rng.IntN(MemBatch), perSender-seq)
				for i := range k {
					bufs[i] = numbered(byte(s), uint32(seq+i))
				}
				n, err := a.Send(bufs[:k])
				if err != nil || n != k {
					ReleaseAll(bufs[n:k])
					errs <- fmt.Errorf("sender %d: Send(%d frames) = %d, %v", s, k, n, err)
					return
				}
				seq += k
			}
		}()
	}

	next := make([]uint32, senders)
	bufs := make([]*Buf, MemBatch)
	for got := 0; got < senders*perSender; {
		n, err := b.Recv(bufs)
		if err != nil {
			t.Fatalf("Recv after %d frames: %v", got, err)
		}
		for _, f := range bufs[:n] {
			s, seq := numberOf(f)
			if int(s) >= senders {
				t.Fatalf("frame from unknown sender %d", s)
			}
			if seq != next[s] {
				t.Fatalf("sender %d: got seq %d, want %d (lost, duplicated or reordered)", s, seq, next[s])
			}
			next[s]++
		}
		ReleaseAll(bufs[:n])
		got += n
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	want := uint64(senders * perSender)
	if st := a.Stats(); st.TxFrames != want || st.TxBytes != want*numFrameLen || st.Drops != 0 {
		t.Errorf("sender Stats() = %+v, want %d frames, %d bytes, 0 drops", st, want, want*numFrameLen)
	}
	if st := b.Stats(); st.RxFrames != want || st.RxBytes != want*numFrameLen {
		t.Errorf("receiver Stats() = %+v, want %d frames, %d bytes", st, want, want*numFrameLen)
	}
	if q := queued(b.rx); q != 0 {
		t.Errorf("%d frames left queued, want 0", q)
	}
}

// TestMemBackpressure fills a cable and checks the next Send waits for room
// rather than drop, and then completes in order once the receiver reads.
func TestMemBackpressure(t *testing.T) {
	testutil.CheckGoroutines(t)
	const depth = 4
	a, b := NewMemCable(depth)
	defer a.Close()
	defer b.Close()

	fill := make([]*Buf, depth)
	for i := range fill {
		fill[i] = numbered(0, uint32(i))
	}
	if n, err := a.Send(fill); n != depth || err != nil {
		t.Fatalf("Send(%d frames) into an empty cable = %d, %v; want %d, nil", depth, n, err, depth)
	}

	// A batch larger than the cable: it goes in as room appears.
	const extra = 2*depth + 1
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		bufs := make([]*Buf, extra)
		for i := range bufs {
			bufs[i] = numbered(0, uint32(depth+i))
		}
		n, err := a.Send(bufs)
		ReleaseAll(bufs[n:])
		done <- result{n, err}
	}()

	waitBlocked(t, a.tx, 1)
	select {
	case r := <-done:
		t.Fatalf("Send into a full cable returned %d, %v; want it to wait", r.n, r.err)
	default:
	}
	if q := queued(a.tx); q != depth {
		t.Errorf("full cable holds %d frames, want %d", q, depth)
	}
	if st := a.Stats(); st.TxFrames != depth || st.Drops != 0 {
		t.Errorf("Stats() of the blocked sender = %+v, want %d tx frames, 0 drops", st, depth)
	}

	bufs := make([]*Buf, 3) // read in small batches to make the sender wait again
	for want := uint32(0); want < depth+extra; {
		n, err := b.Recv(bufs)
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		for _, f := range bufs[:n] {
			if _, seq := numberOf(f); seq != want {
				t.Fatalf("got seq %d, want %d", seq, want)
			}
			want++
		}
		ReleaseAll(bufs[:n])
	}
	if r := <-done; r.n != extra || r.err != nil {
		t.Errorf("blocked Send = %d, %v; want %d, nil", r.n, r.err, extra)
	}
	if st := a.Stats(); st.TxFrames != depth+extra || st.Drops != 0 {
		t.Errorf("Stats() = %+v, want %d tx frames, 0 drops", st, depth+extra)
	}
}

func TestMemCloseUnblocksSend(t *testing.T) {
	for _, closer := range []string{"own end", "peer"} {
		t.Run(closer, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			a, b := NewMemCable(2)
			defer b.Close()
			bufs := []*Buf{numbered(0, 0), numbered(0, 1), numbered(0, 2), numbered(0, 3)}
			type result struct {
				n   int
				err error
			}
			done := make(chan result, 1)
			go func() {
				n, err := a.Send(bufs)
				done <- result{n, err}
			}()
			waitBlocked(t, a.tx, 1)
			if st := a.Stats(); st.TxFrames != 2 || st.TxBytes != 2*numFrameLen {
				t.Errorf("Stats() of a Send waiting after 2 frames = %+v, want them counted", st)
			}
			if closer == "peer" {
				b.Close()
			} else {
				a.Close()
			}
			r := <-done
			if r.n != 2 || !errors.Is(r.err, ErrClosed) {
				t.Errorf("Send blocked on a full cable = %d, %v; want 2, ErrClosed", r.n, r.err)
			}
			ReleaseAll(bufs[r.n:]) // the caller keeps what was not taken
			a.Close()
		})
	}
}

func TestMemCloseUnblocksRecv(t *testing.T) {
	for _, closer := range []string{"own end", "peer"} {
		t.Run(closer, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			a, b := NewMemCable(2)
			defer a.Close()
			defer b.Close()
			done := make(chan error, 1)
			go func() {
				n, err := b.Recv(make([]*Buf, 4))
				if n != 0 {
					err = fmt.Errorf("got %d frames from an idle cable", n)
				}
				done <- err
			}()
			waitBlocked(t, b.rx, 1)
			if closer == "peer" {
				a.Close()
			} else {
				b.Close()
			}
			if err := <-done; !errors.Is(err, ErrClosed) {
				t.Errorf("Recv waiting on an idle cable returned %v, want ErrClosed", err)
			}
		})
	}
}

// TestMemCloseDrain checks the peer of a closed port still receives what was
// queued for it, then sees ErrClosed on both Recv and Send, and that the
// closed end let go of what was queued towards it.
func TestMemCloseDrain(t *testing.T) {
	testutil.CheckGoroutines(t)
	a, b := NewMemCable(8)
	defer b.Close()

	if n, err := a.Send([]*Buf{numbered(1, 0), numbered(1, 1), numbered(1, 2)}); n != 3 || err != nil {
		t.Fatalf("Send = %d, %v; want 3, nil", n, err)
	}
	if n, err := b.Send([]*Buf{numbered(2, 0)}); n != 1 || err != nil {
		t.Fatalf("Send = %d, %v; want 1, nil", n, err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if q := queued(a.rx); q != 0 {
		t.Errorf("closed end still holds %d frames sent to it", q)
	}

	bufs := make([]*Buf, 2)
	var seqs []uint32
	for {
		n, err := b.Recv(bufs)
		for _, f := range bufs[:n] {
			_, seq := numberOf(f)
			seqs = append(seqs, seq)
		}
		ReleaseAll(bufs[:n])
		if err != nil {
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("Recv after drain = %v, want ErrClosed", err)
			}
			break
		}
	}
	if fmt.Sprint(seqs) != "[0 1 2]" {
		t.Errorf("peer drained %v, want [0 1 2]", seqs)
	}
	f := numbered(2, 1)
	if n, err := b.Send([]*Buf{f}); n != 0 || !errors.Is(err, ErrClosed) {
		t.Errorf("peer Send after Close = %d, %v; want 0, ErrClosed", n, err)
	}
	if n, err := a.Send([]*Buf{f}); n != 0 || !errors.Is(err, ErrClosed) {
		t.Errorf("Send on the closed end = %d, %v; want 0, ErrClosed", n, err)
	}
	f.Release() // refused by both ends: still ours
	if n, err := a.Recv(bufs); n != 0 || !errors.Is(err, ErrClosed) {
		t.Errorf("Recv on the closed end = %d, %v; want 0, ErrClosed", n, err)
	}
}

func TestMemCloseIdempotent(t *testing.T) {
	testutil.CheckGoroutines(t)
	a, b := NewMemCable(0)
	for i := range 3 {
		if err := a.Close(); err != nil {
			t.Errorf("Close #%d = %v, want nil", i+1, err)
		}
	}
	if err := b.Close(); err != nil {
		t.Errorf("Close of the peer after its end closed = %v, want nil", err)
	}
}

func TestMemStats(t *testing.T) {
	a, b := NewMemCable(0)
	defer a.Close()
	defer b.Close()
	sizes := []int{14, 60, 1514, 9216}
	var total uint64
	bufs := make([]*Buf, len(sizes))
	for i, n := range sizes {
		bufs[i] = Get()
		bufs[i].Len = n
		total += uint64(n)
	}
	if n, err := a.Send(bufs); n != len(sizes) || err != nil {
		t.Fatalf("Send = %d, %v", n, err)
	}
	if got, want := a.Stats(), (PortStats{TxFrames: 4, TxBytes: total}); got != want {
		t.Errorf("sender Stats() = %+v, want %+v", got, want)
	}
	if got, want := b.Stats(), (PortStats{}); got != want {
		t.Errorf("receiver Stats() before Recv = %+v, want %+v", got, want)
	}
	// Two partial receives add up.
	n1, _ := b.Recv(bufs[:1])
	n2, _ := b.Recv(bufs[1:])
	if n1 != 1 || n2 != 3 {
		t.Fatalf("Recv = %d then %d, want 1 then 3", n1, n2)
	}
	ReleaseAll(bufs)
	if got, want := b.Stats(), (PortStats{RxFrames: 4, RxBytes: total}); got != want {
		t.Errorf("receiver Stats() = %+v, want %+v", got, want)
	}
	if got, want := a.Stats(), (PortStats{TxFrames: 4, TxBytes: total}); got != want {
		t.Errorf("sender Stats() after Recv = %+v, want %+v", got, want)
	}
}

// TestMemAllocs checks a frame crosses an in-memory cable without allocating.
func TestMemAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops buffers at random under the race detector")
	}
	a, b := NewMemCable(0)
	defer a.Close()
	defer b.Close()
	tx := make([]*Buf, MemBatch)
	rx := make([]*Buf, MemBatch)
	allocs := testing.AllocsPerRun(100, func() {
		for i := range tx {
			tx[i] = Get()
			tx[i].Len = 64
		}
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
	if allocs != 0 {
		t.Errorf("allocations per batch of %d frames = %v, want 0", MemBatch, allocs)
	}
}

// BenchmarkMemPort moves 64-byte frames through an in-memory cable, one
// goroutine sending and one receiving; an op is one frame.
func BenchmarkMemPort(b *testing.B) {
	for _, batch := range []int{1, 8, MemBatch} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			tx, rx := NewMemCable(0)
			defer tx.Close()
			defer rx.Close()
			done := make(chan error, 1)
			go func() {
				bufs := make([]*Buf, batch)
				for got := 0; got < b.N; {
					n, err := rx.Recv(bufs)
					if err != nil {
						done <- err
						return
					}
					ReleaseAll(bufs[:n])
					got += n
				}
				done <- nil
			}()
			bufs := make([]*Buf, batch)
			b.ReportAllocs()
			b.ResetTimer()
			for sent := 0; sent < b.N; {
				k := min(batch, b.N-sent)
				for i := range k {
					bufs[i] = Get()
					bufs[i].Len = 64
				}
				n, err := tx.Send(bufs[:k])
				if err != nil {
					b.Fatalf("Send: %v", err)
				}
				sent += n
			}
			if err := <-done; err != nil {
				b.Fatalf("Recv: %v", err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
		})
	}
}
