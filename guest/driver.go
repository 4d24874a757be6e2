package guest

// The guest VMXNET3 driver. It does what a real driver does on this
// interface (spec §2.3–2.4, §4.6–4.8, §5): negotiate the revision, lay out
// DriverShared and the rings in guest memory, ACTIVATE, post tx packets and
// reap their completions, refill rx rings and process rx completions, take
// interrupts with auto-masking or poll.
//
// The driver keeps all of its state in guest memory (the state block of its
// Layout), never in Go fields: a Driver value over a copy of the memory, with
// the same configuration and a device restored from the hand-off state,
// resumes exactly where the original stopped. Its methods run on the vCPU
// goroutine only.
//
// Ordering on the rings:
//   - tx: a descriptor is written (addr, dw3) before its dw2, which holds
//     the gen bit, is stored with release; the device loads dw2 with
//     acquire. TxCommit's packets are single-descriptor, so SOP is EOP and
//     the "SOP gen written last" rule is this one store. TxSend's packets
//     span several descriptors: the SOP is written with the inverted gen,
//     the rest with theirs, and the SOP's gen is flipped last (release),
//     so the device never sees half a packet (spec §4.6).
//   - rx refill: addr is written before dw2 (len, btype, gen) is released.
//   - completions: the driver loads the completion's dw3 (gen) with acquire
//     before reading its other words.

import (
	"errors"
	"fmt"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// Driver state block offsets (from Layout.State).
const (
	stOpen       = 0  // u32: stOpenMagic while the device is open
	stTxNext     = 4  // next tx descriptor to fill
	stTxGen      = 8  // driver's tx ring gen
	stTxOldest   = 12 // oldest outstanding tx descriptor
	stTxOutst    = 16 // tx descriptors outstanding
	stTxCompNext = 20
	stTxCompGen  = 24
	stTxReserved = 28 // 1 while a TxReserve is not yet committed
	stRxFill0    = 32 // next ring-0 slot to fill
	stRxFillGen0 = 36
	stRxCons0    = 40 // next ring-0 slot the device will consume
	stRxFill1    = 44
	stRxFillGen1 = 48
	stRxCons1    = 52
	stRxCompNext = 56
	stRxCompGen  = 60
	stAsmLen     = 64 // bytes gathered for a multi-buffer frame
	stAsmActive  = 68 // 1 between SOP and EOP
	stAsmErr     = 72 // the frame being assembled is dropped
	stDeferred   = 76 // packets committed since the last doorbell
	stMACLo      = 80
	stMACHi      = 84
	stRevision   = 88

	stCounters = 128 // DriverStats, u64 each, in field order
)

const stOpenMagic = 0x44525652 // "DRVR"

// Vectors: tx queue 0 and rx queue 0 share vector 0 (equal queue counts,
// spec §5.1); events use vector 1.
const (
	vecQueue = 0
	vecEvent = 1
	numIntrs = 2
)

// DriverStats are the driver's counters, kept in guest memory.
type DriverStats struct {
	TxPackets, TxBytes uint64
	RxPackets, RxBytes uint64
	RxErrors           uint64 // completions with err, malformed chains
	TxRingFull         uint64 // TxReserve found the ring full
	Interrupts         uint64 // vCPU wake-ups by interrupt
	Doorbells          uint64 // TXPROD writes
	RxDoorbells        uint64 // RXPROD/RXPROD2 writes
	Events             uint64 // ECR events handled
	QueueErrors        uint64 // TQERR/RQERR seen
	Resets             uint64 // device resets after a queue error
	TxDroppedByReset   uint64 // packets in the tx ring when the device was reset
}

const numDriverStats = 13

// Driver is a VMXNET3 guest driver bound to one device's BAR0 and BAR1.
type Driver struct {
	m    *mem.Memory
	bar0 vmxnet3.BAR // PT registers: doorbells, IMR (the adapter in direct mode)
	bar1 vmxnet3.BAR // VD registers: always through the hypervisor
	cfg  DriverConfig
	l    Layout
}

// Errors.
var (
	ErrNoRevision = errors.New("guest: device offers no revision this driver supports")
	ErrActivate   = errors.New("guest: device refused ACTIVATE_DEV")
	ErrNoRoom     = errors.New("guest: driver layout does not fit in guest memory")
)

// NewDriver binds a driver to a device. It touches nothing until Probe.
func NewDriver(m *mem.Memory, bar0, bar1 vmxnet3.BAR, cfg DriverConfig) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := cfg.Layout()
	if l.End > m.Size() {
		return nil, fmt.Errorf("%w: needs %d bytes from %#x, memory is %d", ErrNoRoom, l.End-cfg.Base, cfg.Base, m.Size())
	}
	return &Driver{m: m, bar0: bar0, bar1: bar1, cfg: cfg, l: l}, nil
}

// Rebind points the driver at other register windows, as when the
// hypervisor re-points a VM's BARs at another device after a hand-off. The
// driver's state is untouched: it lives in guest memory.
func (d *Driver) Rebind(bar0, bar1 vmxnet3.BAR) { d.bar0, d.bar1 = bar0, bar1 }

// Layout returns the driver's guest-memory layout.
func (d *Driver) Layout() Layout { return d.l }

// Config returns the driver configuration.
func (d *Driver) Config() DriverConfig { return d.cfg }

func (d *Driver) st(off uint64) uint32     { return d.m.U32(d.l.State + off) }
func (d *Driver) set(off uint64, v uint32) { d.m.PutU32(d.l.State+off, v) }
func (d *Driver) count(i int, n uint64) {
	pa := d.l.State + stCounters + uint64(i)*8
	d.m.PutU64(pa, d.m.U64(pa)+n)
}

// Counter indices, in DriverStats field order.
const (
	cTxPackets = iota
	cTxBytes
	cRxPackets
	cRxBytes
	cRxErrors
	cTxRingFull
	cInterrupts
	cDoorbells
	cRxDoorbells
	cEvents
	cQueueErrors
	cResets
	cTxDroppedByReset
)

// Stats reads the driver's counters from guest memory.
func (d *Driver) Stats() DriverStats {
	var v [numDriverStats]uint64
	for i := range v {
		v[i] = d.m.U64(d.l.State + stCounters + uint64(i)*8)
	}
	return DriverStats{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12]}
}

// Open reports whether the driver has the device open.
func (d *Driver) Open() bool { return d.st(stOpen) == stOpenMagic }

// Probe negotiates the revision and UPT version and reads the MAC (spec §2.3).
func (d *Driver) Probe() error {
	vrrs := d.bar1.Read32(vmxnet3.RegVRRS)
	if vrrs&1 == 0 {
		return fmt.Errorf("%w (VRRS %#x)", ErrNoRevision, vrrs)
	}
	// This driver speaks Rev 1, the baseline every device supports.
	d.bar1.Write32(vmxnet3.RegVRRS, 1)
	if d.bar1.Read32(vmxnet3.RegUVRS)&1 == 0 {
		return fmt.Errorf("%w (UVRS)", ErrNoRevision)
	}
	d.bar1.Write32(vmxnet3.RegUVRS, 1)
	d.set(stRevision, 1)
	d.set(stMACLo, d.bar1.Read32(vmxnet3.RegMACL))
	d.set(stMACHi, d.bar1.Read32(vmxnet3.RegMACH))
	d.bar1.Write32(vmxnet3.RegCMD, vmxnet3.CmdGetConfIntr)
	_ = d.bar1.Read32(vmxnet3.RegCMD) // MSI-X with auto-masking is what we use either way
	return nil
}

// MAC implements NetDev.
func (d *Driver) MAC() wire.MAC { return vmxnet3.RegsToMAC(d.st(stMACLo), d.st(stMACHi)) }

// SetMAC programs a new current MAC (MACL then MACH, spec §1.4).
func (d *Driver) SetMAC(mac wire.MAC) {
	lo, hi := vmxnet3.MACToRegs(mac)
	d.set(stMACLo, lo)
	d.set(stMACHi, hi)
	d.bar1.Write32(vmxnet3.RegMACL, lo)
	d.bar1.Write32(vmxnet3.RegMACH, hi)
}

// Up opens the device (spec §2.4 steps 1–4).
func (d *Driver) Up() error {
	m, l := d.m, d.l
	// 1. Zero the rings; every index 0, gen 1.
	if err := m.Zero(l.State, stCounters); err != nil {
		return err
	}
	for _, r := range []struct {
		pa uint64
		n  uint32
	}{{l.TxRing, l.TxSize}, {l.TxComp, l.TxSize}, {l.RxRing0, l.RxSize0}, {l.RxRing1, l.RxSize1}, {l.RxComp, l.RxCompSize}} {
		_ = m.Zero(r.pa, uint64(r.n)*vmxnet3.DescSize)
	}
	d.set(stTxGen, 1)
	d.set(stTxCompGen, 1)
	d.set(stRxFillGen0, 1)
	d.set(stRxFillGen1, 1)
	d.set(stRxCompGen, 1)
	lo, hi := d.bar1.Read32(vmxnet3.RegMACL), d.bar1.Read32(vmxnet3.RegMACH)
	d.set(stMACLo, lo)
	d.set(stMACHi, hi)

	// 2. Fill rx rings, write DriverShared and the queue descriptors.
	d.fill(0, l.RxSize0-1)
	d.fill(1, l.RxSize1-1)
	ds := l.Shared
	_ = m.Zero(ds, mem.PageSize)
	m.PutU32(ds+vmxnet3.DSMagic, vmxnet3.Magic)
	m.PutU32(ds+vmxnet3.DSDriverVersion, 0x01000000)
	m.PutU32(ds+vmxnet3.DSGOS, vmxnet3.GOSBits64|vmxnet3.GOSTypeLinux<<vmxnet3.GOSShiftType)
	m.PutU32(ds+vmxnet3.DSRevSpt, 1)
	m.PutU32(ds+vmxnet3.DSUPTVerSpt, 1)
	m.PutU64(ds+vmxnet3.DSUPTFeatures, 0)
	m.PutU64(ds+vmxnet3.DSQueueDescPA, l.QueueDesc)
	m.PutU32(ds+vmxnet3.DSQueueDescLen, 2*vmxnet3.QueueDescSize)
	m.PutU32(ds+vmxnet3.DSMTU, d.cfg.MTU)
	// A jumbo frame spans a HEAD buffer and BODY pages; allow up to 16.
	m.PutU16(ds+vmxnet3.DSMaxNumRxSG, 16)
	m.PutU8(ds+vmxnet3.DSNumTxQueues, 1)
	m.PutU8(ds+vmxnet3.DSNumRxQueues, 1)
	m.PutU8(ds+vmxnet3.DSAutoMask, 1)
	m.PutU8(ds+vmxnet3.DSNumIntrs, numIntrs)
	m.PutU8(ds+vmxnet3.DSEventIntrIdx, vecEvent)
	m.PutU32(ds+vmxnet3.DSIntrCtrl, vmxnet3.IntrCtrlDisableAll)
	m.PutU32(ds+vmxnet3.DSRxMode, 0)
	m.PutU32(ds+vmxnet3.DSVFTable, 1) // VID 0: untagged and priority-tagged frames

	tq := l.QueueDesc
	_ = m.Zero(tq, 2*vmxnet3.QueueDescSize)
	m.PutU64(tq+vmxnet3.TQTxRingBasePA, l.TxRing)
	m.PutU64(tq+vmxnet3.TQCompRingBasePA, l.TxComp)
	m.PutU32(tq+vmxnet3.TQTxRingSize, l.TxSize)
	m.PutU32(tq+vmxnet3.TQCompRingSize, l.TxSize)
	m.PutU8(tq+vmxnet3.TQIntrIdx, vecQueue)
	rq := tq + vmxnet3.QueueDescSize
	m.PutU64(rq+vmxnet3.RQRxRingBasePA0, l.RxRing0)
	m.PutU64(rq+vmxnet3.RQRxRingBasePA1, l.RxRing1)
	m.PutU64(rq+vmxnet3.RQCompRingBasePA, l.RxComp)
	m.PutU32(rq+vmxnet3.RQRxRingSize0, l.RxSize0)
	m.PutU32(rq+vmxnet3.RQRxRingSize1, l.RxSize1)
	m.PutU32(rq+vmxnet3.RQCompRingSize, l.RxCompSize)
	m.PutU8(rq+vmxnet3.RQIntrIdx, vecQueue)

	// 3. MAC, shared address, ACTIVATE.
	d.bar1.Write32(vmxnet3.RegMACL, lo)
	d.bar1.Write32(vmxnet3.RegMACH, hi)
	d.bar1.Write32(vmxnet3.RegDSAL, uint32(ds))
	d.bar1.Write32(vmxnet3.RegDSAH, uint32(ds>>32))
	d.bar1.Write32(vmxnet3.RegCMD, vmxnet3.CmdActivateDev)
	if r := d.bar1.Read32(vmxnet3.RegCMD); r != 0 {
		d.bar1.Write32(vmxnet3.RegDSAL, 0)
		d.bar1.Write32(vmxnet3.RegDSAH, 0)
		return fmt.Errorf("%w (CMD read %#x)", ErrActivate, r)
	}
	d.set(stOpen, stOpenMagic)

	// 4. Producers, filters, link, interrupts.
	d.bar0.Write32(vmxnet3.RxPROD(0), d.st(stRxFill0))
	d.bar0.Write32(vmxnet3.RxPROD2(0), d.st(stRxFill1))
	m.PutU32(ds+vmxnet3.DSRxMode, vmxnet3.RxModeUcast|vmxnet3.RxModeBcast)
	d.bar1.Write32(vmxnet3.RegCMD, vmxnet3.CmdUpdateRxMode)
	d.bar1.Write32(vmxnet3.RegCMD, vmxnet3.CmdUpdateVLANFilters)
	d.bar1.Write32(vmxnet3.RegCMD, vmxnet3.CmdUpdateMACFilters)
	d.bar1.Write32(vmxnet3.RegCMD, vmxnet3.CmdGetLink)
	_ = d.bar1.Read32(vmxnet3.RegCMD)
	if !d.cfg.Polling {
		d.Unmask()
	}
	return nil
}

// Down closes the device: QUIESCE, mask everything (spec §2.4 close).
func (d *Driver) Down() {
	d.bar1.Write32(vmxnet3.RegCMD, vmxnet3.CmdQuiesceDev)
	d.MaskAll()
	d.set(stOpen, 0)
}

// MaskAll masks every vector and sets DISABLE_ALL.
func (d *Driver) MaskAll() {
	d.m.PutU32(d.l.Shared+vmxnet3.DSIntrCtrl, vmxnet3.IntrCtrlDisableAll)
	for v := 0; v < numIntrs; v++ {
		d.bar0.Write32(vmxnet3.IMR(v), 1)
	}
}

// Unmask clears DISABLE_ALL and unmasks the driver's vectors; a vector that
// fired while masked is delivered now (spec §5.2).
func (d *Driver) Unmask() {
	d.m.PutU32(d.l.Shared+vmxnet3.DSIntrCtrl, 0)
	for v := 0; v < numIntrs; v++ {
		d.bar0.Write32(vmxnet3.IMR(v), 0)
	}
}

// ---- transmit ----

// TxReserve implements NetDev.
func (d *Driver) TxReserve() (uint64, int, bool) {
	if d.st(stOpen) != stOpenMagic || d.st(stTxOutst) >= d.l.TxSize-1 {
		d.count(cTxRingFull, 1)
		return 0, 0, false
	}
	i := d.st(stTxNext)
	d.set(stTxReserved, 1)
	return d.l.TxBufs + uint64(i)*uint64(d.l.TxBufSize), int(d.l.TxBufSize), true
}

// TxCommit implements NetDev: post one single-descriptor packet.
func (d *Driver) TxCommit(n int) {
	if d.st(stTxReserved) == 0 || n <= 0 || n > int(d.l.TxBufSize) {
		return
	}
	d.set(stTxReserved, 0)
	m := d.m
	i := d.st(stTxNext)
	gen := d.st(stTxGen)
	pa := d.l.TxRing + uint64(i)*vmxnet3.DescSize
	desc := vmxnet3.TxDesc{
		Addr: d.l.TxBufs + uint64(i)*uint64(d.l.TxBufSize),
		Len:  uint32(n),
		Gen:  gen == 1,
		EOP:  true,
		CQ:   true,
	}
	addr, dw2, dw3 := desc.Words()
	m.PutU64(pa+vmxnet3.TxDescAddr, addr)
	m.PutU32(pa+vmxnet3.TxDescDW3, dw3)
	// Publish: addr and dw3 before the gen bit in dw2 (release).
	m.StoreU32Release(pa+vmxnet3.TxDescDW2, dw2)
	i++
	if i == d.l.TxSize {
		i = 0
		d.set(stTxGen, gen^1)
	}
	d.set(stTxNext, i)
	d.set(stTxOutst, d.st(stTxOutst)+1)
	d.set(stDeferred, d.st(stDeferred)+1)
	d.count(cTxPackets, 1)
	d.count(cTxBytes, uint64(n))
}

// TxRoom implements NetDev: every free descriptor's buffer, one slot kept
// empty (spec §4.6).
func (d *Driver) TxRoom() int {
	if d.st(stOpen) != stOpenMagic {
		return 0
	}
	return int(d.l.TxSize-1-d.st(stTxOutst)) * int(d.l.TxBufSize)
}

// TxSend implements NetDev: one packet over ceil(len(f)/TxBufSize)
// descriptors, each slot's own buffer (slot i holds buffer i, as for
// TxCommit), with the offload fields on the SOP descriptor and CQ|EOP on
// the last.
func (d *Driver) TxSend(f []byte, o TxOffload) bool {
	bs := int(d.l.TxBufSize)
	n := (len(f) + bs - 1) / bs
	if d.st(stOpen) != stOpenMagic || n == 0 || (o.Mode != vmxnet3.OMTSO && n > vmxnet3.MaxTxDescPerPkt) {
		return false
	}
	if uint32(n) > d.l.TxSize-1-d.st(stTxOutst) {
		d.count(cTxRingFull, 1)
		return false
	}
	d.set(stTxReserved, 0)
	m := d.m
	i, gen := d.st(stTxNext), d.st(stTxGen)
	sop := d.l.TxRing + uint64(i)*vmxnet3.DescSize
	var sopDW2 uint32
	for j := range n {
		buf := d.l.TxBufs + uint64(i)*uint64(bs)
		chunk := f[j*bs : min((j+1)*bs, len(f))]
		_ = m.Write(buf, chunk)
		desc := vmxnet3.TxDesc{Addr: buf, Len: uint32(len(chunk)), Gen: gen == 1}
		if j == 0 {
			desc.Gen = gen != 1 // not the device's yet: flipped last
			desc.OM, desc.HLen, desc.MSSCOF = o.Mode, o.HLen, o.MSSCOF
		}
		if j == n-1 {
			desc.EOP, desc.CQ = true, true
		}
		addr, dw2, dw3 := desc.Words()
		pa := d.l.TxRing + uint64(i)*vmxnet3.DescSize
		m.PutU64(pa+vmxnet3.TxDescAddr, addr)
		m.PutU32(pa+vmxnet3.TxDescDW3, dw3)
		// Publish: addr and dw3 before the gen bit in dw2 (release).
		m.StoreU32Release(pa+vmxnet3.TxDescDW2, dw2)
		if j == 0 {
			sopDW2 = dw2
		}
		i++
		if i == d.l.TxSize {
			i = 0
			gen ^= 1
		}
	}
	// Publish the packet: the whole chain is written before the SOP's gen
	// flips to the device's (release).
	m.StoreU32Release(sop+vmxnet3.TxDescDW2, sopDW2^vmxnet3.TxGenBit)
	d.set(stTxGen, gen)
	d.set(stTxNext, i)
	d.set(stTxOutst, d.st(stTxOutst)+uint32(n))
	d.set(stDeferred, d.st(stDeferred)+1)
	d.count(cTxPackets, 1)
	d.count(cTxBytes, uint64(len(f)))
	return true
}

// Flush rings the tx doorbell if packets were committed since the last one.
// Like Linux's xmit_more batching, a burst of packets costs one doorbell;
// txNumDeferred in the queue descriptor tells the device how many.
func (d *Driver) Flush() {
	n := d.st(stDeferred)
	if n == 0 {
		return
	}
	d.set(stDeferred, 0)
	tq := d.l.QueueDesc
	d.m.PutU32(tq+vmxnet3.TQTxNumDeferred, 0)
	d.bar0.Write32(vmxnet3.TxPROD(0), d.st(stTxNext))
	d.count(cDoorbells, 1)
}

// TxFree returns how many packets can be queued now.
func (d *Driver) TxFree() int { return int(d.l.TxSize - 1 - d.st(stTxOutst)) }

// reapTx processes tx completions (spec §4.3, §4.7).
func (d *Driver) reapTx() int {
	m := d.m
	next, gen := d.st(stTxCompNext), d.st(stTxCompGen)
	oldest, outst := d.st(stTxOldest), d.st(stTxOutst)
	n := 0
	for {
		pa := d.l.TxComp + uint64(next)*vmxnet3.DescSize
		dw3 := m.LoadU32Acquire(pa + vmxnet3.TxCompDW3)
		if dw3>>31 != gen {
			break
		}
		idx := m.U32(pa+vmxnet3.TxCompDW0) & vmxnet3.TxCompIdxMask
		// Free every descriptor from the oldest outstanding up to idx.
		freed := (idx+d.l.TxSize-oldest)%d.l.TxSize + 1
		if freed > outst {
			// A completion for a descriptor we never posted: a device
			// bug. Count it and stop trusting this completion ring.
			d.count(cRxErrors, 1)
			break
		}
		outst -= freed
		oldest = (idx + 1) % d.l.TxSize
		next++
		if next == d.l.TxSize {
			next = 0
			gen ^= 1
		}
		n++
	}
	if n > 0 {
		d.set(stTxCompNext, next)
		d.set(stTxCompGen, gen)
		d.set(stTxOldest, oldest)
		d.set(stTxOutst, outst)
	}
	return n
}

// ---- receive ----

func (d *Driver) ringGeom(r int) (ring, bufs uint64, size, bufSize uint32, fillOff, genOff, consOff uint64) {
	if r == 0 {
		return d.l.RxRing0, d.l.RxBufs0, d.l.RxSize0, d.l.RxBufSize0, stRxFill0, stRxFillGen0, stRxCons0
	}
	return d.l.RxRing1, d.l.RxBufs1, d.l.RxSize1, d.l.RxBufSize1, stRxFill1, stRxFillGen1, stRxCons1
}

// fill posts n buffers on rx ring r from its fill index. Slot i always holds
// buffer i, so refilling a consumed slot re-posts the buffer just returned.
func (d *Driver) fill(r int, n uint32) {
	ring, bufs, size, bufSize, fillOff, genOff, _ := d.ringGeom(r)
	m := d.m
	i, gen := d.st(fillOff), d.st(genOff)
	for ; n > 0; n-- {
		pa := ring + uint64(i)*vmxnet3.DescSize
		desc := vmxnet3.RxDesc{Len: bufSize, Body: r == 1, Gen: gen == 1}
		m.PutU64(pa+vmxnet3.RxDescAddr, bufs+uint64(i)*uint64(bufSize))
		m.PutU32(pa+12, 0)
		// Publish: addr before the gen bit in dw2 (release).
		m.StoreU32Release(pa+vmxnet3.RxDescDW2, desc.Word2())
		i++
		if i == size {
			i = 0
			gen ^= 1
		}
	}
	d.set(fillOff, i)
	d.set(genOff, gen)
}

// processRx consumes up to budget rx completions, handing whole frames to
// wl, refilling what was consumed. It returns completions processed.
func (d *Driver) processRx(wl Workload, now int64, budget int) int {
	m := d.m
	next, gen := d.st(stRxCompNext), d.st(stRxCompGen)
	var refill [2]uint32
	n := 0
	for n < budget {
		pa := d.l.RxComp + uint64(next)*vmxnet3.DescSize
		dw3 := m.LoadU32Acquire(pa + vmxnet3.RxCompDW3)
		if dw3>>31 != gen {
			break
		}
		c := vmxnet3.DecodeRxComp(m.U32(pa+vmxnet3.RxCompDW0), m.U32(pa+vmxnet3.RxCompDW1), m.U32(pa+vmxnet3.RxCompDW2), dw3)
		next++
		if next == d.l.RxCompSize {
			next = 0
			gen ^= 1
		}
		n++
		r := 0
		if c.RqID == 1 { // rqID = q + numRxQueues for ring 1 (spec §4.8)
			r = 1
		} else if c.RqID != 0 {
			d.count(cRxErrors, 1)
			continue
		}
		_, bufs, size, bufSize, _, _, consOff := d.ringGeom(r)
		idx := uint32(c.RxdIdx)
		if idx >= size || c.Len > bufSize {
			d.count(cRxErrors, 1)
			continue
		}
		// Every slot before idx that the device skipped is returned too.
		cons := d.st(consOff)
		refill[r] += (idx+size-cons)%size + 1
		d.set(consOff, (idx+1)%size)
		buf := bufs + uint64(idx)*uint64(bufSize)
		d.rxChunk(wl, now, c, buf)
	}
	if n == 0 {
		return 0
	}
	d.set(stRxCompNext, next)
	d.set(stRxCompGen, gen)
	rq := d.l.QueueDesc + vmxnet3.QueueDescSize
	needProd := m.U8(rq+vmxnet3.RQUpdateRxProd) != 0
	if refill[0] > 0 {
		d.fill(0, refill[0])
		if needProd {
			d.bar0.Write32(vmxnet3.RxPROD(0), d.st(stRxFill0))
			d.count(cRxDoorbells, 1)
		}
	}
	if refill[1] > 0 {
		d.fill(1, refill[1])
		if needProd {
			d.bar0.Write32(vmxnet3.RxPROD2(0), d.st(stRxFill1))
			d.count(cRxDoorbells, 1)
		}
	}
	return n
}

// rxChunk handles one completion: a whole frame, or one piece of a
// multi-buffer frame gathered in the assembly buffer.
func (d *Driver) rxChunk(wl Workload, now int64, c vmxnet3.RxComp, buf uint64) {
	if c.SOP && c.EOP {
		d.set(stAsmActive, 0)
		if c.Err || c.Len == 0 {
			if c.Err {
				d.count(cRxErrors, 1)
			}
			return
		}
		d.count(cRxPackets, 1)
		d.count(cRxBytes, uint64(c.Len))
		if wl != nil {
			wl.Receive(d, buf, int(c.Len), now)
		}
		return
	}
	if c.SOP {
		d.set(stAsmActive, 1)
		d.set(stAsmLen, 0)
		d.set(stAsmErr, 0)
	} else if d.st(stAsmActive) == 0 {
		d.count(cRxErrors, 1) // a continuation without its SOP
		return
	}
	asm := d.st(stAsmLen)
	if uint64(asm)+uint64(c.Len) > vmxnet3.MaxMTU+64 {
		d.set(stAsmErr, 1)
	} else if c.Len > 0 {
		v, _ := d.m.View(buf, uint64(c.Len))
		_ = d.m.Write(d.l.Assembly+uint64(asm), v)
		d.set(stAsmLen, asm+c.Len)
	}
	if c.Err {
		d.set(stAsmErr, 1)
	}
	if c.EOP {
		d.set(stAsmActive, 0)
		if d.st(stAsmErr) != 0 {
			d.count(cRxErrors, 1)
			return
		}
		n := d.st(stAsmLen)
		d.count(cRxPackets, 1)
		d.count(cRxBytes, uint64(n))
		if wl != nil {
			wl.Receive(d, d.l.Assembly, int(n), now)
		}
	}
}

// ---- events, polling ----

// handleEvents acknowledges pending ECR events (spec §5.4) and recovers from
// queue errors by resetting the device.
func (d *Driver) handleEvents() error {
	ecr := d.m.LoadU32Acquire(d.l.Shared + vmxnet3.DSECR)
	if ecr == 0 {
		return nil
	}
	d.bar1.Write32(vmxnet3.RegECR, ecr)
	d.count(cEvents, 1)
	if ecr&vmxnet3.EventLink != 0 {
		d.bar1.Write32(vmxnet3.RegCMD, vmxnet3.CmdGetLink)
		_ = d.bar1.Read32(vmxnet3.RegCMD)
	}
	if ecr&(vmxnet3.EventTQErr|vmxnet3.EventRQErr) != 0 {
		d.count(cQueueErrors, 1)
		d.bar1.Write32(vmxnet3.RegCMD, vmxnet3.CmdGetQueueStatus)
		_ = d.bar1.Read32(vmxnet3.RegCMD)
		return d.reset()
	}
	return nil
}

// reset recovers from a queue error: QUIESCE, RESET, open again (spec §2.4).
// Packets still in the tx ring are lost with the rings; they are counted.
func (d *Driver) reset() error {
	lost := d.st(stTxOutst)
	stats := d.Stats()
	d.bar1.Write32(vmxnet3.RegCMD, vmxnet3.CmdQuiesceDev)
	d.bar1.Write32(vmxnet3.RegCMD, vmxnet3.CmdResetDev)
	err := d.Up()
	// Up zeroes the state block but not the counters; carry them on.
	_ = stats
	d.count(cResets, 1)
	d.count(cTxDroppedByReset, uint64(lost))
	return err
}

// Poll does one round of driver work: events, tx completions, up to budget
// rx completions (handing frames to wl). It returns the work done.
func (d *Driver) Poll(wl Workload, now int64, budget int) (int, error) {
	if d.st(stOpen) != stOpenMagic {
		return 0, nil
	}
	if err := d.handleEvents(); err != nil {
		return 0, err
	}
	n := d.reapTx()
	n += d.processRx(wl, now, budget)
	return n, nil
}

// Pending reports whether a completion is waiting on either ring: the check
// a driver makes after unmasking so that it never sleeps on work.
func (d *Driver) Pending() bool {
	m := d.m
	pa := d.l.TxComp + uint64(d.st(stTxCompNext))*vmxnet3.DescSize
	if m.LoadU32Acquire(pa+vmxnet3.TxCompDW3)>>31 == d.st(stTxCompGen) {
		return true
	}
	pa = d.l.RxComp + uint64(d.st(stRxCompNext))*vmxnet3.DescSize
	if m.LoadU32Acquire(pa+vmxnet3.RxCompDW3)>>31 == d.st(stRxCompGen) {
		return true
	}
	return m.LoadU32Acquire(d.l.Shared+vmxnet3.DSECR) != 0
}

// CountInterrupt records a wake-up by interrupt.
func (d *Driver) CountInterrupt() { d.count(cInterrupts, 1) }

var _ NetDev = (*Driver)(nil)

// RingState is the driver's view of its rings, read from guest memory, for
// diagnostics.
type RingState struct {
	TxNext, TxGen, TxOldest, TxOutstanding, TxCompNext, TxCompGen uint32
	RxFill0, RxFillGen0, RxCons0, RxFill1, RxFillGen1, RxCons1    uint32
	RxCompNext, RxCompGen                                         uint32
}

// Rings returns the driver's ring positions.
func (d *Driver) Rings() RingState {
	return RingState{
		TxNext: d.st(stTxNext), TxGen: d.st(stTxGen), TxOldest: d.st(stTxOldest), TxOutstanding: d.st(stTxOutst),
		TxCompNext: d.st(stTxCompNext), TxCompGen: d.st(stTxCompGen),
		RxFill0: d.st(stRxFill0), RxFillGen0: d.st(stRxFillGen0), RxCons0: d.st(stRxCons0),
		RxFill1: d.st(stRxFill1), RxFillGen1: d.st(stRxFillGen1), RxCons1: d.st(stRxCons1),
		RxCompNext: d.st(stRxCompNext), RxCompGen: d.st(stRxCompGen),
	}
}
