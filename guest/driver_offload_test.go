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

// tsoSender is a workload that sends numbered TCP/IPv4 packets to its own
// MAC with TxSend: packet i is TSO (om 3) when i%3 == 0, checksum-offloaded
// (om 2) when i%3 == 1, finished in software (om 0) otherwise. Receive
// checks every segment's checksums and payload and counts the payload
// bytes per packet.
type tsoSender struct {
	t      *testing.T
	m      *mem.Memory
	mu     sync.Mutex
	toSend int
	sent   int
	got    map[uint32]int // payload bytes received per packet
	bad    int
}

const (
	tsoHLen    = 14 + 20 + 20
	tsoMSS     = 1460
	tsoPayload = 20000 // 14 segments; 14 descriptors of 1536 bytes
)

func (w *tsoSender) packet(i int, mac wire.MAC) ([]byte, guest.TxOffload) {
	n := tsoPayload
	if i%3 != 0 {
		n = 1000 + i%400
	}
	f := make([]byte, tsoHLen+n)
	wire.PutEth(f, mac, mac, 0x0800)
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-14))
	copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	tcp := f[34:]
	binary.BigEndian.PutUint32(tcp[4:], 1<<31) // seq
	binary.BigEndian.PutUint32(tcp[8:], uint32(i))
	tcp[12], tcp[13] = 5<<4, 0x18 // ACK PSH
	for j := range f[tsoHLen:] {
		f[tsoHLen+j] = byte(i + j*7)
	}
	binary.BigEndian.PutUint16(ip[10:], ^fold16(sum16(ip[:20], 0)))
	pseudo := sum16(ip[12:20], 6+uint32(len(f)-34))
	switch i % 3 {
	case 0:
		vmxnet3.PrepareTSO(f, tsoHLen)
		return f, guest.TxOffload{Mode: vmxnet3.OMTSO, HLen: tsoHLen, MSSCOF: tsoMSS}
	case 1:
		binary.BigEndian.PutUint16(tcp[16:], fold16(pseudo))
		return f, guest.TxOffload{Mode: vmxnet3.OMCsum, HLen: 34, MSSCOF: 34 + 16}
	}
	binary.BigEndian.PutUint16(tcp[16:], ^fold16(sum16(tcp, pseudo)))
	return f, guest.TxOffload{}
}

func (w *tsoSender) Step(dev guest.NetDev, now int64) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.sent < w.toSend {
		f, o := w.packet(w.sent, dev.MAC())
		if dev.TxRoom() < len(f) {
			return now
		}
		if !dev.TxSend(f, o) {
			w.t.Errorf("TxSend refused packet %d (%d bytes, %+v) with room %d", w.sent, len(f), o, dev.TxRoom())
			return 0
		}
		w.sent++
	}
	return 0
}

func (w *tsoSender) Receive(dev guest.NetDev, pa uint64, n int, now int64) {
	v, ok := w.m.View(pa, uint64(n))
	w.mu.Lock()
	defer w.mu.Unlock()
	if !ok || n < tsoHLen || n > tsoHLen+tsoMSS {
		w.bad++
		return
	}
	ip, tcp := v[14:34], v[34:]
	if fold16(sum16(ip, 0)) != 0xFFFF || fold16(sum16(tcp, sum16(ip[12:20], 6+uint32(n-34)))) != 0xFFFF {
		w.bad++
		return
	}
	i := binary.BigEndian.Uint32(tcp[8:])
	off := binary.BigEndian.Uint32(tcp[4:]) - 1<<31
	for j, b := range v[tsoHLen:] {
		if b != byte(int(i)+(int(off)+j)*7) {
			w.bad++
			return
		}
	}
	w.got[i] += n - tsoHLen
}

func sum16(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func fold16(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xFFFF + s>>16
	}
	return uint16(s)
}

// TestDriverTxSendOffloads: TxSend's multi-descriptor packets, with TSO
// and checksum offload, cross the tx ring's wraps many times; the device
// (in loopback) cuts and completes them, and every segment arrives with
// valid checksums and its payload, each packet's bytes exactly once.
func TestDriverTxSendOffloads(t *testing.T) {
	m, err := mem.New(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	mac := wire.MAC{0x02, 0, 0, 0, 0, 1}
	cfg := guest.DefaultDriverConfig()
	cfg.Base = 1 << 20
	wl := &tsoSender{t: t, m: m, toSend: 600, got: map[uint32]int{}}
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
	done := func() bool {
		wl.mu.Lock()
		defer wl.mu.Unlock()
		return len(wl.got) == wl.toSend && wl.got[uint32(wl.toSend-3)] == tsoPayload
	}
	for deadline := time.Now().Add(20 * time.Second); !done() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	wl.mu.Lock()
	defer wl.mu.Unlock()
	if wl.bad != 0 {
		t.Errorf("%d frames arrived malformed", wl.bad)
	}
	for i := range wl.toSend {
		want := tsoPayload
		if i%3 != 0 {
			want = 1000 + i%400
		}
		if wl.got[uint32(i)] != want {
			t.Fatalf("packet %d: %d payload bytes arrived, want %d (driver %+v)", i, wl.got[uint32(i)], want, drv.Stats())
		}
	}
	st := drv.Stats()
	tx, _ := lb.dev.Stats()
	segs := uint64(wl.toSend/3*((tsoPayload+tsoMSS-1)/tsoMSS) + wl.toSend*2/3)
	if st.TxPackets != uint64(wl.toSend) || tx[vmxnet3.TxStatTSOPkts] != uint64(wl.toSend/3) || tx[vmxnet3.TxStatUcastPkts] != segs {
		t.Errorf("driver sent %d packets, device %d TSO and %d frames; want %d, %d, %d", st.TxPackets,
			tx[vmxnet3.TxStatTSOPkts], tx[vmxnet3.TxStatUcastPkts], wl.toSend, wl.toSend/3, segs)
	}
}
