package hypervisor

// The hypervisor's side of a live migration (the protocol is in package
// migration; the fabric steps are the caller's). On the source the VM runs
// on its emulated device; FreezeOutgoing stops it, SaveOutgoing exports the
// device, and either the destination resumes it (ResumeIncoming) or the
// source takes it back (ThawOutgoing). A destination VM is prepared with its
// vNIC driven by the hypervisor from the start (PrepareIncoming).

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmfex/vmfex/vmxnet3"
)

// ErrNotEmulated is returned when a migration step needs the emulated device.
var ErrNotEmulated = errors.New("hypervisor: the VM must run on its emulated device to migrate")

// FreezeOutgoing freezes the emulated device, then the vCPU (in that order,
// see SwitchMode), and returns the vCPU's interrupt bits.
func (vm *VM) FreezeOutgoing(ctx context.Context) (uint32, error) {
	vm.mu.Lock()
	emu, mode := vm.emu, vm.mode
	vm.mu.Unlock()
	if emu == nil || mode != ModeEmulated {
		return 0, ErrNotEmulated
	}
	emu.dev.Freeze()
	irq, err := vm.vcpu.Load().Pause(ctx)
	if err != nil {
		emu.dev.Thaw()
		emu.kickTx()
		return 0, fmt.Errorf("hypervisor: VM %s: freeze: %w", vm.cfg.Name, err)
	}
	return irq, nil
}

// DrainOutgoing detaches the VEM port from the frozen emulated device and
// returns (copies of) the frames queued on it, oldest first, so that the
// adapter can keep handing the vif's frames over while the FI's frames in
// flight arrive; they travel behind the device's held frames.
func (vm *VM) DrainOutgoing() [][]byte {
	vm.mu.Lock()
	port := vm.port
	vm.mu.Unlock()
	return port.DetachGuest()
}

// SaveOutgoing returns the frozen emulated device's state with extra (the
// frames DrainOutgoing returned, in order) and the frames still queued on
// the VEM port appended behind those it held.
func (vm *VM) SaveOutgoing(extra [][]byte) (vmxnet3.State, error) {
	vm.mu.Lock()
	emu, port := vm.emu, vm.port
	vm.mu.Unlock()
	extra = append(extra, port.DetachGuest()...)
	if err := emu.dev.AddPending(0, extra); err != nil {
		port.AttachGuest(emu)
		return vmxnet3.State{}, err
	}
	return emu.dev.Save()
}

// ThawOutgoing gives the VM back to its own host after a migration that did
// not commit: the device runs again and the vCPU resumes.
func (vm *VM) ThawOutgoing(irq uint32) {
	vm.mu.Lock()
	emu, port := vm.emu, vm.port
	vm.mu.Unlock()
	port.AttachGuest(emu)
	emu.dev.Thaw()
	emu.kickTx()
	vm.vcpu.Load().Resume(irq)
}

// PrepareIncoming makes a destination VM's vNIC hypervisor-driven before
// any state arrives, so the vif's frames reach the VEM port (and the
// emulated device, once restored).
func (vm *VM) PrepareIncoming() error {
	vm.mu.Lock()
	nic, port := vm.direct, vm.port
	vm.mu.Unlock()
	if nic == nil || port == nil {
		return ErrNoSwitch
	}
	return nic.DetachToHost(port, func() error { return nil }, func(vmxnet3.State) error { return nil })
}

// ResumeIncoming loads the migrated device state into the destination's
// emulated device, points the guest at it and starts the vCPU with the
// source's interrupt bits. Guest memory must already hold the VM.
func (vm *VM) ResumeIncoming(st vmxnet3.State, irq uint32) error {
	vm.mu.Lock()
	emu, port, drv, ctl := vm.emu, vm.port, vm.drv, vm.ctl
	vm.mu.Unlock()
	if emu == nil {
		return ErrNoSwitch
	}
	if err := emu.dev.Restore(st); err != nil {
		return err
	}
	port.AttachGuest(emu)
	drv.Rebind(emu.BAR0(), ctl)
	ctl.repoint(emu.BAR1())
	vm.mu.Lock()
	vm.mode = ModeEmulated
	vm.mu.Unlock()
	emu.dev.Thaw()
	emu.kickTx()
	if err := vm.Start(); err != nil {
		return err
	}
	for v := 0; v < 32; v++ {
		if irq&(1<<v) != 0 {
			vm.Interrupt(v)
		}
	}
	return nil
}
