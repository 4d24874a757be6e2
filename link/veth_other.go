//go:build !linux

package link

// SetupVethPair returns ErrNeedsLinux: veth pairs and network namespaces are
// Linux's.
func SetupVethPair(nsA, ifA, nsB, ifB string, mtu int) error { return ErrNeedsLinux }

// DeleteVethPair returns ErrNeedsLinux.
func DeleteVethPair(ns, ifname string) error { return ErrNeedsLinux }

// AddNetns returns ErrNeedsLinux.
func AddNetns(name string) (created bool, err error) { return false, ErrNeedsLinux }

// DeleteNetns returns ErrNeedsLinux.
func DeleteNetns(name string) error { return ErrNeedsLinux }
