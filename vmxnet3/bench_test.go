package vmxnet3_test

// Per-frame cost of the data path: ProcessTx (gather, send, complete) and
// DeliverBatch (filter, place, complete), with the test guest posting and
// reaping around them. Target: 0 allocs/op. Frames move in batches of 32,
// as an engine goroutine moves them.

import (
	"fmt"
	"testing"

	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/vmxnet3/vmxnet3test"
)

const benchBatch = 32

// benchPath is a device in loopback: every frame the guest transmits is
// delivered back into its own rx queue.
type benchPath struct {
	r      *vmxnet3test.Rig
	frames [][]byte // the guest's frames to post
	bufs   [][]byte // the engine's tx buffers
	lens   []int
	metas  []vmxnet3.TxMeta
	rx     [][]byte // views of bufs handed to DeliverBatch
}

func newBenchPath(tb testing.TB, size int) *benchPath {
	cfg := vmxnet3test.DefaultConfig()
	cfg.TxRingSize, cfg.TxCompSize = 512, 512
	cfg.RxRingSize0, cfg.RxRingSize1 = 512, 32
	p := &benchPath{r: upRig(tb, cfg)}
	for i := 0; i < benchBatch; i++ {
		p.frames = append(p.frames, ethFrame(ownMAC, otherMAC, size, byte(i)))
		p.bufs = append(p.bufs, make([]byte, 2048))
	}
	p.lens = make([]int, benchBatch)
	p.metas = make([]vmxnet3.TxMeta, benchBatch)
	p.rx = make([][]byte, 0, benchBatch)
	return p
}

// post has the guest queue n frames.
func (p *benchPath) post(tb testing.TB, n int) {
	if err := p.r.G.PostTx(0, p.frames[:n]...); err != nil {
		tb.Fatal(err)
	}
}

// tx runs the device's transmit engine once and returns the frames sent.
func (p *benchPath) tx() int {
	sent := 0
	p.r.Dev.ProcessTx(0, p.bufs, p.lens, p.metas, func(n int) {
		p.rx = p.rx[:0]
		for i := 0; i < n; i++ {
			p.rx = append(p.rx, p.bufs[i][:p.lens[i]])
		}
		sent = n
	})
	return sent
}

// reap has the guest take its tx completions and received frames.
func (p *benchPath) reap(tb testing.TB) int {
	if _, err := p.r.G.ReapTx(0); err != nil {
		tb.Fatal(err)
	}
	n, err := p.r.G.ConsumeRx(0)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

func reportFrames(b *testing.B) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, "frames/s")
	}
}

// BenchmarkLoopback: guest tx → ProcessTx → DeliverBatch → guest rx.
func BenchmarkLoopback(b *testing.B) {
	for _, size := range []int{64, 1500} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			p := newBenchPath(b, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(benchBatch, b.N-done)
				p.post(b, n)
				if got := p.tx(); got != n {
					b.Fatalf("sent %d of %d", got, n)
				}
				if res := p.r.Dev.DeliverBatch(0, p.rx); res.Written != n {
					b.Fatalf("DeliverBatch: %+v", res)
				}
				if got := p.reap(b); got != n {
					b.Fatalf("received %d of %d", got, n)
				}
				done += n
			}
			reportFrames(b)
		})
	}
}

// BenchmarkProcessTx: guest posts, the device gathers and completes, the
// guest reaps; frames go nowhere.
func BenchmarkProcessTx(b *testing.B) {
	for _, size := range []int{64, 1500} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			p := newBenchPath(b, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(benchBatch, b.N-done)
				p.post(b, n)
				if got := p.tx(); got != n {
					b.Fatalf("sent %d of %d", got, n)
				}
				if _, err := p.r.G.ReapTx(0); err != nil {
					b.Fatal(err)
				}
				done += n
			}
			reportFrames(b)
		})
	}
}

// BenchmarkDeliverBatch: the device places frames from the wire into guest
// buffers; the guest consumes and refills.
func BenchmarkDeliverBatch(b *testing.B) {
	for _, size := range []int{64, 1500} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			p := newBenchPath(b, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(benchBatch, b.N-done)
				if res := p.r.Dev.DeliverBatch(0, p.frames[:n]); res.Written != n {
					b.Fatalf("DeliverBatch: %+v", res)
				}
				if got, err := p.r.G.ConsumeRx(0); err != nil || got != n {
					b.Fatalf("received %d of %d (%v)", got, n, err)
				}
				done += n
			}
			reportFrames(b)
		})
	}
}

// TestDataPathAllocs is the allocation budget of the per-frame path: a
// whole loopback batch, guest side included, allocates nothing.
func TestDataPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, size := range []int{64, 1500} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			p := newBenchPath(t, size)
			round := func() {
				p.post(t, benchBatch)
				p.tx()
				p.r.Dev.DeliverBatch(0, p.rx)
				p.reap(t)
			}
			round() // warm the scratch slices
			if a := testing.AllocsPerRun(50, round); a != 0 {
				t.Errorf("a batch of %d frames allocates %.1f times, want 0", benchBatch, a)
			}
			if _, rx := p.r.Dev.Stats(); rx[vmxnet3.RxStatUcastPkts] != 51*benchBatch+benchBatch {
				t.Errorf("received %d frames, want %d", rx[vmxnet3.RxStatUcastPkts], 52*benchBatch)
			}
		})
	}
}
