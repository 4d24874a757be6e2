package guest

// Traffic is the guest's test-traffic program: a probe generator and a probe
// sink in one, since every VM of a test both sends and receives.
//
// A generated frame passes these stages, all inside one Step on the vCPU:
//
//  1. Step reads the controller's start/stop word (acquire) and, on a change,
//     re-arms the pacing clock or goes quiet.
//  2. Pacing picks the peers that have a frame due at the guest time now
//     (or, at rate 0, the next peer round-robin while the tx ring has room).
//  3. The probe (next sequence number of that peer, send time now) is built
//     in the workload's scratch buffer and copied into the tx buffer that
//     TxReserve returned with one mem.Write, then TxCommit posts it.
//  4. Only then are the peer's sequence number and counters advanced.
//
// A received frame passes these stages, inside one Receive:
//
//  1. The rx buffer is viewed in place (no copy) and parsed with
//     wire.ParseProbeFrame, which accepts untagged, 802.1Q and VN-Tag frames
//     and rejects corrupted ones; anything else counts as "not a probe".
//  2. A probe for another VM id, or to a unicast MAC that is not ours, counts
//     as misdelivered; one from a VM id that is not a peer as unknown-peer.
//  3. The sequence number is classified against the peer's 4096-entry window:
//     new (possibly reordered), duplicate, or late (older than the window).
//  4. Counters and latency (now minus the probe's send time) are updated.
//
// Consistency across migration: the vCPU stops only between Step and Receive
// calls, and each call leaves the tx ring and the counters in agreement (a
// frame is posted if and only if the counters say it was sent), so a copy of
// guest memory taken between calls is a consistent snapshot of the program.

import (
	"fmt"
	"math"
	"math/bits"
	"time"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/wire"
)

// Guest memory layout of a Traffic state region, all little-endian, offsets
// from TrafficConfig.Base:
//
//	0     header (trfHeaderSize bytes)
//	      0  u32 magic          trafficMagic; absent means "fresh region"
//	      4  u32 version        trafficVersion
//	      8  u32 vm             own VM id
//	      12 u32 peers          number of peer slots
//	      16 u32 control        start/stop word, written by the controller only
//	      20 u32 applied        the control word the vCPU last acted on
//	      24 u32 cursor         round-robin position: next peer index to serve
//	      32 u64 fingerprint    hash of own VM id and peer ids, in order
//	      40 u64 not probe      frames that were not (intact) probes
//	      48 u64 misdelivered   probes for another VM id or unicast MAC
//	      56 u64 unknown peer   probes for us from a VM id that is no peer
//	      64 u64 tx busy        Steps that stopped on a full tx ring
//	      80 u64 gap epoch      guest ns; gaps ending before it no longer count
//	                            (written by the controller only, ResetGaps)
//	      72 u64 tx too small   Steps that found a tx buffer shorter than a frame
//	1024  peer slot 0 (trfSlotSize bytes), then slot 1, ...
//	      0   u64 next seq      next sequence number to send (starts at 1)
//	      8   u64 tx frames     frames sent to this peer
//	      16  u64 tx bytes      bytes sent to this peer
//	      24  u64 epoch         guest ns at which the pacing schedule began
//	      32  u64 epoch sent    tx frames at the epoch
//	      64  u64 rx frames     probes received from this peer (all kinds)
//	      72  u64 rx bytes
//	      80  u64 unique        first receptions within the window
//	      88  u64 duplicates    repeats of a sequence number in the window
//	      96  u64 reordered     unique but below the highest seen (late but new)
//	      104 u64 late          older than the window: cannot be checked
//	      112 u64 highest       highest sequence number seen (0 = none)
//	      120 u64 lat count     latency samples (unique frames)
//	      128 u64 lat min ns
//	      136 u64 lat max ns
//	      144 u64 lat sum ns
//	      152 u64 last rx ns    guest time of the last unique reception
//	      160 u64 max gap ns    longest time between two unique receptions
//	      168 u64 max gap end   guest ns at which that gap ended
//	      512 window bitmap     4096 bits, bit (seq mod 4096) set = seq seen
//
// Slots are 1 KiB and start at 1 KiB, so a slot never straddles a page: a
// received frame dirties exactly one page of state (plus the header page for
// the rare error counters), which keeps pre-copy rounds small.
const (
	trafficMagic   = 0x5446_4d56 // "VMFT" in memory order
	trafficVersion = 1

	trfOffMagic        = 0
	trfOffVersion      = 4
	trfOffVM           = 8
	trfOffPeers        = 12
	trfOffControl      = 16
	trfOffApplied      = 20
	trfOffCursor       = 24
	trfOffFingerprint  = 32
	trfOffNotProbe     = 40
	trfOffMisdelivered = 48
	trfOffUnknownPeer  = 56
	trfOffTxBusy       = 64
	trfOffTxTooSmall   = 72
	trfOffGapEpoch     = 80
	trfHeaderSize      = 1024

	trpOffNextSeq    = 0
	trpOffTxFrames   = 8
	trpOffTxBytes    = 16
	trpOffEpoch      = 24
	trpOffEpochSent  = 32
	trpOffRxFrames   = 64
	trpOffRxBytes    = 72
	trpOffUnique     = 80
	trpOffDuplicates = 88
	trpOffReordered  = 96
	trpOffLate       = 104
	trpOffHighest    = 112
	trpOffLatCount   = 120
	trpOffLatMin     = 128
	trpOffLatMax     = 136
	trpOffLatSum     = 144
	trpOffLastRx     = 152
	trpOffMaxGap     = 160
	trpOffMaxGapEnd  = 168
	trpOffWindow     = 512
	trfSlotSize      = 1024
)

// The control word: bit 0 is the switch, the other bits count commands so
// that a Stop quickly followed by a Start is still seen as a change (and
// re-arms pacing) even if no Step ran in between.
const (
	trafficRun     = 1
	trafficCmdStep = 2
)

// Traffic limits and tuning.
const (
	// TrafficWindow is how many sequence numbers behind the highest one a
	// receiver still tells apart exactly (new or duplicate). It is the
	// bitmap size in bits: 4096 at 64 B frames is ~2.7 ms at line rate of
	// 1 Gb/s, far more reordering than one fabric path produces.
	TrafficWindow = 4096

	// MinTrafficFrameLen and MaxTrafficFrameLen bound the configured frame
	// length (Ethernet without FCS). Lengths below wire.ProbeFrameMinLen
	// (74: Ethernet, IPv4, UDP and the 32-byte probe) are raised to it,
	// since a probe cannot be shorter.
	MinTrafficFrameLen = 64
	MaxTrafficFrameLen = 1518

	// MaxTrafficPeers bounds the peer list, and so the state region.
	MaxTrafficPeers = 4096

	// trafficBurst caps the frames one Step sends, so that a device that
	// drains the ring as fast as it is filled cannot keep the vCPU in Step
	// and starve Receive; Step then returns now to be called again.
	trafficBurst = 256

	// trafficMaxBacklog is how far (in frames) a paced peer may fall behind
	// its schedule before the schedule slips instead of catching up. After
	// a vCPU pause (stop-and-copy of a migration) a catch-up would send the
	// whole pause's worth of frames at once, a burst no paced sender makes.
	trafficMaxBacklog = 1024

	// trafficCommandPoll is how often a stopped generator looks at its
	// control word, as a guest agent polls its command channel: the vCPU
	// needs no special wake-up to see a Start.
	trafficCommandPoll = int64(time.Millisecond)
)

// TrafficPeer is one VM this VM sends probes to and expects probes from.
type TrafficPeer struct {
	VM  uint32   // the peer's VM id, carried in every probe
	MAC wire.MAC // destination MAC of probes to it
	IP  [4]byte  // destination IPv4 of probes to it
}

// TrafficConfig is the immutable configuration of a Traffic workload. Only
// Base, VM and the peer VM ids (in order) shape the state in guest memory;
// the other fields may differ between the value that wrote the state and the
// one that resumes it.
type TrafficConfig struct {
	Base uint64 // guest-physical address of the state region (8-aligned)
	Size uint64 // bytes reserved there; at least TrafficStateSize(len(Peers))

	VM    uint32        // own VM id; probes carry it as SrcVM
	MAC   wire.MAC      // own MAC: source of probes, accepted destination
	IP    [4]byte       // own IPv4: source of probes
	Peers []TrafficPeer // peers, in slot order; ids unique and not VM

	// FrameLen is the length of each probe frame, Ethernet without FCS,
	// MinTrafficFrameLen..MaxTrafficFrameLen.
	FrameLen int
	// Rate is frames per second to each peer. 0 sends as fast as the tx
	// ring allows, round-robin over the peers.
	Rate uint64
	// Stopped boots the program with generation switched off; a controller
	// starts it with Start. It only matters when the region is fresh.
	Stopped bool
}

// TrafficStateSize returns the bytes of guest memory a Traffic workload with
// peers peers needs at its Base.
func TrafficStateSize(peers int) uint64 {
	return trfHeaderSize + uint64(peers)*trfSlotSize
}

// Traffic is the probe generator and sink. Its methods other than Stats,
// Start, Stop and Stopped run on the vCPU goroutine only. The value holds
// the memory, immutable configuration and a scratch buffer whose contents
// never outlive a call; everything the program remembers is in guest memory.
type Traffic struct {
	m     *mem.Memory    // the VM's guest memory; immutable
	base  uint64         // cfg.Base; immutable
	cfg   TrafficConfig  // immutable; Peers is a private copy
	index map[uint32]int // peer VM id -> slot; immutable after NewTraffic
	fp    uint64         // layout fingerprint; immutable

	// scratch is where a probe is built before one mem.Write into the tx
	// buffer: guest memory has no writable view (every write must go
	// through the dirty log), and one bulk copy is cheaper than per-field
	// accessor calls. vCPU goroutine only; holds nothing between calls.
	scratch [MaxTrafficFrameLen]byte
}

var _ Workload = (*Traffic)(nil)

// NewTraffic returns the Traffic workload over its state region in m. If the
// region holds no Traffic state (fresh memory) it is initialised, which is
// the program's boot; if it holds state written with the same layout (same
// VM id and peer ids), the program resumes from it, as after a migration. A
// region holding other state is an ErrWorkloadState error.
func NewTraffic(m *mem.Memory, cfg TrafficConfig) (*Traffic, error) {
	if m == nil {
		return nil, fmt.Errorf("%w: nil memory", ErrWorkloadConfig)
	}
	if len(cfg.Peers) > MaxTrafficPeers {
		return nil, fmt.Errorf("%w: %d peers, at most %d", ErrWorkloadConfig, len(cfg.Peers), MaxTrafficPeers)
	}
	need := TrafficStateSize(len(cfg.Peers))
	switch {
	case cfg.Base%8 != 0:
		return nil, fmt.Errorf("%w: state base %#x not 8-aligned", ErrWorkloadConfig, cfg.Base)
	case cfg.Size < need:
		return nil, fmt.Errorf("%w: state size %d, need %d", ErrWorkloadConfig, cfg.Size, need)
	case !m.InRange(cfg.Base, cfg.Size):
		return nil, fmt.Errorf("%w: state [%#x,+%d) outside guest memory", ErrWorkloadConfig, cfg.Base, cfg.Size)
	case cfg.FrameLen < MinTrafficFrameLen || cfg.FrameLen > MaxTrafficFrameLen:
		return nil, fmt.Errorf("%w: frame length %d not in %d..%d", ErrWorkloadConfig, cfg.FrameLen, MinTrafficFrameLen, MaxTrafficFrameLen)
	case cfg.MAC.IsMulticast() || cfg.MAC.IsZero():
		return nil, fmt.Errorf("%w: own MAC %v is not a unicast address", ErrWorkloadConfig, cfg.MAC)
	}
	t := &Traffic{
		m:     m,
		base:  cfg.Base,
		cfg:   cfg,
		index: make(map[uint32]int, len(cfg.Peers)),
	}
	t.cfg.Peers = append([]TrafficPeer(nil), cfg.Peers...)
	for i, p := range t.cfg.Peers {
		if p.VM == cfg.VM {
			return nil, fmt.Errorf("%w: peer %d is this VM", ErrWorkloadConfig, p.VM)
		}
		if _, dup := t.index[p.VM]; dup {
			return nil, fmt.Errorf("%w: peer %d listed twice", ErrWorkloadConfig, p.VM)
		}
		t.index[p.VM] = i
	}
	t.fp = trafficFingerprint(cfg.VM, t.cfg.Peers)

	b := t.base
	if m.U32(b+trfOffMagic) != trafficMagic {
		t.boot()
		return t, nil
	}
	if v := m.U32(b + trfOffVersion); v != trafficVersion {
		return nil, fmt.Errorf("%w: traffic state version %d, want %d", ErrWorkloadState, v, trafficVersion)
	}
	if m.U32(b+trfOffVM) != cfg.VM || m.U32(b+trfOffPeers) != uint32(len(cfg.Peers)) ||
		m.U64(b+trfOffFingerprint) != t.fp {
		return nil, fmt.Errorf("%w: traffic state of VM %d with %d peers does not match the config",
			ErrWorkloadState, m.U32(b+trfOffVM), m.U32(b+trfOffPeers))
	}
	return t, nil
}

// boot writes the initial state: all counters zero, every stream's next
// sequence number 1, the switch as configured. The magic goes last so that a
// region is either fresh or complete.
func (t *Traffic) boot() {
	m, b := t.m, t.base
	_ = m.Zero(b, t.cfg.Size) // in range: checked by NewTraffic
	m.PutU32(b+trfOffVersion, trafficVersion)
	m.PutU32(b+trfOffVM, t.cfg.VM)
	m.PutU32(b+trfOffPeers, uint32(len(t.cfg.Peers)))
	m.PutU64(b+trfOffFingerprint, t.fp)
	for i := range t.cfg.Peers {
		m.PutU64(t.slot(i)+trpOffNextSeq, 1)
	}
	// applied stays 0, so a running switch differs from it and the first
	// Step arms the pacing clock at that Step's guest time.
	ctl := uint32(trafficRun)
	if t.cfg.Stopped {
		ctl = 0
	}
	m.StoreU32Release(b+trfOffControl, ctl)
	m.PutU32(b+trfOffMagic, trafficMagic)
}

// trafficFingerprint hashes what determines the meaning of the state
// region's slots (FNV-1a, 64 bit), so that a resumed program with its peers
// in another order is refused instead of mixing up their counters.
func trafficFingerprint(vm uint32, peers []TrafficPeer) uint64 {
	h := uint64(14695981039346656037)
	mix := func(v uint32) {
		for i := 0; i < 4; i++ {
			h ^= uint64(byte(v >> (8 * i)))
			h *= 1099511628211
		}
	}
	mix(vm)
	for _, p := range peers {
		mix(p.VM)
	}
	return h
}

// Config returns the configuration (the peer list is a copy).
func (t *Traffic) Config() TrafficConfig {
	c := t.cfg
	c.Peers = append([]TrafficPeer(nil), t.cfg.Peers...)
	return c
}

func (t *Traffic) slot(i int) uint64 { return t.base + trfHeaderSize + uint64(i)*trfSlotSize }

// Start switches generation on. It is a guest agent command: the controller
// writes the guest's command word in guest memory (an atomic store, safe
// while the vCPU runs), and the program acts on it at its next Step,
// restarting its pacing schedule from that Step's time. Sequence numbers
// continue where they stopped. Start and Stop must come from one controller
// at a time.
func (t *Traffic) Start(m *mem.Memory) { t.command(m, true) }

// Stop switches generation off, as a guest agent command (see Start): from
// the next Step on the program sends nothing and only receives, e.g. so that
// a controller can drain the fabric before reading counters. A Step already
// running may still send; Stopped tells when the program has seen the Stop.
func (t *Traffic) Stop(m *mem.Memory) { t.command(m, false) }

func (t *Traffic) command(m *mem.Memory, run bool) {
	pa := t.base + trfOffControl
	// Release store: it publishes nothing but itself; the vCPU's acquire
	// load in Step pairs with it.
	c := m.LoadU32Acquire(pa) + trafficCmdStep
	if run {
		c |= trafficRun
	} else {
		c &^= trafficRun
	}
	m.StoreU32Release(pa, c)
}

// Stopped reports whether the program has acted on the latest Stop: once it
// returns true, no frame is generated until Start. It is safe while the vCPU
// runs (the vCPU publishes the word it acted on with a release store). The
// vCPU must keep calling Step for the program to notice the command.
func (t *Traffic) Stopped(m *mem.Memory) bool {
	ctl := m.LoadU32Acquire(t.base + trfOffControl)
	return ctl&trafficRun == 0 && m.LoadU32Acquire(t.base+trfOffApplied) == ctl
}

// Step implements Workload: it sends the probes due at now and returns when
// the next is due; now when the tx ring filled up or the burst cap was hit;
// a poll time while stopped; 0 with no peers.
func (t *Traffic) Step(dev NetDev, now int64) int64 {
	m, b := t.m, t.base
	// Acquire pairs with the controller's release store in command.
	ctl := m.LoadU32Acquire(b + trfOffControl)
	if ctl != m.U32(b+trfOffApplied) {
		if ctl&trafficRun != 0 {
			for i := range t.cfg.Peers {
				t.arm(i, now)
			}
		}
		// Release: Stopped may read this from the controller's goroutine.
		m.StoreU32Release(b+trfOffApplied, ctl)
	}
	if ctl&trafficRun == 0 {
		return now + trafficCommandPoll
	}
	if len(t.cfg.Peers) == 0 {
		return 0
	}
	if t.cfg.Rate == 0 {
		return t.stepFlood(dev, now)
	}
	return t.stepPaced(dev, now)
}

// arm starts peer i's pacing schedule at now: its next frame is due now.
func (t *Traffic) arm(i int, now int64) {
	s := t.slot(i)
	t.m.PutU64(s+trpOffEpoch, uint64(now))
	t.m.PutU64(s+trpOffEpochSent, t.m.U64(s+trpOffTxFrames))
}

// stepFlood sends round-robin until the tx ring is full or the burst cap.
func (t *Traffic) stepFlood(dev NetDev, now int64) int64 {
	n := len(t.cfg.Peers)
	cur := int(t.m.U32(t.base+trfOffCursor)) % n
	next := now
	for range trafficBurst {
		r := t.send(dev, cur, now)
		if r == sendTooSmall {
			next = 0
		}
		if r != sendOK {
			break
		}
		cur = (cur + 1) % n
	}
	t.m.PutU32(t.base+trfOffCursor, uint32(cur))
	return next
}

// stepPaced sends every frame due by now, one peer after the other starting
// at the cursor, so that a ring too small for all of them is shared fairly.
func (t *Traffic) stepPaced(dev NetDev, now int64) int64 {
	n := len(t.cfg.Peers)
	cur := int(t.m.U32(t.base+trfOffCursor)) % n
	next, budget := int64(math.MaxInt64), trafficBurst
pass:
	for {
		progress := false
		for k := range n {
			i := (cur + k) % n
			if !t.due(i, now) {
				continue
			}
			switch t.send(dev, i, now) {
			case sendBusy:
				cur, next = i, now // this peer goes first once the ring drains
				break pass
			case sendTooSmall:
				cur, next = i, 0
				break pass
			}
			progress = true
			if budget--; budget == 0 {
				cur, next = (i+1)%n, now
				break pass
			}
		}
		if !progress {
			for i := range n {
				next = min(next, t.nextDue(i))
			}
			break
		}
	}
	t.m.PutU32(t.base+trfOffCursor, uint32(cur))
	return next
}

// due reports whether peer i has a frame due at now. Frame k of a schedule
// (k = 0 at the epoch) is due at epoch + ceil(k·1e9/rate): computing from
// the epoch instead of adding an interval per frame keeps the rate exact
// when 1e9 is not a multiple of it.
func (t *Traffic) due(i int, now int64) bool {
	m, s := t.m, t.slot(i)
	epoch := int64(m.U64(s + trpOffEpoch))
	if now < epoch {
		return false
	}
	sent := m.U64(s + trpOffTxFrames)
	k := sent - m.U64(s+trpOffEpochSent) // frames sent in this schedule
	hi, lo := bits.Mul64(uint64(now-epoch), t.cfg.Rate)
	if hi >= 1e9 {
		return true // more frames due than fit in 64 bits
	}
	elapsedFrames, _ := bits.Div64(hi, lo, 1e9) // frames 0..elapsedFrames are due
	if elapsedFrames < k {
		return false
	}
	if elapsedFrames-k >= trafficMaxBacklog {
		t.arm(i, now) // slip the schedule instead of bursting (trafficMaxBacklog)
	}
	return true
}

// nextDue returns the guest time at which peer i's next frame is due.
func (t *Traffic) nextDue(i int) int64 {
	m, s := t.m, t.slot(i)
	epoch := int64(m.U64(s + trpOffEpoch))
	k := m.U64(s+trpOffTxFrames) - m.U64(s+trpOffEpochSent)
	hi, lo := bits.Mul64(k, 1e9)
	if hi >= t.cfg.Rate {
		return math.MaxInt64
	}
	q, r := bits.Div64(hi, lo, t.cfg.Rate)
	if r != 0 {
		q++
	}
	if q > uint64(math.MaxInt64-epoch) {
		return math.MaxInt64
	}
	return epoch + int64(q)
}

type sendResult uint8

const (
	sendOK       sendResult = iota
	sendBusy                // tx ring full
	sendTooSmall            // tx buffer shorter than the frame
)

// send builds and posts the next probe to peer i.
func (t *Traffic) send(dev NetDev, i int, now int64) sendResult {
	m, s := t.m, t.slot(i)
	pa, size, ok := dev.TxReserve()
	if !ok {
		workloadAdd(m, t.base+trfOffTxBusy, 1)
		return sendBusy
	}
	peer := &t.cfg.Peers[i]
	seq := m.U64(s + trpOffNextSeq)
	p := wire.Probe{SrcVM: t.cfg.VM, DstVM: peer.VM, Seq: seq, SentNs: uint64(now)}
	n := wire.BuildProbeFrame(t.scratch[:], peer.MAC, t.cfg.MAC, t.cfg.IP, peer.IP, p, t.cfg.FrameLen)
	if n == 0 || n > size || m.Write(pa, t.scratch[:n]) != nil {
		// The reserved buffer stays unused; the driver hands it out again.
		workloadAdd(m, t.base+trfOffTxTooSmall, 1)
		return sendTooSmall
	}
	dev.TxCommit(n)
	m.PutU64(s+trpOffNextSeq, seq+1)
	workloadAdd(m, s+trpOffTxFrames, 1)
	workloadAdd(m, s+trpOffTxBytes, uint64(n))
	return sendOK
}

// Receive implements Workload: it accounts one received frame. It never
// transmits and never panics, whatever the frame holds.
func (t *Traffic) Receive(_ NetDev, pa uint64, n int, now int64) {
	m, b := t.m, t.base
	if n <= 0 {
		workloadAdd(m, b+trfOffNotProbe, 1)
		return
	}
	f, ok := m.View(pa, uint64(n))
	if !ok {
		workloadAdd(m, b+trfOffNotProbe, 1)
		return
	}
	p, ok := wire.ParseProbeFrame(f)
	if !ok || p.Seq == 0 { // sequence numbers start at 1: 0 is no probe of ours
		workloadAdd(m, b+trfOffNotProbe, 1)
		return
	}
	if dst := wire.Dst(f); p.DstVM != t.cfg.VM || (dst != t.cfg.MAC && !dst.IsBroadcast()) {
		workloadAdd(m, b+trfOffMisdelivered, 1)
		return
	}
	i, ok := t.index[p.SrcVM]
	if !ok {
		workloadAdd(m, b+trfOffUnknownPeer, 1)
		return
	}
	s := t.slot(i)
	workloadAdd(m, s+trpOffRxFrames, 1)
	workloadAdd(m, s+trpOffRxBytes, uint64(n))

	// Window of the last TrafficWindow sequence numbers up to highest.
	hi := m.U64(s + trpOffHighest)
	switch {
	case p.Seq > hi:
		t.advanceWindow(s, hi, p.Seq)
		m.PutU64(s+trpOffHighest, p.Seq)
	case hi-p.Seq >= TrafficWindow:
		workloadAdd(m, s+trpOffLate, 1)
		return
	case !t.testAndSet(s, p.Seq):
		workloadAdd(m, s+trpOffDuplicates, 1)
		return
	default:
		workloadAdd(m, s+trpOffReordered, 1)
	}
	workloadAdd(m, s+trpOffUnique, 1)
	t.recordGap(s, now)

	// Guest clocks of different hosts are not synchronised; a negative
	// sample is clock skew, recorded as 0 rather than wrapped.
	lat := uint64(max(now-int64(p.SentNs), 0))
	cnt := m.U64(s + trpOffLatCount)
	if cnt == 0 || lat < m.U64(s+trpOffLatMin) {
		m.PutU64(s+trpOffLatMin, lat)
	}
	if lat > m.U64(s+trpOffLatMax) {
		m.PutU64(s+trpOffLatMax, lat)
	}
	m.PutU64(s+trpOffLatCount, cnt+1)
	workloadAdd(m, s+trpOffLatSum, lat)
}

// recordGap keeps the longest silence of slot s's stream: the time between
// two unique receptions, the blackout a move of either VM causes as its
// peer sees it. A maximum older than the controller's gap epoch is forgotten.
func (t *Traffic) recordGap(s uint64, now int64) {
	m := t.m
	last := m.U64(s + trpOffLastRx)
	m.PutU64(s+trpOffLastRx, uint64(now))
	if last == 0 || now <= int64(last) {
		return
	}
	gap := uint64(now) - last
	cur := m.U64(s + trpOffMaxGap)
	if m.U64(s+trpOffMaxGapEnd) < m.U64(t.base+trfOffGapEpoch) {
		cur = 0
	}
	if gap > cur {
		m.PutU64(s+trpOffMaxGap, gap)
		m.PutU64(s+trpOffMaxGapEnd, uint64(now))
	}
}

// ResetGaps makes MaxGap count only gaps that end at or after the guest
// time now, as a guest agent command (an aligned word store, safe while the
// vCPU runs), e.g. to measure the blackout of one migration.
func (t *Traffic) ResetGaps(m *mem.Memory, now int64) {
	m.PutU64(t.base+trfOffGapEpoch, uint64(now))
}

// advanceWindow moves the window of slot s from highest hi to seq > hi: the
// bits of hi+1..seq now stand for new numbers, so they are cleared, then
// seq's bit is set.
func (t *Traffic) advanceWindow(s, hi, seq uint64) {
	m, w := t.m, s+trpOffWindow
	if seq-hi >= TrafficWindow {
		_ = m.Zero(w, TrafficWindow/8) // in range: inside the checked region
	} else {
		pos, cnt := (hi+1)%TrafficWindow, seq-hi
		for cnt > 0 {
			bit := pos % 64
			k := min(64-bit, cnt) // 64 divides TrafficWindow: no wrap inside a word
			mask := ^uint64(0) >> (64 - k) << bit
			wa := w + pos/64*8
			m.PutU64(wa, m.U64(wa)&^mask)
			pos = (pos + k) % TrafficWindow
			cnt -= k
		}
	}
	t.testAndSet(s, seq)
}

// testAndSet sets seq's window bit in slot s and reports whether it was clear.
func (t *Traffic) testAndSet(s, seq uint64) bool {
	pos := seq % TrafficWindow
	wa := s + trpOffWindow + pos/64*8
	word, bit := t.m.U64(wa), uint64(1)<<(pos%64)
	if word&bit != 0 {
		return false
	}
	t.m.PutU64(wa, word|bit)
	return true
}

// TxCounters are what one VM sent.
type TxCounters struct {
	Frames uint64
	Bytes  uint64
}

// Latency summarises one-way latency samples (receive time minus the
// probe's send time, on the two guests' clocks).
type Latency struct {
	Count         uint64
	Min, Max, Sum time.Duration
}

// Mean returns the average sample, 0 without samples.
func (l Latency) Mean() time.Duration {
	if l.Count == 0 {
		return 0
	}
	return l.Sum / time.Duration(l.Count)
}

func (l *Latency) merge(o Latency) {
	if o.Count == 0 {
		return
	}
	if l.Count == 0 || o.Min < l.Min {
		l.Min = o.Min
	}
	l.Max = max(l.Max, o.Max)
	l.Sum += o.Sum
	l.Count += o.Count
}

// RxCounters are what one VM received. Frames = Unique + Duplicates + Late;
// Reordered is a subset of Unique.
type RxCounters struct {
	Frames     uint64
	Bytes      uint64
	Unique     uint64 // first receptions, checked exactly within the window
	Duplicates uint64 // sequence numbers seen before, within the window
	Reordered  uint64 // unique but arriving after a higher number
	Late       uint64 // older than the window, so neither counted unique nor dup
	Latency    Latency
	// MaxGap is the longest time between two unique receptions since the
	// last ResetGaps, ending at guest time MaxGapEnd (ns).
	MaxGap    time.Duration
	MaxGapEnd int64
}

func (r *RxCounters) merge(o RxCounters) {
	r.Frames += o.Frames
	r.Bytes += o.Bytes
	r.Unique += o.Unique
	r.Duplicates += o.Duplicates
	r.Reordered += o.Reordered
	r.Late += o.Late
	r.Latency.merge(o.Latency)
	if o.MaxGap > r.MaxGap {
		r.MaxGap, r.MaxGapEnd = o.MaxGap, o.MaxGapEnd
	}
}

// PeerTraffic is one peer's pair of streams as this VM sees them.
type PeerTraffic struct {
	VM         uint32     // the peer
	Sent       TxCounters // to the peer
	NextSeq    uint64     // next sequence number to the peer
	Received   RxCounters // from the peer
	HighestSeq uint64     // highest sequence number received from it
}

// TrafficStats is a snapshot of a Traffic program's counters.
type TrafficStats struct {
	VM           uint32
	Running      bool          // the start/stop switch
	Peers        []PeerTraffic // in config order
	Sent         TxCounters    // totals over Peers
	Received     RxCounters    // totals over Peers
	NotProbe     uint64        // frames that were not intact probes
	Misdelivered uint64        // probes for another VM id or unicast MAC
	UnknownPeer  uint64        // probes for us from a VM that is no peer
	TxBusy       uint64        // Steps that stopped on a full tx ring
	TxTooSmall   uint64        // tx buffers shorter than a probe frame
}

// Stats reads the counters from m, the program's guest memory or a copy of
// it. Every counter is an aligned word, which guest/mem reads whole, so it
// is safe while the vCPU runs; but counters read then are not a snapshot of
// one instant (a frame may be in tx frames and not yet in tx bytes). For
// exact accounting read them with the vCPU paused, or after Stop, Stopped
// and a drain.
func (t *Traffic) Stats(m *mem.Memory) TrafficStats {
	b := t.base
	st := TrafficStats{
		VM:           t.cfg.VM,
		Running:      m.LoadU32Acquire(b+trfOffControl)&trafficRun != 0,
		Peers:        make([]PeerTraffic, len(t.cfg.Peers)),
		NotProbe:     m.U64(b + trfOffNotProbe),
		Misdelivered: m.U64(b + trfOffMisdelivered),
		UnknownPeer:  m.U64(b + trfOffUnknownPeer),
		TxBusy:       m.U64(b + trfOffTxBusy),
		TxTooSmall:   m.U64(b + trfOffTxTooSmall),
	}
	for i, p := range t.cfg.Peers {
		s := t.slot(i)
		pt := PeerTraffic{
			VM:      p.VM,
			Sent:    TxCounters{Frames: m.U64(s + trpOffTxFrames), Bytes: m.U64(s + trpOffTxBytes)},
			NextSeq: m.U64(s + trpOffNextSeq),
			Received: RxCounters{
				Frames:     m.U64(s + trpOffRxFrames),
				Bytes:      m.U64(s + trpOffRxBytes),
				Unique:     m.U64(s + trpOffUnique),
				Duplicates: m.U64(s + trpOffDuplicates),
				Reordered:  m.U64(s + trpOffReordered),
				Late:       m.U64(s + trpOffLate),
				Latency: Latency{
					Count: m.U64(s + trpOffLatCount),
					Min:   time.Duration(m.U64(s + trpOffLatMin)),
					Max:   time.Duration(m.U64(s + trpOffLatMax)),
					Sum:   time.Duration(m.U64(s + trpOffLatSum)),
				},
			},
			HighestSeq: m.U64(s + trpOffHighest),
		}
		if end := m.U64(s + trpOffMaxGapEnd); end >= m.U64(b+trfOffGapEpoch) {
			pt.Received.MaxGap, pt.Received.MaxGapEnd = time.Duration(m.U64(s+trpOffMaxGap)), int64(end)
		}
		st.Peers[i] = pt
		st.Sent.Frames += pt.Sent.Frames
		st.Sent.Bytes += pt.Sent.Bytes
		st.Received.merge(pt.Received)
	}
	return st
}

// Peer returns the stats of the stream pair with VM vm.
func (s TrafficStats) Peer(vm uint32) (PeerTraffic, bool) {
	for _, p := range s.Peers {
		if p.VM == vm {
			return p, true
		}
	}
	return PeerTraffic{}, false
}

// Missing returns the sequence numbers from peer vm that are still missing
// within the receive window (the last TrafficWindow numbers up to the
// highest seen), at most max of them, oldest first: where to look when a
// stream lost frames.
func (t *Traffic) Missing(m *mem.Memory, vm uint32, max int) []uint64 {
	i, ok := t.index[vm]
	if !ok {
		return nil
	}
	s := t.slot(i)
	hi := m.U64(s + trpOffHighest)
	lo := uint64(1)
	if hi >= TrafficWindow {
		lo = hi - TrafficWindow + 1
	}
	var out []uint64
	for seq := lo; seq <= hi && len(out) < max; seq++ {
		pos := seq % TrafficWindow
		if m.U64(s+trpOffWindow+pos/64*8)&(1<<(pos%64)) == 0 {
			out = append(out, seq)
		}
	}
	return out
}
