// Package link is the cabling of the fabric: ports that move batches of real
// Ethernet frames between an adapter, a Fabric Interconnect and an external
// LAN, in memory (the default), over UDP datagrams between processes, or over
// raw Ethernet on veth pairs.
//
// What travels on a cable is the tagged frame, byte for byte (VN-Tag and
// 802.1Q included); no metadata rides alongside.
//
// Concurrency: a Port's Send may be called by one goroutine and Recv by
// another at the same time; Close is safe from any goroutine and unblocks
// both.
package link

import "errors"

// ErrClosed is returned by Send and Recv once the port or its peer is closed.
var ErrClosed = errors.New("link: port closed")

// Port is one end of a cable.
type Port interface {
	// Send transmits bufs in order. It takes ownership of the first n buffers
	// (sent or counted as dropped by the link); the caller keeps the rest,
	// which it holds only when err != nil. In-memory cables are lossless:
	// Send waits for room, as a no-drop (PFC) class does, rather than drop.
	Send(bufs []*Buf) (n int, err error)
	// Recv waits for at least one frame and fills bufs[:n] with up to
	// len(bufs) frames, transferring their ownership to the caller.
	Recv(bufs []*Buf) (n int, err error)
	// BatchSize is the number of frames the port moves per call at best.
	BatchSize() int
	// Stats returns the port's counters.
	Stats() PortStats
	// Close shuts this end; the peer sees ErrClosed once it has drained.
	// Idempotent.
	Close() error
}

// PortStats are a port's cumulative counters.
type PortStats struct {
	TxFrames, TxBytes uint64
	RxFrames, RxBytes uint64
	// Drops are frames the cable lost (only lossy cables: UDP, AF_PACKET),
	// or frames rejected because they were too large or malformed on arrival.
	Drops uint64
}

// Sink takes frames by ownership as far as it has room, in order, like a
// host-side receive ring: n buffers taken, full when it could not take them
// all, and Space signals when room was made. A VEM port is one; an adapter
// hands a vif's frames to it while the hypervisor drives the vNIC.
type Sink interface {
	Take(bufs []*Buf) (n int, full bool)
	Space() <-chan struct{}
}
