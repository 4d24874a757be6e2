package fabric

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmfex/vmfex/wire"
)

// MAC table: independent VLAN learning (protocols.md §7.3), keyed by
// (VLAN, MAC), pointing at a vEth or an uplink.
//
// It is the one hot mutable table. Lookups and refreshes of known entries
// take a shard's read lock and touch the entry's atomics; only a new
// entry, an expired one and a flush take a shard's write lock. Entries are
// removed lazily when a lookup finds them expired and by AgeOut.

// macShards is the number of shards; a power of two.
const macShards = 64

// seenGranularity bounds how often a busy entry's timestamp is rewritten,
// so that a stream of frames does not write the entry's cache line each
// time. Ages are exact to this much.
const seenGranularity = int64(100 * time.Millisecond)

// macKey is VLAN<<48 | MAC.
type macKey uint64

func makeMACKey(vlan uint16, m wire.MAC) macKey {
	return macKey(uint64(vlan)<<48 | uint64(m[0])<<40 | uint64(m[1])<<32 |
		uint64(m[2])<<24 | uint64(m[3])<<16 | uint64(m[4])<<8 | uint64(m[5]))
}

func (k macKey) vlan() uint16 { return uint16(k >> 48) }

func (k macKey) mac() wire.MAC {
	return wire.MAC{byte(k >> 40), byte(k >> 32), byte(k >> 24), byte(k >> 16), byte(k >> 8), byte(k)}
}

// macDst is where a learned MAC lives: a vEth as incarnation<<32 | slot
// (incarnations start at 1), or an uplink as its port index (incarnation 0).
// A vEth's slot may be reused by a later vEth with another incarnation, so a
// stale entry never reaches the newcomer.
type macDst uint64

func vethDst(slot, inc uint32) macDst { return macDst(uint64(inc)<<32 | uint64(slot)) }
func uplinkDst(portIdx int) macDst    { return macDst(uint32(portIdx)) }
func (d macDst) isUplink() bool       { return d>>32 == 0 }
func (d macDst) index() uint32        { return uint32(d) }
func (d macDst) inc() uint32          { return uint32(d >> 32) }

type macEntry struct {
	dst  atomic.Uint64 // macDst
	seen atomic.Int64  // Now().UnixNano() of the last frame from it
}

type macShard struct {
	mu sync.RWMutex
	m  map[macKey]*macEntry // guarded by mu
	_  [32]byte             // keep shards on separate cache lines
}

type macTable struct {
	aging  int64 // immutable: entry lifetime in ns; <= 0 = never age
	shards [macShards]macShard
	moves  atomic.Uint64
}

func newMACTable(aging time.Duration) *macTable {
	t := &macTable{aging: int64(aging)}
	for i := range t.shards {
		t.shards[i].m = make(map[macKey]*macEntry)
	}
	return t
}

func (t *macTable) shard(k macKey) *macShard {
	return &t.shards[(uint64(k)*0x9E3779B97F4A7C15)>>58&(macShards-1)]
}

func (t *macTable) expired(seen, now int64) bool {
	return t.aging > 0 && now-seen > t.aging
}

// lookup returns the destination of (vlan, mac); an expired entry is
// removed and reported missing.
func (t *macTable) lookup(k macKey, now int64) (macDst, bool) {
	s := t.shard(k)
	s.mu.RLock()
	e := s.m[k]
	s.mu.RUnlock()
	if e == nil {
		return 0, false
	}
	if t.expired(e.seen.Load(), now) {
		s.mu.Lock()
		if s.m[k] == e && t.expired(e.seen.Load(), now) {
			delete(s.m, k)
		}
		s.mu.Unlock()
		return 0, false
	}
	return macDst(e.dst.Load()), true
}

// learn records that (vlan, mac) lives at d as of now. A known entry that
// points elsewhere moves (counted), unless it had expired, which counts as
// a new entry.
func (t *macTable) learn(k macKey, d macDst, now int64) {
	s := t.shard(k)
	s.mu.RLock()
	e := s.m[k]
	s.mu.RUnlock()
	if e == nil {
		s.mu.Lock()
		if e = s.m[k]; e == nil {
			e = new(macEntry)
			e.dst.Store(uint64(d))
			e.seen.Store(now)
			s.m[k] = e
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
	seen := e.seen.Load()
	if old := macDst(e.dst.Load()); old != d {
		e.dst.Store(uint64(d))
		if !t.expired(seen, now) {
			t.moves.Add(1)
		}
	}
	if now-seen >= seenGranularity || now < seen || t.expired(seen, now) {
		e.seen.Store(now)
	}
}

// remove deletes entries for which drop returns true and reports how many.
func (t *macTable) remove(drop func(k macKey, e *macEntry) bool) int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			if drop(k, e) {
				delete(s.m, k)
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// flushDst removes every entry pointing at d.
func (t *macTable) flushDst(d macDst) int {
	return t.remove(func(_ macKey, e *macEntry) bool { return macDst(e.dst.Load()) == d })
}

// flushVEthVLANs removes the entries pointing at d in the VLANs of set.
func (t *macTable) flushVEthVLANs(d macDst, set *vlanSet) int {
	if *set == (vlanSet{}) {
		return 0
	}
	return t.remove(func(k macKey, e *macEntry) bool {
		return set.has(k.vlan()) && macDst(e.dst.Load()) == d
	})
}

// ageOut removes every expired entry.
func (t *macTable) ageOut(now int64) int {
	if t.aging <= 0 {
		return 0
	}
	return t.remove(func(_ macKey, e *macEntry) bool { return t.expired(e.seen.Load(), now) })
}

func (t *macTable) len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

// rawEntry is a copy of one entry.
type rawEntry struct {
	key  macKey
	dst  macDst
	seen int64
}

// entries copies the live entries of vlan (0 = all).
func (t *macTable) entries(vlan uint16, now int64) []rawEntry {
	var out []rawEntry
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		for k, e := range s.m {
			seen := e.seen.Load()
			if (vlan == 0 || k.vlan() == vlan) && !t.expired(seen, now) {
				out = append(out, rawEntry{k, macDst(e.dst.Load()), seen})
			}
		}
		s.mu.RUnlock()
	}
	return out
}

// MACEntry is one line of `show mac address-table`.
type MACEntry struct {
	VLAN uint16
	MAC  wire.MAC
	// Type is "dynamic": every entry is learned.
	Type string
	// Port is the vEth ("Veth32769") or uplink ("Eth1/1") the MAC was
	// learned on.
	Port string
	// Uplink reports whether Port is an uplink.
	Uplink bool
	// Age is the time since a frame from the MAC was last seen.
	Age time.Duration
}

// MACTable returns the learned entries of vlan (0 = every VLAN) that have
// not aged out, sorted by VLAN then MAC.
func (f *FI) MACTable(vlan uint16) []MACEntry {
	now := f.now().UnixNano()
	raw := f.macs.entries(vlan, now)
	s := f.snap.Load()
	out := make([]MACEntry, 0, len(raw))
	for _, r := range raw {
		e := MACEntry{VLAN: r.key.vlan(), MAC: r.key.mac(), Type: "dynamic", Age: time.Duration(now - r.seen)}
		if e.Age < 0 {
			e.Age = 0
		}
		if r.dst.isUplink() {
			if int(r.dst.index()) >= len(s.ports) {
				continue
			}
			e.Port, e.Uplink = s.ports[r.dst.index()].short, true
		} else {
			v := s.vethAt(r.dst)
			if v == nil {
				continue // stale: the vEth is gone
			}
			e.Port = v.v.name
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].VLAN != out[j].VLAN {
			return out[i].VLAN < out[j].VLAN
		}
		return makeMACKey(0, out[i].MAC) < makeMACKey(0, out[j].MAC)
	})
	return out
}

// AgeOut removes every MAC entry older than Config.MACAgingTime and
// reports how many it removed. The FI's ager calls it periodically once
// started; tests call it after moving a fake clock.
func (f *FI) AgeOut() int {
	return f.macs.ageOut(f.now().UnixNano())
}

// ClearMACTable removes the learned entries of vlan (0 = all), as `clear
// mac address-table dynamic`, and reports how many.
func (f *FI) ClearMACTable(vlan uint16) int {
	return f.macs.remove(func(k macKey, _ *macEntry) bool { return vlan == 0 || k.vlan() == vlan })
}
