package migration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/internal/testutil"
)

func newMem(t testing.TB, pages uint64) *mem.Memory {
	t.Helper()
	m, err := mem.New(pages * mem.PageSize)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// firstDiff returns the first page whose bytes differ, or false.
func firstDiff(a, b *mem.Memory) (uint64, bool) {
	for p := range a.Pages() {
		if !bytes.Equal(a.Page(p), b.Page(p)) {
			return p, true
		}
	}
	return 0, false
}

func drain(m *mem.Memory) []uint64 { return m.Dirty(nil) }

// TestSenderTranscript drives the state machine by hand, with the guest's
// writes placed between its steps: what each round sends, what RoundEnd
// says, and how the stop decision follows the measured bandwidth.
func TestSenderTranscript(t *testing.T) {
	m := newMem(t, 16)
	s := NewSender(m, SenderConfig{BatchPages: 4, MaxRounds: 5, DowntimeTarget: time.Millisecond})

	// Round 0: every page, whatever the log says.
	round, pages, err := s.BeginRound()
	if err != nil || round != 0 || pages != 16 {
		t.Fatalf("BeginRound = %d, %d, %v; want round 0 with 16 pages", round, pages, err)
	}
	var got []uint64
	for i := 0; ; i++ {
		pns, data := s.NextBatch()
		if pns == nil {
			break
		}
		if len(data) != len(pns)*mem.PageSize {
			t.Fatalf("batch of %d pages with %d bytes", len(pns), len(data))
		}
		got = append(got, pns...)
		if i == 1 {
			// The guest writes a page already sent and one not yet sent.
			m.PutU64(3*mem.PageSize, 0xAAAA)
			m.PutU64(12*mem.PageSize, 0xBBBB)
		}
	}
	if len(got) != 16 || got[0] != 0 || got[15] != 15 {
		t.Fatalf("round 0 sent %v, want pages 0..15", got)
	}
	re := s.EndRound()
	if want := (RoundEnd{Round: 0, Pages: 16, DirtyRemaining: 2}); re != want {
		t.Fatalf("EndRound = %+v, want %+v", re, want)
	}
	// 16 pages took 1 s: 2 dirty pages would take ~125 ms > 1 ms: go on.
	if r := s.RoundDone(16*pageEntry, time.Second); r != StopNone {
		t.Fatalf("RoundDone = %v, want to continue", r)
	}
	if bw := s.Report().Bandwidth; bw != 16*pageEntry {
		t.Fatalf("bandwidth %v, want %d B/s", bw, 16*pageEntry)
	}

	// Round 1: exactly the two pages written.
	round, pages, _ = s.BeginRound()
	if round != 1 || pages != 2 {
		t.Fatalf("BeginRound = %d, %d; want round 1 with 2 pages", round, pages)
	}
	pns, data := s.NextBatch()
	if len(pns) != 2 || pns[0] != 3 || pns[1] != 12 {
		t.Fatalf("round 1 sent %v, want [3 12]", pns)
	}
	if v := data[mem.PageSize]; v != 0xBB {
		t.Fatalf("page 12 copied with first byte %#x, want 0xbb", v)
	}
	if pns, _ := s.NextBatch(); pns != nil {
		t.Fatalf("round 1 has more pages: %v", pns)
	}
	m.PutU64(5*mem.PageSize, 1) // written during round 1
	if re := s.EndRound(); re.Pages != 2 || re.DirtyRemaining != 1 {
		t.Fatalf("EndRound = %+v", re)
	}
	// Faster now: 1 page at (16+2 pages)/(1 s + 1 µs) is ~55 ms: still over.
	if r := s.RoundDone(2*pageEntry, time.Microsecond); r != StopNone {
		t.Fatalf("RoundDone = %v, want to continue", r)
	}
	// Round 2 sends page 5; nothing is written meanwhile: converged.
	if _, pages, _ := s.BeginRound(); pages != 1 {
		t.Fatalf("round 2 has %d pages, want 1", pages)
	}
	s.NextBatch()
	s.EndRound()
	if r := s.RoundDone(pageEntry, time.Microsecond); r != StopConverged {
		t.Fatalf("RoundDone = %v, want converged", r)
	}
	if _, err := s.Precopy(context.Background(), nil); err == nil {
		t.Fatal("Precopy after the stop decision succeeded")
	}

	// The freeze: the guest's last write before it must be in the final round.
	m.PutU64(9*mem.PageSize, 9)
	round, pages, _ = s.BeginRound()
	if round != 3 || pages != 1 {
		t.Fatalf("final BeginRound = %d, %d; want round 3 with 1 page", round, pages)
	}
	if pns, _ := s.NextBatch(); len(pns) != 1 || pns[0] != 9 {
		t.Fatalf("final round sent %v, want [9]", pns)
	}
	if re := s.EndRound(); !re.Final || re.DirtyRemaining != 0 || re.Pages != 1 {
		t.Fatalf("final EndRound = %+v", re)
	}
	s.RoundDone(pageEntry, time.Microsecond)
	if _, _, err := s.BeginRound(); err == nil {
		t.Fatal("BeginRound after the final round succeeded")
	}
	rep := s.Report()
	if len(rep.Rounds) != 4 || rep.Pages != 16+2+1+1 || rep.StopReason != StopConverged || !rep.Rounds[3].Final {
		t.Fatalf("report %+v", rep)
	}
}

// TestSenderOutOfOrderCalls: steps called out of order change nothing.
func TestSenderOutOfOrderCalls(t *testing.T) {
	m := newMem(t, 4)
	s := NewSender(m, SenderConfig{})
	if pns, _ := s.NextBatch(); pns != nil {
		t.Fatalf("NextBatch before BeginRound = %v", pns)
	}
	if re := s.EndRound(); re != (RoundEnd{}) {
		t.Fatalf("EndRound before BeginRound = %+v", re)
	}
	if r := s.RoundDone(1, time.Second); r != StopNone || len(s.Report().Rounds) != 0 {
		t.Fatalf("RoundDone before BeginRound = %v, %+v", r, s.Report())
	}
	if err := s.StopAndCopy(context.Background(), nil); err == nil {
		t.Fatal("StopAndCopy before Precopy succeeded")
	}
	s.BeginRound()
	if r := s.RoundDone(1, time.Second); r != StopNone || len(s.Report().Rounds) != 0 {
		t.Fatalf("RoundDone before EndRound = %v, %+v", r, s.Report())
	}
	s.EndRound()
	if re := s.EndRound(); re != (RoundEnd{}) || len(s.Report().Rounds) != 1 {
		t.Fatalf("second EndRound = %+v, %d rounds", re, len(s.Report().Rounds))
	}
}

// TestSenderStopsAtMaxRounds: a guest that dirties faster than the link
// never converges; the pre-copy stops after MaxRounds all the same.
func TestSenderStopsAtMaxRounds(t *testing.T) {
	m := newMem(t, 8)
	s := NewSender(m, SenderConfig{MaxRounds: 3, DowntimeTarget: time.Nanosecond})
	for i := range 3 {
		s.BeginRound()
		for pns, _ := s.NextBatch(); pns != nil; pns, _ = s.NextBatch() {
		}
		m.PutU64(0, uint64(i)) // always something dirty
		s.EndRound()
		r := s.RoundDone(pageEntry, time.Millisecond)
		if want := map[bool]StopReason{true: StopMaxRounds, false: StopNone}[i == 2]; r != want {
			t.Fatalf("round %d: RoundDone = %v, want %v", i, r, want)
		}
	}
	rep := s.Report()
	if rep.StopReason != StopMaxRounds || rep.EstimatedDowntime != s.Estimate(1) {
		t.Fatalf("report %+v", rep)
	}
}

// TestSenderStopsWithoutProgress: a guest whose dirty set does not shrink
// from round to round stops the pre-copy after NoProgressRounds rounds
// that did not beat the best one, long before MaxRounds; a shrinking set
// keeps it going.
func TestSenderStopsWithoutProgress(t *testing.T) {
	m := newMem(t, 64)
	s := NewSender(m, SenderConfig{MaxRounds: 30, NoProgressRounds: 3, DowntimeTarget: time.Nanosecond})
	// Dirty pages left after each round: falling for a while, then flat.
	left := []int{40, 30, 20, 20, 25, 20, 20}
	for i, n := range left {
		s.BeginRound()
		for pns, _ := s.NextBatch(); pns != nil; pns, _ = s.NextBatch() {
		}
		for p := range n {
			m.PutU64(uint64(p)*mem.PageSize, uint64(i+1))
		}
		s.EndRound()
		r := s.RoundDone(pageEntry, time.Millisecond)
		// Rounds 1.. are measured: 30 (best), 20 (best), 20, 25, 20 -> the
		// third in a row without a new best is round 5 (index 5).
		want := StopNone
		if i == 5 {
			want = StopNoProgress
		}
		if r != want {
			t.Fatalf("round %d (%d left dirty): RoundDone = %v, want %v", i, n, r, want)
		}
		if r != StopNone {
			break
		}
	}
	if got := s.Report().StopReason.String(); got != "no-progress" {
		t.Fatalf("stop reason %q", got)
	}
}

// guestLoad stands for a running vCPU: it writes a counter-derived pattern
// into random pages among the first hot ones (page 0 excluded) and keeps a
// checksum page, page 0: word 0 is the number of writes, word 1 the XOR of
// every value written. It uses aligned 64-bit stores, as the guest's
// driver and workload do.
type guestLoad struct {
	stop   atomic.Bool
	wg     sync.WaitGroup
	writes []uint64 // per writer, valid after freeze
}

func startGuest(m *mem.Memory, hot uint64, writers int) *guestLoad {
	g := &guestLoad{writes: make([]uint64, writers)}
	for w := range writers {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			var sum uint64
			i := uint64(0)
			for !g.stop.Load() {
				i++
				p := 1 + rng.Uint64N(hot-1)
				v := i*0x9E3779B97F4A7C15 ^ p<<32 ^ uint64(w)
				m.PutU64(p*mem.PageSize+rng.Uint64N(mem.PageSize/8)*8, v)
				sum ^= v
				if w == 0 {
					m.PutU64(0, i)
					m.PutU64(8, sum)
				}
			}
			g.writes[w] = i
		}()
	}
	return g
}

// freeze stops the writers and waits: from here the guest writes nothing,
// and their writes happen before whatever follows.
func (g *guestLoad) freeze() {
	g.stop.Store(true)
	g.wg.Wait()
}

// migrateMemory runs both sides over the ends a, b: the source pre-copies
// while load runs, freezes it, and sends the final round.
func migrateMemory(t *testing.T, a, b net.Conn, src, dst *mem.Memory, cfg SenderConfig, load *guestLoad) Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cc := ConnConfig{IdleTimeout: 20 * time.Second}
	sc, dc := NewConn(a, cc), NewConn(b, cc)
	defer sc.Close()
	defer dc.Close()
	rcv := NewReceiver(dst)
	dstErr := make(chan error, 1)
	go func() { dstErr <- rcv.Run(ctx, dc) }()

	s := NewSender(src, cfg)
	reason, err := s.Precopy(ctx, sc)
	if err != nil {
		t.Fatalf("Precopy: %v", err)
	}
	if load != nil {
		load.freeze()
	}
	if err := s.StopAndCopy(ctx, sc); err != nil {
		t.Fatalf("StopAndCopy: %v", err)
	}
	if err := <-dstErr; err != nil {
		t.Fatalf("Receiver.Run: %v", err)
	}
	rep := s.Report()
	if rep.StopReason != reason || !rcv.Done() {
		t.Fatalf("stop reason %v, report %v, receiver done %v", reason, rep.StopReason, rcv.Done())
	}
	if st := rcv.Stats(); st.Pages != rep.Pages || st.Rounds != len(rep.Rounds) {
		t.Fatalf("receiver applied %+v, sender sent %d pages in %d rounds", st, rep.Pages, len(rep.Rounds))
	}
	if rep.Rounds[0].Pages != src.Pages() {
		t.Fatalf("round 0 sent %d pages, memory has %d", rep.Rounds[0].Pages, src.Pages())
	}
	if rep.Bytes != sc.Sent() {
		t.Fatalf("report counts %d bytes, the connection sent %d", rep.Bytes, sc.Sent())
	}
	return rep
}

// TestPrecopyMovesARunningGuest is the memory invariant: with the guest
// writing all through the pre-copy, after the freeze and the final round
// the destination equals the source byte for byte, and the guest's own
// checksum page says it has every write.
func TestPrecopyMovesARunningGuest(t *testing.T) {
	for _, p := range pairs {
		for _, tc := range []struct {
			name    string
			pages   uint64
			hot     uint64
			writers int
			cfg     SenderConfig
			want    StopReason // StopNone: either
		}{
			{"uniform", 2048, 2048, 1, SenderConfig{MaxRounds: 8}, StopNone},
			{"hot set", 2048, 64, 1, SenderConfig{MaxRounds: 30, DowntimeTarget: 5 * time.Millisecond}, StopNone},
			// 63 hot pages fit a 1 s target at any bandwidth above 260 kB/s.
			{"hot set converges", 2048, 64, 1, SenderConfig{MaxRounds: 30, DowntimeTarget: time.Second}, StopConverged},
			{"two writers", 1024, 512, 2, SenderConfig{MaxRounds: 12, BatchPages: 16}, StopNone},
		} {
			t.Run(p.name+"/"+tc.name, func(t *testing.T) {
				testutil.CheckGoroutines(t)
				src, dst := newMem(t, tc.pages), newMem(t, tc.pages)
				a, b := p.mk(t)
				load := startGuest(src, tc.hot, tc.writers)
				rep := migrateMemory(t, a, b, src, dst, tc.cfg, load)
				if pg, diff := firstDiff(src, dst); diff {
					t.Fatalf("page %d differs after migration (report %+v)", pg, rep)
				}
				if got := dst.U64(0); got != load.writes[0] {
					t.Fatalf("destination checksum page counts %d writes, the guest made %d", got, load.writes[0])
				}
				if tc.want != StopNone && rep.StopReason != tc.want {
					t.Fatalf("stopped by %v, want %v (report %+v)", rep.StopReason, tc.want, rep)
				}
				if src.DirtyCount() != 0 {
					t.Fatalf("%d source pages dirty after the final round", src.DirtyCount())
				}
				t.Logf("%d writes; %d rounds (%v), %d pages, final round %d pages in %v (estimated %v)",
					load.writes[0], len(rep.Rounds), rep.StopReason, rep.Pages,
					rep.Rounds[len(rep.Rounds)-1].Pages, rep.Rounds[len(rep.Rounds)-1].Duration, rep.EstimatedDowntime)
			})
		}
	}
}

// TestDirtyRacesAtHighRate: four writers hammer a few hot pages while the
// sender runs round after round, so nearly every Dirty() races with writes
// to the pages it reports; no write may be lost. A round with nothing
// dirty ends a migration early (the scheduler may pause the writers), so
// migrations repeat until 40 live rounds have run.
func TestDirtyRacesAtHighRate(t *testing.T) {
	testutil.CheckGoroutines(t)
	src := newMem(t, 256)
	rounds, migrations := 0, 0
	var writes uint64
	for rounds < 40 {
		dst := newMem(t, 256)
		a, b := net.Pipe()
		load := startGuest(src, 16, 4)
		rep := migrateMemory(t, a, b, src, dst, SenderConfig{MaxRounds: 40, DowntimeTarget: time.Nanosecond, BatchPages: 2}, load)
		if pg, diff := firstDiff(src, dst); diff {
			t.Fatalf("migration %d: page %d differs", migrations, pg)
		}
		rounds += len(rep.Rounds) - 1
		migrations++
		for _, w := range load.writes {
			writes += w
		}
	}
	t.Logf("%d writes across 4 writers during %d live rounds in %d migrations", writes, rounds, migrations)
}

// TestComparisonHasTeeth shows the byte comparison would catch a lost
// write: a write after the last live round is on the destination only
// through the final round, and losing the dirty log loses it.
func TestComparisonHasTeeth(t *testing.T) {
	testutil.CheckGoroutines(t)
	run := func(loseLog bool) (uint64, bool) {
		src, dst := newMem(t, 64), newMem(t, 64)
		a, b := net.Pipe()
		ctx := context.Background()
		sc, dc := NewConn(a, ConnConfig{}), NewConn(b, ConnConfig{})
		defer sc.Close()
		defer dc.Close()
		rcv := NewReceiver(dst)
		done := make(chan error, 1)
		go func() { done <- rcv.Run(ctx, dc) }()
		s := NewSender(src, SenderConfig{})
		if _, err := s.Precopy(ctx, sc); err != nil {
			t.Fatal(err)
		}
		src.PutU64(17*mem.PageSize+64, 0xfeed) // the vCPU's last write before the freeze
		if pg, diff := firstDiff(src, dst); !diff || pg != 17 {
			t.Fatalf("before the final round: first difference %d (%v), want page 17", pg, diff)
		}
		if loseLog {
			drain(src) // a bug that reads the log and drops it
		}
		if err := s.StopAndCopy(ctx, sc); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return firstDiff(src, dst)
	}
	if pg, diff := run(false); diff {
		t.Fatalf("page %d differs after the final round", pg)
	}
	if pg, diff := run(true); !diff || pg != 17 {
		t.Fatalf("with the dirty log lost the comparison found %d (%v), want page 17", pg, diff)
	}
}

// hookConn runs f before its first write once armed.
type hookConn struct {
	net.Conn
	armed atomic.Bool
	f     func()
}

func (h *hookConn) Write(b []byte) (int, error) {
	if h.armed.CompareAndSwap(true, false) {
		h.f()
	}
	return h.Conn.Write(b)
}

// TestStopAndCopyRefusesARunningGuest: a write during the final round
// means the destination cannot have the source's memory; the sender must
// not tell it that memory is complete.
func TestStopAndCopyRefusesARunningGuest(t *testing.T) {
	testutil.CheckGoroutines(t)
	src, dst := newMem(t, 64), newMem(t, 64)
	a, b := net.Pipe()
	h := &hookConn{Conn: a, f: func() { src.PutU64(33*mem.PageSize, 1) }}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A buffer smaller than a page, so the Pages message reaches the hook
	// before the round ends.
	cc := ConnConfig{Linger: 100 * time.Millisecond, BufferSize: 512}
	sc, dc := NewConn(h, cc), NewConn(b, cc)
	rcv := NewReceiver(dst)
	done := make(chan error, 1)
	go func() { done <- rcv.Run(ctx, dc) }()
	s := NewSender(src, SenderConfig{})
	if _, err := s.Precopy(ctx, sc); err != nil {
		t.Fatal(err)
	}
	src.PutU64(5*mem.PageSize, 1)
	h.armed.Store(true)
	if err := s.StopAndCopy(ctx, sc); !errors.Is(err, ErrNotFrozen) {
		t.Fatalf("StopAndCopy with the guest writing = %v, want ErrNotFrozen", err)
	}
	sc.Abort(ErrNotFrozen.Error())
	sc.Close()
	if err := <-done; !errors.Is(err, ErrAborted) || rcv.Done() {
		t.Fatalf("receiver: %v, done %v; want the source's abort and memory incomplete", err, rcv.Done())
	}
	dc.Close()
}

// TestDestinationAbortNamesTheReason: a destination that refuses, at the
// Hello or in the middle of a round, makes the source fail with its reason.
func TestDestinationAbortNamesTheReason(t *testing.T) {
	for _, p := range pairs {
		for _, at := range []string{"hello", "mid-round", "bad page"} {
			t.Run(p.name+"/"+at, func(t *testing.T) {
				testutil.CheckGoroutines(t)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				a, b := p.mk(t)
				cc := ConnConfig{Linger: 2 * time.Second}
				sc, dc := NewConn(a, cc), NewConn(b, cc)
				src := newMem(t, 1024)
				spec := testSpec()
				spec.MemSize = src.Size()
				reason := "destination out of memory"
				small := newMem(t, 16)

				dstErr := make(chan error, 1)
				go func() {
					defer dc.Close()
					got, err := Accept(ctx, dc)
					if err != nil {
						dstErr <- err
						return
					}
					if got != spec {
						dstErr <- errors.New("spec changed in transit")
						return
					}
					switch at {
					case "hello":
						dstErr <- dc.Abort(reason)
						return
					case "bad page":
						// Built too small: the source's pages run past its end.
						if err := dc.Send(ctx, &Msg{Type: MsgAck, Of: MsgHello}); err != nil {
							dstErr <- err
							return
						}
						dstErr <- NewReceiver(small).Run(ctx, dc)
						return
					}
					if err := dc.Send(ctx, &Msg{Type: MsgAck, Of: MsgHello}); err != nil {
						dstErr <- err
						return
					}
					for i := 0; i < 3; i++ {
						if _, err := dc.Recv(ctx); err != nil {
							dstErr <- err
							return
						}
					}
					dstErr <- dc.Abort(reason)
				}()

				err := Offer(ctx, sc, spec)
				if at != "hello" {
					if err != nil {
						t.Fatalf("Offer: %v", err)
					}
					_, err = NewSender(src, SenderConfig{BatchPages: 8}).Precopy(ctx, sc)
				}
				var ae *AbortError
				if !errors.As(err, &ae) {
					t.Fatalf("source error %v, want an *AbortError", err)
				}
				want := reason
				if at == "bad page" {
					want = "outside guest memory"
				}
				if !strings.Contains(err.Error(), want) {
					t.Fatalf("source error %q does not name the reason %q", err, want)
				}
				sc.Close()
				derr := <-dstErr
				if at == "bad page" {
					if !errors.Is(derr, ErrProtocol) {
						t.Fatalf("destination: %v, want ErrProtocol", derr)
					}
				} else if derr != nil {
					t.Fatalf("destination: %v", derr)
				}
			})
		}
	}
}

// cutAfter joins two pairs with a relay that forwards the source's bytes
// until n have passed, then drops the connection (both relay ends close),
// as a cable pulled mid-round.
func cutAfter(t testing.TB, mk func(testing.TB) (net.Conn, net.Conn), n int64) (src, dst net.Conn, relayDone <-chan struct{}) {
	s, r1 := mk(t)
	r2, d := mk(t)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.CopyN(r2, r1, n)
		r1.Close()
		r2.Close()
	}()
	go func() {
		defer wg.Done()
		io.Copy(r1, r2)
	}()
	go func() { wg.Wait(); close(done) }()
	return s, d, done
}

// TestConnectionDropMidRound: both sides return an error, promptly.
func TestConnectionDropMidRound(t *testing.T) {
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			src, dst := newMem(t, 1024), newMem(t, 1024)
			a, b, relay := cutAfter(t, p.mk, 200*pageEntry)
			cc := ConnConfig{Linger: 200 * time.Millisecond}
			sc, dc := NewConn(a, cc), NewConn(b, cc)
			start := time.Now()
			dstErr := make(chan error, 1)
			go func() { dstErr <- NewReceiver(dst).Run(ctx, dc) }()
			_, err := NewSender(src, SenderConfig{}).Precopy(ctx, sc)
			if err == nil {
				t.Fatal("Precopy over a dropped connection succeeded")
			}
			derr := <-dstErr
			if derr == nil {
				t.Fatal("Receiver over a dropped connection succeeded")
			}
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(derr, context.DeadlineExceeded) {
				t.Fatalf("a side hung until its deadline: source %v, destination %v", err, derr)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("took %v to notice the drop", d)
			}
			t.Logf("source: %v; destination: %v", err, derr)
			sc.Close()
			dc.Close()
			<-relay
		})
	}
}

// TestSilentPeers: a destination that stops reading, and a source that
// stops mid-message, end in an error by context or idle timeout, not a hang.
func TestSilentPeers(t *testing.T) {
	t.Run("destination stops reading", func(t *testing.T) {
		testutil.CheckGoroutines(t)
		a, b := net.Pipe()
		defer b.Close()
		sc := NewConn(a, ConnConfig{})
		defer sc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := NewSender(newMem(t, 64), SenderConfig{}).Precopy(ctx, sc)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Precopy to a stuck destination = %v, want DeadlineExceeded", err)
		}
	})
	t.Run("source stalls mid-round", func(t *testing.T) {
		testutil.CheckGoroutines(t)
		a, b := net.Pipe()
		defer a.Close()
		dc := NewConn(b, ConnConfig{IdleTimeout: 200 * time.Millisecond, Linger: 100 * time.Millisecond})
		defer dc.Close()
		go func() {
			msg := Msg{Type: MsgPages, PageNums: []uint64{0}, PageData: make([]byte, mem.PageSize)}
			enc, _ := tryEncode(msg)
			a.Write(enc[:100])
		}()
		err := NewReceiver(newMem(t, 4)).Run(context.Background(), dc)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Run with a stalled source = %v, want a timeout", err)
		}
	})
}

// transferRig moves an idle guest of a given size over a net.Pipe, a
// fresh Sender and Receiver per transfer, the connection reused.
type transferRig struct {
	src, dst *mem.Memory
	sc, dc   *Conn
	start    chan struct{}
	done     chan error
}

func newTransferRig(tb testing.TB, mk func(testing.TB) (net.Conn, net.Conn), pages uint64) *transferRig {
	r := &transferRig{src: newMem(tb, pages), dst: newMem(tb, pages), start: make(chan struct{}), done: make(chan error)}
	for p := range pages {
		r.src.PutU64(p*mem.PageSize, p)
	}
	a, b := mk(tb)
	r.sc, r.dc = NewConn(a, ConnConfig{}), NewConn(b, ConnConfig{})
	go func() {
		for range r.start {
			r.done <- NewReceiver(r.dst).Run(context.Background(), r.dc)
		}
	}()
	tb.Cleanup(func() {
		close(r.start)
		r.sc.Close()
		r.dc.Close()
	})
	return r
}

// transfer runs one migration of the memory; round 0 sends every page.
func (r *transferRig) transfer(tb testing.TB) Report {
	ctx := context.Background()
	r.start <- struct{}{}
	s := NewSender(r.src, SenderConfig{})
	if _, err := s.Precopy(ctx, r.sc); err != nil {
		tb.Fatal(err)
	}
	if err := s.StopAndCopy(ctx, r.sc); err != nil {
		tb.Fatal(err)
	}
	if err := <-r.done; err != nil {
		tb.Fatal(err)
	}
	return s.Report()
}

// TestAllocsPerPage: the steady state allocates per transfer and per round,
// never per page or per batch: four times the pages costs no more
// allocations.
func TestAllocsPerPage(t *testing.T) {
	testutil.CheckGoroutines(t)
	measure := func(pages uint64) float64 {
		r := newTransferRig(t, func(testing.TB) (net.Conn, net.Conn) { return net.Pipe() }, pages)
		r.transfer(t) // warm the buffers
		return testing.AllocsPerRun(5, func() { r.transfer(t) })
	}
	small, big := measure(1024), measure(4096)
	t.Logf("allocations per transfer: %v for 1024 pages, %v for 4096", small, big)
	if big > small+1 {
		t.Fatalf("3072 more pages cost %v more allocations: something allocates per page or batch", big-small)
	}
	if big/4096 > 0.02 {
		t.Fatalf("%v allocations per page", big/4096)
	}
}

// benchPrecopy moves a 64 MiB guest, idle, per iteration: round 0 and an
// empty final round.
func benchPrecopy(b *testing.B, mk func(testing.TB) (net.Conn, net.Conn)) {
	const size = 64 << 20
	r := newTransferRig(b, mk, size/mem.PageSize)
	r.transfer(b)
	var pages, bytes uint64
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		rep := r.transfer(b)
		pages += rep.Pages
		bytes += rep.Bytes
	}
	b.ReportMetric(float64(bytes)/float64(pages), "wire-B/page")
}

func BenchmarkPrecopy64MiB(b *testing.B) {
	for _, p := range pairs {
		b.Run(p.name, func(b *testing.B) { benchPrecopy(b, p.mk) })
	}
}
