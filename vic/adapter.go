// Package vic is the virtual interface card: a server adapter presenting
// many dynamic vNICs, each with the VMXNET3 personality, whose frames leave
// on the adapter's uplink to the Fabric Interconnect tagged with a VN-Tag
// naming the vNIC's vif.
//
// Data path (direct, "high-performance" mode):
//
//	tx  1. the guest writes TXPROD in the vNIC's BAR0: no hypervisor; the
//	       doorbell queues the vNIC on the adapter's tx engine
//	    2. the tx engine reads descriptors and buffers straight out of
//	       guest memory (vmxnet3.Device.ProcessTx) into link buffers; the
//	       device model performs the guest's offloads there, so a TSO
//	       packet becomes one MTU-sized frame (link buffer) per segment,
//	       all in one batch: segments are made where frames meet the cable
//	    3. it pushes an 802.1Q tag (the vif's default VLAN, or the tag the
//	       descriptor asked for) and a VN-Tag (d=0, svif=vif) in place
//	    4. the batch goes out on the uplink; completions are written and the
//	       guest's interrupt raised after the send
//	rx  1. the rx engine reads batches from the uplink
//	    2. a frame must carry a VN-Tag with d=1; its dvif selects the vNIC
//	    3. the VN-Tag is stripped, and the 802.1Q tag when it is the vif's
//	       default VLAN
//	    4. the frame is written straight into the guest's rx buffers and
//	       the guest's interrupt raised; with no buffers posted the engine
//	       holds the frame until the guest refills (lossless)
//
// Goroutines: Start runs one tx engine and one rx engine per adapter.
// All exported methods are safe for concurrent use.
package vic

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// DefaultMaxVNICs is the dynamic vNIC pool of one adapter.
const DefaultMaxVNICs = 256

// Config configures an adapter.
type Config struct {
	Name     string    // e.g. "host1/adapter1"
	Uplink   link.Port // cable to the FI's server port
	MaxVNICs int       // size of the dynamic vNIC pool (DefaultMaxVNICs if 0)
	Logger   *slog.Logger
}

// Errors.
var (
	ErrPoolExhausted = errors.New("vic: no free dynamic vNIC on this adapter")
	ErrVifInUse      = errors.New("vic: vif already in use on this adapter")
	ErrBadVif        = errors.New("vic: vif must be 1..4095")
	ErrNoVNIC        = errors.New("vic: no such vNIC")
	ErrClosed        = errors.New("vic: adapter closed")
)

// Adapter is one VIC with its uplink and dynamic vNIC pool.
type Adapter struct {
	name   string
	uplink link.Port
	max    int
	log    *slog.Logger

	mu    sync.Mutex // guards vnics writes and lifecycle
	vnics atomic.Pointer[map[uint16]*VNIC]

	// The tx engine's work queue: vNICs with a pending tx doorbell, each at
	// most once (VNIC.queued), in doorbell order. It is a list, not a
	// bounded channel, so that a doorbell never blocks: deleted vNICs may
	// still sit in it beside a full pool of live ones.
	readyMu sync.Mutex
	ready   []*VNIC       // guarded by readyMu
	kick    chan struct{} // cap 1: ready became non-empty

	done   chan struct{}
	closed atomic.Bool
	wg     sync.WaitGroup

	drops AdapterDrops
}

// AdapterDrops counts frames from the uplink that no vNIC could take.
type AdapterDrops struct {
	BadVNTag   atomic.Uint64 // missing VN-Tag, wrong direction, malformed
	UnknownVif atomic.Uint64 // dvif names no vNIC here
	VifList    atomic.Uint64 // p=1 (vif lists) not used on this adapter
	LoopedSelf atomic.Uint64 // looped frame whose dvif is its own svif
	TxTagFail  atomic.Uint64 // guest frame shorter than an Ethernet header, or no headroom for tags
}

// New returns an adapter; Start runs its engines.
func New(cfg Config) *Adapter {
	if cfg.MaxVNICs <= 0 {
		cfg.MaxVNICs = DefaultMaxVNICs
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Adapter{
		name:   cfg.Name,
		uplink: cfg.Uplink,
		max:    cfg.MaxVNICs,
		log:    log.With("component", "vic", "adapter", cfg.Name),
		kick:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	empty := map[uint16]*VNIC{}
	a.vnics.Store(&empty)
	return a
}

// Name returns the adapter's name.
func (a *Adapter) Name() string { return a.name }

// Drops returns the adapter-level drop counters.
func (a *Adapter) Drops() *AdapterDrops { return &a.drops }

// Start starts the tx and rx engines.
func (a *Adapter) Start() {
	a.wg.Add(2)
	go a.txEngine()
	go a.rxEngine()
}

// Close stops the engines and closes the uplink. Idempotent.
func (a *Adapter) Close() error {
	if a.closed.Swap(true) {
		return nil
	}
	close(a.done)
	err := a.uplink.Close()
	a.wg.Wait()
	return err
}

// CreateVNIC takes a dynamic vNIC from the pool for vif, presenting a
// VMXNET3 device with permanent MAC mac over guest memory m. Interrupts go
// to sink. The guest drives it through the vNIC's BAR0 and BAR1.
func (a *Adapter) CreateVNIC(vif uint16, mac wire.MAC, m *mem.Memory, sink vmxnet3.InterruptSink) (*VNIC, error) {
	if vif == 0 || vif > wire.MaxSVIF {
		return nil, fmt.Errorf("%w (got %d)", ErrBadVif, vif)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed.Load() {
		return nil, ErrClosed
	}
	cur := *a.vnics.Load()
	if _, ok := cur[vif]; ok {
		return nil, fmt.Errorf("%w: vif %d on %s", ErrVifInUse, vif, a.name)
	}
	if len(cur) >= a.max {
		return nil, fmt.Errorf("%w: %s has all %d in use", ErrPoolExhausted, a.name, a.max)
	}
	v := &VNIC{vif: vif, mac: mac, adapter: a, gone: make(chan struct{}), retarget: make(chan struct{})}
	v.dev = vmxnet3.New(m, sink, mac, v.doorbell)
	next := make(map[uint16]*VNIC, len(cur)+1)
	for k, x := range cur {
		next[k] = x
	}
	next[vif] = v
	a.vnics.Store(&next)
	a.log.Info("dynamic vNIC created", "vif", vif, "mac", mac.String())
	return v, nil
}

// DeleteVNIC returns vif's vNIC to the pool; its device is quiesced.
func (a *Adapter) DeleteVNIC(vif uint16) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	cur := *a.vnics.Load()
	v, ok := cur[vif]
	if !ok {
		return fmt.Errorf("%w: vif %d on %s", ErrNoVNIC, vif, a.name)
	}
	v.deleted.Store(true)
	close(v.gone) // wakes an rx engine waiting for this guest's buffers
	v.dev.Quiesce()
	v.stats.txDropped.Add(uint64(v.dropBacklog()))
	// Frames its device still held for the guest are lost with it.
	v.stats.rxDropped.Add(uint64(v.dev.HeldFrames(0)))
	next := make(map[uint16]*VNIC, len(cur))
	for k, x := range cur {
		if k != vif {
			next[k] = x
		}
	}
	a.vnics.Store(&next)
	a.log.Info("dynamic vNIC deleted", "vif", vif)
	return nil
}

// VNIC returns the vNIC bound to vif.
func (a *Adapter) VNIC(vif uint16) (*VNIC, bool) {
	v, ok := (*a.vnics.Load())[vif]
	return v, ok
}

// VNICs returns the vNICs sorted by vif.
func (a *Adapter) VNICs() []*VNIC {
	cur := *a.vnics.Load()
	out := make([]*VNIC, 0, len(cur))
	for _, v := range cur {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].vif < out[j].vif })
	return out
}

// Free returns how many dynamic vNICs are free.
func (a *Adapter) Free() int { return a.max - len(*a.vnics.Load()) }

// SetVifVLAN programs the VLAN the adapter tags vif's untagged frames with
// and strips on the way down (0: none). The FI calls it through its
// VifProgrammer when a vEth's port profile changes.
func (a *Adapter) SetVifVLAN(vif, vlan uint16) {
	if v, ok := a.VNIC(vif); ok {
		v.defaultVLAN.Store(uint32(vlan))
	}
}

// UplinkStats returns the uplink's counters.
func (a *Adapter) UplinkStats() link.PortStats { return a.uplink.Stats() }

// txBatch is the tx engine's batch size (frames per ProcessTx). A TSO
// packet's segments leave in one batch, so it is at least the device's
// vmxnet3.MaxTSOSegs.
const txBatch = 64

var _ [txBatch - vmxnet3.MaxTSOSegs]struct{} // txBatch >= MaxTSOSegs

// txEngine serves tx doorbells: one batch per ready vNIC in turn, so one
// busy guest cannot starve the others.
func (a *Adapter) txEngine() {
	defer a.wg.Done()
	bufs := make([]*link.Buf, txBatch)
	views := make([][]byte, txBatch)
	lens := make([]int, txBatch)
	metas := make([]vmxnet3.TxMeta, txBatch)
	for i := range bufs {
		bufs[i] = link.Get()
	}
	defer func() { link.ReleaseAll(bufs) }()
	var sendErr error
	for {
		v := a.nextReady()
		if v == nil {
			return
		}
		// Clear before processing: a doorbell that arrives meanwhile queues
		// the vNIC again, so no doorbell is lost.
		v.queued.Store(false)
		if v.deleted.Load() {
			continue
		}
		// 1. Frames the hypervisor queued while it drove the vNIC go
		//    first: they are older than anything still in the guest's ring.
		if n, err := a.sendBacklog(v); err == link.ErrClosed {
			return
		} else if n > 0 {
			v.doorbell(vmxnet3.DoorbellTx, 0)
			continue
		}
		// 2. The guest's tx ring. ProcessTx gathers and completes under the
		//    device's queue lock; the send happens after it is released, so
		//    a hand-off never waits for the wire (every cable is lossless).
		//    This engine is the only sender of the vif's frames, so they
		//    leave in ring order whichever side queued them.
		for i := range bufs {
			views[i] = bufs[i].Space()[:link.MaxFrame]
		}
		gathered := 0
		n := v.dev.ProcessTx(0, views, lens, metas, func(n int) {
			gathered = n
			v.txInFlight.Add(int64(n)) // completed in the ring, not yet on the wire
		})
		if gathered > 0 {
			sendErr = a.sendUp(v, bufs[:gathered], lens, metas)
			v.txInFlight.Add(-int64(gathered))
		}
		if sendErr == link.ErrClosed {
			return
		}
		if n > 0 {
			// More may be waiting; take another turn after the others.
			v.doorbell(vmxnet3.DoorbellTx, 0)
		}
	}
}

// nextReady takes the next vNIC with a pending doorbell, waiting for one;
// it returns nil when the adapter closes.
func (a *Adapter) nextReady() *VNIC {
	for {
		select {
		case <-a.done:
			return nil
		default:
		}
		a.readyMu.Lock()
		if n := len(a.ready); n > 0 {
			v := a.ready[0]
			copy(a.ready, a.ready[1:])
			a.ready[n-1] = nil
			a.ready = a.ready[:n-1]
			a.readyMu.Unlock()
			return v
		}
		a.readyMu.Unlock()
		select {
		case <-a.kick:
		case <-a.done:
			return nil
		}
	}
}

// sendUp tags and sends one gathered batch; it replaces the buffers it gave
// away with fresh ones. A frame it cannot tag (a runt shorter than an
// Ethernet header, which a guest can post) is counted and not sent: its
// buffer stays with the caller, moved behind the sent ones.
func (a *Adapter) sendUp(v *VNIC, bufs []*link.Buf, lens []int, metas []vmxnet3.TxMeta) error {
	vlan := uint16(v.defaultVLAN.Load())
	tag := wire.VNTag{SVIF: v.vif}
	var bytes uint64
	k := 0 // frames tagged so far, kept in order at the front of bufs
	for i, b := range bufs {
		b.Off, b.Len = link.Headroom, lens[i]
		if !tagUp(b, metas[i], vlan, tag) {
			a.drops.TxTagFail.Add(1)
			continue
		}
		bytes += uint64(lens[i])
		bufs[k], bufs[i] = b, bufs[k]
		k++
	}
	bufs = bufs[:k]
	n, err := a.uplink.Send(bufs)
	for i := 0; i < n; i++ {
		bufs[i] = link.Get()
	}
	v.stats.txFrames.Add(uint64(n))
	v.stats.txBytes.Add(bytes)
	if err != nil {
		v.stats.txDropped.Add(uint64(len(bufs) - n))
	}
	return err
}

// tagUp pushes the 802.1Q tag (the descriptor's ti/tci, else the vif's
// default VLAN, unless the guest tagged the frame itself) and the VN-Tag in
// place. It reports false, leaving the frame unsent, for a frame shorter
// than an Ethernet header or a buffer without headroom.
func tagUp(b *link.Buf, meta vmxnet3.TxMeta, vlan uint16, tag wire.VNTag) bool {
	f := b.Bytes()
	if len(f) < wire.EthHeaderLen {
		return false
	}
	tagged := f[12] == 0x81 && f[13] == 0x00
	tci, insert := uint16(0), false
	switch {
	case meta.TI && !tagged:
		// The descriptor asked for 802.1Q insertion (spec §4.2 ti/tci).
		tci, insert = meta.TCI, true
	case vlan != 0 && !tagged:
		tci, insert = wire.TCI(0, vlan), true
	}
	if b.Off < wire.VNTagLen+wire.VLANTagLen {
		return false
	}
	if insert {
		wire.PutVLANTag(b.InsertAt(12, wire.VLANTagLen), tci)
	}
	wire.PutVNTag(b.InsertAt(12, wire.VNTagLen), tag)
	return true
}

// rxEngine takes frames from the uplink into the vNICs' rx rings.
func (a *Adapter) rxEngine() {
	defer a.wg.Done()
	batch := max(a.uplink.BatchSize(), 1)
	bufs := make([]*link.Buf, batch)
	owner := make([]*VNIC, batch)
	views := make([][]byte, 0, batch)
	var h wire.FabricHeader
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Tracked like the engines, so that Close returns only once it is gone.
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		select {
		case <-a.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		n, err := a.uplink.Recv(bufs)
		if err != nil {
			return
		}
		vnics := *a.vnics.Load()
		// Keep the frames that go to a vNIC at the front, in order, with
		// the vNIC of each; deliver runs of the same vNIC together.
		k := 0
		for i := 0; i < n; i++ {
			b := bufs[i]
			v := a.classify(vnics, b, &h)
			if v == nil {
				b.Release()
				bufs[i] = nil
				continue
			}
			bufs[i] = nil
			bufs[k] = b
			owner[k] = v
			k++
		}
		for i := 0; i < k; {
			j := i + 1
			for j < k && owner[j] == owner[i] {
				j++
			}
			v := owner[i]
			if !a.deliverTo(ctx, v, bufs[i:j], views) {
				link.ReleaseAll(bufs[:k])
				return
			}
			i = j
		}
		link.ReleaseAll(bufs[:k])
		clear(owner[:k])
	}
}

// classify checks a downstream frame's VN-Tag, strips tags in place and
// returns the vNIC it goes to (nil: dropped and counted).
func (a *Adapter) classify(vnics map[uint16]*VNIC, b *link.Buf, h *wire.FabricHeader) *VNIC {
	if err := wire.ParseFabric(b.Bytes(), h); err != nil || !h.HasVNTag || !h.VNTag.FromBridge {
		a.drops.BadVNTag.Add(1)
		return nil
	}
	if h.VNTag.Pointer {
		a.drops.VifList.Add(1)
		return nil
	}
	v, ok := vnics[h.VNTag.DVIF]
	if !ok || v.deleted.Load() {
		a.drops.UnknownVif.Add(1)
		return nil
	}
	v.stats.arrived.Add(1)
	if h.VNTag.Looped && h.VNTag.SVIF == h.VNTag.DVIF {
		// Source pruning (protocols.md §1.2): never back to the sender.
		a.drops.LoopedSelf.Add(1)
		v.stats.handed.Add(1)
		return nil
	}
	b.RemoveAt(12, wire.VNTagLen)
	// Default VLAN 0 means none: a priority tag (VID 0) is kept with its PCP.
	if vlan := uint16(v.defaultVLAN.Load()); h.HasVLAN && vlan != 0 && h.VID() == vlan {
		b.RemoveAt(12, wire.VLANTagLen)
	}
	return v
}

// deliverTo hands bufs to v, in order: into its device (which copies them
// into the guest's rx ring, or holds them while the guest has no buffers),
// or, while the hypervisor drives the vNIC, to the host side, which takes
// the buffers (their entries become nil). It waits while the receiver is
// full — the guest or the host has not caught up — as a no-drop class
// pauses its link, and it re-checks where the vif's frames go after every
// wait, since a mode switch may have moved them. With no bufs it only lets
// the device write what it holds. It returns false when the adapter closes.
func (a *Adapter) deliverTo(ctx context.Context, v *VNIC, bufs []*link.Buf, views [][]byte) bool {
	for {
		v.rxMu.Lock()
		var wait <-chan struct{}
		retarget := v.retarget
		done := false
		kind := int32(1)
		if host := v.host; host != nil {
			kind = 2
			// Count before Take: the buffers it takes are the host's at
			// once, and may be released before Take returns.
			var bytes uint64
			for _, b := range bufs {
				bytes += uint64(b.Len)
			}
			n, full := host.Take(bufs)
			for _, b := range bufs[n:] {
				bytes -= uint64(b.Len)
			}
			for i := 0; i < n; i++ {
				bufs[i] = nil
			}
			v.stats.handed.Add(uint64(n))
			bufs = bufs[n:]
			v.stats.rxFrames.Add(uint64(n))
			v.stats.rxBytes.Add(bytes)
			v.stats.rxToHost.Add(uint64(n))
			done = len(bufs) == 0
			if full && !done {
				wait = host.Space()
			}
		} else {
			views = views[:0]
			for _, b := range bufs {
				views = append(views, b.Bytes())
			}
			r := v.dev.DeliverBatch(0, views)
			// Frames count when they reach the guest's buffers; frames
			// the device holds count then.
			v.stats.rxFrames.Add(uint64(r.Written))
			v.stats.rxBytes.Add(uint64(r.WrittenBytes))
			v.stats.rxDropped.Add(uint64(r.Dropped))
			v.stats.handed.Add(uint64(r.Consumed))
			bufs = bufs[r.Consumed:]
			done = !r.Full && len(bufs) == 0
			if r.Full {
				wait = v.dev.RxSpace(0)
			}
		}
		v.rxMu.Unlock()
		if done {
			return true
		}
		if wait == nil {
			continue
		}
		v.stats.rxWaits.Add(1)
		v.waiting.Store(kind)
		select {
		case <-wait:
		case <-retarget:
		case <-v.gone:
		case <-ctx.Done():
			return false
		}
		v.waiting.Store(0)
		if v.deleted.Load() {
			v.stats.rxDropped.Add(uint64(len(bufs)))
			v.stats.handed.Add(uint64(len(bufs)))
			return true
		}
	}
}

// VNIC is one dynamic vNIC: a VMXNET3 device and its vif.
type VNIC struct {
	vif         uint16
	mac         wire.MAC
	adapter     *Adapter
	dev         *vmxnet3.Device
	defaultVLAN atomic.Uint32
	queued      atomic.Bool // on the adapter's ready queue
	deleted     atomic.Bool
	gone        chan struct{} // closed by DeleteVNIC, after deleted is set
	stats       vnicStats

	// rxMu is held while the rx engine hands the vif's frames to the
	// device or the host side, and by a hand-off: it is what makes a mode
	// switch see every frame in exactly one place (host.go).
	// txMu guards backlog: frames the hypervisor queued (host mode).
	txMu     sync.Mutex
	backlog  []*link.Buf
	txOut    []*link.Buf // the tx engine's scratch for one backlog batch
	wantRoom atomic.Bool
	// txInFlight counts frames taken from the guest's ring or the host
	// queue that the tx engine has not yet handed to the uplink.
	txInFlight atomic.Int64
	roomFn     atomic.Pointer[func()]

	rxMu sync.Mutex
	host link.Sink // guarded by rxMu; non-nil while the hypervisor drives the vNIC
	// retarget is closed (and replaced) by every hand-off, under rxMu: a
	// broadcast, because the rx engine and a Kick's flush may both wait on
	// the side the hand-off just retired, and both must look again.
	retarget chan struct{}
	handoffs atomic.Uint64
	waiting  atomic.Int32 // 0, or what the rx engine waits on: 1 the device, 2 the host side
}

type vnicStats struct {
	txFrames, txBytes atomic.Uint64
	rxFrames, rxBytes atomic.Uint64
	rxToHost          atomic.Uint64
	arrived           atomic.Uint64 // frames the uplink brought for this vif
	handed            atomic.Uint64 // of those, frames the rx engine has handed on (device, host side or drop)
	txDropped         atomic.Uint64
	rxDropped         atomic.Uint64
	rxWaits           atomic.Uint64
}

// VNICStats are a vNIC's counters as the adapter sees them.
type VNICStats struct {
	TxFrames, TxBytes uint64 // sent up the uplink
	RxFrames, RxBytes uint64 // written into guest buffers
	TxDropped         uint64 // lost because the uplink closed
	RxDropped         uint64 // rejected by the device (filters, inactive, errors)
	RxWaits           uint64 // times the adapter waited for guest rx buffers
	Waiting           string // what the rx engine waits on now: "", "guest", "host"
	// Arrived counts every frame the uplink brought for the vif, before any
	// filter: the FI's egress count for the vEth, seen from this side. A
	// move of the vEth compares the two (a count barrier).
	Arrived uint64
	// BacklogFrames are frames the hypervisor queued, not yet sent.
	BacklogFrames int
	// TxInFlight are frames taken for sending but not yet on the uplink.
	TxInFlight int64
	// Handed counts the arrived frames the rx engine has passed on; while
	// it is below Arrived, frames are in the engine's hands.
	Handed uint64
}

// Stats returns the vNIC's counters.
func (v *VNIC) Stats() VNICStats {
	return VNICStats{
		Arrived: v.stats.arrived.Load(), BacklogFrames: HostTxDepth - v.HostTxRoom(), TxInFlight: v.txInFlight.Load(), Handed: v.stats.handed.Load(),
		TxFrames: v.stats.txFrames.Load(), TxBytes: v.stats.txBytes.Load(),
		RxFrames: v.stats.rxFrames.Load(), RxBytes: v.stats.rxBytes.Load(),
		TxDropped: v.stats.txDropped.Load(), RxDropped: v.stats.rxDropped.Load(),
		RxWaits: v.stats.rxWaits.Load(), Waiting: [...]string{"", "guest", "host"}[v.waiting.Load()],
	}
}

// Vif returns the vNIC's vif.
func (v *VNIC) Vif() uint16 { return v.vif }

// MAC returns the vNIC's permanent MAC.
func (v *VNIC) MAC() wire.MAC { return v.mac }

// DefaultVLAN returns the VLAN programmed for the vif.
func (v *VNIC) DefaultVLAN() uint16 { return uint16(v.defaultVLAN.Load()) }

// Device returns the vNIC's VMXNET3 device model.
func (v *VNIC) Device() *vmxnet3.Device { return v.dev }

// BAR0 is the vNIC's pass-through register window: in direct mode the guest
// writes doorbells here with no hypervisor in between.
func (v *VNIC) BAR0() vmxnet3.BAR { return v.dev.BAR0() }

// BAR1 is the vNIC's control register window; the hypervisor fronts it.
func (v *VNIC) BAR1() vmxnet3.BAR { return v.dev.BAR1() }

// doorbell queues the vNIC on the tx engine; it never blocks (the ready
// list holds every vNIC at most once).
func (v *VNIC) doorbell(kind vmxnet3.DoorbellKind, _ int) {
	if kind != vmxnet3.DoorbellTx {
		return
	}
	if !v.queued.Swap(true) {
		a := v.adapter
		a.readyMu.Lock()
		a.ready = append(a.ready, v)
		a.readyMu.Unlock()
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
}
