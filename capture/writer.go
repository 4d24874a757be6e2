package capture

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

const (
	// DefaultSnaplen is used when NewWriter is given snaplen 0. It is
	// libpcap's largest snapshot length, so frames are never cut.
	DefaultSnaplen = 262144

	// DefaultMaxFrames is the cap of a new Writer: about 150 MB of
	// 1500-byte frames.
	DefaultMaxFrames = 100_000
)

// Errors.
var (
	ErrClosed     = errors.New("capture: writer closed")
	ErrBadSnaplen = errors.New("capture: snaplen out of range")
)

// Stats counts the frames offered to a Writer. Every frame is counted once:
// Captured, or not captured under one reason.
type Stats struct {
	Captured  uint64 // written to the file (including truncated ones)
	Truncated uint64 // written, but cut to the snap length
	Full      uint64 // not captured: the cap on frames was reached
	Closed    uint64 // not captured: WriteFrame after Close
	Failed    uint64 // not captured: the underlying writer failed
}

// NotCaptured returns the frames offered but not written, all reasons.
func (s Stats) NotCaptured() uint64 { return s.Full + s.Closed + s.Failed }

// Writer writes frames to a pcap stream. See the package doc for
// concurrency.
type Writer struct {
	snaplen int // immutable

	mu        sync.Mutex
	buf       *bufio.Writer  // guarded by mu; buffers the destination
	pw        *pcapgo.Writer // guarded by mu; writes into buf
	maxFrames uint64         // guarded by mu; 0 = no cap
	closed    bool           // guarded by mu
	closeErr  error          // guarded by mu; what Close returned first
	err       error          // guarded by mu; first write error, sticky

	// Counters are atomics so that Stats does not wait for a write.
	captured, truncated, full, closedDrops, failed atomic.Uint64
}

// NewWriter writes a pcap file header (link type Ethernet, nanosecond
// timestamps) to w and returns a Writer for the frames. snaplen is the
// largest number of bytes kept per frame, 0 meaning DefaultSnaplen. The
// caller keeps ownership of w: Close flushes it but does not close it.
func NewWriter(w io.Writer, snaplen int) (*Writer, error) {
	if snaplen == 0 {
		snaplen = DefaultSnaplen
	}
	if snaplen < 0 || snaplen > DefaultSnaplen {
		return nil, fmt.Errorf("%w: %d (want 0..%d)", ErrBadSnaplen, snaplen, DefaultSnaplen)
	}
	buf := bufio.NewWriter(w)
	pw := pcapgo.NewWriterNanos(buf)
	if err := pw.WriteFileHeader(uint32(snaplen), layers.LinkTypeEthernet); err != nil {
		return nil, fmt.Errorf("capture: write file header: %w", err)
	}
	// Flush at once so that even a capture that sees no frame is a valid
	// file.
	if err := buf.Flush(); err != nil {
		return nil, fmt.Errorf("capture: write file header: %w", err)
	}
	return &Writer{snaplen: snaplen, buf: buf, pw: pw, maxFrames: DefaultMaxFrames}, nil
}

// SetMaxFrames sets the cap on captured frames; 0 removes it. Frames
// already captured count against the new cap.
func (w *Writer) SetMaxFrames(n uint64) {
	w.mu.Lock()
	w.maxFrames = n
	w.mu.Unlock()
}

// Snaplen returns the snapshot length written in the file header.
func (w *Writer) Snaplen() int { return w.snaplen }

// WriteFrame appends one Ethernet frame (destination MAC first, no FCS)
// seen at ts; a zero ts means now. Frames longer than the snap length are
// cut, and the file records their original length. Once the cap is reached
// frames are counted as Full and dropped without error. After Close it
// returns ErrClosed; after a failed write it returns that error again. The
// frame is copied before WriteFrame returns.
func (w *Writer) WriteFrame(ts time.Time, frame []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closed:
		w.closedDrops.Add(1)
		return ErrClosed
	case w.err != nil:
		w.failed.Add(1)
		return w.err
	case w.maxFrames != 0 && w.captured.Load() >= w.maxFrames:
		w.full.Add(1)
		return nil
	}
	data := frame
	if len(data) > w.snaplen {
		data = data[:w.snaplen]
	}
	ci := gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(data), Length: len(frame)}
	if err := w.pw.WritePacket(ci, data); err != nil {
		// A partial record corrupts the rest of the stream, so nothing
		// more is written.
		w.err = fmt.Errorf("capture: write frame: %w", err)
		w.failed.Add(1)
		return w.err
	}
	w.captured.Add(1)
	if len(data) < len(frame) {
		w.truncated.Add(1)
	}
	return nil
}

// Flush writes buffered frames to the underlying writer, so that a reader
// of a capture in progress sees them.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushLocked()
}

func (w *Writer) flushLocked() error {
	if w.closed || w.err != nil {
		return w.err
	}
	if err := w.buf.Flush(); err != nil {
		w.err = fmt.Errorf("capture: flush: %w", err)
	}
	return w.err
}

// Close flushes the remaining frames and stops the Writer; later frames are
// counted as Closed. It does not close the underlying writer. Close is
// idempotent and returns the same result each time.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return w.closeErr
	}
	w.closeErr = w.flushLocked()
	w.closed = true
	return w.closeErr
}

// Stats returns the frame counters. It does not wait for a write in
// progress, so the counters may be mid-update relative to each other.
func (w *Writer) Stats() Stats {
	return Stats{
		Captured:  w.captured.Load(),
		Truncated: w.truncated.Load(),
		Full:      w.full.Load(),
		Closed:    w.closedDrops.Load(),
		Failed:    w.failed.Load(),
	}
}
