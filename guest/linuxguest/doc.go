// Package linuxguest is a guest program whose network stack is real Linux: a network namespace with a TAP eth0 carried by the VM's driver.
//
// # What runs where
//
// A Linux guest of VM NAME is the network namespace NAME (created with
// `ip netns add`, so `ip netns exec NAME ping ...` and iperf3 run in it)
// holding a TAP interface eth0 with the vNIC's MAC, the driver's MTU and an
// optional IPv4 address, plus lo, both up. The kernel is the guest's
// network stack; the VM's vCPU is its NIC's interrupt and transmit context:
//
//	kernel (ns NAME) --eth0 xmit--> TAP fd --Step: read, TxSend--> driver tx ring --> vNIC
//	vNIC --> driver rx ring --Receive: merge, write--> TAP fd --> eth0 rx --> kernel
//
// # Offloads
//
// eth0 is a TAP with a virtio_net_hdr in front of every frame and the
// offloads the VMXNET3 device performs turned on: checksum, TSO over IPv4
// and IPv6 (ECN too), gso_max_segs at the device's vmxnet3.MaxTSOSegs. So
// the kernel hands over TCP segments of up to 64 KiB with partial
// checksums, and the driver posts each one as one packet over as many tx
// descriptors as it needs, with om/hlen/msscof set as spec §4.2 defines
// them (vnethdr.go). The segmenting happens in the device model, where the
// frames leave for the cable at the MTU.
//
// On receive, a TAP takes one frame per write and runs the kernel's
// receive path inside it, so the guest batches its writes: the in-order
// TCP/IPv4 segments of one flow received in one vCPU step, checksums
// verified, are merged into one GSO frame of up to 64 KiB and written
// once (gro.go), as the kernel's GRO would merge them. Other frames go
// as they came, in order, behind an empty virtio_net_hdr: their checksums
// are the kernel's to verify. Transmit batches too: a Step reads up to
// txBudget frames (each up to 64 KiB) and the vCPU rings one doorbell for
// them.
//
// # Goroutines
//
// Each Linux guest owns one waiter goroutine, started by New and ended by
// Close (or Destroy). It never reads frames: it sleeps in Go's netpoller
// until the TAP has a frame and then wakes the vCPU through the function
// given with SetWake (an interrupt, as a NIC raises one), and does not look
// again until a Step has drained the TAP. So the vCPU never blocks in a
// Step and an idle guest spins no core. Without SetWake, Step falls back to
// polling the TAP every millisecond.
//
// Step and Receive run on the vCPU goroutine only. Stats, SetWake, Close
// and the package functions are safe for concurrent use.
//
// # State and migration
//
// Unlike the probe workloads of package guest, this workload's state is not
// in guest memory, and need not be: everything that matters to the guest
// program (sockets, routes, ARP cache, TCP state) is the kernel's, and stays
// in the namespace on this machine. The workload itself keeps no frame
// across a vCPU step: a frame read from the TAP is posted to the tx ring
// in the same Step, or dropped and counted, and received segments held
// for merging are written by the Step that ends the vCPU's iteration, so
// at the step boundary where a migration pauses the guest, guest memory
// plus the device state is all a migration has to carry.
//
// A migration in this process builds a second Workload for the same VM name
// with the same factory. The namespace and the TAP fd live in a
// process-wide registry keyed by the name, so the second Workload attaches
// to them instead of creating new ones. Whichever Workload's vCPU steps
// owns the TAP: the source's vCPU is frozen before the destination's runs
// (a migration is atomic), so exactly one reads at any time, the waiter
// wakes the current owner, and a rolled-back source takes the TAP back on
// its next Step. Counters live in the registry too and are continuous
// across a migration. A persistent TAP reopened by name was the other
// choice; it would leave a window where the device has no reader, and
// gives nothing while source and destination share one process.
//
// Closing the owner (or the last Workload attached) removes the TAP and
// the namespace; closing a superseded Workload only detaches it.
//
// Creating a guest needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), the tun
// driver (/dev/net/tun) and iproute2's `ip`; New says which is missing.
package linuxguest
