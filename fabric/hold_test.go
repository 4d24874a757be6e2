package fabric_test

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/fabric/fabrictest"
	"github.com/vmfex/vmfex/wire"
)

// idsFrom returns the ids of the test frames in fs whose source is src and
// whose VN-Tag names dvif, in arrival order, and fails on any other tag.
func idsFrom(t *testing.T, where string, fs []fabrictest.Frame, src wire.MAC, tag wire.VNTag) []uint32 {
	t.Helper()
	var ids []uint32
	for _, f := range fs {
		if f.Src != src || f.EtherType != testEtherType {
			continue
		}
		if !f.HasVNTag || f.VNTag != tag || !f.HasVLAN || f.VLAN != 10 {
			t.Errorf("%s: frame %d tag %+v vlan %d, want %+v vlan 10", where, frameID(f), f.VNTag, f.VLAN, tag)
		}
		ids = append(ids, frameID(f))
	}
	return ids
}

// checkSeq asserts that ids are first, first+1, ... first+n-1.
func checkSeq(t *testing.T, where string, ids []uint32, first uint32, n int) {
	t.Helper()
	if len(ids) != n {
		t.Errorf("%s: %d frames, want %d", where, len(ids), n)
	}
	for i, id := range ids {
		if id != first+uint32(i) {
			t.Errorf("%s: frame %d has id %d, want %d (lost, duplicated or reordered)", where, i, id, first+uint32(i))
			return
		}
	}
}

func (r *rig) vethInfo(id uint32) fabric.VEthInfo {
	r.t.Helper()
	v, ok := r.fi.VEth(id)
	if !ok {
		r.t.Fatalf("VEth(%d) missing", id)
	}
	return v
}

// TestHoldRebindRelease is a migration as the FI sees it: hold, rebind to
// another server port and vif, release. Frames sent to the vEth from
// another server port and from an uplink while it is held must all arrive
// at the new place, once, in order, re-tagged for it, before the frames
// sent after the release.
func TestHoldRebindRelease(t *testing.T) {
	r := newRig(t, 3, 1, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	vm, peer, lan := mac(1), mac(2), mac(0x99)
	r.veth(100, "Ethernet1/1", 5, vm, "web")
	r.veth(200, "Ethernet1/2", 1, peer, "web")
	const learn = 0xffff0000
	r.send("Ethernet1/1", 5, 0, wire.Broadcast, vm, learn)
	r.send("Ethernet1/2", 1, 0, wire.Broadcast, peer, learn)
	r.send("Ethernet1/17", 0, 10, wire.Broadcast, lan, learn)
	r.settle()
	r.take()
	before := r.counters(100)

	tk, err := r.fi.HoldVEth(100)
	if err != nil {
		t.Fatal(err)
	}
	if tk.EgressFrames != before.EgressFrames {
		t.Errorf("ticket EgressFrames = %d, want %d", tk.EgressFrames, before.EgressFrames)
	}
	const n = 20
	for i := range uint32(n) {
		r.send("Ethernet1/2", 1, 0, vm, peer, i)
		r.send("Ethernet1/17", 0, 10, vm, lan, 1000+i)
	}
	r.settle()
	for port, fs := range r.take() {
		if len(fs) != 0 {
			t.Errorf("%s received %d frames while the vEth is held", port, len(fs))
		}
	}
	info := r.vethInfo(100)
	if !info.Held || info.HeldFrames != 2*n {
		t.Errorf("held = %v, %d frames; want true, %d", info.Held, info.HeldFrames, 2*n)
	}
	if info.Counters.EgressFrames != before.EgressFrames {
		t.Errorf("egress frames moved while held: %d, want %d", info.Counters.EgressFrames, before.EgressFrames)
	}

	if err := r.fi.RebindVEth(100, "Ethernet1/3", 7); err != nil {
		t.Fatal(err)
	}
	if info := r.vethInfo(100); !info.Held || info.HeldFrames != 2*n || info.ServerPort != "Ethernet1/3" {
		t.Errorf("after rebind: %s held=%v %d frames; want Ethernet1/3, true, %d",
			info.ServerPort, info.Held, info.HeldFrames, 2*n)
	}
	if err := r.fi.ReleaseVEth(100); err != nil {
		t.Fatal(err)
	}
	for i := range uint32(n) {
		r.send("Ethernet1/2", 1, 0, vm, peer, n+i)
		r.send("Ethernet1/17", 0, 10, vm, lan, 1000+n+i)
	}
	r.settle()
	got := r.take()
	if fs := got["Ethernet1/1"]; len(fs) != 0 {
		t.Errorf("the old port received %d frames", len(fs))
	}
	fs := got["Ethernet1/3"]
	checkSeq(t, "from Ethernet1/2", idsFrom(t, "Ethernet1/3", fs, peer, downTag(7, 0)), 0, 2*n)
	checkSeq(t, "from the uplink", idsFrom(t, "Ethernet1/3", fs, lan, downTag(7, 0)), 1000, 2*n)
	// The held frames come first, whatever their source.
	for i, f := range fs[:min(len(fs), 2*n)] {
		if id := frameID(f); id%1000 >= n {
			t.Errorf("frame %d at the new port has id %d: sent after the release, but ahead of held frames", i, id)
		}
	}
	info = r.vethInfo(100)
	if info.Held || info.HeldFrames != 0 {
		t.Errorf("after release: held = %v, %d frames", info.Held, info.HeldFrames)
	}
	if want := before.EgressFrames + 4*n; info.Counters.EgressFrames != want {
		t.Errorf("egress frames = %d, want %d", info.Counters.EgressFrames, want)
	}
	if d := r.fi.Stats().Drops; d.Total() != 0 {
		t.Errorf("drops: %v", d)
	}
}

// TestHoldReleaseHairpin rebinds a held vEth to the server port its
// sender is on: the held frames go back down that port, so they must carry
// the sender's svif and looped=1; those from the uplink must not.
func TestHoldReleaseHairpin(t *testing.T) {
	r := newRig(t, 2, 1, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	vm, peer, lan := mac(1), mac(2), mac(0x99)
	r.veth(100, "Ethernet1/1", 5, vm, "web")
	r.veth(200, "Ethernet1/2", 1, peer, "web")
	r.send("Ethernet1/1", 5, 0, wire.Broadcast, vm, 0xffff0000)
	r.settle()
	r.take()
	if _, err := r.fi.HoldVEth(100); err != nil {
		t.Fatal(err)
	}
	const n = 5
	for i := range uint32(n) {
		r.send("Ethernet1/2", 1, 0, vm, peer, i)
		r.send("Ethernet1/17", 0, 10, vm, lan, 1000+i)
	}
	r.settle()
	if err := r.fi.RebindVEth(100, "Ethernet1/2", 9); err != nil {
		t.Fatal(err)
	}
	if err := r.fi.ReleaseVEth(100); err != nil {
		t.Fatal(err)
	}
	r.settle()
	got := r.take()
	fs := got["Ethernet1/2"]
	checkSeq(t, "hairpin", idsFrom(t, "Ethernet1/2", fs, peer, downTag(9, 1)), 0, n)
	checkSeq(t, "from the uplink", idsFrom(t, "Ethernet1/2", fs, lan, downTag(9, 0)), 1000, n)
	if len(got["Ethernet1/1"]) != 0 {
		t.Errorf("the old port received %d frames", len(got["Ethernet1/1"]))
	}
}

// TestHoldUnderTraffic streams numbered frames to a vEth while it is held,
// rebound and released again and again, each time to a new (port, vif) and
// sometimes with the VM announcing itself from the new place before the
// release, as the destination's RARP does. Every frame must arrive once,
// and the concatenation of what each binding received, in binding order,
// must be the stream in order.
func TestHoldUnderTraffic(t *testing.T) {
	r := newRig(t, 3, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	vm, peer := mac(1), mac(2)
	type bind struct {
		port string
		vif  uint16
	}
	binds := []bind{{"Ethernet1/1", 10}}
	r.veth(100, binds[0].port, binds[0].vif, vm, "web")
	r.veth(200, "Ethernet1/2", 1, peer, "web")
	const announce = 0xffff0000
	r.send(binds[0].port, binds[0].vif, 0, wire.Broadcast, vm, announce)
	r.settle()

	const total, cycles = 4000, 40
	var sent atomic.Uint32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range uint32(total) {
			if err := r.end("Ethernet1/2").Send(1, 0, 0, frame(vm, peer, i)); err != nil {
				t.Error(err)
				return
			}
			sent.Store(i + 1)
		}
	}()
	// progress waits until the sender has sent at least k frames (or has
	// stopped), so that every cycle has traffic in flight around it.
	progress := func(k uint32) {
		deadline := time.Now().Add(settleTimeout)
		for sent.Load() < k {
			select {
			case <-done:
				return
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("sender stuck at %d frames", sent.Load())
			}
			runtime.Gosched()
		}
	}
	// announced sends the VM's announcement from its binding and waits
	// until the FI has processed it, before the VM moves again.
	announced := func(b bind) {
		r.send(b.port, b.vif, 0, wire.Broadcast, vm, announce)
		e := r.end(b.port)
		deadline := time.Now().Add(settleTimeout)
		for pi, _ := r.fi.Port(b.port); pi.Stats.InFrames != e.Sent(); pi, _ = r.fi.Port(b.port) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: announcement not processed", b.port)
			}
			runtime.Gosched()
		}
	}
	for c := 1; c <= cycles; c++ {
		progress(uint32(c * total / (cycles + 2)))
		if _, err := r.fi.HoldVEth(100); err != nil {
			t.Fatal(err)
		}
		nb := bind{[]string{"Ethernet1/1", "Ethernet1/3"}[c%2], uint16(10 + c)}
		if err := r.fi.RebindVEth(100, nb.port, nb.vif); err != nil {
			t.Fatal(err)
		}
		binds = append(binds, nb)
		if c%2 == 0 {
			announced(nb)
		}
		if err := r.fi.ReleaseVEth(100); err != nil {
			t.Fatal(err)
		}
		if c%2 == 1 {
			announced(nb)
		}
	}
	<-done
	r.settle()

	var all []uint32
	for i, b := range binds {
		var ids []uint32
		for _, f := range r.end(b.port).Frames() {
			if f.Src == peer && f.VNTag.DVIF == b.vif {
				ids = append(ids, frameID(f))
			}
		}
		if len(ids) > 0 && len(all) > 0 && ids[0] <= all[len(all)-1] {
			t.Errorf("binding %d (%s vif %d) starts at frame %d, but an earlier binding had %d",
				i, b.port, b.vif, ids[0], all[len(all)-1])
		}
		all = append(all, ids...)
	}
	checkSeq(t, "across all bindings", all, 0, total)
	if d := r.fi.Stats().Drops; d.Total() != 0 {
		t.Errorf("drops: %v", d)
	}
	if info := r.vethInfo(100); info.Held || info.Counters.EgressFrames != total {
		t.Errorf("held = %v, egress frames = %d; want false, %d", info.Held, info.Counters.EgressFrames, total)
	}
}

// TestHoldCountBarrier holds a vEth while a stream flows to it: the old
// adapter must receive exactly ticket.EgressFrames frames for the vif,
// never more, and the rest must be held and then released in order.
func TestHoldCountBarrier(t *testing.T) {
	r := newRig(t, 2, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	vm, peer := mac(1), mac(2)
	r.veth(100, "Ethernet1/1", 5, vm, "web")
	r.veth(200, "Ethernet1/2", 1, peer, "web")
	r.send("Ethernet1/1", 5, 0, wire.Broadcast, vm, 0xffff0000)
	r.send("Ethernet1/2", 1, 0, wire.Broadcast, peer, 0xffff0000) // vif 5 receives it: 1 frame
	r.settle()
	old := r.end("Ethernet1/1")
	arrived := func() uint64 {
		n := uint64(0)
		for _, f := range old.Frames() {
			if f.HasVNTag && f.VNTag.DVIF == 5 {
				n++
			}
		}
		return n
	}

	const total = 3000
	var sent atomic.Uint32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range uint32(total) {
			if err := r.end("Ethernet1/2").Send(1, 0, 0, frame(vm, peer, i)); err != nil {
				t.Error(err)
				return
			}
			sent.Store(i + 1)
		}
	}()
	for sent.Load() < total/3 {
		select {
		case <-done:
			t.Fatal("sender stopped")
		default:
		}
		runtime.Gosched()
	}
	tk, err := r.fi.HoldVEth(100)
	if err != nil {
		t.Fatal(err)
	}
	// The adapter reaches the barrier (the frames are on the cable) and
	// never passes it.
	deadline := time.Now().Add(settleTimeout)
	for {
		n := arrived()
		if n > tk.EgressFrames {
			t.Fatalf("old adapter received %d frames, past the barrier %d", n, tk.EgressFrames)
		}
		if n == tk.EgressFrames {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("old adapter stuck at %d frames, barrier %d", n, tk.EgressFrames)
		}
		runtime.Gosched()
	}
	<-done
	r.settle()
	if n := arrived(); n != tk.EgressFrames {
		t.Fatalf("old adapter received %d frames, barrier %d", n, tk.EgressFrames)
	}
	info := r.vethInfo(100)
	if want := total + 1 - int(tk.EgressFrames); info.HeldFrames != want || info.Counters.EgressFrames != tk.EgressFrames {
		t.Errorf("held %d frames, egress %d; want %d, %d", info.HeldFrames, info.Counters.EgressFrames, want, tk.EgressFrames)
	}
	if err := r.fi.ReleaseVEth(100); err != nil {
		t.Fatal(err)
	}
	r.settle()
	checkSeq(t, "old port", idsFrom(t, "Ethernet1/1", old.Frames(), peer, downTag(5, 0))[1:], 0, total)
}

// TestHoldLimitsAndErrors covers hold-overflow, a flood copy being held,
// a double hold, releasing what is not held, unknown vEths and deleting a
// held vEth.
func TestHoldLimitsAndErrors(t *testing.T) {
	r := newRig(t, 2, 0, fabric.Config{HoldLimit: 4})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	vm, peer := mac(1), mac(2)
	r.veth(100, "Ethernet1/1", 5, vm, "web")
	r.veth(200, "Ethernet1/2", 1, peer, "web")
	r.send("Ethernet1/1", 5, 0, wire.Broadcast, vm, 0xffff0000)
	r.settle()
	r.take()

	if _, err := r.fi.HoldVEth(999); !errors.Is(err, fabric.ErrUnknownVEth) {
		t.Errorf("HoldVEth(999) = %v, want ErrUnknownVEth", err)
	}
	if err := r.fi.ReleaseVEth(999); !errors.Is(err, fabric.ErrUnknownVEth) {
		t.Errorf("ReleaseVEth(999) = %v, want ErrUnknownVEth", err)
	}
	if err := r.fi.ReleaseVEth(100); err != nil {
		t.Errorf("ReleaseVEth of a vEth not held = %v, want nil", err)
	}

	tk1, err := r.fi.HoldVEth(100)
	if err != nil {
		t.Fatal(err)
	}
	r.send("Ethernet1/2", 1, 0, wire.Broadcast, peer, 0) // a flood copy is held too
	for i := range uint32(9) {
		r.send("Ethernet1/2", 1, 0, vm, peer, 1+i)
	}
	// The hold keeps 4 frames; beyond that the port's reader waits (a
	// hold pushes back like the lossless cables) instead of dropping.
	deadline := time.Now().Add(10 * time.Second)
	for r.vethInfo(100).HeldFrames < 4 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	tk2, err := r.fi.HoldVEth(100) // idempotent
	if err != nil || tk2 != tk1 {
		t.Errorf("second HoldVEth = %+v, %v; want %+v, nil", tk2, err, tk1)
	}
	info := r.vethInfo(100)
	if !info.Held || info.HeldFrames != 4 {
		t.Errorf("held = %v, %d frames; want true, 4", info.Held, info.HeldFrames)
	}
	if d := r.fi.Stats().Drops[fabric.DropHoldOverflow]; d != 0 {
		t.Errorf("FI hold-overflow drops = %d, want 0 (backpressure, not loss)", d)
	}
	if err := r.fi.ReleaseVEth(100); err != nil {
		t.Fatal(err)
	}
	r.settle()
	checkSeq(t, "released", idsFrom(t, "Ethernet1/1", r.end("Ethernet1/1").Take(), peer, downTag(5, 0)), 0, 10)

	// Deleting a held vEth drops what it holds, unattributed since the
	// vEth's counters go with it.
	if _, err := r.fi.HoldVEth(100); err != nil {
		t.Fatal(err)
	}
	for i := range uint32(3) {
		r.send("Ethernet1/2", 1, 0, vm, peer, 100+i)
	}
	r.settle()
	if err := r.fi.DeleteVEth(100); err != nil {
		t.Fatal(err)
	}
	st := r.fi.Stats()
	if st.Drops[fabric.DropVEthDeleted] != 3 || st.Unattributed[fabric.DropVEthDeleted] != 3 {
		t.Errorf("veth-deleted drops = %d (unattributed %d), want 3",
			st.Drops[fabric.DropVEthDeleted], st.Unattributed[fabric.DropVEthDeleted])
	}
	r.settle()
	if fs := r.end("Ethernet1/1").Take(); len(fs) != 0 {
		t.Errorf("a deleted held vEth's port received %d frames", len(fs))
	}
	if _, err := r.fi.HoldVEth(100); !errors.Is(err, fabric.ErrUnknownVEth) {
		t.Errorf("HoldVEth of a deleted vEth = %v, want ErrUnknownVEth", err)
	}
	// The vif can be bound again and works normally.
	r.veth(101, "Ethernet1/1", 5, vm, "web")
	r.send("Ethernet1/2", 1, 0, vm, peer, 7)
	r.settle()
	checkSeq(t, "new vEth", idsFrom(t, "Ethernet1/1", r.end("Ethernet1/1").Take(), peer, downTag(5, 0)), 7, 1)

	var wg sync.WaitGroup // hold and release race with each other harmlessly
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if _, err := r.fi.HoldVEth(101); err != nil {
					t.Error(err)
				}
				if err := r.fi.ReleaseVEth(101); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if r.fi.Close() != nil {
		t.Error("Close failed")
	}
	if _, err := r.fi.HoldVEth(101); !errors.Is(err, fabric.ErrClosed) {
		t.Errorf("HoldVEth after Close = %v, want ErrClosed", err)
	}
}
