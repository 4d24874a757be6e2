package link

// A UDP cable end, so that an FI and its hosts can run as separate processes
// or on separate machines.
//
// Wire format: one UDP datagram carries exactly one Ethernet frame, byte for
// byte, from the destination MAC address to the end of the payload (no
// preamble, no FCS), with the VN-Tag and 802.1Q tags it carries. Nothing of
// ours is added, so the datagram's length is the frame's. A datagram shorter
// than an Ethernet header (14 bytes, empty ones included) or longer than
// MaxFrame is not a frame: it is counted and never delivered.
//
// The cable is lossy, like the Ethernet it stands for. When the receiver
// falls behind, its socket buffer fills and the kernel drops datagrams
// silently: neither end sees an error and Stats cannot count them (the kernel
// counts them in /proc/net/snmp, Udp RcvbufErrors). Whoever needs to know
// tracks sequence numbers above the link. Socket buffers are asked for
// UDPSocketBuffer bytes to make this rare. Loopback keeps order; a real
// network may reorder too.
//
// Send, for each group of up to UDPBatch frames:
//  1. frames that are not frames (see above) are set aside, to be counted;
//  2. the others are pointed at, in place, by preallocated messages;
//  3. WriteBatch (sendmmsg on Linux) sends them, in order, looping over
//     partial writes;
//  4. every buffer of the group is released and counted.
//
// Recv:
//  1. up to UDPBatch pooled buffers are armed: each message points at a
//     buffer's space after the default headroom, then at one spare byte that
//     only an oversized datagram reaches;
//  2. ReadBatch (recvmmsg on Linux) waits for at least one datagram and
//     fills the buffers in place (x/net allocates each datagram's source
//     address: two allocations per frame, the only ones on this path);
//  3. datagrams from an address other than the peer's, runts and oversized
//     ones are counted, and their buffers stay armed for the next read;
//  4. the others go to the caller in arrival order, and their slots are
//     armed again on the next call.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/net/ipv4"

	"github.com/vmfex/vmfex/wire"
)

// UDPBatch is the batch size of UDP cables: datagrams per sendmmsg/recvmmsg.
const UDPBatch = 64

// UDPSocketBuffer is the size asked for each UDP socket's send and receive
// buffers. On Linux the kernel caps it at net.core.{r,w}mem_max unless the
// process may raise it past them (CAP_NET_ADMIN), which is tried first.
// 32 MiB holds about 40 000 small frames, ~0.4 s of a 100 kpps stream: a
// receiver starved that long by a migration's pre-copy on a busy machine
// (measured: 4 MiB lost frames at 100 kpps during a 1 GiB pre-copy on 2
// cores; 32 MiB none). The memory is the kernel's, used only as a backlog.
const UDPSocketBuffer = 32 << 20

// UDPDrops are a UDP port's frames not delivered, by reason. Frames the
// network lost are not among them (see UDPPort).
type UDPDrops struct {
	// Runt counts frames shorter than an Ethernet header (empty ones
	// included), offered to Send or arriving.
	Runt uint64
	// Oversize counts frames longer than MaxFrame, offered to Send or
	// arriving.
	Oversize uint64
	// Foreign counts datagrams that arrived from an address other than the
	// peer's.
	Foreign uint64
}

// UDPPort is one end of a UDP cable. Each end owns one unconnected UDP socket;
// it sends every frame to the peer's address and accepts datagrams only from
// it, so the peer's process may start later or restart (an unconnected socket
// ignores the ICMP errors meanwhile). Bind each end to the address the other
// end names: a socket bound to a wildcard address sends from whichever
// address the route picks, and the peer drops its frames as Foreign if that is
// not the address it was given.
//
// It starts no goroutines. Send and Recv may run at the same time, each from
// any number of goroutines (calls of one kind take turns); Close is safe from
// any goroutine and unblocks both.
type UDPPort struct {
	conn   *net.UDPConn     // the socket; immutable
	pc     *ipv4.PacketConn // conn's batch I/O; immutable
	remote *net.UDPAddr     // the peer: destination of every frame, only source accepted; immutable

	tx struct {
		mu   sync.Mutex
		msgs []ipv4.Message // UDPBatch messages; msgs[i].Buffers is iov[i:i+1]; guarded by mu
		iov  [][]byte       // the frame each message sends, nil between calls; guarded by mu
		from []int          // index in Send's bufs of each message's frame; guarded by mu
	}
	rx struct {
		mu   sync.Mutex
		msgs []ipv4.Message // UDPBatch messages; msgs[i].Buffers is iov[2i:2i+2]; guarded by mu
		iov  [][]byte       // per message: its buffer's space, then spare; guarded by mu
		bufs []*Buf         // the armed buffer of each message, nil once delivered; guarded by mu
		// spare catches the first byte past MaxFrame; only written by the
		// kernel, during ReadBatch, under mu.
		spare [1]byte
	}

	closeOnce sync.Once
	closed    atomic.Bool

	txFrames, txBytes atomic.Uint64
	rxFrames, rxBytes atomic.Uint64
	runt, oversize    atomic.Uint64
	foreign           atomic.Uint64
}

var _ Port = (*UDPPort)(nil)

// NewUDPPort binds a UDP socket to local ("host:port") and returns the cable
// end that exchanges frames with the peer bound to remote.
func NewUDPPort(local, remote string) (*UDPPort, error) {
	laddr, err := net.ResolveUDPAddr("udp", local)
	if err != nil {
		return nil, fmt.Errorf("link: udp local address: %w", err)
	}
	raddr, err := net.ResolveUDPAddr("udp", remote)
	if err != nil {
		return nil, fmt.Errorf("link: udp remote address: %w", err)
	}
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("link: udp: %w", err)
	}
	p, err := NewUDPPortConn(conn, raddr)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return p, nil
}

// NewUDPPortConn returns the cable end over conn, an unconnected socket
// (net.ListenUDP), that exchanges frames with the peer at remote. It takes
// ownership of conn, except on error.
func NewUDPPortConn(conn *net.UDPConn, remote *net.UDPAddr) (*UDPPort, error) {
	if conn.RemoteAddr() != nil {
		return nil, errors.New("link: udp: socket is connected")
	}
	if remote == nil || remote.IP == nil || remote.IP.IsUnspecified() || remote.Port == 0 {
		return nil, fmt.Errorf("link: udp: remote address %v is not one peer", remote)
	}
	if err := setSocketBuffers(conn, UDPSocketBuffer); err != nil {
		return nil, fmt.Errorf("link: udp: socket buffers: %w", err)
	}
	p := &UDPPort{conn: conn, pc: ipv4.NewPacketConn(conn), remote: remote}

	p.tx.msgs = make([]ipv4.Message, UDPBatch)
	p.tx.iov = make([][]byte, UDPBatch)
	p.tx.from = make([]int, UDPBatch)
	for i := range p.tx.msgs {
		p.tx.msgs[i].Buffers = p.tx.iov[i : i+1]
		p.tx.msgs[i].Addr = remote
	}

	p.rx.msgs = make([]ipv4.Message, UDPBatch)
	p.rx.iov = make([][]byte, 2*UDPBatch)
	p.rx.bufs = make([]*Buf, UDPBatch)
	for i := range p.rx.msgs {
		p.rx.msgs[i].Buffers = p.rx.iov[2*i : 2*i+2]
		p.rx.iov[2*i+1] = p.rx.spare[:]
	}
	return p, nil
}

// setSocketBuffers sets both buffers of c to size bytes, past the system
// limits if the process may.
func setSocketBuffers(c *net.UDPConn, size int) error {
	if forceSocketBuffers(c, size) {
		return nil
	}
	if err := c.SetReadBuffer(size); err != nil {
		return err
	}
	return c.SetWriteBuffer(size)
}

// LocalAddr returns the address the port's socket is bound to.
func (p *UDPPort) LocalAddr() *net.UDPAddr { return p.conn.LocalAddr().(*net.UDPAddr) }

// RemoteAddr returns the peer's address.
func (p *UDPPort) RemoteAddr() *net.UDPAddr { return p.remote }

// isFrame reports whether n bytes can be an Ethernet frame on this cable.
func isFrame(n int) bool { return n >= wire.EthHeaderLen && n <= MaxFrame }

// Send implements Port. It never waits for the peer; frames the network
// loses are not reported. Frames that are not frames are released and
// counted (UDPDrops), as taken.
func (p *UDPPort) Send(bufs []*Buf) (int, error) {
	p.tx.mu.Lock()
	defer p.tx.mu.Unlock()
	if p.closed.Load() {
		return 0, ErrClosed
	}
	done := 0 // bufs[:done] are sent or counted, and released
	for done < len(bufs) {
		// Stage 1 and 2: point up to UDPBatch messages at bufs[done:end].
		k, end := 0, done
		for ; end < len(bufs) && k < UDPBatch; end++ {
			if b := bufs[end]; isFrame(b.Len) {
				p.tx.iov[k] = b.Bytes()
				p.tx.from[k] = end
				k++
			}
		}
		// Stage 3.
		for sent := 0; sent < k; {
			m, err := p.pc.WriteBatch(p.tx.msgs[sent:k], 0)
			sent += m
			if err == nil && m == 0 {
				err = io.ErrShortWrite
			}
			if err != nil && sent < k {
				// The caller keeps the first frame not sent and those after.
				end = p.tx.from[sent]
				p.finishTxLocked(bufs[done:end], k)
				return end, p.ioError("send", err)
			}
		}
		// Stage 4.
		p.finishTxLocked(bufs[done:end], k)
		done = end
	}
	return done, nil
}

// finishTxLocked releases and counts bufs, the frames sent or refused by the
// last WriteBatch of k messages, and forgets their addresses.
func (p *UDPPort) finishTxLocked(bufs []*Buf, k int) {
	var frames, bytes, runt, oversize uint64
	for _, b := range bufs {
		switch {
		case b.Len < wire.EthHeaderLen:
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
	p.txFrames.Add(frames)
	p.txBytes.Add(bytes)
	if runt+oversize > 0 {
		p.runt.Add(runt)
		p.oversize.Add(oversize)
	}
}

// Recv implements Port. The frames are at the default headroom.
func (p *UDPPort) Recv(bufs []*Buf) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	p.rx.mu.Lock()
	defer p.rx.mu.Unlock()
	if p.closed.Load() {
		return 0, ErrClosed
	}
	// Stage 1.
	k := min(len(bufs), UDPBatch)
	for i, b := range p.rx.bufs[:k] {
		if b == nil {
			b = Get()
			p.rx.bufs[i] = b
			p.rx.iov[2*i] = b.Space()[:MaxFrame]
		}
	}
	for {
		// Stage 2.
		m, err := p.pc.ReadBatch(p.rx.msgs[:k], 0)
		if err != nil {
			return 0, p.ioError("recv", err)
		}
		// Stage 3 and 4.
		n := 0
		var bytes, runt, oversize, foreign uint64
		for i := range m {
			msg := &p.rx.msgs[i]
			switch {
			case !p.fromPeer(msg.Addr):
				foreign++
			case msg.N < wire.EthHeaderLen:
				runt++
			case msg.N > MaxFrame:
				oversize++
			default:
				b := p.rx.bufs[i]
				b.Len = msg.N
				bufs[n] = b
				n++
				bytes += uint64(msg.N)
				p.rx.bufs[i] = nil
				p.rx.iov[2*i] = nil
			}
			msg.Addr = nil
		}
		if runt+oversize+foreign > 0 {
			p.runt.Add(runt)
			p.oversize.Add(oversize)
			p.foreign.Add(foreign)
		}
		if n > 0 {
			p.rxFrames.Add(uint64(n))
			p.rxBytes.Add(bytes)
			return n, nil
		}
		// Nothing but drops: every buffer is still armed.
	}
}

// fromPeer reports whether a, a datagram's source, is the peer.
func (p *UDPPort) fromPeer(a net.Addr) bool {
	u, ok := a.(*net.UDPAddr)
	return ok && u.Port == p.remote.Port && u.IP.Equal(p.remote.IP)
}

// ioError maps an error of the socket to the port's: ErrClosed once closed.
func (p *UDPPort) ioError(op string, err error) error {
	if p.closed.Load() || errors.Is(err, net.ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("link: udp %s: %w", op, err)
}

// BatchSize implements Port.
func (p *UDPPort) BatchSize() int { return UDPBatch }

// Stats implements Port. Drops is the sum of Drops' reasons.
func (p *UDPPort) Stats() PortStats {
	d := p.Drops()
	return PortStats{
		TxFrames: p.txFrames.Load(), TxBytes: p.txBytes.Load(),
		RxFrames: p.rxFrames.Load(), RxBytes: p.rxBytes.Load(),
		Drops: d.Runt + d.Oversize + d.Foreign,
	}
}

// Drops returns the frames not delivered, by reason.
func (p *UDPPort) Drops() UDPDrops {
	return UDPDrops{Runt: p.runt.Load(), Oversize: p.oversize.Load(), Foreign: p.foreign.Load()}
}

// Close implements Port: it closes the socket, which ends a Send or Recv in
// progress with ErrClosed. The peer is not told: it keeps waiting for frames.
// It returns the socket's close error the first time, nil after.
func (p *UDPPort) Close() error {
	var err error
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		err = p.conn.Close()
		// Recv holds rx.mu until its ReadBatch has returned.
		p.rx.mu.Lock()
		ReleaseAll(p.rx.bufs)
		clear(p.rx.iov)
		p.rx.mu.Unlock()
	})
	return err
}
