package hypervisor

// Live mode switch between the adapter's dynamic vNIC (direct) and the
// hypervisor's emulated device, both ways, at any moment (spec §7.4):
//
//	1. freeze the vCPU at a step boundary: no doorbell, IMR or command
//	   write can happen from here on
//	2. quiesce the source device: a tx batch in flight finishes (sent and
//	   completed), rx stops at a frame boundary; frames it holds for the
//	   guest stay in its state, in order
//	3. export its state (vmxnet3.State) and import it into the other device
//	   without the ACTIVATE path; frames still on their way to the old
//	   side (the VEM port's queue) are appended behind the held ones
//	4. re-point the frame path (the adapter hands the vif's frames to the
//	   VEM port, or back to the vNIC's rings), the guest's BAR0 and the
//	   control path
//	5. thaw the new device: held frames are written first, every unmasked
//	   vector is raised once, the tx ring is scanned once
//	6. resume the vCPU with the interrupt bits it had at the freeze
//
// Counters live in the state and continue; the FI sees the same vEth.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vem"
	"github.com/vmfex/vmfex/vmxnet3"
)

// DirectNIC is a VIC dynamic vNIC as the hypervisor manages it for mode
// switches. vic.VNIC implements it.
type DirectNIC interface {
	PassthroughNIC
	// DetachToHost freezes the vNIC's device (the guest still running),
	// calls pause, and hands the device's state to load. If both succeed,
	// the vif's frames go to host from then on and the vNIC's device is
	// discarded; if either fails, the vNIC runs on as before.
	DetachToHost(host link.Sink, pause func() error, load func(vmxnet3.State) error) error
	// AttachFromHost holds the vif's frames, takes the state (and the
	// frames still queued on the host side) from save, loads them into
	// the vNIC's device and runs it direct again.
	AttachFromHost(save func() (vmxnet3.State, [][]byte, error)) error
	// Kick makes the adapter scan the vNIC's tx ring and deliver the frames
	// its device holds, as after a hand-off.
	Kick()
}

// ErrNoSwitch is returned when a VM's vNIC cannot change mode.
var ErrNoSwitch = errors.New("hypervisor: vNIC is not attached for mode switches (no VEM port)")

// AttachVNIC gives the VM a dynamic vNIC in direct mode with a VEM port
// for the emulated path, so that it can switch modes and migrate.
func (vm *VM) AttachVNIC(nic DirectNIC, port *vem.Port) error {
	if err := vm.AttachDirect(nic); err != nil {
		return err
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	vm.direct = nic
	vm.port = port
	vm.emu = NewEmulatedNIC(vm.mem, vm, vm.cfg.MAC, port)
	return nil
}

// Emulated returns the VM's emulated device (nil without a VEM port).
func (vm *VM) Emulated() *EmulatedNIC {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.emu
}

// SwitchTiming is how long a mode switch took, phase by phase.
type SwitchTiming struct {
	From, To Mode
	Freeze   time.Duration // until the vCPU was parked
	Handoff  time.Duration // quiesce, export, import, re-point
	Resume   time.Duration // thaw, kick, vCPU running again
	Total    time.Duration // Freeze + Handoff + Resume: the guest's pause
	Held     int           // frames handed over not yet in guest memory
}

// SwitchMode moves the VM's vNIC to mode to, live. Switching to the mode it
// is in does nothing.
func (vm *VM) SwitchMode(ctx context.Context, to Mode) (SwitchTiming, error) {
	vm.switchMu.Lock()
	defer vm.switchMu.Unlock()
	vm.mu.Lock()
	from, nic, port, emu, drv, ctl := vm.mode, vm.direct, vm.port, vm.emu, vm.drv, vm.ctl
	vm.mu.Unlock()
	t := SwitchTiming{From: from, To: to}
	if nic == nil || port == nil || emu == nil {
		return t, ErrNoSwitch
	}
	if to != ModeDirect && to != ModeEmulated {
		return t, fmt.Errorf("hypervisor: unknown mode %d", to)
	}
	if from == to {
		return t, nil
	}
	vcpu := vm.vcpu.Load()
	t0 := time.Now()
	var t1 time.Time
	var irq uint32
	paused := false
	// The source device is frozen before the vCPU: a frozen device holds
	// the frames it is sent, so the fabric never waits on a guest that the
	// switch has stopped (every cable is lossless).
	pause := func() error {
		var err error
		irq, err = vcpu.Pause(ctx)
		if err != nil {
			return fmt.Errorf("freeze: %w", err)
		}
		paused = true
		t1 = time.Now()
		t.Freeze = t1.Sub(t0)
		return nil
	}
	var err error
	switch to {
	case ModeEmulated:
		err = nic.DetachToHost(port, pause, func(st vmxnet3.State) error {
			if err := emu.dev.Restore(st); err != nil {
				return err
			}
			for _, q := range st.RxQueues {
				t.Held += len(q.Pending)
			}
			return nil
		})
		if err == nil {
			port.AttachGuest(emu)
			drv.Rebind(emu.BAR0(), ctl)
			ctl.repoint(emu.BAR1())
		}
	case ModeDirect:
		// Frames the emulated device already queued on the vNIC stay
		// there and leave before any the adapter takes from the ring.
		emu.dev.Freeze()
		if err = pause(); err != nil {
			emu.dev.Thaw()
			emu.kickTx() // doorbells the guest rang during the freeze
			break
		}
		err = nic.AttachFromHost(func() (vmxnet3.State, [][]byte, error) {
			extra := port.DetachGuest()
			st, err := emu.dev.Save()
			if err != nil {
				// Give the frames back to the device that keeps running.
				_ = emu.dev.AddPending(0, extra)
				port.AttachGuest(emu)
				emu.dev.Thaw()
				emu.kickTx()
				return st, nil, err
			}
			t.Held = len(extra)
			for _, q := range st.RxQueues {
				t.Held += len(q.Pending)
			}
			return st, extra, nil
		})
		if err == nil {
			emu.dev.Discard()
			drv.Rebind(nic.BAR0(), ctl)
			ctl.repoint(nic.BAR1())
		}
	}
	if t1.IsZero() {
		t1 = time.Now()
	}
	t2 := time.Now()
	t.Handoff = t2.Sub(t1)
	if err != nil {
		if paused {
			vcpu.Resume(irq)
		}
		return t, fmt.Errorf("hypervisor: VM %s: switch to %s: %w", vm.cfg.Name, to, err)
	}
	if to == ModeEmulated {
		emu.dev.Thaw()
		emu.kickTx()
	} else {
		nic.Kick()
	}
	vm.mu.Lock()
	vm.mode = to
	vm.mu.Unlock()
	vcpu.Resume(irq)
	t.Resume = time.Since(t2)
	t.Total = time.Since(t0)
	vm.log.Info("vNIC mode switched", "from", from.String(), "to", to.String(), "pause", t.Total, "held", t.Held)
	return t, nil
}

// repoint makes the control path reach another device's BAR1.
func (c *controlPath) repoint(dev vmxnet3.BAR) {
	c.mu.Lock()
	c.dev = dev
	c.mu.Unlock()
}
