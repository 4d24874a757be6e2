package lab

import (
	"fmt"
	"log/slog"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vem"
	"github.com/vmfex/vmfex/vic"
)

// Host is a server: a VIC adapter cabled to an FI server port and the VEM
// of its hypervisor. A lab has several in one process; a host agent
// (package agent) runs one.
type Host struct {
	Name       string
	ServerPort string
	Adapter    *vic.Adapter
	VEM        *vem.Switch
	log        *slog.Logger
}

// NewHost builds a host whose adapter's uplink is up (the host's end of
// the cable to the FI's server port serverPort). Start its adapter with
// h.Adapter.Start.
func NewHost(name, serverPort string, up link.Port, log *slog.Logger) *Host {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := vic.New(vic.Config{Name: name + "/adapter", Uplink: up, Logger: log})
	return &Host{Name: name, ServerPort: serverPort, Adapter: a, VEM: vem.New(name, log), log: log}
}

// VifProgrammer returns what an FI in the same process uses to program the
// host's adapter.
func (h *Host) VifProgrammer() fabric.VifProgrammer { return vifProgrammer{h.Adapter} }

// VMConfig is what a host needs to build a VM with its fabric identity and
// probe workload. It travels with the VM in a migration's offer, as a
// VM's configuration file travels with it in a vMotion, so that the
// destination builds the same VM.
type VMConfig struct {
	Spec    VMSpec              `json:"spec"`
	ID      uint32              `json:"id"`   // VM id, carried in every probe
	VEth    uint32              `json:"veth"` // the VM's vEth on the FI
	Vif     uint16              `json:"vif"`  // its vNIC's vif, on any host's adapter
	VLAN    uint16              `json:"vlan"`
	Peers   []guest.TrafficPeer `json:"peers"`
	Traffic TrafficSpec         `json:"traffic"`
}

// Guest memory map of a lab VM: the driver's region at 1 MiB, workload
// state at 64 KiB (below it).
const (
	trafficBase   = 64 << 10
	responderBase = 512 << 10
	driverBase    = 1 << 20
)

// DefaultVMMemory is a VM's memory when its spec gives none.
const DefaultVMMemory = 8 << 20

// AttachVM builds the VM of c on h — guest memory, workload, the dynamic
// vNIC c.Vif of h's adapter and a VEM port — without a vEth: a new VM gets
// one from the FI, a migrating VM keeps its own. Nothing runs until the
// VM's port and vCPU are started.
func (h *Host) AttachVM(c VMConfig, driver guest.DriverConfig) (*VM, error) {
	var traffic *guest.Traffic
	vs := c.Spec
	driver.Base = driverBase
	memSize := vs.MemSize
	if memSize == 0 {
		memSize = DefaultVMMemory
	}
	frameLen := c.Traffic.FrameLen
	if frameLen == 0 {
		frameLen = 64
	}
	hv, err := hypervisor.NewVM(hypervisor.VMConfig{
		Name: vs.Name, ID: c.ID, MemSize: memSize, MAC: vs.MAC, Driver: driver, Logger: h.log,
		Workload: func(m *mem.Memory) (guest.Workload, error) {
			if vs.Guest != "" && vs.Guest != GuestProbe {
				return guestWorkload(m, c, driver)
			}
			t, err := guest.NewTraffic(m, guest.TrafficConfig{
				Base: trafficBase, Size: guest.TrafficStateSize(len(c.Peers)),
				VM: c.ID, MAC: vs.MAC, IP: vs.IP, Peers: c.Peers,
				FrameLen: frameLen, Rate: c.Traffic.Rate, Stopped: true,
			})
			if err != nil {
				return nil, err
			}
			traffic = t
			r, err := guest.NewResponder(m, guest.ResponderConfig{Base: responderBase, MAC: vs.MAC, IP: vs.IP})
			if err != nil {
				return nil, err
			}
			return guest.NewMulti(t, r), nil
		},
	})
	if err != nil {
		return nil, err
	}
	wireGuest(hv)
	vnic, err := h.Adapter.CreateVNIC(c.Vif, vs.MAC, hv.Memory(), hv)
	if err != nil {
		return nil, err
	}
	// The VLAN of the vEth's profile, as the FI programs it in one
	// process; an FI in another process leaves it to the host.
	h.Adapter.SetVifVLAN(c.Vif, c.VLAN)
	port := h.VEM.AddPort(fmt.Sprintf("%s/eth0@%s", vs.Name, h.Name), vnic)
	if err := hv.AttachVNIC(vnic, port); err != nil {
		port.Close()
		_ = h.Adapter.DeleteVNIC(c.Vif)
		return nil, err
	}
	return &VM{VM: hv, Host: h, VEth: c.VEth, Vif: c.Vif, Profile: vs.Profile, VLAN: c.VLAN, IP: vs.IP,
		Traffic: traffic, VNIC: vnic, Port: port, cfg: c}, nil
}

// Config returns the configuration the VM was built from.
func (vm *VM) Config() VMConfig { return vm.cfg }

// teardown removes a VM from its host: its vCPU, VEM port and dynamic
// vNIC (a destination's VM after a failed migration, a source's after a
// successful one).
func (vm *VM) teardown() {
	_ = vm.Stop()
	vm.Port.Close()
	_ = vm.Host.Adapter.DeleteVNIC(vm.Vif)
}

// Teardown removes the VM from its host (see teardown).
func (vm *VM) Teardown() { vm.teardown() }
