package vmxnet3test

import (
	"bytes"
	"fmt"
	"sync/atomic"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vmxnet3"
)

// Sink is an interrupt controller that counts deliveries per vector. It is
// safe for concurrent use and allocates nothing.
type Sink struct {
	n [vmxnet3.MaxIntrs]atomic.Uint64
}

var _ vmxnet3.InterruptSink = (*Sink)(nil)

// Interrupt implements vmxnet3.InterruptSink.
func (s *Sink) Interrupt(v int) {
	if v >= 0 && v < len(s.n) {
		s.n[v].Add(1)
	}
}

// Count returns how often vector v was delivered.
func (s *Sink) Count(v int) uint64 { return s.n[v].Load() }

// Counts returns every vector's count.
func (s *Sink) Counts() (c [vmxnet3.MaxIntrs]uint64) {
	for i := range c {
		c[i] = s.n[i].Load()
	}
	return c
}

// GuardByte fills a Rig's guard region and its unused buffer space.
const GuardByte = 0xA5

// Rig is a device over its own guest memory, a Guest driving it and the
// interrupt sink it delivers to. The last Config.Guard bytes of memory are a
// guard region that nothing should ever write.
type Rig struct {
	Mem  *mem.Memory
	Dev  *vmxnet3.Device
	Sink *Sink
	G    *Guest

	GuardStart uint64 // first byte of the guard region; immutable
}

// RigMAC is the permanent MAC NewRig gives its device.
var RigMAC = [6]byte{0x00, 0x50, 0x56, 0x00, 0x00, 0x01}

// NewRig builds memory (layout + Extra + Guard bytes, page-rounded), a
// device with permanent MAC perm and no doorbell hook, and a guest over it.
// It does not bring the device up.
func NewRig(cfg Config, perm [6]byte) (*Rig, error) {
	cfg = cfg.withDefaults()
	l := cfg.Layout()
	guard := alignUp(cfg.Guard, mem.PageSize)
	start := alignUp(l.End+cfg.Extra, mem.PageSize)
	m, err := mem.New(start + guard)
	if err != nil {
		return nil, err
	}
	r := &Rig{Mem: m, Sink: &Sink{}, GuardStart: start}
	r.Dev = vmxnet3.New(m, r.Sink, perm, nil)
	if r.G, err = New(m, r.Dev.BAR0(), r.Dev.BAR1(), cfg); err != nil {
		return nil, err
	}
	r.FillGuard()
	return r, nil
}

// FillGuard writes GuardByte over the guard region.
func (r *Rig) FillGuard() {
	v, _ := r.Mem.View(r.GuardStart, r.Mem.Size()-r.GuardStart)
	_ = r.Mem.Write(r.GuardStart, bytes.Repeat([]byte{GuardByte}, len(v)))
}

// CheckGuard reports the first guard byte that changed.
func (r *Rig) CheckGuard() error {
	v, _ := r.Mem.View(r.GuardStart, r.Mem.Size()-r.GuardStart)
	for i, b := range v {
		if b != GuardByte {
			return fmt.Errorf("vmxnet3test: guard byte at %#x is %#x, want %#x", r.GuardStart+uint64(i), b, GuardByte)
		}
	}
	return nil
}

// Wire is the device's transmit side for tests: it runs ProcessTx and keeps
// copies of what the device sent. It is not safe for concurrent use.
type Wire struct {
	bufs  [][]byte
	lens  []int
	metas []vmxnet3.TxMeta
}

// NewWire returns a wire gathering batch packets per ProcessTx call into
// buffers of bufSize bytes.
func NewWire(batch, bufSize int) *Wire {
	w := &Wire{lens: make([]int, batch), metas: make([]vmxnet3.TxMeta, batch)}
	for i := 0; i < batch; i++ {
		w.bufs = append(w.bufs, make([]byte, bufSize))
	}
	return w
}

// Sent is one frame the device transmitted.
type Sent struct {
	Frame []byte
	Meta  vmxnet3.TxMeta
}

// Drain runs ProcessTx on queue q until it returns 0 and returns the frames
// sent, in order, and the packets consumed (sent or dropped).
func (w *Wire) Drain(d *vmxnet3.Device, q int) (sent []Sent, consumed int) {
	for i := 0; i < 1<<16; i++ {
		n := d.ProcessTx(q, w.bufs, w.lens, w.metas, func(n int) {
			for k := 0; k < n; k++ {
				sent = append(sent, Sent{Frame: append([]byte(nil), w.bufs[k][:w.lens[k]]...), Meta: w.metas[k]})
			}
		})
		if n == 0 {
			break
		}
		consumed += n
	}
	return sent, consumed
}
