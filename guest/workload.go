package guest

// The guest's workloads share these rules (see Workload in netdev.go):
//
//   - A workload value holds its guest memory, where its state region is,
//     immutable configuration and at most a scratch buffer that holds
//     nothing between calls. All it remembers is in its state region, at
//     named offsets, written through guest/mem's accessors so that every
//     change is in the dirty log.
//   - Its constructor initialises a fresh region (the program's boot) and
//     resumes from a region that already holds its state (after a copy of
//     the memory, i.e. a migration). A magic word written last tells the
//     two apart; a version and, where the layout depends on the config, a
//     fingerprint refuse state written by another program.
//   - The per-frame path never allocates, never panics on a malformed frame
//     and counts every frame it does not use under a named reason.

import (
	"errors"

	"github.com/vmfex/vmfex/guest/mem"
)

// Errors of NewTraffic and NewResponder.
var (
	ErrWorkloadConfig = errors.New("guest: bad workload config")
	ErrWorkloadState  = errors.New("guest: workload state region holds another program")
)

// workloadAdd increments the little-endian u64 counter at pa by v.
func workloadAdd(m *mem.Memory, pa, v uint64) { m.PutU64(pa, m.U64(pa)+v) }

// Multi runs several workloads on one NIC in a fixed order, each over its
// own state region. It has no state of its own, so it resumes whenever its
// parts do.
type Multi struct {
	parts []Workload // immutable
}

var _ Workload = (*Multi)(nil)

// NewMulti returns a workload that runs parts in the given order.
func NewMulti(parts ...Workload) *Multi {
	return &Multi{parts: append([]Workload(nil), parts...)}
}

// Receive hands the frame to every part in order: a frame is not consumed
// by the first part that uses it, as the tap of a packet socket does not
// consume it from the stack (Traffic counts the ARP the Responder answers
// as not a probe).
func (w *Multi) Receive(dev NetDev, pa uint64, n int, now int64) {
	for _, p := range w.parts {
		p.Receive(dev, pa, n, now)
	}
}

// Step steps every part in order and returns the earliest time any of them
// has work (0 if none has).
func (w *Multi) Step(dev NetDev, now int64) int64 {
	var next int64
	for _, p := range w.parts {
		if t := p.Step(dev, now); t != 0 && (next == 0 || t < next) {
			next = t
		}
	}
	return next
}
