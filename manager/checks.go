package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/vmfex/vmfex/manager/store"
)

// The checks below run under Server.mu (see kindSpec). They read whole
// kinds; the object counts of one fabric are small enough for that.

// listKind returns the objects of one kind, decoded.
func listKind[T any, PT interface {
	*T
	object
}](ctx context.Context, s *Server, kind string) ([]PT, error) {
	sos, _, err := s.store.List(ctx, kind)
	if err != nil {
		return nil, err
	}
	out := make([]PT, 0, len(sos))
	for _, so := range sos {
		o := PT(new(T))
		if err := json.Unmarshal(so.Value, o); err != nil {
			return nil, fmt.Errorf("stored %s %q is corrupt: %w", kind, so.Name, err)
		}
		o.setRev(so.Revision)
		out = append(out, o)
	}
	return out, nil
}

// getKind returns one object, or ok=false if it does not exist.
func getKind[T any, PT interface {
	*T
	object
}](ctx context.Context, s *Server, kind, name string) (PT, bool, error) {
	so, err := s.store.Get(ctx, kind, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	o := PT(new(T))
	if err := json.Unmarshal(so.Value, o); err != nil {
		return nil, false, fmt.Errorf("stored %s %q is corrupt: %w", kind, name, err)
	}
	o.setRev(so.Revision)
	return o, true, nil
}

func missing(noun, name, field, of, create string) *Error {
	return apiError(http.StatusUnprocessableEntity,
		fmt.Sprintf("%s %q (%s of %s) does not exist", noun, name, field, of),
		"create it first ("+create+"), or fix the name")
}

// names lists up to 10 names for a message.
func names(ns []string) string {
	if len(ns) > 10 {
		return strings.Join(ns[:10], ", ") + fmt.Sprintf(" and %d more", len(ns)-10)
	}
	return strings.Join(ns, ", ")
}

func vmsWhere(vms []*VM, keep func(*VM) bool) []string {
	var ns []string
	for _, v := range vms {
		if keep(v) {
			ns = append(ns, v.Name)
		}
	}
	return ns
}

func (s *Server) checkDeleteFI(ctx context.Context, old object) error {
	fi := old.(*FabricInterconnect)
	hosts, err := listKind[Host](ctx, s, KindHosts)
	if err != nil {
		return err
	}
	var using []string
	for _, h := range hosts {
		if h.FI == fi.Name {
			using = append(using, h.Name)
		}
	}
	if len(using) > 0 {
		return apiError(http.StatusConflict,
			fmt.Sprintf("fabric interconnect %q is in use by hosts %s", fi.Name, names(using)),
			"delete those hosts or move them to another FI first")
	}
	return nil
}

func (s *Server) checkHost(ctx context.Context, o, old object) error {
	h := o.(*Host)
	if _, ok, err := getKind[FabricInterconnect](ctx, s, KindFabricInterconnects, h.FI); err != nil {
		return err
	} else if !ok {
		return missing("fabric interconnect", h.FI, "fi", "host "+h.Name, "POST /api/v1/fabric-interconnects, or vmfex fi create "+h.FI)
	}
	hosts, err := listKind[Host](ctx, s, KindHosts)
	if err != nil {
		return err
	}
	for _, other := range hosts {
		if other.Name != h.Name && other.FI == h.FI && other.ServerPort == h.ServerPort {
			return apiError(http.StatusConflict,
				fmt.Sprintf("server port %s of %s is already cabled to host %s", h.ServerPort, h.FI, other.Name),
				"choose a free server port")
		}
	}
	if old == nil {
		return nil
	}
	vms, err := listKind[VM](ctx, s, KindVMs)
	if err != nil {
		return err
	}
	if on := vmsWhere(vms, func(v *VM) bool { return v.Host == h.Name }); len(on) > h.MaxVNICs {
		return apiError(http.StatusConflict,
			fmt.Sprintf("host %s runs %d VMs, more than max_vnics %d", h.Name, len(on), h.MaxVNICs),
			"raise max_vnics, or move VMs off the host first")
	}
	return nil
}

func (s *Server) checkDeleteHost(ctx context.Context, old object) error {
	h := old.(*Host)
	vms, err := listKind[VM](ctx, s, KindVMs)
	if err != nil {
		return err
	}
	if on := vmsWhere(vms, func(v *VM) bool { return v.Host == h.Name }); len(on) > 0 {
		return apiError(http.StatusConflict,
			fmt.Sprintf("host %q still runs VMs %s", h.Name, names(on)),
			"delete those VMs or move them to another host first")
	}
	return nil
}

func (s *Server) checkPortProfile(ctx context.Context, o, old object) error {
	if old == nil {
		return nil
	}
	p := o.(*PortProfile)
	vms, err := listKind[VM](ctx, s, KindVMs)
	if err != nil {
		return err
	}
	if using := vmsWhere(vms, func(v *VM) bool { return v.PortProfile == p.Name }); len(using) > p.MaxPorts {
		return apiError(http.StatusConflict,
			fmt.Sprintf("port profile %s is bound to %d VMs, more than max_ports %d", p.Name, len(using), p.MaxPorts),
			"raise max_ports, or delete VMs using the profile first")
	}
	return nil
}

func (s *Server) checkDeletePortProfile(ctx context.Context, old object) error {
	p := old.(*PortProfile)
	vms, err := listKind[VM](ctx, s, KindVMs)
	if err != nil {
		return err
	}
	if using := vmsWhere(vms, func(v *VM) bool { return v.PortProfile == p.Name }); len(using) > 0 {
		return apiError(http.StatusConflict,
			fmt.Sprintf("port profile %q is in use by VMs %s", p.Name, names(using)),
			"delete those VMs or give them another port profile first")
	}
	return nil
}

func (s *Server) checkVM(ctx context.Context, o, old object) error {
	v := o.(*VM)
	if old == nil {
		if v.VEth != 0 || v.Vif != 0 {
			return badRequest("veth and vif are assigned by the manager", "leave them out when creating a VM")
		}
	} else {
		was := old.(*VM).VEth
		if v.VEth != 0 && v.VEth != was {
			return badRequest(fmt.Sprintf("veth of VM %s is %d and cannot change", v.Name, was),
				"leave veth out, or send the current value")
		}
		v.VEth = was
		if wasVif := old.(*VM).Vif; v.Vif != 0 && v.Vif != wasVif {
			return badRequest(fmt.Sprintf("vif of VM %s is %d and cannot change", v.Name, wasVif),
				"leave vif out, or send the current value")
		} else {
			v.Vif = wasVif
		}
	}
	host, ok, err := getKind[Host](ctx, s, KindHosts, v.Host)
	if err != nil {
		return err
	}
	if !ok {
		return missing("host", v.Host, "host", "VM "+v.Name, "POST /api/v1/hosts, or vmfex host create "+v.Host)
	}
	prof, ok, err := getKind[PortProfile](ctx, s, KindPortProfiles, v.PortProfile)
	if err != nil {
		return err
	}
	if !ok {
		return missing("port profile", v.PortProfile, "port_profile", "VM "+v.Name, "POST /api/v1/port-profiles, or vmfex port-profile create "+v.PortProfile)
	}
	vms, err := listKind[VM](ctx, s, KindVMs)
	if err != nil {
		return err
	}
	others := vms[:0]
	for _, x := range vms {
		if x.Name != v.Name {
			others = append(others, x)
		}
	}
	for _, x := range others {
		if x.MAC == v.MAC {
			return apiError(http.StatusConflict, fmt.Sprintf("mac %s is already used by VM %s", v.MAC, x.Name),
				"give every vNIC its own MAC")
		}
	}
	if using := vmsWhere(others, func(x *VM) bool { return x.PortProfile == prof.Name }); len(using) >= prof.MaxPorts {
		return apiError(http.StatusConflict,
			fmt.Sprintf("port profile %s has all its max_ports (%d) in use, by VMs %s", prof.Name, prof.MaxPorts, names(using)),
			"raise max_ports on the port profile, or delete a VM using it")
	}
	if on := vmsWhere(others, func(x *VM) bool { return x.Host == host.Name }); len(on) >= host.MaxVNICs {
		return apiError(http.StatusConflict,
			fmt.Sprintf("host %s has all its %d dynamic vNICs in use", host.Name, host.MaxVNICs),
			"raise max_vnics on the host, or place the VM on another host")
	}
	return nil
}

// vethCounter is the stored allocator of vEth numbers. It only grows, so a
// number is never given twice, even after the VM holding it is deleted or a
// crash between the counter's write and the VM's loses the VM.
type vethCounter struct {
	Next int `json:"next"`
}

const (
	kindCounters = "counters"
	counterVEth  = "veth"
)

// assignVEth gives a new VM the next vEth number.
func (s *Server) assignVEth(ctx context.Context, o object) error {
	v := o.(*VM)
	if err := s.assignVif(ctx, v); err != nil {
		return err
	}
	so, err := s.store.Get(ctx, kindCounters, counterVEth)
	if errors.Is(err, store.ErrNotFound) {
		val, _ := json.Marshal(vethCounter{Next: FirstVEth + 1})
		if _, err := s.store.Create(ctx, store.Object{Kind: kindCounters, Name: counterVEth, Value: val}); err != nil {
			return err
		}
		v.VEth = FirstVEth
		return nil
	}
	if err != nil {
		return err
	}
	var c vethCounter
	if err := json.Unmarshal(so.Value, &c); err != nil || c.Next < FirstVEth {
		return fmt.Errorf("vEth counter is corrupt (%s); restore the data directory from a backup", so.Value)
	}
	v.VEth = c.Next
	c.Next++
	so.Value, _ = json.Marshal(c)
	_, err = s.store.Update(ctx, so)
	return err
}
