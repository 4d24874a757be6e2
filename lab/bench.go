package lab

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/wire"
)

// PairTopology is the benchmark fabric: two VMs in one VLAN, on two hosts
// (through the FI) or, with hairpin, on one host (up to the FI and back
// down the same server port). Only the first VM sends.
func PairTopology(frameLen int, hairpin bool) Topology {
	mac := func(n byte) wire.MAC { return wire.MAC{0x00, 0x25, 0xb5, 0x00, 0x01, n} }
	h2 := "esx2"
	if hairpin {
		h2 = "esx1"
	}
	return Topology{
		FI: "fi-a",
		Profiles: []fabric.PortProfile{
			{Name: "bench-vlan10", Mode: fabric.ModeAccess, AccessVLAN: 10, HighPerformance: true},
		},
		Hosts: []HostSpec{{Name: "esx1", ServerPort: "Ethernet1/1"}, {Name: "esx2", ServerPort: "Ethernet1/2"}},
		VMs: []VMSpec{
			{Name: "tx", Host: "esx1", Profile: "bench-vlan10", MAC: mac(1), IP: [4]byte{198, 18, 10, 1}},
			{Name: "rx", Host: h2, Profile: "bench-vlan10", MAC: mac(2), IP: [4]byte{198, 18, 10, 2}},
		},
		Traffic: TrafficSpec{FrameLen: frameLen},
	}
}

// PairResult is one measured run of PairTopology.
type PairResult struct {
	Frames   uint64        // unique frames the receiver got in the window
	Elapsed  time.Duration // measurement window
	PPS      float64
	Gbps     float64 // frame bytes (without FCS) per second, in Gbit/s
	Lost     int64   // after the drain
	Dup      uint64
	Reorder  uint64
	FrameLen int
}

// RunPair measures one-way VM-to-VM throughput on the direct path (or, with
// mode ModeEmulated, through both hypervisors' emulated devices): it
// warms up, then counts what the receiver got during d (or, with frames >
// 0, how long frames took). Only "tx" sends, so the figure is the one-way
// rate.
func RunPair(ctx context.Context, frameLen int, hairpin bool, mode hypervisor.Mode, d time.Duration, frames uint64) (PairResult, error) {
	topo := PairTopology(frameLen, hairpin)
	l, err := Build(topo)
	if err != nil {
		return PairResult{}, err
	}
	defer l.Close()
	if err := l.Start(); err != nil {
		return PairResult{}, err
	}
	tx, rx := l.VMs()[0], l.VMs()[1]
	if mode == hypervisor.ModeEmulated {
		for _, vm := range l.VMs() {
			if _, err := vm.SwitchMode(ctx, hypervisor.ModeEmulated); err != nil {
				return PairResult{}, err
			}
		}
	}
	// The receiver's generator stays off: one-way traffic.
	tx.Traffic.Start(tx.Memory())
	received := func() uint64 { return rx.Traffic.Stats(rx.Memory()).Received.Unique }
	// Warm up: MAC learning, pools, caches.
	for received() < 1000 {
		if err := ctx.Err(); err != nil {
			return PairResult{}, err
		}
		time.Sleep(time.Millisecond)
	}
	r0, t0 := received(), time.Now()
	if frames > 0 {
		for received()-r0 < frames {
			if err := ctx.Err(); err != nil {
				return PairResult{}, err
			}
			time.Sleep(200 * time.Microsecond)
		}
	} else {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return PairResult{}, ctx.Err()
		}
	}
	r1, el := received(), time.Since(t0)
	tx.Traffic.Stop(tx.Memory())
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	derr := l.Drain(dctx, 3*time.Second)
	s := guest.Reconcile(l.Stats())
	res := PairResult{
		Frames: r1 - r0, Elapsed: el, FrameLen: frameLen,
		Lost: s.Lost, Dup: s.Duplicated, Reorder: s.Reordered,
	}
	res.PPS = float64(res.Frames) / el.Seconds()
	res.Gbps = res.PPS * float64(frameLen) * 8 / 1e9
	if derr != nil {
		return res, fmt.Errorf("lab: drain after benchmark: %w", derr)
	}
	return res, nil
}

// SwitchResult is the distribution of live mode-switch pauses.
type SwitchResult struct {
	Switches      int
	P50, P99, Max time.Duration // guest pause (vCPU frozen) per switch
	Sent, Unique  uint64
	Lost          int64
	Duplicated    uint64
}

// MeasureSwitches runs the demo fabric with every VM sending as fast as its
// rings allow and switches random VMs between direct and emulated n times,
// recording how long each guest was paused; then it drains and reconciles.
func MeasureSwitches(ctx context.Context, n int, seed uint64) (SwitchResult, error) {
	l, err := Build(DemoTopology())
	if err != nil {
		return SwitchResult{}, err
	}
	defer l.Close()
	if err := l.Start(); err != nil {
		return SwitchResult{}, err
	}
	l.StartTraffic()
	// The switches are measured under traffic: wait until every stream
	// flows (a generator sees its start command at its next step).
	if err := l.waitFlowing(ctx); err != nil {
		return SwitchResult{}, err
	}
	vms := l.VMs()
	pauses := make([]time.Duration, 0, n)
	r := seed | 1
	for i := 0; i < n; i++ {
		r ^= r << 13
		r ^= r >> 7
		r ^= r << 17
		vm := vms[r%uint64(len(vms))]
		to := hypervisor.ModeEmulated
		if vm.Mode() == hypervisor.ModeEmulated {
			to = hypervisor.ModeDirect
		}
		t, err := vm.SwitchMode(ctx, to)
		if err != nil {
			return SwitchResult{}, err
		}
		pauses = append(pauses, t.Total)
	}
	l.StopTraffic()
	if err := l.Drain(ctx, 5*time.Second); err != nil {
		return SwitchResult{}, err
	}
	s := guest.Reconcile(l.Stats())
	slices.Sort(pauses)
	res := SwitchResult{Switches: n, Sent: s.Sent, Unique: s.Unique, Lost: s.Lost, Duplicated: s.Duplicated}
	if n > 0 {
		res.P50 = pauses[n/2]
		res.P99 = pauses[min(n-1, n*99/100)]
		res.Max = pauses[n-1]
	}
	return res, nil
}

// waitFlowing waits until every probe stream has sent a frame.
func (l *Lab) waitFlowing(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	for {
		s := guest.Reconcile(l.Stats())
		flowing := len(s.Pairs) > 0
		for _, p := range s.Pairs {
			flowing = flowing && p.Sent > 0
		}
		if flowing {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("lab: the probe traffic did not start: %w", ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}
