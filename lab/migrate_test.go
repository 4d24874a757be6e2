package lab_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/lab"
)

func startLab(t *testing.T, topo lab.Topology) *lab.Lab {
	t.Helper()
	l, err := lab.Build(topo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	l.StartTraffic()
	return l
}

func vmNamed(t *testing.T, l *lab.Lab, name string) *lab.VM {
	t.Helper()
	for _, vm := range l.VMs() {
		if vm.Name() == name {
			return vm
		}
	}
	t.Fatalf("no VM %s", name)
	return nil
}

func hostNamed(t *testing.T, l *lab.Lab, name string) *lab.Host {
	t.Helper()
	for _, h := range l.Hosts() {
		if h.Name == name {
			return h
		}
	}
	t.Fatalf("no host %s", name)
	return nil
}

// checkPlacement fails unless vm runs direct on host with its vEth bound to
// that host's server port and the vm's own vif.
func checkPlacement(t *testing.T, l *lab.Lab, vm *lab.VM, host string) {
	t.Helper()
	info, ok := l.FI.VEth(vm.VEth)
	if !ok || vm.Host.Name != host || info.ServerPort != vm.Host.ServerPort || info.VIF != vm.Vif || vm.Mode() != hypervisor.ModeDirect {
		t.Fatalf("%s is on %s (vEth %d on %s vif %d, vNIC vif %d), mode %s; want direct on %s",
			vm.Name(), vm.Host.Name, vm.VEth, info.ServerPort, info.VIF, vm.Vif, vm.Mode(), host)
	}
}

// drainExactlyOnce stops traffic, drains and checks every stream by
// sequence number.
func drainExactlyOnce(ctx context.Context, t *testing.T, l *lab.Lab, what string) guest.Summary {
	t.Helper()
	l.StopTraffic()
	if err := l.Drain(ctx, 5*time.Second); err != nil {
		logFabric(t, l)
		t.Fatal(err)
	}
	s := guest.Reconcile(l.Stats())
	if s.Sent == 0 || s.Lost != 0 || s.Duplicated != 0 || s.Misdelivered != 0 || s.Late != 0 {
		logFabric(t, l)
		t.Fatalf("after %s: %+v", what, s)
	}
	return s
}

// waitReceiving waits until the VM has received more frames than before:
// traffic flows to it again.
func waitReceiving(ctx context.Context, t *testing.T, l *lab.Lab, vm *lab.VM, what string) {
	t.Helper()
	before := l.Stats()[vm.ID()].Received.Unique
	for l.Stats()[vm.ID()].Received.Unique == before {
		if ctx.Err() != nil {
			logFabric(t, l)
			t.Fatalf("%s: %s receives nothing", what, vm.Name())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestMigrationsUnderLoadExactlyOnce live-migrates VMs back and forth
// between the hosts, several in a row, over a pipe and over TCP, while
// every VM sends to and receives from its peers as fast as its rings
// allow; then it checks by sequence number that every frame arrived
// exactly once and that each VM ends on the direct path of its new host
// with its vEth rebound there.
func TestMigrationsUnderLoadExactlyOnce(t *testing.T) {
	l := startLab(t, lab.DemoTopology())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	moves := []struct{ vm, to string }{
		{"web-1", "esx2"}, {"web-1", "esx1"}, {"app-1", "esx2"}, {"web-2", "esx1"},
		{"app-1", "esx1"}, {"web-1", "esx2"}, {"web-2", "esx2"}, {"web-1", "esx1"},
	}
	if testing.Short() {
		moves = moves[:3]
	}
	for i, mv := range moves {
		time.Sleep(20 * time.Millisecond) // let traffic run between moves
		tr := lab.TransportPipe
		if i%2 == 1 {
			tr = lab.TransportTCP
		}
		l.ResetGaps()
		notProbe := peersNotProbe(l, mv.vm)
		rep, err := l.MigrateWith(ctx, mv.vm, mv.to, lab.MigrateOptions{Transport: tr, Progress: func(p lab.MigrationPhase) {
			t.Logf("  %s/%s ends at %dµs: streams at %v", mv.vm, p.Name, p.EndUs, streamPositions(l))
		}})
		if err != nil {
			logFabric(t, l)
			t.Fatalf("move %d (%s to %s over %s): %v", i, mv.vm, mv.to, tr, err)
		}
		vm := vmNamed(t, l, mv.vm)
		checkPlacement(t, l, vm, mv.to)
		waitReceiving(ctx, t, l, vm, "after the move")
		// The destination's RARP reaches every peer in the VLAN (it counts
		// there as a frame that is no probe).
		for peersNotProbe(l, mv.vm) <= notProbe {
			if ctx.Err() != nil {
				t.Fatalf("move %d: the peers of %s never received its RARP announcement", i, mv.vm)
			}
			time.Sleep(time.Millisecond)
		}
		gap, gapEnd := l.Blackout(mv.vm)
		t.Logf("%s %s->%s over %s: total %.1f ms, downtime %.2f ms, blackout %v ending at %dµs, %d rounds, %d bytes",
			rep.VM, rep.From, rep.To, tr, rep.TotalMs, rep.DowntimeMs, gap, (gapEnd-rep.StartUnixNs)/1e3, rep.PrecopyRounds, rep.BytesTransferred)
		want := []string{lab.PhasePrepare, lab.PhaseVICToEmulated, lab.PhasePrecopy, lab.PhaseFreeze, lab.PhaseStopAndCopy, lab.PhaseResume, lab.PhaseEmulatedToVIC}
		if len(rep.Phases) != len(want) {
			t.Fatalf("phases %+v, want %v", rep.Phases, want)
		}
		for j, p := range rep.Phases {
			if p.Name != want[j] || p.EndUs < p.StartUs || (j > 0 && p.StartUs < rep.Phases[j-1].EndUs) {
				t.Fatalf("phase %d: %+v (want %s, in order)", j, p, want[j])
			}
		}
	}
	s := drainExactlyOnce(ctx, t, l, fmt.Sprintf("%d moves", len(moves)))
	t.Logf("%d moves; sent %d unique %d", len(moves), s.Sent, s.Unique)
}

// TestMigrationRollsBackAtEveryPhase fails a migration in every phase
// before the commit point — the connection cut, the destination gone, the
// destination refusing where it decides — and checks each time that the VM
// still runs on its source, direct, with its vEth bound there, that the
// destination kept no vNIC, and that traffic flows; at the end, that every
// frame arrived exactly once.
func TestMigrationRollsBackAtEveryPhase(t *testing.T) {
	topo := lab.DemoTopology()
	topo.Traffic.Rate = 20000 // per peer: the fabric is busy, the pre-copy converges
	l := startLab(t, topo)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type tc struct {
		fault lab.MigrationFault
		phase string
	}
	var cases []tc
	for _, p := range lab.RollbackPhases {
		cases = append(cases, tc{lab.FaultCut, p}, tc{lab.FaultDestinationGone, p})
	}
	cases = append(cases, tc{lab.FaultRefuse, lab.PhasePrepare}, tc{lab.FaultRefuse, lab.PhaseResume})
	dst := hostNamed(t, l, "esx2")
	for i, c := range cases {
		vm := vmNamed(t, l, "web-1")
		from := vm.Host.Name
		free := dst.Adapter.Free()
		tr := lab.TransportTCP
		if i%3 == 2 {
			tr = lab.TransportPipe
		}
		_, err := l.MigrateWith(ctx, "web-1", "esx2", lab.MigrateOptions{Transport: tr, Fault: c.fault, FaultPhase: c.phase})
		if !errors.Is(err, lab.ErrRolledBack) {
			logFabric(t, l)
			t.Fatalf("%v at %s over %s: err = %v, want a rollback", c.fault, c.phase, tr, err)
		}
		t.Logf("%v at %s over %s: %v", c.fault, c.phase, tr, err)
		checkPlacement(t, l, vm, from)
		if got := dst.Adapter.Free(); got != free {
			t.Fatalf("%v at %s: %d free vNICs on esx2 after the rollback, want %d (a stale vNIC)", c.fault, c.phase, got, free)
		}
		waitReceiving(ctx, t, l, vm, fmt.Sprintf("%v at %s", c.fault, c.phase))
	}
	// A refusal where the destination decides nothing is a caller's error.
	if _, err := l.MigrateWith(ctx, "web-1", "esx2", lab.MigrateOptions{Fault: lab.FaultRefuse, FaultPhase: lab.PhasePrecopy}); err == nil || errors.Is(err, lab.ErrRolledBack) {
		t.Fatalf("refuse at precopy: err = %v, want a refusal of the options", err)
	}
	// The operator gives up (the caller's context ends) during the pre-copy.
	{
		vm := vmNamed(t, l, "web-1")
		from := vm.Host.Name
		cctx, ccancel := context.WithCancel(ctx)
		_, err := l.MigrateWith(cctx, "web-1", "esx2", lab.MigrateOptions{Transport: lab.TransportTCP, Progress: func(p lab.MigrationPhase) {
			if p.Name == lab.PhaseVICToEmulated {
				ccancel()
			}
		}})
		ccancel()
		if !errors.Is(err, lab.ErrRolledBack) {
			t.Fatalf("cancelled migration: err = %v, want a rollback", err)
		}
		checkPlacement(t, l, vm, from)
		waitReceiving(ctx, t, l, vm, "after the cancelled migration")
	}
	// And after all that, a migration that goes through.
	if _, err := l.MigrateWith(ctx, "web-1", "esx2", lab.MigrateOptions{Transport: lab.TransportTCP}); err != nil {
		t.Fatal(err)
	}
	checkPlacement(t, l, vmNamed(t, l, "web-1"), "esx2")
	drainExactlyOnce(ctx, t, l, fmt.Sprintf("%d rolled-back migrations", len(cases)))
}

// TestMigrationOfStalledGuest migrates a VM that stopped servicing its NIC:
// its rx ring is full, the device holds frames it has no buffers for, and
// its vector is masked with an interrupt pending, at the freeze. On the
// destination the guest runs again and takes every frame exactly once.
func TestMigrationOfStalledGuest(t *testing.T) {
	l := startLab(t, lab.DemoTopology())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vm := vmNamed(t, l, "web-1")
	waitReceiving(ctx, t, l, vm, "before the stall")
	vm.VCPU().Stall(true)
	for {
		st, held := vm.VNIC.Device().Snapshot()
		masked := false
		for _, v := range st.Vectors[:st.Config.NumIntrs] {
			masked = masked || (v.Masked && v.Pending)
		}
		if len(held) > 0 && held[0] > 0 && masked {
			t.Logf("at the stall: %d frames held, vectors %+v", held[0], st.Vectors[:st.Config.NumIntrs])
			break
		}
		if ctx.Err() != nil {
			logFabric(t, l)
			t.Fatal("the stalled guest's rx ring never filled with its vector masked")
		}
		time.Sleep(time.Millisecond)
	}
	rep, err := l.MigrateWith(ctx, "web-1", "esx2", lab.MigrateOptions{Transport: lab.TransportTCP})
	if err != nil {
		logFabric(t, l)
		t.Fatal(err)
	}
	t.Logf("migrated: downtime %.2f ms, total %.1f ms", rep.DowntimeMs, rep.TotalMs)
	checkPlacement(t, l, vm, "esx2")
	waitReceiving(ctx, t, l, vm, "after the move")
	drainExactlyOnce(ctx, t, l, "the stalled guest's migration")
}

// streamPositions returns, per stream "src>dst", the next sequence number.
func streamPositions(l *lab.Lab) []string {
	var out []string
	for _, p := range guest.Reconcile(l.Stats()).Pairs {
		out = append(out, fmt.Sprintf("%d>%d:%d", p.Src, p.Dst, p.Sent+1))
	}
	return out
}

// peersNotProbe sums the non-probe frames (ARP, RARP) the VMs of name's
// VLAN other than name received.
func peersNotProbe(l *lab.Lab, name string) uint64 {
	var vlan uint16
	for _, vm := range l.VMs() {
		if vm.Name() == name {
			vlan = vm.VLAN
		}
	}
	var n uint64
	st := l.Stats()
	for _, vm := range l.VMs() {
		if vm.Name() != name && vm.VLAN == vlan {
			n += st[vm.ID()].NotProbe
		}
	}
	return n
}
