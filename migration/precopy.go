package migration

// Phases of a live migration, source (S) and destination (D). This file
// implements S1, S2, S3, S5 and D1, D2, D3; the caller does S4, S6 and D4.
//
//	S1 offer        Offer: Hello{ProtocolVersion, VMSpec} ->
//	D1 accept       Accept: check version and spec; the caller builds the
//	                VM's memory, then Ack(Hello) or Abort(reason) ->
//	S2 round 0      Sender: clear the dirty log, send every page in Pages
//	                batches while the guest runs, RoundEnd{0} ->
//	D2 apply        Receiver: LoadPage every page; at RoundEnd check the
//	                round number and page count; Ack(RoundEnd) ->
//	S3 rounds 1..n  Sender: Dirty() (read and clear), send those pages,
//	                RoundEnd{k} ->, wait for the Ack, measure, then decide:
//	                stop when dirty pages × bytes per page / bandwidth
//	                <= DowntimeTarget, or after MaxRounds rounds
//	S4 freeze       caller: pause the vCPU, quiesce the devices; from here
//	                the guest writes nothing
//	S5 stop-and-copy  Sender.StopAndCopy: Dirty(), send, check that nothing
//	                was written meanwhile, RoundEnd{final} ->
//	D3 complete     Receiver: every page has arrived at least once;
//	                Ack(RoundEnd) ->, Run returns
//	S6 hand-off     caller: VCPU, DeviceState -> ; <- Ready; Commit -> (the
//	                commit point); <- Ack(Commit)
//	D4 resume       caller: restore vCPU and devices, Ready, wait for
//	                Commit, Ack, run the VM
//
// Before the commit point either side may send Abort(reason); the source
// then keeps running the VM. A dropped connection, a peer that stops
// reading or writing, and a cancelled context all end the phase in
// progress with an error on both sides.
//
// Memory invariant: a page the guest writes after the dirty log was last
// read for it is dirty again (mem marks after writing), so it is sent in a
// later round; once the guest is frozen, the final round's Dirty() returns
// every page that differs from what the destination holds. StopAndCopy
// checks that the log stayed empty after it, which catches a caller that
// did not freeze the guest.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/vmfex/vmfex/guest/mem"
)

// ErrProtocol reports a peer that broke the protocol: a wrong round
// number or page count, a page outside memory, memory left incomplete.
var ErrProtocol = errors.New("migration: protocol violation")

// ErrNotFrozen reports guest memory written during stop-and-copy.
var ErrNotFrozen = errors.New("migration: guest memory written during stop-and-copy: the VM is not frozen")

// SenderConfig tunes the pre-copy. Zero values take the defaults.
type SenderConfig struct {
	// DowntimeTarget is the memory part of the downtime the stop-and-copy
	// round may take, estimated from the measured bandwidth (2 ms).
	DowntimeTarget time.Duration
	// MaxRounds bounds the live rounds, round 0 included; then the
	// pre-copy stops whatever the estimate (30).
	MaxRounds int
	// NoProgressRounds stops the live rounds after this many rounds in a
	// row that did not leave fewer dirty pages than the best round before
	// them: the guest dirties memory as fast as it is sent, and more
	// rounds only add to the total time (5; negative: never).
	NoProgressRounds int
	// BatchPages is the pages per Pages message (256, 1 MiB of data; at most
	// MaxBatchPages).
	BatchPages int
}

func (c *SenderConfig) defaults() {
	if c.DowntimeTarget <= 0 {
		c.DowntimeTarget = 2 * time.Millisecond
	}
	if c.MaxRounds <= 0 {
		c.MaxRounds = 30
	}
	if c.NoProgressRounds == 0 {
		c.NoProgressRounds = 5
	}
	if c.BatchPages <= 0 {
		c.BatchPages = 256
	}
	c.BatchPages = min(c.BatchPages, MaxBatchPages)
}

// StopReason says why the live rounds ended.
type StopReason uint8

//go:generate stringer -type=StopReason -linecomment -output=stopreason_string.go

// Stop reasons.
const (
	StopNone       StopReason = iota // none
	StopConverged                    // converged
	StopMaxRounds                    // max-rounds
	StopNoProgress                   // no-progress
)

type senderPhase uint8

const (
	phaseLive    senderPhase = iota // between live rounds
	phaseRound                      // in a live round
	phaseStopped                    // live rounds over, waiting for the freeze
	phaseFinal                      // in the final round
	phaseDone                       // memory sent
)

// RoundStat describes one round.
type RoundStat struct {
	Round      uint32
	Final      bool
	Pages      uint64
	Bytes      uint64        // on the wire: headers and checksums included
	Duration   time.Duration // first page to the destination's Ack
	DirtyAfter uint64        // pages dirty when the round's last page was sent
}

// Report sums up a pre-copy.
type Report struct {
	Rounds   []RoundStat
	Pages    uint64        // pages sent, all rounds
	Bytes    uint64        // wire bytes, all rounds
	Duration time.Duration // all rounds
	// Bandwidth is bytes per second over the live rounds, as the
	// destination acknowledged them.
	Bandwidth float64
	// EstimatedDowntime is what the stop decision predicted for the final
	// round; compare with the final RoundStat's Duration.
	EstimatedDowntime time.Duration
	StopReason        StopReason
}

// Sender is the source side of the memory transfer: a state machine over
// the source memory (BeginRound, NextBatch, EndRound, RoundDone) that does
// no I/O and reads no clock, and two drivers that run it over a Conn
// (Precopy, StopAndCopy). One goroutine uses a Sender; the guest may write
// the memory concurrently until the final round.
type Sender struct {
	mem *mem.Memory
	cfg SenderConfig // immutable

	phase senderPhase
	ended bool   // EndRound was called for the current round
	round uint32 // current or next round
	all   bool   // the round sends every page (round 0)
	set   []uint64
	next  uint64 // index into set, or the next page when all
	total uint64 // pages of the current round

	pns  []uint64 // the batch's page numbers
	data []byte   // the batch's page bytes

	liveBytes uint64
	// bestDirty is the fewest pages left dirty after a live round after
	// round 0, stale counts the rounds since it last fell.
	bestDirty, stale uint64
	liveTime         time.Duration
	report           Report

	msg Msg // reused for Pages
}

// NewSender returns a Sender over m. It does not touch m until BeginRound.
func NewSender(m *mem.Memory, cfg SenderConfig) *Sender {
	cfg.defaults()
	return &Sender{
		mem:  m,
		cfg:  cfg,
		pns:  make([]uint64, 0, cfg.BatchPages),
		data: make([]byte, cfg.BatchPages*mem.PageSize),
	}
}

// Config returns the configuration with defaults filled in.
func (s *Sender) Config() SenderConfig { return s.cfg }

// BeginRound starts the next round and returns its number and page count.
// Round 0 clears the dirty log and sends every page; later live rounds send
// the pages the log reports, clearing it. Once RoundDone has stopped the
// live rounds, BeginRound starts the final round: the guest must be frozen.
func (s *Sender) BeginRound() (round uint32, pages uint64, err error) {
	switch s.phase {
	case phaseLive:
		s.phase = phaseRound
	case phaseStopped:
		s.phase = phaseFinal
	default:
		return 0, 0, fmt.Errorf("migration: BeginRound in sender phase %d", s.phase)
	}
	// S2, S3, S5: read and clear the log before copying any page, so a
	// write racing with the copy stays dirty for the next round.
	s.set = s.mem.Dirty(s.set[:0])
	s.next = 0
	s.ended = false
	s.all = s.round == 0
	if s.all {
		s.total = s.mem.Pages()
	} else {
		s.total = uint64(len(s.set))
	}
	return s.round, s.total, nil
}

// NextBatch copies the round's next pages (up to BatchPages) and returns
// their numbers and bytes, valid until the next call; nil when the round's
// pages are all out.
func (s *Sender) NextBatch() (pns []uint64, data []byte) {
	if (s.phase != phaseRound && s.phase != phaseFinal) || s.next >= s.total {
		return nil, nil
	}
	n := min(uint64(s.cfg.BatchPages), s.total-s.next)
	s.pns = s.pns[:0]
	for i := range n {
		p := s.next + i
		if !s.all {
			p = s.set[p]
		}
		s.pns = append(s.pns, p)
		copyPage(s.data[i*mem.PageSize:(i+1)*mem.PageSize], s.mem, p)
	}
	s.next += n
	return s.pns, s.data[:n*mem.PageSize]
}

// EndRound closes the round: the RoundEnd to send. DirtyRemaining is what
// the guest dirtied during the round; in the final round it must be 0.
func (s *Sender) EndRound() RoundEnd {
	if (s.phase != phaseRound && s.phase != phaseFinal) || s.ended {
		return RoundEnd{}
	}
	s.ended = true
	re := RoundEnd{
		Round:          s.round,
		Pages:          s.next,
		DirtyRemaining: uint64(s.mem.DirtyCount()),
		Final:          s.phase == phaseFinal,
	}
	s.report.Rounds = append(s.report.Rounds, RoundStat{
		Round: re.Round, Final: re.Final, Pages: re.Pages, DirtyAfter: re.DirtyRemaining,
	})
	return re
}

// RoundDone records the round's wire bytes and duration (first page to the
// destination's Ack) and, after a live round, decides: StopNone to go on,
// another reason to stop the live rounds. The decision depends only on
// these inputs and on the memory's dirty log. Outside a round that EndRound
// closed it does nothing.
func (s *Sender) RoundDone(bytes uint64, took time.Duration) StopReason {
	if (s.phase != phaseRound && s.phase != phaseFinal) || !s.ended {
		return s.report.StopReason
	}
	st := &s.report.Rounds[len(s.report.Rounds)-1]
	st.Bytes, st.Duration = bytes, took
	s.report.Pages += st.Pages
	s.report.Bytes += bytes
	s.report.Duration += took
	s.round++
	if s.phase == phaseFinal {
		s.phase = phaseDone
		return s.report.StopReason
	}
	s.liveBytes += bytes
	s.liveTime += took
	if s.liveTime > 0 {
		s.report.Bandwidth = float64(s.liveBytes) / s.liveTime.Seconds()
	}
	dirty := uint64(s.mem.DirtyCount())
	est := s.Estimate(dirty)
	if s.round > 1 {
		if s.round == 2 || dirty < s.bestDirty {
			s.bestDirty, s.stale = dirty, 0
		} else {
			s.stale++
		}
	}
	switch {
	case est <= s.cfg.DowntimeTarget:
		s.report.StopReason = StopConverged
	case int(s.round) >= s.cfg.MaxRounds:
		s.report.StopReason = StopMaxRounds
	case s.cfg.NoProgressRounds > 0 && s.stale >= uint64(s.cfg.NoProgressRounds):
		s.report.StopReason = StopNoProgress
	default:
		s.phase = phaseLive
		return StopNone
	}
	s.report.EstimatedDowntime = est
	s.phase = phaseStopped
	return s.report.StopReason
}

// Estimate is the time to send pages at the bandwidth measured so far
// (math.MaxInt64 before any measurement).
func (s *Sender) Estimate(pages uint64) time.Duration {
	if pages == 0 {
		return 0
	}
	if s.report.Bandwidth <= 0 {
		return math.MaxInt64
	}
	sec := float64(pages) * pageEntry / s.report.Bandwidth
	if sec >= math.MaxInt64/1e9 {
		return math.MaxInt64
	}
	return time.Duration(sec * 1e9)
}

// Report returns the rounds so far.
func (s *Sender) Report() Report {
	r := s.report
	r.Rounds = append([]RoundStat(nil), r.Rounds...)
	return r
}

// Precopy runs the live rounds (S2, S3) over c while the guest runs, until
// the stop decision, and returns its reason. The caller then freezes the
// guest and calls StopAndCopy. It starts c's return path; an Abort from the
// destination returns an *AbortError naming its reason. After an error the
// Conn is unusable: the caller sends Abort if it wants to, and closes it.
func (s *Sender) Precopy(ctx context.Context, c *Conn) (StopReason, error) {
	if s.phase != phaseLive {
		return StopNone, fmt.Errorf("migration: Precopy in sender phase %d", s.phase)
	}
	defer c.bind(ctx)()
	c.startReturnPath()
	// Phases S2 (round 0) and S3 (rounds 1..n).
	for {
		reason, err := s.sendRound(ctx, c)
		if err != nil {
			return StopNone, c.settle(err)
		}
		if reason != StopNone {
			return reason, nil
		}
	}
}

// StopAndCopy sends the final round (S5): the pages dirtied since the last
// live round. Everything that writes the source's guest memory must have
// stopped first: the vCPU and the devices' engines (S4). If memory was
// written during the round, StopAndCopy returns ErrNotFrozen without
// telling the destination that memory is complete.
func (s *Sender) StopAndCopy(ctx context.Context, c *Conn) error {
	if s.phase != phaseStopped {
		return fmt.Errorf("migration: StopAndCopy in sender phase %d (run Precopy first)", s.phase)
	}
	defer c.bind(ctx)()
	c.startReturnPath()
	// Phase S5.
	_, err := s.sendRound(ctx, c)
	return c.settle(err)
}

// sendRound drives one round of the state machine over c.
func (s *Sender) sendRound(ctx context.Context, c *Conn) (StopReason, error) {
	start := time.Now()
	sent := c.Sent()
	if _, _, err := s.BeginRound(); err != nil {
		return StopNone, err
	}
	s.msg = Msg{Type: MsgPages}
	for {
		pns, data := s.NextBatch()
		if pns == nil {
			break
		}
		s.msg.PageNums, s.msg.PageData = pns, data
		if err := c.Write(&s.msg); err != nil {
			return StopNone, err
		}
	}
	re := s.EndRound()
	// S5: after the final Dirty() nothing may have been written.
	if re.Final && re.DirtyRemaining != 0 {
		return StopNone, fmt.Errorf("%w: %d pages", ErrNotFrozen, re.DirtyRemaining)
	}
	s.msg = Msg{Type: MsgRoundEnd, Round: re}
	if err := c.Write(&s.msg); err != nil {
		return StopNone, err
	}
	if err := c.Flush(); err != nil {
		return StopNone, err
	}
	if err := c.ExpectAck(ctx, MsgRoundEnd); err != nil {
		return StopNone, err
	}
	return s.RoundDone(c.Sent()-sent, time.Since(start)), nil
}

// Offer is phase S1: it sends Hello with spec and waits for the
// destination's Ack. A refusal returns an *AbortError naming the reason.
func Offer(ctx context.Context, c *Conn, spec VMSpec) error {
	// Phase S1.
	if err := c.Send(ctx, &Msg{Type: MsgHello, Version: ProtocolVersion, Spec: spec}); err != nil {
		return err
	}
	return c.settle(c.ExpectAck(ctx, MsgHello))
}

// Accept is phase D1: it reads the source's Hello and validates it. On
// success the caller builds the VM and answers Ack(Hello), or refuses with
// Abort(reason). On a bad Hello Accept sends the Abort itself.
func Accept(ctx context.Context, c *Conn) (VMSpec, error) {
	// Phase D1.
	m, err := c.Recv(ctx)
	if err == nil && m.Type != MsgHello {
		err = fmt.Errorf("%w: %v, waiting for Hello", ErrUnexpected, m.Type)
	}
	var spec VMSpec
	if err == nil {
		spec = m.Spec
		err = spec.Validate()
	}
	if err != nil {
		if !errors.Is(err, ErrAborted) {
			c.Abort(err.Error())
		}
		return VMSpec{}, err
	}
	return spec, nil
}

// Receiver is the destination side of the memory transfer: Apply is a
// state machine with no I/O, Run drives it over a Conn. One goroutine uses
// a Receiver; nothing else may touch the destination memory meanwhile.
type Receiver struct {
	mem *mem.Memory

	round      uint32 // expected round
	roundPages uint64 // pages received in the current round
	seen       []uint64
	missing    uint64 // pages never received
	stats      ReceiverStats
	done       bool
}

// ReceiverStats counts what a Receiver applied.
type ReceiverStats struct {
	Rounds int
	Pages  uint64
}

// NewReceiver returns a Receiver loading pages into m.
func NewReceiver(m *mem.Memory) *Receiver {
	return &Receiver{mem: m, seen: make([]uint64, (m.Pages()+63)/64), missing: m.Pages()}
}

// Done reports whether the final round has been applied.
func (r *Receiver) Done() bool { return r.done }

// Stats returns what was applied so far.
func (r *Receiver) Stats() ReceiverStats { return r.stats }

// Apply takes one message of the pre-copy (D2, D3). It returns ack when the
// source waits for an Ack of it. A message that breaks the protocol leaves
// memory as it was before it.
func (r *Receiver) Apply(m *Msg) (ack bool, err error) {
	if r.done {
		return false, fmt.Errorf("%w: %v after the final round", ErrUnexpected, m.Type)
	}
	switch m.Type {
	case MsgPages:
		if len(m.PageData) != len(m.PageNums)*mem.PageSize {
			return false, fmt.Errorf("%w: %d page numbers with %d bytes", ErrMalformed, len(m.PageNums), len(m.PageData))
		}
		n := r.mem.Pages()
		for _, p := range m.PageNums {
			if p >= n {
				return false, fmt.Errorf("%w: page %d outside guest memory of %d pages", ErrProtocol, p, n)
			}
		}
		for i, p := range m.PageNums {
			// D2: LoadPage does not mark the destination's dirty log.
			if err := r.mem.LoadPage(p, m.PageData[i*mem.PageSize:(i+1)*mem.PageSize]); err != nil {
				return false, err
			}
			if w, bit := &r.seen[p>>6], uint64(1)<<(p&63); *w&bit == 0 {
				*w |= bit
				r.missing--
			}
		}
		r.roundPages += uint64(len(m.PageNums))
		r.stats.Pages += uint64(len(m.PageNums))
		return false, nil
	case MsgRoundEnd:
		re := m.Round
		if re.Round != r.round {
			return false, fmt.Errorf("%w: RoundEnd of round %d, expected round %d", ErrProtocol, re.Round, r.round)
		}
		if re.Pages != r.roundPages {
			return false, fmt.Errorf("%w: round %d: source sent %d pages, %d arrived", ErrProtocol, re.Round, re.Pages, r.roundPages)
		}
		if re.Final {
			// D3: memory is complete only if every page came at least once.
			if r.missing != 0 {
				return false, fmt.Errorf("%w: final round with %d pages never received (first %d)", ErrProtocol, r.missing, r.firstMissing())
			}
			r.done = true
		}
		r.round++
		r.roundPages = 0
		r.stats.Rounds++
		return true, nil
	case MsgAbort:
		return false, &AbortError{Reason: m.Reason}
	}
	return false, fmt.Errorf("%w: %v during pre-copy", ErrUnexpected, m.Type)
}

func (r *Receiver) firstMissing() uint64 {
	for i, w := range r.seen {
		if w != ^uint64(0) {
			for b := range 64 {
				if p := uint64(i)*64 + uint64(b); w&(1<<b) == 0 && p < r.mem.Pages() {
					return p
				}
			}
		}
	}
	return 0
}

// Run applies the pre-copy from c until the final round is acknowledged.
// On an error other than the source's abort it sends Abort with the error
// as reason (best effort, bounded by the Conn's Linger) and returns it.
func (r *Receiver) Run(ctx context.Context, c *Conn) error {
	defer c.bind(ctx)()
	ackMsg := Msg{Type: MsgAck, Of: MsgRoundEnd}
	// Phases D2 and D3.
	for !r.done {
		m, err := c.recv()
		var ack bool
		if err == nil {
			ack, err = r.Apply(m)
		}
		if err == nil && ack {
			err = c.Write(&ackMsg)
			if err == nil {
				err = c.Flush()
			}
		}
		if err != nil {
			if !errors.Is(err, ErrAborted) {
				c.Abort("destination: " + err.Error())
			}
			return err
		}
	}
	return nil
}
