package fabric

import (
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/vmfex/vmfex/wire"
)

// TestMACTableOracle drives the MAC table and a naive map with the same
// random operations (learn, lookup, age out, flushes, clock steps) and
// compares every answer.
func TestMACTableOracle(t *testing.T) {
	const aging = 300 * time.Second
	type entry struct {
		dst  macDst
		seen int64
	}
	for seed := uint64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		tab := newMACTable(aging)
		model := map[macKey]entry{}
		var moves uint64
		now := int64(1_000_000_000_000)
		expired := func(e entry) bool { return now-e.seen > int64(aging) }
		keys := make([]macKey, 0, 24)
		for _, vlan := range []uint16{1, 2, 4094} {
			for m := range 8 {
				keys = append(keys, makeMACKey(vlan, wire.MAC{2, 0, 0, 0, 0, byte(m)}))
			}
		}
		dsts := []macDst{vethDst(0, 1), vethDst(1, 2), vethDst(0, 3), uplinkDst(4)}
		for step := range 3000 {
			k := keys[rng.IntN(len(keys))]
			d := dsts[rng.IntN(len(dsts))]
			switch op := rng.IntN(100); {
			case op < 40:
				tab.learn(k, d, now)
				e, ok := model[k]
				if !ok {
					model[k] = entry{d, now}
					break
				}
				if e.dst != d {
					if !expired(e) {
						moves++
					}
					e.dst = d
				}
				if now-e.seen >= seenGranularity || expired(e) {
					e.seen = now
				}
				model[k] = e
			case op < 75:
				got, gotOK := tab.lookup(k, now)
				e, ok := model[k]
				if ok && expired(e) {
					delete(model, k)
					ok = false
				}
				if gotOK != ok || (ok && got != e.dst) {
					t.Fatalf("seed %d step %d: lookup(%#x) = %#x %v, model %#x %v", seed, step, k, got, gotOK, e.dst, ok)
				}
			case op < 80:
				n := tab.ageOut(now)
				want := 0
				for k, e := range model {
					if expired(e) {
						delete(model, k)
						want++
					}
				}
				if n != want {
					t.Fatalf("seed %d step %d: ageOut = %d, model %d", seed, step, n, want)
				}
			case op < 83:
				n := tab.flushDst(d)
				want := 0
				for k, e := range model {
					if e.dst == d {
						delete(model, k)
						want++
					}
				}
				if n != want {
					t.Fatalf("seed %d step %d: flushDst = %d, model %d", seed, step, n, want)
				}
			case op < 85:
				var set vlanSet
				set.add(2)
				set.add(4094)
				n := tab.flushVEthVLANs(d, &set)
				want := 0
				for k, e := range model {
					if e.dst == d && set.has(k.vlan()) {
						delete(model, k)
						want++
					}
				}
				if n != want {
					t.Fatalf("seed %d step %d: flushVEthVLANs = %d, model %d", seed, step, n, want)
				}
			case op < 90:
				vlan := []uint16{0, 1, 2}[rng.IntN(3)]
				got := tab.entries(vlan, now)
				var want []rawEntry
				for k, e := range model {
					if (vlan == 0 || k.vlan() == vlan) && !expired(e) {
						want = append(want, rawEntry{k, e.dst, e.seen})
					}
				}
				byKey := func(es []rawEntry) {
					sort.Slice(es, func(i, j int) bool { return es[i].key < es[j].key })
				}
				byKey(got)
				byKey(want)
				if len(got) != len(want) {
					t.Fatalf("seed %d step %d: entries(%d) = %d, model %d", seed, step, vlan, len(got), len(want))
				}
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("seed %d step %d: entry %+v, model %+v", seed, step, got[i], want[i])
					}
				}
			default:
				now += int64(rng.IntN(120)) * int64(time.Second)
				if rng.IntN(4) == 0 {
					now += int64(rng.IntN(int(seenGranularity)))
				}
			}
			if tab.moves.Load() != moves {
				t.Fatalf("seed %d step %d: moves = %d, model %d", seed, step, tab.moves.Load(), moves)
			}
		}
	}
}

func TestMACKey(t *testing.T) {
	m := wire.MAC{0xde, 0xad, 0xbe, 0xef, 0x01, 0x02}
	k := makeMACKey(4094, m)
	if k.vlan() != 4094 || k.mac() != m {
		t.Errorf("key %#x: vlan %d mac %v", k, k.vlan(), k.mac())
	}
	if d := vethDst(7, 9); d.isUplink() || d.index() != 7 || d.inc() != 9 {
		t.Errorf("vethDst(7, 9) = %#x", d)
	}
	if d := uplinkDst(3); !d.isUplink() || d.index() != 3 {
		t.Errorf("uplinkDst(3) = %#x", d)
	}
}
