package vic_test

import (
	"errors"
	"testing"

	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vic"
	"github.com/vmfex/vmfex/wire"
)

// TestPool: the dynamic vNIC pool hands out MaxVNICs vNICs, one per vif in
// 1..4095, and DeleteVNIC returns the slot.
func TestPool(t *testing.T) {
	const max = 4
	up, fi := link.NewMemCable(0)
	defer fi.Close()
	a := vic.New(vic.Config{Name: "pool", Uplink: up, MaxVNICs: max})
	defer a.Close()
	m, err := mem.New(mem.PageSize)
	if err != nil {
		t.Fatal(err)
	}
	create := func(vif uint16) error {
		_, err := a.CreateVNIC(vif, vmMAC(vif), m, nil)
		return err
	}
	if got := a.Free(); got != max {
		t.Fatalf("Free() = %d on a new adapter, want %d", got, max)
	}
	steps := []struct {
		name     string
		do       func() error
		wantErr  error
		wantFree int
	}{
		{"create-1", func() error { return create(1) }, nil, 3},
		{"create-4095", func() error { return create(wire.MaxSVIF) }, nil, 2},
		{"duplicate-vif", func() error { return create(1) }, vic.ErrVifInUse, 2},
		{"vif-0", func() error { return create(0) }, vic.ErrBadVif, 2},
		{"vif-4096", func() error { return create(wire.MaxSVIF + 1) }, vic.ErrBadVif, 2},
		{"vif-65535", func() error { return create(0xFFFF) }, vic.ErrBadVif, 2},
		{"create-2", func() error { return create(2) }, nil, 1},
		{"create-3", func() error { return create(3) }, nil, 0},
		{"exhausted", func() error { return create(5) }, vic.ErrPoolExhausted, 0},
		{"exhausted-dup-is-in-use", func() error { return create(2) }, vic.ErrVifInUse, 0},
		{"delete-unknown", func() error { return a.DeleteVNIC(5) }, vic.ErrNoVNIC, 0},
		{"delete-2", func() error { return a.DeleteVNIC(2) }, nil, 1},
		{"delete-2-again", func() error { return a.DeleteVNIC(2) }, vic.ErrNoVNIC, 1},
		{"slot-reused", func() error { return create(5) }, nil, 0},
		{"exhausted-again", func() error { return create(6) }, vic.ErrPoolExhausted, 0},
		{"vif-reused-after-delete", func() error {
			if err := a.DeleteVNIC(1); err != nil {
				return err
			}
			return create(1)
		}, nil, 0},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			err := s.do()
			if !errors.Is(err, s.wantErr) || (s.wantErr == nil) != (err == nil) {
				t.Errorf("err = %v, want %v", err, s.wantErr)
			}
			if got := a.Free(); got != s.wantFree {
				t.Errorf("Free() = %d, want %d", got, s.wantFree)
			}
		})
	}
	var vifs []uint16
	for _, v := range a.VNICs() {
		vifs = append(vifs, v.Vif())
		if got, ok := a.VNIC(v.Vif()); !ok || got != v {
			t.Errorf("VNIC(%d) = %p, %v; want %p", v.Vif(), got, ok, v)
		}
		if v.MAC() != vmMAC(v.Vif()) {
			t.Errorf("vif %d MAC %v, want %v", v.Vif(), v.MAC(), vmMAC(v.Vif()))
		}
	}
	if want := []uint16{1, 3, 5, wire.MaxSVIF}; !equalVifs(vifs, want) {
		t.Errorf("VNICs() vifs = %v, want %v (sorted)", vifs, want)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := create(7); !errors.Is(err, vic.ErrClosed) {
		t.Errorf("CreateVNIC after Close: %v, want %v", err, vic.ErrClosed)
	}
}

func equalVifs(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestPoolDefaultSize: MaxVNICs 0 means DefaultMaxVNICs, all usable.
func TestPoolDefaultSize(t *testing.T) {
	up, fi := link.NewMemCable(0)
	defer fi.Close()
	a := vic.New(vic.Config{Name: "pool", Uplink: up})
	defer a.Close()
	m, err := mem.New(mem.PageSize)
	if err != nil {
		t.Fatal(err)
	}
	for vif := uint16(1); vif <= vic.DefaultMaxVNICs; vif++ {
		if _, err := a.CreateVNIC(vif, vmMAC(vif), m, nil); err != nil {
			t.Fatalf("CreateVNIC(%d): %v", vif, err)
		}
	}
	if _, err := a.CreateVNIC(vic.DefaultMaxVNICs+1, vmMAC(1), m, nil); !errors.Is(err, vic.ErrPoolExhausted) {
		t.Errorf("CreateVNIC beyond %d: %v, want %v", vic.DefaultMaxVNICs, err, vic.ErrPoolExhausted)
	}
	if a.Free() != 0 {
		t.Errorf("Free() = %d, want 0", a.Free())
	}
}

// TestSetVifVLAN: SetVifVLAN programs a vNIC's default VLAN and ignores a
// vif that has no vNIC.
func TestSetVifVLAN(t *testing.T) {
	up, fi := link.NewMemCable(0)
	defer fi.Close()
	a := vic.New(vic.Config{Name: "vlan", Uplink: up})
	defer a.Close()
	m, _ := mem.New(mem.PageSize)
	v, err := a.CreateVNIC(3, vmMAC(3), m, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, vlan := range []uint16{0, 1, 100, wire.MaxVID, 0} {
		a.SetVifVLAN(3, vlan)
		if got := v.DefaultVLAN(); got != vlan {
			t.Errorf("after SetVifVLAN(3, %d): DefaultVLAN() = %d", vlan, got)
		}
	}
	a.SetVifVLAN(4, 100) // no vNIC: ignored
	if _, ok := a.VNIC(4); ok {
		t.Error("SetVifVLAN created a vNIC")
	}
}
