// Package hypervisor is a host's virtualisation layer: it runs VMs (guest
// memory plus a vCPU goroutine running the guest driver and workload) and
// fronts each vNIC's control path (BAR1), while in direct mode the data path
// (BAR0 doorbells, DMA, interrupts) goes straight to the adapter.
//
// Goroutines: each running VM owns one vCPU goroutine, started by Start and
// ended by Stop. VM methods are safe for concurrent use.
package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vem"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// Mode is how a VM's vNIC is carried.
type Mode uint8

// Modes.
const (
	// ModeDirect: the guest drives a dynamic vNIC on the adapter (VM-FEX
	// high-performance mode, VMDirectPath).
	ModeDirect Mode = iota + 1
	// ModeEmulated: the hypervisor's emulated VMXNET3 device carries it.
	ModeEmulated
)

func (m Mode) String() string {
	switch m {
	case ModeDirect:
		return "direct"
	case ModeEmulated:
		return "emulated"
	}
	return "none"
}

// PassthroughNIC is a device the guest can drive directly: a VIC dynamic
// vNIC. The hypervisor sees only its register windows, so it never depends
// on the adapter's implementation.
type PassthroughNIC interface {
	BAR0() vmxnet3.BAR
	BAR1() vmxnet3.BAR
}

// VMConfig describes a VM.
type VMConfig struct {
	Name    string
	ID      uint32 // numeric id carried in probes
	MemSize uint64 // guest memory bytes (page multiple)
	MAC     wire.MAC
	Driver  guest.DriverConfig
	// Workload builds the guest program over the VM's memory; its state
	// must live in that memory.
	Workload func(m *mem.Memory) (guest.Workload, error)
	Clock    guest.Clock
	Logger   *slog.Logger
}

// VM is one virtual machine on a host.
type VM struct {
	cfg  VMConfig
	mem  *mem.Memory
	wl   guest.Workload
	log  *slog.Logger
	vcpu atomic.Pointer[guest.VCPU]

	switchMu sync.Mutex // serialises mode switches and migrations

	mu     sync.Mutex
	direct DirectNIC     // guarded by mu; nil without mode-switch support
	port   *vem.Port     // guarded by mu
	emu    *EmulatedNIC  // guarded by mu
	drv    *guest.Driver // guarded by mu
	ctl    *controlPath  // the guest's BAR1; guarded by mu
	mode   Mode          // guarded by mu
	cancel context.CancelFunc
	done   chan struct{}
	runErr error
}

// Errors.
var (
	ErrNoNIC   = errors.New("hypervisor: VM has no vNIC attached")
	ErrRunning = errors.New("hypervisor: VM already running")
)

// NewVM allocates the VM's memory and builds its workload. It starts
// nothing; attach a vNIC, then Start.
func NewVM(cfg VMConfig) (*VM, error) {
	if cfg.MemSize == 0 {
		cfg.MemSize = 8 << 20
	}
	m, err := mem.New(cfg.MemSize)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: VM %s: %w", cfg.Name, err)
	}
	vm := &VM{cfg: cfg, mem: m}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	vm.log = log.With("component", "hypervisor", "vm", cfg.Name)
	if cfg.Workload != nil {
		wl, err := cfg.Workload(m)
		if err != nil {
			return nil, fmt.Errorf("hypervisor: VM %s workload: %w", cfg.Name, err)
		}
		vm.wl = wl
	}
	return vm, nil
}

// Name returns the VM's name.
func (vm *VM) Name() string { return vm.cfg.Name }

// ID returns the VM's numeric id.
func (vm *VM) ID() uint32 { return vm.cfg.ID }

// MAC returns the VM's vNIC MAC.
func (vm *VM) MAC() wire.MAC { return vm.cfg.MAC }

// Memory returns the guest memory.
func (vm *VM) Memory() *mem.Memory { return vm.mem }

// Workload returns the guest program.
func (vm *VM) Workload() guest.Workload { return vm.wl }

// Interrupt implements vmxnet3.InterruptSink: the VM's interrupt line, as
// wired into the adapter's vNIC (posted interrupts in direct mode).
func (vm *VM) Interrupt(vector int) {
	if c := vm.vcpu.Load(); c != nil {
		c.Interrupt(vector)
	}
}

// Mode returns how the vNIC is carried now.
func (vm *VM) Mode() Mode {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.mode
}

// Driver returns the guest driver (nil before a vNIC is attached).
func (vm *VM) Driver() *guest.Driver {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.drv
}

// AttachDirect gives the VM a dynamic vNIC in direct mode: BAR0 maps the
// adapter's pass-through registers into the guest; BAR1 stays behind the
// hypervisor.
func (vm *VM) AttachDirect(nic PassthroughNIC) error {
	ctl := &controlPath{dev: nic.BAR1()}
	drv, err := guest.NewDriver(vm.mem, nic.BAR0(), ctl, vm.cfg.Driver)
	if err != nil {
		return fmt.Errorf("hypervisor: VM %s: %w", vm.cfg.Name, err)
	}
	vm.mu.Lock()
	vm.drv = drv
	vm.ctl = ctl
	vm.mode = ModeDirect
	vm.mu.Unlock()
	vm.vcpu.Store(guest.NewVCPU(drv, vm.wl, vm.cfg.Clock))
	return nil
}

// Start boots the guest: the driver probes and opens its vNIC, then the
// vCPU runs until Stop.
func (vm *VM) Start() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.drv == nil {
		return ErrNoNIC
	}
	if vm.cancel != nil {
		return ErrRunning
	}
	if !vm.drv.Open() {
		if err := vm.drv.Probe(); err != nil {
			return fmt.Errorf("hypervisor: VM %s: %w", vm.cfg.Name, err)
		}
		if err := vm.drv.Up(); err != nil {
			return fmt.Errorf("hypervisor: VM %s: %w", vm.cfg.Name, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	vm.cancel = cancel
	vm.done = make(chan struct{})
	vcpu := vm.vcpu.Load()
	go func(done chan struct{}) {
		defer close(done)
		err := vcpu.Run(ctx)
		vm.mu.Lock()
		vm.runErr = err
		vm.mu.Unlock()
	}(vm.done)
	vm.log.Info("VM started", "mode", vm.mode.String())
	return nil
}

// Stop ends the vCPU and waits for it. The device stays as it is.
func (vm *VM) Stop() error {
	vm.mu.Lock()
	cancel, done := vm.cancel, vm.done
	vm.cancel = nil
	vm.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	<-done
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.runErr
}

// ControlAccesses returns how many BAR1 reads and writes the guest made
// through the hypervisor.
func (vm *VM) ControlAccesses() (reads, writes uint64) {
	vm.mu.Lock()
	c := vm.ctl
	vm.mu.Unlock()
	if c == nil {
		return 0, 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads, c.writes
}

// VCPU returns the VM's vCPU.
func (vm *VM) VCPU() *guest.VCPU { return vm.vcpu.Load() }

// controlPath fronts the device's BAR1 for the guest: every control-path
// access (commands, MAC, filters, version handshake) passes through the
// hypervisor, in both modes, as in VMware's uniform passthrough. It counts
// the accesses; the mode switch re-points dev.
type controlPath struct {
	mu     sync.Mutex
	dev    vmxnet3.BAR
	reads  uint64
	writes uint64
}

func (c *controlPath) Read32(off uint32) uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	return c.dev.Read32(off)
}

func (c *controlPath) Write32(off uint32, v uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	c.dev.Write32(off, v)
}
