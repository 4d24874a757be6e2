package linktest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmfex/vmfex/internal/testutil"
	"github.com/vmfex/vmfex/link"
)

// deadline bounds every RecvN here; none is expected to come near it.
const deadline = 5 * time.Second

// seqFrames returns n 60-byte frames numbered 0..n-1 after the Ethernet header.
func seqFrames(n int) [][]byte {
	frames := make([][]byte, n)
	for i := range frames {
		f := make([]byte, 60)
		binary.BigEndian.PutUint32(f[14:], uint32(i))
		frames[i] = f
	}
	return frames
}

func seqs(frames [][]byte) []int {
	s := make([]int, len(frames))
	for i, f := range frames {
		s[i] = int(binary.BigEndian.Uint32(f[14:]))
	}
	return s
}

// through sends frames through a Faulty with cfg over a fresh pair, flushes
// it, and returns the sequence numbers the peer received and what was
// injected.
func through(t *testing.T, cfg Faults, frames [][]byte, arrive func(FaultStats) int) ([]int, FaultStats) {
	t.Helper()
	a, b := Pair()
	f := NewFaulty(a, cfg)
	defer f.Close()
	defer b.Close()
	SendFrames(t, f, frames)
	if err := f.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	st := f.Injected()
	got := seqs(RecvN(t, b, arrive(st), deadline))
	return got, st
}

func TestPair(t *testing.T) {
	testutil.CheckGoroutines(t)
	a, b := Pair()
	defer a.Close()
	defer b.Close()
	frames := [][]byte{bytes.Repeat([]byte{1}, 14), bytes.Repeat([]byte{2}, 1514), bytes.Repeat([]byte{3}, link.MaxFrame)}
	SendFrames(t, a, frames)
	got := RecvN(t, b, len(frames), deadline)
	for i := range frames {
		if !bytes.Equal(got[i], frames[i]) {
			t.Errorf("frame %d: got %d bytes, want the %d sent", i, len(got[i]), len(frames[i]))
		}
	}
	// More than a batch, the other way.
	frames = seqFrames(3*a.BatchSize() + 1)
	SendFrames(t, b, frames)
	if got := seqs(RecvN(t, a, len(frames), deadline)); !slices.Equal(got, seqs(frames)) {
		t.Errorf("received %v, want %v", got, seqs(frames))
	}
}

// fatalTB is a testing.TB whose Fatalf records the message and unwinds.
type fatalTB struct {
	testing.TB
	msg string
}

type fatal struct{}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(fatal{})
}

// failure runs fn with a fatalTB and returns what it failed with.
func failure(t *testing.T, fn func(tb testing.TB)) (msg string) {
	tb := &fatalTB{TB: t}
	defer func() {
		if r := recover(); r != nil && r != (fatal{}) {
			panic(r)
		}
		msg = tb.msg
	}()
	fn(tb)
	return ""
}

func TestRecvNTimeout(t *testing.T) {
	testutil.CheckGoroutines(t)
	a, b := Pair()
	defer a.Close()
	SendFrames(t, a, seqFrames(2))
	msg := failure(t, func(tb testing.TB) { RecvN(tb, b, 3, 20*time.Millisecond) })
	if !strings.Contains(msg, "2 of 3 frames") {
		t.Errorf("RecvN failure = %q, want it to say 2 of 3 frames came", msg)
	}
	if _, err := b.Recv(make([]*link.Buf, 1)); !errors.Is(err, link.ErrClosed) {
		t.Errorf("Recv after RecvN timed out = %v, want ErrClosed: RecvN closes the port", err)
	}
}

func TestSendFramesTooLong(t *testing.T) {
	a, b := Pair()
	defer a.Close()
	defer b.Close()
	msg := failure(t, func(tb testing.TB) {
		SendFrames(tb, a, [][]byte{make([]byte, 60), make([]byte, link.MaxFrame+1)})
	})
	if !strings.Contains(msg, "frame 1") {
		t.Errorf("SendFrames failure = %q, want it to name frame 1", msg)
	}
}

func TestFaultyDropEvery(t *testing.T) {
	frames := seqFrames(30)
	got, st := through(t, Faults{DropEvery: 3}, frames, func(FaultStats) int { return 20 })
	var want []int
	for i := range frames {
		if (i+1)%3 != 0 {
			want = append(want, i)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("received %v, want %v", got, want)
	}
	if want := (FaultStats{Offered: 30, Dropped: 10}); st != want {
		t.Errorf("Injected() = %+v, want %+v", st, want)
	}
}

func TestFaultyDropFunc(t *testing.T) {
	odd := func(frame []byte) bool { return frame[17]%2 == 1 }
	got, st := through(t, Faults{Drop: odd}, seqFrames(10), func(FaultStats) int { return 5 })
	if want := []int{0, 2, 4, 6, 8}; !slices.Equal(got, want) {
		t.Errorf("received %v, want %v", got, want)
	}
	if want := (FaultStats{Offered: 10, Dropped: 5}); st != want {
		t.Errorf("Injected() = %+v, want %+v", st, want)
	}
}

// TestFaultyReorder holds back every frame it can: neighbours swap, across
// Send calls too, and Flush lets out the last one.
func TestFaultyReorder(t *testing.T) {
	a, b := Pair()
	f := NewFaulty(a, Faults{Reorder: 1})
	defer f.Close()
	defer b.Close()
	frames := seqFrames(7)
	SendFrames(t, f, frames[:3]) // 0 held; 1, 0; 2 held
	SendFrames(t, f, frames[3:]) // 3, 2; 4 held; 5, 4; 6 held
	if got, want := seqs(RecvN(t, b, 6, deadline)), []int{1, 0, 3, 2, 5, 4}; !slices.Equal(got, want) {
		t.Errorf("received %v, want %v", got, want)
	}
	if err := f.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if got := seqs(RecvN(t, b, 1, deadline)); !slices.Equal(got, []int{6}) {
		t.Errorf("after Flush received %v, want [6]", got)
	}
	if want := (FaultStats{Offered: 7, Reordered: 3}); f.Injected() != want {
		t.Errorf("Injected() = %+v, want %+v", f.Injected(), want)
	}
}

func TestFaultyDuplicate(t *testing.T) {
	got, st := through(t, Faults{Duplicate: 1}, seqFrames(4), func(FaultStats) int { return 8 })
	if want := []int{0, 0, 1, 1, 2, 2, 3, 3}; !slices.Equal(got, want) {
		t.Errorf("received %v, want %v", got, want)
	}
	if want := (FaultStats{Offered: 4, Duplicated: 4}); st != want {
		t.Errorf("Injected() = %+v, want %+v", st, want)
	}
}

// TestFaultyMixed checks random faults are replayed by their seed and add up:
// every frame not dropped arrives once, plus its copies.
func TestFaultyMixed(t *testing.T) {
	cfg := Faults{DropEvery: 10, Reorder: 0.3, Duplicate: 0.2, Seed: 42}
	frames := seqFrames(200)
	arrive := func(st FaultStats) int { return int(st.Offered - st.Dropped + st.Duplicated) }
	got, st := through(t, cfg, frames, arrive)
	again, st2 := through(t, cfg, frames, arrive)
	if !slices.Equal(got, again) || st != st2 {
		t.Errorf("two runs with seed %d differ: %+v then %+v", cfg.Seed, st, st2)
	}
	if st.Reordered == 0 || st.Duplicated == 0 || st.Dropped != 20 {
		t.Errorf("Injected() = %+v, want some reordered and duplicated, 20 dropped", st)
	}

	count := make(map[int]int)
	inversions := 0
	for i, s := range got {
		count[s]++
		if i > 0 && s < got[i-1] {
			inversions++
		}
	}
	dupes := 0
	for s := range frames {
		c := count[s]
		switch {
		case (s+1)%10 == 0 && c != 0:
			t.Errorf("frame %d arrived %d times, want it dropped", s, c)
		case (s+1)%10 != 0 && (c < 1 || c > 2):
			t.Errorf("frame %d arrived %d times, want 1 or 2", s, c)
		case c == 2:
			dupes++
		}
	}
	if uint64(dupes) != st.Duplicated || uint64(inversions) != st.Reordered {
		t.Errorf("saw %d duplicates, %d inversions; Injected() = %+v", dupes, inversions, st)
	}

	cfg.Seed = 43
	if other, _ := through(t, cfg, frames, arrive); slices.Equal(got, other) {
		t.Errorf("seeds 42 and 43 injected the same faults")
	}
}

func TestFaultyStats(t *testing.T) {
	a, b := Pair()
	f := NewFaulty(a, Faults{DropEvery: 2})
	defer f.Close()
	defer b.Close()
	SendFrames(t, f, seqFrames(4))
	RecvN(t, b, 2, deadline)
	SendFrames(t, b, seqFrames(3))
	RecvN(t, f, 3, deadline)
	want := link.PortStats{TxFrames: 2, TxBytes: 120, RxFrames: 3, RxBytes: 180, Drops: 2}
	if got := f.Stats(); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
	if got := f.BatchSize(); got != link.MemBatch {
		t.Errorf("BatchSize() = %d, want %d", got, link.MemBatch)
	}
}

// TestFaultyClose checks Close ends a Send waiting on a full cable, drops
// the frame held back, closes the wrapped port, and is idempotent.
func TestFaultyClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	a, b := link.NewMemCable(1)
	defer b.Close()
	f := NewFaulty(a, Faults{Reorder: 1})
	SendFrames(t, a, [][]byte{make([]byte, 60)}) // fills the cable

	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		bufs := make([]*link.Buf, 3)
		for i, fr := range seqFrames(3) {
			bufs[i] = link.Get()
			bufs[i].SetBytes(fr)
		}
		// 0 is held; 1 then 0 go out and wait for room; 2 is held.
		n, err := f.Send(bufs)
		done <- result{n, err}
	}()
	// Once Send holds f.mu, Close ends it, waiting for room or not.
	for f.mu.TryLock() {
		f.mu.Unlock()
		runtime.Gosched()
	}
	if err := f.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if r := <-done; r.n != 3 || !errors.Is(r.err, link.ErrClosed) {
		t.Errorf("Send waiting when Close came = %d, %v; want 3, ErrClosed", r.n, r.err)
	}
	if want := (FaultStats{Offered: 3, Dropped: 1, Reordered: 1}); f.Injected() != want {
		t.Errorf("Injected() = %+v, want %+v", f.Injected(), want)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if n, err := f.Send([]*link.Buf{link.Get()}); n != 0 || !errors.Is(err, link.ErrClosed) {
		t.Errorf("Send after Close = %d, %v; want 0, ErrClosed", n, err)
	}
	// The peer drains the frame that filled the cable, then sees the
	// wrapped port closed.
	bufs := make([]*link.Buf, 4)
	n, err := b.Recv(bufs)
	if n != 1 || err != nil {
		t.Fatalf("peer Recv = %d, %v; want the one frame queued", n, err)
	}
	link.ReleaseAll(bufs[:n])
	if _, err := b.Recv(bufs); !errors.Is(err, link.ErrClosed) {
		t.Errorf("peer Recv after drain = %v, want ErrClosed", err)
	}
}
