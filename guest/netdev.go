// Package guest is the software guest of a VM: its VMXNET3 driver, the
// workloads that run on it, and the vCPU loop that runs both. Everything a
// guest program remembers lives in its guest memory (guest/mem), so copying
// the memory and the small vCPU state moves the running program.
package guest

import "github.com/vmfex/vmfex/wire"

// NetDev is what a workload sees of its NIC driver, as a guest network stack
// sees a netdev. Its methods run on the vCPU goroutine only.
type NetDev interface {
	// MAC returns the vNIC's current MAC address.
	MAC() wire.MAC
	// TxReserve returns the guest-physical address and size of the buffer
	// for the next frame to transmit; ok is false while the tx ring is full.
	// The workload writes the frame there, then calls TxCommit.
	TxReserve() (pa uint64, size int, ok bool)
	// TxCommit posts the frame of n bytes written at the reserved buffer.
	// The doorbell may be deferred until the end of the vCPU step.
	TxCommit(n int)

	// TxRoom returns the longest frame TxSend can post now (0 while the tx
	// ring is full).
	TxRoom() int
	// TxSend copies f into the tx ring's buffers, across as many
	// descriptors as it needs, and posts it as one packet asking the NIC
	// for offload o (spec §4.2). It reports false, posting nothing, when f
	// does not fit TxRoom (or is empty), or when a frame without TSO would
	// need more than vmxnet3.MaxTxDescPerPkt descriptors. The caller keeps
	// f. A reserved, uncommitted TxReserve buffer is given up. The
	// doorbell may be deferred until the end of the vCPU step.
	TxSend(f []byte, o TxOffload) bool
}

// TxOffload is what a frame asks of the NIC's transmit offloads: the SOP
// descriptor's om, hlen and msscof (spec §4.2). The zero value asks for
// nothing.
type TxOffload struct {
	// Mode is vmxnet3.OMNone, OMCsum or OMTSO.
	Mode uint8
	// HLen is, for OMCsum, where checksumming starts; for OMTSO, the
	// length of the L2+L3+L4 headers (at most vmxnet3.MaxHLen).
	HLen uint16
	// MSSCOF is, for OMCsum, the offset of the checksum field from the
	// frame's start (HLen + its offset in the L4 header); for OMTSO, the
	// MSS. For OMTSO the frame's TCP checksum field holds the seed
	// vmxnet3.PrepareTSO writes.
	MSSCOF uint16
}

// Workload is a guest program driven by the vCPU. Its whole state lives in
// guest memory; a Workload value holds only where that state is and
// immutable configuration, so a new value over a copy of the memory resumes
// the same program.
type Workload interface {
	// Receive handles one received frame of n bytes at guest address pa.
	// now is the guest clock in nanoseconds. It may transmit (e.g. a reply)
	// through dev; when the tx ring is full it drops and counts that reply.
	Receive(dev NetDev, pa uint64, n int, now int64)
	// Step does the workload's own work (e.g. transmit at its rate) and
	// returns the guest time at which it next has work, or 0 if it only
	// reacts to received frames. A Step that stopped because the tx ring
	// was full returns now: the vCPU calls it again after tx completions.
	Step(dev NetDev, now int64) (next int64)
}
