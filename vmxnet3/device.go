package vmxnet3

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/vmfex/vmfex/guest/mem"
)

// Device is the VMXNET3 device model: the register file of BAR0 and BAR1,
// the commands, the configuration latched from DriverShared, the tx and rx
// engines that move frames between guest memory and the caller, interrupts
// and events. It is the personality a VIC dynamic vNIC presents to a guest
// (direct mode) and the one the hypervisor emulates (emulated mode); what
// differs between the two is who calls it and where frames go, not the
// device semantics.
//
// Lock order: ctl, then tx[q].mu, then rx[q].mu, then irq.mu. ProcessTx holds
// one tx queue lock for a whole batch (gather, send, complete), so a quiesce
// waits for a batch in flight and never sees a packet half sent.
//
// Concurrency: BAR reads and writes, ProcessTx and Deliver may be called from
// different goroutines at once.
type Device struct {
	mem  *mem.Memory   // guest memory; immutable
	sink InterruptSink // where delivered interrupts go; immutable

	ctl struct {
		mu         sync.Mutex
		vrrs, uvrs uint32 // selected revision and UPT version
		dsal       uint32 // latched low half of the DriverShared PA
		dsalValid  bool
		dsPA       uint64 // DriverShared PA, 0 = none
		lastCmd    uint32
		macl       uint32 // latched MACL
		mac        [6]byte
		permMAC    [6]byte
		linkUp     bool
		cfg        Config // latched at ACTIVATE / UPDATE_*
		activateOK bool
	}
	active     atomic.Bool   // rings are live (ACTIVATE succeeded, not quiesced or reset)
	mtu        atomic.Uint32 // ctl.cfg.MTU for the tx engine, which must not take ctl; stored wherever ctl.cfg is
	frozen     atomic.Bool   // a hand-off is in progress: engines idle, frames held
	txq        [MaxTxQueues]txQueue
	rxq        [MaxRxQueues]rxQueue
	irq        irqState
	drops      DropCounters
	onDoorbell func(kind DoorbellKind, q int) // optional; immutable after New
}

// Config is the device configuration latched from DriverShared at ACTIVATE
// and by the UPDATE_* commands (spec §2.5, §7.3 item 6). It is plain data.
type Config struct {
	NumTxQueues  int
	NumRxQueues  int
	MTU          uint32
	MaxNumRxSG   uint16
	UPTFeatures  uint64
	GOS          uint32
	AutoMask     bool
	NumIntrs     uint8
	EventIntrIdx uint8
	QueueDescPA  uint64
	RxMode       uint32
	VLANTable    [VLANTableWords]uint32
	MCastList    [][6]byte
}

// DoorbellKind says which BAR0 doorbell the guest wrote.
type DoorbellKind uint8

// Doorbell kinds.
const (
	DoorbellTx DoorbellKind = iota + 1
	DoorbellRx
)

type txQueue struct {
	mu      sync.Mutex
	descPA  uint64 // TxQueueDesc PA
	ring    Ring   // consumer side of the tx ring
	comp    Ring   // producer side of the tx completion ring
	intrIdx uint8
	stats   [NumUPT1Stats]uint64 // guarded by mu
	stopped bool
	err     uint32
	// scratch for one batch; guarded by mu
	eop []uint32
	cq  []bool
	// need is the buffers the packet at the head needs, as the last
	// ProcessTx found (TxBufsNeeded); guarded by mu.
	need int
	// tso gathers one TSO packet (MaxTSOLen), allocated on first use;
	// guarded by mu, holds nothing between calls.
	tso []byte
}

type rxQueue struct {
	mu      sync.Mutex
	descPA  uint64
	ring    [2]Ring // consumer side of rx rings 0 and 1
	comp    Ring    // producer side of the rx completion ring
	intrIdx uint8
	stats   [NumUPT1Stats]uint64
	prod    [2]uint32 // last RXPROD/RXPROD2 values written by the driver
	stopped bool
	err     uint32
	space   chan struct{} // signalled when the driver posts buffers
	// pending[phead:] are frames held for the guest, oldest first (spec
	// §7.3 item 11). Guarded by mu.
	pending [][]byte
	phead   int
}

// framePool recycles the copies of held frames.
var framePool = sync.Pool{New: func() any { b := make([]byte, 0, MaxMTU+64); return &b }}

func (rq *rxQueue) npending() int { return len(rq.pending) - rq.phead }

// hold appends a copy of f to the pending frames.
func (rq *rxQueue) hold(f []byte) {
	bp := framePool.Get().(*[]byte)
	*bp = append((*bp)[:0], f...)
	rq.pending = append(rq.pending, *bp)
}

// pop releases the oldest pending frame.
func (rq *rxQueue) pop() {
	b := rq.pending[rq.phead]
	rq.pending[rq.phead] = nil
	rq.phead++
	if rq.phead == len(rq.pending) {
		rq.pending, rq.phead = rq.pending[:0], 0
	}
	if cap(b) >= MaxMTU+64 {
		framePool.Put(&b)
	}
}

// clearPending drops every held frame.
func (rq *rxQueue) clearPending() {
	for rq.npending() > 0 {
		rq.pop()
	}
}

// DropCounters count frames the device did not pass on, by reason.
type DropCounters struct {
	RxFiltered    atomic.Uint64 // rx mode / MAC filter
	RxVLANFilter  atomic.Uint64 // VLAN table
	RxInactive    atomic.Uint64 // device not active or link down
	RxTooLong     atomic.Uint64 // longer than the MTU allows
	RxQueueError  atomic.Uint64 // rx queue stopped on an error
	TxOversize    atomic.Uint64 // gathered packet larger than the caller's buffer
	TxQueueError  atomic.Uint64 // packets abandoned when a tx queue stopped
	TxUnsupported atomic.Uint64 // offload not supported, or its fields contradict the packet's headers
}

// Errors.
var (
	ErrNotActive = errors.New("vmxnet3: device not active")
	ErrQueue     = errors.New("vmxnet3: no such queue")
)

// New returns a device in the post-reset state over guest memory m,
// delivering interrupts to sink, with permanent MAC perm. onDoorbell, when
// not nil, is called (without locks held) on every TXPROD/RXPROD write, so
// an engine goroutine can be woken; it must not block.
func New(m *mem.Memory, sink InterruptSink, perm [6]byte, onDoorbell func(DoorbellKind, int)) *Device {
	d := &Device{mem: m, sink: sink, onDoorbell: onDoorbell}
	d.ctl.permMAC = perm
	d.ctl.mac = perm
	d.ctl.linkUp = true
	for i := range d.rxq {
		d.rxq[i].space = make(chan struct{}, 1)
	}
	d.irq.maskAll()
	return d
}

// Memory returns the guest memory the device DMAs into.
func (d *Device) Memory() *mem.Memory { return d.mem }

// Active reports whether the device is active (rings live).
func (d *Device) Active() bool { return d.active.Load() }

// MAC returns the current MAC.
func (d *Device) MAC() [6]byte {
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	return d.ctl.mac
}

// Config returns a copy of the latched configuration.
func (d *Device) Config() Config {
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	c := d.ctl.cfg
	c.MCastList = append([][6]byte(nil), c.MCastList...)
	return c
}

// Drops returns the device's drop counters.
func (d *Device) Drops() *DropCounters { return &d.drops }

// SetLink changes the link state and raises the LINK event when it changed.
func (d *Device) SetLink(up bool) {
	d.ctl.mu.Lock()
	changed := d.ctl.linkUp != up
	d.ctl.linkUp = up
	d.ctl.mu.Unlock()
	if changed && d.active.Load() {
		d.raiseEvent(EventLink)
	}
}

// ---- BAR0: the pass-through registers ----

// BAR0 returns the device's PT register window.
func (d *Device) BAR0() BAR { return bar0{d} }

// BAR1 returns the device's VD register window.
func (d *Device) BAR1() BAR { return bar1{d} }

type bar0 struct{ d *Device }
type bar1 struct{ d *Device }

func (b bar0) Read32(off uint32) uint32 {
	if off%RegStride == 0 && off < RegIMR+RegStride*MaxIntrs {
		return b.d.irq.readMask(int(off / RegStride))
	}
	return 0
}

func (b bar0) Write32(off uint32, v uint32) {
	d := b.d
	switch {
	case off%RegStride != 0:
		return
	case off < RegIMR+RegStride*MaxIntrs:
		// IMR writes are honoured even while inactive: a driver masks
		// everything on close, after QUIESCE.
		if v != 0 {
			d.irq.mask(int(off / RegStride))
		} else {
			d.irq.unmask(int(off/RegStride), d.sink)
		}
	case off >= RegTXPROD && off < RegTXPROD+RegStride*MaxTxQueues:
		// The value is the driver's next-to-fill index; like QEMU we scan by
		// gen bit instead of trusting it.
		if d.active.Load() && d.onDoorbell != nil {
			d.onDoorbell(DoorbellTx, int((off-RegTXPROD)/RegStride))
		}
	case off >= RegRXPROD && off < RegRXPROD+RegStride*MaxRxQueues:
		d.rxProd(int((off-RegRXPROD)/RegStride), 0, v)
	case off >= RegRXPROD2 && off < RegRXPROD2+RegStride*MaxRxQueues:
		d.rxProd(int((off-RegRXPROD2)/RegStride), 1, v)
	}
}

func (d *Device) rxProd(q, ring int, v uint32) {
	if !d.active.Load() {
		return
	}
	rq := &d.rxq[q]
	rq.mu.Lock()
	rq.prod[ring] = v
	rq.mu.Unlock()
	select {
	case rq.space <- struct{}{}:
	default:
	}
	if d.onDoorbell != nil {
		d.onDoorbell(DoorbellRx, q)
	}
}

// RxSpace returns a channel that receives a value after the driver posts rx
// buffers on queue q (an RXPROD write), so a caller holding frames can retry.
func (d *Device) RxSpace(q int) <-chan struct{} { return d.rxq[q].space }

// ---- BAR1: the virtual-device registers ----

func (b bar1) Read32(off uint32) uint32 {
	d := b.d
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	switch off {
	case RegVRRS:
		return RevisionsSupported
	case RegUVRS:
		return UPTVersion1
	case RegCMD:
		return d.cmdResultLocked(d.ctl.lastCmd)
	case RegMACL:
		lo, _ := MACToRegs(d.ctl.mac)
		return lo
	case RegMACH:
		_, hi := MACToRegs(d.ctl.mac)
		return hi
	case RegICR:
		// INTx: report and acknowledge vector 0.
		return d.irq.ackINTx()
	}
	return 0
}

func (b bar1) Write32(off uint32, v uint32) {
	d := b.d
	switch off {
	case RegVRRS:
		d.ctl.mu.Lock()
		if v&RevisionsSupported != 0 {
			d.ctl.vrrs = v & RevisionsSupported
		}
		d.ctl.mu.Unlock()
	case RegUVRS:
		d.ctl.mu.Lock()
		if v&UPTVersion1 != 0 {
			d.ctl.uvrs = UPTVersion1
		}
		d.ctl.mu.Unlock()
	case RegDSAL:
		d.ctl.mu.Lock()
		d.ctl.dsal, d.ctl.dsalValid = v, true
		d.ctl.dsPA = 0
		d.ctl.mu.Unlock()
		if v == 0 {
			d.deactivate() // spec §1.4: DSAL = 0 deactivates
		}
	case RegDSAH:
		d.ctl.mu.Lock()
		if d.ctl.dsalValid {
			d.ctl.dsPA = uint64(v)<<32 | uint64(d.ctl.dsal)
			d.ctl.dsalValid = false
		}
		d.ctl.mu.Unlock()
	case RegCMD:
		d.command(v)
	case RegMACL:
		d.ctl.mu.Lock()
		d.ctl.macl = v
		d.ctl.mu.Unlock()
	case RegMACH:
		// The new MAC takes effect on the MACH write, from the latched MACL.
		d.ctl.mu.Lock()
		d.ctl.mac = RegsToMAC(d.ctl.macl, v)
		d.ctl.mu.Unlock()
	case RegECR:
		d.ackEvents(v)
	}
}

func (d *Device) cmdResultLocked(cmd uint32) uint32 {
	switch cmd {
	case CmdActivateDev:
		if d.ctl.activateOK {
			return 0
		}
		return 1
	case CmdGetLink:
		if d.ctl.linkUp {
			return LinkSpeedMbps<<16 | LinkUp
		}
		return 0
	case CmdGetPermMACLo:
		lo, _ := MACToRegs(d.ctl.permMAC)
		return lo
	case CmdGetPermMACHi:
		_, hi := MACToRegs(d.ctl.permMAC)
		return hi
	case CmdGetDIDLo:
		return PCIDeviceVMXNET3
	case CmdGetDIDHi:
		return PCIRevision
	case CmdGetConfIntr:
		return IntrTypeMSIX | IntrMaskAuto<<2
	case CmdGetAdaptiveRing:
		return 1
	case CmdGetTxDataDescSize:
		return 128
	}
	return 0
}

// command executes a CMD write. SET commands act now; GET commands whose
// results need work (queue status, stats) do it now too, and the driver
// reads the result from CMD.
func (d *Device) command(cmd uint32) {
	switch cmd {
	case CmdActivateDev:
		d.activate()
	case CmdQuiesceDev:
		d.Quiesce()
	case CmdResetDev:
		d.reset()
	case CmdUpdateRxMode, CmdUpdateMACFilters, CmdUpdateVLANFilters, CmdUpdateFeature:
		d.updateFilters(cmd)
	case CmdGetQueueStatus:
		d.writeQueueStatus()
	case CmdGetStats:
		d.writeStats()
	}
	d.ctl.mu.Lock()
	d.ctl.lastCmd = cmd
	d.ctl.mu.Unlock()
}

// lockAll takes every queue lock (in order) so that no engine runs.
func (d *Device) lockAll() {
	for i := range d.txq {
		d.txq[i].mu.Lock()
	}
	for i := range d.rxq {
		d.rxq[i].mu.Lock()
	}
}

func (d *Device) unlockAll() {
	for i := len(d.rxq) - 1; i >= 0; i-- {
		d.rxq[i].mu.Unlock()
	}
	for i := len(d.txq) - 1; i >= 0; i-- {
		d.txq[i].mu.Unlock()
	}
}

// activate implements ACTIVATE_DEV (spec §2.5): validate DriverShared, latch
// the configuration, reset ring state, start.
func (d *Device) activate() {
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	d.lockAll()
	defer d.unlockAll()
	cfg, err := d.readConfigLocked()
	if err != nil {
		d.ctl.activateOK = false
		d.active.Store(false)
		return
	}
	d.ctl.cfg = cfg
	d.mtu.Store(cfg.MTU)
	for q := 0; q < cfg.NumTxQueues; q++ {
		tq := &d.txq[q]
		pa := cfg.QueueDescPA + uint64(q)*QueueDescSize
		tq.descPA = pa
		tq.ring = Ring{Base: d.mem.U64(pa + TQTxRingBasePA), Size: d.mem.U32(pa + TQTxRingSize)}
		tq.comp = Ring{Base: d.mem.U64(pa + TQCompRingBasePA), Size: d.mem.U32(pa + TQCompRingSize)}
		tq.ring.Reset()
		tq.comp.Reset()
		tq.intrIdx = d.mem.U8(pa + TQIntrIdx)
		tq.stats = [NumUPT1Stats]uint64{}
		tq.stopped, tq.err, tq.need = false, 0, 0
		_ = d.mem.Zero(tq.comp.Base, uint64(tq.comp.Size)*DescSize)
		// txThreshold = 1: every packet rings the doorbell, so the device
		// needs no polling timer (spec §4.7).
		d.mem.PutU32(pa+TQTxThreshold, 1)
	}
	for q := 0; q < cfg.NumRxQueues; q++ {
		rq := &d.rxq[q]
		pa := cfg.QueueDescPA + uint64(cfg.NumTxQueues+q)*QueueDescSize
		rq.descPA = pa
		rq.ring[0] = Ring{Base: d.mem.U64(pa + RQRxRingBasePA0), Size: d.mem.U32(pa + RQRxRingSize0)}
		rq.ring[1] = Ring{Base: d.mem.U64(pa + RQRxRingBasePA1), Size: d.mem.U32(pa + RQRxRingSize1)}
		rq.comp = Ring{Base: d.mem.U64(pa + RQCompRingBasePA), Size: d.mem.U32(pa + RQCompRingSize)}
		rq.ring[0].Reset()
		rq.ring[1].Reset()
		rq.comp.Reset()
		rq.intrIdx = d.mem.U8(pa + RQIntrIdx)
		rq.stats = [NumUPT1Stats]uint64{}
		rq.prod = [2]uint32{}
		rq.stopped, rq.err = false, 0
		rq.clearPending()
		_ = d.mem.Zero(rq.comp.Base, uint64(rq.comp.Size)*DescSize)
		// Ask the driver to write RXPROD on refill: it is how an adapter
		// holding frames learns that buffers arrived (spec §3.7).
		d.mem.PutU8(pa+RQUpdateRxProd, 1)
	}
	// Queues beyond the configured counts do not exist: forget rings and
	// counters an earlier activation left there, so ProcessTx finds no ring
	// (Size 0) and Stats sums only live queues.
	for q := cfg.NumTxQueues; q < MaxTxQueues; q++ {
		d.txq[q].ring, d.txq[q].comp = Ring{}, Ring{}
		d.txq[q].stats = [NumUPT1Stats]uint64{}
		d.txq[q].stopped, d.txq[q].err = false, 0
	}
	for q := cfg.NumRxQueues; q < MaxRxQueues; q++ {
		d.rxq[q].ring, d.rxq[q].comp = [2]Ring{}, Ring{}
		d.rxq[q].stats = [NumUPT1Stats]uint64{}
		d.rxq[q].stopped, d.rxq[q].err = false, 0
		d.rxq[q].clearPending()
	}
	d.irq.configure(cfg.AutoMask, int(cfg.NumIntrs))
	d.ctl.activateOK = true
	d.active.Store(true)
}

// errBadConfig is internal: ACTIVATE reads back 1.
var errBadConfig = errors.New("vmxnet3: invalid DriverShared configuration")

// readConfigLocked reads and validates the configuration (spec §2.5, §3).
func (d *Device) readConfigLocked() (Config, error) {
	var c Config
	ds := d.ctl.dsPA
	m := d.mem
	if ds == 0 || !m.InRange(ds, DriverSharedSize) || m.U32(ds+DSMagic) != Magic {
		return c, errBadConfig
	}
	c.NumTxQueues = int(m.U8(ds + DSNumTxQueues))
	c.NumRxQueues = int(m.U8(ds + DSNumRxQueues))
	if c.NumTxQueues < 1 || c.NumTxQueues > MaxTxQueues || c.NumRxQueues < 1 || c.NumRxQueues > MaxRxQueues {
		return c, errBadConfig
	}
	c.MTU = m.U32(ds + DSMTU)
	if c.MTU < MinMTU || c.MTU > MaxMTU {
		return c, errBadConfig
	}
	c.MaxNumRxSG = m.U16(ds + DSMaxNumRxSG)
	if c.MaxNumRxSG == 0 {
		c.MaxNumRxSG = 1
	}
	c.UPTFeatures = m.U64(ds + DSUPTFeatures)
	c.GOS = m.U32(ds + DSGOS)
	c.AutoMask = m.U8(ds+DSAutoMask) != 0
	c.NumIntrs = m.U8(ds + DSNumIntrs)
	c.EventIntrIdx = m.U8(ds + DSEventIntrIdx)
	if c.NumIntrs > MaxIntrs || c.EventIntrIdx >= MaxIntrs {
		return c, errBadConfig
	}
	c.QueueDescPA = m.U64(ds + DSQueueDescPA)
	n := uint64(c.NumTxQueues+c.NumRxQueues) * QueueDescSize
	if c.QueueDescPA%QueueTableAlign != 0 || !m.InRange(c.QueueDescPA, n) {
		return c, errBadConfig
	}
	for q := 0; q < c.NumTxQueues; q++ {
		pa := c.QueueDescPA + uint64(q)*QueueDescSize
		if !d.validRing(m.U64(pa+TQTxRingBasePA), m.U32(pa+TQTxRingSize), MaxTxRingSize, true) ||
			!d.validRing(m.U64(pa+TQCompRingBasePA), m.U32(pa+TQCompRingSize), MaxTxCompSize, false) ||
			m.U8(pa+TQIntrIdx) >= MaxIntrs {
			return c, errBadConfig
		}
	}
	for q := 0; q < c.NumRxQueues; q++ {
		pa := c.QueueDescPA + uint64(c.NumTxQueues+q)*QueueDescSize
		if !d.validRing(m.U64(pa+RQRxRingBasePA0), m.U32(pa+RQRxRingSize0), MaxRxRingSize, true) ||
			!d.validRing(m.U64(pa+RQRxRingBasePA1), m.U32(pa+RQRxRingSize1), MaxRxRingSize, true) ||
			!d.validRing(m.U64(pa+RQCompRingBasePA), m.U32(pa+RQCompRingSize), MaxRxCompSize, false) ||
			m.U8(pa+RQIntrIdx) >= MaxIntrs {
			return c, errBadConfig
		}
	}
	d.readFiltersLocked(&c)
	return c, nil
}

// validRing checks a ring's base alignment, size rule and placement.
func (d *Device) validRing(base uint64, size, max uint32, multipleOf32 bool) bool {
	if size == 0 || size > max || base%RingBaseAlign != 0 {
		return false
	}
	if multipleOf32 && size%RingSizeAlign != 0 {
		return false
	}
	return d.mem.InRange(base, uint64(size)*DescSize)
}

// readFiltersLocked re-reads rx mode, VLAN table and multicast list.
func (d *Device) readFiltersLocked(c *Config) {
	ds := d.ctl.dsPA
	m := d.mem
	c.RxMode = m.U32(ds + DSRxMode)
	for i := range c.VLANTable {
		c.VLANTable[i] = m.U32(ds + DSVFTable + uint64(i)*4)
	}
	c.MCastList = c.MCastList[:0]
	n := uint64(m.U16(ds + DSMFTableLen))
	pa := m.U64(ds + DSMFTablePA)
	if n >= 6 && m.InRange(pa, n) {
		for off := uint64(0); off+6 <= n; off += 6 {
			var mac [6]byte
			_ = m.Read(pa+off, mac[:])
			c.MCastList = append(c.MCastList, mac)
		}
	}
	c.UPTFeatures = m.U64(ds + DSUPTFeatures)
}

func (d *Device) updateFilters(cmd uint32) {
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	if d.ctl.dsPA == 0 {
		return
	}
	// Take the rx locks so Deliver never sees a half-updated filter.
	for i := range d.rxq {
		d.rxq[i].mu.Lock()
	}
	c := d.ctl.cfg
	var fresh Config
	d.readFiltersLocked(&fresh)
	switch cmd {
	case CmdUpdateRxMode:
		c.RxMode = fresh.RxMode
	case CmdUpdateVLANFilters:
		c.VLANTable = fresh.VLANTable
	case CmdUpdateMACFilters:
		c.MCastList = fresh.MCastList
	case CmdUpdateFeature:
		c.UPTFeatures = fresh.UPTFeatures
	}
	d.ctl.cfg = c
	for i := len(d.rxq) - 1; i >= 0; i-- {
		d.rxq[i].mu.Unlock()
	}
}

// Quiesce implements QUIESCE_DEV: stop all rx/tx processing. A tx batch in
// flight finishes first (the queue lock is held across it).
func (d *Device) Quiesce() {
	d.lockAll()
	d.active.Store(false)
	d.unlockAll()
}

func (d *Device) deactivate() { d.Quiesce() }

// reset implements RESET_DEV: inactive, shared address forgotten, vectors
// masked.
func (d *Device) reset() {
	d.ctl.mu.Lock()
	d.lockAll()
	d.active.Store(false)
	d.ctl.dsPA = 0
	d.ctl.dsalValid = false
	d.ctl.activateOK = false
	d.ctl.cfg = Config{}
	d.mtu.Store(0)
	for i := range d.txq {
		d.txq[i].stopped, d.txq[i].err = false, 0
	}
	for i := range d.rxq {
		d.rxq[i].stopped, d.rxq[i].err = false, 0
		d.rxq[i].clearPending()
	}
	d.unlockAll()
	d.ctl.mu.Unlock()
	d.irq.maskAll()
	d.irq.clearEvents()
}

// writeQueueStatus implements GET_QUEUE_STATUS.
func (d *Device) writeQueueStatus() {
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	cfg := d.ctl.cfg
	for q := 0; q < cfg.NumTxQueues; q++ {
		tq := &d.txq[q]
		tq.mu.Lock()
		d.putStatus(tq.descPA, tq.stopped, tq.err)
		tq.mu.Unlock()
	}
	for q := 0; q < cfg.NumRxQueues; q++ {
		rq := &d.rxq[q]
		rq.mu.Lock()
		d.putStatus(rq.descPA, rq.stopped, rq.err)
		rq.mu.Unlock()
	}
}

func (d *Device) putStatus(pa uint64, stopped bool, err uint32) {
	var s uint8
	if stopped {
		s = 1
	}
	d.mem.PutU8(pa+QStatusStopped, s)
	d.mem.PutU32(pa+QStatusError, err)
}

// writeStats implements GET_STATS: copy the UPT1 counters to guest memory.
func (d *Device) writeStats() {
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	cfg := d.ctl.cfg
	for q := 0; q < cfg.NumTxQueues; q++ {
		tq := &d.txq[q]
		tq.mu.Lock()
		for i, v := range tq.stats {
			d.mem.PutU64(tq.descPA+QStats+uint64(i)*8, v)
		}
		tq.mu.Unlock()
	}
	for q := 0; q < cfg.NumRxQueues; q++ {
		rq := &d.rxq[q]
		rq.mu.Lock()
		for i, v := range rq.stats {
			d.mem.PutU64(rq.descPA+QStats+uint64(i)*8, v)
		}
		rq.mu.Unlock()
	}
}

// Stats returns the UPT1 counters summed over queues.
func (d *Device) Stats() (tx, rx [NumUPT1Stats]uint64) {
	for q := range d.txq {
		d.txq[q].mu.Lock()
		for i, v := range d.txq[q].stats {
			tx[i] += v
		}
		d.txq[q].mu.Unlock()
	}
	for q := range d.rxq {
		d.rxq[q].mu.Lock()
		for i, v := range d.rxq[q].stats {
			rx[i] += v
		}
		d.rxq[q].mu.Unlock()
	}
	return
}

// QueueError returns the stop state of tx queue q or rx queue q.
func (d *Device) QueueError(tx bool, q int) (stopped bool, code uint32) {
	if tx {
		d.txq[q].mu.Lock()
		defer d.txq[q].mu.Unlock()
		return d.txq[q].stopped, d.txq[q].err
	}
	d.rxq[q].mu.Lock()
	defer d.rxq[q].mu.Unlock()
	return d.rxq[q].stopped, d.rxq[q].err
}
