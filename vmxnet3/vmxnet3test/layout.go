package vmxnet3test

import (
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vmxnet3"
)

// Config sizes a test guest's queues, rings and buffers and says what it
// writes into DriverShared. Zero sizes take the DefaultConfig values; the
// filter fields (RxMode, VLANs, MCast) are used as given.
type Config struct {
	NumTxQueues int // 1..8
	NumRxQueues int // 1..16

	TxRingSize  uint32 // tx ring (multiple of 32, ≤ 4096)
	TxCompSize  uint32 // tx completion ring
	RxRingSize0 uint32 // rx ring 0: HEAD buffers
	RxRingSize1 uint32 // rx ring 1: BODY buffers
	RxCompSize  uint32 // rx completion ring; 0 = ring 0 + ring 1

	TxBufSize  uint32 // bytes per tx slot; a longer frame spans slots (≤ 16384)
	RxBufSize0 uint32 // bytes per ring-0 HEAD buffer
	RxBufSize1 uint32 // bytes per ring-1 BODY buffer

	MTU        uint32 // 60..9000
	MaxNumRxSG uint16 // misc.maxNumRxSG
	AutoMask   bool   // intrConf.autoMask

	RxMode uint32    // rxFilterConf.rxMode (spec §6)
	VLANs  []uint16  // VIDs set in vfTable
	MCast  [][6]byte // multicast table
	Base   uint64    // guest-physical start of the layout (page-aligned)
	Extra  uint64    // bytes of guest memory NewRig adds after the layout
	Guard  uint64    // bytes of guard region NewRig adds at the end of memory
	NoFill bool      // Up leaves the rx rings empty
	Masked bool      // Up leaves every vector masked
}

// DefaultConfig is one queue pair with small rings: tx 64, rx 64 HEAD
// buffers of 2 KiB plus 32 BODY pages, MTU 1500, UCAST|BCAST, VID 0, and
// auto-masked vectors.
func DefaultConfig() Config {
	return Config{
		NumTxQueues: 1,
		NumRxQueues: 1,
		TxRingSize:  64,
		TxCompSize:  64,
		RxRingSize0: 64,
		RxRingSize1: 32,
		TxBufSize:   2048,
		RxBufSize0:  2048,
		RxBufSize1:  mem.PageSize,
		MTU:         1500,
		MaxNumRxSG:  16,
		AutoMask:    true,
		RxMode:      vmxnet3.RxModeUcast | vmxnet3.RxModeBcast,
		VLANs:       []uint16{0},
		Guard:       2 * mem.PageSize,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	set := func(v *uint32, def uint32) {
		if *v == 0 {
			*v = def
		}
	}
	if c.NumTxQueues == 0 {
		c.NumTxQueues = d.NumTxQueues
	}
	if c.NumRxQueues == 0 {
		c.NumRxQueues = d.NumRxQueues
	}
	set(&c.TxRingSize, d.TxRingSize)
	set(&c.TxCompSize, c.TxRingSize)
	set(&c.RxRingSize0, d.RxRingSize0)
	set(&c.RxRingSize1, d.RxRingSize1)
	set(&c.RxCompSize, c.RxRingSize0+c.RxRingSize1)
	set(&c.TxBufSize, d.TxBufSize)
	set(&c.RxBufSize0, d.RxBufSize0)
	set(&c.RxBufSize1, d.RxBufSize1)
	set(&c.MTU, d.MTU)
	return c
}

// TxVector is the vector tx queue q uses: tx queues take 0.., rx queues the
// next ones, the event vector is last (the Linux MSI-X plan, spec §5.1).
func (c Config) TxVector(q int) int { return q }

// RxVector is the vector rx queue q uses.
func (c Config) RxVector(q int) int { return c.NumTxQueues + q }

// EventVector is the vector for ECR events.
func (c Config) EventVector() int { return c.NumTxQueues + c.NumRxQueues }

// TxLayout is where one tx queue lives.
type TxLayout struct {
	Ring, Comp, Bufs uint64
}

// RxLayout is where one rx queue lives.
type RxLayout struct {
	Ring [2]uint64 // ring 0 (HEAD) and ring 1 (BODY)
	Comp uint64
	Bufs [2]uint64 // buffer arrays: slot i of ring r uses Bufs[r] + i·bufsize
}

// Layout is the test guest's use of guest memory:
//
//	Base
//	 +0     unused (DSAL = 0 means "deactivate")   1 page
//	 +4K    DriverShared                           1 page
//	 +8K    queue descriptor table (tx, then rx)   page-rounded
//	 ...    multicast table                        1 page
//	 ...    per tx queue: ring, completion ring    512-aligned
//	 ...    per rx queue: ring 0, ring 1, comp     512-aligned
//	 ...    tx buffers, rx buffers                 page-aligned
//	 End
type Layout struct {
	Shared    uint64
	QueueDesc uint64
	MFTable   uint64
	Tx        []TxLayout
	Rx        []RxLayout
	BufStart  uint64 // first byte of the buffer area
	End       uint64 // first byte after the layout (page-aligned)
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// Layout computes where everything goes.
func (c Config) Layout() Layout {
	c = c.withDefaults()
	var l Layout
	// Page 0 of the layout stays unused: a DriverShared whose PA has low
	// half 0 cannot be announced, since DSAL = 0 deactivates (spec §1.4).
	p := alignUp(c.Base, mem.PageSize) + mem.PageSize
	l.Shared = p
	p += mem.PageSize
	l.QueueDesc = p
	p += alignUp(uint64(c.NumTxQueues+c.NumRxQueues)*vmxnet3.QueueDescSize, mem.PageSize)
	l.MFTable = p
	p += mem.PageSize
	ring := func(n uint32) uint64 {
		p = alignUp(p, vmxnet3.RingBaseAlign)
		at := p
		p += uint64(n) * vmxnet3.DescSize
		return at
	}
	l.Tx = make([]TxLayout, c.NumTxQueues)
	for q := range l.Tx {
		l.Tx[q].Ring = ring(c.TxRingSize)
		l.Tx[q].Comp = ring(c.TxCompSize)
	}
	l.Rx = make([]RxLayout, c.NumRxQueues)
	for q := range l.Rx {
		l.Rx[q].Ring[0] = ring(c.RxRingSize0)
		l.Rx[q].Ring[1] = ring(c.RxRingSize1)
		l.Rx[q].Comp = ring(c.RxCompSize)
	}
	p = alignUp(p, mem.PageSize)
	l.BufStart = p
	for q := range l.Tx {
		l.Tx[q].Bufs = p
		p = alignUp(p+uint64(c.TxRingSize)*uint64(c.TxBufSize), mem.PageSize)
	}
	for q := range l.Rx {
		l.Rx[q].Bufs[0] = p
		p = alignUp(p+uint64(c.RxRingSize0)*uint64(c.RxBufSize0), mem.PageSize)
		l.Rx[q].Bufs[1] = p
		p = alignUp(p+uint64(c.RxRingSize1)*uint64(c.RxBufSize1), mem.PageSize)
	}
	l.End = p
	return l
}
