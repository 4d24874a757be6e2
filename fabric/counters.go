package fabric

import (
	"encoding/json"
	"fmt"
	"sync/atomic"

	"github.com/vmfex/vmfex/link"
)

// DropReason names why the FI did not deliver a frame (DESIGN.md §4.1: a
// frame is delivered once or counted under a named reason).
type DropReason uint8

//go:generate stringer -type=DropReason -linecomment -output=dropreason_string.go

// Drop reasons. The line comments are the names shown by String, in metrics
// and in show commands.
const (
	// DropMalformed: shorter than an Ethernet header, a truncated or stacked
	// 802.1Q tag, a group or zero source MAC, or a frame too large to take
	// the tags the FI may push and still fit link.MaxFrame.
	DropMalformed DropReason = iota // malformed
	// DropBadVNTag: on a server port, no VN-Tag, a truncated one, or one that
	// is not upstream (d=1, p=1 or version != 0); on an uplink, any VN-Tag.
	DropBadVNTag // bad-vntag
	// DropUnknownVIF: the VN-Tag's svif names no vEth on that server port.
	DropUnknownVIF // unknown-vif
	// DropVLANNotAllowed: the frame's VLAN is not allowed by the ingress
	// vEth's port profile (or by the uplink trunk), or the frame is untagged
	// where there is no native VLAN.
	DropVLANNotAllowed // vlan-not-allowed
	// DropMACForged: the source MAC is not the vEth's own and its profile
	// denies MAC forging.
	DropMACForged // mac-forged
	// DropReservedDst: destination in 01:80:c2:00:00:00-0f, which a bridge
	// never forwards (802.1D; protocols.md §7.3).
	DropReservedDst // reserved-destination
	// DropSamePort: the MAC table sends the frame back to the vEth or uplink
	// it came from.
	DropSamePort // same-port-filter
	// DropNoDestination: a flooded frame found no other member of its VLAN.
	DropNoDestination // no-destination
	// DropEgressVLANNotAllowed: the egress re-check found that the
	// destination does not carry the frame's VLAN (isolation invariant).
	DropEgressVLANNotAllowed // egress-vlan-not-allowed
	// DropPortDown: the egress port was closed while the frame was sent.
	DropPortDown // port-down
	// DropHoldOverflow: the destination vEth is held (HoldVEth) and already
	// holds Config.HoldLimit frames. Counted on the destination vEth.
	DropHoldOverflow // hold-overflow
	// DropVEthDeleted: the frame was held for a vEth that was deleted before
	// ReleaseVEth sent it.
	DropVEthDeleted // veth-deleted
)

// NumDropReasons is the number of drop reasons, for iterating DropCounts.
const NumDropReasons = int(DropVEthDeleted) + 1

// ParseDropReason returns the reason named s (as String prints it).
func ParseDropReason(s string) (DropReason, bool) {
	for r := DropReason(0); int(r) < NumDropReasons; r++ {
		if r.String() == s {
			return r, true
		}
	}
	return 0, false
}

// DropCounts holds a count per drop reason, indexed by DropReason.
type DropCounts [NumDropReasons]uint64

// Total returns the sum over all reasons.
func (d DropCounts) Total() uint64 {
	var t uint64
	for _, n := range d {
		t += n
	}
	return t
}

// MarshalJSON writes the non-zero counts as an object keyed by reason name.
func (d DropCounts) MarshalJSON() ([]byte, error) {
	m := make(map[string]uint64)
	for r, n := range d {
		if n != 0 {
			m[DropReason(r).String()] = n
		}
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads what MarshalJSON writes; an unknown reason is an
// error (a report from a build with other reasons).
func (d *DropCounts) UnmarshalJSON(b []byte) error {
	var m map[string]uint64
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*d = DropCounts{}
	for name, n := range m {
		r, ok := ParseDropReason(name)
		if !ok {
			return fmt.Errorf("%w: drop reason %q", ErrInvalidConfig, name)
		}
		d[r] = n
	}
	return nil
}

// dropCounters is the lock-free form of DropCounts.
type dropCounters [NumDropReasons]atomic.Uint64

func (d *dropCounters) load() DropCounts {
	var out DropCounts
	for i := range d {
		out[i] = d[i].Load()
	}
	return out
}

// VEthCounters are a vEth's cumulative counters. Ingress is what the FI
// received from the VM, egress what it sent towards the VM. Bytes count the
// frame without its VN-Tag (802.1Q tag included). A frame that is counted
// in ingress is either forwarded or counted in exactly one drop reason of
// the vEth; an egress drop (egress-vlan-not-allowed) is counted on the
// destination vEth.
type VEthCounters struct {
	IngressFrames, IngressBytes uint64
	EgressFrames, EgressBytes   uint64
	Drops                       DropCounts
}

// vethCounters is the lock-free form of VEthCounters. It lives in the vEth
// object, so it survives profile changes and rebinding.
type vethCounters struct {
	ingressFrames, ingressBytes atomic.Uint64
	egressFrames, egressBytes   atomic.Uint64
	drops                       dropCounters
}

func (c *vethCounters) load() VEthCounters {
	return VEthCounters{
		IngressFrames: c.ingressFrames.Load(), IngressBytes: c.ingressBytes.Load(),
		EgressFrames: c.egressFrames.Load(), EgressBytes: c.egressBytes.Load(),
		Drops: c.drops.load(),
	}
}

// PortStats are the FI's counters of one port. In counts frames read from
// the port (every one of them, forwarded or dropped, once processing of
// its batch has finished); InDrops those of them dropped, whoever they
// were attributed to. Out counts frames handed to the port's Send; OutDrops
// frames that the port refused because it was closed.
type PortStats struct {
	InFrames, InBytes, InDrops    uint64
	OutFrames, OutBytes, OutDrops uint64
	// Link holds the cable's own counters.
	Link link.PortStats
}

type portCounters struct {
	inFrames, inBytes, inDrops    atomic.Uint64
	outFrames, outBytes, outDrops atomic.Uint64
}

// Stats are FI-wide counters.
type Stats struct {
	// Drops counts every frame the FI dropped, by reason, whether or not a
	// vEth owns the drop.
	Drops DropCounts
	// Unattributed counts the drops no vEth owns: frames without a usable
	// VN-Tag or with an unknown vif, and frames from uplinks.
	Unattributed DropCounts
	// MACEntries is the number of entries in the MAC table (aged ones
	// included until they are removed).
	MACEntries int
	// MACMoves counts learned entries that moved to another vEth or port.
	MACMoves uint64
}
