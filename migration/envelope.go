package migration

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unsafe"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// Envelope layout. Every integer of this package's formats is big-endian
// (network order), the envelope's as the stream's.
//
//	offset  size  field
//	0       4     magic "VFXS" (vmfex saved state)
//	4       2     format version (EnvelopeVersion)
//	6       2     payload kind (Kind)
//	8       4     payload length N, at most MaxEnvelopePayload
//	12      N     payload
//	12+N    4     CRC-32C (Castagnoli) of bytes [0, 12+N)
//
// Payload encoding: hand-written, not encoding/gob. A loader reads bytes
// from another host, so decoding must be bounded and strict: every length
// is checked against the bytes left before anything is allocated, total
// allocation is charged against MaxEnvelopePayload, and every value has
// exactly one encoding (booleans are 0 or 1, no trailing bytes), so a fuzz
// round-trip can demand decode→encode give back the input byte for byte.
// gob's self-describing type stream gives none of that (its allocations
// follow lengths the peer states, its bytes depend on the type cache), and
// it would make the format follow Go field names silently; here the format
// changes only with EnvelopeVersion. The price, a field forgotten when a
// state type grows, is caught by the reflective round-trip tests, which
// fill every field.
const (
	// EnvelopeVersion is the format version of the envelope and of every
	// payload layout in this file, independent of the program version and
	// of vmxnet3.StateVersion (which travels inside the device payload).
	EnvelopeVersion = 1
	// MaxEnvelopePayload caps a payload, and the memory its decoding may
	// allocate, on load.
	MaxEnvelopePayload = 64 << 20

	envelopeHeader  = 12
	envelopeTrailer = 4
	envelopeMin     = envelopeHeader + envelopeTrailer
)

var envelopeMagic = [4]byte{'V', 'F', 'X', 'S'}

// castagnoli is the CRC-32C table (hardware-accelerated on amd64/arm64).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Kind says what an envelope's payload is.
type Kind uint16

//go:generate stringer -type=Kind -trimprefix=Kind -output=kind_string.go

// Payload kinds. Numbers are part of the format: never reuse one.
const (
	KindDeviceState Kind = iota + 1 // a vmxnet3.State
	KindVCPU                        // a VCPUState
	KindVMSpec                      // a VMSpec
)

// Errors of the envelope and the stream. They are sentinels for errors.Is;
// returned errors wrap them with detail.
var (
	ErrBadMagic  = errors.New("migration: bad magic")
	ErrVersion   = errors.New("migration: unsupported version")
	ErrChecksum  = errors.New("migration: checksum mismatch")
	ErrTooLarge  = errors.New("migration: size above the cap")
	ErrTruncated = errors.New("migration: truncated or overlong data")
	ErrKind      = errors.New("migration: unexpected payload kind")
	ErrMalformed = errors.New("migration: malformed payload")
)

// Seal appends to dst the envelope holding payload.
func Seal(dst []byte, kind Kind, payload []byte) ([]byte, error) {
	if len(payload) > MaxEnvelopePayload {
		return dst, fmt.Errorf("%w: payload of %d bytes, cap %d", ErrTooLarge, len(payload), MaxEnvelopePayload)
	}
	start := len(dst)
	dst = append(dst, envelopeMagic[:]...)
	dst = binary.BigEndian.AppendUint16(dst, EnvelopeVersion)
	dst = binary.BigEndian.AppendUint16(dst, uint16(kind))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	dst = append(dst, payload...)
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli)), nil
}

// Open checks the envelope b and returns its kind and payload, which
// aliases b. b must be exactly one envelope.
func Open(b []byte) (Kind, []byte, error) {
	if len(b) < envelopeMin {
		return 0, nil, fmt.Errorf("%w: envelope of %d bytes, minimum %d", ErrTruncated, len(b), envelopeMin)
	}
	n, err := checkEnvelopeHeader(b[:envelopeHeader])
	if err != nil {
		return 0, nil, err
	}
	if uint64(len(b)) != envelopeMin+uint64(n) {
		return 0, nil, fmt.Errorf("%w: envelope of %d bytes for a payload of %d", ErrTruncated, len(b), n)
	}
	body := b[:envelopeHeader+n]
	if got, want := crc32.Checksum(body, castagnoli), binary.BigEndian.Uint32(b[envelopeHeader+n:]); got != want {
		return 0, nil, fmt.Errorf("%w: envelope CRC-32C %08x, computed %08x", ErrChecksum, want, got)
	}
	return Kind(binary.BigEndian.Uint16(b[6:])), b[envelopeHeader : envelopeHeader+n], nil
}

// checkEnvelopeHeader validates magic, version and the length cap, and
// returns the payload length.
func checkEnvelopeHeader(h []byte) (int, error) {
	if [4]byte(h[:4]) != envelopeMagic {
		return 0, fmt.Errorf("%w: % x", ErrBadMagic, h[:4])
	}
	if v := binary.BigEndian.Uint16(h[4:]); v != EnvelopeVersion {
		return 0, fmt.Errorf("%w: envelope format %d, this build reads %d", ErrVersion, v, EnvelopeVersion)
	}
	n := binary.BigEndian.Uint32(h[8:])
	if n > MaxEnvelopePayload {
		return 0, fmt.Errorf("%w: payload of %d bytes, cap %d", ErrTooLarge, n, MaxEnvelopePayload)
	}
	return int(n), nil
}

// ReadEnvelope reads one envelope from r (a saved-state file) and returns
// its bytes for Open. The header is checked before the payload is read, and
// the buffer grows only as bytes arrive, so a hostile length costs nothing.
func ReadEnvelope(r io.Reader) ([]byte, error) {
	b := make([]byte, envelopeHeader, envelopeHeader+4096)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("migration: reading envelope header: %w", err)
	}
	n, err := checkEnvelopeHeader(b)
	if err != nil {
		return nil, err
	}
	b, err = readGrowing(r, b, n+envelopeTrailer)
	if err != nil {
		return nil, fmt.Errorf("migration: reading envelope payload: %w", noEOF(err))
	}
	return b, nil
}

// readGrowing appends n bytes read from r to b, growing b at most one chunk
// ahead of the bytes actually received.
func readGrowing(r io.Reader, b []byte, n int) ([]byte, error) {
	const chunk = 1 << 20
	for n > 0 {
		k := min(n, chunk)
		if cap(b)-len(b) < k {
			nb := make([]byte, len(b), max(len(b)+k, 2*cap(b)))
			copy(nb, b)
			b = nb
		}
		got, err := io.ReadFull(r, b[len(b):len(b)+k])
		b = b[:len(b)+got]
		if err != nil {
			return b, err
		}
		n -= k
	}
	return b, nil
}

// noEOF turns an EOF inside a unit that had started into ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// openKind opens env and checks its kind.
func openKind(env []byte, want Kind) ([]byte, error) {
	k, p, err := Open(env)
	if err != nil {
		return nil, err
	}
	if k != want {
		return nil, fmt.Errorf("%w: %v, want %v", ErrKind, k, want)
	}
	return p, nil
}

// VCPUState is the vCPU's state that is not in guest memory: the interrupt
// bits pending at the freeze (guest.VCPU.Pause's result, Resume's argument).
type VCPUState struct {
	IRQ uint32
}

// VMSpec is what the destination needs to build the VM before memory
// arrives.
type VMSpec struct {
	Name    string
	ID      uint32
	MemSize uint64 // guest memory bytes
	MAC     wire.MAC
	Driver  guest.DriverConfig
	// Config is the hypervisor's configuration of the VM (its workload and
	// fabric identity), opaque here, as a VM's configuration file travels
	// with it in a vMotion. At most MaxConfigLen bytes.
	Config string
}

// MaxNameLen bounds VMSpec.Name.
const MaxNameLen = 255

// MaxConfigLen bounds VMSpec.Config.
const MaxConfigLen = 60 << 10

// Validate checks that a destination can build the VM spec describes.
func (s *VMSpec) Validate() error {
	if s.Name == "" || len(s.Name) > MaxNameLen {
		return fmt.Errorf("%w: VM name of %d bytes (1..%d)", ErrMalformed, len(s.Name), MaxNameLen)
	}
	if len(s.Config) > MaxConfigLen {
		return fmt.Errorf("%w: VM configuration of %d bytes (at most %d)", ErrMalformed, len(s.Config), MaxConfigLen)
	}
	if s.MemSize == 0 || s.MemSize%mem.PageSize != 0 || s.MemSize > mem.MaxSize {
		return fmt.Errorf("%w: memory size %d", ErrMalformed, s.MemSize)
	}
	if err := s.Driver.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return nil
}

// EncodeVCPU returns the envelope of v.
func EncodeVCPU(v VCPUState) ([]byte, error) {
	var e enc
	e.u32(v.IRQ)
	return Seal(nil, KindVCPU, e.b)
}

// DecodeVCPU opens a KindVCPU envelope.
func DecodeVCPU(env []byte) (VCPUState, error) {
	p, err := openKind(env, KindVCPU)
	if err != nil {
		return VCPUState{}, err
	}
	d := newDec(p)
	v := VCPUState{IRQ: d.u32()}
	if err := d.finish(); err != nil {
		return VCPUState{}, err
	}
	return v, nil
}

// EncodeVMSpec returns the envelope of s. It encodes what it is given;
// Validate is the receiver's check.
func EncodeVMSpec(s VMSpec) ([]byte, error) {
	var e enc
	e.str(s.Name)
	e.u32(s.ID)
	e.u64(s.MemSize)
	e.b = append(e.b, s.MAC[:]...)
	c := &s.Driver
	e.u32(c.TxRingSize)
	e.u32(c.RxRingSize0)
	e.u32(c.RxRingSize1)
	e.u32(c.MTU)
	e.bool(c.Polling)
	e.u64(c.Base)
	e.str(s.Config)
	return Seal(nil, KindVMSpec, e.b)
}

// DecodeVMSpec opens a KindVMSpec envelope. It checks the format, not the
// values: call Validate.
func DecodeVMSpec(env []byte) (VMSpec, error) {
	p, err := openKind(env, KindVMSpec)
	if err != nil {
		return VMSpec{}, err
	}
	d := newDec(p)
	var s VMSpec
	s.Name = d.str()
	s.ID = d.u32()
	s.MemSize = d.u64()
	s.MAC = d.mac()
	c := &s.Driver
	c.TxRingSize = d.u32()
	c.RxRingSize0 = d.u32()
	c.RxRingSize1 = d.u32()
	c.MTU = d.u32()
	c.Polling = d.bool()
	c.Base = d.u64()
	s.Config = d.str()
	if err := d.finish(); err != nil {
		return VMSpec{}, err
	}
	return s, nil
}

// EncodeDeviceState returns the envelope of a vmxnet3 device's state. It
// encodes fields in declaration order; fixed arrays carry their length so a
// build with other limits refuses them instead of misreading.
func EncodeDeviceState(s *vmxnet3.State) ([]byte, error) {
	var e enc
	e.u32(s.Version)
	e.u32(s.VRRS)
	e.u32(s.UVRS)
	e.u64(s.DSPA)
	e.u32(s.DSAL)
	e.bool(s.DSALValid)
	e.u32(s.MACL)
	e.u32(s.LastCmd)
	e.bool(s.Active)
	e.bool(s.ActivateOK)
	e.b = append(e.b, s.MAC[:]...)
	e.b = append(e.b, s.PermMAC[:]...)
	e.bool(s.LinkUp)

	c := &s.Config
	e.int(c.NumTxQueues)
	e.int(c.NumRxQueues)
	e.u32(c.MTU)
	e.u16(c.MaxNumRxSG)
	e.u64(c.UPTFeatures)
	e.u32(c.GOS)
	e.bool(c.AutoMask)
	e.u8(c.NumIntrs)
	e.u8(c.EventIntrIdx)
	e.u64(c.QueueDescPA)
	e.u32(c.RxMode)
	e.u32(uint32(len(c.VLANTable)))
	for _, w := range c.VLANTable {
		e.u32(w)
	}
	e.u32(uint32(len(c.MCastList)))
	for _, m := range c.MCastList {
		e.b = append(e.b, m[:]...)
	}

	e.u32(uint32(len(s.TxQueues)))
	for i := range s.TxQueues {
		q := &s.TxQueues[i]
		e.u64(q.DescPA)
		e.ring(q.Ring)
		e.ring(q.Comp)
		e.u8(q.IntrIdx)
		e.stats(&q.Stats)
		e.bool(q.Stopped)
		e.u32(q.Err)
	}
	e.u32(uint32(len(s.RxQueues)))
	for i := range s.RxQueues {
		q := &s.RxQueues[i]
		e.u64(q.DescPA)
		e.ring(q.Rings[0])
		e.ring(q.Rings[1])
		e.ring(q.Comp)
		e.u8(q.IntrIdx)
		e.stats(&q.Stats)
		e.u32(q.Prod[0])
		e.u32(q.Prod[1])
		e.bool(q.Stopped)
		e.u32(q.Err)
		e.u32(uint32(len(q.Pending)))
		for _, f := range q.Pending {
			e.u32(uint32(len(f)))
			e.b = append(e.b, f...)
		}
	}

	e.bool(s.AutoMask)
	e.u32(uint32(len(s.Vectors)))
	for _, v := range s.Vectors {
		e.bool(v.Masked)
		e.bool(v.Pending)
	}
	dr := &s.Drops
	for _, v := range [...]uint64{
		dr.RxFiltered, dr.RxVLANFilter, dr.RxInactive, dr.RxTooLong, dr.RxQueueError,
		dr.TxOversize, dr.TxQueueError, dr.TxUnsupported,
	} {
		e.u64(v)
	}
	return Seal(nil, KindDeviceState, e.b)
}

// Encoded sizes of fixed-size parts, for checking counts against the bytes
// left before allocating.
const (
	ringSize  = 8 + 4 + 4 + 1
	statsSize = 4 + vmxnet3.NumUPT1Stats*8
	txqSize   = 8 + 2*ringSize + 1 + statsSize + 1 + 4
	rxqMin    = 8 + 3*ringSize + 1 + statsSize + 8 + 1 + 4 + 4
)

// DecodeDeviceState opens a KindDeviceState envelope. It checks the format
// only; vmxnet3.State.Validate (which Restore calls) checks the values
// against the destination.
func DecodeDeviceState(env []byte) (vmxnet3.State, error) {
	p, err := openKind(env, KindDeviceState)
	if err != nil {
		return vmxnet3.State{}, err
	}
	d := newDec(p)
	var s vmxnet3.State
	s.Version = d.u32()
	s.VRRS = d.u32()
	s.UVRS = d.u32()
	s.DSPA = d.u64()
	s.DSAL = d.u32()
	s.DSALValid = d.bool()
	s.MACL = d.u32()
	s.LastCmd = d.u32()
	s.Active = d.bool()
	s.ActivateOK = d.bool()
	s.MAC = d.mac()
	s.PermMAC = d.mac()
	s.LinkUp = d.bool()

	c := &s.Config
	c.NumTxQueues = d.int()
	c.NumRxQueues = d.int()
	c.MTU = d.u32()
	c.MaxNumRxSG = d.u16()
	c.UPTFeatures = d.u64()
	c.GOS = d.u32()
	c.AutoMask = d.bool()
	c.NumIntrs = d.u8()
	c.EventIntrIdx = d.u8()
	c.QueueDescPA = d.u64()
	c.RxMode = d.u32()
	d.fixed("VLAN table", len(c.VLANTable))
	for i := range c.VLANTable {
		c.VLANTable[i] = d.u32()
	}
	if n := d.count("multicast list", 6, int(unsafe.Sizeof([6]byte{}))); n > 0 {
		c.MCastList = make([][6]byte, n)
		for i := range c.MCastList {
			c.MCastList[i] = d.mac()
		}
	}

	if n := d.count("tx queues", txqSize, int(unsafe.Sizeof(vmxnet3.TxQueueState{}))); n > 0 {
		s.TxQueues = make([]vmxnet3.TxQueueState, n)
		for i := range s.TxQueues {
			q := &s.TxQueues[i]
			q.DescPA = d.u64()
			q.Ring = d.ring()
			q.Comp = d.ring()
			q.IntrIdx = d.u8()
			d.stats(&q.Stats)
			q.Stopped = d.bool()
			q.Err = d.u32()
		}
	}
	if n := d.count("rx queues", rxqMin, int(unsafe.Sizeof(vmxnet3.RxQueueState{}))); n > 0 {
		s.RxQueues = make([]vmxnet3.RxQueueState, n)
		for i := range s.RxQueues {
			q := &s.RxQueues[i]
			q.DescPA = d.u64()
			q.Rings[0] = d.ring()
			q.Rings[1] = d.ring()
			q.Comp = d.ring()
			q.IntrIdx = d.u8()
			d.stats(&q.Stats)
			q.Prod[0] = d.u32()
			q.Prod[1] = d.u32()
			q.Stopped = d.bool()
			q.Err = d.u32()
			if n := d.count("pending frames", 4, int(unsafe.Sizeof([]byte(nil)))); n > 0 {
				q.Pending = make([][]byte, n)
				for j := range q.Pending {
					q.Pending[j] = d.bytes()
				}
			}
		}
	}

	s.AutoMask = d.bool()
	d.fixed("vectors", len(s.Vectors))
	for i := range s.Vectors {
		s.Vectors[i].Masked = d.bool()
		s.Vectors[i].Pending = d.bool()
	}
	dr := &s.Drops
	for _, f := range [...]*uint64{
		&dr.RxFiltered, &dr.RxVLANFilter, &dr.RxInactive, &dr.RxTooLong, &dr.RxQueueError,
		&dr.TxOversize, &dr.TxQueueError, &dr.TxUnsupported,
	} {
		*f = d.u64()
	}
	if err := d.finish(); err != nil {
		return vmxnet3.State{}, err
	}
	return s, nil
}

// enc appends big-endian values.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }

// int encodes a Go int as 64-bit two's complement, losslessly.
func (e *enc) int(v int) { e.u64(uint64(int64(v))) }

func (e *enc) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

func (e *enc) str(s string) {
	e.u32(uint32(len(s)))
	e.b = append(e.b, s...)
}

func (e *enc) ring(r vmxnet3.Ring) {
	e.u64(r.Base)
	e.u32(r.Size)
	e.u32(r.Next)
	e.bool(r.Gen)
}

func (e *enc) stats(s *[vmxnet3.NumUPT1Stats]uint64) {
	e.u32(uint32(len(s)))
	for _, v := range s {
		e.u64(v)
	}
}

// dec reads what enc wrote. The first error sticks: later reads return
// zeros, and finish reports it. budget is the memory decoding may still
// allocate.
type dec struct {
	b      []byte
	off    int
	budget int
	err    error
}

func newDec(p []byte) *dec { return &dec{b: p, budget: MaxEnvelopePayload} }

func (d *dec) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *dec) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b)-d.off {
		d.fail(fmt.Errorf("%w: %d bytes wanted at offset %d of %d", ErrMalformed, n, d.off, len(d.b)))
		return nil
	}
	v := d.b[d.off : d.off+n]
	d.off += n
	return v
}

func (d *dec) u8() uint8 {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *dec) u16() uint16 {
	if v := d.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (d *dec) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *dec) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (d *dec) int() int { return int(int64(d.u64())) }

func (d *dec) bool() bool {
	off := d.off
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail(fmt.Errorf("%w: boolean other than 0 or 1 at offset %d", ErrMalformed, off))
	return false
}

func (d *dec) mac() (m [6]byte) {
	if v := d.take(6); v != nil {
		copy(m[:], v)
	}
	return m
}

// charge takes n bytes of allocation from the budget.
func (d *dec) charge(n int) bool {
	if d.err != nil {
		return false
	}
	if n > d.budget {
		d.fail(fmt.Errorf("%w: decoding would allocate more than %d bytes", ErrTooLarge, MaxEnvelopePayload))
		return false
	}
	d.budget -= n
	return true
}

// count reads an element count and checks it against the bytes left (each
// element takes at least minEnc bytes) and the allocation budget (each
// costs goSize bytes in memory). It returns 0 after an error.
func (d *dec) count(what string, minEnc, goSize int) int {
	off := d.off
	n := int(d.u32())
	if d.err != nil {
		return 0
	}
	if n > (len(d.b)-d.off)/minEnc {
		d.fail(fmt.Errorf("%w: %d %s at offset %d, %d bytes left", ErrMalformed, n, what, off, len(d.b)-d.off))
		return 0
	}
	if !d.charge(n * goSize) {
		return 0
	}
	return n
}

// fixed reads the length of a fixed-size array and checks it.
func (d *dec) fixed(what string, want int) {
	off := d.off
	if n := d.u32(); d.err == nil && int(n) != want {
		d.fail(fmt.Errorf("%w: %s of %d entries at offset %d, this build has %d", ErrMalformed, what, n, off, want))
	}
}

// bytes reads a length-prefixed byte string into a fresh slice; empty
// decodes as nil.
func (d *dec) bytes() []byte {
	n := int(d.u32())
	v := d.take(n)
	if len(v) == 0 || !d.charge(n) {
		return nil
	}
	return append([]byte(nil), v...)
}

func (d *dec) str() string {
	n := int(d.u32())
	v := d.take(n)
	if len(v) == 0 || !d.charge(n) {
		return ""
	}
	return string(v)
}

func (d *dec) ring() vmxnet3.Ring {
	return vmxnet3.Ring{Base: d.u64(), Size: d.u32(), Next: d.u32(), Gen: d.bool()}
}

func (d *dec) stats(s *[vmxnet3.NumUPT1Stats]uint64) {
	d.fixed("UPT1 stats", len(s))
	for i := range s {
		s[i] = d.u64()
	}
}

// finish reports the first error, or trailing bytes.
func (d *dec) finish() error {
	if d.err == nil && d.off != len(d.b) {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(d.b)-d.off)
	}
	return d.err
}
