package fabric_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/vmfex/vmfex/fabric"
)

// TestClaimAndRevert: a rebind is unclaimed until the new adapter claims
// it; the claim sets the count base; a revert succeeds only before it.
func TestClaimAndRevert(t *testing.T) {
	r := newRig(t, 2, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	a, b := mac(1), mac(2)
	r.veth(32769, "Ethernet1/1", 1, a, "web")
	r.veth(32770, "Ethernet1/2", 2, b, "web")
	for i := range 3 {
		r.send("Ethernet1/1", 1, 10, b, a, uint32(i)) // ingress of 32769
		r.send("Ethernet1/2", 2, 10, a, b, uint32(i)) // egress of 32769
	}
	r.settle()
	r.take()
	v, _ := r.fi.VEth(32769)
	if !v.Claimed || v.BaseEgressFrames != 0 || v.BaseIngressFrames != 0 {
		t.Fatalf("fresh vEth: claimed %v base %d/%d; want claimed, base 0/0", v.Claimed, v.BaseEgressFrames, v.BaseIngressFrames)
	}

	// A move that fails before the commit point: rebind, then revert.
	if err := r.fi.RebindVEth(32769, "Ethernet1/2", 1); err != nil {
		t.Fatal(err)
	}
	if v, _ := r.fi.VEth(32769); v.Claimed {
		t.Fatal("rebound vEth is claimed before its adapter claims it")
	}
	if err := r.fi.ClaimVEth(32769, "Ethernet1/1", 1); !errors.Is(err, fabric.ErrNotBound) {
		t.Errorf("claim at the old binding = %v, want ErrNotBound", err)
	}
	if err := r.fi.RevertVEth(32769, "Ethernet1/2", 1, "Ethernet1/1", 1); err != nil {
		t.Fatalf("revert: %v", err)
	}
	v, _ = r.fi.VEth(32769)
	if v.ServerPort != "Ethernet1/1" || v.VIF != 1 || !v.Claimed || v.BaseEgressFrames != 0 {
		t.Fatalf("after revert: %s vif %d claimed %v base %d; want Ethernet1/1 vif 1, claimed, base 0", v.ServerPort, v.VIF, v.Claimed, v.BaseEgressFrames)
	}

	// A move that commits: the claim sets the base; a revert then fails.
	if err := r.fi.RebindVEth(32769, "Ethernet1/2", 1); err != nil {
		t.Fatal(err)
	}
	if err := r.fi.ClaimVEth(32769, "Ethernet1/2", 1); err != nil {
		t.Fatal(err)
	}
	if err := r.fi.ClaimVEth(32769, "Ethernet1/2", 1); err != nil {
		t.Errorf("second claim = %v, want nil", err)
	}
	v, _ = r.fi.VEth(32769)
	if !v.Claimed || v.BaseEgressFrames != 3 || v.BaseIngressFrames != 3 {
		t.Errorf("after claim: claimed %v base egress %d ingress %d; want claimed, 3/3", v.Claimed, v.BaseEgressFrames, v.BaseIngressFrames)
	}
	if err := r.fi.RevertVEth(32769, "Ethernet1/2", 1, "Ethernet1/1", 1); !errors.Is(err, fabric.ErrClaimed) {
		t.Errorf("revert after claim = %v, want ErrClaimed", err)
	}
	if err := r.fi.RevertVEth(32769, "Ethernet1/1", 1, "Ethernet1/2", 1); !errors.Is(err, fabric.ErrNotBound) {
		t.Errorf("revert from a place it is not = %v, want ErrNotBound", err)
	}
}

// TestClaimRevertRace: a claim and a revert racing for one rebinding; exactly
// one wins, every time.
func TestClaimRevertRace(t *testing.T) {
	r := newRig(t, 2, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	r.veth(32769, "Ethernet1/1", 1, mac(1), "web")
	src, dst := "Ethernet1/1", "Ethernet1/2"
	for i := range 200 {
		if err := r.fi.RebindVEth(32769, dst, 1); err != nil {
			t.Fatal(err)
		}
		var claimErr, revertErr error
		var wg sync.WaitGroup
		wg.Go(func() { claimErr = r.fi.ClaimVEth(32769, dst, 1) })
		wg.Go(func() { revertErr = r.fi.RevertVEth(32769, dst, 1, src, 1) })
		wg.Wait()
		if (claimErr == nil) == (revertErr == nil) {
			t.Fatalf("round %d: claim %v, revert %v; want exactly one to succeed", i, claimErr, revertErr)
		}
		v, _ := r.fi.VEth(32769)
		want := src
		if claimErr == nil {
			want = dst
		}
		if v.ServerPort != want || !v.Claimed {
			t.Fatalf("round %d: bound at %s claimed %v, want %s claimed", i, v.ServerPort, v.Claimed, want)
		}
		if v.ServerPort == dst { // back for the next round
			if err := r.fi.RebindVEth(32769, src, 1); err != nil {
				t.Fatal(err)
			}
			if err := r.fi.ClaimVEth(32769, src, 1); err != nil {
				t.Fatal(err)
			}
		}
	}
}
