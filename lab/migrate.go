package lab

// Live migration of a VM between two hosts of the lab over a migration
// stream: an in-process pipe, or a TCP connection on the loopback (the
// same protocol and code; the destination host's side runs as its own
// goroutine and talks to the source only through the stream). Phases, as
// the report names them:
//
//	prepare          the stream opens; the source offers the VM (Hello); the
//	                 destination builds it — memory, a dynamic vNIC from
//	                 its adapter, driven by the hypervisor, a VEM port — or
//	                 refuses
//	vic_to_emulated  the vNIC moves, live, onto the source's emulated device
//	precopy          memory rounds over the dirty log while the VM runs
//	freeze           the device, then the vCPU stop; the FI holds the vEth's
//	                 frames; every frame the FI sent the source has arrived
//	                 (count barrier) and every frame the VM queued has
//	                 reached the FI
//	stop_and_copy    the last dirty pages, then the vCPU and device state in
//	                 their envelopes
//	resume           the destination validates the state and says Ready; the
//	                 FI rebinds the vEth to the destination; Commit; the
//	                 destination claims the vEth at the FI (the commit
//	                 point), queues a RARP announcing the VM's MAC, runs the
//	                 VM and acks
//	emulated_to_vic  the destination has the FI release the held frames,
//	                 moves the vNIC, live, onto its adapter and says so
//	                 (Direct)
//
// Before the commit point any failure — the destination refuses, the
// stream drops, the destination disappears, a timeout — rolls back: the VM
// thaws on the source and returns to the direct path, the FI releases the
// hold to the source's binding, and the destination removes its VM and
// vNIC. If the stream breaks after the rebind, the FI decides: the
// destination runs the VM only if its claim succeeds, and the source takes
// the vEth back only if its revert does (fabric.RevertVEth), which fails
// once the destination claimed it.
//
// The destination's side needs nothing from the source but the stream (the
// offer carries the VM's configuration), so it runs in a goroutine of the
// lab or in another process (a host agent, package agent).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"time"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/migration"
	"github.com/vmfex/vmfex/wire"
)

// MigrationPhase is one step of a migration's timeline.
type MigrationPhase struct {
	Name    string `json:"name"`
	StartUs int64  `json:"start_us"`
	EndUs   int64  `json:"end_us"`
}

// MigrationReport is what a migration did.
type MigrationReport struct {
	VM               string           `json:"vm"`
	From             string           `json:"from"`
	To               string           `json:"to"`
	Transport        Transport        `json:"transport"`
	StartUnixNs      int64            `json:"start_unix_ns"` // phases count from here
	TotalMs          float64          `json:"total_ms"`
	DowntimeMs       float64          `json:"downtime_ms"` // the VM was frozen this long
	PrecopyRounds    int              `json:"precopy_rounds"`
	BytesTransferred uint64           `json:"bytes_transferred"`
	Phases           []MigrationPhase `json:"phases"`
	// CableLossAtFreeze counts the frames of the VM that a lossy cable (to
	// an FI in another process) had dropped when the freeze's count
	// barrier gave up waiting for them; 0 in one process.
	CableLossAtFreeze uint64 `json:"cable_loss_at_freeze,omitempty"`
}

// Phase names, in order.
const (
	PhasePrepare       = "prepare"
	PhaseVICToEmulated = "vic_to_emulated"
	PhasePrecopy       = "precopy"
	PhaseFreeze        = "freeze"
	PhaseStopAndCopy   = "stop_and_copy"
	PhaseResume        = "resume"
	PhaseEmulatedToVIC = "emulated_to_vic"
)

// RollbackPhases are the phases a migration can fail in and roll back from:
// every phase before the commit point.
var RollbackPhases = []string{PhasePrepare, PhaseVICToEmulated, PhasePrecopy, PhaseFreeze, PhaseStopAndCopy, PhaseResume}

// Transport carries the migration stream.
type Transport string

// Transports.
const (
	TransportPipe Transport = "pipe" // net.Pipe, in process
	TransportTCP  Transport = "tcp"  // a TCP connection on the loopback
)

// MigrationFault is a failure injected into a migration, to prove that it
// rolls back.
type MigrationFault uint8

// Faults.
const (
	FaultNone MigrationFault = iota
	// FaultRefuse: the destination refuses, with a reason, where it
	// decides: the offer (FaultPhase prepare) or the device state (resume).
	FaultRefuse
	// FaultCut: the connection drops (both ends closed).
	FaultCut
	// FaultDestinationGone: the destination host disappears: its end of the
	// stream closes and its VM and vNIC go away.
	FaultDestinationGone
)

func (f MigrationFault) String() string {
	return [...]string{"none", "refuse", "cut", "destination-gone"}[f]
}

// MigrateOptions tune one migration.
type MigrateOptions struct {
	Transport Transport // TransportPipe if empty
	// Fault strikes at the start of phase FaultPhase (one of RollbackPhases).
	Fault      MigrationFault
	FaultPhase string
	// Progress, if set, is called as each phase ends.
	Progress func(MigrationPhase)
	// Sender tunes the pre-copy (downtime target, rounds).
	Sender migration.SenderConfig
}

// settleTimeout bounds the wait for frames in flight at the freeze: they
// are on lossless in-memory cables, so a longer wait means a stuck fabric.
const settleTimeout = 10 * time.Second

// commitTimeout bounds the wait for the destination's Ready and its Ack of
// Commit.
const commitTimeout = 10 * time.Second

// Errors.
var (
	ErrSameHost   = errors.New("lab: the VM already runs on that host")
	ErrRolledBack = errors.New("lab: migration rolled back; the VM runs on its source host")
	// ErrOutcomeUnknown: the stream to the destination broke after the
	// rebind and the FI could not be asked who won; the VM stays frozen on
	// the source, its vEth held, until an operator decides.
	ErrOutcomeUnknown = errors.New("lab: migration outcome unknown")
	// ErrNotDirect: the migration committed (the VM runs on the
	// destination) but its return to the direct path there is not
	// confirmed.
	ErrNotDirect = errors.New("lab: migrated, but the return to the direct path is not confirmed")
)

// FabricControl is what a migration asks of the FI: the lab's FI in the
// same process, or an FI agent over its control API (package agent).
type FabricControl interface {
	HoldVEth(id uint32) (fabric.HoldTicket, error)
	ReleaseVEth(id uint32) error
	RebindVEth(id uint32, serverPort string, vif uint16) error
	ClaimVEth(id uint32, serverPort string, vif uint16) error
	RevertVEth(id uint32, fromPort string, fromVif uint16, toPort string, toVif uint16) error
	VEthInfo(id uint32) (fabric.VEthInfo, error)
}

// LocalFabric is the FabricControl of an FI in this process.
type LocalFabric struct{ *fabric.FI }

// VEthInfo returns the vEth numbered id.
func (f LocalFabric) VEthInfo(id uint32) (fabric.VEthInfo, error) {
	info, ok := f.VEth(id)
	if !ok {
		return info, fmt.Errorf("%w: Veth%d", fabric.ErrUnknownVEth, id)
	}
	return info, nil
}

// Migrate moves the VM named name to host to, live, over an in-process pipe.
func (l *Lab) Migrate(ctx context.Context, name, to string) (MigrationReport, error) {
	return l.MigrateWith(ctx, name, to, MigrateOptions{})
}

// MigrateWith moves the VM named name to host to, live, as o says. The
// destination's side runs in its own goroutine and reaches the source only
// through the stream (and the FI).
func (l *Lab) MigrateWith(ctx context.Context, name, to string, o MigrateOptions) (MigrationReport, error) {
	vm, dst, err := l.migrationEnds(name, to)
	if err != nil {
		return MigrationReport{}, err
	}
	if o.Transport == "" {
		o.Transport = TransportPipe
	}
	if err := o.check(); err != nil {
		return MigrationReport{}, err
	}
	l.migrating.Lock()
	defer l.migrating.Unlock()
	fc := LocalFabric{l.FI}
	srcEnd, dstEnd, err := openTransport(ctx, o.Transport)
	if err != nil {
		return MigrationReport{}, err
	}
	dctx, dcancel := context.WithCancel(ctx)
	defer dcancel()
	done := make(chan destOutcome, 1)
	go func() {
		in, err := ServeIncoming(dctx, dstEnd, dst, fc)
		dstEnd.Close()
		done <- destOutcome{in, err}
	}()
	m := newRun(vm, fc, dst.Name, dst.ServerPort, srcEnd, o)
	m.cut = func() { srcEnd.Close(); dstEnd.Close() }
	m.destGone = func() { dcancel(); dstEnd.Close() }
	m.destDone = done
	m.committed = func(in *VM) {
		l.mu.Lock()
		vm.VM, vm.Host, vm.VNIC, vm.Port, vm.Traffic = in.VM, dst, in.VNIC, in.Port, in.Traffic
		l.mu.Unlock()
	}
	return m.run(ctx)
}

// MigrateOut moves vm, live, to the host at the other end of conn (a host
// agent's migration listener), whose FI server port is toPort: the source's
// side of a migration between processes. On success the VM runs there and
// its pieces here are gone; on ErrRolledBack it runs here, on the direct
// path. Only FaultCut can be injected from here; a destination's refusal
// travels in the offer (o.Fault FaultRefuse).
func MigrateOut(ctx context.Context, vm *VM, fc FabricControl, conn net.Conn, to, toPort string, o MigrateOptions) (MigrationReport, error) {
	o.Transport = TransportTCP
	if err := o.check(); err != nil {
		return MigrationReport{}, err
	}
	if o.Fault == FaultDestinationGone {
		return MigrationReport{}, errors.New("lab: fault destination-gone needs an in-process destination; across processes, stop the destination's agent")
	}
	m := newRun(vm, fc, to, toPort, conn, o)
	m.cut = func() { conn.Close() }
	m.destGone = func() { conn.Close() }
	return m.run(ctx)
}

func (o *MigrateOptions) check() error {
	if o.Fault == FaultRefuse && o.FaultPhase != PhasePrepare && o.FaultPhase != PhaseResume {
		return fmt.Errorf("lab: the destination decides only in %s and %s; it cannot refuse in %q", PhasePrepare, PhaseResume, o.FaultPhase)
	}
	if o.Fault != FaultNone && !slices.Contains(RollbackPhases, o.FaultPhase) {
		return fmt.Errorf("lab: fault phase %q is not one of %v", o.FaultPhase, RollbackPhases)
	}
	return nil
}

func (l *Lab) migrationEnds(name, to string) (*VM, *Host, error) {
	var vm *VM
	for _, v := range l.vms {
		if v.Name() == name {
			vm = v
		}
	}
	var dst *Host
	for _, h := range l.hosts {
		if h.Name == to {
			dst = h
		}
	}
	switch {
	case vm == nil:
		return nil, nil, fmt.Errorf("lab: no VM %q (VMs: %v)", name, l.SortedVMs())
	case dst == nil:
		return nil, nil, fmt.Errorf("lab: no host %q", to)
	case vm.Host == dst:
		return nil, nil, fmt.Errorf("%w: %s on %s", ErrSameHost, name, to)
	}
	return vm, dst, nil
}

// offer is the VM configuration a source sends in its Hello (VMSpec.Config).
type offer struct {
	VM VMConfig `json:"vm"`
	// Refuse names the phase (prepare or resume) at which the destination
	// must refuse: an injected fault, to prove the rollback.
	Refuse string `json:"refuse,omitempty"`
}

// migrationRun is the source side of one migration.
type migrationRun struct {
	vm     *VM
	fc     FabricControl
	to     string // destination host
	toPort string // its FI server port
	conn   net.Conn
	o      MigrateOptions
	t0     time.Time
	rep    MigrationReport

	src      *migration.Conn
	cut      func() // closes the transport (both ends in process)
	destGone func() // the destination host disappears
	// In process only: the destination's side ends on destDone, and
	// committed takes its VM into the lab.
	destDone  chan destOutcome
	destOut   *destOutcome
	committed func(in *VM)

	phaseStart time.Time
}

type destOutcome struct {
	in  *VM // the VM running on the destination, on success
	err error
}

func newRun(vm *VM, fc FabricControl, to, toPort string, conn net.Conn, o MigrateOptions) *migrationRun {
	m := &migrationRun{vm: vm, fc: fc, to: to, toPort: toPort, conn: conn, o: o, t0: time.Now()}
	m.rep = MigrationReport{VM: vm.Name(), From: vm.Host.Name, To: to, Transport: o.Transport, StartUnixNs: m.t0.UnixNano()}
	return m
}

func (m *migrationRun) begin(phase string) {
	m.phaseStart = time.Now()
	if m.o.Fault == FaultNone || m.o.FaultPhase != phase {
		return
	}
	switch m.o.Fault {
	case FaultCut:
		m.cut()
	case FaultDestinationGone:
		m.destGone()
	}
}

func (m *migrationRun) end(phase string) {
	p := MigrationPhase{Name: phase, StartUs: m.phaseStart.Sub(m.t0).Microseconds(), EndUs: time.Since(m.t0).Microseconds()}
	m.rep.Phases = append(m.rep.Phases, p)
	if m.o.Progress != nil {
		m.o.Progress(p)
	}
}

func (m *migrationRun) run(ctx context.Context) (MigrationReport, error) {
	vm := m.vm
	defer m.conn.Close()

	// prepare: the stream, the offer, the destination's VM.
	m.phaseStart = time.Now()
	m.src = migration.NewConn(m.conn, migration.ConnConfig{})
	defer m.src.Close()
	m.begin(PhasePrepare)
	off := offer{VM: vm.cfg}
	if m.o.Fault == FaultRefuse {
		off.Refuse = m.o.FaultPhase
	}
	cfg, err := json.Marshal(off)
	if err != nil {
		return m.rollback(ctx, 0, false, err)
	}
	spec := migration.VMSpec{Name: vm.Name(), ID: vm.ID(), MemSize: vm.Memory().Size(), MAC: vm.MAC(),
		Driver: vm.Driver().Config(), Config: string(cfg)}
	if err := migration.Offer(ctx, m.src, spec); err != nil {
		return m.rollback(ctx, 0, false, err)
	}
	m.end(PhasePrepare)

	// vic_to_emulated
	m.begin(PhaseVICToEmulated)
	if _, err := vm.SwitchMode(ctx, hypervisor.ModeEmulated); err != nil {
		return m.rollback(ctx, 0, false, err)
	}
	m.end(PhaseVICToEmulated)

	// precopy
	m.begin(PhasePrecopy)
	sender := migration.NewSender(vm.Memory(), m.o.Sender)
	if _, err := sender.Precopy(ctx, m.src); err != nil {
		return m.rollback(ctx, 0, false, err)
	}
	m.end(PhasePrecopy)

	// freeze
	m.begin(PhaseFreeze)
	irq, err := vm.FreezeOutgoing(ctx)
	if err != nil {
		return m.rollback(ctx, 0, false, err)
	}
	frozeAt := time.Now()
	ticket, err := m.fc.HoldVEth(vm.VEth)
	if err != nil {
		// Not held (or the FI cannot say): thaw, and release in case it is.
		return m.rollback(ctx, irq, true, err)
	}
	extra, shortfall, err := vm.settle(ctx, m.fc, ticket)
	m.rep.CableLossAtFreeze = shortfall
	if err != nil {
		// The frames taken off the port go back to the device, in order.
		if aerr := vm.Emulated().Device().AddPending(0, extra); aerr != nil {
			err = errors.Join(err, aerr)
		}
		return m.rollback(ctx, irq, true, err)
	}
	// From here the frames of the vif the VM had not taken are in the
	// frozen device (its held frames travel in its state; a rollback keeps
	// them there).
	st, err := vm.SaveOutgoing(extra)
	if err != nil {
		return m.rollback(ctx, irq, true, err)
	}
	m.end(PhaseFreeze)

	// stop_and_copy
	m.begin(PhaseStopAndCopy)
	if err := sender.StopAndCopy(ctx, m.src); err != nil {
		return m.rollback(ctx, irq, true, err)
	}
	vcpuEnv, err := migration.EncodeVCPU(migration.VCPUState{IRQ: irq})
	if err != nil {
		return m.rollback(ctx, irq, true, err)
	}
	devEnv, err := migration.EncodeDeviceState(&st)
	if err != nil {
		return m.rollback(ctx, irq, true, err)
	}
	if err := m.src.Send(ctx, &migration.Msg{Type: migration.MsgVCPU, Envelope: vcpuEnv},
		&migration.Msg{Type: migration.MsgDeviceState, Envelope: devEnv}); err != nil {
		return m.rollback(ctx, irq, true, err)
	}
	m.end(PhaseStopAndCopy)

	// resume
	m.begin(PhaseResume)
	rctx, rcancel := context.WithTimeout(ctx, commitTimeout)
	defer rcancel()
	if _, err := m.src.Expect(rctx, migration.MsgReady); err != nil {
		return m.rollback(ctx, irq, true, err)
	}
	if m.destDone != nil {
		select {
		case out := <-m.destDone:
			// The destination ended without waiting for Commit: it failed.
			m.destOut = &out
			return m.rollback(ctx, irq, true, fmt.Errorf("destination ended after Ready: %v", out.err))
		default:
		}
	}
	// The vEth is bound to the destination before the VM runs there, so
	// the FI knows the (port, vif) of its first frame. The destination
	// runs the VM only once it has claimed the new binding at the FI (the
	// commit point); until then the source can take the vEth back.
	if err := m.fc.RebindVEth(vm.VEth, m.toPort, vm.Vif); err != nil {
		return m.rollback(ctx, irq, true, err)
	}
	commitErr := m.src.Send(rctx, &migration.Msg{Type: migration.MsgCommit})
	if commitErr == nil {
		commitErr = m.src.ExpectAck(rctx, migration.MsgCommit)
	}
	if commitErr != nil {
		// Who won is the FI's to say: the destination's claim, or this
		// revert.
		committed, err := m.decide(ctx)
		if err != nil {
			return m.rep, fmt.Errorf("%w: %s to %s: %w (stream: %v)", ErrOutcomeUnknown, vm.Name(), m.to, err, commitErr)
		}
		if !committed {
			return m.rollback(ctx, irq, true, fmt.Errorf("destination did not claim the vEth: %w", commitErr))
		}
	}
	resumedAt := time.Now()
	m.end(PhaseResume)
	m.rep.DowntimeMs = float64(resumedAt.Sub(frozeAt).Microseconds()) / 1e3

	// The source's copy goes away; the VM is the destination's.
	old := *vm
	old.teardown()

	// emulated_to_vic: the destination returns the VM to its adapter.
	m.begin(PhaseEmulatedToVIC)
	var directErr error
	if commitErr == nil {
		// Its own deadline: the release of the held frames comes first.
		dctx, dcancel := context.WithTimeout(ctx, settleTimeout+commitTimeout)
		_, directErr = m.src.Expect(dctx, migration.MsgDirect)
		dcancel()
	} else {
		directErr = errors.New("the stream broke before the destination reported")
	}
	if m.destDone != nil {
		out := m.destination()
		directErr = errors.Join(directErr, out.err)
		m.committed(out.in)
	}
	m.end(PhaseEmulatedToVIC)
	r := sender.Report()
	m.rep.PrecopyRounds = len(r.Rounds)
	m.rep.BytesTransferred = m.src.Sent()
	m.rep.TotalMs = float64(time.Since(m.t0).Microseconds()) / 1e3
	if directErr != nil {
		return m.rep, fmt.Errorf("%w: %s runs on %s: %w", ErrNotDirect, vm.Name(), m.to, directErr)
	}
	return m.rep, nil
}

// decide asks the FI, after the stream broke past the rebind, whether the
// destination claimed the vEth (committed) or the source takes it back.
func (m *migrationRun) decide(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	vm := m.vm
	for {
		err := m.fc.RevertVEth(vm.VEth, m.toPort, vm.Vif, vm.Host.ServerPort, vm.Vif)
		switch {
		case err == nil:
			return false, nil
		case errors.Is(err, fabric.ErrClaimed):
			return true, nil
		case errors.Is(err, fabric.ErrNotBound), errors.Is(err, fabric.ErrUnknownVEth):
			return false, err
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(10 * time.Millisecond): // the FI's control API is unreachable: retry
		}
	}
}

// rollback returns the VM to its source host after a failure before the
// commit point (the vEth is bound to the source): the destination's side
// ends and removes what it built, the VM thaws, the FI's hold ends, and
// the VM goes back to the direct path.
func (m *migrationRun) rollback(ctx context.Context, irq uint32, frozen bool, cause error) (MigrationReport, error) {
	vm := m.vm
	// Undoing must not stop half way because the caller gave up.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	if m.src != nil {
		m.src.Close()
	}
	m.destGone() // the destination stops and cleans up
	if m.destDone != nil {
		m.destination() // it removed what it built
	}
	if frozen {
		// The VM first, then the FI: the held frames go down a lossless
		// cable to the VM's adapter, which can take them only once the VM
		// takes frames again.
		vm.ThawOutgoing(irq)
		if err := m.fc.ReleaseVEth(vm.VEth); err != nil {
			cause = errors.Join(cause, err)
		}
	}
	if vm.Mode() != hypervisor.ModeDirect {
		if _, err := vm.SwitchMode(ctx, hypervisor.ModeDirect); err != nil {
			cause = errors.Join(cause, err)
		}
	}
	return m.rep, fmt.Errorf("%w: %s to %s: %w", ErrRolledBack, vm.Name(), m.to, cause)
}

// destination waits for the in-process destination's side to end.
func (m *migrationRun) destination() destOutcome {
	if m.destOut == nil {
		out := <-m.destDone
		m.destOut = &out
	}
	return *m.destOut
}

// ServeIncoming is a destination host's side of one migration over conn:
// it accepts the offer, builds the VM on h, receives memory and state, says
// Ready, and on Commit — or, with the stream gone, if the source had
// rebound the vEth here — claims the vEth at the FI, which commits the
// migration, runs the VM, lets the FI release the held frames and returns
// the VM to the direct path. On failure it removes what it built.
func ServeIncoming(ctx context.Context, conn net.Conn, h *Host, fc FabricControl) (in *VM, err error) {
	c := migration.NewConn(conn, migration.ConnConfig{})
	defer c.Close()
	claimed := false
	defer func() {
		if err != nil && in != nil && !claimed {
			in.teardown()
			in = nil
		}
	}()
	spec, err := migration.Accept(ctx, c)
	if err != nil {
		return nil, err
	}
	var off offer
	if err := json.Unmarshal([]byte(spec.Config), &off); err != nil {
		c.Abort("destination: VM configuration: " + err.Error())
		return nil, fmt.Errorf("lab: destination %s: VM configuration: %w", h.Name, err)
	}
	refuse := func(phase string) error {
		if off.Refuse == phase {
			reason := fmt.Sprintf("destination %s refuses (injected at %s)", h.Name, phase)
			c.Abort(reason)
			return errors.New(reason)
		}
		return nil
	}
	if err := refuse(PhasePrepare); err != nil {
		return nil, err
	}
	if off.VM.Spec.Name != spec.Name || off.VM.ID != spec.ID || off.VM.Spec.MAC != spec.MAC {
		err := fmt.Errorf("destination: the offer names %s (id %d, %s), its configuration %s (id %d, %s)",
			spec.Name, spec.ID, spec.MAC, off.VM.Spec.Name, off.VM.ID, off.VM.Spec.MAC)
		c.Abort(err.Error())
		return nil, err
	}
	off.VM.Spec.MemSize = spec.MemSize
	in, err = h.AttachVM(off.VM, spec.Driver)
	if err == nil {
		err = in.PrepareIncoming()
	}
	if err != nil {
		c.Abort(err.Error())
		return in, err
	}
	in.Port.Start()
	if err := c.Send(ctx, &migration.Msg{Type: migration.MsgAck, Of: migration.MsgHello}); err != nil {
		return in, err
	}
	if err := migration.NewReceiver(in.Memory()).Run(ctx, c); err != nil {
		return in, err
	}
	vmsg, err := c.Recv(ctx)
	if err != nil {
		return in, err
	}
	if vmsg.Type != migration.MsgVCPU {
		c.Abort(fmt.Sprintf("destination: %v, waiting for the vCPU state", vmsg.Type))
		return in, fmt.Errorf("%w: %v, waiting for VCPU", migration.ErrUnexpected, vmsg.Type)
	}
	vcpu, err := migration.DecodeVCPU(vmsg.Envelope)
	if err != nil {
		c.Abort("destination: " + err.Error())
		return in, err
	}
	dm, err := c.Recv(ctx)
	if err != nil {
		return in, err
	}
	if dm.Type != migration.MsgDeviceState {
		c.Abort(fmt.Sprintf("destination: %v, waiting for the device state", dm.Type))
		return in, fmt.Errorf("%w: %v, waiting for DeviceState", migration.ErrUnexpected, dm.Type)
	}
	st, err := migration.DecodeDeviceState(dm.Envelope)
	if err == nil {
		err = st.Validate(in.Memory().Size())
	}
	if err != nil {
		c.Abort("destination: device state: " + err.Error())
		return in, err
	}
	if err := refuse(PhaseResume); err != nil {
		return in, err
	}
	if err := c.Send(ctx, &migration.Msg{Type: migration.MsgReady}); err != nil {
		return in, err
	}
	cm, recvErr := c.Recv(ctx)
	if recvErr == nil && cm.Type != migration.MsgCommit {
		return in, fmt.Errorf("%w: %v, waiting for Commit", migration.ErrUnexpected, cm.Type)
	}
	if err := ctx.Err(); err != nil {
		return in, err // a host going away commits nothing
	}
	// The commit point: the FI gives the vEth to whoever asks first, this
	// claim or the source's revert. With the stream gone, the claim
	// succeeds only if the source rebound the vEth here before it broke.
	if err := fc.ClaimVEth(in.VEth, h.ServerPort, in.Vif); err != nil {
		if recvErr != nil {
			err = errors.Join(recvErr, err)
		}
		return in, fmt.Errorf("lab: destination %s: the vEth is not ours: %w", h.Name, err)
	}
	claimed = true
	// The RARP goes first, queued before the guest runs: its frames then
	// follow it, and it never finds the vNIC's host queue full.
	if err := announce(in); err != nil {
		return in, err
	}
	if err := in.ResumeIncoming(st, vcpu.IRQ); err != nil {
		return in, err
	}
	// The VM runs here. Best effort: the source learns the outcome from
	// the FI too.
	_ = c.Send(ctx, &migration.Msg{Type: migration.MsgAck, Of: migration.MsgCommit})
	// The frames the FI held for it go down to it now; a guest slow to
	// take them (the cable is lossless) makes this wait, not the ack.
	if err := fc.ReleaseVEth(in.VEth); err != nil {
		return in, err
	}
	if _, err := in.SwitchMode(ctx, hypervisor.ModeDirect); err != nil {
		return in, err
	}
	_ = c.Send(ctx, &migration.Msg{Type: migration.MsgDirect})
	return in, nil
}

// openTransport returns the two ends of a migration stream.
func openTransport(ctx context.Context, t Transport) (src, dst net.Conn, err error) {
	switch t {
	case TransportPipe:
		a, b := net.Pipe()
		return a, b, nil
	case TransportTCP:
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, fmt.Errorf("lab: migration listener: %w", err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		acceptErr := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			accepted <- c
		}()
		var d net.Dialer
		s, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return nil, nil, fmt.Errorf("lab: migration connect: %w", err)
		}
		select {
		case c := <-accepted:
			return s, c, nil
		case err := <-acceptErr:
			s.Close()
			return nil, nil, fmt.Errorf("lab: migration accept: %w", err)
		}
	}
	return nil, nil, fmt.Errorf("lab: unknown migration transport %q (pipe, tcp)", t)
}

// settle waits until the frozen VM's vNIC has received every frame the FI
// sent it before the hold (the count barrier) and the FI has received every
// frame the VM queued. Both sides count from the vNIC's claim of the vEth
// (fabric.ClaimVEth): the vNIC from its creation, the FI beyond its base.
// Frames reaching the frozen VM meanwhile are taken off its VEM port (the
// frozen device would make the port wait) and returned, in order.
//
// An FI in another process is reached over a lossy cable (UDP, raw
// Ethernet): a frame the cable dropped never arrives, and waiting for it
// would only keep the VM frozen. There the barrier also ends once the
// counts have not moved for lossyIdle; what is still missing was lost by
// the cable, not by the migration, and is returned as shortfall.
func (vm *VM) settle(ctx context.Context, fc FabricControl, t fabric.HoldTicket) (extra [][]byte, shortfall uint64, err error) {
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	_, local := fc.(LocalFabric)
	var lastArrived, lastIn uint64
	lastMove := time.Now()
	for i := 0; ; i++ {
		extra = append(extra, vm.DrainOutgoing()...)
		st := vm.VNIC.Stats()
		info, err := fc.VEthInfo(vm.VEth)
		if err != nil {
			return extra, 0, err
		}
		sent := t.EgressFrames - info.BaseEgressFrames
		in := info.Counters.IngressFrames - info.BaseIngressFrames
		quiet := st.Handed == st.Arrived && st.BacklogFrames == 0 && st.TxInFlight == 0
		if quiet && st.Arrived >= sent && in >= st.TxFrames {
			return extra, 0, nil
		}
		if st.Arrived != lastArrived || in != lastIn {
			lastArrived, lastIn, lastMove = st.Arrived, in, time.Now()
		}
		if !local && quiet && time.Since(lastMove) >= lossyIdle {
			return extra, sat(sent, st.Arrived) + sat(st.TxFrames, in), nil
		}
		if err := ctx.Err(); err != nil {
			return extra, 0, fmt.Errorf("lab: frames of %s still in flight (vNIC got %d of %d the FI sent; %d queued; FI got %d of %d sent): %w",
				vm.Name(), st.Arrived, sent, st.BacklogFrames, in, st.TxFrames, err)
		}
		if !local && i > 8 {
			// Each look is a request to the FI agent: do not flood it.
			time.Sleep(100 * time.Microsecond)
		} else {
			runtime.Gosched()
		}
	}
}

// lossyIdle is how long the freeze's count barrier waits, over a lossy
// cable, for counts that have stopped moving: far longer than a frame
// takes across a loopback or LAN, far shorter than the guest should stay
// frozen.
const lossyIdle = 200 * time.Millisecond

// sat returns a-b, or 0 if b >= a.
func sat(a, b uint64) uint64 {
	if b >= a {
		return 0
	}
	return a - b
}

// announce queues the RARP with which the destination announces the VM's
// MAC after the move, as vMotion does, on the VM's hypervisor-driven vNIC.
func announce(vm *VM) error {
	b := link.Get()
	b.Len = wire.BuildRARPAnnounce(b.Space(), vm.MAC())
	if vm.VNIC.HostQueue([]*link.Buf{b}) == 0 {
		b.Release()
		return fmt.Errorf("lab: %s: no room in the vNIC's host queue for the RARP announcement", vm.Name())
	}
	return nil
}
