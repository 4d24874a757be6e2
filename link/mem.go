package link

import (
	"sync"
	"sync/atomic"
)

// MemBatch is the batch size of in-memory cables.
const MemBatch = 64

// DefaultMemDepth is the number of frames an in-memory cable holds per
// direction before Send waits.
const DefaultMemDepth = 1024

// queue is one direction of an in-memory cable: a bounded FIFO of buffers.
type queue struct {
	mu      sync.Mutex
	cond    sync.Cond // signals both "not empty" and "not full"; guarded by mu
	ring    []*Buf    // guarded by mu
	head    int       // index of the oldest frame; guarded by mu
	n       int       // frames queued; guarded by mu
	waiters int       // goroutines in cond.Wait; guarded by mu
	closed  bool      // guarded by mu
	// Counted as frames enter and leave: tx under mu, before a receiver can
	// see the frames, so a reader never sees more received than sent.
	txFrames, txBytes atomic.Uint64
	rxFrames, rxBytes atomic.Uint64
}

func newQueue(depth int) *queue {
	q := &queue{ring: make([]*Buf, depth)}
	q.cond.L = &q.mu
	return q
}

func (q *queue) wakeLocked() {
	if q.waiters > 0 {
		q.cond.Broadcast()
	}
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
}

// put enqueues all of bufs, waiting for room; it returns how many frames it
// took. It counts them as they go in, so that a Send waiting for room shows
// what it has sent so far.
func (q *queue) put(bufs []*Buf) (int, error) {
	sent := 0
	q.mu.Lock()
	for sent < len(bufs) {
		if q.closed {
			q.mu.Unlock()
			return sent, ErrClosed
		}
		room := len(q.ring) - q.n
		if room == 0 {
			q.waiters++
			q.cond.Wait()
			q.waiters--
			continue
		}
		k := min(room, len(bufs)-sent)
		tail := (q.head + q.n) % len(q.ring)
		var bytes uint64
		for i := 0; i < k; i++ {
			q.ring[tail] = bufs[sent+i]
			bytes += uint64(bufs[sent+i].Len)
			tail++
			if tail == len(q.ring) {
				tail = 0
			}
		}
		q.n += k
		sent += k
		q.txFrames.Add(uint64(k))
		q.txBytes.Add(bytes)
		q.wakeLocked()
	}
	q.mu.Unlock()
	return sent, nil
}

// get dequeues up to len(bufs), waiting for at least one.
func (q *queue) get(bufs []*Buf) (int, error) {
	q.mu.Lock()
	for q.n == 0 {
		if q.closed {
			q.mu.Unlock()
			return 0, ErrClosed
		}
		q.waiters++
		q.cond.Wait()
		q.waiters--
	}
	k := min(q.n, len(bufs))
	var bytes uint64
	for i := 0; i < k; i++ {
		b := q.ring[q.head]
		q.ring[q.head] = nil
		bufs[i] = b
		bytes += uint64(b.Len)
		q.head++
		if q.head == len(q.ring) {
			q.head = 0
		}
	}
	q.n -= k
	q.wakeLocked()
	q.mu.Unlock()
	q.rxFrames.Add(uint64(k))
	q.rxBytes.Add(bytes)
	return k, nil
}

// drain releases every queued buffer (after close).
func (q *queue) drain() {
	q.mu.Lock()
	for q.n > 0 {
		q.ring[q.head].Release()
		q.ring[q.head] = nil
		q.head = (q.head + 1) % len(q.ring)
		q.n--
	}
	q.mu.Unlock()
}

// MemPort is one end of an in-memory cable. Frames move by pointer: the
// buffer a sender hands over is the buffer the receiver gets.
type MemPort struct {
	tx, rx    *queue
	closeOnce sync.Once
}

var _ Port = (*MemPort)(nil)

// NewMemCable returns the two ends of a lossless in-memory cable holding up
// to depth frames in each direction (DefaultMemDepth if depth <= 0).
func NewMemCable(depth int) (*MemPort, *MemPort) {
	if depth <= 0 {
		depth = DefaultMemDepth
	}
	ab, ba := newQueue(depth), newQueue(depth)
	return &MemPort{tx: ab, rx: ba}, &MemPort{tx: ba, rx: ab}
}

// Send implements Port. It waits while the cable is full.
func (p *MemPort) Send(bufs []*Buf) (int, error) { return p.tx.put(bufs) }

// Recv implements Port.
func (p *MemPort) Recv(bufs []*Buf) (int, error) { return p.rx.get(bufs) }

// BatchSize implements Port.
func (p *MemPort) BatchSize() int { return MemBatch }

// Stats implements Port.
func (p *MemPort) Stats() PortStats {
	return PortStats{
		TxFrames: p.tx.txFrames.Load(), TxBytes: p.tx.txBytes.Load(),
		RxFrames: p.rx.rxFrames.Load(), RxBytes: p.rx.rxBytes.Load(),
	}
}

// Close implements Port: both directions close, the peer drains what was
// already queued towards it, then sees ErrClosed.
func (p *MemPort) Close() error {
	p.closeOnce.Do(func() {
		p.tx.close()
		p.rx.close()
		p.rx.drain()
	})
	return nil
}
