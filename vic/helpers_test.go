package vic_test

// Test rig for the adapter: a started Adapter on one end of an in-memory
// cable, the test playing the Fabric Interconnect on the other end, and
// guests that drive their dynamic vNICs with the real VMXNET3 driver and
// vCPU loop (or by hand, for misbehaving guests).

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vic"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// testWait is the failure deadline of every wait in these tests: a bound
// on a hang, never a stand-in for hardware time.
const testWait = 20 * time.Second

// Addresses used in the test frames.
var (
	fiMAC  = wire.MAC{0x02, 0xf1, 0, 0, 0, 0x01} // a peer beyond the FI
	peerIP = [4]byte{10, 0, 0, 254}
)

func vmMAC(vif uint16) wire.MAC { return wire.MAC{0x02, 0x00, 0x0c, 0x00, byte(vif >> 8), byte(vif)} }
func vmIP(vif uint16) [4]byte   { return [4]byte{10, 0, byte(vif >> 8), byte(vif)} }

// waitUntil polls cond until it holds, failing the test after testWait.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", testWait, what)
		}
		time.Sleep(time.Millisecond) // polling a condition, not modelling time
	}
}

// ---- the adapter and the FI end of its uplink ----

type rig struct {
	t      testing.TB
	a      *vic.Adapter
	fiPort *link.MemPort // the FI's end of the uplink
	reader *fiReader     // nil unless startReader was called
}

// newRig starts an adapter with a pool of maxVNICs on a cable of depth
// frames per direction (0: the default). Cleanup closes the adapter.
func newRig(t testing.TB, maxVNICs, depth int) *rig {
	t.Helper()
	up, fi := link.NewMemCable(depth)
	return newRigMax(t, up, fi, maxVNICs)
}

// newRigOn starts an adapter on the cable end up; fi is the FI's end.
func newRigOn(t testing.TB, up link.Port, fi *link.MemPort) *rig { return newRigMax(t, up, fi, 0) }

func newRigMax(t testing.TB, up link.Port, fi *link.MemPort, maxVNICs int) *rig {
	a := vic.New(vic.Config{Name: "test/adapter1", Uplink: up, MaxVNICs: maxVNICs})
	a.Start()
	r := &rig{t: t, a: a, fiPort: fi}
	t.Cleanup(func() {
		_ = a.Close()
		_ = fi.Close()
		if r.reader != nil {
			r.reader.wait()
		}
	})
	return r
}

// fiReader receives everything the adapter sends up and keeps copies.
type fiReader struct {
	mu     sync.Mutex
	frames [][]byte       // guarded by mu
	bySVIF map[uint16]int // frames per VN-Tag svif; guarded by mu
	n      atomic.Int64
	done   chan struct{}
}

// startReader starts the FI's receive loop; it ends when the cable closes.
func (r *rig) startReader() *fiReader {
	fr := &fiReader{done: make(chan struct{}), bySVIF: map[uint16]int{}}
	r.reader = fr
	go func() {
		defer close(fr.done)
		bufs := make([]*link.Buf, link.MemBatch)
		var h wire.FabricHeader
		for {
			n, err := r.fiPort.Recv(bufs)
			if err != nil {
				return
			}
			fr.mu.Lock()
			for _, b := range bufs[:n] {
				fr.frames = append(fr.frames, bytes.Clone(b.Bytes()))
				if wire.ParseFabric(b.Bytes(), &h) == nil && h.HasVNTag {
					fr.bySVIF[h.VNTag.SVIF]++
				}
			}
			fr.mu.Unlock()
			fr.n.Add(int64(n))
			link.ReleaseAll(bufs[:n])
		}
	}()
	return fr
}

func (fr *fiReader) wait() { <-fr.done }

// snapshot returns the frames received so far.
func (fr *fiReader) snapshot() [][]byte {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	return append([][]byte(nil), fr.frames...)
}

// count returns how many frames came from svif vif.
func (fr *fiReader) count(vif uint16) int {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	return fr.bySVIF[vif]
}

// waitVif waits until at least n frames came from vif and returns them.
func (fr *fiReader) waitVif(t testing.TB, vif uint16, n int) [][]byte {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d frames from vif %d on the uplink", n, vif), func() bool { return fr.count(vif) >= n })
	return fromVif(fr.snapshot(), vif)
}

// waitN waits until at least n frames have arrived and returns them all.
func (fr *fiReader) waitN(t testing.TB, n int) [][]byte {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d frames on the uplink (have %d)", n, fr.n.Load()), func() bool { return fr.n.Load() >= int64(n) })
	return fr.snapshot()
}

// fromVif returns the frames whose VN-Tag svif is vif.
func fromVif(frames [][]byte, vif uint16) [][]byte {
	var out [][]byte
	var h wire.FabricHeader
	for _, f := range frames {
		if wire.ParseFabric(f, &h) == nil && h.HasVNTag && h.VNTag.SVIF == vif {
			out = append(out, f)
		}
	}
	return out
}

// sendDown sends copies of frames from the FI to the adapter, in order.
func (r *rig) sendDown(t testing.TB, frames ...[]byte) {
	t.Helper()
	if err := sendFrames(r.fiPort, frames); err != nil {
		t.Fatalf("FI send: %v", err)
	}
}

func sendFrames(p link.Port, frames [][]byte) error {
	batch := make([]*link.Buf, 0, link.MemBatch)
	for len(frames) > 0 {
		batch = batch[:0]
		for _, f := range frames[:min(len(frames), link.MemBatch)] {
			b := link.Get()
			if !b.SetBytes(f) {
				b.Release()
				link.ReleaseAll(batch)
				return fmt.Errorf("frame of %d bytes does not fit a buffer", len(f))
			}
			batch = append(batch, b)
		}
		n, err := p.Send(batch)
		if err != nil {
			link.ReleaseAll(batch[n:])
			return err
		}
		frames = frames[n:]
	}
	return nil
}

// dropTotal sums the adapter's drop counters for downstream frames.
func dropTotal(a *vic.Adapter) uint64 {
	d := a.Drops()
	return d.BadVNTag.Load() + d.UnknownVif.Load() + d.VifList.Load() + d.LoopedSelf.Load()
}

type drops struct{ BadVNTag, UnknownVif, VifList, LoopedSelf, TxTagFail uint64 }

func dropsOf(a *vic.Adapter) drops {
	d := a.Drops()
	return drops{d.BadVNTag.Load(), d.UnknownVif.Load(), d.VifList.Load(), d.LoopedSelf.Load(), d.TxTagFail.Load()}
}

// ---- frames ----

// probeFrame builds an untagged IPv4/UDP probe frame of frameLen bytes.
func probeFrame(dst, src wire.MAC, srcIP, dstIP [4]byte, p wire.Probe, frameLen int) []byte {
	b := make([]byte, max(frameLen, wire.ProbeFrameMinLen))
	n := wire.BuildProbeFrame(b, dst, src, srcIP, dstIP, p, frameLen)
	return b[:n]
}

// pushTags returns a copy of the untagged frame f with an 802.1Q tag
// (tci != nil) and a VN-Tag in front of it (vn != nil), as on the wire.
func pushTags(f []byte, vn *wire.VNTag, tci *uint16) []byte {
	out := append([]byte(nil), f[:12]...)
	if vn != nil {
		out = binary.BigEndian.AppendUint16(out, wire.EtherTypeVNTag)
		out = binary.BigEndian.AppendUint32(out, vn.Word())
	}
	if tci != nil {
		out = binary.BigEndian.AppendUint16(out, wire.EtherTypeVLAN)
		out = binary.BigEndian.AppendUint16(out, *tci)
	}
	return append(out, f[12:]...)
}

// downFrame is a probe from the FI to vif (seq), VN-Tagged d=1 with
// svif 0 (the FI's own uplink, no source vif here), with an optional 802.1Q
// tag.
func downFrame(vif uint16, seq uint64, tci *uint16) []byte {
	f := probeFrame(vmMAC(vif), fiMAC, peerIP, vmIP(vif), wire.Probe{SrcVM: 0, DstVM: uint32(vif), Seq: seq}, 0)
	return pushTags(f, &wire.VNTag{FromBridge: true, DVIF: vif}, tci)
}

func ptr[T any](v T) *T { return &v }

// ---- guests ----

// fwdSink forwards interrupts to a vCPU set after the vNIC is created (the
// vCPU needs the driver, which needs the vNIC), and counts them by vector.
type fwdSink struct {
	cpu atomic.Pointer[guest.VCPU]
	n   [vmxnet3.MaxIntrs]atomic.Uint64
}

func (s *fwdSink) Interrupt(v int) {
	s.n[v].Add(1)
	if c := s.cpu.Load(); c != nil {
		c.Interrupt(v)
	}
}

// probeWL is the test workload: it sends numbered probe frames to dst and
// records the probes it receives.
type probeWL struct {
	m        *mem.Memory // immutable
	vif      uint16      // immutable: source VM id and addresses
	dst      wire.MAC    // immutable
	frameLen int         // immutable
	tci      *uint16     // immutable: the guest tags its frames itself
	keep     bool        // immutable: keep a copy of every frame received
	keepLast bool        // immutable: keep a copy of the last frame received
	count    bool        // immutable: only count received frames (benchmarks: no allocation)
	scratch  []byte      // vCPU goroutine only

	target  atomic.Int64 // frames to send in total
	sent    atomic.Int64
	rx      atomic.Int64 // frames received
	nonProb atomic.Int64 // received frames that were not intact probes
	wantRx  atomic.Int64 // signal notify when rx reaches it (0: never)
	notify  chan struct{}
	mu      sync.Mutex
	seqs    []uint64 // received probe sequence numbers; guarded by mu
	frames  [][]byte // received frames when keep; guarded by mu
	last    []byte   // the last frame received when keepLast; guarded by mu
}

var _ guest.Workload = (*probeWL)(nil)

func (w *probeWL) Step(dev guest.NetDev, now int64) int64 {
	for w.sent.Load() < w.target.Load() {
		pa, size, ok := dev.TxReserve()
		if !ok {
			return now // ring full: call again after completions
		}
		seq := uint64(w.sent.Load())
		n := wire.BuildProbeFrame(w.scratch, w.dst, dev.MAC(), vmIP(w.vif), peerIP,
			wire.Probe{SrcVM: uint32(w.vif), Seq: seq}, w.frameLen)
		if w.tci != nil {
			copy(w.scratch[16:n+4], w.scratch[12:n])
			wire.PutVLANTag(w.scratch[12:16], *w.tci)
			n += wire.VLANTagLen
		}
		if n == 0 || n > size {
			panic(fmt.Sprintf("probeWL: frame of %d bytes for a %d-byte buffer", n, size))
		}
		_ = w.m.Write(pa, w.scratch[:n])
		dev.TxCommit(n)
		w.sent.Add(1)
	}
	return 0
}

func (w *probeWL) Receive(dev guest.NetDev, pa uint64, n int, now int64) {
	if w.count {
		w.received1()
		return
	}
	v, ok := w.m.View(pa, uint64(n))
	if !ok {
		w.nonProb.Add(1)
		return
	}
	p, ok := wire.ParseProbeFrame(v)
	if !ok {
		w.nonProb.Add(1)
	}
	if w.keep || w.keepLast || ok {
		w.mu.Lock()
		if ok && !w.keepLast {
			w.seqs = append(w.seqs, p.Seq)
		}
		if w.keep {
			w.frames = append(w.frames, bytes.Clone(v))
		}
		if w.keepLast {
			w.last = append(w.last[:0], v...)
		}
		w.mu.Unlock()
	}
	w.received1()
}

func (w *probeWL) received1() {
	if rx := w.rx.Add(1); rx == w.wantRx.Load() {
		select {
		case w.notify <- struct{}{}:
		default:
		}
	}
}

// waitRx waits until the guest has received n frames in all.
func (w *probeWL) waitRx(n int64) {
	w.wantRx.Store(n)
	for w.rx.Load() < n {
		<-w.notify
	}
}

func (w *probeWL) received() []uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]uint64(nil), w.seqs...)
}

func (w *probeWL) lastFrame() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return bytes.Clone(w.last)
}

func (w *probeWL) receivedFrames() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([][]byte(nil), w.frames...)
}

// vm is one guest on a dynamic vNIC.
type vm struct {
	vif    uint16
	m      *mem.Memory
	vnic   *vic.VNIC
	sink   *fwdSink
	drv    *guest.Driver
	cpu    *guest.VCPU
	wl     *probeWL
	cancel context.CancelFunc
	done   chan struct{}
	runErr error
}

type vmOpts struct {
	frameLen int
	tci      *uint16
	keep     bool
	keepLast bool
	count    bool
	send     int  // frames to send from the start
	noRun    bool // probe and open the device, but start no vCPU
}

// newVM creates vif's vNIC on the rig's adapter, probes and opens it with
// the real driver and (unless noRun) runs its vCPU. Cleanup stops it.
func (r *rig) newVM(t testing.TB, vif uint16, o vmOpts) *vm {
	t.Helper()
	m, err := mem.New(8 << 20)
	if err != nil {
		t.Fatal(err)
	}
	sink := &fwdSink{}
	vn, err := r.a.CreateVNIC(vif, vmMAC(vif), m, sink)
	if err != nil {
		t.Fatalf("CreateVNIC(%d): %v", vif, err)
	}
	cfg := guest.DefaultDriverConfig()
	cfg.Base = 1 << 20
	drv, err := guest.NewDriver(m, vn.BAR0(), vn.BAR1(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	wl := &probeWL{m: m, vif: vif, dst: fiMAC, frameLen: o.frameLen, tci: o.tci, keep: o.keep, keepLast: o.keepLast, count: o.count,
		scratch: make([]byte, 16384), notify: make(chan struct{}, 1)}
	wl.target.Store(int64(o.send))
	g := &vm{vif: vif, m: m, vnic: vn, sink: sink, drv: drv, wl: wl, done: make(chan struct{})}
	g.cpu = guest.NewVCPU(drv, wl, nil)
	sink.cpu.Store(g.cpu)
	if err := drv.Probe(); err != nil {
		t.Fatalf("vif %d Probe: %v", vif, err)
	}
	if err := drv.Up(); err != nil {
		t.Fatalf("vif %d Up: %v", vif, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	if o.noRun {
		close(g.done)
	} else {
		g.start(ctx)
	}
	t.Cleanup(g.stop)
	return g
}

func (g *vm) start(ctx context.Context) {
	go func() {
		defer close(g.done)
		g.runErr = g.cpu.Run(ctx)
	}()
}

// run starts the vCPU of a guest created with noRun.
func (g *vm) run() {
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	g.done = make(chan struct{})
	g.start(ctx)
}

func (g *vm) stop() {
	g.cancel()
	<-g.done
}

// send asks the guest to send n more frames and wakes its vCPU.
func (g *vm) send(n int) {
	g.wl.target.Add(int64(n))
	g.cpu.Interrupt(0) // a doorbell from the "guest kernel": spurious interrupts are harmless
}

// allowVLAN adds vid to the guest's VLAN filter table (spec §6), as a
// driver does when a VLAN interface is added; the guest must not be running.
func (g *vm) allowVLAN(vid uint16) {
	ds := g.drv.Layout().Shared
	pa := ds + vmxnet3.DSVFTable + uint64(vid/32)*4
	g.m.PutU32(pa, g.m.U32(pa)|1<<(vid%32))
	g.vnic.BAR1().Write32(vmxnet3.RegCMD, vmxnet3.CmdUpdateVLANFilters)
}

// checkSeqs fails unless seqs is exactly 0..n-1 in order.
func checkSeqs(t testing.TB, what string, seqs []uint64, n int) {
	t.Helper()
	if len(seqs) != n {
		t.Errorf("%s: got %d frames, want %d", what, len(seqs), n)
	}
	for i, s := range seqs {
		if s != uint64(i) {
			t.Errorf("%s: frame %d carries seq %d, want %d (lost, duplicated or reordered)", what, i, s, i)
			return
		}
	}
}

// seqsOf extracts the probe sequence numbers of frames.
func seqsOf(t testing.TB, frames [][]byte) []uint64 {
	t.Helper()
	out := make([]uint64, 0, len(frames))
	for i, f := range frames {
		p, ok := wire.ParseProbeFrame(f)
		if !ok {
			t.Fatalf("frame %d is not an intact probe: % x", i, f)
		}
		out = append(out, p.Seq)
	}
	return out
}

// rawTx writes tx descriptors by hand into a guest's tx ring (a guest
// whose vCPU does not run), as a buggy or hostile driver would.
type rawTx struct {
	g    *vm
	next uint32 // next slot to fill
	gen  bool   // the driver side's gen
}

func newRawTx(g *vm) *rawTx { return &rawTx{g: g, gen: true} }

// buf returns the guest address of the driver's tx buffer for slot i.
func (r *rawTx) buf(i uint32) uint64 {
	l := r.g.drv.Layout()
	return l.TxBufs + uint64(i)*uint64(l.TxBufSize)
}

// frame writes f into the tx buffer of the next slot and posts a
// single-descriptor packet for it with the given TI/TCI.
func (r *rawTx) frame(f []byte, ti bool, tci uint16) {
	pa := r.buf(r.next)
	_ = r.g.m.Write(pa, f)
	r.post(vmxnet3.TxDesc{Addr: pa, Len: uint32(len(f)), EOP: true, CQ: true, TI: ti, TCI: tci})
}

// post publishes d (its gen is set here) in the next slot: addr and dw3
// first, then dw2 with the gen bit (release), as spec §4.6 requires.
func (r *rawTx) post(d vmxnet3.TxDesc) {
	l := r.g.drv.Layout()
	d.Gen = r.gen
	addr, dw2, dw3 := d.Words()
	pa := l.TxRing + uint64(r.next)*vmxnet3.DescSize
	r.g.m.PutU64(pa+vmxnet3.TxDescAddr, addr)
	r.g.m.PutU32(pa+vmxnet3.TxDescDW3, dw3)
	r.g.m.StoreU32Release(pa+vmxnet3.TxDescDW2, dw2)
	r.next++
	if r.next == l.TxSize {
		r.next, r.gen = 0, !r.gen
	}
}

// doorbell writes TXPROD through BAR0.
func (r *rawTx) doorbell() { r.g.vnic.BAR0().Write32(vmxnet3.TxPROD(0), r.next) }
