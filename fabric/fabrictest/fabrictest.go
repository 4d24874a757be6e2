// Package fabrictest holds test doubles for the fabric package: a fake VIC
// adapter or LAN switch on the far end of an FI port's cable, a fake clock
// for MAC aging, and a way to wait until the fabric is idle.
//
// Goroutines: each End runs one receiver (End.receive) from NewAdapter or
// NewLAN until Close. Every method is safe for concurrent use.
package fabrictest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/wire"
)

// Clock is a fake clock for MAC aging. The zero value is not usable; use
// NewClock.
type Clock struct {
	mu sync.Mutex
	t  time.Time // guarded by mu
}

// NewClock returns a clock set to a fixed date.
func NewClock() *Clock {
	return &Clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

// Now returns the clock's time; pass it as fabric.Config.Now.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Frame is a frame an End received, decoded.
type Frame struct {
	Dst, Src  wire.MAC
	HasVNTag  bool
	VNTag     wire.VNTag
	HasVLAN   bool
	VLAN      uint16
	PCP       uint8
	EtherType uint16
	// Payload is everything after the EtherType.
	Payload []byte
	// Raw is the whole frame as it came off the cable.
	Raw []byte
}

// End is the far end of an FI port's cable: a fake VIC adapter for a
// server port (it implements fabric.VifProgrammer and speaks VN-Tag) or a
// fake LAN switch for an uplink (plain 802.1Q).
type End struct {
	name   string    // the FI port this End faces
	port   link.Port // this end of the cable
	vntag  bool      // adapter (true) or LAN (false)
	sent   atomic.Uint64
	recvd  atomic.Uint64
	done   chan struct{}
	closed sync.Once

	sendMu sync.Mutex // serialises Send on port

	mu      sync.Mutex
	vifs    map[uint16]fabric.VifConfig // guarded by mu: programmed vifs
	progLog []string                    // guarded by mu: every programming call
	frames  []Frame                     // guarded by mu: received, in order
	bad     int                         // guarded by mu: received frames that did not parse
}

var _ fabric.VifProgrammer = (*End)(nil)

// NewAdapter returns a fake adapter on p, the far end of the server port
// named portName, and starts its receiver.
func NewAdapter(portName string, p link.Port) *End { return newEnd(portName, p, true) }

// NewLAN returns a fake LAN switch on p, the far end of the uplink named
// portName, and starts its receiver.
func NewLAN(portName string, p link.Port) *End { return newEnd(portName, p, false) }

func newEnd(name string, p link.Port, vntag bool) *End {
	e := &End{name: name, port: p, vntag: vntag, done: make(chan struct{}), vifs: make(map[uint16]fabric.VifConfig)}
	go e.receive()
	return e
}

// Name returns the FI port name the End faces.
func (e *End) Name() string { return e.name }

// ProgramVif implements fabric.VifProgrammer.
func (e *End) ProgramVif(vif uint16, cfg fabric.VifConfig) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.vifs[vif] = cfg
	e.progLog = append(e.progLog, fmt.Sprintf("program %d vlan=%d mac=%v", vif, cfg.DefaultVLAN, cfg.MAC))
}

// RemoveVif implements fabric.VifProgrammer.
func (e *End) RemoveVif(vif uint16) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.vifs, vif)
	e.progLog = append(e.progLog, fmt.Sprintf("remove %d", vif))
}

// Vif returns what the FI programmed for vif.
func (e *End) Vif(vif uint16) (fabric.VifConfig, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.vifs[vif]
	return c, ok
}

// ProgLog returns every programming call so far, as "program VIF vlan=N
// mac=M" and "remove VIF".
func (e *End) ProgLog() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.progLog...)
}

// EthFrame builds an untagged Ethernet frame, zero-padded to 60 bytes.
func EthFrame(dst, src wire.MAC, etherType uint16, payload []byte) []byte {
	f := make([]byte, max(wire.EthHeaderLen+len(payload), wire.MinFrameLen))
	wire.PutEth(f, dst, src, etherType)
	copy(f[wire.EthHeaderLen:], payload)
	return f
}

// Tagged returns the wire form of the untagged frame eth as an adapter
// (vntag) or a LAN sends it: a VN-Tag with d=0 and svif=vif after the
// source MAC when vntag, then an 802.1Q tag with vlan and pcp unless vlan
// is 0 and pcp is 0.
func Tagged(eth []byte, vntag bool, vif, vlan uint16, pcp uint8) []byte {
	out := make([]byte, 0, len(eth)+wire.VNTagLen+wire.VLANTagLen)
	out = append(out, eth[:12]...)
	if vntag {
		var t [wire.VNTagLen]byte
		wire.PutVNTag(t[:], wire.VNTag{SVIF: vif})
		out = append(out, t[:]...)
	}
	if vlan != 0 || pcp != 0 {
		var t [wire.VLANTagLen]byte
		wire.PutVLANTag(t[:], wire.TCI(pcp, vlan))
		out = append(out, t[:]...)
	}
	return append(out, eth[12:]...)
}

// Send sends the untagged frame eth as the guest behind vif would after
// its adapter tagged it (see Tagged; a LAN ignores vif).
func (e *End) Send(vif, vlan uint16, pcp uint8, eth []byte) error {
	return e.SendRaw(Tagged(eth, e.vntag, vif, vlan, pcp))
}

// SendRaw sends raw as it is.
func (e *End) SendRaw(raw []byte) error {
	b := link.Get()
	if !b.SetBytes(raw) {
		b.Release()
		return errors.New("fabrictest: frame too large")
	}
	e.sendMu.Lock()
	defer e.sendMu.Unlock()
	bufs := [1]*link.Buf{b}
	if _, err := e.port.Send(bufs[:]); err != nil {
		b.Release()
		return err
	}
	e.sent.Add(1)
	return nil
}

// receive is the End's receiver goroutine.
func (e *End) receive() {
	defer close(e.done)
	bufs := make([]*link.Buf, e.port.BatchSize())
	for {
		n, err := e.port.Recv(bufs)
		for _, b := range bufs[:n] {
			e.record(b.Bytes())
		}
		link.ReleaseAll(bufs[:n])
		if err != nil {
			return
		}
	}
}

func (e *End) record(raw []byte) {
	var h wire.FabricHeader
	err := wire.ParseFabric(raw, &h)
	e.mu.Lock()
	defer e.mu.Unlock()
	defer e.recvd.Add(1)
	if err != nil {
		e.bad++
		return
	}
	fr := Frame{
		Dst: h.Dst, Src: h.Src, HasVNTag: h.HasVNTag, VNTag: h.VNTag,
		HasVLAN: h.HasVLAN, VLAN: h.VID(), PCP: h.PCP(), EtherType: h.EtherType,
		Raw: append([]byte(nil), raw...),
	}
	fr.Payload = fr.Raw[h.L3Off:]
	e.frames = append(e.frames, fr)
}

// Frames returns the frames received so far.
func (e *End) Frames() []Frame {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Frame(nil), e.frames...)
}

// Take returns the frames received so far and forgets them.
func (e *End) Take() []Frame {
	e.mu.Lock()
	defer e.mu.Unlock()
	fs := e.frames
	e.frames = nil
	return fs
}

// Bad returns the number of received frames that did not parse.
func (e *End) Bad() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.bad
}

// Sent returns the number of frames sent.
func (e *End) Sent() uint64 { return e.sent.Load() }

// Received returns the number of frames received, parsed or not.
func (e *End) Received() uint64 { return e.recvd.Load() }

// Close closes the End's side of the cable and waits for its receiver.
func (e *End) Close() {
	e.closed.Do(func() { e.port.Close() })
	<-e.done
}

// Settle waits until fi has processed every frame the ends sent and every
// end has received every frame fi sent it, or timeout passes. ends must
// include every End attached to fi for the result to mean "idle".
func Settle(fi *fabric.FI, timeout time.Duration, ends ...*End) error {
	deadline := time.Now().Add(timeout)
	for {
		pending := ""
		for _, e := range ends {
			pi, ok := fi.Port(e.name)
			if !ok {
				return fmt.Errorf("fabrictest: FI has no port %q", e.name)
			}
			if sent := e.Sent(); pi.Stats.InFrames != sent {
				pending = fmt.Sprintf("%s: FI processed %d of %d frames", e.name, pi.Stats.InFrames, sent)
				break
			}
			if got := e.Received(); got != pi.Stats.OutFrames {
				pending = fmt.Sprintf("%s: end received %d of %d frames", e.name, got, pi.Stats.OutFrames)
				break
			}
		}
		if pending == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fabrictest: not idle after %v: %s", timeout, pending)
		}
		time.Sleep(200 * time.Microsecond) // poll: the FI and the ends run on their own goroutines
	}
}

// VNTagWord returns the raw VN-Tag word of a frame received by an adapter
// (0 if it has none).
func (fr *Frame) VNTagWord() uint32 {
	if !fr.HasVNTag || len(fr.Raw) < 18 {
		return 0
	}
	return binary.BigEndian.Uint32(fr.Raw[14:])
}
