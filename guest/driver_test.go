package guest_test

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// loopback is a device engine that sends every transmitted frame back into
// the same device's receive queue, as a NIC in loopback mode does.
type loopback struct {
	dev  *vmxnet3.Device
	kick chan struct{}
	bufs [][]byte
}

func newLoopback(m *mem.Memory, sink vmxnet3.InterruptSink, mac wire.MAC) *loopback {
	lb := &loopback{kick: make(chan struct{}, 1)}
	lb.dev = vmxnet3.New(m, sink, mac, func(vmxnet3.DoorbellKind, int) {
		select {
		case lb.kick <- struct{}{}:
		default:
		}
	})
	// As many buffers as a TSO packet may need.
	for i := 0; i < vmxnet3.MaxTSOSegs; i++ {
		lb.bufs = append(lb.bufs, make([]byte, 9216))
	}
	return lb
}

func (lb *loopback) run(ctx context.Context) {
	lens := make([]int, len(lb.bufs))
	metas := make([]vmxnet3.TxMeta, len(lb.bufs))
	var held [][]byte
	frames := make([][]byte, 0, len(lb.bufs))
	for {
		select {
		case <-ctx.Done():
			return
		case <-lb.kick:
		case <-lb.dev.RxSpace(0):
		}
		for {
			// Offer what is waiting (and let the device write frames it
			// holds); stop while the guest has no buffers.
			r := lb.dev.DeliverBatch(0, held)
			held = held[r.Consumed:]
			if r.Full || len(held) > 0 {
				break
			}
			n := lb.dev.ProcessTx(0, lb.bufs, lens, metas, func(n int) {
				frames = frames[:0]
				for i := 0; i < n; i++ {
					frames = append(frames, append([]byte(nil), lb.bufs[i][:lens[i]]...))
				}
			})
			if n == 0 {
				break
			}
			held = append(held, frames...)
		}
	}
}

// counter is a workload that sends numbered frames to its own MAC and checks
// that each comes back exactly once, in order.
type counter struct {
	m        *mem.Memory
	mu       sync.Mutex
	toSend   int
	sent     int
	got      []uint32
	frameLen int
}

func (c *counter) Receive(dev guest.NetDev, pa uint64, n int, now int64) {
	v, ok := c.m.View(pa, uint64(n))
	if !ok || n < 18 {
		return
	}
	c.mu.Lock()
	c.got = append(c.got, binary.BigEndian.Uint32(v[14:]))
	c.mu.Unlock()
}

func (c *counter) received() []uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]uint32(nil), c.got...)
}

func (c *counter) Step(dev guest.NetDev, now int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.sent < c.toSend {
		pa, size, ok := dev.TxReserve()
		if !ok {
			return now
		}
		_ = size
		f := make([]byte, c.frameLen)
		mac := dev.MAC()
		wire.PutEth(f, mac, mac, 0x88B5)
		binary.BigEndian.PutUint32(f[14:], uint32(c.sent))
		c.m.Write(pa, f)
		dev.TxCommit(len(f))
		c.sent++
	}
	return 0
}

func TestDriverLoopback(t *testing.T) {
	for _, tc := range []struct {
		name     string
		polling  bool
		frameLen int
		mtu      uint32
	}{
		{"interrupts-64", false, 64, 1500},
		{"polling-1514", true, 1514, 1500},
		{"interrupts-runt", false, 20, 1500},
		{"jumbo-multibuffer", false, 9000, 9000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := mem.New(16 << 20)
			if err != nil {
				t.Fatal(err)
			}
			mac := wire.MAC{0x02, 0, 0, 0, 0, 1}
			cfg := guest.DefaultDriverConfig()
			cfg.Polling = tc.polling
			cfg.MTU = tc.mtu
			cfg.Base = 1 << 20
			wl := &counter{m: m, toSend: 5000, frameLen: tc.frameLen}
			var vcpu *guest.VCPU
			sink := sinkFunc(func(v int) { vcpu.Interrupt(v) })
			lb := newLoopback(m, sink, mac)
			drv, err := guest.NewDriver(m, lb.dev.BAR0(), lb.dev.BAR1(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			vcpu = guest.NewVCPU(drv, wl, nil)
			if err := drv.Probe(); err != nil {
				t.Fatal(err)
			}
			if err := drv.Up(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); lb.run(ctx) }()
			go func() { defer wg.Done(); _ = vcpu.Run(ctx) }()
			deadline := time.Now().Add(20 * time.Second)
			for len(wl.received()) < wl.toSend && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
			wg.Wait()
			got := wl.received()
			if len(got) != wl.toSend {
				t.Fatalf("received %d frames, want %d (driver %+v)", len(got), wl.toSend, drv.Stats())
			}
			for i, s := range got {
				if s != uint32(i) {
					t.Fatalf("frame %d carries seq %d: reordered or duplicated", i, s)
				}
			}
			st := drv.Stats()
			if st.TxPackets != uint64(wl.toSend) || st.RxPackets != uint64(wl.toSend) || st.RxErrors != 0 {
				t.Fatalf("driver stats %+v", st)
			}
			tx, rx := lb.dev.Stats()
			if tx[vmxnet3.TxStatUcastPkts] != uint64(wl.toSend) || rx[vmxnet3.RxStatUcastPkts] != uint64(wl.toSend) {
				t.Fatalf("device UPT1 stats tx %v rx %v", tx, rx)
			}
		})
	}
}

type sinkFunc func(int)

func (f sinkFunc) Interrupt(v int) { f(v) }
