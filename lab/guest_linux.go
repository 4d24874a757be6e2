package lab

// Linux guests in a lab: a VM whose VMSpec.Guest is "linux" runs a real
// Linux network stack (package guest/linuxguest) instead of the probe
// workload: the network namespace named after the VM, with a TAP eth0
// carrying the vNIC's MAC and the VM's IP, in which ping, iperf3 or any
// program runs (`ip netns exec NAME ...`).

import (
	"fmt"
	"io"
	"net/netip"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/linuxguest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/hypervisor"
)

// Guest programs a VM can run (VMSpec.Guest).
const (
	GuestProbe = "probe" // the probe generator and responder ("" too)
	GuestLinux = "linux" // a Linux network namespace on a TAP
)

// LinuxGuestPrefixLen is the prefix length of a Linux guest's address: the
// lab puts each VLAN in one /24 (198.18.VLAN.x in DemoTopology).
const LinuxGuestPrefixLen = 24

// linuxWakeVector is the vCPU vector on which a Linux guest's kernel
// signals that it sent frames: it is not one of the NIC's (0 and 1), as an
// IPI from another CPU is not.
const linuxWakeVector = 2

// guestWorkload builds the program of a VM whose spec names a guest other
// than the probe one, over its memory m.
func guestWorkload(m *mem.Memory, c VMConfig, driver guest.DriverConfig) (guest.Workload, error) {
	vs := c.Spec
	if vs.Guest != GuestLinux {
		return nil, fmt.Errorf("lab: VM %s: unknown guest %q (%q, %q)", vs.Name, vs.Guest, GuestProbe, GuestLinux)
	}
	// The guest reads a frame from its TAP only when its tx ring has room
	// for the longest (a 64 KiB TSO segment).
	if l := driver.Layout(); int(l.TxSize-1)*int(l.TxBufSize) < linuxguest.TxRoomNeeded {
		return nil, fmt.Errorf("lab: VM %s: a Linux guest's tx ring must hold %d bytes (a 64 KiB TSO segment); %d buffers of %d bytes hold %d: raise the driver's tx ring size",
			vs.Name, linuxguest.TxRoomNeeded, l.TxSize-1, l.TxBufSize, int(l.TxSize-1)*int(l.TxBufSize))
	}
	cfg := linuxguest.Config{Name: vs.Name, MAC: vs.MAC, MTU: int(driver.MTU)}
	if vs.IP != ([4]byte{}) {
		cfg.Addr = netip.PrefixFrom(netip.AddrFrom4(vs.IP), LinuxGuestPrefixLen)
	}
	return linuxguest.New(m, cfg)
}

// wireGuest connects a Linux guest's kernel to its VM's vCPU, so that the
// vCPU wakes when the kernel sends; other workloads need nothing.
func wireGuest(hv *hypervisor.VM) {
	if w, ok := hv.Workload().(*linuxguest.Workload); ok {
		w.SetWake(func() { hv.Interrupt(linuxWakeVector) })
	}
}

// closeGuests releases what the VMs' guest programs hold outside the
// process (a Linux guest's namespace and TAP). Call it after the vCPUs
// stopped.
func closeGuests(vms []*VM) []error {
	var errs []error
	for _, vm := range vms {
		if c, ok := vm.Workload().(io.Closer); ok {
			if err := c.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// LinuxGuest returns the Linux guest of the VM, or nil if it runs another
// program. After a migration it is the destination's Workload.
func (vm *VM) LinuxGuest() *linuxguest.Workload {
	w, _ := vm.Workload().(*linuxguest.Workload)
	return w
}
