package lab_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/lab"
)

// TestModeSwitchesUnderLoadExactlyOnce switches every VM's vNIC between the
// adapter (direct) and the hypervisor's emulated device, thousands of
// times, at random moments, while every VM sends to and receives from its
// peers as fast as the rings allow; then it drains and checks, by sequence
// number, that every frame arrived exactly once and that the counters ran
// on across the switches.
func TestModeSwitchesUnderLoadExactlyOnce(t *testing.T) {
	switches := 2000
	if testing.Short() {
		switches = 300
	}
	topo := lab.DemoTopology()
	// Rate 0: every VM sends as fast as its rings allow, so every cable is
	// full and backing up while the switches happen.
	l, err := lab.Build(topo)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	l.StartTraffic()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rng := rand.New(rand.NewPCG(1, 2))
	vms := l.VMs()
	done := 0
	var progress atomic.Int64
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	go func() {
		last, since := int64(-1), time.Now()
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(time.Second):
			}
			if p := progress.Load(); p != last {
				last, since = p, time.Now()
			} else if time.Since(since) > 10*time.Second {
				t.Logf("no switch finished for 10s (at %d): fabric state", p)
				logFabric(t, l)
				since = time.Now()
			}
		}
	}()
	var maxPause time.Duration
	for done < switches {
		vm := vms[rng.IntN(len(vms))]
		to := hypervisor.ModeEmulated
		if vm.Mode() == hypervisor.ModeEmulated {
			to = hypervisor.ModeDirect
		}
		before := vm.Driver().Stats()
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		tm, err := vm.SwitchMode(sctx, to)
		scancel()
		if err != nil {
			logFabric(t, l)
			t.Fatalf("switch %d of %s to %s: %v", done, vm.Name(), to, err)
		}
		if vm.Mode() != to {
			t.Fatalf("%s reports mode %s after switching to %s", vm.Name(), vm.Mode(), to)
		}
		after := vm.Driver().Stats()
		if after.TxPackets < before.TxPackets || after.RxPackets < before.RxPackets {
			t.Fatalf("%s: driver counters went back across a switch: %+v -> %+v", vm.Name(), before, after)
		}
		maxPause = max(maxPause, tm.Total)
		done++
		progress.Store(int64(done))
		// A random moment: sometimes back to back, sometimes after traffic ran.
		if rng.IntN(4) == 0 {
			time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
		}
	}
	l.StopTraffic()
	if err := l.Drain(ctx, 5*time.Second); err != nil {
		logFabric(t, l)
		t.Fatal(err)
	}
	s := guest.Reconcile(l.Stats())
	t.Logf("%d switches; longest guest pause %v; sent %d unique %d", done, maxPause, s.Sent, s.Unique)
	if s.Sent == 0 || s.Lost != 0 || s.Duplicated != 0 || s.Misdelivered != 0 || s.Late != 0 {
		t.Fatalf("after %d switches: %+v", done, s)
	}
	for _, vm := range vms {
		if st := vm.Driver().Stats(); st.RxErrors != 0 || st.QueueErrors != 0 || st.Resets != 0 {
			t.Errorf("%s driver %+v", vm.Name(), st)
		}
	}
}

func logFabric(t *testing.T, l *lab.Lab) {
	t.Helper()
	for _, vm := range l.VMs() {
		t.Logf("%s mode %s drv %+v vnic %+v port %+v", vm.Name(), vm.Mode(), vm.Driver().Stats(), vm.VNIC.Stats(), vm.Port.Stats())
		dev := vm.VNIC.Device()
		if vm.Mode() == hypervisor.ModeEmulated {
			dev = vm.Emulated().Device()
		}
		st, held := dev.Snapshot()
		t.Logf("  device active %v frozen %v held %v vec0 %+v vec1 %+v", st.Active, dev.Frozen(), held, st.Vectors[0], st.Vectors[1])
		for _, q := range st.TxQueues {
			t.Logf("  txq ring %+v comp %+v stopped %v", q.Ring, q.Comp, q.Stopped)
		}
		for _, q := range st.RxQueues {
			t.Logf("  rxq rings %+v comp %+v prod %v stopped %v", q.Rings, q.Comp, q.Prod, q.Stopped)
		}
		t.Logf("  driver rings %+v", vm.Driver().Rings())
		steps, idle := vm.VCPU().Steps()
		t.Logf("  vcpu steps %d idle %d; emu exits %v", steps, idle, fmt.Sprint(vm.Emulated().Exits()))
	}
	for _, p := range guest.Reconcile(l.Stats()).Pairs {
		t.Logf("pair %+v", p)
		for _, vm := range l.VMs() {
			if vm.ID() == p.Dst && p.Lost != 0 {
				t.Logf("  missing at %s (window): %v", vm.Name(), vm.Traffic.Missing(vm.Memory(), p.Src, 16))
			}
		}
	}
	t.Logf("fi %+v", l.FI.Stats())
	for _, vm := range l.VMs() {
		st := vm.VNIC.Stats()
		t.Logf("at dump: %s vnic %p waiting %q hostdriven %v port queued %d txroom %d held(vnic) %d held(emu) %d", vm.Name(), vm.VNIC, st.Waiting, vm.VNIC.HostDriven(), vm.Port.Queued(), vm.Port.TxRoom(), vm.VNIC.Device().HeldFrames(0), vm.Emulated().Device().HeldFrames(0))
	}
	for _, vm := range l.VMs() {
		t.Logf("  %s is vif %d on %s", vm.Name(), vm.Vif, vm.Host.Name)
		if vm.Mode() == hypervisor.ModeEmulated {
			r := vm.Emulated().DeliverBatch(0, nil)
			t.Logf("kick %s: emu DeliverBatch(nil) = %+v; driver rings %+v", vm.Name(), r, vm.Driver().Rings())
			st, _ := vm.Emulated().Device().Snapshot()
			t.Logf("   emu rx rings %+v comp %+v", st.RxQueues[0].Rings, st.RxQueues[0].Comp)
		}
	}
	buf := make([]byte, 16<<20)
	n := runtime.Stack(buf, true)
	_ = os.WriteFile(filepath.Join(os.TempDir(), "vmfex-switch-goroutines.txt"), buf[:n], 0o644)
}
