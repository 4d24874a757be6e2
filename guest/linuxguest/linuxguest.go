package linuxguest

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/vmfex/vmfex/wire"
)

// Errors.
var (
	ErrConfig      = errors.New("linuxguest: bad config")
	ErrNotRoot     = errors.New("linuxguest: a Linux guest needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create its network namespace and TAP; run as root (e.g. sudo)")
	ErrNoTUN       = errors.New("linuxguest: /dev/net/tun is missing; load the tun module (modprobe tun) or create the node (mknod /dev/net/tun c 10 200)")
	ErrNoIP        = errors.New("linuxguest: the `ip` command (iproute2) is not in PATH; install iproute2")
	ErrExists      = errors.New("linuxguest: a network namespace of that name exists and is not this process's guest; remove it with `ip netns del NAME` or choose another VM name")
	ErrMismatch    = errors.New("linuxguest: the guest already exists with another MAC, address or MTU")
	ErrUnsupported = errors.New("linuxguest: Linux guests need Linux")
)

// Config describes a Linux guest. It is immutable.
type Config struct {
	// Name is the VM's name and the name of its network namespace.
	Name string
	// MAC is eth0's address: the vNIC's.
	MAC wire.MAC
	// Addr is eth0's IPv4 address and prefix; the zero value leaves eth0
	// without one.
	Addr netip.Prefix
	// MTU is eth0's MTU, the driver's (DriverConfig.MTU); 0 means 1500.
	MTU int
}

// Bounds of MTU, those of the VMXNET3 driver (vmxnet3.MinMTU, MaxMTU).
const (
	minMTU     = 60
	maxMTU     = 9000
	defaultMTU = 1500
)

// maxNameLen bounds a namespace name: it is a file under /run/netns.
const maxNameLen = 200

func (c *Config) check() error {
	if c.MTU == 0 {
		c.MTU = defaultMTU
	}
	switch {
	case c.Name == "" || c.Name == "." || c.Name == ".." || len(c.Name) > maxNameLen ||
		strings.ContainsAny(c.Name, "/\x00 \t\n"):
		return fmt.Errorf("%w: name %q is not a usable network namespace name", ErrConfig, c.Name)
	case c.MAC == (wire.MAC{}) || c.MAC[0]&1 != 0:
		return fmt.Errorf("%w: %s: MAC %s must be a non-zero unicast address", ErrConfig, c.Name, c.MAC)
	case c.MTU < minMTU || c.MTU > maxMTU:
		return fmt.Errorf("%w: %s: MTU %d not in %d..%d", ErrConfig, c.Name, c.MTU, minMTU, maxMTU)
	case c.Addr.IsValid() && !c.Addr.Addr().Is4():
		return fmt.Errorf("%w: %s: address %s is not IPv4", ErrConfig, c.Name, c.Addr)
	}
	return nil
}

// maxFrame is the longest frame eth0 may send or receive at this MTU: an
// Ethernet header and one 802.1Q tag on top of it, no FCS.
func (c *Config) maxFrame() int { return c.MTU + wire.EthHeaderLen + 4 }

// DropReason names why a frame was not delivered.
type DropReason uint8

// Drop reasons. "Tx" is the guest sending (kernel to driver), "Rx" the
// guest receiving (driver to kernel).
const (
	// DropTxRunt: the TAP gave a frame shorter than an Ethernet header.
	DropTxRunt DropReason = iota
	// DropTxOverMTU: the kernel sent a frame longer than the driver's MTU
	// allows (eth0's MTU raised inside the guest).
	DropTxOverMTU
	// DropTxOverBuffer: the driver refused the frame (TxSend): it does not
	// fit the tx ring's buffers.
	DropTxOverBuffer
	// DropTxBadOffload: the frame's virtio_net_hdr asks for an offload
	// that its headers contradict or that the NIC cannot do (UDP GSO,
	// more segments than vmxnet3.MaxTSOSegs).
	DropTxBadOffload
	// DropTxReadError: reading the TAP failed (other than "no frame").
	DropTxReadError
	// DropRxRunt: the driver handed over a frame shorter than an Ethernet
	// header (or a negative length).
	DropRxRunt
	// DropRxOverMTU: the driver handed over a frame longer than eth0's MTU.
	DropRxOverMTU
	// DropRxGuestMemory: the frame's buffer is outside guest memory.
	DropRxGuestMemory
	// DropRxWriteError: writing the TAP failed.
	DropRxWriteError
	// DropRxClosed: a frame arrived after the guest was closed.
	DropRxClosed

	numDropReasons
)

var dropNames = [numDropReasons]string{
	"tx_runt", "tx_over_mtu", "tx_over_buffer", "tx_bad_offload", "tx_read_error",
	"rx_runt", "rx_over_mtu", "rx_guest_memory", "rx_write_error", "rx_closed",
}

func (r DropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return fmt.Sprintf("DropReason(%d)", uint8(r))
}

// Stats are a Linux guest's counters. They belong to the guest (its
// namespace), not to one Workload, so they are continuous across a
// migration in this process.
type Stats struct {
	// TxFrames and TxBytes count what the kernel sent that the driver
	// took: a TSO segment of up to 64 KiB is one frame here, and as many
	// frames on the wire as the device cuts it into.
	TxFrames, TxBytes uint64
	RxFrames, RxBytes uint64 // frames the driver received that the kernel took
	// TxRingFull counts Steps that found the tx ring full: the kernel's
	// frames then wait in the TAP's queue (and the kernel drops, and
	// counts on eth0, what overflows it).
	TxRingFull uint64
	// Wakeups counts how often the waiter woke a vCPU for a frame.
	Wakeups uint64
	Drops   [numDropReasons]uint64 // by DropReason
}

// Dropped returns the frames dropped for any reason.
func (s Stats) Dropped() uint64 {
	var n uint64
	for _, d := range s.Drops {
		n += d
	}
	return n
}
