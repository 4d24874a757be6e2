package guest

import (
	"cmp"
	"slices"
	"time"
)

// PairSummary is the accounting of one stream, from Src to Dst.
type PairSummary struct {
	Src, Dst   uint32
	Sent       uint64 // frames Src sent to Dst
	Unique     uint64 // frames Dst received from Src, first receptions
	Lost       int64  // Sent - Unique; negative would mean a sequence reused
	Duplicated uint64
	Reordered  uint64
	Late       uint64 // older than Dst's window; counted in Lost
	// MaxGap is the longest silence Dst saw in the stream since its last
	// ResetGaps: the stream's blackout.
	MaxGap time.Duration
}

// Summary is the fabric-wide exactly-once accounting of a traffic run.
type Summary struct {
	// Totals over the streams whose two ends are both in the input.
	Sent       uint64
	Received   uint64 // every probe frame received, duplicates included
	Unique     uint64
	Lost       int64 // Sent - Unique
	Duplicated uint64
	Reordered  uint64
	Late       uint64 // arrived too late to check; part of Lost

	// Per-VM counters summed over all VMs.
	Misdelivered uint64 // probes that reached a VM they were not meant for
	NotProbe     uint64 // frames that were no intact probe (ARP, corrupted, ...)
	UnknownPeer  uint64 // probes from a VM the receiver does not list

	// Streams with only one end in the input, left out of the totals.
	UnmatchedSent     uint64 // sent to VMs absent from the input
	UnmatchedReceived uint64 // received from VMs absent from the input

	Pairs []PairSummary // every stream with a sender in the input, by (Src, Dst)
}

// Reconcile matches what each VM sent with what its peers received, keyed by
// VM id: the loss of stream A->B is sent_by_A_to_B - unique_received_by_B_from_A.
// Frames still in flight count as lost, so stop generation (Traffic.Stop)
// and let the fabric drain before reading the stats for an exact count.
// Frames older than the receiver's window (Late) are counted as lost: they
// may be duplicates, and a frame 4096 numbers late is useless to any
// application anyway.
func Reconcile(all map[uint32]TrafficStats) Summary {
	var s Summary
	for _, st := range all {
		s.Misdelivered += st.Misdelivered
		s.NotProbe += st.NotProbe
		s.UnknownPeer += st.UnknownPeer
		for _, p := range st.Peers {
			if _, ok := all[p.VM]; !ok {
				s.UnmatchedSent += p.Sent.Frames
				s.UnmatchedReceived += p.Received.Frames
				continue
			}
			ps := PairSummary{Src: st.VM, Dst: p.VM, Sent: p.Sent.Frames}
			if rp, ok := all[p.VM].Peer(st.VM); ok {
				r := rp.Received
				ps.Unique, ps.Duplicated, ps.Reordered, ps.Late, ps.MaxGap = r.Unique, r.Duplicates, r.Reordered, r.Late, r.MaxGap
				s.Received += r.Frames
			}
			ps.Lost = int64(ps.Sent) - int64(ps.Unique)
			s.Pairs = append(s.Pairs, ps)
			s.Sent += ps.Sent
			s.Unique += ps.Unique
			s.Duplicated += ps.Duplicated
			s.Reordered += ps.Reordered
			s.Late += ps.Late
		}
	}
	s.Lost = int64(s.Sent) - int64(s.Unique)
	slices.SortFunc(s.Pairs, func(a, b PairSummary) int {
		return cmp.Or(cmp.Compare(a.Src, b.Src), cmp.Compare(a.Dst, b.Dst))
	})
	return s
}
