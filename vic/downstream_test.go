package vic_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/vmfex/vmfex/wire"
)

// stripExpect is what a guest must see of a downstream frame f (VN-Tag
// first, as the FI sends it): without the VN-Tag, and without the 802.1Q
// tag when it carries the vif's default VLAN.
func stripExpect(f []byte, defaultVLAN uint16) []byte {
	out := append(bytes.Clone(f[:12]), f[12+wire.VNTagLen:]...)
	if defaultVLAN != 0 && binary.BigEndian.Uint16(out[12:]) == wire.EtherTypeVLAN &&
		binary.BigEndian.Uint16(out[14:])&wire.VIDMask == defaultVLAN {
		out = append(out[:12:12], out[16:]...)
	}
	return out
}

// TestDownstreamDelivery: VN-Tagged frames with d=1 reach the vNIC their
// dvif names among several, exactly once and in order; the VN-Tag is
// stripped, the 802.1Q tag too when it is the vif's default VLAN, and any
// other tag is kept.
func TestDownstreamDelivery(t *testing.T) {
	r := newRig(t, 0, 0)
	type vifCfg struct {
		vif, vlan uint16
		allow     []uint16 // VLANs the guest's filter admits besides 0
	}
	cfgs := []vifCfg{{1, 100, nil}, {2, 0, []uint16{55}}, {3, 200, []uint16{300}}, {wire.MaxSVIF, 4094, nil}}
	vms := map[uint16]*vm{}
	for _, c := range cfgs {
		g := r.newVM(t, c.vif, vmOpts{keep: true, noRun: true})
		for _, v := range c.allow {
			g.allowVLAN(v)
		}
		r.a.SetVifVLAN(c.vif, c.vlan)
		g.run()
		vms[c.vif] = g
	}
	type kind struct {
		name string
		vif  uint16
		tci  *uint16
		vlan uint16 // the vif's default
	}
	kinds := []kind{
		{"default-vlan-stripped", 1, ptr(wire.TCI(0, 100)), 100},
		{"default-vlan-with-pcp-stripped", 1, ptr(wire.TCI(5, 100)), 100},
		{"untagged", 1, nil, 100},
		{"vlan0-untagged", 2, nil, 0},
		{"vlan0-other-vlan-kept", 2, ptr(wire.TCI(2, 55)), 0},
		{"vlan0-priority-tag-kept", 2, ptr(wire.TCI(6, 0)), 0},
		{"other-vlan-kept", 3, ptr(wire.TCI(3, 300)), 200},
		{"default-vlan-stripped-3", 3, ptr(wire.TCI(0, 200)), 200},
		{"max-vif-vlan4094-stripped", wire.MaxSVIF, ptr(wire.TCI(1, 4094)), 4094},
	}
	const rounds = 150
	var frames [][]byte
	want := map[uint16][][]byte{}
	seq := map[uint16]uint64{}
	for round := 0; round < rounds; round++ {
		for _, k := range kinds {
			f := downFrame(k.vif, seq[k.vif], k.tci)
			seq[k.vif]++
			frames = append(frames, f)
			want[k.vif] = append(want[k.vif], stripExpect(f, k.vlan))
		}
	}
	r.sendDown(t, frames...)
	for _, c := range cfgs {
		g := vms[c.vif]
		n := len(want[c.vif])
		waitUntil(t, fmt.Sprintf("%d frames in vif %d's guest", n, c.vif), func() bool { return g.wl.rx.Load() >= int64(n) })
	}
	for _, c := range cfgs {
		t.Run(fmt.Sprintf("vif%d", c.vif), func(t *testing.T) {
			g := vms[c.vif]
			got := g.wl.receivedFrames()
			if len(got) != len(want[c.vif]) {
				t.Fatalf("guest received %d frames, want %d", len(got), len(want[c.vif]))
			}
			var bytesWant uint64
			for i := range got {
				if !bytes.Equal(got[i], want[c.vif][i]) {
					t.Fatalf("frame %d:\n got % x\nwant % x", i, got[i], want[c.vif][i])
				}
				bytesWant += uint64(len(want[c.vif][i]))
			}
			checkSeqs(t, "guest", g.wl.received(), len(got))
			st := g.vnic.Stats()
			if st.RxFrames != uint64(len(got)) || st.RxBytes != bytesWant || st.RxDropped != 0 {
				t.Errorf("vNIC stats %+v, want RxFrames %d RxBytes %d, no drops", st, len(got), bytesWant)
			}
			if ds := g.drv.Stats(); ds.RxPackets != uint64(len(got)) || ds.RxErrors != 0 {
				t.Errorf("driver stats %+v", ds)
			}
		})
	}
	if d := dropsOf(r.a); d != (drops{}) {
		t.Errorf("adapter drops %+v, want none", d)
	}
}

// TestDownstreamDrops: frames the adapter must not deliver are dropped and
// counted under their reason, and never reach a guest. Each case is
// followed by a good frame to the same vNIC, which must arrive: the rx
// engine processes in order, so once it is in the guest the bad frame has
// been handled.
func TestDownstreamDrops(t *testing.T) {
	r := newRig(t, 0, 0)
	const vif, other = 5, 6
	g := r.newVM(t, vif, vmOpts{keep: true})
	r.newVM(t, other, vmOpts{})
	r.a.SetVifVLAN(vif, 100)
	good := func(seq uint64) []byte { return downFrame(vif, seq, nil) }
	plain := probeFrame(vmMAC(vif), fiMAC, peerIP, vmIP(vif), wire.Probe{Seq: 1 << 40}, 0)
	tag := func(vn wire.VNTag) []byte { return pushTags(plain, &vn, nil) }
	withWord := func(w uint32) []byte {
		f := tag(wire.VNTag{FromBridge: true, DVIF: vif})
		binary.BigEndian.PutUint32(f[14:], w)
		return f
	}
	full := tag(wire.VNTag{FromBridge: true, DVIF: vif})
	stacked := pushTags(tag(wire.VNTag{FromBridge: true, DVIF: vif}), &wire.VNTag{FromBridge: true, DVIF: vif}, nil)
	qinq := pushTags(pushTags(plain, nil, ptr(wire.TCI(0, 100))), &wire.VNTag{FromBridge: true, DVIF: vif}, ptr(wire.TCI(0, 100)))
	// 802.1Q first, then a VN-Tag: the VN-Tag must sit right after the MACs.
	vlanThenVN := append(bytes.Clone(plain[:12]), 0x81, 0x00, 0x00, 100, 0x89, 0x26, 0x80, 0x05, 0x00, 0x00)
	vlanThenVN = append(vlanThenVN, plain[12:]...)
	tests := []struct {
		name  string
		frame []byte
		want  drops
	}{
		{"no-vntag", plain, drops{BadVNTag: 1}},
		{"dot1q-only", pushTags(plain, nil, ptr(wire.TCI(0, 100))), drops{BadVNTag: 1}},
		{"d0-to-bridge", tag(wire.VNTag{DVIF: vif, SVIF: 9}), drops{BadVNTag: 1}},
		{"d0-svif-is-vif", tag(wire.VNTag{SVIF: vif}), drops{BadVNTag: 1}},
		{"p1-vif-list", tag(wire.VNTag{FromBridge: true, Pointer: true, DVIF: vif}), drops{VifList: 1}},
		{"p1-unknown-list", tag(wire.VNTag{FromBridge: true, Pointer: true, DVIF: 999}), drops{VifList: 1}},
		{"unknown-dvif", tag(wire.VNTag{FromBridge: true, DVIF: 99}), drops{UnknownVif: 1}},
		{"dvif0", tag(wire.VNTag{FromBridge: true, DVIF: 0}), drops{UnknownVif: 1}},
		{"dvif-beyond-svif-range", tag(wire.VNTag{FromBridge: true, DVIF: 0x1000 | vif}), drops{UnknownVif: 1}},
		{"dvif-max", tag(wire.VNTag{FromBridge: true, DVIF: wire.MaxDVIF}), drops{UnknownVif: 1}},
		{"looped-to-self", tag(wire.VNTag{FromBridge: true, DVIF: vif, Looped: true, SVIF: vif}), drops{LoopedSelf: 1}},
		{"looped-to-self-unknown", tag(wire.VNTag{FromBridge: true, DVIF: 77, Looped: true, SVIF: 77}), drops{UnknownVif: 1}},
		{"empty", nil, drops{BadVNTag: 1}},
		{"one-byte", []byte{0x02}, drops{BadVNTag: 1}},
		{"13-bytes", full[:13], drops{BadVNTag: 1}},
		{"header-only-vntag-type", full[:14], drops{BadVNTag: 1}},
		{"vntag-word-cut", full[:17], drops{BadVNTag: 1}},
		{"vntag-no-ethertype", full[:18], drops{BadVNTag: 1}},
		{"vntag-then-cut-dot1q", pushTags(plain, &wire.VNTag{FromBridge: true, DVIF: vif}, ptr(wire.TCI(0, 100)))[:22], drops{BadVNTag: 1}},
		{"stacked-vntag", stacked, drops{BadVNTag: 1}},
		{"qinq-after-vntag", qinq, drops{BadVNTag: 1}},
		{"vntag-after-dot1q", vlanThenVN, drops{BadVNTag: 1}},
		{"reserved-bit-ignored", withWord(0x80000000 | vif<<16 | 1<<14), drops{}},
		{"looped-other-svif-delivered", tag(wire.VNTag{FromBridge: true, DVIF: vif, Looped: true, SVIF: other}), drops{}},
	}
	var seq uint64
	delivered := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dropsOf(r.a)
			rxBefore := g.wl.rx.Load()
			r.sendDown(t, tt.frame, good(seq))
			seq++
			wantRx := rxBefore + 1
			if tt.want == (drops{}) {
				wantRx++ // a positive control: the frame itself is delivered
			}
			waitUntil(t, "the good frame after it", func() bool { return g.wl.rx.Load() >= wantRx })
			after := dropsOf(r.a)
			got := drops{after.BadVNTag - before.BadVNTag, after.UnknownVif - before.UnknownVif,
				after.VifList - before.VifList, after.LoopedSelf - before.LoopedSelf, after.TxTagFail - before.TxTagFail}
			if got != tt.want {
				t.Errorf("drops %+v, want %+v", got, tt.want)
			}
			if n := g.wl.rx.Load(); n != wantRx {
				t.Errorf("guest received %d frames, want %d", n, wantRx)
			}
			delivered = int(wantRx)
		})
	}
	// Only the good frames and the two positive controls reached the guest.
	frames := g.wl.receivedFrames()
	if len(frames) != delivered {
		t.Fatalf("guest has %d frames, want %d", len(frames), delivered)
	}
	goodSeen := 0
	for _, f := range frames {
		p, ok := wire.ParseProbeFrame(f)
		switch {
		case !ok:
			t.Errorf("guest received a frame that is not an intact probe: % x", f)
		case p.Seq == 1<<40:
			// a positive control
		case p.Seq != uint64(goodSeen):
			t.Errorf("guest received good frame %d with seq %d", goodSeen, p.Seq)
			goodSeen++
		default:
			goodSeen++
		}
	}
	if goodSeen != len(tests) {
		t.Errorf("guest received %d good frames, want %d", goodSeen, len(tests))
	}
	if st := g.vnic.Stats(); st.RxDropped != 0 {
		t.Errorf("vNIC RxDropped = %d, want 0", st.RxDropped)
	}
}

// TestDownstreamGarbage sends random frames, many of them VN-Tagged with
// random tag words, mixed with good ones: the adapter never panics, and
// every frame is accounted for once, as an adapter drop or as a frame the
// vNIC took (written to the guest or dropped by its filters).
func TestDownstreamGarbage(t *testing.T) {
	r := newRig(t, 0, 0)
	const vif = 3
	g := r.newVM(t, vif, vmOpts{})
	r.a.SetVifVLAN(vif, 10)
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 4000
	frames := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		var f []byte
		switch rng.IntN(4) {
		case 0: // pure garbage
			f = make([]byte, rng.IntN(100))
			for j := range f {
				f[j] = byte(rng.Uint32())
			}
		case 1: // a good frame, cut anywhere
			f = downFrame(vif, uint64(i), ptr(wire.TCI(0, 10)))
			f = f[:rng.IntN(len(f)+1)]
		default: // a random tag word, maybe for this vif
			w := rng.Uint32()
			if rng.IntN(2) == 0 {
				w = w&^(wire.MaxDVIF<<16) | vif<<16
			}
			f = downFrame(vif, uint64(i), nil)
			binary.BigEndian.PutUint32(f[14:], w)
		}
		frames = append(frames, f)
	}
	r.sendDown(t, frames...)
	accounted := func() uint64 {
		st := g.vnic.Stats()
		return dropTotal(r.a) + st.RxFrames + st.RxDropped
	}
	waitUntil(t, "every frame accounted for", func() bool { return accounted() >= n })
	if got := accounted(); got != n {
		t.Errorf("accounted for %d frames, want %d (drops %+v, vNIC %+v)", got, n, dropsOf(r.a), g.vnic.Stats())
	}
	st := g.vnic.Stats()
	waitUntil(t, "the guest to take what the vNIC wrote", func() bool { return g.wl.rx.Load() >= int64(st.RxFrames) })
	t.Logf("drops %+v, vNIC %+v", dropsOf(r.a), st)
}
