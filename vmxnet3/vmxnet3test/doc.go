// Package vmxnet3test is a guest-side ring builder for testing a VMXNET3
// device: it lays out DriverShared, the queue descriptor table, the rings
// and their buffers in a guest memory arena and drives the device through
// its BAR0 and BAR1 windows the way a guest driver does (spec §2.4, §4.6–4.8),
// with raw hooks to write arbitrary, hostile descriptors as well.
//
// It depends only on vmxnet3 and guest/mem, never on the guest package, so
// the device's tests stay below the driver in the layering.
//
// Concurrency: a Guest is driven by one goroutine at a time, like a vCPU.
// Sink is safe for concurrent use. A Rig owns no goroutines.
package vmxnet3test
