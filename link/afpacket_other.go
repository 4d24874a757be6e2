//go:build !linux

package link

// PacketPort is one end of a raw-Ethernet cable. Only Linux has them (see
// afpacket_linux.go); here every constructor returns ErrNeedsLinux.
type PacketPort struct{}

var _ Port = (*PacketPort)(nil)

// NewPacketPort returns ErrNeedsLinux: raw-Ethernet cables use AF_PACKET
// sockets.
func NewPacketPort(ifname string) (*PacketPort, error) { return nil, ErrNeedsLinux }

// NewPacketPortInNetns returns ErrNeedsLinux: raw-Ethernet cables use
// AF_PACKET sockets and network namespaces.
func NewPacketPortInNetns(netns, ifname string) (*PacketPort, error) { return nil, ErrNeedsLinux }

// Interface returns "".
func (p *PacketPort) Interface() string { return "" }

// Netns returns "".
func (p *PacketPort) Netns() string { return "" }

// Send implements Port: it takes nothing and returns ErrNeedsLinux.
func (p *PacketPort) Send(bufs []*Buf) (int, error) { return 0, ErrNeedsLinux }

// Recv implements Port: it returns ErrNeedsLinux.
func (p *PacketPort) Recv(bufs []*Buf) (int, error) { return 0, ErrNeedsLinux }

// BatchSize implements Port.
func (p *PacketPort) BatchSize() int { return PacketBatch }

// Stats implements Port: all zero.
func (p *PacketPort) Stats() PortStats { return PortStats{} }

// Drops returns no drops.
func (p *PacketPort) Drops() PacketDrops { return PacketDrops{} }

// Close implements Port.
func (p *PacketPort) Close() error { return nil }
