package linktest

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"github.com/vmfex/vmfex/link"
)

// Faults says what a Faulty does to the frames given to its Send. Drops are
// decided first; a frame not dropped may then be held back (Reorder), and a
// frame sent may be sent twice (Duplicate).
type Faults struct {
	// DropEvery drops the DropEvery-th frame offered to Send, and every
	// DropEvery-th after it, counting across calls. 0 drops none.
	DropEvery int
	// Drop, if set, drops the frames for which it returns true. It must not
	// keep frame, which is the frame's bytes.
	Drop func(frame []byte) bool
	// Reorder is the probability that a frame is held back and sent right
	// after the next frame instead (the two swap places). A held frame goes
	// out with the next Send or with Flush.
	Reorder float64
	// Duplicate is the probability that a frame sent is followed by a copy.
	Duplicate float64
	// Seed seeds the random choices of Reorder and Duplicate: a run with the
	// same seed and the same frames injects the same faults.
	Seed uint64
}

// FaultStats counts what a Faulty did.
type FaultStats struct {
	Offered    uint64 // frames given to Send
	Dropped    uint64 // frames dropped: by DropEvery, by Drop, or held when Close came
	Reordered  uint64 // frames sent after the frame that followed them
	Duplicated uint64 // copies sent
}

// Faulty is a Port that injects faults into the frames sent through it and
// passes everything else to the port it wraps. Its Stats are the wrapped
// port's, with the frames it dropped added to Drops.
type Faulty struct {
	port   link.Port // the wrapped port; immutable
	faults Faults    // immutable

	mu   sync.Mutex
	rng  *rand.Rand  // guarded by mu
	held *link.Buf   // the frame held back by Reorder, or nil; guarded by mu
	out  []*link.Buf // scratch: the frames one Send passes on; guarded by mu

	closeOnce sync.Once
	closed    atomic.Bool // set before the wrapped port closes

	offered   atomic.Uint64
	dropped   atomic.Uint64
	reordered atomic.Uint64
	dupes     atomic.Uint64
}

var _ link.Port = (*Faulty)(nil)

// NewFaulty returns p wrapped to inject cfg's faults into the frames sent
// through it. The Faulty owns p from now on: Close closes it.
func NewFaulty(p link.Port, cfg Faults) *Faulty {
	return &Faulty{
		port:   p,
		faults: cfg,
		rng:    rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
	}
}

// Injected returns what the Faulty did so far.
func (f *Faulty) Injected() FaultStats {
	return FaultStats{
		Offered:    f.offered.Load(),
		Dropped:    f.dropped.Load(),
		Reordered:  f.reordered.Load(),
		Duplicated: f.dupes.Load(),
	}
}

// Send implements link.Port. It takes every frame of bufs, dropped or not:
// when the wrapped port fails, it releases the frames that port did not take,
// and returns len(bufs) with the error.
func (f *Faulty) Send(bufs []*link.Buf) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed.Load() {
		return 0, link.ErrClosed
	}
	every := uint64(max(f.faults.DropEvery, 0))
	out := f.out[:0]
	for _, b := range bufs {
		offered := f.offered.Add(1)
		if every > 0 && offered%every == 0 || f.faults.Drop != nil && f.faults.Drop(b.Bytes()) {
			f.dropped.Add(1)
			b.Release()
			continue
		}
		switch {
		case f.held != nil:
			out = f.emitLocked(out, b)
			out = f.emitLocked(out, f.held)
			f.held = nil
			f.reordered.Add(1)
		case f.chanceLocked(f.faults.Reorder):
			f.held = b
		default:
			out = f.emitLocked(out, b)
		}
	}
	f.out = out
	return len(bufs), f.sendLocked()
}

// emitLocked appends b to out, and a copy of it if Duplicate says so.
func (f *Faulty) emitLocked(out []*link.Buf, b *link.Buf) []*link.Buf {
	out = append(out, b)
	if f.chanceLocked(f.faults.Duplicate) {
		c := link.Get()
		c.Off, c.Len = b.Off, b.Len
		copy(c.Bytes(), b.Bytes())
		out = append(out, c)
		f.dupes.Add(1)
	}
	return out
}

func (f *Faulty) chanceLocked(p float64) bool { return p > 0 && f.rng.Float64() < p }

// sendLocked passes f.out to the wrapped port, releasing what it refuses.
func (f *Faulty) sendLocked() error {
	if len(f.out) == 0 {
		return nil
	}
	n, err := f.port.Send(f.out)
	if err != nil {
		link.ReleaseAll(f.out[n:])
	}
	clear(f.out)
	f.out = f.out[:0]
	return err
}

// Flush sends the frame held back by Reorder, if any, as it is: it counts
// as not reordered.
func (f *Faulty) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.held == nil {
		return nil
	}
	f.out = append(f.out[:0], f.held)
	f.held = nil
	return f.sendLocked()
}

// Recv implements link.Port: it is the wrapped port's.
func (f *Faulty) Recv(bufs []*link.Buf) (int, error) { return f.port.Recv(bufs) }

// BatchSize implements link.Port: it is the wrapped port's.
func (f *Faulty) BatchSize() int { return f.port.BatchSize() }

// Stats implements link.Port.
func (f *Faulty) Stats() link.PortStats {
	s := f.port.Stats()
	s.Drops += f.dropped.Load()
	return s
}

// Close implements link.Port: it closes the wrapped port, then drops the
// frame held back by Reorder, if any.
func (f *Faulty) Close() error {
	var err error
	f.closeOnce.Do(func() {
		f.closed.Store(true)
		err = f.port.Close() // first: it ends a Send waiting with f.mu held
		f.mu.Lock()
		if f.held != nil {
			f.held.Release()
			f.held = nil
			f.dropped.Add(1)
		}
		f.mu.Unlock()
	})
	return err
}
