// Package vem is the per-host soft switch. In VM-FEX pass-through mode it
// does no switching: each VM port carries the VM's frames between the
// hypervisor's emulated VMXNET3 device and that VM's dynamic vNIC on the
// adapter, now driven by the hypervisor, so the Fabric Interconnect sees the
// same vEth whichever device carries the VM.
//
// Receive path (fabric to VM), in pass-through mode:
//
//  1. the adapter's rx engine hands the vif's frames to the port
//     (link.Sink.Take), transferring the buffers: the port's queue is
//     the host-side rx ring the hypervisor drives;
//  2. the port's goroutine takes them in order and offers them to the
//     emulated device (GuestRx.DeliverBatch), which copies them into guest
//     memory and raises the guest's interrupt;
//  3. while the guest has no buffers the device holds what it took and the
//     goroutine waits for the guest's refill; the queue fills; the adapter
//     then waits (lossless).
//
// Transmit path (VM to fabric):
//
//  1. in the hypervisor's doorbell trap, on the vCPU, the emulated device
//     gathers as many packets as the vNIC's host tx queue has room for and
//     Send queues them there: the vCPU never waits for the fabric;
//  2. the adapter's tx engine sends them, tagged with the vif like the
//     guest's own, before anything it later takes from the guest's ring,
//     so frames keep their order across mode switches;
//  3. when the queue was full, the adapter calls the device back once it
//     has room (OnTxRoom), as a backend's completion does.
//
// Goroutines: each Port runs one delivery goroutine between Start and
// Close. All methods are safe for concurrent use.
package vem

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vmxnet3"
)

// Mode is the VEM's switching mode.
type Mode uint8

// Modes.
const (
	// ModePassThrough is VM-FEX: no local switching, every frame goes to
	// or comes from the VM's own vNIC on the adapter.
	ModePassThrough Mode = iota + 1
)

// QueueDepth is the number of frames a port's host-side rx ring holds.
const QueueDepth = 1024

// batch is the frames offered to the guest per DeliverBatch.
const batch = 64

// Uplink is the VM's dynamic vNIC as the hypervisor drives it: a host tx
// queue that never blocks (vic.VNIC implements it).
type Uplink interface {
	HostQueue(bufs []*link.Buf) int
	HostTxRoom() int
	HostWantRoom() bool
	OnHostTxRoom(fn func())
}

// GuestRx is the VM side of a port: the emulated device's receive queue.
type GuestRx interface {
	DeliverBatch(q int, frames [][]byte) vmxnet3.RxResult
	RxSpace(q int) <-chan struct{}
}

// Errors.
var (
	ErrClosed   = errors.New("vem: port closed")
	ErrNoGuest  = errors.New("vem: no emulated device attached to the port")
	ErrNoUplink = errors.New("vem: port has no vNIC uplink")
)

// Switch is one host's VEM.
type Switch struct {
	host string
	mode Mode
	log  *slog.Logger

	mu    sync.Mutex
	ports map[string]*Port
}

// New returns the VEM of host, in pass-through mode.
func New(host string, log *slog.Logger) *Switch {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Switch{host: host, mode: ModePassThrough, log: log.With("component", "vem", "host", host), ports: map[string]*Port{}}
}

// Mode returns the VEM's mode.
func (s *Switch) Mode() Mode { return s.mode }

// AddPort creates the port of one VM vNIC ("vm/eth0"); Start runs it.
func (s *Switch) AddPort(name string, up Uplink) *Port {
	p := &Port{
		name:   name,
		up:     up,
		log:    s.log.With("port", name),
		ring:   make([]*link.Buf, QueueDepth),
		more:   make(chan struct{}, 1),
		space:  make(chan struct{}, 1),
		kick:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		frames: make([][]byte, 0, batch),
	}
	s.mu.Lock()
	s.ports[name] = p
	s.mu.Unlock()
	return p
}

// RemovePort closes and forgets a port.
func (s *Switch) RemovePort(name string) {
	s.mu.Lock()
	p := s.ports[name]
	delete(s.ports, name)
	s.mu.Unlock()
	if p != nil {
		p.Close()
	}
}

// Port is one VM vNIC's attachment to the VEM.
type Port struct {
	name string
	up   Uplink
	log  *slog.Logger

	// mu serialises delivery to the guest against attach/detach: the
	// delivery goroutine takes frames from the queue and offers them to
	// the guest only while holding it.
	mu    sync.Mutex
	guest GuestRx // guarded by mu; nil while the vNIC runs direct

	qmu  sync.Mutex // guards ring, head, n
	ring []*link.Buf
	head int
	n    int

	more   chan struct{} // frames were queued
	space  chan struct{} // room was made in the queue
	kick   chan struct{} // re-check the guest (after attach)
	done   chan struct{}
	closed atomic.Bool
	wg     sync.WaitGroup
	frames [][]byte // scratch of the delivery goroutine

	stats struct {
		rxFrames, txFrames, txDropped atomic.Uint64
	}
}

// Name returns the port's name.
func (p *Port) Name() string { return p.name }

// Start runs the port's delivery goroutine.
func (p *Port) Start() {
	p.wg.Add(1)
	go p.deliverLoop()
}

// Close stops the port and releases queued frames. Idempotent.
func (p *Port) Close() {
	if p.closed.Swap(true) {
		return
	}
	close(p.done)
	p.wg.Wait()
	p.qmu.Lock()
	for p.n > 0 {
		p.ring[p.head].Release()
		p.ring[p.head] = nil
		p.head = (p.head + 1) % len(p.ring)
		p.n--
	}
	p.qmu.Unlock()
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Take implements link.Sink: it takes ownership of as many buffers
// as the host-side queue has room for, in order, and reports full when it
// could not take them all (then wait for Space).
func (p *Port) Take(bufs []*link.Buf) (n int, full bool) {
	if p.closed.Load() {
		return 0, true
	}
	p.qmu.Lock()
	for n < len(bufs) && p.n < len(p.ring) {
		p.ring[(p.head+p.n)%len(p.ring)] = bufs[n]
		p.n++
		n++
	}
	p.qmu.Unlock()
	if n > 0 {
		signal(p.more)
	}
	return n, n < len(bufs)
}

// Space implements link.Sink: it receives after the queue drained.
func (p *Port) Space() <-chan struct{} { return p.space }

// Queued returns the frames waiting in the host-side queue.
func (p *Port) Queued() int {
	p.qmu.Lock()
	defer p.qmu.Unlock()
	return p.n
}

// TxRoom returns how many frames Send would take now.
func (p *Port) TxRoom() int {
	if p.up == nil {
		return 0
	}
	return p.up.HostTxRoom()
}

// OnTxRoom sets the function called, on the adapter's tx engine, after the
// vNIC's host queue, found full by WantTxRoom, has room again.
func (p *Port) OnTxRoom(fn func()) {
	if p.up != nil {
		p.up.OnHostTxRoom(fn)
	}
}

// WantTxRoom asks for an OnTxRoom call once there is room; it reports true,
// promising nothing, when there is room already.
func (p *Port) WantTxRoom() bool {
	if p.up == nil {
		return false
	}
	return p.up.HostWantRoom()
}

// Send queues frames from the emulated device on the vNIC. It never waits:
// it takes (and owns) as many as there is room for (the device asks TxRoom
// first) and returns how many.
func (p *Port) Send(bufs []*link.Buf) int {
	if p.closed.Load() || p.up == nil {
		return 0
	}
	n := p.up.HostQueue(bufs)
	p.stats.txFrames.Add(uint64(n))
	return n
}

// AttachGuest makes g the receiver of the port's frames (the VM now runs
// on its emulated device) and kicks delivery: frames the device holds from
// the hand-off go first.
func (p *Port) AttachGuest(g GuestRx) {
	p.mu.Lock()
	p.guest = g
	p.mu.Unlock()
	signal(p.kick)
}

// DetachGuest stops delivery to the emulated device and returns copies of
// the frames still queued for it, oldest first, emptying the queue. It
// runs while the vNIC's rx is held by the adapter, so no frame can arrive
// meanwhile; the hand-off appends them behind the device's held frames.
func (p *Port) DetachGuest() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.guest = nil
	p.qmu.Lock()
	var out [][]byte
	for p.n > 0 {
		b := p.ring[p.head]
		out = append(out, append([]byte(nil), b.Bytes()...))
		b.Release()
		p.ring[p.head] = nil
		p.head = (p.head + 1) % len(p.ring)
		p.n--
	}
	p.qmu.Unlock()
	signal(p.space)
	return out
}

// deliverLoop moves frames from the host-side queue to the guest.
func (p *Port) deliverLoop() {
	defer p.wg.Done()
	var wait <-chan struct{} // the guest's RxSpace while it holds frames
	for {
		select {
		case <-p.done:
			return
		case <-p.more:
		case <-p.kick:
		case <-wait:
		}
		wait = nil
		for {
			full, progressed, space := p.deliverOnce()
			if full {
				wait = space
				break
			}
			if !progressed {
				break
			}
		}
	}
}

// deliverOnce offers one batch to the guest under mu. It reports whether
// the guest is full (and the channel that signals room) and whether it
// made progress.
func (p *Port) deliverOnce() (full, progressed bool, space <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.guest
	if g == nil {
		return false, false, nil
	}
	p.qmu.Lock()
	k := min(p.n, batch)
	p.frames = p.frames[:0]
	for i := 0; i < k; i++ {
		p.frames = append(p.frames, p.ring[(p.head+i)%len(p.ring)].Bytes())
	}
	p.qmu.Unlock()
	// Offered even when empty: the device writes the frames it holds.
	r := g.DeliverBatch(0, p.frames)
	if r.Consumed > 0 {
		p.qmu.Lock()
		for i := 0; i < r.Consumed; i++ {
			p.ring[p.head].Release()
			p.ring[p.head] = nil
			p.head = (p.head + 1) % len(p.ring)
			p.n--
		}
		p.qmu.Unlock()
		p.stats.rxFrames.Add(uint64(r.Consumed))
		signal(p.space)
	}
	return r.Full, r.Consumed > 0 || r.Written > 0, g.RxSpace(0)
}

// PortStats are a port's counters.
type PortStats struct {
	RxFrames  uint64 // delivered to the emulated device
	TxFrames  uint64 // sent up through the vNIC
	TxDropped uint64 // lost because the uplink closed
	Queued    int
}

// Stats returns the port's counters.
func (p *Port) Stats() PortStats {
	return PortStats{
		RxFrames: p.stats.rxFrames.Load(), TxFrames: p.stats.txFrames.Load(),
		TxDropped: p.stats.txDropped.Load(), Queued: p.Queued(),
	}
}

var _ link.Sink = (*Port)(nil)
