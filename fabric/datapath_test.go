package fabric

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/wire"
)

// sinkPort is a link.Port that takes every frame the FI sends, copies it if
// asked, and releases it. Recv blocks until Close: the tests here drive the
// data path directly through a worker.
type sinkPort struct {
	closeOnce sync.Once
	closed    chan struct{}

	mu     sync.Mutex
	keep   bool     // guarded by mu: copy frames into frames
	frames [][]byte // guarded by mu
	n      int      // guarded by mu: frames sent
}

var _ link.Port = (*sinkPort)(nil)

func newSinkPort(keep bool) *sinkPort { return &sinkPort{keep: keep, closed: make(chan struct{})} }

func (p *sinkPort) Send(bufs []*link.Buf) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range bufs {
		if p.keep {
			p.frames = append(p.frames, append([]byte(nil), b.Bytes()...))
		}
		b.Release()
	}
	p.n += len(bufs)
	return len(bufs), nil
}

func (p *sinkPort) Recv([]*link.Buf) (int, error) {
	<-p.closed
	return 0, link.ErrClosed
}

func (p *sinkPort) BatchSize() int        { return link.MemBatch }
func (p *sinkPort) Stats() link.PortStats { return link.PortStats{} }
func (p *sinkPort) Close() error {
	p.closeOnce.Do(func() { close(p.closed) })
	return nil
}

func (p *sinkPort) take() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	fs := p.frames
	p.frames = nil
	return fs
}

// testFI is an FI that is never started, with sink ports:
//
//	index 0 Ethernet1/1 server: vif 1 "web" (access 10) mac 1
//	                            vif 2 "trunk" (10, 20, native 10) mac 2
//	                            vif 3 "forge" (access 20, forged MACs allowed) mac 3
//	                            vif 4 "nonative" (trunk 30, no native) mac 4
//	index 1 Ethernet1/2 server: vif 1 "web" mac 5, vif 2 "v20" (access 20) mac 6
//	index 2 Ethernet1/17 uplink
type testFI struct {
	fi    *FI
	sinks []*sinkPort
	now   time.Time
}

func tmac(n byte) wire.MAC { return wire.MAC{0x02, 0, 0, 0, 0, n} }

func newTestFI(tb testing.TB, keep bool) *testFI {
	tb.Helper()
	tf := &testFI{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	tf.fi = New(Config{Name: "test", Now: func() time.Time { return tf.now }})
	tb.Cleanup(func() { tf.fi.Close() })
	must := func(err error) {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
	}
	for i, name := range []string{"Ethernet1/1", "Ethernet1/2", "Ethernet1/17"} {
		s := newSinkPort(keep)
		tf.sinks = append(tf.sinks, s)
		if i < 2 {
			must(tf.fi.AddServerPort(name, s, nil))
		} else {
			must(tf.fi.AddUplink(name, s))
		}
	}
	must(tf.fi.SetPortProfile(PortProfile{Name: "web", AccessVLAN: 10}))
	must(tf.fi.SetPortProfile(PortProfile{Name: "trunk", Mode: ModeTrunk, AllowedVLANs: []uint16{10, 20}, NativeVLAN: 10}))
	must(tf.fi.SetPortProfile(PortProfile{Name: "forge", AccessVLAN: 20, AllowForgedMAC: true}))
	must(tf.fi.SetPortProfile(PortProfile{Name: "nonative", Mode: ModeTrunk, AllowedVLANs: []uint16{30}}))
	must(tf.fi.SetPortProfile(PortProfile{Name: "v20", AccessVLAN: 20}))
	for _, c := range []VEthConfig{
		{ID: 1, ServerPort: "Ethernet1/1", VIF: 1, MAC: tmac(1), Profile: "web"},
		{ID: 2, ServerPort: "Ethernet1/1", VIF: 2, MAC: tmac(2), Profile: "trunk"},
		{ID: 3, ServerPort: "Ethernet1/1", VIF: 3, MAC: tmac(3), Profile: "forge"},
		{ID: 4, ServerPort: "Ethernet1/1", VIF: 4, MAC: tmac(4), Profile: "nonative"},
		{ID: 5, ServerPort: "Ethernet1/2", VIF: 1, MAC: tmac(5), Profile: "web"},
		{ID: 6, ServerPort: "Ethernet1/2", VIF: 2, MAC: tmac(6), Profile: "v20"},
	} {
		must(tf.fi.CreateVEth(c))
	}
	return tf
}

// worker returns a worker reading port index i, as its reader would.
func (tf *testFI) worker(i int) *worker {
	tf.fi.mu.Lock()
	defer tf.fi.mu.Unlock()
	return newWorker(tf.fi, tf.fi.ports[i])
}

// serverFrame builds a 64-byte-payload frame as an adapter sends it: VN-Tag
// with svif, then an 802.1Q tag with vlan unless vlan is 0.
func serverFrame(svif, vlan uint16, dst, src wire.MAC) []byte {
	f := make([]byte, 0, 128)
	f = append(f, dst[:]...)
	f = append(f, src[:]...)
	f = binary.BigEndian.AppendUint16(f, wire.EtherTypeVNTag)
	f = binary.BigEndian.AppendUint32(f, wire.VNTag{SVIF: svif}.Word())
	if vlan != 0 {
		f = binary.BigEndian.AppendUint16(f, wire.EtherTypeVLAN)
		f = binary.BigEndian.AppendUint16(f, wire.TCI(0, vlan))
	}
	f = binary.BigEndian.AppendUint16(f, 0x88B5)
	return append(f, make([]byte, 46)...)
}

// uplinkFrame builds a frame as the LAN sends it.
func uplinkFrame(vlan uint16, dst, src wire.MAC) []byte {
	f := make([]byte, 0, 128)
	f = append(f, dst[:]...)
	f = append(f, src[:]...)
	f = binary.BigEndian.AppendUint16(f, wire.EtherTypeVLAN)
	f = binary.BigEndian.AppendUint16(f, wire.TCI(0, vlan))
	f = binary.BigEndian.AppendUint16(f, 0x88B5)
	return append(f, make([]byte, 46)...)
}

// run processes raw as one batch through w.
func run(w *worker, raw []byte) {
	b := link.Get()
	b.SetBytes(raw)
	bufs := [1]*link.Buf{b}
	w.process(bufs[:])
}

func TestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops buffers at random under the race detector")
	}
	tf := newTestFI(t, false)
	w0, w1, wu := tf.worker(0), tf.worker(1), tf.worker(2)
	run(w1, serverFrame(1, 10, wire.Broadcast, tmac(5))) // learn vEth 5
	run(wu, uplinkFrame(10, wire.Broadcast, tmac(0x77))) // learn the uplink MAC
	run(w0, serverFrame(1, 10, wire.Broadcast, tmac(1))) // learn vEth 1
	// A vEth that was held and released is back on the lock-free path.
	if _, err := tf.fi.HoldVEth(5); err != nil {
		t.Fatal(err)
	}
	if err := tf.fi.ReleaseVEth(5); err != nil {
		t.Fatal(err)
	}
	tagged := serverFrame(1, 10, tmac(5), tmac(1))       // in place
	untagged := serverFrame(1, 0, tmac(5), tmac(1))      // pushes 802.1Q
	toUplink := serverFrame(1, 10, tmac(0x77), tmac(1))  // strips VN-Tag
	fromUplink := uplinkFrame(10, tmac(1), tmac(0x77))   // pushes VN-Tag
	flood := serverFrame(2, 10, wire.Broadcast, tmac(2)) // pooled copies only
	for _, tc := range []struct {
		name string
		w    *worker
		raw  []byte
	}{
		{"tagged", w0, tagged}, {"untagged", w0, untagged}, {"to-uplink", w0, toUplink},
		{"from-uplink", wu, fromUplink}, {"flood", w0, flood},
	} {
		b := link.Get()
		bufs := make([]*link.Buf, 1)
		b.Release()
		if n := testing.AllocsPerRun(1000, func() {
			bufs[0] = link.Get()
			bufs[0].SetBytes(tc.raw)
			tc.w.process(bufs)
		}); n != 0 {
			t.Errorf("%s: %v allocs per frame, want 0", tc.name, n)
		}
	}
	if d := tf.fi.Stats().Drops.Total(); d != 0 {
		t.Errorf("drops during the allocation test: %v", tf.fi.Stats().Drops)
	}
}

// TestEgressRecheck plants a MAC entry that points at a vEth outside the
// frame's VLAN (as a stale entry could after a profile change) and checks
// that the egress re-check stops the frame.
func TestEgressRecheck(t *testing.T) {
	tf := newTestFI(t, true)
	w0 := tf.worker(0)
	s := tf.fi.snap.Load()
	v6 := s.vifAt(1, 2).v // vEth 6, VLAN 20 only
	tf.fi.macs.learn(makeMACKey(10, tmac(6)), v6.dst(), tf.now.UnixNano())
	run(w0, serverFrame(1, 10, tmac(6), tmac(1)))
	if fs := tf.sinks[1].take(); len(fs) != 0 {
		t.Fatalf("frame crossed VLANs: %x", fs)
	}
	if n := v6.ctr.drops[DropEgressVLANNotAllowed].Load(); n != 1 {
		t.Errorf("egress-vlan-not-allowed on vEth 6 = %d, want 1", n)
	}
}

// TestSmallHeadroom hands the data path buffers whose headroom a peer used
// up: tags must still be pushed (into a copy).
func TestSmallHeadroom(t *testing.T) {
	tf := newTestFI(t, true)
	w0, wu := tf.worker(0), tf.worker(2)
	run(w0, serverFrame(1, 10, wire.Broadcast, tmac(1)))
	tf.sinks[0].take()
	tf.sinks[1].take()
	tf.sinks[2].take()
	for off := 0; off < 8; off++ {
		for _, tc := range []struct {
			w   *worker
			raw []byte
		}{
			{w0, serverFrame(2, 0, tmac(1), tmac(2))},  // untagged: +4
			{wu, uplinkFrame(10, tmac(1), tmac(0x77))}, // to a vEth: +6
		} {
			b := link.Get()
			b.Off = off
			b.Len = copy(b.Space(), tc.raw)
			bufs := [1]*link.Buf{b}
			tc.w.process(bufs[:])
			fs := tf.sinks[0].take()
			if len(fs) != 1 {
				t.Fatalf("headroom %d: %d frames, want 1", off, len(fs))
			}
			var h wire.FabricHeader
			if err := wire.ParseFabric(fs[0], &h); err != nil || !h.HasVNTag || h.VNTag.DVIF != 1 || h.VID() != 10 {
				t.Errorf("headroom %d: got %x (%v)", off, fs[0], err)
			}
		}
	}
}

// FuzzServerPortIngress feeds arbitrary bytes, in buffers with arbitrary
// headroom, to the server-port ingress. Every frame must be dropped once
// or delivered, and whatever comes out must be a well-formed frame inside
// the VLANs of its destination.
func FuzzServerPortIngress(f *testing.F) {
	f.Add(serverFrame(1, 10, wire.Broadcast, tmac(1)), uint8(128))
	f.Add(serverFrame(2, 0, tmac(1), tmac(2)), uint8(0))
	f.Add(serverFrame(3, 20, tmac(6), tmac(9)), uint8(3))
	tf := newTestFI(f, true)
	w := tf.worker(0)
	snap := tf.fi.snap.Load()
	f.Fuzz(func(t *testing.T, data []byte, headroom uint8) {
		if len(data) > link.MaxFrame {
			return
		}
		b := link.Get()
		b.Off = min(int(headroom), link.Headroom)
		b.Len = copy(b.Space(), data)
		before := tf.fi.drops.load().Total()
		bufs := [1]*link.Buf{b}
		w.process(bufs[:])
		dropped := tf.fi.drops.load().Total() - before
		out := 0
		for i, s := range tf.sinks {
			for _, fr := range s.take() {
				out++
				var h wire.FabricHeader
				if err := wire.ParseFabric(fr, &h); err != nil || !h.HasVLAN {
					t.Fatalf("port %d got a bad frame %x: %v", i, fr, err)
				}
				vid := h.VID()
				if snap.ports[i].kind == PortUplink {
					if h.HasVNTag || !snap.uplinkVLANs.has(vid) {
						t.Fatalf("uplink got %x", fr)
					}
					continue
				}
				dv := snap.vifAt(i, h.VNTag.DVIF)
				if !h.HasVNTag || !h.VNTag.FromBridge || dv == nil {
					t.Fatalf("port %d got %x: tag %+v names no vEth", i, fr, h.VNTag)
				}
				if !dv.prof.allowed.has(vid) {
					t.Fatalf("ISOLATION: VLAN %d reached %s", vid, dv.v.name)
				}
			}
		}
		if dropped > 1 || (dropped == 1) == (out > 0) {
			t.Fatalf("frame %x: dropped %d times and delivered %d times", data, dropped, out)
		}
	})
}

// BenchmarkUnicastForward measures known-unicast forwarding through the
// ingress function, batch by batch as a port reader does, to a port that
// releases what it is sent.
func BenchmarkUnicastForward(b *testing.B) {
	for _, bc := range []struct {
		name string
		port int
		raw  []byte
	}{
		{"tagged", 0, serverFrame(1, 10, tmac(5), tmac(1))},
		{"untagged", 0, serverFrame(1, 0, tmac(5), tmac(1))},
		{"hairpin", 0, serverFrame(2, 10, tmac(1), tmac(2))},
		{"to-uplink", 0, serverFrame(1, 10, tmac(0x77), tmac(1))},
		{"from-uplink", 2, uplinkFrame(10, tmac(1), tmac(0x77))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tf := newTestFI(b, false)
			run(tf.worker(1), serverFrame(1, 10, wire.Broadcast, tmac(5)))
			run(tf.worker(2), uplinkFrame(10, wire.Broadcast, tmac(0x77)))
			run(tf.worker(0), serverFrame(1, 10, wire.Broadcast, tmac(1)))
			w := tf.worker(bc.port)
			bufs := make([]*link.Buf, link.MemBatch)
			b.SetBytes(int64(len(bc.raw)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += len(bufs) {
				n := min(len(bufs), b.N-i)
				for j := range n {
					bufs[j] = link.Get()
					bufs[j].SetBytes(bc.raw)
				}
				w.process(bufs[:n])
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
			if d := tf.fi.Stats().Drops.Total(); d != 0 {
				b.Fatalf("drops: %v", tf.fi.Stats().Drops)
			}
		})
	}
}
