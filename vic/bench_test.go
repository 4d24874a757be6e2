package vic_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/wire"
)

// fiDrain is an FI that takes every frame off the uplink and counts it.
type fiDrain struct {
	n      atomic.Int64
	want   atomic.Int64
	notify chan struct{}
	done   chan struct{}
}

func startDrain(p link.Port) *fiDrain {
	d := &fiDrain{notify: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(d.done)
		bufs := make([]*link.Buf, p.BatchSize())
		for {
			k, err := p.Recv(bufs)
			if err != nil {
				return
			}
			link.ReleaseAll(bufs[:k])
			if n := d.n.Add(int64(k)); n >= d.want.Load() && d.want.Load() > 0 {
				select {
				case d.notify <- struct{}{}:
				default:
				}
			}
		}
	}()
	return d
}

// waitN waits until n frames in all have come off the uplink.
func (d *fiDrain) waitN(n int64) {
	d.want.Store(n)
	for d.n.Load() < n {
		<-d.notify
	}
}

var benchSizes = []int{wire.ProbeFrameMinLen, 1514}

// BenchmarkAdapterTx is the direct tx path per frame: the guest driver posts
// a frame in guest memory and rings TXPROD, the adapter gathers it, pushes
// 802.1Q and VN-Tag in place and sends it up the cable, where the FI takes
// it. The guest and the FI run on their own goroutines, as they would.
func BenchmarkAdapterTx(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			up, fi := link.NewMemCable(0)
			r := newRigOn(b, up, fi)
			drain := startDrain(fi)
			b.Cleanup(func() {
				_ = r.a.Close() // closes the cable, which ends the drain
				<-drain.done
			})
			g := r.newVM(b, 1, vmOpts{frameLen: size, count: true})
			r.a.SetVifVLAN(1, 100)
			const warm = 2000 // fill the buffer pools and grow every slice
			g.send(warm)
			drain.waitN(warm)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.ResetTimer()
			start := time.Now()
			g.send(b.N)
			drain.waitN(warm + int64(b.N))
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "frames/s")
			if st := g.vnic.Stats(); st.TxFrames != uint64(warm+b.N) || st.TxDropped != 0 {
				b.Fatalf("vNIC stats %+v, want %d frames sent", st, warm+b.N)
			}
		})
	}
}

// BenchmarkAdapterRx is the direct rx path per frame: the FI sends a
// VN-Tagged, 802.1Q-tagged frame down, the adapter checks the tag, strips
// both tags in place and writes the frame into the guest's rx buffers, and
// the guest driver takes it and refills.
func BenchmarkAdapterRx(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			up, fi := link.NewMemCable(0)
			r := newRigOn(b, up, fi)
			g := r.newVM(b, 1, vmOpts{count: true})
			r.a.SetVifVLAN(1, 100)
			f := pushTags(probeFrame(vmMAC(1), fiMAC, peerIP, vmIP(1), wire.Probe{DstVM: 1}, size),
				&wire.VNTag{FromBridge: true, DVIF: 1}, ptr(wire.TCI(0, 100)))
			batch := make([]*link.Buf, link.MemBatch)
			send := func(n int) {
				for n > 0 {
					k := min(n, len(batch))
					for i := range batch[:k] {
						batch[i] = link.Get()
						batch[i].SetBytes(f)
					}
					if _, err := fi.Send(batch[:k]); err != nil {
						b.Fatal(err)
					}
					n -= k
				}
			}
			const warm = 2000
			send(warm)
			g.wl.waitRx(warm)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.ResetTimer()
			start := time.Now()
			send(b.N)
			g.wl.waitRx(warm + int64(b.N))
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "frames/s")
			if st := g.vnic.Stats(); st.RxFrames != uint64(warm+b.N) || st.RxDropped != 0 {
				b.Fatalf("vNIC stats %+v, want %d frames received", st, warm+b.N)
			}
		})
	}
}
