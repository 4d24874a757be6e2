package linuxguest

// Creating a guest's namespace and TAP.
//
// The namespace is made by `ip netns add`, not by unshare(2) here: iproute2
// then pins it under /var/run/netns as every tool expects (`ip netns exec
// NAME ping`, iperf3 run by a test or a user), which is its interface to
// the world; doing the same by hand means reimplementing its bind mounts.
// The TAP is opened from a thread that has entered the namespace (setns),
// so it is born there as eth0: no device with a temporary name appears in
// the host's namespace (where eth0 usually exists), and no move is needed.
// Addresses and links are set with one `ip -n NAME -batch -`.

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vmfex/vmfex/vmxnet3"
)

// netnsDir is where iproute2 pins named namespaces.
const netnsDir = "/var/run/netns"

// tapName is the guest's interface.
const tapName = "eth0"

func createKernelSide(cfg Config) (*kernelSide, error) {
	if unix.Geteuid() != 0 {
		return nil, fmt.Errorf("%w (guest %s)", ErrNotRoot, cfg.Name)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return nil, fmt.Errorf("%w (guest %s: %v)", ErrNoTUN, cfg.Name, err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("%w (guest %s)", ErrNoIP, cfg.Name)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, cfg.Name)); err == nil {
		return nil, fmt.Errorf("%w (%s)", ErrExists, cfg.Name)
	}
	if err := ip(nil, "netns", "add", cfg.Name); err != nil {
		return nil, fmt.Errorf("linuxguest: %s: create namespace: %w", cfg.Name, err)
	}
	fd, err := openTAPIn(cfg.Name)
	if err != nil {
		_ = deleteNamespace(cfg.Name)
		return nil, fmt.Errorf("linuxguest: %s: open TAP %s in its namespace: %w", cfg.Name, tapName, err)
	}
	var batch strings.Builder
	fmt.Fprintf(&batch, "link set dev lo up\n")
	// gso_max_segs: the kernel builds no TSO segment that the device would
	// have to cut into more frames than it sends per packet.
	fmt.Fprintf(&batch, "link set dev %s address %s mtu %d gso_max_segs %d\n", tapName, cfg.MAC, cfg.MTU, vmxnet3.MaxTSOSegs)
	if cfg.Addr.IsValid() {
		fmt.Fprintf(&batch, "addr add %s dev %s\n", cfg.Addr, tapName)
	}
	fmt.Fprintf(&batch, "link set dev %s up\n", tapName)
	if err := ip(strings.NewReader(batch.String()), "-n", cfg.Name, "-batch", "-"); err != nil {
		unix.Close(fd)
		_ = deleteNamespace(cfg.Name)
		return nil, fmt.Errorf("linuxguest: %s: configure %s: %w", cfg.Name, tapName, err)
	}
	k, err := newKernelSide(cfg, fd, true, true)
	if err != nil {
		_ = deleteNamespace(cfg.Name)
		return nil, err
	}
	return k, nil
}

func deleteNamespace(name string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, name)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := ip(nil, "netns", "del", name); err != nil {
		return fmt.Errorf("linuxguest: %s: remove namespace: %w", name, err)
	}
	return nil
}

// ip runs iproute2's ip with args, feeding it stdin.
func ip(stdin *strings.Reader, args ...string) error {
	cmd := exec.Command("ip", args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// openTAPIn opens a TAP named eth0 inside namespace ns: a tun device is
// created in the namespace of the thread that opens /dev/net/tun.
func openTAPIn(ns string) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// A thread that entered another namespace and could not return
		// stays locked, so that Go ends it with this goroutine instead of
		// running other goroutines in the guest's namespace.
		runtime.LockOSThread()
		fd, back, err := openTAPLocked(ns)
		if back {
			runtime.UnlockOSThread()
		}
		ch <- result{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

// openTAPLocked runs on a locked thread; back reports that the thread is
// in its own namespace again.
func openTAPLocked(ns string) (fd int, back bool, err error) {
	self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, true, fmt.Errorf("own namespace: %w", err)
	}
	defer unix.Close(self)
	target, err := unix.Open(filepath.Join(netnsDir, ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, true, fmt.Errorf("namespace %s: %w", ns, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		return -1, true, fmt.Errorf("enter namespace %s: %w", ns, err)
	}
	fd, err = openTAP(tapName)
	if serr := unix.Setns(self, unix.CLONE_NEWNET); serr != nil {
		if err == nil {
			unix.Close(fd)
		}
		return -1, false, fmt.Errorf("return from namespace %s: %w", ns, serr)
	}
	return fd, true, err
}

// openTAP creates TAP name in the calling thread's namespace: frames
// without a packet-information header, each behind a virtio_net_hdr
// (IFF_VNET_HDR), with the offloads the VMXNET3 device performs turned on
// (TUNSETOFFLOAD: checksum, TSO over IPv4 and IPv6, with ECN), so the
// kernel hands over 64 KiB TCP segments with partial checksums instead of
// finishing them itself; the fd non-blocking so that a Step never blocks.
func openTAP(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("/dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnetHdrLen); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETVNETHDRSZ %s: %w", name, err)
	}
	const offloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_TSO_ECN
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, offloads); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETOFFLOAD %s: %w", name, err)
	}
	return fd, nil
}
