package fabric

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmfex/vmfex/link"
)

// DefaultMACAgingTime is the MAC aging time when Config leaves it 0: 300 s,
// the NX-OS and IEEE default (protocols.md §7.3).
const DefaultMACAgingTime = 300 * time.Second

// Config configures an FI.
type Config struct {
	// Name identifies the FI in logs, e.g. "fi-a".
	Name string
	// Logger receives state transitions (never per-frame events); nil
	// discards.
	Logger *slog.Logger
	// MACAgingTime is how long a learned MAC lives without traffic from it;
	// 0 = DefaultMACAgingTime, negative = never age.
	MACAgingTime time.Duration
	// Now is the clock for MAC aging; nil = time.Now. Tests pass a fake.
	Now func() time.Time
	// HoldLimit is how many frames HoldVEth keeps per vEth before it drops
	// further ones as hold-overflow; 0 = DefaultHoldLimit.
	HoldLimit int
}

// fiState is the FI lifecycle.
type fiState uint8

//go:generate stringer -type=fiState -linecomment -output=fistate_string.go

const (
	stateNew     fiState = iota // new
	stateRunning                // running
	stateClosed                 // closed
)

// PortKind tells server ports from uplinks.
type PortKind uint8

//go:generate stringer -type=PortKind -linecomment -output=portkind_string.go

const (
	// PortServer faces an adapter; frames carry a VN-Tag.
	PortServer PortKind = iota // server
	// PortUplink faces the external LAN: an 802.1Q trunk without VN-Tag.
	PortUplink // uplink
)

// LinkState is the operational state of a port or vEth.
type LinkState uint8

//go:generate stringer -type=LinkState -linecomment -output=linkstate_string.go

const (
	// LinkDown: not started, or the cable was closed.
	LinkDown LinkState = iota // down
	// LinkUp: the port's reader runs.
	LinkUp // up
)

// port is one FI port. Created by AddServerPort/AddUplink, never removed.
type port struct {
	idx   int           // immutable: index in FI.ports and snapshot.ports
	name  string        // immutable: "Ethernet1/1"
	short string        // immutable: NX-OS short form, "Eth1/1"
	kind  PortKind      // immutable
	link  link.Port     // immutable; owned by the FI
	prog  VifProgrammer // immutable; nil for uplinks or when not given
	up    atomic.Bool   // the reader runs
	ctr   portCounters
	// batchSeq is odd while the port's worker processes a batch (stages
	// 1-10) and even between batches: HoldVEth waits on it for the batches
	// that may have loaded a snapshot without the hold (see graceWait).
	batchSeq atomic.Uint64

	txMu sync.Mutex // serialises Send: several readers may forward to this port

	started bool // guarded by FI.mu: the reader was launched
}

// PortInfo describes a port.
type PortInfo struct {
	Name  string
	Kind  PortKind
	State LinkState
	// VEths is the number of vEths bound to a server port.
	VEths int
	Stats PortStats
}

// FI is a Fabric Interconnect. Create it with New.
type FI struct {
	cfg  Config                   // immutable, defaults filled in
	log  *slog.Logger             // immutable; tagged component=fabric fi=Name
	now  func() time.Time         // immutable: cfg.Now
	macs *macTable                // the learned MAC table; internally synchronised
	snap atomic.Pointer[snapshot] // written under mu by rebuildLocked, read lock-free

	drops        dropCounters // lock-free: every drop
	unattributed dropCounters // lock-free: drops no vEth owns

	// Grace periods (hold.go). A worker that ends a batch while
	// graceWaiters > 0 broadcasts graceCond under graceMu.
	graceWaiters atomic.Int32
	graceMu      sync.Mutex
	graceCond    sync.Cond // L = &graceMu

	wg      sync.WaitGroup // port readers and the ager
	stop    chan struct{}  // closed by Close
	stopped chan struct{}  // closed when Close has waited for all goroutines

	mu         sync.Mutex
	state      fiState                 // guarded by mu
	ports      []*port                 // guarded by mu; index = port.idx
	portByName map[string]*port        // guarded by mu
	profiles   map[string]*profileView // guarded by mu
	veths      map[uint32]*veth        // guarded by mu
	bindings   map[binding]*veth       // guarded by mu: (port, vif) -> vEth
	slots      []*veth                 // guarded by mu: MAC table slot -> vEth
	freeSlots  []uint32                // guarded by mu
	nextInc    uint32                  // guarded by mu: last incarnation given
	progQueue  []progAction            // guarded by mu: VifProgrammer calls to make, in order

	// progMu is held while VifProgrammer calls are made, so that they are
	// made one at a time in queue order (see unlockAndProgram). It is never
	// acquired while holding mu.
	progMu sync.Mutex
	// holdMu serialises HoldVEth and ReleaseVEth, so that a release never
	// interleaves its sends with another release of the same frames and a
	// hold is never undone by a release that was already running. It is
	// acquired before mu.
	holdMu sync.Mutex
}

// New returns a stopped FI with no ports. It starts no goroutines.
func New(cfg Config) *FI {
	if cfg.MACAgingTime == 0 {
		cfg.MACAgingTime = DefaultMACAgingTime
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HoldLimit <= 0 {
		cfg.HoldLimit = DefaultHoldLimit
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	f := &FI{
		cfg:        cfg,
		log:        lg.With("component", "fabric", "fi", cfg.Name),
		now:        cfg.Now,
		macs:       newMACTable(cfg.MACAgingTime),
		stop:       make(chan struct{}),
		stopped:    make(chan struct{}),
		portByName: make(map[string]*port),
		profiles:   make(map[string]*profileView),
		veths:      make(map[uint32]*veth),
		bindings:   make(map[binding]*veth),
	}
	f.graceCond.L = &f.graceMu
	f.mu.Lock()
	f.rebuildLocked()
	f.mu.Unlock()
	return f
}

// Name returns the FI's name.
func (f *FI) Name() string { return f.cfg.Name }

// changeStateLocked is the one lifecycle transition.
func (f *FI) changeStateLocked(to fiState) {
	from := f.state
	f.state = to
	f.log.Info("FI state", "from", from.String(), "to", to.String())
}

// Start starts a reader per port and the MAC ager. Starting a running FI
// does nothing; starting a closed one fails with ErrClosed.
func (f *FI) Start() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch f.state {
	case stateRunning:
		return nil
	case stateClosed:
		return ErrClosed
	}
	f.changeStateLocked(stateRunning)
	for _, p := range f.ports {
		f.startReaderLocked(p)
	}
	if f.cfg.MACAgingTime > 0 {
		f.wg.Add(1)
		go f.ager()
	}
	return nil
}

// Close stops the FI: it closes every port (the FI owns them), stops the
// readers and the ager and waits for them. Idempotent; every call returns
// once the goroutines have exited.
func (f *FI) Close() error {
	f.mu.Lock()
	if f.state == stateClosed {
		f.mu.Unlock()
		<-f.stopped
		return nil
	}
	f.changeStateLocked(stateClosed)
	close(f.stop)
	ports := append([]*port(nil), f.ports...)
	f.mu.Unlock()
	var errs []error
	for _, p := range ports {
		if err := p.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("fabric: close %s: %w", p.name, err))
		}
	}
	f.wg.Wait()
	close(f.stopped)
	return errors.Join(errs...)
}

// AddServerPort adds a port facing an adapter. The FI owns p from now on
// and closes it in Close. prog is told about the vifs bound to the port;
// it may be nil. A port added to a running FI starts at once.
func (f *FI) AddServerPort(name string, p link.Port, prog VifProgrammer) error {
	return f.addPort(name, p, prog, PortServer)
}

// AddUplink adds an 802.1Q trunk towards the external LAN, carrying every
// VLAN that a port profile uses, all tagged (frames without a tag are
// dropped as vlan-not-allowed). The FI owns p from now on.
func (f *FI) AddUplink(name string, p link.Port) error {
	return f.addPort(name, p, nil, PortUplink)
}

func (f *FI) addPort(name string, lp link.Port, prog VifProgrammer, kind PortKind) error {
	if strings.TrimSpace(name) == "" || strings.ContainsAny(name, " \t\r\n") {
		return fmt.Errorf("%w: port name %q; give a name without spaces, such as Ethernet1/1", ErrInvalidConfig, name)
	}
	if lp == nil {
		return fmt.Errorf("%w: port %q: nil link.Port", ErrInvalidConfig, name)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == stateClosed {
		return ErrClosed
	}
	if f.portByName[name] != nil {
		return fmt.Errorf("%w: %q", ErrPortExists, name)
	}
	p := &port{idx: len(f.ports), name: name, short: shortName(name), kind: kind, link: lp, prog: prog}
	f.ports = append(f.ports, p)
	f.portByName[name] = p
	f.rebuildLocked()
	f.log.Info("port added", "port", name, "kind", kind.String())
	if f.state == stateRunning {
		f.startReaderLocked(p)
	}
	return nil
}

// shortName abbreviates an interface name as NX-OS prints it.
func shortName(name string) string {
	if rest, ok := strings.CutPrefix(name, "Ethernet"); ok {
		return "Eth" + rest
	}
	return name
}

func (f *FI) startReaderLocked(p *port) {
	if p.started {
		return
	}
	p.started = true
	p.up.Store(true) // before Start returns, so that callers see the port up
	f.wg.Add(1)
	go f.portReader(p)
}

// portReader is the goroutine of one port: it receives batches and runs
// them through the data path until the port is closed.
func (f *FI) portReader(p *port) {
	defer f.wg.Done()
	f.log.Info("port up", "port", p.name)
	w := newWorker(f, p)
	bs := p.link.BatchSize()
	if bs < 1 {
		bs = 1
	}
	bufs := make([]*link.Buf, bs)
	var err error
	for {
		var n int
		n, err = p.link.Recv(bufs)
		if n > 0 {
			w.process(bufs[:n])
		}
		if err != nil {
			break
		}
	}
	p.up.Store(false)
	f.log.Info("port down", "port", p.name, "reason", err.Error())
}

// ager ages the MAC table out every tenth of the aging time (at least once
// a second), until Close.
func (f *FI) ager() {
	defer f.wg.Done()
	every := max(f.cfg.MACAgingTime/10, time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			f.AgeOut()
		case <-f.stop:
			return
		}
	}
}

// Wait blocks until Close has stopped every goroutine of the FI or ctx
// ends.
func (f *FI) Wait(ctx context.Context) error {
	select {
	case <-f.stopped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Ports describes every port, in the order they were added.
func (f *FI) Ports() []PortInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]PortInfo, len(f.ports))
	for i, p := range f.ports {
		out[i] = f.portInfoLocked(p)
	}
	return out
}

// Port describes the port named name.
func (f *FI) Port(name string) (PortInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.portByName[name]
	if p == nil {
		return PortInfo{}, false
	}
	return f.portInfoLocked(p), true
}

func (f *FI) portInfoLocked(p *port) PortInfo {
	st := LinkDown
	if p.up.Load() {
		st = LinkUp
	}
	n := 0
	for b := range f.bindings {
		if b.port == p {
			n++
		}
	}
	c := &p.ctr
	return PortInfo{
		Name: p.name, Kind: p.kind, State: st, VEths: n,
		Stats: PortStats{
			InFrames: c.inFrames.Load(), InBytes: c.inBytes.Load(), InDrops: c.inDrops.Load(),
			OutFrames: c.outFrames.Load(), OutBytes: c.outBytes.Load(), OutDrops: c.outDrops.Load(),
			Link: p.link.Stats(),
		},
	}
}

// Stats returns the FI-wide counters.
func (f *FI) Stats() Stats {
	return Stats{
		Drops:        f.drops.load(),
		Unattributed: f.unattributed.load(),
		MACEntries:   f.macs.len(),
		MACMoves:     f.macs.moves.Load(),
	}
}
