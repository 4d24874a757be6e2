package migration

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmfex/vmfex/guest/mem"
)

// Stream framing. Every message, in both directions:
//
//	offset  size  field
//	0       1     type (MsgType)
//	1       4     body length N, at most the reader's cap and the type's limit
//	5       N     body, by type below
//	5+N     4     CRC-32C (Castagnoli) of bytes [0, 5+N)
//
// Bodies (big-endian):
//
//	Hello        u16 protocol version, then a KindVMSpec envelope
//	Pages        u32 n (1..MaxBatchPages), n × u64 page number, n × 4096 page bytes
//	RoundEnd     u32 round, u64 pages sent in the round, u64 pages dirty at its end, u8 final (0 or 1)
//	DeviceState  u16 NIC index, then a KindDeviceState envelope
//	VCPU         a KindVCPU envelope
//	Ready        empty: the destination has loaded everything
//	Commit       empty: the source gives the VM up
//	Ack          u8 type of the message acknowledged
//	Abort        reason, at most MaxReason bytes
//
// The checksum covers every message, page data included: TCP's 16-bit sum
// is weak, and a framing bug must not become silent guest-memory corruption.
// CRC-32C runs at memory speed on amd64 and arm64.
const (
	// ProtocolVersion is the version of the message set and bodies above,
	// carried in Hello. A reader refuses any other.
	ProtocolVersion = 1
	// MaxBatchPages bounds the pages of one Pages message (4 MiB of data).
	MaxBatchPages = 1024
	// MaxReason bounds an Abort reason.
	MaxReason = 1024
	// DefaultMaxMessage is the reader's default cap on a body: room for a
	// full device-state envelope.
	DefaultMaxMessage = 2 + envelopeMin + MaxEnvelopePayload

	msgHeader  = 5
	msgTrailer = 4
	pageEntry  = 8 + mem.PageSize
	roundEndSz = 4 + 8 + 8 + 1
	maxPagesSz = 4 + MaxBatchPages*pageEntry
	maxHelloSz = 2 + envelopeMin + 4096 + MaxConfigLen
	maxVCPUSz  = envelopeMin + 64
)

// MsgType is a stream message's type. Numbers are part of the protocol.
type MsgType uint8

//go:generate stringer -type=MsgType -trimprefix=Msg -output=msgtype_string.go

// Message types.
const (
	MsgHello MsgType = iota + 1
	MsgPages
	MsgRoundEnd
	MsgDeviceState
	MsgVCPU
	MsgReady
	MsgCommit
	MsgAck
	MsgAbort
	// MsgDirect: the destination runs the VM on its adapter again, the
	// migration's last step after the commit.
	MsgDirect
)

// maxBody is the largest body a message of type t may have, 0 for no valid
// message; -1 means only the reader's cap applies.
func maxBody(t MsgType) int {
	switch t {
	case MsgHello:
		return maxHelloSz
	case MsgPages:
		return maxPagesSz
	case MsgRoundEnd:
		return roundEndSz
	case MsgDeviceState:
		return -1
	case MsgVCPU:
		return maxVCPUSz
	case MsgReady, MsgCommit, MsgDirect:
		return 0
	case MsgAck:
		return 1
	case MsgAbort:
		return MaxReason
	}
	return -2
}

// Errors of the stream, beside the envelope's (ErrTooLarge, ErrChecksum,
// ErrMalformed, ErrVersion apply to messages too).
var (
	ErrMsgType    = errors.New("migration: unknown message type")
	ErrUnexpected = errors.New("migration: unexpected message")
	ErrAborted    = errors.New("migration: aborted by the peer")
	ErrClosed     = errors.New("migration: connection closed")
)

// AbortError is a peer's Abort: it unwraps to ErrAborted and names the
// peer's reason.
type AbortError struct {
	Reason string
}

func (e *AbortError) Error() string {
	return fmt.Sprintf("migration: aborted by the peer: %q", e.Reason)
}

// Unwrap returns ErrAborted.
func (e *AbortError) Unwrap() error { return ErrAborted }

// RoundEnd closes one pre-copy round.
type RoundEnd struct {
	Round          uint32
	Pages          uint64 // pages sent in this round
	DirtyRemaining uint64 // pages dirty when the round ended
	Final          bool   // the stop-and-copy round: memory is complete
}

// Msg is one stream message; only the fields of its Type are meaningful.
// In a *Msg from Reader.Next, PageNums, PageData and Envelope alias the
// reader's buffers until its next call.
type Msg struct {
	Type MsgType

	Version uint16 // Hello: protocol version
	Spec    VMSpec // Hello

	PageNums []uint64 // Pages: page numbers
	PageData []byte   // Pages: len(PageNums) pages, in order

	Round RoundEnd // RoundEnd

	NIC      uint16 // DeviceState: index of the VM's NIC
	Envelope []byte // DeviceState, VCPU: the state's envelope

	Of MsgType // Ack: the type acknowledged

	Reason string // Abort
}

// Writer encodes messages into a buffer; Flush sends them. Not safe for
// concurrent use. After an error every call fails.
type Writer struct {
	bw    *bufio.Writer
	max   int
	small []byte // header and fixed fields of the message being written
	n     atomic.Uint64
}

// NewWriter returns a Writer with a buffer of size bytes (64 KiB if ≤ 0).
// Bodies larger than the buffer pass through to w without a copy.
func NewWriter(w io.Writer, size int) *Writer {
	if size <= 0 {
		size = 64 << 10
	}
	return &Writer{bw: bufio.NewWriterSize(w, size), max: DefaultMaxMessage, small: make([]byte, 0, 16+8*MaxBatchPages)}
}

// Bytes returns the bytes encoded so far (flushed or not).
func (w *Writer) Bytes() uint64 { return w.n.Load() }

// Write encodes m into the buffer, whole or not at all. It does not flush.
func (w *Writer) Write(m *Msg) error {
	s := w.small[:msgHeader]
	var tail []byte
	switch m.Type {
	case MsgHello:
		s = binary.BigEndian.AppendUint16(s, m.Version)
		env, err := EncodeVMSpec(m.Spec)
		if err != nil {
			return err
		}
		tail = env
	case MsgPages:
		n := len(m.PageNums)
		if n == 0 || n > MaxBatchPages || len(m.PageData) != n*mem.PageSize {
			return fmt.Errorf("%w: Pages with %d page numbers and %d bytes", ErrMalformed, n, len(m.PageData))
		}
		s = binary.BigEndian.AppendUint32(s, uint32(n))
		for _, p := range m.PageNums {
			s = binary.BigEndian.AppendUint64(s, p)
		}
		tail = m.PageData
	case MsgRoundEnd:
		r := &m.Round
		s = binary.BigEndian.AppendUint32(s, r.Round)
		s = binary.BigEndian.AppendUint64(s, r.Pages)
		s = binary.BigEndian.AppendUint64(s, r.DirtyRemaining)
		if r.Final {
			s = append(s, 1)
		} else {
			s = append(s, 0)
		}
	case MsgDeviceState:
		s = binary.BigEndian.AppendUint16(s, m.NIC)
		tail = m.Envelope
	case MsgVCPU:
		tail = m.Envelope
	case MsgReady, MsgCommit, MsgDirect:
	case MsgAck:
		s = append(s, byte(m.Of))
	case MsgAbort:
		if len(m.Reason) > MaxReason {
			return fmt.Errorf("%w: abort reason of %d bytes, cap %d", ErrTooLarge, len(m.Reason), MaxReason)
		}
		s = append(s, m.Reason...)
	default:
		return fmt.Errorf("%w: %d", ErrMsgType, m.Type)
	}
	body := len(s) - msgHeader + len(tail)
	if lim := maxBody(m.Type); body > w.max || (lim >= 0 && body > lim) {
		return fmt.Errorf("%w: %v body of %d bytes", ErrTooLarge, m.Type, body)
	}
	s[0] = byte(m.Type)
	binary.BigEndian.PutUint32(s[1:], uint32(body))
	crc := crc32.Update(crc32.Checksum(s, castagnoli), castagnoli, tail)
	s = binary.BigEndian.AppendUint32(s, crc)
	w.small = s[:0]
	// The checksum goes last but was computed first: write the small part
	// without it, the tail, then the four checksum bytes.
	if _, err := w.bw.Write(s[:len(s)-msgTrailer]); err != nil {
		return err
	}
	if len(tail) >= w.bw.Size() {
		// A tail as large as the buffer goes straight to the transport
		// from the caller's memory once the buffer is empty, instead of
		// topping the buffer up with a copy of its head first.
		if err := w.bw.Flush(); err != nil {
			return err
		}
	}
	if _, err := w.bw.Write(tail); err != nil {
		return err
	}
	if _, err := w.bw.Write(s[len(s)-msgTrailer:]); err != nil {
		return err
	}
	w.n.Add(uint64(len(s) + len(tail)))
	return nil
}

// Flush sends what is buffered.
func (w *Writer) Flush() error { return w.bw.Flush() }

// Reader decodes messages. Not safe for concurrent use.
type Reader struct {
	br   *bufio.Reader
	max  int
	hdr  [msgHeader]byte
	body []byte   // reused; grows only as bytes arrive
	pns  []uint64 // reused for Pages
	msg  Msg      // returned by Next
	n    atomic.Uint64
}

// NewReader returns a Reader refusing bodies above max bytes
// (DefaultMaxMessage if max ≤ 0).
func NewReader(r io.Reader, max int) *Reader {
	if max <= 0 {
		max = DefaultMaxMessage
	}
	return &Reader{br: bufio.NewReaderSize(r, 64<<10), max: max}
}

// Bytes returns the bytes decoded so far.
func (r *Reader) Bytes() uint64 { return r.n.Load() }

// Next reads one message. It returns io.EOF at a clean end of stream and
// io.ErrUnexpectedEOF inside a message. The *Msg and the slices in it are
// reused by the next call.
func (r *Reader) Next() (*Msg, error) {
	if _, err := io.ReadFull(r.br, r.hdr[:]); err != nil {
		return nil, err
	}
	t := MsgType(r.hdr[0])
	n := binary.BigEndian.Uint32(r.hdr[1:])
	lim := maxBody(t)
	if lim < -1 {
		return nil, fmt.Errorf("%w: %d", ErrMsgType, r.hdr[0])
	}
	if uint64(n) > uint64(r.max) || (lim >= 0 && n > uint32(lim)) {
		return nil, fmt.Errorf("%w: %v body of %d bytes", ErrTooLarge, t, n)
	}
	b, err := readGrowing(r.br, r.body[:0], int(n)+msgTrailer)
	r.body = b[:0]
	if err != nil {
		return nil, noEOF(err)
	}
	body := b[:n]
	want := binary.BigEndian.Uint32(b[n:])
	if got := crc32.Update(crc32.Checksum(r.hdr[:], castagnoli), castagnoli, body); got != want {
		return nil, fmt.Errorf("%w: %v message CRC-32C %08x, computed %08x", ErrChecksum, t, want, got)
	}
	r.n.Add(uint64(msgHeader + len(b)))
	if err := r.parse(t, body); err != nil {
		return nil, err
	}
	return &r.msg, nil
}

func (r *Reader) parse(t MsgType, b []byte) error {
	m := &r.msg
	*m = Msg{Type: t}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %v: "+format, append([]any{ErrMalformed, t}, a...)...)
	}
	switch t {
	case MsgHello:
		if len(b) < 2 {
			return bad("%d bytes", len(b))
		}
		m.Version = binary.BigEndian.Uint16(b)
		if m.Version != ProtocolVersion {
			return fmt.Errorf("%w: peer speaks protocol %d, this build %d", ErrVersion, m.Version, ProtocolVersion)
		}
		spec, err := DecodeVMSpec(b[2:])
		if err != nil {
			return fmt.Errorf("migration: Hello: %w", err)
		}
		m.Spec = spec
	case MsgPages:
		if len(b) < 4 {
			return bad("%d bytes", len(b))
		}
		n := binary.BigEndian.Uint32(b)
		if n == 0 || n > MaxBatchPages || uint64(len(b)) != 4+uint64(n)*pageEntry {
			return bad("%d pages in %d bytes", n, len(b))
		}
		pns := r.pns[:0]
		for i := range int(n) {
			pns = append(pns, binary.BigEndian.Uint64(b[4+8*i:]))
		}
		r.pns = pns
		m.PageNums = pns
		m.PageData = b[4+8*int(n):]
	case MsgRoundEnd:
		if len(b) != roundEndSz || b[20] > 1 {
			return bad("% x", b)
		}
		m.Round = RoundEnd{
			Round:          binary.BigEndian.Uint32(b),
			Pages:          binary.BigEndian.Uint64(b[4:]),
			DirtyRemaining: binary.BigEndian.Uint64(b[12:]),
			Final:          b[20] == 1,
		}
	case MsgDeviceState:
		if len(b) < 2 {
			return bad("%d bytes", len(b))
		}
		m.NIC = binary.BigEndian.Uint16(b)
		m.Envelope = b[2:]
	case MsgVCPU:
		m.Envelope = b
	case MsgReady, MsgCommit, MsgDirect:
		if len(b) != 0 {
			return bad("%d bytes", len(b))
		}
	case MsgAck:
		if len(b) != 1 || maxBody(MsgType(b[0])) < -1 {
			return bad("% x", b)
		}
		m.Of = MsgType(b[0])
	case MsgAbort:
		m.Reason = string(b)
	}
	return nil
}

// ConnConfig tunes a Conn. Zero values take the defaults.
type ConnConfig struct {
	// MaxMessage caps a received body (DefaultMaxMessage).
	MaxMessage int
	// BufferSize is the write buffer (256 KiB).
	BufferSize int
	// IdleTimeout fails a read or write that makes no progress for this
	// long (30 s); negative disables it. Waiting for the peer's next
	// message on the return path is not bounded by it: use a context.
	IdleTimeout time.Duration
	// Linger bounds how long Abort tries to deliver its message and drain
	// the peer, and how long a failed source waits to learn the peer's
	// abort reason (1 s).
	Linger time.Duration
}

func (c *ConnConfig) defaults() {
	if c.BufferSize <= 0 {
		c.BufferSize = 256 << 10
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 30 * time.Second
	}
	if c.Linger <= 0 {
		c.Linger = time.Second
	}
}

type readDeadliner interface{ SetReadDeadline(time.Time) error }
type writeDeadliner interface{ SetWriteDeadline(time.Time) error }

// Conn is one end of a migration stream over a byte stream: a TCP
// connection between hosts, a net.Pipe in one process. See the package doc
// for its goroutine.
type Conn struct {
	rw  io.ReadWriter
	cfg ConnConfig // immutable
	rd  readDeadliner
	wd  writeDeadliner

	r     *Reader   // owned by the reading goroutine (Recv's caller, or the return path)
	lastR time.Time // last read-deadline refresh; owned like r

	wmu   sync.Mutex
	w     *Writer   // guarded by wmu
	lastW time.Time // last write-deadline refresh; guarded by wmu

	dl struct {
		mu    sync.Mutex
		cause error       // why the connection was interrupted; set once; guarded by mu
		set   atomic.Bool // cause != nil, for the fast path
	}

	rp struct {
		once    sync.Once
		started atomic.Bool
		msgs    chan Msg      // Ack and Ready from the destination; immutable
		done    chan struct{} // closed when the return path has exited; immutable
		err     error         // why it exited; written before done closes
	}

	closeOnce sync.Once
	closeErr  error
}

// NewConn wraps rw. It starts no goroutine.
func NewConn(rw io.ReadWriter, cfg ConnConfig) *Conn {
	cfg.defaults()
	c := &Conn{rw: rw, cfg: cfg, r: NewReader(rw, cfg.MaxMessage), w: NewWriter(rw, cfg.BufferSize)}
	c.rd, _ = rw.(readDeadliner)
	c.wd, _ = rw.(writeDeadliner)
	c.rp.msgs = make(chan Msg, 16)
	c.rp.done = make(chan struct{})
	return c
}

// Sent returns the bytes written to the stream so far.
func (c *Conn) Sent() uint64 { return c.w.Bytes() }

// Received returns the bytes read from the stream so far.
func (c *Conn) Received() uint64 { return c.r.Bytes() }

// interrupt makes every blocked and later read and write fail with cause
// (Abort excepted): deadlines in the past, or closing a transport without
// deadlines.
func (c *Conn) interrupt(cause error) {
	c.dl.mu.Lock()
	defer c.dl.mu.Unlock()
	if c.dl.cause == nil {
		c.dl.cause = cause
		c.dl.set.Store(true)
	}
	past := time.Unix(1, 0)
	if c.rd != nil {
		c.rd.SetReadDeadline(past)
	}
	if c.wd != nil {
		c.wd.SetWriteDeadline(past)
	}
	if c.rd == nil || c.wd == nil {
		if cl, ok := c.rw.(io.Closer); ok {
			cl.Close()
		}
	}
}

func (c *Conn) interrupted() error {
	if !c.dl.set.Load() {
		return nil
	}
	c.dl.mu.Lock()
	defer c.dl.mu.Unlock()
	return c.dl.cause
}

// bind interrupts the connection when ctx ends; the returned stop undoes
// the binding.
func (c *Conn) bind(ctx context.Context) (stop func() bool) {
	if ctx.Done() == nil {
		return func() bool { return true }
	}
	return context.AfterFunc(ctx, func() { c.interrupt(context.Cause(ctx)) })
}

// refresh pushes an idle deadline forward, at most every quarter of the
// timeout (setting one can allocate), unless the connection is interrupted.
func (c *Conn) refresh(last *time.Time, set func(time.Time) error) error {
	if c.cfg.IdleTimeout < 0 || set == nil {
		return c.interrupted()
	}
	now := time.Now()
	if now.Sub(*last) < c.cfg.IdleTimeout/4 {
		return c.interrupted()
	}
	c.dl.mu.Lock()
	defer c.dl.mu.Unlock()
	if c.dl.cause != nil {
		return c.dl.cause
	}
	*last = now
	return set(now.Add(c.cfg.IdleTimeout))
}

func (c *Conn) refreshWriteLocked() error {
	var set func(time.Time) error
	if c.wd != nil {
		set = c.wd.SetWriteDeadline
	}
	return c.refresh(&c.lastW, set)
}

// cause explains an error of op. A format error (this package's sentinels)
// is returned as it is; an I/O error gives way to the interruption's cause
// (a context's, or a peer's abort) when there is one.
func (c *Conn) cause(op string, err error) error {
	if isFormatErr(err) {
		return err
	}
	if cause := c.interrupted(); cause != nil {
		return cause
	}
	return fmt.Errorf("migration: %s: %w", op, err)
}

// isFormatErr reports an error about bytes, not about the transport.
func isFormatErr(err error) bool {
	for _, s := range [...]error{ErrMalformed, ErrTooLarge, ErrMsgType, ErrChecksum, ErrVersion, ErrKind, ErrBadMagic, ErrTruncated} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// Write buffers m; it reaches the peer at the next Flush (or when the
// buffer fills). Safe for concurrent use with other writes.
func (c *Conn) Write(m *Msg) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(m)
}

func (c *Conn) writeLocked(m *Msg) error {
	if err := c.refreshWriteLocked(); err != nil {
		return err
	}
	if err := c.w.Write(m); err != nil {
		return c.cause("write "+m.Type.String(), err)
	}
	return nil
}

// Flush sends the buffered messages.
func (c *Conn) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

func (c *Conn) flushLocked() error {
	if err := c.refreshWriteLocked(); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return c.cause("flush", err)
	}
	return nil
}

// Send writes msgs and flushes, giving up when ctx ends.
func (c *Conn) Send(ctx context.Context, msgs ...*Msg) error {
	defer c.bind(ctx)()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, m := range msgs {
		if err := c.writeLocked(m); err != nil {
			return err
		}
	}
	return c.flushLocked()
}

// Recv reads the next message, on the destination (a Conn whose return
// path runs cannot Recv). An Abort from the peer is returned as an
// *AbortError. The message is valid until the next Recv.
func (c *Conn) Recv(ctx context.Context) (*Msg, error) {
	defer c.bind(ctx)()
	return c.recv()
}

// ErrReturnPath reports Recv on a Conn whose return path owns the reads.
var ErrReturnPath = errors.New("migration: Recv on a source connection: its return path owns the reads")

func (c *Conn) recv() (*Msg, error) {
	if c.rp.started.Load() {
		return nil, ErrReturnPath
	}
	var set func(time.Time) error
	if c.rd != nil {
		set = c.rd.SetReadDeadline
	}
	if err := c.refresh(&c.lastR, set); err != nil {
		return nil, err
	}
	m, err := c.r.Next()
	if err != nil {
		return nil, c.cause("read", err)
	}
	if m.Type == MsgAbort {
		return nil, &AbortError{Reason: m.Reason}
	}
	return m, nil
}

// startReturnPath starts, once, the goroutine that reads the destination's
// messages on the source.
func (c *Conn) startReturnPath() {
	c.rp.once.Do(func() {
		c.rp.started.Store(true)
		go c.returnPath()
	})
}

// returnPath reads until the stream ends or the destination aborts. An
// Abort interrupts the connection so that a write blocked on a peer that
// stopped reading returns at once.
func (c *Conn) returnPath() {
	defer close(c.rp.done)
	for {
		m, err := c.r.Next()
		if err != nil {
			c.rp.err = c.cause("return path", err)
			return
		}
		switch m.Type {
		case MsgAbort:
			ae := &AbortError{Reason: m.Reason}
			c.interrupt(ae)
			c.rp.err = ae
			return
		case MsgAck, MsgReady, MsgDirect:
			select {
			case c.rp.msgs <- *m:
				continue
			default:
			}
			c.rp.err = fmt.Errorf("%w: destination sent more than %d messages unasked", ErrUnexpected, cap(c.rp.msgs))
		default:
			c.rp.err = fmt.Errorf("%w: %v from the destination", ErrUnexpected, m.Type)
		}
		c.interrupt(c.rp.err)
		return
	}
}

// Expect waits, on the source, for the destination's next message, which
// must be of type want: an Ack or Ready. It returns an *AbortError if the
// destination aborted. The first call starts the return path.
func (c *Conn) Expect(ctx context.Context, want MsgType) (Msg, error) {
	c.startReturnPath()
	var m Msg
	select {
	case m = <-c.rp.msgs:
	case <-c.rp.done:
		select {
		case m = <-c.rp.msgs:
		default:
			return Msg{}, c.rp.err
		}
	case <-ctx.Done():
		return Msg{}, context.Cause(ctx)
	}
	if m.Type != want {
		return m, fmt.Errorf("%w: %v from the destination, waiting for %v", ErrUnexpected, m.Type, want)
	}
	return m, nil
}

// ExpectAck waits for the destination's Ack of a message of type of.
func (c *Conn) ExpectAck(ctx context.Context, of MsgType) error {
	m, err := c.Expect(ctx, MsgAck)
	if err != nil {
		return err
	}
	if m.Of != of {
		return fmt.Errorf("%w: Ack of %v, waiting for the Ack of %v", ErrUnexpected, m.Of, of)
	}
	return nil
}

// settle explains a failure on the source: if the destination aborted, its
// reason wins over the write error it caused (a closed pipe, a reset), so
// it waits up to Linger for the return path to read the Abort.
func (c *Conn) settle(err error) error {
	if err == nil || !c.rp.started.Load() || errors.Is(err, ErrAborted) {
		return err
	}
	t := time.NewTimer(c.cfg.Linger)
	defer t.Stop()
	select {
	case <-c.rp.done:
		if errors.Is(c.rp.err, ErrAborted) {
			return c.rp.err
		}
	case <-t.C:
	}
	return err
}

// Abort tells the peer why the migration ends, best effort, within Linger
// even if the connection was interrupted. On the destination (no return
// path) it then drains what the source still sends, until the source
// closes or Linger passes, so the source reads the reason instead of a
// reset. A write in progress on another goroutine finishes (or fails)
// first. The caller closes the Conn afterwards.
func (c *Conn) Abort(reason string) error {
	if len(reason) > MaxReason {
		reason = reason[:MaxReason]
	}
	deadline := time.Now().Add(c.cfg.Linger)
	c.wmu.Lock()
	c.dl.mu.Lock()
	if c.wd != nil {
		c.wd.SetWriteDeadline(deadline)
	}
	c.dl.mu.Unlock()
	err := c.w.Write(&Msg{Type: MsgAbort, Reason: reason})
	if err == nil {
		err = c.w.Flush()
	}
	c.wmu.Unlock()
	if !c.rp.started.Load() && c.rd != nil {
		c.dl.mu.Lock()
		c.rd.SetReadDeadline(deadline)
		c.dl.mu.Unlock()
		io.Copy(io.Discard, c.r.br)
	}
	if err != nil {
		return fmt.Errorf("migration: sending Abort: %w", err)
	}
	return nil
}

// Close closes the transport if it is an io.Closer (else interrupts it) and
// waits for the return path to exit. Idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.interrupt(ErrClosed)
		if cl, ok := c.rw.(io.Closer); ok {
			c.closeErr = cl.Close()
		}
		if c.rp.started.Load() {
			<-c.rp.done
		}
	})
	return c.closeErr
}
