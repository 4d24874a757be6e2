package lab

import "github.com/vmfex/vmfex/hypervisor"

// VMView is a consistent snapshot of where a VM runs and how its vNIC is
// carried, for APIs that report on a running lab.
type VMView struct {
	Name string
	ID   uint32
	Host string
	VEth uint32
	Vif  uint16
	VLAN uint16
	Mode hypervisor.Mode
}

// View returns the VM named name as it is now, and whether there is one.
// A migration replaces a VM's host, vif and hypervisor VM under the lab's
// lock; reading them under the same lock is what keeps a report taken
// during a migration from racing with it.
func (l *Lab) View(name string) (VMView, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, vm := range l.vms {
		if vm.Name() == name {
			return vm.viewLocked(), true
		}
	}
	return VMView{}, false
}

// Views returns every VM, in topology order, as View does.
func (l *Lab) Views() []VMView {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]VMView, 0, len(l.vms))
	for _, vm := range l.vms {
		out = append(out, vm.viewLocked())
	}
	return out
}

// Hypervisor returns the hypervisor VM currently running the VM named
// name (a migration replaces it), for a live mode switch.
func (l *Lab) Hypervisor(name string) (*hypervisor.VM, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, vm := range l.vms {
		if vm.Name() == name {
			return vm.VM, true
		}
	}
	return nil, false
}

func (vm *VM) viewLocked() VMView {
	return VMView{Name: vm.Name(), ID: vm.ID(), Host: vm.Host.Name, VEth: vm.VEth, Vif: vm.Vif, VLAN: vm.VLAN, Mode: vm.Mode()}
}
