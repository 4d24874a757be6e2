//go:build linux

package link

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmfex/vmfex/wire"
)

// packetOOBWords is the room for each received frame's control messages, in
// 8-byte words so that the cmsghdr the kernel writes there is aligned. One
// PACKET_AUXDATA message takes CmsgSpace(20): 40 bytes on 64-bit systems.
const packetOOBWords = 8

// auxdataLen is the size of struct tpacket_auxdata (linux/if_packet.h).
const auxdataLen = int(unsafe.Sizeof(unix.TpacketAuxdata{}))

// netnsDir is where `ip netns add` bind-mounts named network namespaces.
const netnsDir = "/var/run/netns"

// PacketPort is one end of a raw-Ethernet cable: an AF_PACKET socket bound to
// one interface, in promiscuous mode, that sends each frame as it is and
// receives every frame arriving on the interface (not those leaving it).
//
// It starts no goroutines: a Send or Recv that must wait parks in the Go
// runtime's poller (epoll), as a net.Conn does, holding no OS thread. Send
// and Recv may run at the same time, each from any number of goroutines
// (calls of one kind take turns); Close is safe from any goroutine and
// unblocks both.
type PacketPort struct {
	ifname  string          // the interface; immutable
	ifindex int             // its index in the socket's namespace; immutable
	netns   string          // the namespace the socket was opened in, "" for the caller's; immutable
	file    *os.File        // the socket, registered with the runtime's poller; immutable
	rc      syscall.RawConn // file's raw access, whose Read and Write wait in the poller; immutable

	tx struct {
		mu   sync.Mutex
		msgs [PacketBatch]unix.Mmsghdr // msgs[i] sends iov[i] to the bound interface; guarded by mu
		iov  [PacketBatch]unix.Iovec   // the frame each message sends, nil between calls; guarded by mu
		from [PacketBatch]int          // index in Send's bufs of each message's frame; guarded by mu
		// The sendmmsg loop, shared with sendmmsgLocked (which rc.Write
		// runs on Send's goroutine): messages [next, k) are left to send;
		// the last call sent n of them, or failed with errno. Guarded by mu.
		next, k, n int
		errno      unix.Errno
		// send is p.sendmmsgLocked, bound once so that rc.Write allocates
		// nothing per call; immutable.
		send func(fd uintptr) bool
	}
	rx struct {
		mu    sync.Mutex
		msgs  [PacketBatch]unix.Mmsghdr              // msgs[i] receives into iov[i], names[i], oob[i]; guarded by mu
		iov   [PacketBatch]unix.Iovec                // the armed buffer's space, nil once delivered; guarded by mu
		names [PacketBatch]unix.RawSockaddrLinklayer // each frame's link-layer source and packet type; guarded by mu
		oob   [PacketBatch][packetOOBWords]uint64    // each frame's control messages (PACKET_AUXDATA); guarded by mu
		bufs  [PacketBatch]*Buf                      // the armed buffer of each message, nil once delivered; guarded by mu
		// The recvmmsg call, shared with recvmmsgLocked (which rc.Read runs
		// on Recv's goroutine): k messages armed; the call filled n of them,
		// or failed with errno. Guarded by mu.
		k, n  int
		errno unix.Errno
		// recv is p.recvmmsgLocked, bound once; immutable.
		recv func(fd uintptr) bool
	}

	closeOnce sync.Once
	closed    atomic.Bool // set before the socket is closed, so errors after it read as ErrClosed

	txFrames, txBytes atomic.Uint64
	rxFrames, rxBytes atomic.Uint64
	runt, oversize    atomic.Uint64
	down              atomic.Uint64
	overrun           atomic.Uint64 // PACKET_STATISTICS drops collected so far (the kernel resets its count on each read)
}

var _ Port = (*PacketPort)(nil)

// NewPacketPort opens the raw-Ethernet cable end on the interface ifname of
// the caller's network namespace. It needs CAP_NET_RAW (root), an Ethernet
// interface and an MTU of at least PacketMTU.
func NewPacketPort(ifname string) (*PacketPort, error) {
	return newPacketPort("", ifname)
}

// NewPacketPortInNetns opens the raw-Ethernet cable end on the interface
// ifname of the network namespace netns: a name of `ip netns` (a file in
// /var/run/netns), or a path to a namespace file such as /proc/PID/ns/net;
// "" is the caller's namespace. The socket stays in that namespace for its
// life, whichever threads later use it. Entering the namespace needs
// CAP_SYS_ADMIN (root).
func NewPacketPortInNetns(netns, ifname string) (*PacketPort, error) {
	return newPacketPort(netns, ifname)
}

func newPacketPort(netns, ifname string) (*PacketPort, error) {
	where := ifname
	if netns != "" {
		where = fmt.Sprintf("%s (netns %s)", ifname, netns)
	}
	if err := checkIfname(ifname); err != nil {
		return nil, fmt.Errorf("link: afpacket: %w", err)
	}
	// Protocol 0 receives nothing until bind names ETH_P_ALL and the
	// interface: a socket opened with ETH_P_ALL would queue frames of every
	// interface of the namespace until then.
	var fd int
	open := func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	}
	var err error
	if netns == "" {
		err = open()
	} else {
		err = inNetns(netnsPath(netns), open)
	}
	switch {
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
		return nil, fmt.Errorf("link: afpacket %s: needs root (CAP_NET_RAW, and CAP_SYS_ADMIN to enter a namespace): %w", where, err)
	case errors.Is(err, unix.EAFNOSUPPORT):
		return nil, fmt.Errorf("link: afpacket %s: the kernel has no AF_PACKET sockets (CONFIG_PACKET): %w", where, err)
	case err != nil:
		return nil, fmt.Errorf("link: afpacket %s: %w", where, err)
	}
	p, err := setupPacketSocket(fd, ifname, where)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	p.netns = netns
	p.file = os.NewFile(uintptr(fd), "afpacket:"+ifname)
	if p.rc, err = p.file.SyscallConn(); err != nil {
		p.file.Close()
		return nil, fmt.Errorf("link: afpacket %s: %w", where, err)
	}
	return p, nil
}

// setupPacketSocket checks the interface ifname as the socket fd sees it (in
// the socket's namespace, whichever thread runs this), configures the socket
// and binds it to the interface.
func setupPacketSocket(fd int, ifname, where string) (*PacketPort, error) {
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return nil, fmt.Errorf("link: afpacket %s: %w", where, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("link: afpacket %s: no such interface: create it first (SetupVethPair, or ip link add): %w", where, err)
		}
		return nil, fmt.Errorf("link: afpacket %s: interface index: %w", where, err)
	}
	ifindex := int(ifr.Uint32())
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFHWADDR, ifr); err != nil {
		return nil, fmt.Errorf("link: afpacket %s: hardware type: %w", where, err)
	}
	if hw := ifr.Uint16(); hw != unix.ARPHRD_ETHER {
		return nil, fmt.Errorf("link: afpacket %s: not an Ethernet interface (ARPHRD %d): use a veth or Ethernet device", where, hw)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFMTU, ifr); err != nil {
		return nil, fmt.Errorf("link: afpacket %s: MTU: %w", where, err)
	}
	if mtu := int(ifr.Uint32()); mtu < PacketMTU {
		return nil, fmt.Errorf("link: afpacket %s: MTU %d carries frames up to %d bytes, less than MaxFrame (%d, VN-Tag and 802.1Q included): raise it to at least %d (ip link set dev %s mtu %d)",
			where, mtu, mtu+wire.EthHeaderLen, MaxFrame, PacketMTU, ifname, PacketMTU)
	}

	// The kernel lifts a received frame's outer VLAN tag into metadata;
	// auxdata hands it back with each frame (stage 3 of Recv).
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
		return nil, fmt.Errorf("link: afpacket %s: PACKET_AUXDATA: %w", where, err)
	}
	// A packet socket also sees the frames its interface transmits, ours
	// included. Linux 4.20+ can leave them out; older kernels still mark
	// them PACKET_OUTGOING, which Recv skips.
	_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	if err := setPacketSocketBuffers(fd, PacketSocketBuffer); err != nil {
		return nil, fmt.Errorf("link: afpacket %s: socket buffers: %w", where, err)
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("link: afpacket %s: bind: %w", where, err)
	}
	// Frames on the cable carry the MACs of VMs behind it, not the
	// interface's: a real NIC would filter them out. The membership ends
	// with the socket.
	mreq := &unix.PacketMreq{Ifindex: int32(ifindex), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, mreq); err != nil {
		return nil, fmt.Errorf("link: afpacket %s: promiscuous mode: %w", where, err)
	}

	p := &PacketPort{ifname: ifname, ifindex: ifindex}
	for i := range p.tx.msgs {
		p.tx.msgs[i].Hdr.Iov = &p.tx.iov[i]
		p.tx.msgs[i].Hdr.SetIovlen(1)
	}
	for i := range p.rx.msgs {
		h := &p.rx.msgs[i].Hdr
		h.Iov = &p.rx.iov[i]
		h.SetIovlen(1)
		h.Name = (*byte)(unsafe.Pointer(&p.rx.names[i]))
		h.Control = (*byte)(unsafe.Pointer(&p.rx.oob[i][0]))
	}
	p.tx.send = p.sendmmsgLocked
	p.rx.recv = p.recvmmsgLocked
	return p, nil
}

// setPacketSocketBuffers sets both buffers of the socket fd to size bytes,
// past net.core.{r,w}mem_max if the process may (SO_RCVBUFFORCE needs
// CAP_NET_ADMIN), else as far as those limits allow.
func setPacketSocketBuffers(fd, size int) error {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size) == nil &&
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size) == nil {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, size); err != nil {
		return err
	}
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, size)
}

// htons returns v in network byte order, as sockaddr_ll's protocol wants it.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// checkIfname reports whether name can be a Linux interface name.
func checkIfname(name string) error {
	if name == "" || len(name) >= unix.IFNAMSIZ || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("%q is not an interface name (1 to %d characters, no '/', ':' or spaces)", name, unix.IFNAMSIZ-1)
	}
	return nil
}

// netnsPath returns the file of the network namespace netns: netns itself if
// it is a path, else the file `ip netns add` made for that name.
func netnsPath(netns string) string {
	if strings.ContainsRune(netns, '/') {
		return netns
	}
	return netnsDir + "/" + netns
}

// inNetns runs fn on an OS thread that has entered the network namespace
// whose file is nsPath; sockets fn creates stay in that namespace. The thread
// goes back to the scheduler only once it is back in its own namespace; if
// it cannot return, its goroutine ends locked, and the runtime ends the
// thread with it rather than reuse a thread in the wrong namespace.
func inNetns(nsPath string, fn func() error) error {
	target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("no network namespace %s (create it: ip netns add NAME): %w", nsPath, err)
		}
		return fmt.Errorf("network namespace %s: %w", nsPath, err)
	}
	defer unix.Close(target)

	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// This thread's own namespace, to come back to: the process's may
		// differ from the thread's in a program that uses setns itself.
		home, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("this thread's network namespace: %w", err)
			return
		}
		defer unix.Close(home)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread() // still at home
			if errors.Is(err, unix.EPERM) {
				err = fmt.Errorf("needs root (CAP_SYS_ADMIN): %w", err)
			}
			done <- fmt.Errorf("enter network namespace %s: %w", nsPath, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(home, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread dies with this goroutine.
			done <- fmt.Errorf("return from network namespace %s: %w", nsPath, err)
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}

// Interface returns the name of the port's interface.
func (p *PacketPort) Interface() string { return p.ifname }

// Netns returns the network namespace the port's socket lives in, as given
// to NewPacketPortInNetns ("" for the namespace of NewPacketPort's caller).
func (p *PacketPort) Netns() string { return p.netns }

// Send implements Port. It waits only while the socket's send buffer is
// full; frames lost further on are not reported here (see PacketDrops).
// Frames that are not frames, or that the kernel refuses as too long or
// because the interface is down, are released and counted (PacketDrops), as
// taken.
func (p *PacketPort) Send(bufs []*Buf) (int, error) {
	p.tx.mu.Lock()
	defer p.tx.mu.Unlock()
	if p.closed.Load() {
		return 0, ErrClosed
	}
	done := 0 // bufs[:done] are sent or counted, and released
	for done < len(bufs) {
		// Stage 1 and 2: point up to PacketBatch messages at bufs[done:end].
		k, end := 0, done
		for ; end < len(bufs) && k < PacketBatch; end++ {
			if b := bufs[end]; packetSendable(b) {
				f := b.Bytes()
				p.tx.iov[k].Base = &f[0]
				p.tx.iov[k].SetLen(len(f))
				p.tx.from[k] = end
				k++
			}
		}
		// Stage 3.
		var refused, refusedBytes, tooLong, down uint64
		retried := false // the first message left was refused once as ENETDOWN, and is tried again
		p.tx.next, p.tx.k = 0, k
		for p.tx.next < k {
			err := p.rc.Write(p.tx.send)
			if err == nil {
				switch p.tx.errno {
				case 0:
					if p.tx.n > 0 {
						p.tx.next += p.tx.n
						retried = false
						continue
					}
					err = unix.EIO // sendmmsg sent nothing and said nothing: never loop on it
				case unix.ENETDOWN:
					// When the interface went down, the kernel also left
					// ENETDOWN pending on the socket, and the next send
					// reports it even if the interface is up again: that
					// message was not sent, so try it once more.
					if !retried && p.interfaceUp() {
						retried = true
						continue
					}
					fallthrough
				case unix.EMSGSIZE:
					// The first message left was refused; the rest may go.
					if p.tx.errno == unix.EMSGSIZE {
						tooLong++
					} else {
						down++
					}
					refused++
					refusedBytes += uint64(p.tx.iov[p.tx.next].Len)
					p.tx.next++
					retried = false
					continue
				default:
					err = p.tx.errno
				}
			}
			// The caller keeps the first frame not sent and those after.
			end = p.tx.from[p.tx.next]
			p.finishTxLocked(bufs[done:end], k, refused, refusedBytes, tooLong, down)
			return end, p.ioError("send", err)
		}
		// Stage 4.
		p.finishTxLocked(bufs[done:end], k, refused, refusedBytes, tooLong, down)
		done = end
	}
	return done, nil
}

// packetMinVLANFrame is the shortest frame with an outer 802.1Q or 802.1ad
// tag that a receiving Linux keeps: lifting the tag, it reads the 2 bytes
// after it (skb_vlan_untag) and drops shorter frames unseen.
const packetMinVLANFrame = wire.EthHeaderLen + wire.VLANTagLen + 2

// packetSendable reports whether b is a frame the cable can carry: neither a
// runt (shorter than an Ethernet header, or an outer-tagged frame the
// receiver would drop) nor longer than MaxFrame.
func packetSendable(b *Buf) bool {
	return isFrame(b.Len) && (b.Len >= packetMinVLANFrame || !vlanOuter(b))
}

// vlanOuter reports whether the frame in b, at least an Ethernet header
// long, has an outer tag the receiving kernel lifts (802.1Q or 802.1ad).
func vlanOuter(b *Buf) bool {
	if b.Len < wire.EthHeaderLen {
		return false
	}
	t := binary.BigEndian.Uint16(b.Bytes()[12:])
	return t == wire.EtherTypeVLAN || t == etherTypeQinQ
}

// etherTypeQinQ is the IEEE 802.1ad S-tag TPID (protocols.md §7.1).
const etherTypeQinQ = 0x88A8

// interfaceUp reports whether the port's interface is administratively up.
func (p *PacketPort) interfaceUp() bool {
	ifr, err := unix.NewIfreq(p.ifname)
	if err != nil {
		return false
	}
	var ierr error
	if err := p.rc.Control(func(fd uintptr) { ierr = unix.IoctlIfreq(int(fd), unix.SIOCGIFFLAGS, ifr) }); err != nil {
		return false
	}
	return ierr == nil && ifr.Uint16()&unix.IFF_UP != 0
}

// sendmmsgLocked sends messages [next, k) with one sendmmsg. It reports
// false, for rc.Write to wait in the poller and call again, when the send
// buffer is full.
func (p *PacketPort) sendmmsgLocked(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd,
			uintptr(unsafe.Pointer(&p.tx.msgs[p.tx.next])), uintptr(p.tx.k-p.tx.next),
			unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			p.tx.n, p.tx.errno = int(n), 0
		default:
			p.tx.n, p.tx.errno = 0, e
		}
		return true
	}
}

// finishTxLocked releases and counts bufs, the frames of the last k
// messages (sent, or refused by the kernel as counted) and those set aside
// as not frames, and forgets the messages' frames.
func (p *PacketPort) finishTxLocked(bufs []*Buf, k int, refused, refusedBytes, tooLong, down uint64) {
	var frames, bytes, runt, oversize uint64
	for _, b := range bufs {
		switch {
		case b.Len < wire.EthHeaderLen || (b.Len < packetMinVLANFrame && vlanOuter(b)):
			runt++
		case b.Len > MaxFrame:
			oversize++
		default:
			frames++
			bytes += uint64(b.Len)
		}
		b.Release()
	}
	clear(p.tx.iov[:k])
	p.txFrames.Add(frames - refused)
	p.txBytes.Add(bytes - refusedBytes)
	if runt+oversize+tooLong+down > 0 {
		p.runt.Add(runt)
		p.oversize.Add(oversize + tooLong)
		p.down.Add(down)
	}
}

// Recv implements Port. A frame is at the default headroom, or 4 bytes in
// front of it when its outer VLAN tag, lifted by the kernel, was put back.
func (p *PacketPort) Recv(bufs []*Buf) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	p.rx.mu.Lock()
	defer p.rx.mu.Unlock()
	if p.closed.Load() {
		return 0, ErrClosed
	}
	// Stage 1.
	k := min(len(bufs), PacketBatch)
	for i, b := range p.rx.bufs[:k] {
		if b == nil {
			b = Get()
			p.rx.bufs[i] = b
			p.rx.iov[i].Base = &b.Space()[0]
			p.rx.iov[i].SetLen(MaxFrame)
		}
	}
	p.rx.k = k
	for {
		// The kernel overwrites the lengths with what it wrote: give each
		// message its full room again.
		for i := range k {
			m := &p.rx.msgs[i]
			m.Hdr.Namelen = unix.SizeofSockaddrLinklayer
			m.Hdr.SetControllen(packetOOBWords * 8)
			m.Hdr.Flags = 0
			m.Len = 0
		}
		// Stage 2.
		if err := p.rc.Read(p.rx.recv); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && !p.closed.Load() {
				// Waiting on an interface that went down: look again
				// whether it still exists.
				if p.stillBound() {
					_ = p.file.SetReadDeadline(time.Now().Add(downRecheck))
					continue
				}
				return 0, p.ioError("recv", unix.ENODEV)
			}
			return 0, p.ioError("recv", err)
		}
		if p.rx.errno != 0 {
			if p.rx.errno == unix.ENETDOWN && p.stillBound() {
				// The interface went down (the error is reported once);
				// the socket receives again when it comes back up. Its
				// deletion, which may follow, wakes no waiting socket:
				// while it is down, look again every downRecheck.
				_ = p.file.SetReadDeadline(time.Now().Add(downRecheck))
				continue
			}
			return 0, p.ioError("recv", p.rx.errno)
		}
		if p.rx.n > 0 {
			_ = p.file.SetReadDeadline(time.Time{}) // up again: wait for frames only
		}
		// Stage 3, 4 and 5.
		n := 0
		var bytes, runt, oversize uint64
		for i := range p.rx.n {
			msg := &p.rx.msgs[i]
			if p.rx.names[i].Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			size := int(msg.Len)
			tpid, tci, tagged := p.liftedTagLocked(i)
			full := size
			if tagged {
				full += wire.VLANTagLen
			}
			switch {
			case size < 2*6 || full < wire.EthHeaderLen:
				runt++
			case msg.Hdr.Flags&unix.MSG_TRUNC != 0 || full > MaxFrame:
				oversize++
			default:
				b := p.rx.bufs[i]
				b.Len = size
				if tagged {
					// After the MAC addresses, in the headroom.
					gap := b.InsertAt(2*6, wire.VLANTagLen)
					binary.BigEndian.PutUint16(gap[0:2], tpid)
					binary.BigEndian.PutUint16(gap[2:4], tci)
				}
				bufs[n] = b
				n++
				bytes += uint64(full)
				p.rx.bufs[i] = nil
				p.rx.iov[i] = unix.Iovec{}
			}
		}
		if runt+oversize > 0 {
			p.runt.Add(runt)
			p.oversize.Add(oversize)
		}
		if n > 0 {
			p.rxFrames.Add(uint64(n))
			p.rxBytes.Add(bytes)
			return n, nil
		}
		// Nothing but drops: every buffer is still armed.
	}
}

// recvmmsgLocked receives into the k armed messages with one recvmmsg. It
// reports false, for rc.Read to wait in the poller and call again, when no
// frame is queued.
func (p *PacketPort) recvmmsgLocked(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd,
			uintptr(unsafe.Pointer(&p.rx.msgs[0])), uintptr(p.rx.k),
			unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			p.rx.n, p.rx.errno = int(n), 0
		default:
			p.rx.n, p.rx.errno = 0, e
		}
		return true
	}
}

// liftedTagLocked returns the outer VLAN tag the kernel lifted off message
// i's frame, from its PACKET_AUXDATA control message: tp_vlan_tci is valid
// when tp_status has TP_STATUS_VLAN_VALID, tp_vlan_tpid when it has
// TP_STATUS_VLAN_TPID_VALID (Linux 3.14+; 0x8100 before).
func (p *PacketPort) liftedTagLocked(i int) (tpid, tci uint16, ok bool) {
	size := min(int(p.rx.msgs[i].Hdr.Controllen), packetOOBWords*8)
	oob := unsafe.Slice((*byte)(unsafe.Pointer(&p.rx.oob[i][0])), size)
	for len(oob) >= unix.CmsgLen(0) {
		// The kernel writes each cmsghdr aligned (CMSG_ALIGN), and oob
		// starts on a word.
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(oob) {
			return 0, 0, false
		}
		if h.Level == unix.SOL_PACKET && h.Type == unix.PACKET_AUXDATA && l >= unix.CmsgLen(auxdataLen) {
			aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
			if aux.Status&unix.TP_STATUS_VLAN_VALID == 0 {
				return 0, 0, false
			}
			tpid = wire.EtherTypeVLAN
			if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
				tpid = aux.Vlan_tpid
			}
			return tpid, aux.Vlan_tci, true
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return 0, 0, false
}

// stillBound reports whether the port's interface still exists under its
// name and index: a socket whose interface was deleted never receives again.
func (p *PacketPort) stillBound() bool {
	ifr, err := unix.NewIfreq(p.ifname)
	if err != nil {
		return false
	}
	var ierr error
	if err := p.rc.Control(func(fd uintptr) { ierr = unix.IoctlIfreq(int(fd), unix.SIOCGIFINDEX, ifr) }); err != nil {
		return false
	}
	return ierr == nil && int(ifr.Uint32()) == p.ifindex
}

// ioError maps an error of the socket to the port's: ErrClosed once closed.
func (p *PacketPort) ioError(op string, err error) error {
	if p.closed.Load() {
		return ErrClosed
	}
	if errors.Is(err, unix.ENETDOWN) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("link: afpacket %s on %s: the interface is gone (open a new port once it is back): %w", op, p.ifname, err)
	}
	return fmt.Errorf("link: afpacket %s on %s: %w", op, p.ifname, err)
}

// downRecheck is how often a Recv waiting on an interface that went down
// looks whether it was deleted meanwhile.
const downRecheck = 250 * time.Millisecond

// BatchSize implements Port.
func (p *PacketPort) BatchSize() int { return PacketBatch }

// Stats implements Port. Drops is the sum of Drops' reasons.
func (p *PacketPort) Stats() PortStats {
	d := p.Drops()
	return PortStats{
		TxFrames: p.txFrames.Load(), TxBytes: p.txBytes.Load(),
		RxFrames: p.rxFrames.Load(), RxBytes: p.rxBytes.Load(),
		Drops: d.total(),
	}
}

// Drops returns the frames not delivered, by reason. It asks the kernel for
// the receive drops since the last call (a system call).
func (p *PacketPort) Drops() PacketDrops {
	p.collectOverrun()
	return PacketDrops{
		Runt: p.runt.Load(), Oversize: p.oversize.Load(),
		Down: p.down.Load(), Overrun: p.overrun.Load(),
	}
}

// collectOverrun adds the kernel's receive drops since the last read
// (PACKET_STATISTICS, which resets them) to overrun. It does nothing once
// the socket is closed.
func (p *PacketPort) collectOverrun() {
	var st *unix.TpacketStats
	_ = p.rc.Control(func(fd uintptr) {
		st, _ = unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS)
	})
	if st != nil && st.Drops > 0 {
		p.overrun.Add(uint64(st.Drops))
	}
}

// Close implements Port: it closes the socket, which ends a Send or Recv in
// progress, or waiting, with ErrClosed. The peer is not told: it keeps
// waiting for frames. It returns the socket's close error the first time,
// nil after.
func (p *PacketPort) Close() error {
	var err error
	p.closeOnce.Do(func() {
		p.collectOverrun() // the last count the kernel holds
		p.closed.Store(true)
		err = p.file.Close()
		// Recv holds rx.mu until its recvmmsg has returned, and no system
		// call on the socket can start after file.Close.
		p.rx.mu.Lock()
		ReleaseAll(p.rx.bufs[:])
		clear(p.rx.iov[:])
		p.rx.mu.Unlock()
	})
	return err
}
