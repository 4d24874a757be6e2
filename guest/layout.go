package guest

import (
	"fmt"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vmxnet3"
)

// DriverConfig sizes the driver's rings and buffers. It is immutable
// configuration, the same on every host a VM runs on.
type DriverConfig struct {
	TxRingSize  uint32 // tx ring and tx completion ring (multiple of 32, ≤ 4096)
	RxRingSize0 uint32 // rx ring 0: HEAD buffers (multiple of 32, ≤ 4096)
	RxRingSize1 uint32 // rx ring 1: BODY buffers (multiple of 32, ≤ 4096)
	MTU         uint32 // 60..9000
	Polling     bool   // poll the rings instead of taking interrupts
	Base        uint64 // guest-physical start of the driver's region (page-aligned)
}

// DefaultDriverConfig is what the demo VMs use: the Linux driver's tx ring
// size, a smaller rx ring 0 than Linux's 1024 to keep guests small.
func DefaultDriverConfig() DriverConfig {
	return DriverConfig{TxRingSize: 512, RxRingSize0: 512, RxRingSize1: 32, MTU: 1500}
}

// Layout is where the driver keeps everything in guest memory. It is derived
// from DriverConfig alone, so every host computes the same layout.
//
//	Base
//	 +0        driver state (indices, counters)            1 page
//	 +4K       DriverShared                                1 page
//	 +8K       queue descriptor table (1 tx + 1 rx)        512 B
//	 ...       tx ring, tx comp, rx ring 0, rx ring 1,
//	           rx comp (each 512-aligned)
//	 ...       tx buffers, rx ring 0 HEAD buffers, rx ring 1
//	           BODY buffers, rx assembly buffer (page-aligned)
type Layout struct {
	State, Shared, QueueDesc             uint64
	TxRing, TxComp, RxRing0, RxRing1     uint64
	RxComp                               uint64
	TxBufs, RxBufs0, RxBufs1, Assembly   uint64
	TxBufSize, RxBufSize0, RxBufSize1    uint32
	TxSize, RxSize0, RxSize1, RxCompSize uint32
	End                                  uint64
}

// Validate checks a configuration against the spec's ring rules.
func (c DriverConfig) Validate() error {
	if !vmxnet3.ValidTxRingSize(c.TxRingSize) {
		return fmt.Errorf("guest: tx ring size %d: must be a multiple of 32 in 32..4096", c.TxRingSize)
	}
	if !vmxnet3.ValidRxRingSize(c.RxRingSize0) || !vmxnet3.ValidRxRingSize(c.RxRingSize1) {
		return fmt.Errorf("guest: rx ring sizes %d/%d: must be multiples of 32 in 32..4096", c.RxRingSize0, c.RxRingSize1)
	}
	if c.MTU < vmxnet3.MinMTU || c.MTU > vmxnet3.MaxMTU {
		return fmt.Errorf("guest: MTU %d: must be in 60..9000", c.MTU)
	}
	if c.Base%mem.PageSize != 0 {
		return fmt.Errorf("guest: driver base %#x is not page-aligned", c.Base)
	}
	return nil
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// Layout computes where everything goes.
func (c DriverConfig) Layout() Layout {
	var l Layout
	l.TxSize, l.RxSize0, l.RxSize1 = c.TxRingSize, c.RxRingSize0, c.RxRingSize1
	l.RxCompSize = c.RxRingSize0 + c.RxRingSize1
	// HEAD buffers hold MTU + 22 bytes (Ethernet, 802.1Q, slack) as Linux
	// sizes them below MTU 3050; above that, frames continue in BODY pages.
	head := uint64(c.MTU) + 22
	if c.MTU > 3050 {
		head = 3072
	}
	l.RxBufSize0 = uint32(alignUp(max(head, vmxnet3.MinHeadBufLen), 64))
	l.RxBufSize1 = mem.PageSize
	l.TxBufSize = uint32(alignUp(uint64(c.MTU)+22, 64))
	p := c.Base
	l.State = p
	p += mem.PageSize
	l.Shared = p
	p += mem.PageSize
	l.QueueDesc = p
	p += 2 * vmxnet3.QueueDescSize
	next := func(n uint64) uint64 {
		p = alignUp(p, vmxnet3.RingBaseAlign)
		at := p
		p += n
		return at
	}
	l.TxRing = next(uint64(l.TxSize) * vmxnet3.DescSize)
	l.TxComp = next(uint64(l.TxSize) * vmxnet3.DescSize)
	l.RxRing0 = next(uint64(l.RxSize0) * vmxnet3.DescSize)
	l.RxRing1 = next(uint64(l.RxSize1) * vmxnet3.DescSize)
	l.RxComp = next(uint64(l.RxCompSize) * vmxnet3.DescSize)
	p = alignUp(p, mem.PageSize)
	l.TxBufs = p
	p += uint64(l.TxSize) * uint64(l.TxBufSize)
	p = alignUp(p, mem.PageSize)
	l.RxBufs0 = p
	p += uint64(l.RxSize0) * uint64(l.RxBufSize0)
	p = alignUp(p, mem.PageSize)
	l.RxBufs1 = p
	p += uint64(l.RxSize1) * uint64(l.RxBufSize1)
	l.Assembly = p
	p += alignUp(vmxnet3.MaxMTU+64, mem.PageSize)
	l.End = p
	return l
}
