package lab_test

import (
	"context"
	"testing"
	"time"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/lab"
)

func TestDemoFabricExactlyOnce(t *testing.T) {
	l, err := lab.Build(lab.DemoTopology())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	l.StartTraffic()
	time.Sleep(500 * time.Millisecond) // traffic runs this long; not a modelled delay
	l.StopTraffic()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	derr := l.Drain(ctx, 5*time.Second)
	s := guest.Reconcile(l.Stats())
	t.Logf("sent %d unique %d lost %d dup %d misdelivered %d", s.Sent, s.Unique, s.Lost, s.Duplicated, s.Misdelivered)
	if derr != nil {
		for _, vm := range l.VMs() {
			t.Logf("%s drv %+v vnic %+v", vm.Name(), vm.Driver().Stats(), vm.VNIC.Stats())
		}
		t.Logf("fi %+v", l.FI.Stats())
		t.Fatal(derr)
	}
	if s.Sent == 0 || s.Lost != 0 || s.Duplicated != 0 || s.Misdelivered != 0 {
		t.Fatalf("summary %+v", s)
	}
}
