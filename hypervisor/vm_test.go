package hypervisor

import (
	"errors"
	"testing"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

func TestNewVMValidates(t *testing.T) {
	if _, err := NewVM(VMConfig{Name: "bad", MemSize: 1000}); !errors.Is(err, mem.ErrSize) {
		t.Fatalf("odd memory size: %v", err)
	}
	wlErr := errors.New("no program")
	if _, err := NewVM(VMConfig{Name: "bad", Workload: func(*mem.Memory) (guest.Workload, error) { return nil, wlErr }}); !errors.Is(err, wlErr) {
		t.Fatalf("workload error not returned: %v", err)
	}
	vm, err := NewVM(VMConfig{Name: "vm1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(); !errors.Is(err, ErrNoNIC) {
		t.Fatalf("Start without a vNIC: %v", err)
	}
	if err := vm.Stop(); err != nil {
		t.Fatalf("Stop of a VM never started: %v", err)
	}
}

type nic struct{ d *vmxnet3.Device }

func (n nic) BAR0() vmxnet3.BAR { return n.d.BAR0() }
func (n nic) BAR1() vmxnet3.BAR { return n.d.BAR1() }

// TestControlPathGoesThroughHypervisor checks that the guest's BAR1 accesses
// pass through the hypervisor's control path while BAR0 is the device's own.
func TestControlPathGoesThroughHypervisor(t *testing.T) {
	cfg := guest.DefaultDriverConfig()
	cfg.Base = 1 << 20
	vm, err := NewVM(VMConfig{Name: "vm1", Driver: cfg, MAC: wire.MAC{2, 0, 0, 0, 0, 1}})
	if err != nil {
		t.Fatal(err)
	}
	dev := vmxnet3.New(vm.Memory(), vm, vm.MAC(), nil)
	if err := vm.AttachDirect(nic{dev}); err != nil {
		t.Fatal(err)
	}
	if vm.Mode() != ModeDirect || vm.Mode().String() != "direct" {
		t.Fatalf("mode %v", vm.Mode())
	}
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Start: %v", err)
	}
	if err := vm.Stop(); err != nil {
		t.Fatal(err)
	}
	if !dev.Active() {
		t.Fatal("the driver's ACTIVATE did not reach the device")
	}
	r, w := vm.ControlAccesses()
	if r == 0 || w < 5 {
		t.Fatalf("control path saw %d reads, %d writes; the handshake and ACTIVATE must pass through it", r, w)
	}
}
