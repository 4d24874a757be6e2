package vmxnet3_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vmfex/vmfex/vmxnet3/vmxnet3test"
)

var (
	ownMAC   = vmxnet3test.RigMAC
	otherMAC = [6]byte{0x00, 0x50, 0x56, 0x00, 0x00, 0x99}
	peerMAC  = [6]byte{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
	bcastMAC = [6]byte{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}
	mcastMAC = [6]byte{0x01, 0x00, 0x5E, 0x00, 0x00, 0xFB}
)

// newRig builds a rig and fails the test on error.
func newRig(t testing.TB, cfg vmxnet3test.Config) *vmxnet3test.Rig {
	t.Helper()
	r, err := vmxnet3test.NewRig(cfg, vmxnet3test.RigMAC)
	if err != nil {
		t.Fatalf("NewRig: %v", err)
	}
	return r
}

// upRig builds a rig and brings its device up.
func upRig(t testing.TB, cfg vmxnet3test.Config) *vmxnet3test.Rig {
	t.Helper()
	r := newRig(t, cfg)
	if err := r.G.Up(); err != nil {
		t.Fatalf("Up: %v", err)
	}
	return r
}

// ethFrame returns an n-byte Ethernet frame (n ≥ 14) with a payload
// pattern derived from seed.
func ethFrame(dst, src [6]byte, n int, seed byte) []byte {
	f := make([]byte, n)
	copy(f[0:], dst[:])
	copy(f[6:], src[:])
	binary.BigEndian.PutUint16(f[12:], 0x88B5) // local experimental
	for i := 14; i < n; i++ {
		f[i] = seed + byte(i*7)
	}
	return f
}

// vlanFrame returns an n-byte 802.1Q-tagged frame with VID vid.
func vlanFrame(dst, src [6]byte, vid uint16, n int, seed byte) []byte {
	f := ethFrame(dst, src, n, seed)
	binary.BigEndian.PutUint16(f[12:], 0x8100)
	binary.BigEndian.PutUint16(f[14:], vid&0xFFF)
	binary.BigEndian.PutUint16(f[16:], 0x88B5)
	return f
}

func padded(f []byte) []byte {
	if len(f) >= 60 {
		return f
	}
	return append(append([]byte(nil), f...), make([]byte, 60-len(f))...)
}

// receive reads every frame rx queue q has received, failing on a
// malformed completion.
func receive(t testing.TB, r *vmxnet3test.Rig, q int) [][]byte {
	t.Helper()
	got, err := r.G.ReceiveFrames(q)
	if err != nil {
		t.Fatalf("ReceiveFrames(%d): %v", q, err)
	}
	return got
}

func sameFrames(got, want [][]byte) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d frames, want %d", len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			return fmt.Errorf("frame %d: % x…(%d bytes), want % x…(%d bytes)", i, head(got[i]), len(got[i]), head(want[i]), len(want[i]))
		}
	}
	return nil
}

func head(b []byte) []byte { return b[:min(len(b), 20)] }

// peer is a second device over its own memory that keeps moving frames
// (guest tx → device → its own rx → guest) on its own goroutine, checking
// every frame, while a test makes the first device misbehave.
type peer struct {
	rounds atomic.Int64
	stop   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	err    error
	r      *vmxnet3test.Rig
	wire   *vmxnet3test.Wire
	seq    byte
}

func startPeer(t *testing.T) *peer {
	t.Helper()
	cfg := vmxnet3test.DefaultConfig()
	r, err := vmxnet3test.NewRig(cfg, peerMAC)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.G.Up(); err != nil {
		t.Fatal(err)
	}
	p := &peer{stop: make(chan struct{}), r: r, wire: vmxnet3test.NewWire(8, 2048)}
	p.wg.Add(1)
	go p.run()
	t.Cleanup(func() { p.finish(t) })
	return p
}

func (p *peer) run() {
	defer p.wg.Done()
	for {
		select {
		case <-p.stop:
			return
		default:
		}
		if err := p.round(); err != nil {
			p.mu.Lock()
			p.err = err
			p.mu.Unlock()
			return
		}
		p.rounds.Add(1)
	}
}

// round sends four frames through the peer device and checks they come
// back intact and in order.
func (p *peer) round() error {
	var want [][]byte
	for i := 0; i < 4; i++ {
		p.seq++
		want = append(want, ethFrame(peerMAC, otherMAC, 60+int(p.seq)%1400, p.seq))
	}
	if err := p.r.G.PostTx(0, want...); err != nil {
		return fmt.Errorf("peer PostTx: %w", err)
	}
	sent, _ := p.wire.Drain(p.r.Dev, 0)
	frames := make([][]byte, len(sent))
	for i, s := range sent {
		frames[i] = s.Frame
	}
	if res := p.r.Dev.DeliverBatch(0, frames); res.Written != len(frames) {
		return fmt.Errorf("peer DeliverBatch: %+v, want %d written", res, len(frames))
	}
	if _, err := p.r.G.ReapTx(0); err != nil {
		return fmt.Errorf("peer ReapTx: %w", err)
	}
	got, err := p.r.G.ReceiveFrames(0)
	if err != nil {
		return fmt.Errorf("peer ReceiveFrames: %w", err)
	}
	if err := sameFrames(got, want); err != nil {
		return fmt.Errorf("peer round %d: %w", p.rounds.Load(), err)
	}
	return nil
}

// check runs one more round synchronously after the test's damage is done
// and reports any error the goroutine saw.
func (p *peer) check(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	err := p.err
	p.mu.Unlock()
	if err != nil {
		t.Fatalf("second device: %v", err)
	}
}

func (p *peer) finish(t *testing.T) {
	close(p.stop)
	p.wg.Wait()
	p.check(t)
	if err := p.round(); err != nil {
		t.Errorf("second device after the test: %v", err)
	}
	if p.rounds.Load() == 0 {
		t.Errorf("second device made no progress while the first misbehaved")
	}
	if err := p.r.CheckGuard(); err != nil {
		t.Errorf("second device: %v", err)
	}
	if stopped, code := p.r.Dev.QueueError(true, 0); stopped {
		t.Errorf("second device tx queue stopped with %#x", code)
	}
	if stopped, code := p.r.Dev.QueueError(false, 0); stopped {
		t.Errorf("second device rx queue stopped with %#x", code)
	}
}
