package link

// A raw-Ethernet cable end: an AF_PACKET socket on a Linux interface,
// typically one end of a veth pair whose other end sits in another network
// namespace, so that an FI process and a host process are cabled like two
// boxes and `tcpdump -i IF` or tshark on either end shows the VN-Tagged
// frames byte for byte.
//
//	   namespace A                               namespace B
//	+-----------------+                       +-----------------+
//	| FI process      |       veth pair       | host process    |
//	|  PacketPort ----+-- vethA ===== vethB --+---- PacketPort  |
//	|  (AF_PACKET)    |                       |    (AF_PACKET)  |
//	+-----------------+                       +-----------------+
//
// Wire format: the frame itself, from the destination MAC address to the end
// of the payload (no preamble, no FCS), with its VN-Tag and 802.1Q tags.
// Nothing is added. The interface's MTU must let MaxFrame through: Linux
// measures the MTU without the 14-byte Ethernet header, so it must be at least
// PacketMTU; NewPacketPort refuses a smaller one, and SetupVethPair creates
// pairs with it.
//
// The cable is lossy, like the Ethernet it stands for, but unlike UDP it says
// where: frames that arrive while the receiving socket's buffer is full are
// dropped by the kernel and counted by it (PACKET_STATISTICS), and Stats
// reports them as Overrun. Frames a veth drops on its way (the peer is down,
// or the per-CPU backlog of net.core.netdev_max_backlog frames is full) are
// counted only by the veth (`ip -s link`: TX dropped / RX dropped). Socket
// buffers are asked for PacketSocketBuffer bytes to make loss rare.
//
// Send, for each group of up to PacketBatch frames:
//  1. frames that are not frames (shorter than an Ethernet header, longer
//     than MaxFrame) are set aside, to be counted, and so are frames with an
//     outer 802.1Q/802.1ad tag shorter than 20 bytes, which a receiving Linux
//     drops unseen (it reads the 2 bytes after the tag when lifting it);
//  2. the others are pointed at, in place, by preallocated messages;
//  3. sendmmsg sends them in order, looping over partial sends; when the
//     socket's send buffer is full it waits in the runtime's poller; a frame
//     the kernel refuses as too long for the MTU (someone lowered it) is
//     counted Oversize, and one refused because the interface is down is
//     counted Down, as a cut cable loses it (a stale ENETDOWN, left pending
//     on the socket by an earlier down, is recognised and the frame sent);
//  4. every buffer of the group is released and counted.
//
// Recv:
//  1. up to PacketBatch pooled buffers are armed: each message points at a
//     buffer's space after the default headroom (MaxFrame bytes), at a
//     link-layer address and at room for one PACKET_AUXDATA control message;
//  2. recvmmsg takes what the socket holds, waiting in the runtime's poller
//     for at least one frame;
//  3. the kernel lifts the outer 802.1Q / 802.1ad tag of a received frame
//     into metadata before any packet socket sees it; when the frame's
//     auxdata says so (TP_STATUS_VLAN_VALID), the tag (TPID tp_vlan_tpid,
//     TCI tp_vlan_tci) is put back at offset 12, in the headroom, so the
//     frame is again the one sent;
//  4. runts and frames longer than MaxFrame (tag included) are counted and
//     their buffers stay armed; frames this socket itself sent are ignored
//     (the kernel already filters them, PACKET_IGNORE_OUTGOING, where it can);
//  5. the others go to the caller in arrival order, and their slots are armed
//     again on the next call.
//
// Why recvmmsg/sendmmsg and not a PACKET_MMAP (TPACKET_V3) ring: frames must
// end up in Bufs that the caller then owns, so a ring costs the same one copy
// per frame as recvmmsg, plus a ring of its own memory per socket; a V3 ring
// hands frames over by block, with a block-retire timer that trades latency
// for batching; and a TX ring cannot send from the caller's buffers in place.
// With recvmmsg the kernel copies once, straight into the caller's buffer,
// and batching costs one system call per PacketBatch frames.
//
// Why not PACKET_QDISC_BYPASS: it skips the ETH_P_ALL taps on transmit, so a
// capture on the sending interface would no longer see our frames.

import (
	"errors"

	"github.com/vmfex/vmfex/wire"
)

// PacketBatch is the batch size of raw-Ethernet cables: frames per
// sendmmsg/recvmmsg.
const PacketBatch = 64

// PacketMTU is the smallest interface MTU that carries every frame up to
// MaxFrame: Linux counts the MTU without the 14-byte Ethernet header (the
// VN-Tag and 802.1Q tags are inside it).
const PacketMTU = MaxFrame - wire.EthHeaderLen

// PacketSocketBuffer is the size asked for each packet socket's send and
// receive buffers. The kernel caps it at net.core.{r,w}mem_max unless the
// process may raise it past them (CAP_NET_ADMIN), which is tried first.
// 32 MiB holds about 40 000 small frames, ~0.4 s of a 100 kpps stream: a
// receiver starved that long by a migration's pre-copy on a busy machine
// (measured: 4 MiB lost frames at 100 kpps during a 1 GiB pre-copy on 2
// cores; 32 MiB none). The memory is the kernel's, used only as a backlog.
const PacketSocketBuffer = 32 << 20

// ErrNeedsLinux is returned by raw-Ethernet cables and veth helpers on other
// systems: they use AF_PACKET sockets and network namespaces.
var ErrNeedsLinux = errors.New("link: raw Ethernet cables need Linux (AF_PACKET, network namespaces); use a UDP or in-memory cable here")

// PacketDrops are a raw-Ethernet port's frames not delivered, by reason.
type PacketDrops struct {
	// Runt counts frames shorter than an Ethernet header (empty ones
	// included), offered to Send or arriving, and frames offered to Send
	// with an outer 802.1Q or 802.1ad tag and less than 20 bytes, which the
	// receiving kernel would drop without a trace.
	Runt uint64
	// Oversize counts frames longer than MaxFrame, offered to Send or
	// arriving (an arriving frame's lifted VLAN tag counted in), and frames
	// the kernel refused to send as longer than the interface's MTU.
	Oversize uint64
	// Down counts frames Send could not send because the interface was down.
	Down uint64
	// Overrun counts frames the kernel dropped on arrival because the
	// socket's receive buffer was full (PACKET_STATISTICS tp_drops). It is
	// read from the kernel when Stats or Drops is called.
	Overrun uint64
}

// total is the sum of all reasons.
func (d PacketDrops) total() uint64 { return d.Runt + d.Oversize + d.Down + d.Overrun }
