package hypervisor

// The hypervisor's emulated VMXNET3 device. In emulated mode:
//
//	tx  1. the guest writes TXPROD in BAR0: the write traps into the
//	       hypervisor, handled synchronously on the vCPU as a VM exit is
//	    2. the device model copies the packets out of guest memory into
//	       host buffers (vmxnet3.Device.ProcessTx), performing checksum
//	       offload and TSO (one buffer per segment: a TSO packet waits
//	       until the VEM has room for all its segments), and applies
//	       802.1Q insertion the descriptor asked for
//	    3. the VEM port sends them up through the VM's dynamic vNIC, which
//	       the hypervisor now drives; the FI sees the same vEth
//	    4. completions are written and the guest's vector raised, still in
//	       the trap
//	rx  the VEM port's goroutine offers the vif's frames to the device,
//	    which copies them into guest buffers and raises the vector.
//
// BAR1 (the control path) is the same device's, reached through the
// hypervisor's control path as in direct mode.

import (
	"sync"
	"sync/atomic"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// FrameSender is where the emulated device's transmitted frames go: the
// VM's VEM port. Send never waits: it takes up to TxRoom frames (and their
// ownership); when it has no room the device asks WantTxRoom and is called
// back (OnTxRoom) when there is, so a trap never blocks the vCPU on the
// fabric.
type FrameSender interface {
	Send(bufs []*link.Buf) int
	TxRoom() int
	WantTxRoom() bool
	OnTxRoom(fn func())
}

// emuBatch is the frames gathered per ProcessTx in the trap; a TSO
// packet's segments leave in one batch, so it is at least
// vmxnet3.MaxTSOSegs.
const emuBatch = 64

var _ [emuBatch - vmxnet3.MaxTSOSegs]struct{} // emuBatch >= MaxTSOSegs

// EmulatedNIC is the hypervisor's VMXNET3 device for one VM vNIC.
type EmulatedNIC struct {
	dev  *vmxnet3.Device
	out  FrameSender
	bar0 trapBAR0

	// txMu serialises tx processing between the vCPU's trap and the VEM's
	// room call-back; it guards the scratch below.
	txMu  sync.Mutex
	bufs  []*link.Buf
	views [][]byte
	lens  []int
	metas []vmxnet3.TxMeta

	exits   atomic.Uint64 // BAR0 writes that trapped
	txKicks atomic.Uint64 // TXPROD traps
	sendErr atomic.Uint64 // frames the VEM port refused (closed)
	txWaits atomic.Uint64 // times tx waited for room in the VEM
}

// NewEmulatedNIC returns an emulated VMXNET3 device over m, interrupting
// sink, sending to out. Until state is restored into it, it is in the
// post-reset state.
func NewEmulatedNIC(m *mem.Memory, sink vmxnet3.InterruptSink, mac wire.MAC, out FrameSender) *EmulatedNIC {
	e := &EmulatedNIC{out: out}
	e.dev = vmxnet3.New(m, sink, mac, nil)
	e.bar0 = trapBAR0{e}
	e.bufs = make([]*link.Buf, emuBatch)
	e.views = make([][]byte, emuBatch)
	e.lens = make([]int, emuBatch)
	e.metas = make([]vmxnet3.TxMeta, emuBatch)
	for i := range e.bufs {
		e.bufs[i] = link.Get()
	}
	out.OnTxRoom(func() { e.processTx(0) })
	return e
}

// Device returns the device model.
func (e *EmulatedNIC) Device() *vmxnet3.Device { return e.dev }

// BAR0 is the trapping register window the guest sees in emulated mode.
func (e *EmulatedNIC) BAR0() vmxnet3.BAR { return e.bar0 }

// BAR1 is the device's control registers.
func (e *EmulatedNIC) BAR1() vmxnet3.BAR { return e.dev.BAR1() }

// DeliverBatch implements vem.GuestRx.
func (e *EmulatedNIC) DeliverBatch(q int, frames [][]byte) vmxnet3.RxResult {
	return e.dev.DeliverBatch(q, frames)
}

// RxSpace implements vem.GuestRx.
func (e *EmulatedNIC) RxSpace(q int) <-chan struct{} { return e.dev.RxSpace(q) }

// Exits returns the BAR0 writes that trapped and how many were doorbells.
func (e *EmulatedNIC) Exits() (exits, txKicks uint64) { return e.exits.Load(), e.txKicks.Load() }

// trapBAR0 is BAR0 as an emulated device exposes it: every access is a VM
// exit into the hypervisor.
type trapBAR0 struct{ e *EmulatedNIC }

func (t trapBAR0) Read32(off uint32) uint32 { return t.e.dev.BAR0().Read32(off) }

func (t trapBAR0) Write32(off uint32, v uint32) {
	e := t.e
	e.exits.Add(1)
	e.dev.BAR0().Write32(off, v)
	if off >= vmxnet3.RegTXPROD && off < vmxnet3.RegTXPROD+vmxnet3.RegStride*vmxnet3.MaxTxQueues && off%vmxnet3.RegStride == 0 {
		e.txKicks.Add(1)
		e.processTx(int((off - vmxnet3.RegTXPROD) / vmxnet3.RegStride))
	}
}

// processTx drains tx queue q into the VEM as far as the VEM has room: the
// work of a doorbell trap, or of the VEM's call-back once it has room.
func (e *EmulatedNIC) processTx(q int) {
	e.txMu.Lock()
	defer e.txMu.Unlock()
	// Usually one frame's room is enough to make progress; a TSO packet
	// that did not fit needs room for all its segments, which leave
	// together (TxBufsNeeded, asked only when a batch took nothing).
	need := 1
	for {
		room := min(e.out.TxRoom(), emuBatch)
		if room < need {
			// WantTxRoom keeps the call-back asked for while the room is
			// short of a batch; look again in case it grew meanwhile.
			if e.out.WantTxRoom() && min(e.out.TxRoom(), emuBatch) >= need {
				continue
			}
			e.txWaits.Add(1)
			return
		}
		for i, b := range e.bufs[:room] {
			e.views[i] = b.Space()[:link.MaxFrame]
		}
		if e.dev.ProcessTx(q, e.views[:room], e.lens, e.metas, e.send) == 0 {
			if need = e.dev.TxBufsNeeded(q); need > room {
				continue // a TSO packet waits for more room: ask for it
			}
			return
		}
	}
}

// send hands one gathered batch to the VEM port and replaces the buffers.
func (e *EmulatedNIC) send(n int) {
	out := e.bufs[:n]
	for i, b := range out {
		b.Off, b.Len = link.Headroom, e.lens[i]
		if m := e.metas[i]; m.TI && b.Len >= wire.EthHeaderLen {
			f := b.Bytes()
			if !(f[12] == 0x81 && f[13] == 0x00) {
				// The device model applies the descriptor's 802.1Q
				// insertion (spec §4.2 ti/tci) before the frame leaves.
				wire.PutVLANTag(b.InsertAt(12, wire.VLANTagLen), m.TCI)
			}
		}
	}
	k := e.out.Send(out)
	if k < n {
		// Only when the port closed: TxRoom said there was room.
		e.sendErr.Add(uint64(n - k))
		link.ReleaseAll(out[k:])
	}
	for i := range out {
		e.bufs[i] = link.Get()
	}
}

// kickTx processes the tx ring once, as after a hand-off: the guest may
// have posted packets the previous device never saw.
func (e *EmulatedNIC) kickTx() { e.processTx(0) }
