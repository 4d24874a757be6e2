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
//	kernel (ns NAME) --eth0 xmit--> TAP fd --Step: read into a tx buffer--> driver tx ring --> vNIC
//	vNIC --> driver rx ring --Receive: write--> TAP fd --> eth0 rx --> kernel
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
// between calls: a frame read from the TAP is written into a reserved tx
// buffer and committed in the same Step, or dropped and counted, so guest
// memory plus the device state is all a migration has to carry.
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
