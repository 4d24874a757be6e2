//go:build !linux

package lab

import (
	"errors"
	"io"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/linuxguest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/hypervisor"
)

// Guest programs a VM can run (VMSpec.Guest); only the probe one here.
const (
	GuestProbe = "probe"
	GuestLinux = "linux"
)

func guestWorkload(m *mem.Memory, c VMConfig, driver guest.DriverConfig) (guest.Workload, error) {
	return nil, errors.New("lab: VM " + c.Spec.Name + ": guest " + c.Spec.Guest + " needs Linux")
}

func wireGuest(hv *hypervisor.VM) {}

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

// LinuxGuest returns nil: there are no Linux guests here.
func (vm *VM) LinuxGuest() *linuxguest.Workload { return nil }
