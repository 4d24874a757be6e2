package capture

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/vmfex/vmfex/wire"
)

var (
	macA = wire.MAC{0x00, 0x25, 0xb5, 0x00, 0x00, 0x1a}
	macB = wire.MAC{0x00, 0x25, 0xb5, 0x00, 0x00, 0x2b}
	ipA  = [4]byte{10, 0, 0, 1}
	ipB  = [4]byte{10, 0, 0, 2}
)

// probeFrame returns an untagged probe frame of n bytes.
func probeFrame(t testing.TB, seq uint64, n int) []byte {
	t.Helper()
	b := make([]byte, max(n, wire.ProbeFrameMinLen))
	p := wire.Probe{SrcVM: 1, DstVM: 2, Seq: seq}
	return b[:wire.BuildProbeFrame(b, macB, macA, ipA, ipB, p, n)]
}

type record struct {
	ts       time.Time
	data     []byte
	original int
}

// readAll reads a whole pcap stream back with pcapgo.
func readAll(t *testing.T, file []byte) (snaplen uint32, recs []record) {
	t.Helper()
	r, err := pcapgo.NewReader(bytes.NewReader(file))
	if err != nil {
		t.Fatalf("pcapgo.NewReader: %v", err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Errorf("link type = %v, want Ethernet", r.LinkType())
	}
	if r.Resolution().ToDuration() != time.Nanosecond {
		t.Errorf("timestamp resolution = %v, want 1ns", r.Resolution())
	}
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			return r.Snaplen(), recs
		}
		if err != nil {
			t.Fatalf("ReadPacketData after %d records: %v", len(recs), err)
		}
		if ci.CaptureLength != len(data) {
			t.Errorf("record %d: capture length %d, data %d", len(recs), ci.CaptureLength, len(data))
		}
		recs = append(recs, record{ci.Timestamp, data, ci.Length})
	}
}

func TestWriteReadBack(t *testing.T) {
	var frames [][]byte
	frames = append(frames, probeFrame(t, 1, 0), probeFrame(t, 2, 1514), probeFrame(t, 3, 9014))
	rarp := make([]byte, wire.MinFrameLen)
	frames = append(frames, rarp[:wire.BuildRARPAnnounce(rarp, macA)])
	frames = append(frames, []byte{1, 2, 3}) // runt: written as is

	var file bytes.Buffer
	w, err := NewWriter(&file, 0)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	for i, f := range frames {
		if err := w.WriteFrame(base.Add(time.Duration(i)*time.Nanosecond), f); err != nil {
			t.Fatalf("WriteFrame %d: %v", i, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	snaplen, recs := readAll(t, file.Bytes())
	if snaplen != DefaultSnaplen {
		t.Errorf("snaplen = %d, want %d", snaplen, DefaultSnaplen)
	}
	if len(recs) != len(frames) {
		t.Fatalf("read %d records, want %d", len(recs), len(frames))
	}
	for i, r := range recs {
		if !bytes.Equal(r.data, frames[i]) || r.original != len(frames[i]) {
			t.Errorf("record %d: %d bytes (of %d), want the %d written", i, len(r.data), r.original, len(frames[i]))
		}
		if want := base.Add(time.Duration(i) * time.Nanosecond); !r.ts.Equal(want) {
			t.Errorf("record %d: timestamp %v, want %v", i, r.ts, want)
		}
	}
	if got, want := w.Stats(), (Stats{Captured: uint64(len(frames))}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

func TestSnaplenTruncates(t *testing.T) {
	var file bytes.Buffer
	w, err := NewWriter(&file, 64)
	if err != nil {
		t.Fatal(err)
	}
	long, short := probeFrame(t, 1, 200), probeFrame(t, 2, 0)[:64]
	for _, f := range [][]byte{long, short} {
		if err := w.WriteFrame(time.Time{}, f); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	snaplen, recs := readAll(t, file.Bytes())
	if snaplen != 64 || len(recs) != 2 {
		t.Fatalf("snaplen %d, %d records; want 64, 2", snaplen, len(recs))
	}
	if !bytes.Equal(recs[0].data, long[:64]) || recs[0].original != 200 {
		t.Errorf("truncated record: %d of %d bytes, want 64 of 200", len(recs[0].data), recs[0].original)
	}
	if !bytes.Equal(recs[1].data, short) || recs[1].original != 64 {
		t.Errorf("exact record: %d of %d bytes, want 64 of 64", len(recs[1].data), recs[1].original)
	}
	if time.Since(recs[0].ts) > time.Minute || recs[0].ts.After(time.Now()) {
		t.Errorf("zero timestamp written as %v, want about now", recs[0].ts)
	}
	if got, want := w.Stats(), (Stats{Captured: 2, Truncated: 1}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

func TestMaxFrames(t *testing.T) {
	var file bytes.Buffer
	w, err := NewWriter(&file, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.SetMaxFrames(3)
	for i := range 5 {
		if err := w.WriteFrame(time.Time{}, probeFrame(t, uint64(i), 0)); err != nil {
			t.Fatalf("WriteFrame %d: %v", i, err)
		}
	}
	w.SetMaxFrames(4) // raising the cap lets one more in
	for i := range 2 {
		w.WriteFrame(time.Time{}, probeFrame(t, uint64(10+i), 0))
	}
	w.Close()
	_, recs := readAll(t, file.Bytes())
	if len(recs) != 4 {
		t.Fatalf("read %d records, want 4", len(recs))
	}
	if p, ok := wire.ParseProbeFrame(recs[3].data); !ok || p.Seq != 10 {
		t.Errorf("fourth record = %+v, %v; want seq 10", p, ok)
	}
	st := w.Stats()
	if want := (Stats{Captured: 4, Full: 3}); st != want || st.NotCaptured() != 3 {
		t.Errorf("Stats = %+v, want %+v", st, want)
	}
}

func TestUnlimited(t *testing.T) {
	w, err := NewWriter(io.Discard, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.SetMaxFrames(0)
	f := probeFrame(t, 0, 0)
	for range DefaultMaxFrames + 10 {
		w.WriteFrame(time.Time{}, f)
	}
	if st := w.Stats(); st.Captured != DefaultMaxFrames+10 || st.Full != 0 {
		t.Errorf("Stats = %+v, want all captured", st)
	}
}

func TestCloseIdempotent(t *testing.T) {
	var file bytes.Buffer
	w, err := NewWriter(&file, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The header is on the destination before any frame, so an empty
	// capture is a valid file.
	if _, recs := readAll(t, file.Bytes()); len(recs) != 0 {
		t.Errorf("empty capture has %d records", len(recs))
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := w.WriteFrame(time.Time{}, probeFrame(t, 0, 0)); !errors.Is(err, ErrClosed) {
		t.Errorf("WriteFrame after Close = %v, want ErrClosed", err)
	}
	if got, want := w.Stats(), (Stats{Closed: 1}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

func TestFlush(t *testing.T) {
	var file bytes.Buffer
	w, err := NewWriter(&file, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.WriteFrame(time.Time{}, probeFrame(t, 0, 0))
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, recs := readAll(t, file.Bytes()); len(recs) != 1 {
		t.Errorf("after Flush: %d records, want 1", len(recs))
	}
}

// failWriter accepts limit bytes, then fails.
type failWriter struct{ limit int }

var errDisk = errors.New("disk full")

func (f *failWriter) Write(p []byte) (int, error) {
	if len(p) > f.limit {
		n := f.limit
		f.limit = 0
		return n, errDisk
	}
	f.limit -= len(p)
	return len(p), nil
}

func TestWriteErrors(t *testing.T) {
	if _, err := NewWriter(&failWriter{limit: 10}, 0); !errors.Is(err, errDisk) {
		t.Errorf("NewWriter on a failing writer = %v, want %v", err, errDisk)
	}
	for _, s := range []int{-1, DefaultSnaplen + 1} {
		if _, err := NewWriter(io.Discard, s); !errors.Is(err, ErrBadSnaplen) {
			t.Errorf("NewWriter(snaplen %d) = %v, want ErrBadSnaplen", s, err)
		}
	}

	// Room for the header and a little more: the failure shows at Flush,
	// since frames are buffered, and sticks.
	w, err := NewWriter(&failWriter{limit: 24 + 50}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFrame(time.Time{}, probeFrame(t, 0, 0)); err != nil {
		t.Fatalf("buffered WriteFrame = %v", err)
	}
	if err := w.Flush(); !errors.Is(err, errDisk) {
		t.Fatalf("Flush = %v, want %v", err, errDisk)
	}
	if err := w.WriteFrame(time.Time{}, probeFrame(t, 1, 0)); !errors.Is(err, errDisk) {
		t.Errorf("WriteFrame after failure = %v, want %v", err, errDisk)
	}
	if err := w.Close(); !errors.Is(err, errDisk) {
		t.Errorf("Close after failure = %v, want %v", err, errDisk)
	}
	if got, want := w.Stats(), (Stats{Captured: 1, Failed: 1}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}

	// A frame larger than the buffer reaches the destination inside
	// WriteFrame, which reports the failure itself.
	w, err = NewWriter(&failWriter{limit: 24 + 16 + 100}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFrame(time.Time{}, probeFrame(t, 0, 9014)); !errors.Is(err, errDisk) {
		t.Errorf("WriteFrame of a jumbo frame = %v, want %v", err, errDisk)
	}
	if got, want := w.Stats(), (Stats{Failed: 1}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

// TestConcurrentWriters checks that frames from many goroutines land whole
// and none is lost or doubled. Run with -race.
func TestConcurrentWriters(t *testing.T) {
	const writers, perWriter = 4, 300
	var file bytes.Buffer
	w, err := NewWriter(&file, 0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256)
			for i := range perWriter {
				n := 80 + (i*7+g)%170
				p := wire.Probe{SrcVM: uint32(g), Seq: uint64(i)}
				f := buf[:wire.BuildProbeFrame(buf, macB, macA, ipA, ipB, p, n)]
				if err := w.WriteFrame(time.Time{}, f); err != nil {
					t.Errorf("writer %d: WriteFrame: %v", g, err)
					return
				}
				// The frame was copied: the buffer is reused at once.
				clear(buf)
			}
		}()
	}
	// Readers of the counters run alongside the writers.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for w.Stats().Captured < writers*perWriter {
			w.Flush()
		}
	}()
	wg.Wait()
	<-done
	w.Close()

	_, recs := readAll(t, file.Bytes())
	if len(recs) != writers*perWriter {
		t.Fatalf("read %d records, want %d", len(recs), writers*perWriter)
	}
	next := make([]uint64, writers)
	for i, r := range recs {
		p, ok := wire.ParseProbeFrame(r.data)
		if !ok {
			t.Fatalf("record %d is not an intact probe frame", i)
		}
		// Each goroutine's frames keep its own order.
		if p.Seq != next[p.SrcVM] {
			t.Fatalf("record %d: writer %d seq %d, want %d", i, p.SrcVM, p.Seq, next[p.SrcVM])
		}
		next[p.SrcVM]++
	}
}

func TestWriteFrameAllocs(t *testing.T) {
	w, err := NewWriter(io.Discard, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.SetMaxFrames(0)
	f := probeFrame(t, 0, 1514)
	ts := time.Now()
	if n := testing.AllocsPerRun(100, func() { w.WriteFrame(ts, f) }); n != 0 {
		t.Errorf("WriteFrame: %v allocs per frame, want 0", n)
	}
}
