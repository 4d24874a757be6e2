package fabric

// Holding a vEth, for live migration (issue 3, item 4): while a VM moves
// host, the FI keeps the frames that arrive for its vEth instead of sending
// them down a server port the VM is leaving, and sends them, in order, to
// wherever the vEth is bound when the move is over.
//
// The state of a hold lives in the vEth's holdQueue: the flag `on`, the
// generation `gen` of the hold and the frames, under the queue's mutex.
// Snapshots copy the flag and generation into vethView, so that stage 9
// reads a plain bool and takes the queue's lock only for a vEth that was
// held when its batch began; under the lock the queue decides, since the
// snapshot may be older than the latest release, or than the latest hold.
//
// Two guarantees make the hold exact:
//
//   - HoldVEth sets `on`, publishes a snapshot, then waits for a grace
//     period: every port reader that was in a batch finishes it (Send
//     included). A batch that began later loaded the new snapshot and holds.
//     So when HoldVEth returns, the vEth's egress counter is final until the
//     release: HoldTicket.EgressFrames is a count barrier for the adapter.
//   - ReleaseVEth drains the queue while `on` stays set, so frames arriving
//     during the drain queue up behind the held ones, and clears `on` only
//     once the queue is empty, under the queue's lock. A reader that then
//     finds `on` clear through a stale held view sends the frame through
//     its own egress queue, after the drained frames, to the binding of the
//     current snapshot.
//   - A stale held view may also meet the next hold (on set again, a newer
//     gen). It must not queue then: its batch is one the new hold's grace
//     period waits for, and the worker's next batch may still load the
//     snapshot of the release and send straight to the port, overtaking
//     the queue. So it sends directly too, as before the hold.

import (
	"fmt"
	"sync"

	"github.com/vmfex/vmfex/link"
)

// DefaultHoldLimit is the number of frames a held vEth keeps when
// Config.HoldLimit is 0: about 1/16 s of a 1 Mpps stream, far more than a
// migration's switch-over should take, and bounded so that a hold that is
// never released cannot take all the memory (at most 65536 pooled buffers).
const DefaultHoldLimit = 65536

// HoldTicket is what HoldVEth returns.
type HoldTicket struct {
	// EgressFrames is the vEth's egress frame counter (VEthCounters) when
	// the hold took effect. Every frame it counts was handed to the Send of
	// the vEth's server port before HoldVEth returned, and no other frame
	// for the vEth goes down any port until ReleaseVEth. So the adapter
	// that held the vif has received everything the FI sent it for the vif
	// once its own count of arrivals for the vif reaches EgressFrames (both
	// count from the vEth's creation; a frame the port refused because it
	// was closed is counted here and as port-down).
	EgressFrames uint64
}

// heldFrame is a frame stopped at stage 9 on its way to a held vEth, with
// what the rest of stage 9 needs to run at the release.
type heldFrame struct {
	b     *link.Buf // normalised (stage 6), VN-Tag not rewritten yet
	in    *port     // ingress port: hairpin test and its InDrops
	svif  uint16    // source vif on in; 0 from an uplink
	vid   uint16
	inner int // serverInner or uplinkInner
}

// holdQueue is the hold state of one vEth. Its mu is taken by the data
// path only for a vEth whose snapshot view is held.
type holdQueue struct {
	mu     sync.Mutex
	on     bool        // guarded by mu: frames for the vEth are held
	gen    uint64      // guarded by mu: incremented as a hold begins
	frames []heldFrame // guarded by mu: in arrival order
	// draining is set while ReleaseVEth sends the held frames; a worker
	// with a frame for the vEth then waits (cond) until the drain ends, so
	// the drain finishes even under a sustained flood and nothing
	// overtakes a held frame. A worker also waits while the queue is full:
	// a hold applies backpressure, as the lossless cables do, instead of
	// dropping. Guarded by mu.
	draining bool
	cond     *sync.Cond // on mu; broadcast when draining ends, room appears or the hold ends
}

func (q *holdQueue) wait() {
	if q.cond == nil {
		q.cond = sync.NewCond(&q.mu)
	}
	q.cond.Wait()
}

func (q *holdQueue) wake() {
	if q.cond != nil {
		q.cond.Broadcast()
	}
}

// snapState returns what a snapshot copies into vethView.
func (q *holdQueue) snapState() (bool, uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.on, q.gen
}

// state returns the flag and the number of frames held.
func (q *holdQueue) state() (bool, int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.on, len(q.frames)
}

// holdFrame is stage 9 towards a vEth whose snapshot view is held.
func (w *worker) holdFrame(b *link.Buf, dst *vethView, svif, vid uint16, inner int) {
	q := &dst.v.hold
	q.mu.Lock()
	for q.on && q.gen == dst.holdGen && (q.draining || len(q.frames) >= w.fi.cfg.HoldLimit) {
		q.wait() // backpressure: see holdQueue.draining
	}
	if q.on && q.gen == dst.holdGen {
		q.frames = append(q.frames, heldFrame{b: b, in: w.in, svif: svif, vid: vid, inner: inner})
		q.mu.Unlock()
		return
	}
	q.mu.Unlock()
	// The hold of dst ended during this batch, after the held frames went
	// out (ReleaseVEth) or were dropped (DeleteVEth); another may have
	// begun, whose HoldVEth is waiting for this batch. w.snap may predate
	// a rebind made during the ended hold: the current snapshot has the
	// binding (no rebind can follow until the new hold's grace ends).
	cur := w.fi.snap.Load().vethAt(dst.v.dst())
	if cur == nil {
		w.drop(b, nil, DropVEthDeleted)
		return
	}
	w.grow(cur.port.idx + 1) // cur.port may be newer than w.snap
	w.egressVEth(b, cur, svif, vid, inner)
}

// endGrace wakes graceWait; a worker calls it after a batch when someone
// waits.
func (f *FI) endGrace() {
	f.graceMu.Lock()
	f.graceCond.Broadcast()
	f.graceMu.Unlock()
}

// graceWait returns once every port of ports that was in a batch when it
// was called has finished that batch. A worker marks a batch by making
// port.batchSeq odd before it loads the snapshot and even after the
// batch's Send; so a batch that graceWait does not wait for either ended
// or loaded a snapshot published before the call.
func (f *FI) graceWait(ports []*port) {
	// Announce first: a worker that ends a batch after the loads below saw
	// it busy also sees graceWaiters > 0 and broadcasts.
	f.graceWaiters.Add(1)
	defer f.graceWaiters.Add(-1)
	seq := make([]uint64, len(ports))
	for i, p := range ports {
		seq[i] = p.batchSeq.Load()
	}
	f.graceMu.Lock()
	defer f.graceMu.Unlock()
	for i, p := range ports {
		// The check and Wait are atomic under graceMu, and the worker
		// takes graceMu to broadcast: no wake-up is lost.
		for seq[i]&1 == 1 && p.batchSeq.Load() == seq[i] {
			f.graceCond.Wait()
		}
	}
}

// HoldVEth makes the FI hold every frame whose egress is vEth id, unicast
// or flood copy, instead of sending it down the vEth's server port: up to
// Config.HoldLimit frames, in arrival order; beyond, frames are dropped as
// hold-overflow. It returns once no frame for the vEth can still be on its
// way to the port, except those already handed to the port's Send (it
// waits for the batches in progress, their Send included), with the count
// barrier in the ticket.
//
// Holding a held vEth is not an error: the hold goes on, and the ticket is
// the same as the first one's since nothing egresses while held. The hold
// lasts until ReleaseVEth or DeleteVEth; RebindVEth keeps it. HoldVEth
// must not be called from a VifProgrammer method or a port reader.
func (f *FI) HoldVEth(id uint32) (HoldTicket, error) {
	f.holdMu.Lock()
	defer f.holdMu.Unlock()
	f.mu.Lock()
	if f.state == stateClosed {
		f.mu.Unlock()
		return HoldTicket{}, ErrClosed
	}
	v := f.veths[id]
	if v == nil {
		f.mu.Unlock()
		return HoldTicket{}, fmt.Errorf("%w: Veth%d", ErrUnknownVEth, id)
	}
	q := &v.hold
	q.mu.Lock()
	was := q.on
	if !was {
		q.on = true // before the snapshot: a held view finds on set
		q.gen++
	}
	q.mu.Unlock()
	if !was {
		f.rebuildLocked()
		f.log.Info("vEth held", "veth", v.name, "port", v.port.name, "vif", v.vif)
	}
	ports := f.snap.Load().ports
	f.mu.Unlock()
	if !was {
		// Only a new hold needs the grace period; an existing one already
		// had it (and a reader may be waiting on the full hold queue).
		f.graceWait(ports)
	}
	return HoldTicket{EgressFrames: v.ctr.egressFrames.Load()}, nil
}

// ReleaseVEth sends the frames held for vEth id, in order, to the vEth's
// binding at the time of the release (RebindVEth may have moved it): each
// gets the VN-Tag of that binding (dvif; svif and looped when it returns
// down the server port it came from) after the VLAN is checked against the
// vEth's profile again. Frames that arrive meanwhile queue behind them.
// Then forwarding to the vEth resumes. Releasing a vEth that is not held
// does nothing.
func (f *FI) ReleaseVEth(id uint32) error {
	f.holdMu.Lock() // no rebind or other hold change until the drain ends
	defer f.holdMu.Unlock()
	f.mu.Lock()
	if f.state == stateClosed {
		f.mu.Unlock()
		return ErrClosed
	}
	v := f.veths[id]
	f.mu.Unlock()
	if v == nil {
		return fmt.Errorf("%w: Veth%d", ErrUnknownVEth, id)
	}
	q := &v.hold
	var batch []heldFrame
	sent := 0
	q.mu.Lock()
	q.draining = q.on
	q.mu.Unlock()
	for {
		q.mu.Lock()
		if !q.on { // not held, or deleted during the drain
			q.draining = false
			q.wake()
			q.mu.Unlock()
			return nil
		}
		if len(q.frames) == 0 {
			q.on, q.draining = false, false
			q.frames = nil // a long hold's array goes back to the GC
			q.wake()
			q.mu.Unlock()
			break
		}
		batch, q.frames = q.frames, batch[:0]
		q.mu.Unlock()
		f.sendHeld(v, batch)
		sent += len(batch)
		clear(batch)
	}
	f.mu.Lock()
	f.rebuildLocked() // the fast path again; stale held views see on clear
	f.log.Info("vEth released", "veth", v.name, "port", v.port.name, "vif", v.vif, "frames", sent)
	f.mu.Unlock()
	return nil
}

// sendHeld runs the rest of stage 9 for held frames of v against the
// current snapshot and sends them, a port batch at a time.
func (f *FI) sendHeld(v *veth, held []heldFrame) {
	dst := f.snap.Load().vethAt(v.dst())
	if dst == nil {
		for _, h := range held {
			f.dropHeld(h, nil, DropVEthDeleted)
		}
		return
	}
	p := dst.port
	out := make([]*link.Buf, 0, max(1, p.link.BatchSize()))
	var bytes uint64
	for _, h := range held {
		b, ok := vethEgress(h.b, dst, h.in, h.svif, h.vid, h.inner)
		if !ok {
			f.dropHeld(h, v, DropEgressVLANNotAllowed)
			continue
		}
		out = append(out, b)
		bytes += uint64(b.Len)
		if len(out) == cap(out) {
			f.send(p, out, bytes)
			clear(out)
			out, bytes = out[:0], 0
		}
	}
	if len(out) > 0 {
		f.send(p, out, bytes)
	}
}

// dropHeld releases a held frame and counts it under r: on v if not nil
// (else as unattributed), FI-wide and on its ingress port.
func (f *FI) dropHeld(h heldFrame, v *veth, r DropReason) {
	h.b.Release()
	if v != nil {
		v.ctr.drops[r].Add(1)
	} else {
		f.unattributed[r].Add(1)
	}
	f.drops[r].Add(1)
	h.in.ctr.inDrops.Add(1)
}

// dropHoldLocked ends v's hold as v is deleted: the frames it held are
// dropped as veth-deleted. It returns how many.
func (f *FI) dropHoldLocked(v *veth) int {
	q := &v.hold
	q.mu.Lock()
	held := q.frames
	q.on, q.frames, q.draining = false, nil, false
	q.wake() // workers waiting to hold frames for it now drop them
	q.mu.Unlock()
	for _, h := range held {
		f.dropHeld(h, nil, DropVEthDeleted)
	}
	return len(held)
}
