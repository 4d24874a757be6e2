package lab_test

import (
	"context"
	"testing"
	"time"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/lab"
)

// TestMigrationsUnderLoadExactlyOnce live-migrates VMs back and forth
// between the hosts, several in a row, while every VM sends to and receives
// from its peers as fast as its rings allow, then checks by sequence number
// that every frame arrived exactly once and that each VM ends on the direct
// path of its new host with its vEth rebound there.
func TestMigrationsUnderLoadExactlyOnce(t *testing.T) {
	l, err := lab.Build(lab.DemoTopology())
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
	moves := []struct{ vm, to string }{
		{"web-1", "esx2"}, {"web-1", "esx1"}, {"app-1", "esx2"}, {"web-2", "esx1"},
		{"app-1", "esx1"}, {"web-1", "esx2"}, {"web-2", "esx2"}, {"web-1", "esx1"},
	}
	for i, m := range moves {
		time.Sleep(20 * time.Millisecond) // let traffic run between moves
		rep, err := l.Migrate(ctx, m.vm, m.to)
		if err != nil {
			logFabric(t, l)
			t.Fatalf("move %d (%s to %s): %v", i, m.vm, m.to, err)
		}
		t.Logf("%s %s->%s: total %.1f ms, downtime %.2f ms, %d rounds, %d bytes", rep.VM, rep.From, rep.To, rep.TotalMs, rep.DowntimeMs, rep.PrecopyRounds, rep.BytesTransferred)
		for _, vm := range l.VMs() {
			if vm.Name() != m.vm {
				continue
			}
			info, _ := l.FI.VEth(vm.VEth)
			if vm.Host.Name != m.to || info.ServerPort != vm.Host.ServerPort || info.VIF != vm.Vif || vm.Mode() != hypervisor.ModeDirect {
				t.Fatalf("after the move %s is on %s (vEth on %s vif %d), mode %s", vm.Name(), vm.Host.Name, info.ServerPort, info.VIF, vm.Mode())
			}
		}
	}
	l.StopTraffic()
	if err := l.Drain(ctx, 5*time.Second); err != nil {
		logFabric(t, l)
		t.Fatal(err)
	}
	s := guest.Reconcile(l.Stats())
	t.Logf("%d moves; sent %d unique %d", len(moves), s.Sent, s.Unique)
	if s.Sent == 0 || s.Lost != 0 || s.Duplicated != 0 || s.Misdelivered != 0 || s.Late != 0 {
		t.Fatalf("after %d moves: %+v", len(moves), s)
	}
}
