package lab

// Live migration of a VM between two hosts of the lab, over an in-process
// byte stream (net.Pipe) carrying the migration protocol. Phases, as the
// report names them:
//
//	vic_to_emulated  the vNIC moves, live, onto the source's emulated device
//	precopy          memory rounds over the dirty log while the VM runs
//	freeze           the device, then the vCPU stop; the FI holds the vEth's
//	                 frames; every frame the FI sent the source has arrived
//	                 (count barrier) and every frame the VM queued has
//	                 reached the FI
//	stop_and_copy    the last dirty pages, then the device and vCPU state
//	resume           the FI rebinds the vEth to the destination (the commit
//	                 point), the destination restores and runs the VM, the
//	                 FI releases the held frames; a RARP announces the MAC
//	emulated_to_vic  the vNIC moves, live, onto the destination's adapter
//
// Before the commit point any failure rolls back: the FI releases the hold
// to the unchanged (source) binding, the VM thaws on the source and returns
// to the direct path, and the destination's VM and vNIC are removed.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
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
	TotalMs          float64          `json:"total_ms"`
	DowntimeMs       float64          `json:"downtime_ms"` // the VM was frozen this long
	PrecopyRounds    int              `json:"precopy_rounds"`
	BytesTransferred uint64           `json:"bytes_transferred"`
	Phases           []MigrationPhase `json:"phases"`
}

// settleTimeout bounds the wait for frames in flight at the freeze: they
// are on lossless in-memory cables, so a longer wait means a stuck fabric.
const settleTimeout = 10 * time.Second

// ErrSameHost is returned for a migration to the host the VM runs on.
var ErrSameHost = errors.New("lab: the VM already runs on that host")

// Migrate moves the VM named name to host to, live.
func (l *Lab) Migrate(ctx context.Context, name, to string) (MigrationReport, error) {
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
		return MigrationReport{}, fmt.Errorf("lab: no VM %q", name)
	case dst == nil:
		return MigrationReport{}, fmt.Errorf("lab: no host %q", to)
	case vm.Host == dst:
		return MigrationReport{}, fmt.Errorf("%w: %s on %s", ErrSameHost, name, to)
	}
	rep := MigrationReport{VM: name, From: vm.Host.Name, To: dst.Name}
	t0 := time.Now()
	phase := func(n string, start time.Time) {
		rep.Phases = append(rep.Phases, MigrationPhase{Name: n, StartUs: start.Sub(t0).Microseconds(), EndUs: time.Since(t0).Microseconds()})
	}

	// vic_to_emulated
	ps := time.Now()
	if _, err := vm.SwitchMode(ctx, hypervisor.ModeEmulated); err != nil {
		return rep, err
	}
	phase("vic_to_emulated", ps)

	// The destination VM: memory, devices, a hypervisor-driven vNIC.
	in, err := l.attachVM(dst, vm.spec, vm.ID(), vm.peers)
	if err != nil {
		_, _ = vm.SwitchMode(ctx, hypervisor.ModeDirect)
		return rep, err
	}
	abortDst := func() {
		_ = in.Stop()
		in.Port.Close()
		_ = dst.Adapter.DeleteVNIC(in.Vif)
	}
	if err := in.PrepareIncoming(); err != nil {
		abortDst()
		_, _ = vm.SwitchMode(ctx, hypervisor.ModeDirect)
		return rep, err
	}
	in.Port.Start()

	a, b := net.Pipe()
	src := migration.NewConn(a, migration.ConnConfig{})
	dc := migration.NewConn(b, migration.ConnConfig{})
	defer src.Close()
	defer dc.Close()
	recvDone := make(chan error, 1)
	go func() {
		spec, err := migration.Accept(ctx, dc)
		if err == nil && spec.MemSize != in.Memory().Size() {
			err = fmt.Errorf("destination: memory %d, want %d", in.Memory().Size(), spec.MemSize)
			dc.Abort(err.Error())
		}
		if err == nil {
			err = dc.Send(ctx, &migration.Msg{Type: migration.MsgAck, Of: migration.MsgHello})
		}
		if err == nil {
			err = migration.NewReceiver(in.Memory()).Run(ctx, dc)
		}
		recvDone <- err
	}()

	var extra [][]byte // frames taken off the frozen VM's VEM port
	rollback := func(irq uint32, frozen bool, cause error) (MigrationReport, error) {
		if frozen {
			// Frames taken off the port go back to the device, in order.
			_ = vm.Emulated().Device().AddPending(0, extra)
			_ = l.FI.ReleaseVEth(vm.VEth)
			vm.ThawOutgoing(irq)
		}
		src.Close()
		abortDst()
		if _, err := vm.SwitchMode(ctx, hypervisor.ModeDirect); err != nil {
			cause = errors.Join(cause, err)
		}
		return rep, fmt.Errorf("lab: migration of %s to %s rolled back: %w", name, to, cause)
	}

	// precopy
	ps = time.Now()
	spec := migration.VMSpec{Name: name, ID: vm.ID(), MemSize: vm.Memory().Size(), MAC: vm.MAC(), Driver: vm.Driver().Config()}
	if err := migration.Offer(ctx, src, spec); err != nil {
		return rollback(0, false, err)
	}
	sender := migration.NewSender(vm.Memory(), migration.SenderConfig{})
	if _, err := sender.Precopy(ctx, src); err != nil {
		return rollback(0, false, err)
	}
	phase("precopy", ps)

	// freeze
	ps = time.Now()
	irq, err := vm.FreezeOutgoing(ctx)
	if err != nil {
		return rollback(0, false, err)
	}
	frozeAt := time.Now()
	ticket, err := l.FI.HoldVEth(vm.VEth)
	if err != nil {
		return rollback(irq, true, err)
	}
	ingressAtMove, extra, err := vm.settle(ctx, l.FI, ticket)
	if err != nil {
		return rollback(irq, true, err)
	}
	phase("freeze", ps)

	// stop_and_copy
	ps = time.Now()
	st, err := vm.SaveOutgoing(extra)
	if err != nil {
		return rollback(irq, true, err)
	}
	if err := sender.StopAndCopy(ctx, src); err != nil {
		return rollback(irq, true, err)
	}
	if err := <-recvDone; err != nil {
		return rollback(irq, true, err)
	}
	env, err := migration.EncodeDeviceState(&st)
	if err != nil {
		return rollback(irq, true, err)
	}
	st2, err := migration.DecodeDeviceState(env)
	if err != nil {
		return rollback(irq, true, err)
	}
	phase("stop_and_copy", ps)

	// resume: the commit point is the FI's rebinding of the vEth.
	ps = time.Now()
	if err := st2.Validate(in.Memory().Size()); err != nil {
		return rollback(irq, true, err)
	}
	// The commit point. The vEth is bound to the destination before the VM
	// runs there, so the FI knows the new (port, vif) of its first frame.
	if err := l.FI.RebindVEth(vm.VEth, dst.ServerPort, in.Vif); err != nil {
		return rollback(irq, true, err)
	}
	// Committed: from here the VM lives on the destination.
	if err := in.ResumeIncoming(st2, irq); err != nil {
		return rep, fmt.Errorf("lab: %s committed to %s but does not resume there: %w", name, to, err)
	}
	resumedAt := time.Now()
	if err := l.FI.ReleaseVEth(vm.VEth); err != nil {
		return rep, err
	}
	announce(in)
	phase("resume", ps)
	rep.DowntimeMs = float64(resumedAt.Sub(frozeAt).Microseconds()) / 1e3

	// The source's copy goes away.
	old := *vm
	_ = old.VM.Stop()
	old.Port.Close()
	_ = old.Host.Adapter.DeleteVNIC(old.Vif)
	vm.VM, vm.Host, vm.Vif, vm.VNIC, vm.Port, vm.Traffic = in.VM, dst, in.Vif, in.VNIC, in.Port, in.Traffic
	vm.egressBase, vm.ingressBase = ticket.EgressFrames, ingressAtMove

	// emulated_to_vic
	ps = time.Now()
	if _, err := vm.SwitchMode(ctx, hypervisor.ModeDirect); err != nil {
		return rep, err
	}
	phase("emulated_to_vic", ps)
	r := sender.Report()
	rep.PrecopyRounds = len(r.Rounds)
	rep.BytesTransferred = src.Sent() + uint64(len(env))
	rep.TotalMs = float64(time.Since(t0).Microseconds()) / 1e3
	return rep, nil
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

// announce sends the RARP with which the destination announces the VM's
// MAC after the move, as vMotion does, through the VM's vNIC.
func announce(vm *VM) {
	b := link.Get()
	n := wire.BuildRARPAnnounce(b.Space(), vm.MAC())
	b.Len = n
	if vm.VNIC.HostQueue([]*link.Buf{b}) == 0 {
		b.Release()
	}
}
