package vmxnet3

import "sync"

// irqState is the device's per-vector interrupt state (spec §5.2): a vector
// is masked or not, and a vector that fires while masked stays pending and
// is delivered on unmask.
type irqState struct {
	mu       sync.Mutex
	autoMask bool           // guarded by mu
	masked   [MaxIntrs]bool // guarded by mu
	pending  [MaxIntrs]bool // guarded by mu
	raised   [MaxIntrs]uint64
	delivers [MaxIntrs]uint64
}

func (s *irqState) maskAll() {
	s.mu.Lock()
	for i := range s.masked {
		s.masked[i] = true
	}
	s.mu.Unlock()
}

func (s *irqState) configure(autoMask bool, _ int) {
	s.mu.Lock()
	s.autoMask = autoMask
	s.mu.Unlock()
}

func (s *irqState) readMask(v int) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.masked[v] {
		return 1
	}
	return 0
}

func (s *irqState) mask(v int) {
	s.mu.Lock()
	s.masked[v] = true
	s.mu.Unlock()
}

// unmask clears the mask and delivers a pending interrupt.
func (s *irqState) unmask(v int, sink InterruptSink) {
	s.mu.Lock()
	s.masked[v] = false
	deliver := s.pending[v]
	if deliver {
		s.pending[v] = false
		s.delivers[v]++
		if s.autoMask {
			s.masked[v] = true
		}
	}
	s.mu.Unlock()
	if deliver && sink != nil {
		sink.Interrupt(v)
	}
}

// raise fires vector v: delivered now unless masked, then pending.
func (s *irqState) raise(v int, sink InterruptSink) {
	if v < 0 || v >= MaxIntrs {
		return
	}
	s.mu.Lock()
	s.raised[v]++
	if s.masked[v] {
		s.pending[v] = true
		s.mu.Unlock()
		return
	}
	if s.autoMask {
		s.masked[v] = true
	}
	s.delivers[v]++
	s.mu.Unlock()
	if sink != nil {
		sink.Interrupt(v)
	}
}

// ackINTx serves an ICR read. This model signals MSI-X, so the INTx line is
// never asserted.
func (s *irqState) ackINTx() uint32 { return 0 }

func (s *irqState) clearEvents() {
	s.mu.Lock()
	for i := range s.pending {
		s.pending[i] = false
	}
	s.mu.Unlock()
}

// IRQCounts reports, per vector, how often the device raised it and how
// often it was delivered (the difference was coalesced by masking).
func (d *Device) IRQCounts() (raised, delivered [MaxIntrs]uint64) {
	d.irq.mu.Lock()
	defer d.irq.mu.Unlock()
	return d.irq.raised, d.irq.delivers
}

// raiseEvent ORs bits into DriverShared.ecr, then raises the event vector
// (spec §5.4).
func (d *Device) raiseEvent(bits uint32) {
	d.ctl.mu.Lock()
	ds := d.ctl.dsPA
	vec := int(d.ctl.cfg.EventIntrIdx)
	if ds != 0 {
		old := d.mem.LoadU32Acquire(ds + DSECR)
		// Publish: the driver reads ecr with an acquire load.
		d.mem.StoreU32Release(ds+DSECR, old|bits)
	}
	d.ctl.mu.Unlock()
	if ds != 0 {
		d.irq.raise(vec, d.sink)
	}
}

// ackEvents serves an ECR write: write-1-to-clear on DriverShared.ecr.
func (d *Device) ackEvents(bits uint32) {
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	ds := d.ctl.dsPA
	if ds == 0 {
		return
	}
	old := d.mem.LoadU32Acquire(ds + DSECR)
	d.mem.StoreU32Release(ds+DSECR, old&^bits)
}
