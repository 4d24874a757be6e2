package vic_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/wire"
)

// verdict is what the adapter must do with a downstream frame.
type verdict int

const (
	toGuest verdict = iota // classified for the vNIC (its device may still filter it)
	badVNTag
	vifList
	unknownVif
	loopedSelf
)

func (v verdict) String() string {
	return [...]string{"deliver", "BadVNTag", "VifList", "UnknownVif", "LoopedSelf"}[v]
}

// downOracle is a naive model of the adapter's downstream rules, written
// from protocols.md §1 and the adapter's contract rather than from its code:
// a VN-Tag right after the MACs, at most one 802.1Q tag after it and no
// further tag, d=1, p=0, dvif naming the vNIC, no looped frame back to its
// own source; the VN-Tag is removed, and the 802.1Q tag when its VID is the
// vif's default VLAN (0: none). It returns the verdict and, for frames to
// deliver, the frame the guest must see (before padding).
func downOracle(f []byte, vif, defaultVLAN uint16) (verdict, []byte) {
	if len(f) < 20 || binary.BigEndian.Uint16(f[12:]) != wire.EtherTypeVNTag {
		return badVNTag, nil
	}
	w := binary.BigEndian.Uint32(f[14:])
	et := binary.BigEndian.Uint16(f[18:])
	hasVLAN, vid := false, uint16(0)
	if et == wire.EtherTypeVLAN {
		if len(f) < 24 {
			return badVNTag, nil
		}
		hasVLAN, vid = true, binary.BigEndian.Uint16(f[20:])&0x0FFF
		et = binary.BigEndian.Uint16(f[22:])
	}
	if et == wire.EtherTypeVLAN || et == wire.EtherTypeVNTag {
		return badVNTag, nil
	}
	d, p, dvif := w>>31 == 1, w>>30&1 == 1, uint16(w>>16)&0x3FFF
	looped, svif := w>>15&1 == 1, uint16(w)&0x0FFF
	switch {
	case !d:
		return badVNTag, nil
	case p:
		return vifList, nil
	case dvif != vif:
		return unknownVif, nil
	case looped && svif == dvif:
		return loopedSelf, nil
	}
	out := append(bytes.Clone(f[:12]), f[18:]...)
	if hasVLAN && defaultVLAN != 0 && vid == defaultVLAN {
		out = append(out[:12], out[16:]...)
	}
	return toGuest, out
}

// FuzzAdapterDownlink feeds arbitrary bytes to a started adapter as one
// frame from the FI, through the cable, to a vNIC driven by the real guest
// driver. The adapter must never panic, must account for the frame exactly
// once under the reason the oracle gives, and a frame that reaches the
// guest must be exactly the oracle's (zero-padded to 60 bytes).
func FuzzAdapterDownlink(f *testing.F) {
	const vif, defaultVLAN, otherVLAN = 5, 100, 200
	for _, seed := range [][]byte{
		downFrame(vif, 1, nil),
		downFrame(vif, 2, ptr(wire.TCI(3, defaultVLAN))),
		downFrame(vif, 3, ptr(wire.TCI(3, otherVLAN))),
		downFrame(vif+1, 4, nil),
		pushTags(probeFrame(vmMAC(vif), fiMAC, peerIP, vmIP(vif), wire.Probe{}, 0), &wire.VNTag{FromBridge: true, DVIF: vif, Looped: true, SVIF: vif}, nil),
		pushTags(probeFrame(vmMAC(vif), fiMAC, peerIP, vmIP(vif), wire.Probe{}, 0), &wire.VNTag{FromBridge: true, Pointer: true, DVIF: vif}, nil),
		probeFrame(vmMAC(vif), fiMAC, peerIP, vmIP(vif), wire.Probe{}, 0),
		downFrame(vif, 5, nil)[:19],
		{},
	} {
		f.Add(seed)
	}
	r := newRig(f, 0, 0)
	g := r.newVM(f, vif, vmOpts{keepLast: true, noRun: true})
	g.allowVLAN(otherVLAN)
	r.a.SetVifVLAN(vif, defaultVLAN)
	g.run()
	// total is how many frames the adapter has accounted for; in fuzzing
	// mode the rig lives across inputs, so it is a running count.
	total := func() uint64 {
		st := g.vnic.Stats()
		return dropTotal(r.a) + st.RxFrames + st.RxDropped
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) > link.MaxFrame {
			return // does not fit a link buffer: no cable carries it
		}
		want, out := downOracle(frame, vif, defaultVLAN)
		before, dBefore, vBefore := total(), dropsOf(r.a), g.vnic.Stats()
		r.sendDown(t, frame)
		waitUntil(t, "the frame to be accounted for", func() bool { return total() > before })
		if got := total(); got != before+1 {
			t.Fatalf("one frame accounted for %d times", got-before)
		}
		dAfter, vAfter := dropsOf(r.a), g.vnic.Stats()
		var got verdict
		switch {
		case dAfter.BadVNTag > dBefore.BadVNTag:
			got = badVNTag
		case dAfter.VifList > dBefore.VifList:
			got = vifList
		case dAfter.UnknownVif > dBefore.UnknownVif:
			got = unknownVif
		case dAfter.LoopedSelf > dBefore.LoopedSelf:
			got = loopedSelf
		default:
			got = toGuest
		}
		if got != want {
			t.Fatalf("adapter verdict %v, oracle %v for % x", got, want, frame)
		}
		if vAfter.RxFrames == vBefore.RxFrames {
			return // dropped, or filtered by the guest's device
		}
		waitUntil(t, "the guest to take the frame", func() bool { return uint64(g.wl.rx.Load()) >= vAfter.RxFrames })
		wantGuest := out
		if len(wantGuest) < wire.MinFrameLen {
			wantGuest = append(wantGuest, make([]byte, wire.MinFrameLen-len(wantGuest))...)
		}
		if last := g.wl.lastFrame(); !bytes.Equal(last, wantGuest) {
			t.Fatalf("guest got\n% x\nwant\n% x\nfor input % x", last, wantGuest, frame)
		}
		if d := vAfter.RxBytes - vBefore.RxBytes; d != uint64(len(out)) {
			t.Errorf("RxBytes grew by %d, want %d", d, len(out))
		}
	})
}

// TestDownOracleAgreesWithParseFabric cross-checks the fuzz oracle on the
// seed shapes against wire.ParseFabric, so that the oracle itself is tested.
func TestDownOracleAgreesWithParseFabric(t *testing.T) {
	frames := [][]byte{
		downFrame(5, 1, nil),
		downFrame(5, 2, ptr(wire.TCI(0, 100))),
		downFrame(6, 2, nil),
		probeFrame(vmMAC(5), fiMAC, peerIP, vmIP(5), wire.Probe{}, 0),
		{},
	}
	for i, f := range frames {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			v, _ := downOracle(f, 5, 100)
			var h wire.FabricHeader
			err := wire.ParseFabric(f, &h)
			parsedOK := err == nil && h.HasVNTag && h.VNTag.FromBridge
			if (v != badVNTag) != parsedOK {
				t.Errorf("oracle %v, ParseFabric err %v tag %+v", v, err, h.VNTag)
			}
		})
	}
}
