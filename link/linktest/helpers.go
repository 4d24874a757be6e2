package linktest

import (
	"bytes"
	"testing"
	"time"

	"github.com/vmfex/vmfex/link"
)

// Pair returns the two ends of an in-memory cable of the default depth. The
// caller closes them.
func Pair() (*link.MemPort, *link.MemPort) { return link.NewMemCable(link.DefaultMemDepth) }

// SendFrames sends copies of frames through p, in order and in batches of
// p.BatchSize(). It waits as p.Send does: over an in-memory cable, more
// frames than the cable holds need a receiver at work. It fails the test if
// a frame does not fit a buffer or Send fails.
func SendFrames(t testing.TB, p link.Port, frames [][]byte) {
	t.Helper()
	batch := make([]*link.Buf, 0, p.BatchSize())
	for sent := 0; sent < len(frames); {
		batch = batch[:0]
		for _, fr := range frames[sent:min(len(frames), sent+p.BatchSize())] {
			b := link.Get()
			if !b.SetBytes(fr) {
				b.Release()
				link.ReleaseAll(batch)
				t.Fatalf("SendFrames: frame %d is %d bytes, more than %d", sent+len(batch), len(fr), link.MaxFrame)
			}
			batch = append(batch, b)
		}
		n, err := p.Send(batch)
		if err != nil {
			link.ReleaseAll(batch[n:])
			t.Fatalf("SendFrames: Send failed after %d of %d frames: %v", sent+n, len(frames), err)
		}
		sent += n
	}
}

// RecvN receives exactly n frames from p and returns copies of them, in
// order. It fails the test if Recv fails, or if the n frames have not all
// come within timeout, a deadline for the test and not simulated time: it
// then closes p, to end its Recv.
func RecvN(t testing.TB, p link.Port, n int, timeout time.Duration) [][]byte {
	t.Helper()
	type result struct {
		frames [][]byte
		err    error
	}
	done := make(chan result, 1)
	go func() {
		frames := make([][]byte, 0, n)
		bufs := make([]*link.Buf, p.BatchSize())
		for len(frames) < n {
			k, err := p.Recv(bufs[:min(len(bufs), n-len(frames))])
			for _, b := range bufs[:k] {
				frames = append(frames, bytes.Clone(b.Bytes()))
			}
			link.ReleaseAll(bufs[:k])
			if err != nil {
				done <- result{frames, err}
				return
			}
		}
		done <- result{frames, nil}
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var r result
	select {
	case r = <-done:
	case <-timer.C:
		p.Close()
		r = <-done
		t.Fatalf("RecvN: %d of %d frames came within %v", len(r.frames), n, timeout)
	}
	if r.err != nil {
		t.Fatalf("RecvN: Recv failed after %d of %d frames: %v", len(r.frames), n, r.err)
	}
	return r.frames
}
