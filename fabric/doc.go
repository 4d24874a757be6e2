// Package fabric is the Fabric Interconnect (FI): it terminates the VN-Tags
// of VM-FEX adapters, gives every dynamic vNIC a virtual Ethernet interface
// (vEth) governed by a port profile, learns MAC addresses per VLAN and
// switches frames between vEths and 802.1Q uplinks.
//
// # Goroutines
//
// New starts none. Start starts one reader per port (FI.portReader), which
// receives a batch, runs every frame through the stages listed in
// datapath.go and sends the results before it reads again, and one MAC
// aging ticker (FI.ager). A port added after Start gets its reader at once.
// Close stops them all and waits for them.
//
// # Concurrency
//
// Every exported method of FI is safe for concurrent use, including while
// traffic flows. Configuration methods (SetPortProfile, CreateVEth,
// RebindVEth, ...) serialise on one mutex and publish an immutable snapshot
// that the readers load once per batch, so a change applies to whole batches.
// The learned MAC table is the only table the data path writes; it is sharded
// under read-write locks with atomic entries. Counters are atomics and may be
// read at any time.
//
// HoldVEth and ReleaseVEth (hold.go) add one more piece of state the data
// path writes: the hold queue of a held vEth, under its own mutex, which a
// reader takes only for a vEth its snapshot shows held. HoldVEth waits for
// a grace period, the batches in progress on every port, before it returns.
//
// Lock order: FI.holdMu, then FI.progMu, then FI.mu, then a vEth's hold
// queue lock; a port's txMu, FI.graceMu and the MAC table shard locks are
// leaves. The data path takes a hold queue lock only for a vEth that is
// held (hold.go). VifProgrammer methods are called with only progMu held,
// in configuration order, so a programmer may call the FI's read methods
// (VEths, MACTable, ...) but must not call its configuration methods
// synchronously.
package fabric
