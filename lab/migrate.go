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
//	                 destination runs the VM (the commit point) and acks;
//	                 the FI releases the held frames; a RARP, queued as the
//	                 VM resumes, announces its MAC
//	emulated_to_vic  the vNIC moves, live, onto the destination's adapter
//
// Before the commit point any failure — the destination refuses, the
// stream drops, the destination disappears, a timeout — rolls back: the FI
// releases the hold to the unchanged (source) binding, the VM thaws on the
// source and returns to the direct path, and the destination's VM and vNIC
// are removed; a vEth already rebound to the destination returns to the
// source. The FI's binding decides a stream lost after Ready: the
// destination runs the VM if the vEth is bound to it, and the source knows
// whether it did before it releases anything.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
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
)

// Migrate moves the VM named name to host to, live, over an in-process pipe.
func (l *Lab) Migrate(ctx context.Context, name, to string) (MigrationReport, error) {
	return l.MigrateWith(ctx, name, to, MigrateOptions{})
}

// MigrateWith moves the VM named name to host to, live, as o says.
func (l *Lab) MigrateWith(ctx context.Context, name, to string, o MigrateOptions) (MigrationReport, error) {
	vm, dst, err := l.migrationEnds(name, to)
	if err != nil {
		return MigrationReport{}, err
	}
	if o.Transport == "" {
		o.Transport = TransportPipe
	}
	if o.Fault == FaultRefuse && o.FaultPhase != PhasePrepare && o.FaultPhase != PhaseResume {
		return MigrationReport{}, fmt.Errorf("lab: the destination decides only in %s and %s; it cannot refuse in %q", PhasePrepare, PhaseResume, o.FaultPhase)
	}
	l.migrating.Lock()
	defer l.migrating.Unlock()
	m := &migrationRun{l: l, vm: vm, dst: dst, o: o, t0: time.Now()}
	m.rep = MigrationReport{VM: name, From: vm.Host.Name, To: dst.Name, Transport: o.Transport, StartUnixNs: m.t0.UnixNano()}
	return m.run(ctx)
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

// migrationRun is the source side of one migration and the lab's view of it.
type migrationRun struct {
	l   *Lab
	vm  *VM
	dst *Host
	o   MigrateOptions
	t0  time.Time
	rep MigrationReport

	src         *migration.Conn
	cut         func()           // closes both ends of the transport
	destGone    func()           // the destination host disappears
	destDone    chan destOutcome // the destination's side ends
	destOut     *destOutcome     // received from destDone
	incomingVif atomic.Uint32    // the destination's vNIC, once built
	phaseStart  time.Time
}

type destOutcome struct {
	in  *VM // the VM running on the destination, on success
	err error
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
	vm, l := m.vm, m.l

	// prepare: the stream, the offer, the destination's VM.
	m.phaseStart = time.Now()
	srcEnd, dstEnd, err := openTransport(ctx, m.o.Transport)
	if err != nil {
		return m.rep, err
	}
	m.src = migration.NewConn(srcEnd, migration.ConnConfig{})
	dc := migration.NewConn(dstEnd, migration.ConnConfig{})
	defer m.src.Close()
	dctx, dcancel := context.WithCancel(ctx)
	defer dcancel()
	m.cut = func() { srcEnd.Close(); dstEnd.Close() }
	m.destGone = func() { dcancel(); dstEnd.Close() }
	m.destDone = make(chan destOutcome, 1)
	go func() {
		in, err := m.serveIncoming(dctx, dc)
		dc.Close()
		m.destDone <- destOutcome{in, err}
	}()
	m.begin(PhasePrepare)
	spec := migration.VMSpec{Name: vm.Name(), ID: vm.ID(), MemSize: vm.Memory().Size(), MAC: vm.MAC(), Driver: vm.Driver().Config()}
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
	ticket, err := l.FI.HoldVEth(vm.VEth)
	if err != nil {
		return m.rollback(ctx, irq, true, err)
	}
	ingressAtMove, extra, err := vm.settle(ctx, l.FI, ticket)
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
	// The commit point. The vEth is bound to the destination before the VM
	// runs there, so the FI knows the new (port, vif) of its first frame.
	select {
	case out := <-m.destDone:
		// The destination ended without waiting for Commit: it failed.
		m.destOut = &out
		return m.rollback(ctx, irq, true, fmt.Errorf("destination ended after Ready: %v", out.err))
	default:
	}
	newVif, ok := m.pendingVif()
	if !ok {
		return m.rollback(ctx, irq, true, errors.New("destination has no vNIC"))
	}
	if err := l.FI.RebindVEth(vm.VEth, m.dst.ServerPort, newVif); err != nil {
		return m.rollback(ctx, irq, true, err)
	}
	// Commit tells the destination to run the VM; if the stream fails now,
	// the destination finds the vEth bound to it and runs the VM anyway.
	// The migration is committed once the destination runs the VM; if it
	// never does, the vEth returns to the source.
	commitErr := m.src.Send(rctx, &migration.Msg{Type: migration.MsgCommit})
	if commitErr == nil {
		commitErr = m.src.ExpectAck(rctx, migration.MsgCommit)
	}
	out := m.destination()
	if out.err != nil {
		// The destination never ran the VM (it failed or went away between
		// Ready and Commit): the vEth goes back to the source, still held,
		// and the VM thaws there.
		if err := l.FI.RebindVEth(vm.VEth, vm.Host.ServerPort, vm.Vif); err != nil {
			return m.rep, fmt.Errorf("lab: %s: the destination failed after the rebind and the vEth cannot return to the source: %w", vm.Name(), errors.Join(out.err, err))
		}
		return m.rollback(ctx, irq, true, fmt.Errorf("destination did not resume the VM: %w (stream: %v)", out.err, commitErr))
	}
	in := out.in
	resumedAt := time.Now()
	if err := l.FI.ReleaseVEth(vm.VEth); err != nil {
		return m.rep, err
	}
	m.end(PhaseResume)
	m.rep.DowntimeMs = float64(resumedAt.Sub(frozeAt).Microseconds()) / 1e3

	// The source's copy goes away.
	old := *vm
	_ = old.VM.Stop()
	old.Port.Close()
	_ = old.Host.Adapter.DeleteVNIC(old.Vif)
	l.mu.Lock()
	vm.VM, vm.Host, vm.Vif, vm.VNIC, vm.Port, vm.Traffic = in.VM, m.dst, in.Vif, in.VNIC, in.Port, in.Traffic
	vm.egressBase, vm.ingressBase = ticket.EgressFrames, ingressAtMove
	l.mu.Unlock()

	// emulated_to_vic
	m.begin(PhaseEmulatedToVIC)
	if _, err := vm.SwitchMode(ctx, hypervisor.ModeDirect); err != nil {
		return m.rep, err
	}
	m.end(PhaseEmulatedToVIC)
	r := sender.Report()
	m.rep.PrecopyRounds = len(r.Rounds)
	m.rep.BytesTransferred = m.src.Sent()
	m.rep.TotalMs = float64(time.Since(m.t0).Microseconds()) / 1e3
	return m.rep, nil
}

// rollback returns the VM to its source host after a failure before the
// commit point: the FI's hold ends on the source's binding, the VM thaws
// and goes back to the direct path, and the destination's side ends and
// removes what it built.
func (m *migrationRun) rollback(ctx context.Context, irq uint32, frozen bool, cause error) (MigrationReport, error) {
	vm := m.vm
	// Undoing must not stop half way because the caller gave up.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	m.src.Close()
	m.destGone()    // the destination stops and cleans up
	m.destination() // it removed what it built
	if frozen {
		// The VM first, then the FI: the held frames go down a lossless
		// cable to the VM's adapter, which can take them only once the VM
		// takes frames again.
		vm.ThawOutgoing(irq)
		if err := m.l.FI.ReleaseVEth(vm.VEth); err != nil {
			cause = errors.Join(cause, err)
		}
	}
	if vm.Mode() != hypervisor.ModeDirect {
		if _, err := vm.SwitchMode(ctx, hypervisor.ModeDirect); err != nil {
			cause = errors.Join(cause, err)
		}
	}
	return m.rep, fmt.Errorf("%w: %s to %s: %w", ErrRolledBack, vm.Name(), m.dst.Name, cause)
}

// destination waits for the destination's side to end and returns how.
func (m *migrationRun) destination() destOutcome {
	if m.destOut == nil {
		out := <-m.destDone
		m.destOut = &out
	}
	return *m.destOut
}

// pendingVif returns the vif of the vNIC the destination built.
func (m *migrationRun) pendingVif() (uint16, bool) {
	v := m.incomingVif.Load()
	return uint16(v), v != 0
}

// serveIncoming is the destination host's side: it accepts the offer,
// builds the VM, receives memory and state, says Ready, and on Commit (or,
// with the stream gone, on finding the vEth bound to it) runs the VM. On
// failure it removes what it built and returns the error.
func (m *migrationRun) serveIncoming(ctx context.Context, c *migration.Conn) (in *VM, err error) {
	defer func() {
		if err != nil && in != nil {
			in.teardown()
			in = nil
		}
	}()
	refuse := func(phase string) error {
		// The destination decides at its own step, whatever the source is
		// doing then.
		if m.o.Fault == FaultRefuse && m.o.FaultPhase == phase {
			reason := fmt.Sprintf("destination %s refuses (injected at %s)", m.dst.Name, phase)
			c.Abort(reason)
			return errors.New(reason)
		}
		return nil
	}
	spec, err := migration.Accept(ctx, c)
	if err != nil {
		return nil, err
	}
	if err := refuse(PhasePrepare); err != nil {
		return nil, err
	}
	in, err = m.l.attachVM(m.dst, m.vm.spec, spec.ID, m.vm.peers)
	if err == nil && (spec.MemSize != in.Memory().Size() || spec.MAC != in.MAC()) {
		err = fmt.Errorf("destination: VM %s has %d bytes and MAC %s here, the source offers %d and %s",
			spec.Name, in.Memory().Size(), in.MAC(), spec.MemSize, spec.MAC)
	}
	if err == nil {
		err = in.PrepareIncoming()
	}
	if err != nil {
		c.Abort(err.Error())
		return in, err
	}
	in.Port.Start()
	m.incomingVif.Store(uint32(in.Vif))
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
	cm, err := c.Recv(ctx)
	switch {
	case err == nil && cm.Type == migration.MsgCommit:
	case ctx.Err() == nil && m.boundHere(in):
		// The stream failed after Ready, but the FI moved the vEth here:
		// the source committed. (A host that is going away does not.)
	case err == nil:
		return in, fmt.Errorf("%w: %v, waiting for Commit", migration.ErrUnexpected, cm.Type)
	default:
		return in, err
	}
	// The RARP goes first, queued before the guest runs: its frames then
	// follow it, and it never finds the vNIC's host queue full.
	if err := announce(in); err != nil {
		return in, err
	}
	if err := in.ResumeIncoming(st, vcpu.IRQ); err != nil {
		return in, err
	}
	// Best effort: the source learns from the FI and the Ack alike.
	_ = c.Send(ctx, &migration.Msg{Type: migration.MsgAck, Of: migration.MsgCommit})
	return in, nil
}

// boundHere reports whether the FI binds the migrating VM's vEth to in.
func (m *migrationRun) boundHere(in *VM) bool {
	info, ok := m.l.FI.VEth(m.vm.VEth)
	return ok && info.ServerPort == m.dst.ServerPort && info.VIF == in.Vif
}

// teardown removes a VM that never ran here (a destination's, after a
// failed migration): its vCPU, VEM port and dynamic vNIC.
func (vm *VM) teardown() {
	_ = vm.Stop()
	vm.Port.Close()
	_ = vm.Host.Adapter.DeleteVNIC(vm.Vif)
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
// frame the VM queued. It returns the vEth's ingress count then: every
// frame the FI will count from here on comes from the destination's vNIC.
// Frames reaching the frozen VM meanwhile are taken off its VEM port (the
// frozen device would make the port wait) and returned, in order.
func (vm *VM) settle(ctx context.Context, fi *fabric.FI, t fabric.HoldTicket) (uint64, [][]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	var extra [][]byte
	for {
		extra = append(extra, vm.DrainOutgoing()...)
		st := vm.VNIC.Stats()
		in := vm.ingressNow(fi)
		if st.Arrived >= t.EgressFrames-vm.egressBase && st.Handed == st.Arrived &&
			st.BacklogFrames == 0 && st.TxInFlight == 0 && in-vm.ingressBase >= st.TxFrames {
			return in, extra, nil
		}
		if err := ctx.Err(); err != nil {
			return 0, extra, fmt.Errorf("lab: frames of %s still in flight (vNIC got %d of %d the FI sent; %d queued; FI got %d of %d sent): %w",
				vm.Name(), st.Arrived, t.EgressFrames-vm.egressBase, st.BacklogFrames, in-vm.ingressBase, st.TxFrames, err)
		}
		runtime.Gosched()
	}
}

func (vm *VM) ingressNow(fi *fabric.FI) uint64 {
	info, _ := fi.VEth(vm.VEth)
	return info.Counters.IngressFrames
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
