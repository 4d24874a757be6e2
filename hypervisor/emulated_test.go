package hypervisor_test

import (
	"encoding/binary"
	"sync"
	"testing"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/vmxnet3/vmxnet3test"
	"github.com/vmfex/vmfex/wire"
)

// roomSender is a FrameSender with a settable room that asks for its
// call-back as the vNIC's host queue does: WantTxRoom reports whether
// there is any room, and keeps the call-back asked for while the room is
// short of a batch.
type roomSender struct {
	mu   sync.Mutex
	room int
	want bool
	fn   func()
	sent [][]byte
}

func (s *roomSender) Send(bufs []*link.Buf) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(len(bufs), s.room)
	for _, b := range bufs[:n] {
		s.sent = append(s.sent, append([]byte(nil), b.Bytes()...))
		b.Release()
	}
	s.room -= n
	return n
}

func (s *roomSender) TxRoom() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.room
}

func (s *roomSender) WantTxRoom() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.want = s.room < 64
	return s.room > 0
}

func (s *roomSender) OnTxRoom(fn func()) { s.fn = fn }

// grow gives room and makes the call-back if one was asked for, as the
// adapter does after it sent a batch of the host queue.
func (s *roomSender) grow(n int) {
	s.mu.Lock()
	s.room += n
	want := s.want
	s.want = false
	s.mu.Unlock()
	if want {
		s.fn()
	}
}

// In emulated mode a TSO packet whose segments do not fit the VEM's room
// waits in the ring (nothing sent, nothing completed) and leaves whole,
// segmented, at the room call-back.
func TestEmulatedTSOWaitsForRoom(t *testing.T) {
	cfg := vmxnet3test.DefaultConfig()
	m, err := mem.New(cfg.Layout().End + mem.PageSize)
	if err != nil {
		t.Fatal(err)
	}
	out := &roomSender{room: 10}
	mac := wire.MAC{0x02, 0, 0, 0, 0, 7}
	e := hypervisor.NewEmulatedNIC(m, &vmxnet3test.Sink{}, mac, out)
	g, err := vmxnet3test.New(m, e.BAR0(), e.BAR1(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Up(); err != nil {
		t.Fatal(err)
	}
	// IPv4/TCP, 20-byte headers, 30000 bytes of payload: 21 segments at
	// MSS 1460.
	const hlen, mss, payload = 54, 1460, 30000
	f := make([]byte, hlen+payload)
	wire.PutEth(f, wire.MAC{0x02, 0, 0, 0, 0, 8}, mac, 0x0800)
	f[14], f[14+8], f[14+9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(f[16:], uint16(len(f)-14))
	f[34+12] = 5 << 4
	if !vmxnet3.PrepareTSO(f, hlen) {
		t.Fatal("PrepareTSO refused the packet")
	}
	p := vmxnet3test.Packet{OM: vmxnet3.OMTSO, HLen: hlen, MSSCOF: mss}
	for at := 0; at < len(f); at += 2048 {
		p.Segs = append(p.Segs, f[at:min(at+2048, len(f))])
	}
	if _, err := g.PostTxPacket(0, p); err != nil {
		t.Fatal(err)
	}
	g.KickTx(0) // traps: the device finds room for 10 frames, needs 21
	if len(out.sent) != 0 {
		t.Fatalf("sent %d frames with room for 10; want none", len(out.sent))
	}
	if idx, _ := g.ReapTxCompletions(0); len(idx) != 0 {
		t.Fatalf("completed %v before sending", idx)
	}
	out.grow(100) // the host queue drained a batch: the call-back
	if len(out.sent) != 21 {
		t.Fatalf("sent %d frames after the call-back, want 21", len(out.sent))
	}
	var got int
	for _, s := range out.sent {
		got += len(s) - hlen
	}
	if idx, _ := g.ReapTxCompletions(0); len(idx) != 1 || got != payload {
		t.Errorf("completions %v, %d payload bytes sent; want 1, %d", idx, got, payload)
	}
}
