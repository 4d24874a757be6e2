package migration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/internal/testutil"
	"github.com/vmfex/vmfex/wire"
)

func testSpec() VMSpec {
	return VMSpec{Name: "vm1", ID: 42, MemSize: 4 << 20, MAC: wire.MAC{0x00, 0x50, 0x56, 0x01, 0x02, 0x03}, Driver: guest.DefaultDriverConfig()}
}

// sampleMsgs has one message of every type.
func sampleMsgs() []Msg {
	pages := make([]byte, 3*mem.PageSize)
	for i := range pages {
		pages[i] = byte(i * 7)
	}
	st := sampleState()
	dev, _ := EncodeDeviceState(&st)
	vcpu, _ := EncodeVCPU(VCPUState{IRQ: 3})
	return []Msg{
		{Type: MsgHello, Version: ProtocolVersion, Spec: testSpec()},
		{Type: MsgPages, PageNums: []uint64{0, 7, 1 << 40}, PageData: pages},
		{Type: MsgRoundEnd, Round: RoundEnd{Round: 3, Pages: 1000, DirtyRemaining: 12, Final: true}},
		{Type: MsgDeviceState, NIC: 1, Envelope: dev},
		{Type: MsgVCPU, Envelope: vcpu},
		{Type: MsgReady},
		{Type: MsgCommit},
		{Type: MsgAck, Of: MsgCommit},
		{Type: MsgAbort, Reason: "destination refuses: no memory"},
	}
}

func encodeMsgs(t testing.TB, msgs ...Msg) []byte {
	t.Helper()
	b, err := tryEncode(msgs...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func tryEncode(msgs ...Msg) ([]byte, error) {
	var buf bytes.Buffer
	w := NewWriter(&buf, 0)
	for i := range msgs {
		if err := w.Write(&msgs[i]); err != nil {
			return nil, fmt.Errorf("Write(%v): %w", msgs[i].Type, err)
		}
	}
	err := w.Flush()
	return buf.Bytes(), err
}

// copyMsg detaches a message from the Reader's buffers.
func copyMsg(m *Msg) Msg {
	c := *m
	c.PageNums = append([]uint64(nil), m.PageNums...)
	c.PageData = append([]byte(nil), m.PageData...)
	c.Envelope = append([]byte(nil), m.Envelope...)
	return c
}

func normal(m Msg) Msg {
	if len(m.PageNums) == 0 {
		m.PageNums = nil
	}
	if len(m.PageData) == 0 {
		m.PageData = nil
	}
	if len(m.Envelope) == 0 {
		m.Envelope = nil
	}
	return m
}

func TestMessageRoundTrip(t *testing.T) {
	msgs := sampleMsgs()
	stream := encodeMsgs(t, msgs...)
	r := NewReader(bytes.NewReader(stream), 0)
	for _, want := range msgs {
		m, err := r.Next()
		if err != nil {
			t.Fatalf("Next, want %v: %v", want.Type, err)
		}
		if got := copyMsg(m); !reflect.DeepEqual(normal(got), normal(want)) {
			t.Fatalf("%v round trip:\n got %+v\nwant %+v", want.Type, got, want)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("Next at the end = %v, want io.EOF", err)
	}
	if r.Bytes() != uint64(len(stream)) {
		t.Fatalf("Reader.Bytes = %d, want %d", r.Bytes(), len(stream))
	}
}

func TestWriterRefuses(t *testing.T) {
	w := NewWriter(io.Discard, 0)
	for _, tc := range []struct {
		name string
		m    Msg
		want error
	}{
		{"unknown type", Msg{Type: 77}, ErrMsgType},
		{"pages without data", Msg{Type: MsgPages, PageNums: []uint64{1}}, ErrMalformed},
		{"empty pages", Msg{Type: MsgPages}, ErrMalformed},
		{"too many pages", Msg{Type: MsgPages, PageNums: make([]uint64, MaxBatchPages+1), PageData: make([]byte, (MaxBatchPages+1)*mem.PageSize)}, ErrMalformed},
		{"long reason", Msg{Type: MsgAbort, Reason: strings.Repeat("x", MaxReason+1)}, ErrTooLarge},
		{"huge VCPU envelope", Msg{Type: MsgVCPU, Envelope: make([]byte, 1000)}, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := w.Write(&tc.m); !errors.Is(err, tc.want) {
				t.Fatalf("Write = %v, want %v", err, tc.want)
			}
		})
	}
	if w.Bytes() != 0 {
		t.Fatalf("refused messages wrote %d bytes", w.Bytes())
	}
}

// frame builds a message with a valid checksum around an arbitrary body.
func frame(typ byte, body []byte) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(body)))
	b = append(b, body...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func TestReaderRejects(t *testing.T) {
	good := encodeMsgs(t, Msg{Type: MsgRoundEnd, Round: RoundEnd{Round: 1}})
	hello := encodeMsgs(t, Msg{Type: MsgHello, Version: ProtocolVersion, Spec: testSpec()})
	pagesBody := func(n uint32, pages int) []byte {
		b := binary.BigEndian.AppendUint32(nil, n)
		b = append(b, make([]byte, 8*pages)...)
		return append(b, make([]byte, pages*mem.PageSize)...)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"unknown type", frame(0, nil), ErrMsgType},
		{"unknown type high", frame(200, nil), ErrMsgType},
		{"over the reader cap", []byte{byte(MsgDeviceState), 0x7f, 0xff, 0xff, 0xff}, ErrTooLarge},
		{"over the type's limit", []byte{byte(MsgRoundEnd), 0, 0, 1, 0}, ErrTooLarge},
		{"checksum", append(append([]byte(nil), good[:len(good)-1]...), good[len(good)-1]^1), ErrChecksum},
		{"body flipped", func() []byte { b := append([]byte(nil), good...); b[6] ^= 4; return b }(), ErrChecksum},
		{"truncated header", good[:3], io.ErrUnexpectedEOF},
		{"truncated body", good[:10], io.ErrUnexpectedEOF},
		{"truncated checksum", good[:len(good)-2], io.ErrUnexpectedEOF},
		{"pages zero", frame(byte(MsgPages), pagesBody(0, 0)), ErrMalformed},
		{"pages count lies", frame(byte(MsgPages), pagesBody(2, 1)), ErrMalformed},
		{"pages count huge", frame(byte(MsgPages), pagesBody(1<<30, 1)), ErrMalformed},
		{"pages short", frame(byte(MsgPages), []byte{0, 0}), ErrMalformed},
		{"round end bad final", frame(byte(MsgRoundEnd), append(make([]byte, 20), 2)), ErrMalformed},
		{"round end short", frame(byte(MsgRoundEnd), make([]byte, 20)), ErrMalformed},
		{"ready with body", frame(byte(MsgReady), []byte{0}), ErrTooLarge},
		{"ack of nothing", frame(byte(MsgAck), []byte{0}), ErrMalformed},
		{"ack empty", frame(byte(MsgAck), nil), ErrMalformed},
		{"hello version", frame(byte(MsgHello), append([]byte{0, 2}, hello[7:len(hello)-4]...)), ErrVersion},
		{"hello short", frame(byte(MsgHello), []byte{0}), ErrMalformed},
		{"hello bad spec", frame(byte(MsgHello), []byte{0, 1, 'V', 'F', 'X', 'S'}), ErrTruncated},
		{"device state short", frame(byte(MsgDeviceState), []byte{1}), ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(tc.in), 1<<20).Next()
			if !errors.Is(err, tc.want) {
				t.Fatalf("Next(% x...) = %v, want %v", tc.in[:min(len(tc.in), 16)], err, tc.want)
			}
		})
	}
}

// TestReaderLyingLengthCostsNothing: a header claiming a body near the cap,
// followed by nothing, must not make the reader allocate the claim.
func TestReaderLyingLengthCostsNothing(t *testing.T) {
	h := []byte{byte(MsgDeviceState), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(h[1:], DefaultMaxMessage)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := NewReader(bytes.NewReader(append(h, 0, 1, 2, 3, 4, 5)), 0).Next()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Next = %v, want io.ErrUnexpectedEOF", err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 4<<20 {
		t.Fatalf("an 11-byte stream made the reader allocate %d bytes", d)
	}
}

// pair is a way to get two connected ends.
type pair struct {
	name string
	mk   func(testing.TB) (net.Conn, net.Conn)
}

var pairs = []pair{
	{"pipe", func(testing.TB) (net.Conn, net.Conn) { return net.Pipe() }},
	{"tcp", tcpPair},
}

// tcpPair connects two TCP sockets over loopback.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return a, r.c
}

// TestConnExchange sends every message type each way over a real pair.
func TestConnExchange(t *testing.T) {
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			a, b := p.mk(t)
			ca, cb := NewConn(a, ConnConfig{IdleTimeout: 5 * time.Second}), NewConn(b, ConnConfig{IdleTimeout: 5 * time.Second})
			defer ca.Close()
			defer cb.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			msgs := sampleMsgs()
			errc := make(chan error, 1)
			go func() {
				for i := range msgs {
					if err := ca.Write(&msgs[i]); err != nil {
						errc <- err
						return
					}
				}
				errc <- ca.Flush()
			}()
			for _, want := range msgs {
				m, err := cb.Recv(ctx)
				if want.Type == MsgAbort {
					var ae *AbortError
					if !errors.As(err, &ae) || ae.Reason != want.Reason {
						t.Fatalf("Recv of Abort = %v, want an AbortError %q", err, want.Reason)
					}
					continue
				}
				if err != nil {
					t.Fatalf("Recv, want %v: %v", want.Type, err)
				}
				if got := copyMsg(m); !reflect.DeepEqual(normal(got), normal(want)) {
					t.Fatalf("%v:\n got %+v\nwant %+v", want.Type, got, want)
				}
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if ca.Sent() != cb.Received() {
				t.Fatalf("sent %d bytes, received %d", ca.Sent(), cb.Received())
			}
			// The other way, through the return path.
			go func() {
				errc <- cb.Send(ctx, &Msg{Type: MsgAck, Of: MsgHello}, &Msg{Type: MsgReady}, &Msg{Type: MsgAbort, Reason: "bye"})
			}()
			if err := ca.ExpectAck(ctx, MsgHello); err != nil {
				t.Fatal(err)
			}
			if _, err := ca.Recv(ctx); !errors.Is(err, ErrReturnPath) {
				t.Fatalf("Recv with a return path = %v, want ErrReturnPath", err)
			}
			if _, err := ca.Expect(ctx, MsgReady); err != nil {
				t.Fatal(err)
			}
			var ae *AbortError
			if _, err := ca.Expect(ctx, MsgReady); !errors.As(err, &ae) || ae.Reason != "bye" {
				t.Fatalf("Expect after the peer's Abort = %v, want AbortError \"bye\"", err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestConnContextEndsBlockedIO: a peer that neither reads nor writes cannot
// hold a Conn past its context.
func TestConnContextEndsBlockedIO(t *testing.T) {
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			a, b := p.mk(t)
			defer b.Close()
			c := NewConn(a, ConnConfig{})
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			if _, err := c.Recv(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Recv from a silent peer = %v, want DeadlineExceeded", err)
			}
			// Writes: enough to fill any socket buffer.
			c2 := NewConn(b, ConnConfig{})
			ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel2()
			big := Msg{Type: MsgPages, PageNums: make([]uint64, MaxBatchPages), PageData: make([]byte, MaxBatchPages*mem.PageSize)}
			var err error
			for i := 0; i < 64 && err == nil; i++ {
				err = c2.Send(ctx2, &big)
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Send to a peer that does not read = %v, want DeadlineExceeded", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("blocked I/O took %v to give up", d)
			}
		})
	}
}

// TestConnIdleTimeout: without a context deadline, a peer stalled inside a
// message still ends the read after IdleTimeout.
func TestConnIdleTimeout(t *testing.T) {
	testutil.CheckGoroutines(t)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		b.Write(frame(byte(MsgRoundEnd), make([]byte, 21))[:9]) // half a message, then silence
	}()
	c := NewConn(a, ConnConfig{IdleTimeout: 100 * time.Millisecond})
	_, err := c.Recv(context.Background())
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Recv from a stalled peer = %v, want a timeout", err)
	}
}

// FuzzReader: no input makes the reader panic or allocate past its cap;
// whatever parses re-encodes to the same bytes; and the receiver state
// machine survives every message.
func FuzzReader(f *testing.F) {
	for _, s := range readerSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 1 << 20
		check := func(stream []byte) {
			r := NewReader(bytes.NewReader(stream), limit)
			m, _ := mem.New(16 * mem.PageSize)
			rcv := NewReceiver(m)
			var consumed uint64
			for {
				msg, err := r.Next()
				if err != nil {
					return
				}
				if msg.Type == MsgPages && len(msg.PageData) != len(msg.PageNums)*mem.PageSize {
					t.Fatalf("Pages with %d numbers and %d bytes", len(msg.PageNums), len(msg.PageData))
				}
				got := encodeMsgs(t, copyMsg(msg))
				if !bytes.Equal(got, stream[consumed:r.Bytes()]) {
					t.Fatalf("%v re-encodes differently:\n in % x\nout % x", msg.Type, stream[consumed:r.Bytes()], got)
				}
				consumed = r.Bytes()
				rcv.Apply(msg)
				if cap(r.body) > limit+msgTrailer+(1<<20) {
					t.Fatalf("reader buffer grew to %d bytes, cap %d", cap(r.body), limit)
				}
			}
		}
		check(data)
		// The same bytes as the body of a well-framed message of the type
		// named by the first byte, so the fuzzer need not forge checksums.
		if len(data) > 0 {
			check(frame(data[0], data[1:]))
		}
	})
}

// readerSeeds: a stream of every message, and each message's type byte
// followed by its body (the framed mode of FuzzReader).
func readerSeeds() [][]byte {
	msgs := sampleMsgs()
	all, _ := tryEncode(msgs...)
	out := [][]byte{all}
	for _, m := range msgs {
		b, _ := tryEncode(m)
		out = append(out, append([]byte{b[0]}, b[msgHeader:len(b)-msgTrailer]...))
	}
	return out
}
