package vmxnet3test

import (
	"errors"
	"fmt"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vmxnet3"
)

// Guest is a minimal guest driver for tests. Its ring positions are kept in
// vmxnet3.Ring values (the ring code the device uses too, STYLE item 4);
// everything the device sees is in guest memory.
//
// Ordering: every descriptor is written with plain stores and published by
// a release store of the word holding its gen bit (dw2 of a TxDesc/RxDesc);
// completions are read by an acquire load of dw3 (their gen) before their
// other words (spec §4.6).
type Guest struct {
	M    *mem.Memory // guest memory; immutable
	BAR0 vmxnet3.BAR // PT registers; immutable
	BAR1 vmxnet3.BAR // VD registers; immutable

	cfg Config // immutable
	l   Layout // immutable
	tx  []txState
	rx  []rxState
}

type txPkt struct {
	eop   uint32 // index of the packet's last descriptor
	ndesc uint32 // descriptors it occupies
	cq    bool   // a completion was requested
}

type txState struct {
	ring  vmxnet3.Ring // producer side: next slot to fill, driver gen
	comp  vmxnet3.Ring // consumer side of the completion ring
	outst uint32       // descriptors posted and not yet completed
	pkts  []txPkt      // FIFO of posted packets (circular, cap = ring size)
	head  int          // index of the oldest packet in pkts
	npkt  int          // packets in the FIFO
}

type rxSlot struct {
	addr uint64
	len  uint32
}

type rxState struct {
	fill   [2]vmxnet3.Ring // producer side of rings 0 and 1
	cons   [2]uint32       // next slot the device is expected to return
	outst  [2]uint32       // buffers posted and not yet returned
	slot   [2][]rxSlot     // what was posted in each slot
	refill [2]uint32       // returned slots awaiting a refill
	comp   vmxnet3.Ring    // consumer side of the completion ring
	asm    []byte          // frame being assembled (ReceiveFrames)
	inPkt  bool            // between a sop and its eop
	pktErr bool            // the frame being assembled is dropped
}

// Errors.
var (
	ErrRingFull      = errors.New("vmxnet3test: tx ring full")
	ErrTooLong       = errors.New("vmxnet3test: segment longer than a tx buffer")
	ErrActivate      = errors.New("vmxnet3test: ACTIVATE_DEV failed")
	ErrBadCompletion = errors.New("vmxnet3test: completion does not match what was posted")
	ErrNoRoom        = errors.New("vmxnet3test: layout does not fit in guest memory")
)

// New returns a guest over m driving a device through bar0 and bar1. It
// touches nothing until Prepare or Up.
func New(m *mem.Memory, bar0, bar1 vmxnet3.BAR, cfg Config) (*Guest, error) {
	cfg = cfg.withDefaults()
	l := cfg.Layout()
	if l.End > m.Size() {
		return nil, fmt.Errorf("%w: needs %#x bytes, memory has %#x", ErrNoRoom, l.End, m.Size())
	}
	if cfg.TxBufSize > vmxnet3.MaxTxBufLen {
		return nil, fmt.Errorf("vmxnet3test: tx buffer size %d > %d", cfg.TxBufSize, vmxnet3.MaxTxBufLen)
	}
	g := &Guest{M: m, BAR0: bar0, BAR1: bar1, cfg: cfg, l: l}
	g.tx = make([]txState, cfg.NumTxQueues)
	for q := range g.tx {
		g.tx[q].pkts = make([]txPkt, cfg.TxRingSize)
	}
	g.rx = make([]rxState, cfg.NumRxQueues)
	for q := range g.rx {
		g.rx[q].slot[0] = make([]rxSlot, cfg.RxRingSize0)
		g.rx[q].slot[1] = make([]rxSlot, cfg.RxRingSize1)
		g.rx[q].asm = make([]byte, 0, 16384)
	}
	g.resetState()
	return g, nil
}

// Config returns the configuration with defaults filled in.
func (g *Guest) Config() Config { return g.cfg }

// Layout returns where the guest keeps everything.
func (g *Guest) Layout() Layout { return g.l }

// QueueDescPA returns the PA of tx queue q's (tx) or rx queue q's
// descriptor in the queue table (spec §3.7).
func (g *Guest) QueueDescPA(tx bool, q int) uint64 {
	if tx {
		return g.l.QueueDesc + uint64(q)*vmxnet3.QueueDescSize
	}
	return g.l.QueueDesc + uint64(g.cfg.NumTxQueues+q)*vmxnet3.QueueDescSize
}

// TxRing returns the driver's position on tx queue q's ring.
func (g *Guest) TxRing(q int) vmxnet3.Ring { return g.tx[q].ring }

// RxRing returns the driver's fill position on ring r of rx queue q.
func (g *Guest) RxRing(q, r int) vmxnet3.Ring { return g.rx[q].fill[r] }

// TxOutstanding returns the descriptors posted on tx queue q and not yet
// completed.
func (g *Guest) TxOutstanding(q int) int { return int(g.tx[q].outst) }

// resetState puts every driver-side index at 0 with gen 1.
func (g *Guest) resetState() {
	for q := range g.tx {
		t := &g.tx[q]
		t.ring = vmxnet3.Ring{Base: g.l.Tx[q].Ring, Size: g.cfg.TxRingSize}
		t.comp = vmxnet3.Ring{Base: g.l.Tx[q].Comp, Size: g.cfg.TxCompSize}
		t.ring.Reset()
		t.comp.Reset()
		t.outst, t.head, t.npkt = 0, 0, 0
	}
	for q := range g.rx {
		r := &g.rx[q]
		r.fill[0] = vmxnet3.Ring{Base: g.l.Rx[q].Ring[0], Size: g.cfg.RxRingSize0}
		r.fill[1] = vmxnet3.Ring{Base: g.l.Rx[q].Ring[1], Size: g.cfg.RxRingSize1}
		r.comp = vmxnet3.Ring{Base: g.l.Rx[q].Comp, Size: g.cfg.RxCompSize}
		r.fill[0].Reset()
		r.fill[1].Reset()
		r.comp.Reset()
		r.cons = [2]uint32{}
		r.outst = [2]uint32{}
		r.refill = [2]uint32{}
		r.asm = r.asm[:0]
		r.inPkt, r.pktErr = false, false
	}
}

// ---- bring-up (spec §2.4) ----

// Prepare does open steps 1–2: zero every ring, reset the driver's indices
// to 0 with gen 1, write DriverShared and the queue table, and (unless
// NoFill) fill both rx rings. A test may corrupt any of it before Activate.
func (g *Guest) Prepare() {
	g.resetState()
	m := g.M
	for q := range g.l.Tx {
		_ = m.Zero(g.l.Tx[q].Ring, uint64(g.cfg.TxRingSize)*vmxnet3.DescSize)
		_ = m.Zero(g.l.Tx[q].Comp, uint64(g.cfg.TxCompSize)*vmxnet3.DescSize)
	}
	for q := range g.l.Rx {
		_ = m.Zero(g.l.Rx[q].Ring[0], uint64(g.cfg.RxRingSize0)*vmxnet3.DescSize)
		_ = m.Zero(g.l.Rx[q].Ring[1], uint64(g.cfg.RxRingSize1)*vmxnet3.DescSize)
		_ = m.Zero(g.l.Rx[q].Comp, uint64(g.cfg.RxCompSize)*vmxnet3.DescSize)
	}
	g.WriteShared()
	if !g.cfg.NoFill {
		for q := range g.rx {
			g.PostRxRing(q, 0, int(g.cfg.RxRingSize0))
			g.PostRxRing(q, 1, int(g.cfg.RxRingSize1))
		}
	}
}

// WriteShared writes DriverShared (spec §3.1–3.4) and the queue descriptor
// table (spec §3.7) from the configuration.
func (g *Guest) WriteShared() {
	m, c := g.M, g.cfg
	ds := g.l.Shared
	_ = m.Zero(ds, mem.PageSize)
	m.PutU32(ds+vmxnet3.DSMagic, vmxnet3.Magic)
	m.PutU32(ds+vmxnet3.DSDriverVersion, 0x01000000)
	m.PutU32(ds+vmxnet3.DSGOS, vmxnet3.GOSBits64|vmxnet3.GOSTypeLinux<<vmxnet3.GOSShiftType)
	m.PutU32(ds+vmxnet3.DSRevSpt, 1)
	m.PutU32(ds+vmxnet3.DSUPTVerSpt, 1)
	m.PutU64(ds+vmxnet3.DSQueueDescPA, g.l.QueueDesc)
	m.PutU32(ds+vmxnet3.DSQueueDescLen, uint32(c.NumTxQueues+c.NumRxQueues)*vmxnet3.QueueDescSize)
	m.PutU32(ds+vmxnet3.DSMTU, c.MTU)
	m.PutU16(ds+vmxnet3.DSMaxNumRxSG, c.MaxNumRxSG)
	m.PutU8(ds+vmxnet3.DSNumTxQueues, uint8(c.NumTxQueues))
	m.PutU8(ds+vmxnet3.DSNumRxQueues, uint8(c.NumRxQueues))
	if c.AutoMask {
		m.PutU8(ds+vmxnet3.DSAutoMask, 1)
	}
	m.PutU8(ds+vmxnet3.DSNumIntrs, uint8(c.EventVector()+1))
	m.PutU8(ds+vmxnet3.DSEventIntrIdx, uint8(c.EventVector()))
	m.PutU32(ds+vmxnet3.DSIntrCtrl, vmxnet3.IntrCtrlDisableAll)
	m.PutU32(ds+vmxnet3.DSRxMode, c.RxMode)
	g.writeMCast(c.MCast)
	g.writeVLANs(c.VLANs)

	_ = m.Zero(g.l.QueueDesc, uint64(c.NumTxQueues+c.NumRxQueues)*vmxnet3.QueueDescSize)
	for q, t := range g.l.Tx {
		pa := g.QueueDescPA(true, q)
		m.PutU64(pa+vmxnet3.TQTxRingBasePA, t.Ring)
		m.PutU64(pa+vmxnet3.TQCompRingBasePA, t.Comp)
		m.PutU32(pa+vmxnet3.TQTxRingSize, c.TxRingSize)
		m.PutU32(pa+vmxnet3.TQCompRingSize, c.TxCompSize)
		m.PutU8(pa+vmxnet3.TQIntrIdx, uint8(c.TxVector(q)))
	}
	for q, r := range g.l.Rx {
		pa := g.QueueDescPA(false, q)
		m.PutU64(pa+vmxnet3.RQRxRingBasePA0, r.Ring[0])
		m.PutU64(pa+vmxnet3.RQRxRingBasePA1, r.Ring[1])
		m.PutU64(pa+vmxnet3.RQCompRingBasePA, r.Comp)
		m.PutU32(pa+vmxnet3.RQRxRingSize0, c.RxRingSize0)
		m.PutU32(pa+vmxnet3.RQRxRingSize1, c.RxRingSize1)
		m.PutU32(pa+vmxnet3.RQCompRingSize, c.RxCompSize)
		m.PutU8(pa+vmxnet3.RQIntrIdx, uint8(c.RxVector(q)))
	}
}

func (g *Guest) writeMCast(macs [][6]byte) {
	ds := g.l.Shared
	for i, mac := range macs {
		_ = g.M.Write(g.l.MFTable+uint64(i)*6, mac[:])
	}
	g.M.PutU16(ds+vmxnet3.DSMFTableLen, uint16(6*len(macs)))
	g.M.PutU64(ds+vmxnet3.DSMFTablePA, g.l.MFTable)
}

func (g *Guest) writeVLANs(vids []uint16) {
	var t [vmxnet3.VLANTableWords]uint32
	for _, v := range vids {
		v &= 0xFFF
		t[v/32] |= 1 << (v % 32)
	}
	for i, w := range t {
		g.M.PutU32(g.l.Shared+vmxnet3.DSVFTable+uint64(i)*4, w)
	}
}

// Activate writes the DriverShared PA to DSAL/DSAH, issues ACTIVATE_DEV and
// returns what CMD reads back: 0 on success (spec §2.1).
func (g *Guest) Activate() uint32 {
	g.BAR1.Write32(vmxnet3.RegDSAL, uint32(g.l.Shared))
	g.BAR1.Write32(vmxnet3.RegDSAH, uint32(g.l.Shared>>32))
	return g.Command(vmxnet3.CmdActivateDev)
}

// Start does open step 4: write both rx producers of every queue, program
// the filters, and unmask the vectors unless the configuration says Masked.
func (g *Guest) Start() {
	for q := range g.rx {
		g.KickRx(q)
	}
	g.Command(vmxnet3.CmdUpdateRxMode)
	g.Command(vmxnet3.CmdUpdateVLANFilters)
	g.Command(vmxnet3.CmdUpdateMACFilters)
	if !g.cfg.Masked {
		g.UnmaskAll()
	}
}

// Up is Prepare, Activate and Start.
func (g *Guest) Up() error {
	g.Prepare()
	if r := g.Activate(); r != 0 {
		return fmt.Errorf("%w: CMD read %#x", ErrActivate, r)
	}
	g.Start()
	return nil
}

// Reset issues QUIESCE_DEV and RESET_DEV, as a driver does before reopening
// after a queue error (spec §2.4).
func (g *Guest) Reset() {
	g.Command(vmxnet3.CmdQuiesceDev)
	g.Command(vmxnet3.CmdResetDev)
}

// Command writes cmd to CMD and returns the value CMD reads back.
func (g *Guest) Command(cmd uint32) uint32 {
	g.BAR1.Write32(vmxnet3.RegCMD, cmd)
	return g.BAR1.Read32(vmxnet3.RegCMD)
}

// SetMAC programs the current MAC: MACL first, then MACH (spec §1.4).
func (g *Guest) SetMAC(mac [6]byte) {
	lo, hi := vmxnet3.MACToRegs(mac)
	g.BAR1.Write32(vmxnet3.RegMACL, lo)
	g.BAR1.Write32(vmxnet3.RegMACH, hi)
}

// SetRxMode writes rxMode and issues UPDATE_RX_MODE.
func (g *Guest) SetRxMode(mode uint32) {
	g.M.PutU32(g.l.Shared+vmxnet3.DSRxMode, mode)
	g.Command(vmxnet3.CmdUpdateRxMode)
}

// SetVLANs rewrites vfTable with exactly vids and issues UPDATE_VLAN_FILTERS.
func (g *Guest) SetVLANs(vids ...uint16) {
	g.writeVLANs(vids)
	g.Command(vmxnet3.CmdUpdateVLANFilters)
}

// SetMulticast rewrites the multicast table and issues UPDATE_MAC_FILTERS.
func (g *Guest) SetMulticast(macs ...[6]byte) {
	g.writeMCast(macs)
	g.Command(vmxnet3.CmdUpdateMACFilters)
}

// Mask masks vector v (IMR = 1).
func (g *Guest) Mask(v int) { g.BAR0.Write32(vmxnet3.IMR(v), 1) }

// Unmask unmasks vector v (IMR = 0).
func (g *Guest) Unmask(v int) { g.BAR0.Write32(vmxnet3.IMR(v), 0) }

// UnmaskAll unmasks every vector in use and clears DISABLE_ALL.
func (g *Guest) UnmaskAll() {
	g.M.PutU32(g.l.Shared+vmxnet3.DSIntrCtrl, 0)
	for v := 0; v <= g.cfg.EventVector(); v++ {
		g.Unmask(v)
	}
}

// ECR returns the pending events in DriverShared.ecr.
func (g *Guest) ECR() uint32 { return g.M.LoadU32Acquire(g.l.Shared + vmxnet3.DSECR) }

// AckEvents acknowledges every pending event through the ECR register and
// returns them (spec §5.4).
func (g *Guest) AckEvents() uint32 {
	e := g.ECR()
	if e != 0 {
		g.BAR1.Write32(vmxnet3.RegECR, e)
	}
	return e
}

// QueueStatus issues GET_QUEUE_STATUS and reads status.stopped and
// status.error of tx queue q (tx) or rx queue q from the queue table.
func (g *Guest) QueueStatus(tx bool, q int) (stopped bool, code uint32) {
	g.Command(vmxnet3.CmdGetQueueStatus)
	pa := g.QueueDescPA(tx, q)
	return g.M.U8(pa+vmxnet3.QStatusStopped) != 0, g.M.U32(pa + vmxnet3.QStatusError)
}

// Stats issues GET_STATS and reads the UPT1 counters of a queue (spec §3.7).
func (g *Guest) Stats(tx bool, q int) (s [vmxnet3.NumUPT1Stats]uint64) {
	g.Command(vmxnet3.CmdGetStats)
	pa := g.QueueDescPA(tx, q) + vmxnet3.QStats
	for i := range s {
		s[i] = g.M.U64(pa + uint64(i)*8)
	}
	return s
}
