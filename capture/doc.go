// Package capture writes Ethernet frames seen on a port to a pcap file
// (link type Ethernet, nanosecond timestamps) for Wireshark, tcpdump and
// the tests.
//
// Concurrency: a Writer owns no goroutines. WriteFrame, Flush, Close and
// Stats are safe for concurrent use; frames from several goroutines are
// written whole, in the order the calls take the writer's lock. WriteFrame
// copies the frame before it returns, so the caller keeps ownership.
//
// A Writer stops writing after a cap on frames (DefaultMaxFrames unless
// SetMaxFrames says otherwise) so a forgotten capture cannot fill a disk;
// frames it does not write are counted by reason in Stats.
package capture
