package vic_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/vmfex/vmfex/internal/testutil"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vic"
	"github.com/vmfex/vmfex/wire"
)

// gatedPort is an uplink whose Send, once armed, reports that it was
// entered and then holds until the gate opens: a congested uplink at a
// moment of the test's choosing.
type gatedPort struct {
	link.Port
	mu      sync.Mutex
	armed   bool          // guarded by mu
	entered chan struct{} // closed by the first Send after arming
	gate    chan struct{} // closed to let Sends through
	closed  chan struct{}
	once    sync.Once
}

var _ link.Port = (*gatedPort)(nil)

func newGatedPort(p link.Port) *gatedPort {
	return &gatedPort{Port: p, entered: make(chan struct{}), gate: make(chan struct{}), closed: make(chan struct{})}
}

func (g *gatedPort) arm() {
	g.mu.Lock()
	g.armed = true
	g.mu.Unlock()
}

func (g *gatedPort) Send(bufs []*link.Buf) (int, error) {
	g.mu.Lock()
	armed := g.armed
	if armed {
		g.armed = false
		close(g.entered)
	}
	g.mu.Unlock()
	if armed {
		select {
		case <-g.gate:
		case <-g.closed:
			return 0, link.ErrClosed
		}
	}
	return g.Port.Send(bufs)
}

func (g *gatedPort) Close() error {
	g.once.Do(func() { close(g.closed) })
	return g.Port.Close()
}

// TestTxDoorbellsUnderChurn: while the tx engine is held in a congested
// uplink, vNICs are created, ring their doorbell and are deleted. Neither a
// guest's doorbell nor the engine's own re-queueing may then block: once
// the uplink drains, the surviving vNIC's frames keep flowing.
func TestTxDoorbellsUnderChurn(t *testing.T) {
	const maxVNICs = 2
	up, fi := link.NewMemCable(0)
	gp := newGatedPort(up)
	a := vic.New(vic.Config{Name: "churn", Uplink: gp, MaxVNICs: maxVNICs})
	a.Start()
	r := &rig{t: t, a: a, fiPort: fi}
	t.Cleanup(func() {
		_ = a.Close()
		_ = fi.Close()
		r.reader.wait()
	})
	fr := r.startReader()
	const xVif = 1
	x := r.newVM(t, xVif, vmOpts{noRun: true})
	tx := newRawTx(x)
	mk := func(seq uint64) []byte {
		return probeFrame(fiMAC, vmMAC(xVif), vmIP(xVif), peerIP, wire.Probe{SrcVM: xVif, Seq: seq}, 0)
	}
	gp.arm()
	tx.frame(mk(0), false, 0)
	tx.doorbell()
	<-gp.entered // the engine is now inside Send for X, X is off the queue

	// More churn than the pool has slots: each deleted vNIC leaves its
	// doorbell behind in the engine's queue.
	for i := 0; i < 2*maxVNICs+2; i++ {
		vif := uint16(10 + i)
		y := r.newVM(t, vif, vmOpts{noRun: true})
		ytx := newRawTx(y)
		ytx.frame(probeFrame(fiMAC, vmMAC(vif), vmIP(vif), peerIP, wire.Probe{}, 0), false, 0)
		done := make(chan struct{})
		go func() { ytx.doorbell(); close(done) }()
		waitUntil(t, "the doorbell write to return", func() bool {
			select {
			case <-done:
				return true
			default:
				return false
			}
		})
		if err := a.DeleteVNIC(vif); err != nil {
			t.Fatal(err)
		}
	}
	close(gp.gate)
	fr.waitVif(t, xVif, 1)
	tx.frame(mk(1), false, 0)
	tx.doorbell()
	got := fr.waitVif(t, xVif, 2)
	checkSeqs(t, "uplink from X", seqsOf(t, got), 2)
}

// closeWithin closes a from another goroutine and fails the test if Close
// does not return within testWait.
func closeWithin(t *testing.T, a *vic.Adapter) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- a.Close() }()
	select {
	case err := <-errc:
		return err
	case <-time.After(testWait):
		t.Fatalf("Close did not return within %v", testWait)
		return nil
	}
}

// TestClose: Close is idempotent, safe from several goroutines at once,
// returns whatever the engines are waiting on (a guest's rx buffers, a full
// uplink, a closed peer), and leaves no goroutine behind.
func TestClose(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, r *rig)
	}{
		{"never-started", nil},
		{"idle", func(t *testing.T, r *rig) {}},
		{"rx-waits-for-guest-buffers", func(t *testing.T, r *rig) {
			g := r.newVM(t, 3, vmOpts{noRun: true})
			n := int(g.drv.Layout().RxSize0) + 200
			frames := make([][]byte, n)
			for i := range frames {
				frames[i] = downFrame(3, uint64(i), nil)
			}
			// The cable holds 4 frames: the FI's Send waits, until Close.
			go func() { _ = sendFrames(r.fiPort, frames) }()
			waitUntil(t, "the rx engine to wait", func() bool { return g.vnic.Stats().RxWaits > 0 })
		}},
		{"tx-blocked-on-full-uplink", func(t *testing.T, r *rig) {
			g := r.newVM(t, 4, vmOpts{send: 300})
			// The cable holds 4 frames and nobody reads: after the FI takes
			// 4, the engine is inside Send with the rest of its batch.
			bufs := make([]*link.Buf, 4)
			got := 0
			for got < 4 {
				n, err := r.fiPort.Recv(bufs[:4-got])
				if err != nil {
					t.Fatal(err)
				}
				link.ReleaseAll(bufs[:n])
				got += n
			}
			waitUntil(t, "the guest to post its frames", func() bool { return g.wl.sent.Load() == 300 })
		}},
		{"peer-closed-first", func(t *testing.T, r *rig) {
			r.newVM(t, 5, vmOpts{send: 100})
			_ = r.fiPort.Close()
		}},
		{"traffic-both-ways", func(t *testing.T, r *rig) {
			r.startReader()
			g := r.newVM(t, 6, vmOpts{send: 100000})
			go func() {
				frames := make([][]byte, 64)
				for seq := uint64(0); ; seq += 64 {
					for i := range frames {
						frames[i] = downFrame(6, seq+uint64(i), nil)
					}
					if sendFrames(r.fiPort, frames) != nil {
						return
					}
				}
			}()
			waitUntil(t, "traffic", func() bool { return g.wl.rx.Load() > 500 && g.vnic.Stats().TxFrames > 500 })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			up, fi := link.NewMemCable(4)
			a := vic.New(vic.Config{Name: "close", Uplink: up})
			r := &rig{t: t, a: a, fiPort: fi}
			t.Cleanup(func() {
				_ = fi.Close()
				if r.reader != nil {
					r.reader.wait()
				}
			})
			if tt.setup != nil {
				a.Start()
				tt.setup(t, r)
			}
			var wg sync.WaitGroup
			errs := make([]error, 4)
			for i := range errs {
				wg.Add(1)
				go func() { defer wg.Done(); errs[i] = closeWithin(t, a) }()
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("Close #%d: %v", i, err)
				}
			}
			if err := closeWithin(t, a); err != nil {
				t.Errorf("Close again: %v", err)
			}
			// The uplink is closed: the FI sees the cable end.
			bufs := make([]*link.Buf, link.MemBatch)
			for {
				n, err := fi.Recv(bufs)
				link.ReleaseAll(bufs[:n])
				if err != nil {
					break
				}
			}
			if _, err := a.CreateVNIC(100, vmMAC(100), nil, nil); !errors.Is(err, vic.ErrClosed) {
				t.Errorf("CreateVNIC after Close: %v, want %v", err, vic.ErrClosed)
			}
		})
	}
}

// TestCloseRepeated starts and closes adapters with guests again and
// again: nothing accumulates (every engine and helper goroutine ends).
func TestCloseRepeated(t *testing.T) {
	testutil.CheckGoroutines(t)
	for i := 0; i < 20; i++ {
		r := newRig(t, 0, 0)
		g := r.newVM(t, 1, vmOpts{send: 50})
		r.sendDown(t, downFrame(1, 0, nil))
		waitUntil(t, "the guest's frame", func() bool { return g.wl.rx.Load() == 1 })
		g.stop()
		if err := closeWithin(t, r.a); err != nil {
			t.Fatalf("round %d: Close: %v", i, err)
		}
	}
}
