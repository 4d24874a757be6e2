package hypervisor_test

// Tests of the live mode switch (hypervisor/switch.go, spec §7.4) with a
// real guest (driver, vCPU) over the VM's memory, a fake direct vNIC built
// around a vmxnet3.Device (the hypervisor cannot import vic), and a real
// VEM port whose uplink is a fake vNIC host queue. Both devices' senders
// write into one recorder, so "every frame once, in order" is checked on
// the one stream the fabric would see.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/internal/testutil"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vem"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// deadline bounds every wait for a condition (a failure deadline).
const deadline = 20 * time.Second

var (
	vmMAC   = wire.MAC{0x02, 0x00, 0x00, 0x00, 0x00, 0x10}
	peerMAC = wire.MAC{0x02, 0x00, 0x00, 0x00, 0x00, 0x20}
)

// txFrame is the guest's frame i: to the peer, carrying i, of a length
// unique to i modulo 977.
func txFrame(i int) []byte {
	f := make([]byte, 60+i%977)
	wire.PutEth(f, peerMAC, vmMAC, 0x88B5)
	binary.BigEndian.PutUint32(f[14:], uint32(i))
	for j := 18; j < len(f); j++ {
		f[j] = byte(i + j)
	}
	return f
}

// rxFrame is the fabric's frame i for the guest.
func rxFrame(i int) []byte {
	f := make([]byte, 64+i%300)
	wire.PutEth(f, vmMAC, peerMAC, 0x88B6)
	binary.BigEndian.PutUint32(f[14:], uint32(i))
	f[len(f)-1] = byte(i)
	return f
}

func seqOf(f []byte) int {
	if len(f) < 18 {
		return -1
	}
	return int(binary.BigEndian.Uint32(f[14:]))
}

// recorder is the wire beyond both devices: the frames the direct vNIC sent
// and those the emulated device queued on the vNIC's host queue, in the
// order they left.
type recorder struct {
	mu     sync.Mutex
	frames [][]byte
	direct int // how many came from the direct device
}

func (r *recorder) add(f []byte, direct bool) {
	r.mu.Lock()
	r.frames = append(r.frames, append([]byte(nil), f...))
	if direct {
		r.direct++
	}
	r.mu.Unlock()
}

func (r *recorder) snapshot() (frames [][]byte, direct int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.frames...), r.direct
}

// checkFrames fails unless got is exactly want(from..to-1), in order.
func checkFrames(t *testing.T, what string, got [][]byte, want func(int) []byte, n int) {
	t.Helper()
	if len(got) != n {
		t.Errorf("%s: %d frames, want %d", what, len(got), n)
	}
	for i := 0; i < len(got) && i < n; i++ {
		if w := want(i); string(got[i]) != string(w) {
			t.Fatalf("%s: frame %d carries %d (%d bytes), want %d (%d bytes)", what, i, seqOf(got[i]), len(got[i]), i, len(w))
		}
	}
}

// fakeVNIC is a dynamic vNIC as the hypervisor manages it (DirectNIC),
// modelled on vic.VNIC: its device's tx runs in the doorbell, its rx is an
// adapter engine (rxEngine) that hands the vif's frames to the device, or
// to the host sink while the hypervisor drives the vNIC.
type fakeVNIC struct {
	dev *vmxnet3.Device
	rec *recorder

	txMu  sync.Mutex // serialises ProcessTx; guards the scratch
	bufs  [][]byte
	lens  []int
	metas []vmxnet3.TxMeta

	rxMu     sync.Mutex // the adapter's rx for the vif; held across hand-offs
	host     link.Sink  // guarded by rxMu; non-nil while host-driven
	retarget chan struct{}

	badLoad  atomic.Bool // DetachToHost hands load a state of an unknown version
	detaches atomic.Int32
	attaches atomic.Int32
	kicks    atomic.Int32
}

var _ hypervisor.DirectNIC = (*fakeVNIC)(nil)

func newFakeVNIC(vm *hypervisor.VM, rec *recorder) *fakeVNIC {
	n := &fakeVNIC{rec: rec, retarget: make(chan struct{}, 1)}
	n.dev = vmxnet3.New(vm.Memory(), vm, vm.MAC(), func(k vmxnet3.DoorbellKind, q int) {
		if k == vmxnet3.DoorbellTx {
			n.processTx()
		}
	})
	for i := 0; i < 16; i++ {
		n.bufs = append(n.bufs, make([]byte, link.MaxFrame))
	}
	n.lens = make([]int, len(n.bufs))
	n.metas = make([]vmxnet3.TxMeta, len(n.bufs))
	return n
}

func (n *fakeVNIC) BAR0() vmxnet3.BAR { return n.dev.BAR0() }
func (n *fakeVNIC) BAR1() vmxnet3.BAR { return n.dev.BAR1() }

// processTx sends everything the guest posted, as the adapter's tx engine.
func (n *fakeVNIC) processTx() {
	n.txMu.Lock()
	defer n.txMu.Unlock()
	for n.dev.ProcessTx(0, n.bufs, n.lens, n.metas, func(k int) {
		for i := 0; i < k; i++ {
			n.rec.add(n.bufs[i][:n.lens[i]], true)
		}
	}) > 0 {
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (n *fakeVNIC) DetachToHost(host link.Sink, pause func() error, load func(vmxnet3.State) error) error {
	n.dev.Freeze()
	if err := pause(); err != nil {
		n.resume()
		return err
	}
	n.rxMu.Lock()
	defer n.rxMu.Unlock()
	st, err := n.dev.Save()
	if err == nil {
		if n.badLoad.Load() {
			st.Version = vmxnet3.StateVersion + 98
		}
		err = load(st)
	}
	if err != nil {
		n.resume()
		return err
	}
	n.dev.Discard()
	n.host = host
	n.detaches.Add(1)
	signal(n.retarget)
	return nil
}

// resume runs the vNIC on after a failed hand-off, "as before": thawed,
// with the doorbells it ignored while frozen served.
func (n *fakeVNIC) resume() {
	n.dev.Thaw()
	n.processTx()
	signal(n.retarget)
}

func (n *fakeVNIC) AttachFromHost(save func() (vmxnet3.State, [][]byte, error)) error {
	n.rxMu.Lock()
	defer n.rxMu.Unlock()
	if n.host == nil {
		return errors.New("fake vNIC: not host-driven")
	}
	st, extra, err := save()
	if err != nil {
		return err
	}
	if err := n.dev.Restore(st); err != nil {
		return err
	}
	if err := n.dev.AddPending(0, extra); err != nil {
		return err
	}
	n.host = nil
	n.attaches.Add(1)
	n.dev.Thaw()
	signal(n.retarget)
	return nil
}

func (n *fakeVNIC) Kick() {
	n.kicks.Add(1)
	n.processTx()
	n.rxMu.Lock()
	if n.host == nil && n.dev.HeldFrames(0) > 0 {
		n.dev.DeliverBatch(0, nil)
	}
	n.rxMu.Unlock()
	signal(n.retarget)
}

// rxEngine hands frames(0..total-1) to the vif's current receiver, in
// order, waiting (losslessly) for room, then keeps flushing frames the
// device holds until ctx ends.
func (n *fakeVNIC) rxEngine(ctx context.Context, total int) {
	next := 0
	var batch [][]byte
	for {
		if len(batch) == 0 && next < total {
			for k := 0; k < 32 && next < total; k++ {
				batch = append(batch, rxFrame(next))
				next++
			}
		}
		var wait <-chan struct{}
		n.rxMu.Lock()
		if n.host != nil {
			bufs := make([]*link.Buf, len(batch))
			for i, f := range batch {
				bufs[i] = link.Get()
				bufs[i].SetBytes(f)
			}
			k, full := n.host.Take(bufs)
			link.ReleaseAll(bufs[k:])
			batch = batch[k:]
			if full {
				wait = n.host.Space()
			}
		} else {
			res := n.dev.DeliverBatch(0, batch)
			batch = batch[res.Consumed:]
			if res.Full || len(batch) > 0 || (next == total && n.dev.HeldFrames(0) > 0) {
				wait = n.dev.RxSpace(0)
			}
		}
		n.rxMu.Unlock()
		if wait == nil && len(batch) == 0 && next == total {
			wait = make(chan struct{}) // nothing to do until a retarget
		}
		if wait != nil {
			select {
			case <-wait:
			case <-n.retarget:
			case <-ctx.Done():
				return
			}
		}
	}
}

// fakeUplink is the vNIC's host tx queue: it records every frame it takes.
// With room < 0 it always has room; otherwise it takes at most room frames
// and, when asked for room it does not have, a drainer goroutine gives it
// more and calls the room call-back, as the adapter's tx engine does.
type fakeUplink struct {
	rec   *recorder
	mu    sync.Mutex
	room  int
	want  bool
	fn    func()
	wantc chan struct{}
}

var _ vem.Uplink = (*fakeUplink)(nil)

func (u *fakeUplink) HostQueue(bufs []*link.Buf) int {
	u.mu.Lock()
	n := len(bufs)
	if u.room >= 0 {
		n = min(n, u.room)
		u.room -= n
	}
	u.mu.Unlock()
	for _, b := range bufs[:n] {
		u.rec.add(b.Bytes(), false)
		b.Release()
	}
	return n
}

func (u *fakeUplink) HostTxRoom() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.room < 0 {
		return 1 << 20
	}
	return u.room
}

func (u *fakeUplink) HostWantRoom() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.room != 0 {
		return true
	}
	u.want = true
	signal(u.wantc)
	return false
}

func (u *fakeUplink) OnHostTxRoom(fn func()) {
	u.mu.Lock()
	u.fn = fn
	u.mu.Unlock()
}

// drain gives 7 frames of room whenever asked, until ctx ends.
func (u *fakeUplink) drain(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-u.wantc:
		}
		u.mu.Lock()
		u.room += 7
		fn, want := u.fn, u.want
		u.want = false
		u.mu.Unlock()
		if want && fn != nil {
			fn()
		}
	}
}

// seqWorkload sends txFrame(0..total-1) as fast as the tx ring allows and
// records the sequence numbers of what it receives. A test can hold the
// vCPU inside Step (close, open).
type seqWorkload struct {
	m       *mem.Memory
	mu      sync.Mutex
	total   int
	sent    int
	got     [][]byte
	gate    chan struct{} // while non-nil, Step waits for it to close
	entered chan struct{} // receives when Step starts waiting on gate
}

// close makes the next Step wait inside the workload until open.
func (w *seqWorkload) close() {
	w.mu.Lock()
	if w.gate == nil {
		w.gate = make(chan struct{})
	}
	w.mu.Unlock()
}

// open releases a Step waiting at the gate.
func (w *seqWorkload) open() {
	w.mu.Lock()
	if w.gate != nil {
		close(w.gate)
		w.gate = nil
	}
	w.mu.Unlock()
}

func (w *seqWorkload) Receive(dev guest.NetDev, pa uint64, n int, now int64) {
	v, _ := w.m.View(pa, uint64(n))
	w.mu.Lock()
	w.got = append(w.got, append([]byte(nil), v...))
	w.mu.Unlock()
}

func (w *seqWorkload) Step(dev guest.NetDev, now int64) int64 {
	w.mu.Lock()
	if g := w.gate; g != nil {
		w.mu.Unlock()
		signal(w.entered)
		<-g
		w.mu.Lock()
	}
	defer w.mu.Unlock()
	for w.sent < w.total {
		pa, size, ok := dev.TxReserve()
		if !ok {
			return now
		}
		f := txFrame(w.sent)
		if len(f) > size {
			panic(fmt.Sprintf("tx buffer of %d bytes for a %d-byte frame", size, len(f)))
		}
		_ = w.m.Write(pa, f)
		dev.TxCommit(len(f))
		w.sent++
	}
	return 0
}

func (w *seqWorkload) setTotal(n int) {
	w.mu.Lock()
	w.total = n
	w.mu.Unlock()
}

func (w *seqWorkload) progress() (sent int, got [][]byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sent, append([][]byte(nil), w.got...)
}

// rig is a VM with a fake vNIC, a VEM port on a fake uplink, and a guest.
type rig struct {
	vm   *hypervisor.VM
	nic  *fakeVNIC
	port *vem.Port
	up   *fakeUplink
	rec  *recorder
	wl   *seqWorkload
}

type rigConfig struct {
	polling bool
	room    int  // uplink room: < 0 unlimited
	noVNIC  bool // attach the vNIC direct only, without a VEM port
}

func newRig(t *testing.T, rc rigConfig) *rig {
	t.Helper()
	r := &rig{rec: &recorder{}}
	dcfg := guest.DefaultDriverConfig()
	dcfg.Base = 1 << 20
	dcfg.Polling = rc.polling
	vm, err := hypervisor.NewVM(hypervisor.VMConfig{
		Name: "vm1", ID: 1, MAC: vmMAC, Driver: dcfg,
		Workload: func(m *mem.Memory) (guest.Workload, error) {
			r.wl = &seqWorkload{m: m, entered: make(chan struct{}, 1)}
			return r.wl, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.vm = vm
	r.nic = newFakeVNIC(vm, r.rec)
	if rc.noVNIC {
		if err := vm.AttachDirect(r.nic); err != nil {
			t.Fatal(err)
		}
		return r
	}
	r.up = &fakeUplink{rec: r.rec, room: rc.room, wantc: make(chan struct{}, 1)}
	r.port = vem.New("host1", nil).AddPort("vm1/eth0", r.up)
	t.Cleanup(r.port.Close)
	if err := vm.AttachVNIC(r.nic, r.port); err != nil {
		t.Fatal(err)
	}
	if vm.Mode() != hypervisor.ModeDirect {
		t.Fatalf("mode %v after AttachVNIC, want direct", vm.Mode())
	}
	return r
}

// start runs the port, the uplink's drainer and the VM, then the vNIC's rx
// engine (rxTotal frames; once the driver is up, so that none is dropped
// by an inactive device); cleanup stops them all.
func (r *rig) start(t *testing.T, rxTotal int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.up.drain(ctx) }()
	r.port.Start()
	if err := r.vm.Start(); err != nil {
		cancel()
		wg.Wait()
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); r.nic.rxEngine(ctx, rxTotal) }()
	t.Cleanup(func() {
		r.wl.open()
		if err := r.vm.Stop(); err != nil {
			t.Errorf("VM stopped with %v", err)
		}
		cancel()
		wg.Wait()
	})
}

// trafficDone reports whether the fabric saw txTotal frames and the guest
// received rxTotal.
func (r *rig) trafficDone(txTotal, rxTotal int) bool {
	r.rec.mu.Lock()
	tx := len(r.rec.frames)
	r.rec.mu.Unlock()
	r.wl.mu.Lock()
	rx := len(r.wl.got)
	r.wl.mu.Unlock()
	return tx >= txTotal && rx >= rxTotal
}

// waitProgress waits until the fabric saw tx frames and the guest got rx.
func waitProgress(t *testing.T, r *rig, tx, rx int) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !r.trafficDone(tx, rx) {
		if time.Now().After(end) {
			t.Fatalf("no traffic within %v", deadline)
		}
		time.Sleep(time.Millisecond) // polling a condition
	}
}

// waitTraffic waits until the fabric saw txTotal frames and the guest got
// rxTotal, then checks both streams.
func (r *rig) waitTraffic(t *testing.T, txTotal, rxTotal int) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		frames, _ := r.rec.snapshot()
		_, got := r.wl.progress()
		if len(frames) >= txTotal && len(got) >= rxTotal {
			break
		}
		if time.Now().After(end) {
			steps, idle := r.vm.VCPU().Steps()
			t.Fatalf("after %v: fabric saw %d of %d guest frames, guest got %d of %d; mode %v, vCPU steps %d idle %d, driver %+v",
				deadline, len(frames), txTotal, len(got), rxTotal, r.vm.Mode(), steps, idle, r.vm.Driver().Stats())
		}
		time.Sleep(time.Millisecond) // polling a condition, not modelling time
	}
	frames, direct := r.rec.snapshot()
	checkFrames(t, "frames on the wire", frames, txFrame, txTotal)
	_, got := r.wl.progress()
	checkFrames(t, "frames the guest received", got, rxFrame, rxTotal)
	t.Logf("%d frames sent direct, %d through the VEM; %d received", direct, len(frames)-direct, len(got))
}

func switchTo(t *testing.T, vm *hypervisor.VM, to hypervisor.Mode) hypervisor.SwitchTiming {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	tm, err := vm.SwitchMode(ctx, to)
	if err != nil {
		t.Fatalf("SwitchMode(%v): %v", to, err)
	}
	if m := vm.Mode(); m != to {
		t.Fatalf("Mode() = %v after SwitchMode(%v)", m, to)
	}
	return tm
}

// TestSwitchModeUnderTraffic switches direct → emulated → direct over and
// over while the guest transmits as fast as its ring allows and the fabric
// sends to it: the frames the fake uplink and the direct device sent,
// together, are the guest's frames once each, in order, and the guest
// receives the fabric's frames once each, in order.
func TestSwitchModeUnderTraffic(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rc       rigConfig
		switches int
	}{
		{"interrupts", rigConfig{room: -1}, 30},
		{"polling", rigConfig{room: -1, polling: true}, 30},
		{"uplink backpressure", rigConfig{room: 0}, 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			const txTotal, rxTotal = 30000, 30000
			r := newRig(t, tc.rc)
			r.wl.setTotal(txTotal)
			r.start(t, rxTotal)
			// Switch only once traffic flows both ways, and on while it does.
			waitProgress(t, r, txTotal/20, rxTotal/20)
			var maxPause time.Duration
			switches, during := 0, 0
			budget := time.Now().Add(15 * time.Second) // for switching on while traffic lasts
			for ; switches < tc.switches || (!r.trafficDone(txTotal, rxTotal) && time.Now().Before(budget)); switches++ {
				if !r.trafficDone(txTotal, rxTotal) {
					during++
				}
				tm := switchTo(t, r.vm, hypervisor.ModeEmulated)
				maxPause = max(maxPause, tm.Total)
				tm = switchTo(t, r.vm, hypervisor.ModeDirect)
				maxPause = max(maxPause, tm.Total)
			}
			t.Logf("%d round trips, %d of them with traffic in flight; longest pause %v", switches, during, maxPause)
			if during < tc.switches/2 {
				t.Errorf("only %d of %d round trips overlapped the traffic", during, switches)
			}
			r.waitTraffic(t, txTotal, rxTotal)
			if d, a := r.nic.detaches.Load(), r.nic.attaches.Load(); d != int32(switches) || a != int32(switches) {
				t.Errorf("vNIC saw %d detaches and %d attaches, want %d each", d, a, switches)
			}
			if st := r.vm.Driver().Stats(); st.RxErrors != 0 || st.QueueErrors != 0 || st.Resets != 0 {
				t.Errorf("driver counters %+v, want no errors", st)
			}
		})
	}
}

// TestSwitchModeScripted is a transcript of two switches on a guest whose
// vCPU the test plays itself, so every count is exact: frames held by
// either device and queued on the VEM port cross the switches in order,
// SwitchTiming reports them, the discarded device stays silent, and the
// UPT1 counters continue.
func TestSwitchModeScripted(t *testing.T) {
	r := newRig(t, rigConfig{room: -1})
	drv := r.vm.Driver()
	if err := drv.Probe(); err != nil {
		t.Fatal(err)
	}
	if err := drv.Up(); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixNano()
	// step is one vCPU iteration: driver work, workload, doorbell.
	step := func() {
		t.Helper()
		for {
			n, err := drv.Poll(r.wl, now, 1024)
			if err != nil {
				t.Fatalf("Poll: %v", err)
			}
			r.wl.Step(drv, now)
			drv.Flush()
			if n == 0 {
				return
			}
		}
	}
	rxRing := int(drv.Layout().RxSize0) - 1 // buffers the driver posts

	// 1. Direct: 3 frames out; the fabric sends rxRing+9 frames, 9 of
	// which the device holds for lack of buffers.
	r.wl.setTotal(3)
	step()
	rx := make([][]byte, rxRing+9)
	for i := range rx {
		rx[i] = rxFrame(i)
	}
	if res := r.nic.dev.DeliverBatch(0, rx); res.Written != rxRing || res.Held != 9 {
		t.Fatalf("DeliverBatch to the direct device = %+v, want %d written, 9 held", res, rxRing)
	}

	// 2. → emulated: the 9 held frames move to the emulated device.
	tm := switchTo(t, r.vm, hypervisor.ModeEmulated)
	checkTiming(t, tm, hypervisor.ModeDirect, hypervisor.ModeEmulated, 9)
	emu := r.vm.Emulated().Device()
	if h := emu.HeldFrames(0); h != 9 {
		t.Fatalf("emulated device holds %d frames, want 9", h)
	}
	if d := r.nic.dev; d.Active() || !d.Frozen() || d.HeldFrames(0) != 0 {
		t.Fatalf("direct device after the switch: active %v frozen %v held %d; want discarded", d.Active(), d.Frozen(), d.HeldFrames(0))
	}
	txDirect, rxDirect := r.nic.dev.Stats()

	// 3. Emulated: 2 frames out through the VEM; the guest reads what was
	// written and refills; 5 more frames wait on the (stopped) VEM port.
	r.wl.setTotal(5)
	step()
	if n, _ := r.port.Take(bufsOf(rxRing+9, rxRing+14)); n != 5 {
		t.Fatalf("port took %d of 5 frames", n)
	}
	if exits, kicks := r.vm.Emulated().Exits(); exits == 0 || kicks == 0 {
		t.Errorf("emulated device saw %d BAR0 exits, %d doorbells; the guest's doorbell must trap", exits, kicks)
	}
	txEmu, rxEmu := emu.Stats()
	if txEmu[vmxnet3.TxStatUcastPkts] != txDirect[vmxnet3.TxStatUcastPkts]+2 || rxEmu[vmxnet3.RxStatUcastPkts] != rxDirect[vmxnet3.RxStatUcastPkts] {
		t.Errorf("emulated device counters tx %v rx %v, want the direct device's (tx %v rx %v) plus 2 tx", txEmu, rxEmu, txDirect, rxDirect)
	}

	// 4. → direct: the 9 held frames, then the 5 from the port.
	tm = switchTo(t, r.vm, hypervisor.ModeDirect)
	checkTiming(t, tm, hypervisor.ModeEmulated, hypervisor.ModeDirect, 14)
	if r.nic.kicks.Load() != 1 {
		t.Errorf("vNIC kicked %d times, want once after the switch", r.nic.kicks.Load())
	}
	if d := emu; d.Active() || !d.Frozen() || d.HeldFrames(0) != 0 {
		t.Fatalf("emulated device after the switch: active %v frozen %v held %d; want discarded", d.Active(), d.Frozen(), d.HeldFrames(0))
	}
	r.wl.setTotal(7)
	step()
	if h := r.nic.dev.HeldFrames(0); h != 0 {
		t.Fatalf("direct device still holds %d frames after the kick", h)
	}
	step()
	frames, direct := r.rec.snapshot()
	checkFrames(t, "frames on the wire", frames, txFrame, 7)
	if direct != 5 {
		t.Errorf("%d frames left through the direct device, want 3 + 2", direct)
	}
	_, got := r.wl.progress()
	checkFrames(t, "frames the guest received", got, rxFrame, rxRing+14)
	txBack, _ := r.nic.dev.Stats()
	if txBack[vmxnet3.TxStatUcastPkts] != 7 {
		t.Errorf("direct device tx unicast packets = %d after the round trip, want 7 (continued)", txBack[vmxnet3.TxStatUcastPkts])
	}
	if ecr := r.vm.Memory().LoadU32Acquire(drv.Layout().Shared + vmxnet3.DSECR); ecr&vmxnet3.EventLink != 0 {
		t.Errorf("ecr = %#x: a LINK event was raised by the switches", ecr)
	}
	if st := drv.Stats(); st.Events != 0 || st.RxErrors != 0 {
		t.Errorf("driver counters %+v, want no events, no errors", st)
	}
}

func bufsOf(from, to int) []*link.Buf {
	var out []*link.Buf
	for i := from; i < to; i++ {
		b := link.Get()
		b.SetBytes(rxFrame(i))
		out = append(out, b)
	}
	return out
}

// checkTiming checks the fields of a switch's timing.
func checkTiming(t *testing.T, tm hypervisor.SwitchTiming, from, to hypervisor.Mode, held int) {
	t.Helper()
	if tm.From != from || tm.To != to {
		t.Errorf("SwitchTiming From/To = %v/%v, want %v/%v", tm.From, tm.To, from, to)
	}
	if tm.Held != held {
		t.Errorf("SwitchTiming.Held = %d, want %d", tm.Held, held)
	}
	if tm.Freeze < 0 || tm.Handoff <= 0 || tm.Resume <= 0 || tm.Total <= 0 {
		t.Errorf("SwitchTiming %+v: every phase must be measured", tm)
	}
	if sum := tm.Freeze + tm.Handoff + tm.Resume; tm.Total < sum {
		t.Errorf("SwitchTiming.Total %v < Freeze + Handoff + Resume %v", tm.Total, sum)
	}
}

// TestSwitchModeNoOp: switching to the mode the vNIC is in does nothing.
func TestSwitchModeNoOp(t *testing.T) {
	r := newRig(t, rigConfig{room: -1})
	r.wl.setTotal(200)
	r.start(t, 100)
	for _, tc := range []struct {
		mode                       hypervisor.Mode
		wantDetaches, wantAttaches int32
	}{
		{hypervisor.ModeDirect, 0, 0},
		{hypervisor.ModeEmulated, 1, 0},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			if r.vm.Mode() != tc.mode {
				switchTo(t, r.vm, tc.mode)
			}
			tm, err := r.vm.SwitchMode(context.Background(), tc.mode)
			if err != nil {
				t.Fatalf("SwitchMode(%v) in %v: %v", tc.mode, tc.mode, err)
			}
			if want := (hypervisor.SwitchTiming{From: tc.mode, To: tc.mode}); tm != want {
				t.Errorf("SwitchMode(%v) in %v = %+v, want %+v", tc.mode, tc.mode, tm, want)
			}
			if d, a := r.nic.detaches.Load(), r.nic.attaches.Load(); d != tc.wantDetaches || a != tc.wantAttaches {
				t.Errorf("vNIC saw %d detaches, %d attaches; want %d, %d", d, a, tc.wantDetaches, tc.wantAttaches)
			}
			dev := r.nic.dev
			if tc.mode == hypervisor.ModeEmulated {
				dev = r.vm.Emulated().Device()
			}
			if dev.Frozen() || !dev.Active() {
				t.Errorf("the %v device: frozen %v active %v; want running", tc.mode, dev.Frozen(), dev.Active())
			}
		})
	}
	r.waitTraffic(t, 200, 100)
}

// TestSwitchModeNoSwitch: a VM without a vNIC attached for mode switches
// (no VEM port) cannot switch.
func TestSwitchModeNoSwitch(t *testing.T) {
	t.Run("direct only", func(t *testing.T) {
		r := newRig(t, rigConfig{noVNIC: true})
		for _, to := range []hypervisor.Mode{hypervisor.ModeEmulated, hypervisor.ModeDirect} {
			if _, err := r.vm.SwitchMode(context.Background(), to); !errors.Is(err, hypervisor.ErrNoSwitch) {
				t.Errorf("SwitchMode(%v) = %v, want ErrNoSwitch", to, err)
			}
		}
		if r.vm.Mode() != hypervisor.ModeDirect || r.vm.Emulated() != nil {
			t.Errorf("mode %v, emulated %v; want direct, none", r.vm.Mode(), r.vm.Emulated())
		}
	})
	t.Run("nothing attached", func(t *testing.T) {
		vm, err := hypervisor.NewVM(hypervisor.VMConfig{Name: "bare"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := vm.SwitchMode(context.Background(), hypervisor.ModeEmulated); !errors.Is(err, hypervisor.ErrNoSwitch) {
			t.Errorf("SwitchMode = %v, want ErrNoSwitch", err)
		}
	})
	t.Run("unknown mode", func(t *testing.T) {
		r := newRig(t, rigConfig{room: -1})
		for _, to := range []hypervisor.Mode{0, 3} {
			_, err := r.vm.SwitchMode(context.Background(), to)
			if err == nil || errors.Is(err, hypervisor.ErrNoSwitch) {
				t.Errorf("SwitchMode(%d) = %v, want an unknown-mode error", to, err)
			}
		}
		if r.vm.Mode() != hypervisor.ModeDirect {
			t.Errorf("mode %v, want direct", r.vm.Mode())
		}
	})
}

// TestSwitchModeLoadError: when the emulated device refuses the state, the
// switch fails whole: the VM stays direct, its vCPU runs, traffic goes on
// exactly once; a later switch succeeds.
func TestSwitchModeLoadError(t *testing.T) {
	testutil.CheckGoroutines(t)
	const txTotal, rxTotal = 6000, 6000
	r := newRig(t, rigConfig{room: -1})
	r.wl.setTotal(txTotal)
	r.start(t, rxTotal)
	r.nic.badLoad.Store(true)
	for i := 0; i < 5; i++ {
		_, err := r.vm.SwitchMode(context.Background(), hypervisor.ModeEmulated)
		if !errors.Is(err, vmxnet3.ErrStateVersion) {
			t.Fatalf("SwitchMode with a state the emulated device refuses = %v, want ErrStateVersion", err)
		}
		if m := r.vm.Mode(); m != hypervisor.ModeDirect {
			t.Fatalf("Mode() = %v after a failed switch, want direct", m)
		}
		if d := r.nic.dev; d.Frozen() || !d.Active() {
			t.Fatalf("direct device after a failed switch: frozen %v active %v; want running", d.Frozen(), d.Active())
		}
		if e := r.vm.Emulated().Device(); e.Active() || e.Frozen() {
			t.Fatalf("emulated device after a failed switch: active %v frozen %v; want untouched", e.Active(), e.Frozen())
		}
	}
	if d := r.nic.detaches.Load(); d != 0 {
		t.Fatalf("vNIC detached %d times", d)
	}
	checkRunning(t, r)
	r.nic.badLoad.Store(false)
	switchTo(t, r.vm, hypervisor.ModeEmulated)
	switchTo(t, r.vm, hypervisor.ModeDirect)
	r.waitTraffic(t, txTotal, rxTotal)
}

// checkRunning fails unless the vCPU makes three steps, each after a
// wake-up (a vCPU about to park may finish the step it is in, not more).
func checkRunning(t *testing.T, r *rig) {
	t.Helper()
	const wait = 5 * time.Second // a step takes milliseconds
	end := time.Now().Add(wait)
	for k := 0; k < 3; k++ {
		steps0, _ := r.vm.VCPU().Steps()
		r.vm.VCPU().Interrupt(0) // wake it if idle
		for {
			if steps, _ := r.vm.VCPU().Steps(); steps > steps0 {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("the vCPU made %d steps in %v, want 3: the VM is not running", k, wait)
			}
			time.Sleep(time.Millisecond) // polling a condition
		}
	}
}

// TestSwitchModePauseError: a switch whose vCPU freeze fails (its context
// ends while the vCPU is busy in a step) fails whole and leaves the VM
// running in the mode it was in.
func TestSwitchModePauseError(t *testing.T) {
	for _, from := range []hypervisor.Mode{hypervisor.ModeDirect, hypervisor.ModeEmulated} {
		t.Run("from "+from.String(), func(t *testing.T) {
			testutil.CheckGoroutines(t)
			const txTotal, rxTotal = 3000, 3000
			r := newRig(t, rigConfig{room: -1})
			r.wl.setTotal(txTotal)
			r.start(t, rxTotal)
			if from == hypervisor.ModeEmulated {
				switchTo(t, r.vm, hypervisor.ModeEmulated)
			}
			to := hypervisor.ModeEmulated
			if from == hypervisor.ModeEmulated {
				to = hypervisor.ModeDirect
			}
			// Hold the vCPU inside a step, so that it cannot park before
			// the switch's context ends.
			waitProgress(t, r, 100, 100)
			r.wl.close()
			r.vm.VCPU().Interrupt(0)
			select {
			case <-r.wl.entered:
			case <-time.After(deadline):
				t.Fatal("the vCPU never reached the workload")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			_, err := r.vm.SwitchMode(ctx, to)
			cancel()
			r.wl.open()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("SwitchMode whose vCPU freeze timed out = %v, want context.DeadlineExceeded", err)
			}
			if m := r.vm.Mode(); m != from {
				t.Fatalf("Mode() = %v after a failed switch, want %v", m, from)
			}
			checkRunning(t, r)
			r.waitTraffic(t, txTotal, rxTotal)
		})
	}
}
