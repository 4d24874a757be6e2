package fabric_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/wire"
)

// modelVEth is the oracle's view of a vEth.
type modelVEth struct {
	id       uint32
	port     string
	vif      uint16
	mac      wire.MAC
	allowed  map[uint16]bool
	untagged uint16 // access or native VLAN; 0 = untagged frames dropped
}

// delivery names one expected arrival: frame id at a vEth (or the uplink,
// veth 0).
type delivery struct {
	id   uint32
	veth uint32
}

// TestVLANIsolationRandom checks the isolation invariant against a naive
// model: random vEths in random access and trunk profiles on random server
// ports, random frames. No frame ever reaches a vEth outside its VLAN, every
// allowed destination gets it exactly once, and every other frame is
// counted under the right reason.
func TestVLANIsolationRandom(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) { isolationRound(t, seed) })
	}
}

func isolationRound(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	const servers = 3
	r := newRig(t, servers, 1, fabric.Config{})
	pool := []uint16{10, 20, 30, 40}

	// Profiles: half access, half trunk with a random subset and maybe a
	// native VLAN (possibly outside the subset).
	type prof struct {
		name     string
		allowed  map[uint16]bool
		untagged uint16
	}
	var profs []prof
	for i := range 6 {
		p := prof{name: fmt.Sprintf("pp%d", i), allowed: map[uint16]bool{}}
		if i%2 == 0 {
			v := pool[rng.IntN(len(pool))]
			r.profile(fabric.PortProfile{Name: p.name, AccessVLAN: v})
			p.allowed[v], p.untagged = true, v
		} else {
			var list []uint16
			for _, v := range pool {
				if rng.IntN(2) == 0 {
					list = append(list, v)
					p.allowed[v] = true
				}
			}
			if rng.IntN(2) == 0 || len(list) == 0 {
				p.untagged = pool[rng.IntN(len(pool))]
				p.allowed[p.untagged] = true
			}
			r.profile(fabric.PortProfile{Name: p.name, Mode: fabric.ModeTrunk, AllowedVLANs: list, NativeVLAN: p.untagged})
		}
		profs = append(profs, p)
	}

	var veths []*modelVEth
	byPortVif := map[string]map[uint16]*modelVEth{}
	for i := range 14 {
		port := serverPortName(rng.IntN(servers))
		if byPortVif[port] == nil {
			byPortVif[port] = map[uint16]*modelVEth{}
		}
		vif := uint16(1 + rng.IntN(40))
		for byPortVif[port][vif] != nil {
			vif = uint16(1 + rng.IntN(40))
		}
		p := profs[rng.IntN(len(profs))]
		v := &modelVEth{id: uint32(32769 + i), port: port, vif: vif, mac: mac(0x1000 + i), allowed: p.allowed, untagged: p.untagged}
		r.veth(v.id, port, vif, v.mac, p.name)
		veths = append(veths, v)
		byPortVif[port][vif] = v
	}

	// Warm-up: every vEth announces itself in each of its VLANs, so the MAC
	// table holds (x, mac(u)) exactly when u carries x, and stays so.
	for _, v := range veths {
		for x := range v.allowed {
			r.send(v.port, v.vif, x, wire.Broadcast, v.mac, 0)
		}
	}
	r.settle()
	r.take()
	base := map[uint32]fabric.VEthCounters{}
	for _, vi := range r.fi.VEths() {
		base[vi.ID] = vi.Counters
	}

	// Random frames and the oracle's verdict on each.
	type txFrame struct {
		src  *modelVEth
		vlan uint16 // tag (0 = untagged)
		dst  wire.MAC
		id   uint32
	}
	const frames = 3000
	want := map[delivery]int{}
	wantVLAN := map[uint32]uint16{}
	srcOf := map[uint32]*modelVEth{}
	wantDrops := map[uint32]map[fabric.DropReason]uint64{}
	perPort := map[string][]txFrame{}
	for id := uint32(1); id <= frames; id++ {
		src := veths[rng.IntN(len(veths))]
		var vlan uint16
		if rng.IntN(5) != 0 {
			vlan = append(pool, 50)[rng.IntN(len(pool)+1)]
		}
		var dst wire.MAC
		switch k := rng.IntN(20); {
		case k < 5:
			dst = wire.Broadcast
		case k < 7:
			dst = wire.MAC{0x01, 0x00, 0x5e, 0, 0, byte(k)}
		case k < 10:
			dst = mac(0x2000 + rng.IntN(100)) // never a source: unknown
		case k < 11:
			dst = src.mac
		default:
			dst = veths[rng.IntN(len(veths))].mac
		}
		perPort[src.port] = append(perPort[src.port], txFrame{src, vlan, dst, id})
		srcOf[id] = src

		drop := func(r fabric.DropReason) {
			if wantDrops[src.id] == nil {
				wantDrops[src.id] = map[fabric.DropReason]uint64{}
			}
			wantDrops[src.id][r]++
		}
		x := vlan
		if x == 0 {
			x = src.untagged
		}
		if x == 0 || !src.allowed[x] {
			drop(fabric.DropVLANNotAllowed)
			continue
		}
		wantVLAN[id] = x
		var known *modelVEth
		for _, u := range veths {
			if u.mac == dst && u.allowed[x] {
				known = u
			}
		}
		switch {
		case known == src:
			drop(fabric.DropSamePort)
		case known != nil:
			want[delivery{id, known.id}]++
		default:
			for _, u := range veths {
				if u != src && u.allowed[x] {
					want[delivery{id, u.id}]++
				}
			}
			want[delivery{id, 0}]++ // the uplink carries every profile VLAN
		}
	}

	// Each adapter sends its frames on its own goroutine.
	var wg sync.WaitGroup
	for port, fs := range perPort {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, f := range fs {
				if err := r.end(port).Send(f.src.vif, f.vlan, uint8(f.id%8), frame(f.dst, f.src.mac, f.id)); err != nil {
					t.Errorf("send: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	r.settle()

	// Every arrival must be expected, in its VLAN, and not twice.
	got := map[delivery]int{}
	for port, fs := range r.take() {
		for _, f := range fs {
			id := frameID(f)
			var to uint32
			if port == uplinkName(0) {
				if f.HasVNTag {
					t.Errorf("frame %d reached the uplink with a VN-Tag", id)
				}
			} else {
				u := byPortVif[port][f.VNTag.DVIF]
				if u == nil || !f.VNTag.FromBridge {
					t.Errorf("frame %d on %s with tag %+v names no vEth", id, port, f.VNTag)
					continue
				}
				if !u.allowed[f.VLAN] {
					t.Errorf("ISOLATION: frame %d in VLAN %d reached Veth%d (VLANs %v)", id, f.VLAN, u.id, u.allowed)
				}
				to = u.id
				// Hairpin marking: svif and looped only back down the source's port.
				tag := downTag(u.vif, 0)
				if s := srcOf[id]; s != nil && s.port == port {
					tag = downTag(u.vif, s.vif)
				}
				if f.VNTag != tag {
					t.Errorf("frame %d to Veth%d: VN-Tag %+v, want %+v", id, u.id, f.VNTag, tag)
				}
			}
			if f.VLAN != wantVLAN[id] || f.PCP != uint8(id%8) {
				t.Errorf("frame %d arrived at %d in VLAN %d PCP %d, want VLAN %d PCP %d", id, to, f.VLAN, f.PCP, wantVLAN[id], id%8)
			}
			got[delivery{id, to}]++
		}
	}
	var missing, extra []delivery
	for d, n := range want {
		if got[d] < n {
			missing = append(missing, d)
		}
	}
	for d, n := range got {
		if n > want[d] {
			extra = append(extra, d)
		}
	}
	if len(missing)+len(extra) > 0 {
		t.Errorf("%d deliveries missing (e.g. %v), %d unexpected or duplicated (e.g. %v)",
			len(missing), missing[:min(len(missing), 5)], len(extra), extra[:min(len(extra), 5)])
	}

	// Counters agree with the oracle.
	for _, vi := range r.fi.VEths() {
		b := base[vi.ID]
		var sent, rcvd uint64
		for _, f := range slices.Concat(perPort[serverPortName(0)], perPort[serverPortName(1)], perPort[serverPortName(2)]) {
			if f.src.id == vi.ID {
				sent++
			}
		}
		for d, n := range want {
			if d.veth == vi.ID {
				rcvd += uint64(n)
			}
		}
		if d := vi.Counters.IngressFrames - b.IngressFrames; d != sent {
			t.Errorf("%s ingress = %d, want %d", vi.Name, d, sent)
		}
		if d := vi.Counters.EgressFrames - b.EgressFrames; d != rcvd {
			t.Errorf("%s egress = %d, want %d", vi.Name, d, rcvd)
		}
		for reason := range fabric.NumDropReasons {
			dr := fabric.DropReason(reason)
			if d := vi.Counters.Drops[dr] - b.Drops[dr]; d != wantDrops[vi.ID][dr] {
				t.Errorf("%s %v = %d, want %d", vi.Name, dr, d, wantDrops[vi.ID][dr])
			}
		}
	}
	if u := r.fi.Stats().Unattributed; u.Total() != 0 {
		t.Errorf("unattributed drops: %v", u)
	}
}
