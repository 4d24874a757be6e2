// Package migration is the live-migration protocol between two hypervisors:
// a versioned, checksummed envelope for saved state, a stream of typed,
// length-prefixed messages, and the pre-copy of guest memory in rounds over
// the dirty-page log, ending in a stop-and-copy round.
//
// The phases of both sides are listed at the top of precopy.go; the
// orchestration around them (freezing the VM, the device hand-off, the
// fabric rebind, commit) belongs to the caller.
//
// Goroutines and concurrency:
//
//   - Envelope functions (Seal, Open, the Encode/Decode pairs) are pure and
//     safe for concurrent use.
//   - Writer and Reader are not safe for concurrent use: one goroutine
//     writes, one reads. Slices in a *Msg returned by Reader.Next alias the
//     Reader's buffers and are valid until the next call.
//   - Conn owns one goroutine, the return path, started by the source's
//     first Expect (or Sender.Precopy): it alone reads the stream from then
//     on, turning an Abort from the destination into an *AbortError and
//     interrupting blocked writes. Close stops it and waits for it. Writes on
//     a Conn are serialised by a mutex; Recv is for one goroutine on the
//     destination, which never starts a return path.
//   - Sender and Receiver belong to one goroutine each. The Sender reads the
//     source memory while the guest keeps writing it (the vCPU goroutine):
//     it relies only on mem.Memory's dirty log, read and cleared by
//     mem.Memory.Dirty, never on the guest pausing, until StopAndCopy, which
//     the caller calls after freezing the vCPU. The Receiver writes the
//     destination memory with LoadPage; nothing else may run on that memory
//     until the migration is over.
//   - Contexts cancel blocking I/O through deadlines when the transport has
//     them (net.Conn, net.Pipe, *os.File pipes), otherwise by closing it.
package migration
