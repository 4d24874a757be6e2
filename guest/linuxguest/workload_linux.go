package linuxguest

// The data path of a Linux guest. A frame the kernel sends passes:
//
//  1. eth0's xmit queues it on the TAP; the waiter, armed, sees the fd
//     readable and wakes the owner's vCPU (SetWake), then disarms.
//  2. Step makes sure the tx ring has room for the longest frame the TAP
//     can give (a 64 KiB TSO segment) and only then reads one frame from
//     the TAP into scratch, so a frame is never read without a place to
//     put it: with the ring full, frames wait in the kernel's queue.
//  3. The frame's virtio_net_hdr becomes the offload the driver asks of
//     the NIC (vnethdr.go); the frame is checked (runt, MTU), and the
//     driver copies it into as many tx buffers as it needs, through
//     guest/mem (dirty log), and posts it as one packet (TxSend); the vCPU
//     rings the doorbell at the end of its step, once for the up to
//     txBudget frames of the step: that, and TSO's 64 KiB per read, is
//     the batching a TAP allows (one frame per read or write syscall).
//  4. A read that finds the TAP empty re-arms the waiter (step 1).
//
// A frame the driver receives is checked and written to the TAP behind a
// virtio_net_hdr (Receive); TCP segments that continue a run are merged
// first and written when the run ends or by the Step that follows the
// vCPU's poll (gro.go). The kernel copies what is written, so nothing is
// held past the step.
//
// Ordering: the TAP keeps the kernel's order and Step commits in read
// order, so frames leave in the order eth0 sent them; one vCPU reads at a
// time (see the package doc on ownership).

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

const (
	// txBudget bounds the frames one Step moves, so that a busy kernel
	// cannot keep the vCPU from its rx completions.
	txBudget = 64
	// idlePoll is how often an idle Step looks at the TAP when nobody set
	// a wake function (no waiter can reach the vCPU).
	idlePoll = int64(time.Millisecond)
	// readErrorRetry spaces the reads of a TAP that fails, rather than
	// spinning on a broken device.
	readErrorRetry = int64(100 * time.Millisecond)
	// scratchSize holds any frame a TAP can give, behind its vnet header,
	// and one byte more, so that a read that fills it is known to be too
	// long: a TSO segment of up to vmxnet3.MaxTSOLen, or a frame at an
	// MTU raised to 65535 inside the guest. A longer frame is counted, not
	// truncated.
	scratchSize = vnetHdrLen + max(vmxnet3.MaxTSOLen, 65535+wire.EthHeaderLen+4) + 1
)

// TxRoomNeeded is the free tx buffer space, in bytes, that a Linux guest
// waits for before it reads a frame from its TAP: the longest frame the
// TAP may give (a 64 KiB TSO segment), so that a frame is never read
// without a place to put it. Its driver's tx ring must hold at least this
// much ((TxRingSize-1) × the tx buffer size), or the guest never sends.
const TxRoomNeeded = scratchSize - vnetHdrLen - 1

// counters are a guest's, shared by its Workloads; lock-free.
type counters struct {
	txFrames, txBytes, rxFrames, rxBytes atomic.Uint64
	txRingFull, wakeups                  atomic.Uint64
	drops                                [numDropReasons]atomic.Uint64
}

func (c *counters) drop(r DropReason) { c.drops[r].Add(1) }

// kernelSide is one Linux guest's namespace and TAP, shared by every
// Workload of the VM in this process (see the package doc).
type kernelSide struct {
	cfg    Config          // immutable
	ownsNS bool            // immutable: destroy removes the namespace
	vnet   bool            // immutable: every frame on fd is behind a virtio_net_hdr (IFF_VNET_HDR)
	fd     int             // immutable; used only under mu while !closed
	file   *os.File        // immutable; owns fd, registered with the netpoller
	rc     syscall.RawConn // immutable; file's
	armed  chan struct{}   // cap 1: the waiter may look at the TAP again
	// waiting is true from an arm until the waiter's next wake-up, so
	// that Steps that find the TAP empty while the waiter already watches
	// it do not queue a second look (which would wake the vCPU twice per
	// frame).
	waiting atomic.Bool
	stop    chan struct{} // closed by destroy
	done    chan struct{} // closed when the waiter has returned
	owner   atomic.Pointer[Workload]
	c       counters

	// mu is held shared around every use of fd (Step, Receive) and
	// exclusively by destroy, so fd is never used after it is closed.
	mu     sync.RWMutex
	closed bool // guarded by mu

	users map[*Workload]struct{} // guarded by registry.mu
}

// registry holds the Linux guests of this process by name. Lock order:
// registry.mu before a kernelSide's mu.
var registry = struct {
	mu     sync.Mutex
	guests map[string]*kernelSide // guarded by mu
}{guests: map[string]*kernelSide{}}

// newKernelSide takes over fd (non-blocking, one frame per read and write,
// each behind a virtio_net_hdr if vnet) and starts the guest's waiter.
func newKernelSide(cfg Config, fd int, ownsNS, vnet bool) (*kernelSide, error) {
	f := os.NewFile(uintptr(fd), "tap:"+cfg.Name)
	if f == nil {
		unix.Close(fd)
		return nil, fmt.Errorf("linuxguest: %s: bad TAP fd %d", cfg.Name, fd)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("linuxguest: %s: TAP: %w", cfg.Name, err)
	}
	k := &kernelSide{cfg: cfg, ownsNS: ownsNS, vnet: vnet, fd: fd, file: f, rc: rc,
		armed: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		users: map[*Workload]struct{}{}}
	k.waiting.Store(true)
	k.armed <- struct{}{}
	go k.waiter()
	return k, nil
}

// waiter wakes the owning vCPU when the TAP has a frame. It reads nothing,
// and after a wake-up it waits to be re-armed by a Step that drained the
// TAP: the netpoller reports a readable fd until it is drained, so looking
// again before then would spin.
func (k *kernelSide) waiter() {
	defer close(k.done)
	readable := func(fd uintptr) bool {
		p := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(p[:], 0)
		// An error or POLLERR also wakes the vCPU: its read counts it.
		return err != nil || (n > 0 && p[0].Revents != 0)
	}
	for {
		select {
		case <-k.armed:
		case <-k.stop:
			return
		}
		// RawConn.Read calls readable, and while it says no, parks in the
		// netpoller until the next frame; Close ends it with an error.
		if err := k.rc.Read(readable); err != nil {
			return
		}
		k.c.wakeups.Add(1)
		// Disarm before the wake-up: the Step it causes must find the
		// waiter disarmed when it drains the TAP, or nobody would arm it.
		k.waiting.Store(false)
		if o := k.owner.Load(); o != nil {
			o.kick()
		}
		// With no owner yet, the first Step drains the TAP and re-arms.
	}
}

func (k *kernelSide) arm() {
	if !k.waiting.CompareAndSwap(false, true) {
		return
	}
	select {
	case k.armed <- struct{}{}:
	default:
	}
}

// destroy closes the TAP (removing eth0) and the namespace. Idempotent.
func (k *kernelSide) destroy() error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	k.mu.Unlock()
	close(k.stop)
	err := k.file.Close()
	<-k.done
	if k.ownsNS {
		if nerr := deleteNamespace(k.cfg.Name); nerr != nil && err == nil {
			err = nerr
		}
	}
	return err
}

// Workload is a Linux guest as seen by the vCPU: it moves frames between
// the guest's TAP and its NIC driver.
type Workload struct {
	m        *mem.Memory // immutable
	k        *kernelSide // immutable
	maxFrame int         // immutable
	// scratch receives a frame read from the TAP, rxScratch one written
	// to it; they hold nothing between calls (vCPU only).
	scratch, rxScratch []byte
	// gro is the run of received TCP segments being merged; it holds
	// segments only between a Receive and the end of the vCPU's step
	// (vCPU only).
	gro    groRun
	wake   atomic.Pointer[func()]
	closed atomic.Bool
}

var _ guest.Workload = (*Workload)(nil)

// New returns the Linux guest of cfg.Name over the VM's memory m: the
// guest's namespace and TAP are created, or, if this process already has
// them (a migration's destination), attached to. It starts the guest's
// waiter goroutine when it creates the guest.
func New(m *mem.Memory, cfg Config) (*Workload, error) {
	return attach(m, cfg, createKernelSide)
}

func attach(m *mem.Memory, cfg Config, create func(Config) (*kernelSide, error)) (*Workload, error) {
	if m == nil {
		return nil, fmt.Errorf("%w: no guest memory", ErrConfig)
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	k := registry.guests[cfg.Name]
	if k != nil && k.cfg != cfg {
		return nil, fmt.Errorf("%w: %s is %s %s MTU %d, asked for %s %s MTU %d", ErrMismatch, cfg.Name,
			k.cfg.MAC, k.cfg.Addr, k.cfg.MTU, cfg.MAC, cfg.Addr, cfg.MTU)
	}
	if k == nil {
		var err error
		if k, err = create(cfg); err != nil {
			return nil, err
		}
		registry.guests[cfg.Name] = k
	}
	w := &Workload{m: m, k: k, maxFrame: cfg.maxFrame(), scratch: make([]byte, scratchSize),
		rxScratch: make([]byte, vnetHdrLen+cfg.maxFrame())}
	if k.vnet {
		w.gro.b = make([]byte, vnetHdrLen+groMax)
	}
	k.users[w] = struct{}{}
	return w, nil
}

// Name returns the guest's name: its VM's and its namespace's.
func (w *Workload) Name() string { return w.k.cfg.Name }

// SetWake sets the function that wakes the vCPU running this Workload (a
// VM's interrupt line); nil goes back to polling. It never blocks and must
// not call into the Workload.
func (w *Workload) SetWake(f func()) {
	if f == nil {
		w.wake.Store(nil)
		return
	}
	w.wake.Store(&f)
}

func (w *Workload) kick() {
	if f := w.wake.Load(); f != nil {
		(*f)()
	}
}

// idle is Step's answer when the TAP is empty: the waiter wakes the vCPU,
// or, without a wake function, the vCPU looks again later.
func (w *Workload) idle(now int64) int64 {
	if w.wake.Load() != nil {
		return 0
	}
	return now + idlePoll
}

// Step implements guest.Workload: it moves the frames the kernel sent into
// the tx ring, up to txBudget. It returns 0 when the TAP is empty (the
// waiter wakes the vCPU), now when the tx ring is full (tx completions
// bring the vCPU back).
func (w *Workload) Step(dev guest.NetDev, now int64) int64 {
	k := w.k
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed || w.closed.Load() {
		w.dropRunLocked()
		return 0
	}
	// Segments merged during this step's polls go first: no run outlives
	// a step (gro.go).
	w.flushRunLocked()
	// The vCPU that steps owns the TAP: a migration's destination takes it
	// on its first step, a rolled-back source takes it back.
	if k.owner.Load() != w {
		k.owner.Store(w)
	}
	// The longest frame a read may give that is not dropped unread.
	need := w.maxFrame
	if k.vnet {
		need = TxRoomNeeded
	}
	for range txBudget {
		if dev.TxRoom() < need {
			k.c.txRingFull.Add(1)
			return now
		}
		n, err := readFrame(k.fd, w.scratch)
		if err == unix.EAGAIN {
			k.arm()
			return w.idle(now)
		}
		if err != nil {
			k.c.drop(DropTxReadError)
			return now + readErrorRetry
		}
		if n >= len(w.scratch) {
			k.c.drop(DropTxOverMTU)
			continue
		}
		f := w.scratch[:n]
		var o guest.TxOffload
		if k.vnet {
			if n < vnetHdrLen {
				k.c.drop(DropTxRunt)
				continue
			}
			var why DropReason
			var ok bool
			f = f[vnetHdrLen:]
			if o, why, ok = txOffload(decodeVnetHdr(w.scratch), f, k.cfg.MTU); !ok {
				k.c.drop(why)
				continue
			}
		} else {
			switch {
			case n < wire.EthHeaderLen:
				k.c.drop(DropTxRunt)
				continue
			case n > w.maxFrame:
				k.c.drop(DropTxOverMTU)
				continue
			}
		}
		if !dev.TxSend(f, o) {
			k.c.drop(DropTxOverBuffer)
			continue
		}
		k.c.txFrames.Add(1)
		k.c.txBytes.Add(uint64(len(f)))
	}
	// Budget spent and the TAP may hold more: run again once the vCPU has
	// looked at its rings.
	if w.wake.Load() != nil {
		w.kick()
		return 0
	}
	return now + 1
}

func readFrame(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Read(fd, b)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// Receive implements guest.Workload: it hands the frame to the kernel
// through the TAP. Behind a vnet header, TCP segments are merged (gro.go)
// and written at the end of the run or of the vCPU step; other frames go
// as they came, behind a virtio_net_hdr without flags (the device did not
// verify their checksums, so the kernel does), after the run. The kernel
// copies what is written before the write returns.
func (w *Workload) Receive(dev guest.NetDev, pa uint64, n int, now int64) {
	k := w.k
	if n < wire.EthHeaderLen {
		k.c.drop(DropRxRunt)
		return
	}
	if n > w.maxFrame {
		k.c.drop(DropRxOverMTU)
		return
	}
	b, ok := w.m.View(pa, uint64(n))
	if !ok {
		k.c.drop(DropRxGuestMemory)
		return
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed || w.closed.Load() {
		w.dropRunLocked()
		k.c.drop(DropRxClosed)
		return
	}
	if !k.vnet {
		w.writeLocked(b, 1, n)
		return
	}
	if hlen, ok := tcp4Segment(b); ok {
		if w.gro.n > 0 && w.gro.add(b, hlen) {
			return
		}
		w.flushRunLocked()
		w.gro.add(b, hlen) // starts a run: always takes it
		return
	}
	w.flushRunLocked()
	// One write per frame is the TAP's rule, so the header and the frame
	// are put together here (at most maxFrame bytes).
	clear(w.rxScratch[:vnetHdrLen])
	w.writeLocked(w.rxScratch[:vnetHdrLen+copy(w.rxScratch[vnetHdrLen:], b)], 1, n)
}

// flushRunLocked writes the run of merged segments, if any. Callers hold
// k.mu (shared) and checked that the guest is open.
func (w *Workload) flushRunLocked() {
	if w.gro.n == 0 {
		return
	}
	b, segs, bytes := w.gro.frame()
	w.writeLocked(b, segs, bytes)
}

// dropRunLocked drops the run: the guest closed under it.
func (w *Workload) dropRunLocked() {
	if w.gro.n > 0 {
		_, segs, _ := w.gro.frame()
		w.k.c.drops[DropRxClosed].Add(uint64(segs))
	}
}

// writeLocked writes b, which carries frames frames of bytes bytes as the
// driver received them, to the TAP, and counts them. Callers hold k.mu
// (shared) and checked that the guest is open.
func (w *Workload) writeLocked(b []byte, frames, bytes int) {
	k := w.k
	for {
		_, err := unix.Write(k.fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			k.c.drops[DropRxWriteError].Add(uint64(frames))
			return
		}
		break
	}
	k.c.rxFrames.Add(uint64(frames))
	k.c.rxBytes.Add(uint64(bytes))
}

// Stats returns the guest's counters (continuous across the Workloads of
// one VM in this process). Safe for concurrent use.
func (w *Workload) Stats() Stats {
	c := &w.k.c
	s := Stats{
		TxFrames: c.txFrames.Load(), TxBytes: c.txBytes.Load(),
		RxFrames: c.rxFrames.Load(), RxBytes: c.rxBytes.Load(),
		TxRingFull: c.txRingFull.Load(), Wakeups: c.wakeups.Load(),
	}
	for i := range s.Drops {
		s.Drops[i] = c.drops[i].Load()
	}
	return s
}

// Close detaches the Workload from its guest. Closing the guest's owner
// (the Workload whose vCPU stepped last) or its last Workload removes the
// TAP and the namespace; closing one a migration superseded does not.
// Idempotent; call it after the vCPU stopped.
func (w *Workload) Close() error {
	if !w.closed.CompareAndSwap(false, true) {
		return nil
	}
	k := w.k
	registry.mu.Lock()
	delete(k.users, w)
	last := k.owner.Load() == w || len(k.users) == 0
	if last && registry.guests[k.cfg.Name] == k {
		delete(registry.guests, k.cfg.Name)
	}
	registry.mu.Unlock()
	if !last {
		return nil
	}
	return k.destroy()
}

// Destroy removes the Linux guest named name of this process (TAP and
// namespace), whatever Workloads still use it: they then drop what they
// receive and send nothing. It reports whether there was one.
func Destroy(name string) (bool, error) {
	registry.mu.Lock()
	k := registry.guests[name]
	delete(registry.guests, name)
	registry.mu.Unlock()
	if k == nil {
		return false, nil
	}
	return true, k.destroy()
}
