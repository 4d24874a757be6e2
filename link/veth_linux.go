//go:build linux

package link

// veth pairs between network namespaces, the cables of a lab whose FI and
// hosts run as separate processes. They are made with the `ip` command of
// iproute2, as an operator would make them by hand:
//
//	ip netns add NS                                   (for each missing namespace)
//	ip link add name A mtu M netns NSA type veth peer name B mtu M netns NSB
//	(IPv6 off on A and B: /proc/sys/net/ipv6/conf/IF/disable_ipv6 = 1)
//	ip -n NSA link set dev A up; ip -n NSB link set dev B up
//	(wait until both ends can transmit: waitLinkReady)

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// SetupVethPair creates a veth pair: interface ifA in the network namespace
// nsA and ifB in nsB ("" for the caller's namespace), each with MTU mtu (0 for
// PacketMTU, the least that carries MaxFrame), and brings both ends up. It
// creates the namespaces that do not exist yet (`ip netns add`). IPv6 is
// turned off on both ends, so that the kernel puts nothing of its own on the
// cable (duplicate address detection, router solicitations, MLD): only the
// frames of the ports go across. It returns once both ends can transmit
// (before that the kernel drops frames silently). It needs root (CAP_NET_ADMIN,
// CAP_SYS_ADMIN) and iproute2's `ip`.
//
// On failure it removes what it made. Undo it with DeleteVethPair, and
// DeleteNetns for the namespaces.
func SetupVethPair(nsA, ifA, nsB, ifB string, mtu int) (err error) {
	if mtu == 0 {
		mtu = PacketMTU
	}
	if mtu < PacketMTU {
		return fmt.Errorf("link: veth %s-%s: MTU %d carries frames up to %d bytes, less than MaxFrame (%d): use at least PacketMTU (%d), or 0", ifA, ifB, mtu, mtu+14, MaxFrame, PacketMTU)
	}
	for _, name := range []string{ifA, ifB} {
		if err := checkIfname(name); err != nil {
			return fmt.Errorf("link: veth: %w", err)
		}
	}
	if nsA == nsB && ifA == ifB {
		return fmt.Errorf("link: veth: both ends are %s in one namespace: name them apart", ifA)
	}
	var made []string // namespaces this call created, removed on failure
	defer func() {
		if err != nil {
			for _, ns := range made {
				DeleteNetns(ns)
			}
		}
	}()
	for _, ns := range []string{nsA, nsB} {
		if ns == "" {
			continue
		}
		created, err := AddNetns(ns)
		if err != nil {
			return err
		}
		if created {
			made = append(made, ns)
		}
	}

	args := []string{"link", "add", "name", ifA, "mtu", strconv.Itoa(mtu)}
	if nsA != "" {
		args = append(args, "netns", nsA)
	}
	args = append(args, "type", "veth", "peer", "name", ifB, "mtu", strconv.Itoa(mtu))
	if nsB != "" {
		args = append(args, "netns", nsB)
	}
	if err := ipCommand(args...); err != nil {
		return fmt.Errorf("link: veth %s-%s: %w", ifA, ifB, err)
	}
	defer func() {
		if err != nil {
			DeleteVethPair(nsA, ifA)
		}
	}()
	for _, end := range []struct{ ns, ifname string }{{nsA, ifA}, {nsB, ifB}} {
		if err := disableIPv6(end.ns, end.ifname); err != nil {
			return fmt.Errorf("link: veth %s: %w", end.ifname, err)
		}
		if err := ipCommand(nsArgs(end.ns, "link", "set", "dev", end.ifname, "up")...); err != nil {
			return fmt.Errorf("link: veth %s: %w", end.ifname, err)
		}
	}
	for _, end := range []struct{ ns, ifname string }{{nsA, ifA}, {nsB, ifB}} {
		if err := waitLinkReady(end.ns, end.ifname); err != nil {
			return fmt.Errorf("link: veth %s: %w", end.ifname, err)
		}
	}
	return nil
}

// linkReadyWait bounds how long waitLinkReady waits for the kernel: a
// failure deadline, not a measure.
const linkReadyWait = 10 * time.Second

// waitLinkReady returns once the interface ifname in ns can transmit. The
// end of a veth pair brought up first has no carrier yet, so the kernel
// defers activating its transmit queue to its link watcher, which runs
// asynchronously once the peer is up; until then every frame sent on it is
// dropped, and the sender is told it was sent (only `ip -s link` shows it,
// as TX dropped). The link watcher sets the operational state to UP and
// activates the queue in one step under the RTNL lock: once the state reads
// UP, one more RTNL operation (a no-op "set up") waits for that step to end.
func waitLinkReady(ns, ifname string) error {
	deadline := time.Now().Add(linkReadyWait)
	for pause := time.Millisecond; ; pause = min(2*pause, 50*time.Millisecond) {
		state, err := operState(ns, ifname)
		if err != nil {
			return err
		}
		if state == "UP" {
			return ipCommand(nsArgs(ns, "link", "set", "dev", ifname, "up")...)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("operational state still %s after %v (is the peer up?)", state, linkReadyWait)
		}
		time.Sleep(pause) // the kernel's link watcher runs on its own time; nothing is timed
	}
}

// operState returns the operational state (RFC 2863) of ifname in ns, as
// `ip link` names it: UP, DOWN, LOWERLAYERDOWN...
func operState(ns, ifname string) (string, error) {
	out, err := exec.Command("ip", nsArgs(ns, "-j", "link", "show", "dev", ifname)...).Output()
	if err != nil {
		return "", fmt.Errorf("ip link show %s: %w", ifname, err)
	}
	var links []struct {
		Operstate string `json:"operstate"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return "", fmt.Errorf("ip -j link show %s: unexpected output %q", ifname, out)
	}
	return links[0].Operstate, nil
}

// DeleteVethPair deletes the veth pair one of whose ends is ifname in the
// network namespace ns ("" for the caller's); the other end goes with it. A
// pair, or a namespace, that no longer exists is not an error.
func DeleteVethPair(ns, ifname string) error {
	if err := checkIfname(ifname); err != nil {
		return fmt.Errorf("link: veth: %w", err)
	}
	if ns != "" && !netnsExists(ns) {
		return nil
	}
	err := ipCommand(nsArgs(ns, "link", "delete", "dev", ifname)...)
	if err != nil && (strings.Contains(err.Error(), "Cannot find device") || strings.Contains(err.Error(), "does not exist")) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("link: veth %s: %w", ifname, err)
	}
	return nil
}

// AddNetns creates the named network namespace (`ip netns add`) unless it
// exists, and reports whether it created it. It needs root (CAP_SYS_ADMIN).
func AddNetns(name string) (created bool, err error) {
	if err := checkNetnsName(name); err != nil {
		return false, err
	}
	if netnsExists(name) {
		return false, nil
	}
	if err := ipCommand("netns", "add", name); err != nil {
		if netnsExists(name) { // another process made it meanwhile
			return false, nil
		}
		return false, fmt.Errorf("link: netns %s: %w (network namespaces need root: CAP_SYS_ADMIN)", name, err)
	}
	return true, nil
}

// DeleteNetns deletes the named network namespace (`ip netns delete`) and,
// with it, the interfaces in it (a veth's peer goes too). A namespace that no
// longer exists is not an error. Sockets opened in it keep it alive until
// they are closed.
func DeleteNetns(name string) error {
	if err := checkNetnsName(name); err != nil {
		return err
	}
	if !netnsExists(name) {
		return nil
	}
	if err := ipCommand("netns", "delete", name); err != nil && netnsExists(name) {
		return fmt.Errorf("link: netns %s: %w", name, err)
	}
	return nil
}

// checkNetnsName reports whether name can name a namespace of `ip netns`.
func checkNetnsName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/ \t\n") || len(name) > 200 {
		return fmt.Errorf("link: %q is not a network namespace name (no '/' or spaces)", name)
	}
	return nil
}

// netnsExists reports whether `ip netns` has a namespace named name.
func netnsExists(name string) bool {
	_, err := os.Stat(netnsPath(name))
	return err == nil
}

// nsArgs prefixes an `ip` command with -n ns when ns is not "".
func nsArgs(ns string, args ...string) []string {
	if ns == "" {
		return args
	}
	return append([]string{"-n", ns}, args...)
}

// ipCommand runs iproute2's ip with args; its error carries ip's message.
func ipCommand(args ...string) error {
	cmd := exec.Command("ip", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("needs the ip command (install iproute2): %w", err)
		}
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// disableIPv6 turns IPv6 off on ifname in the namespace ns. The sysctl file
// is resolved in the namespace of the thread that opens it, so it is opened
// from inside ns. A kernel without IPv6 has nothing to turn off.
func disableIPv6(ns, ifname string) error {
	write := func() error {
		err := os.WriteFile("/proc/sys/net/ipv6/conf/"+ifname+"/disable_ipv6", []byte("1\n"), 0)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if ns == "" {
		return write()
	}
	return inNetns(netnsPath(ns), write)
}
