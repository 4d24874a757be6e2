package vmxnet3

import (
	"errors"
	"fmt"
)

// StateVersion is the format version of State, independent of the program
// version; a loader refuses versions it does not know.
const StateVersion = 1

// State is the complete device-internal state of a VMXNET3 device, the one
// plain-data type handed between a VIC dynamic vNIC and the hypervisor's
// emulated device, and carried across hosts by live migration (spec §7.3).
// Everything else the device uses lives in guest memory and moves with it.
//
// Checklist coverage (spec §7.3): 1 VRRS/UVRS; 2 interrupt delivery is
// MSI-X-like and fully described by Vectors (this model has no PCI config
// space to carry); 3 DSPA, DSAL latch, MACL latch, LastCmd; 4 Active; 5 MAC,
// PermMAC, LinkUp; 6 Config; 7 TxQueues; 8 RxQueues (with the last
// RXPROD/RXPROD2 values); 9 Vectors (no event is ever held back from
// DriverShared.ecr, so none is pending outside guest memory); 10 UPT1
// counters; 11 RxQueues[].Pending, in order.
type State struct {
	Version uint32

	VRRS, UVRS uint32
	DSPA       uint64
	DSAL       uint32
	DSALValid  bool
	MACL       uint32
	LastCmd    uint32
	Active     bool
	ActivateOK bool

	MAC, PermMAC [6]byte
	LinkUp       bool

	Config   Config
	TxQueues []TxQueueState
	RxQueues []RxQueueState

	AutoMask bool
	Vectors  [MaxIntrs]VectorState

	Drops DropCounts
}

// TxQueueState is one tx queue's resume point (spec §7.3 item 7).
type TxQueueState struct {
	DescPA  uint64
	Ring    Ring // consumer: the SOP index of the first packet not sent
	Comp    Ring // producer
	IntrIdx uint8
	Stats   [NumUPT1Stats]uint64
	Stopped bool
	Err     uint32
}

// RxQueueState is one rx queue's resume point (spec §7.3 items 8, 11).
type RxQueueState struct {
	DescPA  uint64
	Rings   [2]Ring
	Comp    Ring
	IntrIdx uint8
	Stats   [NumUPT1Stats]uint64
	Prod    [2]uint32
	Stopped bool
	Err     uint32
	// Pending are frames received from the fabric but not yet written to
	// guest buffers, oldest first; they are delivered first after resume.
	Pending [][]byte
}

// VectorState is one interrupt vector (spec §7.3 item 9).
type VectorState struct {
	Masked, Pending bool
}

// DropCounts is a plain copy of DropCounters.
type DropCounts struct {
	RxFiltered, RxVLANFilter, RxInactive, RxTooLong, RxQueueError uint64
	TxOversize, TxQueueError, TxUnsupported                       uint64
}

// Errors of Save and Restore.
var (
	ErrNotFrozen    = errors.New("vmxnet3: device must be frozen to save its state")
	ErrStateVersion = errors.New("vmxnet3: unknown device state version")
	ErrBadState     = errors.New("vmxnet3: invalid device state")
)

func (c *DropCounters) snapshot() DropCounts {
	return DropCounts{
		RxFiltered: c.RxFiltered.Load(), RxVLANFilter: c.RxVLANFilter.Load(), RxInactive: c.RxInactive.Load(),
		RxTooLong: c.RxTooLong.Load(), RxQueueError: c.RxQueueError.Load(),
		TxOversize: c.TxOversize.Load(), TxQueueError: c.TxQueueError.Load(), TxUnsupported: c.TxUnsupported.Load(),
	}
}

func (c *DropCounters) load(s DropCounts) {
	c.RxFiltered.Store(s.RxFiltered)
	c.RxVLANFilter.Store(s.RxVLANFilter)
	c.RxInactive.Store(s.RxInactive)
	c.RxTooLong.Store(s.RxTooLong)
	c.RxQueueError.Store(s.RxQueueError)
	c.TxOversize.Store(s.TxOversize)
	c.TxQueueError.Store(s.TxQueueError)
	c.TxUnsupported.Store(s.TxUnsupported)
}

// Validate checks a state before it is loaded: a hand-off must fail whole,
// never load half (STYLE 13).
func (s *State) Validate(memSize uint64) error {
	if s.Version != StateVersion {
		return fmt.Errorf("%w: %d (this build reads %d)", ErrStateVersion, s.Version, StateVersion)
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadState}, a...)...)
	}
	if !s.Active {
		if len(s.TxQueues) != 0 || len(s.RxQueues) != 0 {
			return bad("inactive device with %d/%d queues", len(s.TxQueues), len(s.RxQueues))
		}
		return nil
	}
	c := &s.Config
	if c.NumTxQueues != len(s.TxQueues) || c.NumRxQueues != len(s.RxQueues) ||
		c.NumTxQueues < 1 || c.NumTxQueues > MaxTxQueues || c.NumRxQueues < 1 || c.NumRxQueues > MaxRxQueues {
		return bad("queue counts %d/%d with %d/%d queue states", c.NumTxQueues, c.NumRxQueues, len(s.TxQueues), len(s.RxQueues))
	}
	if c.MTU < MinMTU || c.MTU > MaxMTU {
		return bad("MTU %d", c.MTU)
	}
	if c.EventIntrIdx >= MaxIntrs {
		return bad("event vector %d", c.EventIntrIdx)
	}
	inMem := func(pa, n uint64) bool { return pa <= memSize && n <= memSize-pa }
	if s.DSPA == 0 || !inMem(s.DSPA, DriverSharedSize) {
		return bad("DriverShared at %#x", s.DSPA)
	}
	for i, q := range s.TxQueues {
		if !inMem(q.DescPA, QueueDescSize) {
			return bad("tx %d queue descriptor at %#x", i, q.DescPA)
		}
	}
	for i, q := range s.RxQueues {
		if !inMem(q.DescPA, QueueDescSize) {
			return bad("rx %d queue descriptor at %#x", i, q.DescPA)
		}
	}
	ring := func(what string, r Ring, max uint32, mult bool) error {
		if r.Size == 0 || r.Size > max || (mult && r.Size%RingSizeAlign != 0) || r.Base%RingBaseAlign != 0 ||
			r.Next >= r.Size || r.Base > memSize || uint64(r.Size)*DescSize > memSize-r.Base {
			return bad("%s ring base %#x size %d next %d", what, r.Base, r.Size, r.Next)
		}
		return nil
	}
	for i, q := range s.TxQueues {
		if err := ring(fmt.Sprintf("tx %d", i), q.Ring, MaxTxRingSize, true); err != nil {
			return err
		}
		if err := ring(fmt.Sprintf("tx comp %d", i), q.Comp, MaxTxCompSize, false); err != nil {
			return err
		}
		if q.IntrIdx >= MaxIntrs {
			return bad("tx %d vector %d", i, q.IntrIdx)
		}
	}
	for i, q := range s.RxQueues {
		for r := range q.Rings {
			if err := ring(fmt.Sprintf("rx %d ring %d", i, r), q.Rings[r], MaxRxRingSize, true); err != nil {
				return err
			}
		}
		if err := ring(fmt.Sprintf("rx comp %d", i), q.Comp, MaxRxCompSize, false); err != nil {
			return err
		}
		if q.IntrIdx >= MaxIntrs {
			return bad("rx %d vector %d", i, q.IntrIdx)
		}
		for _, f := range q.Pending {
			if len(f) < 14 || len(f) > MaxMTU+64 {
				return bad("rx %d pending frame of %d bytes", i, len(f))
			}
		}
	}
	return nil
}

// Freeze stops the device at a packet boundary for a hand-off, without
// changing anything the guest can see: a tx batch in flight finishes (its
// packets sent and completed), then ProcessTx does nothing and DeliverBatch
// holds every frame, unfiltered, in order. The vCPU must already be paused.
func (d *Device) Freeze() {
	d.lockAll()
	d.frozen.Store(true)
	d.unlockAll()
	// Wake a caller waiting for rx space: it must hand its frames to the
	// device now, where the hand-off will find them.
	for i := range d.rxq {
		select {
		case d.rxq[i].space <- struct{}{}:
		default:
		}
	}
}

// Frozen reports whether a hand-off holds the device.
func (d *Device) Frozen() bool { return d.frozen.Load() }

// Save returns the device's complete state. The device must be frozen; it
// keeps its own copy, so a hand-off that fails can Thaw it and go on.
func (d *Device) Save() (State, error) {
	if !d.frozen.Load() {
		return State{}, ErrNotFrozen
	}
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	d.lockAll()
	defer d.unlockAll()
	c := &d.ctl
	s := State{
		Version: StateVersion,
		VRRS:    c.vrrs, UVRS: c.uvrs, DSPA: c.dsPA, DSAL: c.dsal, DSALValid: c.dsalValid,
		MACL: c.macl, LastCmd: c.lastCmd, Active: d.active.Load(), ActivateOK: c.activateOK,
		MAC: c.mac, PermMAC: c.permMAC, LinkUp: c.linkUp,
		Config: c.cfg,
		Drops:  d.drops.snapshot(),
	}
	s.Config.MCastList = append([][6]byte(nil), c.cfg.MCastList...)
	if !s.Active {
		// An inactive device has no rings to deliver into: frames it held
		// cannot travel, so the state counts them as dropped.
		for q := range d.rxq {
			s.Drops.RxInactive += uint64(d.rxq[q].npending())
		}
	}
	if s.Active {
		for q := 0; q < c.cfg.NumTxQueues; q++ {
			tq := &d.txq[q]
			s.TxQueues = append(s.TxQueues, TxQueueState{
				DescPA: tq.descPA, Ring: tq.ring, Comp: tq.comp, IntrIdx: tq.intrIdx,
				Stats: tq.stats, Stopped: tq.stopped, Err: tq.err,
			})
		}
		for q := 0; q < c.cfg.NumRxQueues; q++ {
			rq := &d.rxq[q]
			rs := RxQueueState{
				DescPA: rq.descPA, Rings: rq.ring, Comp: rq.comp, IntrIdx: rq.intrIdx,
				Stats: rq.stats, Prod: rq.prod, Stopped: rq.stopped, Err: rq.err,
			}
			for _, f := range rq.pending[rq.phead:] {
				rs.Pending = append(rs.Pending, append([]byte(nil), f...))
			}
			s.RxQueues = append(s.RxQueues, rs)
		}
	}
	d.irq.mu.Lock()
	s.AutoMask = d.irq.autoMask
	for v := range s.Vectors {
		s.Vectors[v] = VectorState{Masked: d.irq.masked[v], Pending: d.irq.pending[v]}
	}
	d.irq.mu.Unlock()
	return s, nil
}

// Restore loads s into the device without running the ACTIVATE path: rings
// resume at the saved indices and generations (spec §7.4 step 5). The
// device is left frozen; the caller re-points the guest at it and calls
// Thaw. It validates s first and changes nothing if s is invalid.
func (d *Device) Restore(s State) error {
	if err := s.Validate(d.mem.Size()); err != nil {
		return err
	}
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	d.lockAll()
	defer d.unlockAll()
	d.frozen.Store(true)
	c := &d.ctl
	c.vrrs, c.uvrs, c.dsPA, c.dsal, c.dsalValid = s.VRRS, s.UVRS, s.DSPA, s.DSAL, s.DSALValid
	c.macl, c.lastCmd, c.activateOK = s.MACL, s.LastCmd, s.ActivateOK
	c.mac, c.permMAC, c.linkUp = s.MAC, s.PermMAC, s.LinkUp
	c.cfg = s.Config
	d.mtu.Store(s.Config.MTU)
	c.cfg.MCastList = append([][6]byte(nil), s.Config.MCastList...)
	for q := range d.txq {
		tq := &d.txq[q]
		// Field by field: tq.mu is held.
		tq.descPA, tq.ring, tq.comp, tq.intrIdx = 0, Ring{}, Ring{}, 0
		tq.stats, tq.stopped, tq.err, tq.need = [NumUPT1Stats]uint64{}, false, 0, 0
		if q < len(s.TxQueues) {
			x := s.TxQueues[q]
			tq.descPA, tq.ring, tq.comp, tq.intrIdx = x.DescPA, x.Ring, x.Comp, x.IntrIdx
			tq.stats, tq.stopped, tq.err = x.Stats, x.Stopped, x.Err
		}
	}
	for q := range d.rxq {
		rq := &d.rxq[q]
		rq.clearPending()
		rq.descPA, rq.ring, rq.comp, rq.intrIdx = 0, [2]Ring{}, Ring{}, 0
		rq.stats, rq.prod, rq.stopped, rq.err = [NumUPT1Stats]uint64{}, [2]uint32{}, false, 0
		if q < len(s.RxQueues) {
			x := s.RxQueues[q]
			rq.descPA, rq.ring, rq.comp, rq.intrIdx = x.DescPA, x.Rings, x.Comp, x.IntrIdx
			rq.stats, rq.prod, rq.stopped, rq.err = x.Stats, x.Prod, x.Stopped, x.Err
			for _, f := range x.Pending {
				rq.hold(f)
			}
			// An adapter that needs RXPROD must be told about refills
			// (spec §7.4 step 6).
			d.mem.PutU8(rq.descPA+RQUpdateRxProd, 1)
		}
	}
	d.irq.mu.Lock()
	d.irq.autoMask = s.AutoMask
	for v := range s.Vectors {
		d.irq.masked[v], d.irq.pending[v] = s.Vectors[v].Masked, s.Vectors[v].Pending
	}
	d.irq.mu.Unlock()
	d.drops.load(s.Drops)
	d.active.Store(s.Active)
	return nil
}

// AddPending appends frames to rx queue q's held frames, after those the
// device already holds. A hand-off uses it for frames that were in flight
// to the old device's host side when it was frozen. The device must be
// frozen.
func (d *Device) AddPending(q int, frames [][]byte) error {
	if !d.frozen.Load() {
		return ErrNotFrozen
	}
	if q < 0 || q >= MaxRxQueues {
		return ErrQueue
	}
	rq := &d.rxq[q]
	rq.mu.Lock()
	for _, f := range frames {
		rq.hold(f)
	}
	rq.mu.Unlock()
	return nil
}

// Thaw ends a hand-off: the engines run again. Held frames are delivered
// first by the next DeliverBatch (the caller should call it at once, with
// no frames, or kick its rx engine); every unmasked vector in use is raised
// once, since an interrupt may have been lost in the move and a spurious
// one is harmless (spec §7.4 step 8). The caller kicks tx.
func (d *Device) Thaw() {
	d.lockAll()
	d.frozen.Store(false)
	d.unlockAll()
	d.ctl.mu.Lock()
	n := int(d.ctl.cfg.NumIntrs)
	active := d.active.Load()
	d.ctl.mu.Unlock()
	for i := range d.rxq {
		select {
		case d.rxq[i].space <- struct{}{}:
		default:
		}
	}
	if !active {
		return
	}
	for v := 0; v < n && v < MaxIntrs; v++ {
		d.irq.mu.Lock()
		pending := d.irq.pending[v]
		masked := d.irq.masked[v]
		d.irq.mu.Unlock()
		if !masked || pending {
			d.irq.raise(v, d.sink)
		}
	}
}

// Discard empties a device whose state was handed over for good: inactive,
// nothing held, still frozen so that no engine touches guest memory.
func (d *Device) Discard() {
	d.lockAll()
	d.frozen.Store(true)
	d.active.Store(false)
	for i := range d.rxq {
		d.rxq[i].clearPending()
	}
	d.unlockAll()
}

// HeldFrames returns how many frames rx queue q holds for the guest.
func (d *Device) HeldFrames(q int) int {
	if q < 0 || q >= MaxRxQueues {
		return 0
	}
	d.rxq[q].mu.Lock()
	defer d.rxq[q].mu.Unlock()
	return d.rxq[q].npending()
}

// Snapshot returns the device's state without requiring a freeze, for
// diagnostics and show commands: it is consistent per queue, not across
// queues. Held frames are counted, not copied. A tx queue busy sending a
// batch is reported with Err = 0xFFFFFFFF.
func (d *Device) Snapshot() (State, []int) {
	d.ctl.mu.Lock()
	c := &d.ctl
	s := State{
		Version: StateVersion, VRRS: c.vrrs, UVRS: c.uvrs, DSPA: c.dsPA, LastCmd: c.lastCmd,
		Active: d.active.Load(), ActivateOK: c.activateOK, MAC: c.mac, PermMAC: c.permMAC, LinkUp: c.linkUp,
		Config: c.cfg,
	}
	d.ctl.mu.Unlock()
	var held []int
	for q := 0; q < s.Config.NumTxQueues && q < MaxTxQueues; q++ {
		tq := &d.txq[q]
		// A tx batch may be waiting for the wire with the lock held; a
		// diagnostic must not wait for it.
		if !tq.mu.TryLock() {
			s.TxQueues = append(s.TxQueues, TxQueueState{Err: ^uint32(0)})
			continue
		}
		s.TxQueues = append(s.TxQueues, TxQueueState{DescPA: tq.descPA, Ring: tq.ring, Comp: tq.comp, IntrIdx: tq.intrIdx, Stats: tq.stats, Stopped: tq.stopped, Err: tq.err})
		tq.mu.Unlock()
	}
	for q := 0; q < s.Config.NumRxQueues && q < MaxRxQueues; q++ {
		rq := &d.rxq[q]
		rq.mu.Lock()
		s.RxQueues = append(s.RxQueues, RxQueueState{DescPA: rq.descPA, Rings: rq.ring, Comp: rq.comp, IntrIdx: rq.intrIdx, Stats: rq.stats, Prod: rq.prod, Stopped: rq.stopped, Err: rq.err})
		held = append(held, rq.npending())
		rq.mu.Unlock()
	}
	d.irq.mu.Lock()
	s.AutoMask = d.irq.autoMask
	for v := range s.Vectors {
		s.Vectors[v] = VectorState{Masked: d.irq.masked[v], Pending: d.irq.pending[v]}
	}
	d.irq.mu.Unlock()
	return s, held
}
