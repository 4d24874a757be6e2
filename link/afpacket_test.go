//go:build linux

package link

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfex/vmfex/internal/testutil"
	"github.com/vmfex/vmfex/wire"
)

// packetDeadline bounds how long a test waits for frames before it calls
// them lost: a failure deadline, never a measure.
const packetDeadline = 30 * time.Second

// etherTypeTest is the payload EtherType of test frames (IEEE 802 local
// experimental 1): no protocol of the kernel answers it.
const etherTypeTest = 0x88B5

// packetCable is a veth pair between two fresh network namespaces, with a
// PacketPort at each end.
type packetCable struct {
	nsA, nsB string // the namespaces, unique to the test run
	ifA, ifB string // the veth ends: ifA in nsA, ifB in nsB
	a, b     *PacketPort
}

var packetCableSeq atomic.Uint32

// requirePacketCables skips the test where veth pairs in network namespaces
// and AF_PACKET sockets cannot be made.
func requirePacketCables(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("raw-Ethernet cables need root (CAP_NET_ADMIN and CAP_SYS_ADMIN for namespaces and veth pairs, CAP_NET_RAW for AF_PACKET): run the tests as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("raw-Ethernet cable tests need iproute2's ip command: apt-get install iproute2")
	}
}

// newPacketCable makes a packetCable whose veth MTU is mtu (0 for
// PacketMTU). Everything is removed when the test ends, failed or not.
func newPacketCable(t testing.TB, mtu int) *packetCable {
	t.Helper()
	requirePacketCables(t)
	// Unique across parallel test processes (pid) and within one (seq);
	// the random part guards against pid reuse after a crashed run.
	id := fmt.Sprintf("%d-%d-%04x", os.Getpid(), packetCableSeq.Add(1), rand.Uint32()&0xffff)
	suffix := fmt.Sprintf("%08x", rand.Uint32())
	c := &packetCable{
		nsA: "vmfex-link-" + id + "-a", nsB: "vmfex-link-" + id + "-b",
		ifA: "pka" + suffix, ifB: "pkb" + suffix,
	}
	// Registered before anything exists, so a failure halfway cleans up.
	for _, ns := range []string{c.nsA, c.nsB} {
		t.Cleanup(func() {
			if err := DeleteNetns(ns); err != nil {
				t.Errorf("DeleteNetns(%s): %v", ns, err)
			}
		})
	}
	if _, err := AddNetns(c.nsA); err != nil {
		t.Skipf("no network namespaces here: %v", err)
	}
	if err := SetupVethPair(c.nsA, c.ifA, c.nsB, c.ifB, mtu); err != nil {
		t.Fatalf("SetupVethPair(%s, %s, %s, %s, %d): %v", c.nsA, c.ifA, c.nsB, c.ifB, mtu, err)
	}
	c.a = openPacketPort(t, c.nsA, c.ifA)
	c.b = openPacketPort(t, c.nsB, c.ifB)
	return c
}

// openPacketPort opens a port closed when the test ends.
func openPacketPort(t testing.TB, ns, ifname string) *PacketPort {
	t.Helper()
	p, err := NewPacketPortInNetns(ns, ifname)
	if err != nil {
		t.Fatalf("NewPacketPortInNetns(%s, %s): %v", ns, ifname, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// noise is the payload of test frames: random bytes, so that a frame
// shifted or cut somewhere does not compare equal.
var noise = func() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	p := make([]byte, MaxFrame+256)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}()

// Tags, as they sit after the source MAC.
func vnTag(w uint32) []byte {
	b := make([]byte, wire.VNTagLen)
	wire.PutVNTag(b, wire.ParseVNTagWord(w))
	return b
}

func vlanTag(tpid, tci uint16) []byte {
	b := make([]byte, wire.VLANTagLen)
	binary.BigEndian.PutUint16(b, tpid)
	binary.BigEndian.PutUint16(b[2:], tci)
	return b
}

// tagged returns a frame of n bytes: MAC addresses, tags, the test
// EtherType, then noise from offset seed. n must be at least minLen(tags).
func tagged(n, seed int, tags ...[]byte) []byte {
	f := make([]byte, 0, n)
	f = append(f, 0x02, 0, 0, 0, 0xb, byte(seed)) // destination: a locally administered unicast MAC
	f = append(f, 0x02, 0, 0, 0, 0xa, 0x01)       // source
	for _, t := range tags {
		f = append(f, t...)
	}
	f = binary.BigEndian.AppendUint16(f, etherTypeTest)
	return append(f, noise[seed:seed+n-len(f)]...)
}

// minLen is the shortest frame with tags: MACs, tags and an EtherType.
func minLen(tags ...[]byte) int {
	n := wire.EthHeaderLen
	for _, t := range tags {
		n += len(t)
	}
	return n
}

// sendAll sends copies of frames through p in one call.
func sendAll(t testing.TB, p Port, frames [][]byte) {
	t.Helper()
	bufs := make([]*Buf, len(frames))
	for i, f := range frames {
		bufs[i] = Get()
		if !bufs[i].SetBytes(f) {
			t.Fatalf("frame %d of %d bytes does not fit a Buf", i, len(f))
		}
	}
	if n, err := p.Send(bufs); n != len(bufs) || err != nil {
		ReleaseAll(bufs[n:])
		t.Fatalf("Send(%d frames) = %d, %v", len(bufs), n, err)
	}
}

// received is a copy of a received frame and where it sat in its Buf.
type received struct {
	frame []byte
	off   int
}

// recvExactly receives n frames from p. If they have not all come within
// packetDeadline it closes p, to end Recv, and fails the test.
func recvExactly(t testing.TB, p *PacketPort, n int) []received {
	t.Helper()
	var late atomic.Bool
	watchdog := time.AfterFunc(packetDeadline, func() { late.Store(true); p.Close() })
	defer watchdog.Stop()
	got := make([]received, 0, n)
	bufs := make([]*Buf, PacketBatch)
	for len(got) < n {
		k, err := p.Recv(bufs[:min(len(bufs), n-len(got))])
		for _, b := range bufs[:k] {
			got = append(got, received{bytes.Clone(b.Bytes()), b.Off})
		}
		ReleaseAll(bufs[:k])
		if err != nil {
			if late.Load() {
				t.Fatalf("%d of %d frames came within %v; the rest were lost (receiver drops %+v)", len(got), n, packetDeadline, p.Drops())
			}
			t.Fatalf("Recv after %d of %d frames: %v", len(got), n, err)
		}
	}
	return got
}

// carried reports whether Send puts f on the cable: not a frame with an
// outer 802.1Q/802.1ad tag too short for the receiving kernel to keep.
func carried(f []byte) bool {
	t := binary.BigEndian.Uint16(f[12:])
	return len(f) >= packetMinVLANFrame || (t != wire.EtherTypeVLAN && t != etherTypeQinQ)
}

// exchange sends frames from one port to the other, a batch at a time, each
// batch received before the next is sent (so no socket buffer can overflow),
// and checks every frame the cable carries arrives byte for byte, in order.
// It returns how many frames were not carried.
func exchange(t testing.TB, from, to *PacketPort, frames [][]byte) (refused int) {
	t.Helper()
	for start := 0; start < len(frames); start += PacketBatch {
		batch := frames[start:min(len(frames), start+PacketBatch)]
		sendAll(t, from, batch)
		var want [][]byte
		for _, f := range batch {
			if carried(f) {
				want = append(want, f)
			} else {
				refused++
			}
		}
		got := recvExactly(t, to, len(want))
		for i, r := range got {
			if !bytes.Equal(r.frame, want[i]) {
				t.Fatalf("frame %d of the batch from %d: got %d bytes %x..., want the %d bytes sent, %x...",
					i, start, len(r.frame), r.frame[:min(24, len(r.frame))], len(want[i]), want[i][:min(24, len(want[i]))])
			}
		}
	}
	return refused
}

// TestPacketAllSizes sends frames of every size from the shortest to
// MaxFrame, untagged, with a VN-Tag, with an 802.1Q tag and with both (VN-Tag
// outer), and checks they arrive byte for byte, in order, and are counted.
func TestPacketAllSizes(t *testing.T) {
	testutil.CheckGoroutines(t)
	c := newPacketCable(t, 0)
	var frames, bytes, runts uint64
	for _, tt := range []struct {
		name string
		tags [][]byte
	}{
		{"untagged", nil},
		{"VN-Tag", [][]byte{vnTag(0x0005_0045)}},
		{"802.1Q", [][]byte{vlanTag(wire.EtherTypeVLAN, wire.TCI(5, 100))}},
		{"VN-Tag and 802.1Q", [][]byte{vnTag(0x8123_8045), vlanTag(wire.EtherTypeVLAN, wire.TCI(3, 4094))}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var all [][]byte
			for n := minLen(tt.tags...); n <= MaxFrame; n++ {
				f := tagged(n, n%251, tt.tags...)
				all = append(all, f)
				if carried(f) {
					frames++
					bytes += uint64(n)
				}
			}
			runts += uint64(exchange(t, c.a, c.b, all))
		})
	}
	if t.Failed() {
		return
	}
	// 802.1Q frames of 18 and 19 bytes are refused (packetMinVLANFrame).
	if runts != 2 {
		t.Errorf("%d frames not carried, want 2", runts)
	}
	if st, want := c.a.Stats(), (PortStats{TxFrames: frames, TxBytes: bytes, Drops: runts}); st != want {
		t.Errorf("sender Stats() = %+v, want %+v", st, want)
	}
	if st, want := c.b.Stats(), (PortStats{RxFrames: frames, RxBytes: bytes}); st != want {
		t.Errorf("receiver Stats() = %+v, want %+v", st, want)
	}
}

// TestPacketTags checks tag stacks arrive byte for byte, in both directions.
// The kernel lifts an outer 802.1Q or 802.1ad tag off a received frame; the
// port puts it back in the headroom, 4 bytes before the default offset,
// which shows the auxdata path ran.
func TestPacketTags(t *testing.T) {
	c := newPacketCable(t, 0)
	for _, tt := range []struct {
		name   string
		tags   [][]byte
		lifted bool // the outer tag is one the kernel lifts
	}{
		{"untagged", nil, false},
		{"VN-Tag", [][]byte{vnTag(0x8123_8045)}, false},
		{"VN-Tag downstream looped, vif list", [][]byte{vnTag(0xFFFF_8FFF)}, false},
		{"802.1Q", [][]byte{vlanTag(wire.EtherTypeVLAN, wire.TCI(5, 100))}, true},
		{"802.1Q priority-tagged (VID 0)", [][]byte{vlanTag(wire.EtherTypeVLAN, 0)}, true},
		{"802.1Q PCP 7 DEI VID 4095", [][]byte{vlanTag(wire.EtherTypeVLAN, 0xFFFF)}, true},
		{"802.1ad", [][]byte{vlanTag(0x88A8, wire.TCI(1, 200))}, true},
		{"802.1ad then 802.1Q (QinQ)", [][]byte{vlanTag(0x88A8, 200), vlanTag(wire.EtherTypeVLAN, 100)}, true},
		{"VN-Tag then 802.1Q", [][]byte{vnTag(0x8123_8045), vlanTag(wire.EtherTypeVLAN, wire.TCI(5, 100))}, false},
		{"VN-Tag then QinQ", [][]byte{vnTag(0x0001_0002), vlanTag(0x88A8, 7), vlanTag(wire.EtherTypeVLAN, 8)}, false},
		{"802.1Q then VN-Tag", [][]byte{vlanTag(wire.EtherTypeVLAN, 100), vnTag(0x8123_8045)}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var frames [][]byte
			for _, n := range []int{max(minLen(tt.tags...), packetMinVLANFrame), 60, 64, 1514, 1518, 1522, MaxFrame} {
				frames = append(frames, tagged(n, len(frames), tt.tags...))
			}
			wantOff := Headroom
			if tt.lifted {
				wantOff -= wire.VLANTagLen
			}
			for _, dir := range []struct {
				name     string
				from, to *PacketPort
			}{{"a to b", c.a, c.b}, {"b to a", c.b, c.a}} {
				sendAll(t, dir.from, frames)
				for i, r := range recvExactly(t, dir.to, len(frames)) {
					if !bytes.Equal(r.frame, frames[i]) {
						t.Errorf("%s, %d-byte frame: got % x..., want % x...", dir.name, len(frames[i]), r.frame[:min(26, len(r.frame))], frames[i][:26])
					}
					if r.off != wantOff {
						t.Errorf("%s, %d-byte frame at offset %d, want %d", dir.name, len(frames[i]), r.off, wantOff)
					}
				}
			}
		})
	}
	for _, p := range []*PacketPort{c.a, c.b} {
		if d := p.Drops(); d != (PacketDrops{}) {
			t.Errorf("%s Drops() = %+v, want none", p.Interface(), d)
		}
	}
}

// TestPacketSendRefusesNonFrames checks Send takes, releases and counts
// frames too short or too long for the cable (802.1Q and 802.1ad frames the
// receiving kernel would drop included), and sends the rest.
func TestPacketSendRefusesNonFrames(t *testing.T) {
	c := newPacketCable(t, 0)
	big := Get()
	big.SetBytes(tagged(MaxFrame, 0))
	big.InsertAt(12, wire.VLANTagLen) // one tag more than fits
	short := Get()
	short.SetBytes(tagged(wire.EthHeaderLen, 0)[:wire.EthHeaderLen-1])
	q := vlanTag(wire.EtherTypeVLAN, wire.TCI(0, 10))
	ad := vlanTag(etherTypeQinQ, wire.TCI(0, 10))
	good := [][]byte{tagged(60, 1), tagged(64, 2, vnTag(0x0001_0001)), tagged(packetMinVLANFrame, 3, q)}
	bufs := []*Buf{Get(), short, big}
	for _, f := range append(good, tagged(18, 4, q), tagged(19, 5, ad)) {
		b := Get()
		b.SetBytes(f)
		bufs = append(bufs, b)
	}
	if n, err := c.a.Send(bufs); n != len(bufs) || err != nil {
		t.Fatalf("Send = %d, %v; want %d, nil", n, err, len(bufs))
	}
	for i, r := range recvExactly(t, c.b, len(good)) {
		if !bytes.Equal(r.frame, good[i]) {
			t.Errorf("received frame %d = %d bytes, want the %d-byte valid frame", i, len(r.frame), len(good[i]))
		}
	}
	if d, want := c.a.Drops(), (PacketDrops{Runt: 4, Oversize: 1}); d != want {
		t.Errorf("Drops() = %+v, want %+v", d, want)
	}
	if st := c.a.Stats(); st.TxFrames != 3 || st.TxBytes != 60+64+packetMinVLANFrame || st.Drops != 5 {
		t.Errorf("Stats() = %+v, want 3 frames, %d bytes, 5 drops", st, 60+64+packetMinVLANFrame)
	}
}

// inject writes frame onto p's interface through p's socket, past the
// checks of Send, as a misbehaving peer would.
func inject(t *testing.T, p *PacketPort, frame []byte) {
	t.Helper()
	var werr error
	if err := p.rc.Control(func(fd uintptr) { _, werr = unix.Write(int(fd), frame) }); err != nil || werr != nil {
		t.Fatalf("writing %d bytes on %s: %v, %v", len(frame), p.Interface(), err, werr)
	}
}

// TestPacketRecvOversize runs a cable whose MTU lets frames longer than
// MaxFrame through, and checks the receiver counts them, a lifted tag
// included, and delivers the rest in order.
func TestPacketRecvOversize(t *testing.T) {
	c := newPacketCable(t, PacketMTU+64)
	q := vlanTag(wire.EtherTypeVLAN, wire.TCI(0, 10))
	frames := []struct {
		frame     []byte
		delivered bool
	}{
		{tagged(MaxFrame+1, 0), false},
		{tagged(MaxFrame, 1), true},
		{tagged(MaxFrame+1, 2, q), false}, // MaxFrame-3 bytes once the kernel lifted its tag
		{tagged(MaxFrame, 3, q), true},
		{tagged(MaxFrame+64, 4), false},
		{tagged(60, 5), true},
	}
	var want [][]byte
	for _, f := range frames {
		inject(t, c.a, f.frame)
		if f.delivered {
			want = append(want, f.frame)
		}
	}
	for i, r := range recvExactly(t, c.b, len(want)) {
		if !bytes.Equal(r.frame, want[i]) {
			t.Errorf("delivered frame %d = %d bytes, want the %d bytes of the frame that fits", i, len(r.frame), len(want[i]))
		}
	}
	if d, want := c.b.Drops(), (PacketDrops{Oversize: 3}); d != want {
		t.Errorf("receiver Drops() = %+v, want %+v", d, want)
	}
}

// TestPacketIgnoresOwnFrames checks a port does not receive the frames it
// sent: a packet socket sees its interface's transmissions too.
func TestPacketIgnoresOwnFrames(t *testing.T) {
	c := newPacketCable(t, 0)
	var frames [][]byte
	for i := range 10 {
		frames = append(frames, tagged(64, i))
	}
	sendAll(t, c.a, frames)
	recvExactly(t, c.b, len(frames))
	marker := tagged(100, 99, vnTag(0x8001_0001))
	sendAll(t, c.b, [][]byte{marker})
	if got := recvExactly(t, c.a, 1); !bytes.Equal(got[0].frame, marker) {
		t.Errorf("first frame received by the sender = %d bytes, want the peer's %d-byte marker", len(got[0].frame), len(marker))
	}
	if st := c.a.Stats(); st.RxFrames != 1 {
		t.Errorf("sender Stats().RxFrames = %d, want 1", st.RxFrames)
	}
}

// TestPacketLinkDown takes one end's interface down: Send counts its frames
// as Down, and once the interface is up again both directions work.
func TestPacketLinkDown(t *testing.T) {
	c := newPacketCable(t, 0)
	setLink := func(state string) {
		t.Helper()
		if err := ipCommand("-n", c.nsA, "link", "set", "dev", c.ifA, state); err != nil {
			t.Fatalf("%v", err)
		}
		if state == "up" {
			for _, end := range [][2]string{{c.nsA, c.ifA}, {c.nsB, c.ifB}} {
				if err := waitLinkReady(end[0], end[1]); err != nil {
					t.Fatalf("%s: %v", end[1], err)
				}
			}
		}
	}
	setLink("down")
	sendAll(t, c.a, [][]byte{tagged(64, 1), tagged(64, 2), tagged(64, 3)})
	if d := c.a.Drops(); d.Down != 3 {
		t.Errorf("Drops() with the interface down = %+v, want Down 3", d)
	}
	setLink("up")
	// The kernel left ENETDOWN pending on the socket; the first send or
	// receive after the interface is back reports it, and the port must
	// not take it for a down link.
	f := tagged(64, 4, vnTag(0x0001_0001))
	exchange(t, c.a, c.b, [][]byte{f})
	exchange(t, c.b, c.a, [][]byte{f})
	setLink("down")
	setLink("up")
	exchange(t, c.b, c.a, [][]byte{f})
	exchange(t, c.a, c.b, [][]byte{f})
	if st := c.a.Stats(); st.TxFrames != 2 || st.RxFrames != 2 || st.Drops != 3 {
		t.Errorf("Stats() = %+v, want 2 frames each way, 3 drops", st)
	}
}

// waitParkedInRecv returns once a goroutine waits for the socket to become
// readable in the runtime's poller.
func waitParkedInRecv(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(packetDeadline)
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if bytes.Contains(buf[:n], []byte("(*PacketPort).Recv")) && bytes.Contains(buf[:n], []byte("waitRead")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no goroutine waits in PacketPort.Recv after %v", packetDeadline)
		}
		time.Sleep(time.Millisecond) // poll the scheduler's view; nothing is timed
	}
}

func TestPacketClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	c := newPacketCable(t, 0)

	done := make(chan error, 1)
	go func() {
		n, err := c.a.Recv(make([]*Buf, 8))
		if n != 0 {
			err = fmt.Errorf("got %d frames from an idle cable", n)
		}
		done <- err
	}()
	waitParkedInRecv(t)
	if err := c.a.Close(); err != nil {
		t.Errorf("Close = %v, want nil", err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("Recv waiting when Close came = %v, want ErrClosed", err)
	}
	for i := range 2 {
		if err := c.a.Close(); err != nil {
			t.Errorf("Close #%d = %v, want nil", i+2, err)
		}
	}
	f := Get()
	f.SetBytes(tagged(64, 0))
	if n, err := c.a.Send([]*Buf{f}); n != 0 || !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %d, %v; want 0, ErrClosed", n, err)
	}
	if n, err := c.a.Recv([]*Buf{nil}); n != 0 || !errors.Is(err, ErrClosed) {
		t.Errorf("Recv after Close = %d, %v; want 0, ErrClosed", n, err)
	}
	// The peer is not told; its frames are lost, as on a cut cable.
	if n, err := c.b.Send([]*Buf{f}); n != 1 || err != nil {
		t.Errorf("peer Send to a closed end = %d, %v; want 1, nil", n, err)
	}
}

func TestPacketNewErrors(t *testing.T) {
	requirePacketCables(t)
	for _, tt := range []struct {
		netns, ifname string
		want          string // in the error
	}{
		{"", "vmfex-none0", "no such interface"},
		{"", "", "not an interface name"},
		{"", "a/b", "not an interface name"},
		{"", "sixteen-chars-xx", "not an interface name"},
		{"", "lo", "not an Ethernet interface"},
		{"vmfex-link-no-such-ns", "eth0", "ip netns add"},
	} {
		p, err := NewPacketPortInNetns(tt.netns, tt.ifname)
		if err == nil {
			p.Close()
			t.Errorf("NewPacketPortInNetns(%q, %q) succeeded, want an error", tt.netns, tt.ifname)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewPacketPortInNetns(%q, %q) = %v, want an error saying %q", tt.netns, tt.ifname, err, tt.want)
		}
	}

	c := newPacketCable(t, 0)
	if err := ipCommand("-n", c.nsA, "link", "set", "dev", c.ifA, "mtu", "1500"); err != nil {
		t.Fatal(err)
	}
	if p, err := NewPacketPortInNetns(c.nsA, c.ifA); err == nil || !strings.Contains(err.Error(), fmt.Sprint("mtu ", PacketMTU)) {
		if p != nil {
			p.Close()
		}
		t.Errorf("NewPacketPortInNetns on a 1500-byte MTU = %v, want an error saying to raise it to %d", err, PacketMTU)
	}
	if err := SetupVethPair(c.nsA, "vmfex-x0", c.nsB, "vmfex-x1", 1500); err == nil || !strings.Contains(err.Error(), "PacketMTU") {
		t.Errorf("SetupVethPair with MTU 1500 = %v, want an error naming PacketMTU", err)
	}
	if err := SetupVethPair(c.nsA, c.ifA, c.nsB, "vmfex-x1", 0); err == nil {
		t.Errorf("SetupVethPair over an existing interface succeeded, want an error")
	}
	if err := DeleteVethPair(c.nsA, c.ifA); err != nil {
		t.Errorf("DeleteVethPair: %v", err)
	}
	if err := DeleteVethPair(c.nsA, c.ifA); err != nil {
		t.Errorf("DeleteVethPair of a deleted pair = %v, want nil", err)
	}
	if _, err := NewPacketPortInNetns(c.nsB, c.ifB); err == nil || !strings.Contains(err.Error(), "no such interface") {
		t.Errorf("NewPacketPortInNetns on the deleted pair's other end = %v, want no such interface", err)
	}
}

// TestPacketAllocs checks a batch crosses the cable without allocating.
func TestPacketAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops buffers at random under the race detector")
	}
	c := newPacketCable(t, 0)
	hdr := tagged(wire.EthHeaderLen, 0)
	tx := make([]*Buf, PacketBatch)
	rx := make([]*Buf, PacketBatch)
	allocs := testing.AllocsPerRun(50, func() {
		for i := range tx {
			tx[i] = Get()
			tx[i].Len = 64
			copy(tx[i].Bytes(), hdr)
		}
		if n, err := c.a.Send(tx); n != len(tx) || err != nil {
			t.Fatalf("Send = %d, %v", n, err)
		}
		for got := 0; got < len(tx); {
			n, err := c.b.Recv(rx)
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			ReleaseAll(rx[:n])
			got += n
		}
	})
	if allocs != 0 {
		t.Errorf("allocations per batch of %d frames sent and received = %v, want 0", PacketBatch, allocs)
	}
}

// TestPacketCapture captures on the receiving end of the cable with tshark
// (or tcpdump) while a VN-Tagged frame crosses it, and checks the capture
// holds the frame byte for byte and that tshark decodes it as VN-Tag.
func TestPacketCapture(t *testing.T) {
	tshark, _ := exec.LookPath("tshark")
	tcpdump, _ := exec.LookPath("tcpdump")
	if tshark == "" && tcpdump == "" {
		t.Skip("neither tshark nor tcpdump is installed: apt-get install tshark (see specs/tools.md)")
	}
	c := newPacketCable(t, 0)
	frame := tagged(100, 7, vnTag(0x8123_8045), vlanTag(wire.EtherTypeVLAN, wire.TCI(5, 100)))
	file := filepath.Join(t.TempDir(), "vntag.pcap")

	// Capture one frame of EtherType VN-Tag.
	var cmd *exec.Cmd
	if tshark != "" {
		cmd = exec.Command("ip", "netns", "exec", c.nsB, tshark, "-i", c.ifB, "-F", "pcap", "-w", file, "-c", "1", "-f", "ether proto 0x8926")
	} else {
		cmd = exec.Command("ip", "netns", "exec", c.nsB, tcpdump, "-i", c.ifB, "-w", file, "-c", "1", "-U", "ether proto 0x8926")
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%v: %v", cmd, err)
	}
	exited := make(chan error, 1)
	var log strings.Builder
	ready := make(chan struct{})
	go func() {
		// The capture is armed once the tool says so on stderr
		// ("Capturing on" for tshark, "listening on" for tcpdump).
		s := bufio.NewScanner(stderr)
		announced := false
		for s.Scan() {
			log.WriteString(s.Text() + "\n")
			if l := s.Text(); !announced && (strings.Contains(l, "Capturing on") || strings.Contains(l, "listening on")) {
				announced = true
				close(ready)
			}
		}
		if !announced {
			close(ready)
		}
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})
	<-ready
	// The announcement may come just before the capture is armed: send
	// again until the tool has its frame and exits (-c 1).
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(packetDeadline)
	sendAll(t, c.a, [][]byte{frame})
wait:
	for {
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("%v: %v\n%s", cmd, err, log.String())
			}
			break wait
		case <-tick.C:
			sendAll(t, c.a, [][]byte{frame})
		case <-deadline:
			cmd.Process.Kill()
			t.Fatalf("%v captured nothing within %v:\n%s", cmd, packetDeadline, log.String())
		}
	}

	got, err := firstPcapFrame(file)
	if err != nil {
		t.Fatalf("reading the capture: %v", err)
	}
	if !bytes.Equal(got, frame) {
		t.Errorf("captured frame = % x, want the frame sent, % x", got, frame)
	}
	if tshark == "" {
		t.Log("tshark is not installed: the capture's bytes were checked, not its decoding")
		return
	}
	out, err := exec.Command(tshark, "-r", file, "-V").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark -r -V: %v\n%s", err, out)
	}
	for _, want := range []string{"VN-Tag", "Direction: From Bridge", "Destination: 291", "Looped: Yes", "Source: 69", "802.1Q Virtual LAN, PRI: 5, DEI: 0, ID: 100"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("tshark -V does not show %q:\n%s", want, out)
		}
	}
	out, err = exec.Command(tshark, "-r", file, "-T", "fields", "-e", "frame.protocols").Output()
	if err != nil {
		t.Fatalf("tshark -T fields: %v", err)
	}
	if got, want := strings.TrimSpace(string(out)), "eth:ethertype:vntag:ethertype:vlan:ethertype:data"; got != want {
		t.Errorf("frame.protocols = %q, want %q", got, want)
	}
}

// firstPcapFrame returns the first record of a classic pcap file.
func firstPcapFrame(file string) ([]byte, error) {
	p, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if len(p) < 24+16 {
		return nil, fmt.Errorf("%s: %d bytes, no record", file, len(p))
	}
	var order binary.ByteOrder
	switch magic := binary.LittleEndian.Uint32(p); magic {
	case 0xa1b2c3d4, 0xa1b23c4d:
		order = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		order = binary.BigEndian
	default:
		return nil, fmt.Errorf("%s: magic %#x, not a pcap file", file, magic)
	}
	rec := p[24:]
	incl, orig := order.Uint32(rec[8:]), order.Uint32(rec[12:])
	if incl != orig || int(incl) > len(rec)-16 {
		return nil, fmt.Errorf("%s: record of %d bytes of %d, file holds %d", file, incl, orig, len(rec)-16)
	}
	return rec[16 : 16+incl], nil
}

// BenchmarkPacketPort sends frames through a veth pair between two
// namespaces as fast as Send goes, one goroutine sending and one receiving;
// an op is one frame offered. The cable is lossy: rx frames/s is what
// arrived, loss% what did not (overrun% the part the receiving socket's
// buffer dropped, as the kernel counts it).
func BenchmarkPacketPort(b *testing.B) {
	for _, size := range []int{64, 1500} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			c := newPacketCable(b, 0)
			tx, rx := c.a, c.b
			hdr := tagged(wire.EthHeaderLen, 0)
			var got atomic.Int64
			var last atomic.Int64 // when the last frame arrived, unix ns
			done := make(chan struct{})
			go func() {
				defer close(done)
				bufs := make([]*Buf, PacketBatch)
				for {
					n, err := rx.Recv(bufs)
					if err != nil {
						return
					}
					ReleaseAll(bufs[:n])
					got.Add(int64(n))
					last.Store(time.Now().UnixNano())
				}
			}()
			bufs := make([]*Buf, PacketBatch)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for sent := 0; sent < b.N; {
				k := min(PacketBatch, b.N-sent)
				for i := range k {
					bufs[i] = Get()
					bufs[i].Len = size
					copy(bufs[i].Bytes(), hdr)
				}
				n, err := tx.Send(bufs[:k])
				if err != nil {
					b.Fatalf("Send: %v", err)
				}
				sent += n
			}
			sendTime := time.Since(start)
			b.StopTimer()
			// Wait for the receiver to catch up: until every frame is in or
			// counted as overrun, or none came for 100ms (a deadline for
			// frames lost where nobody counts, not a measure).
			for prev := int64(-1); ; {
				n := got.Load()
				if n+int64(rx.Drops().Overrun) >= int64(b.N) || n == prev {
					break
				}
				prev = n
				time.Sleep(100 * time.Millisecond)
			}
			overrun := rx.Drops().Overrun
			rx.Close()
			<-done
			n := got.Load()
			b.ReportMetric(float64(b.N)/sendTime.Seconds(), "tx-frames/s")
			if n > 0 {
				b.ReportMetric(float64(n)/(time.Duration(last.Load()-start.UnixNano())).Seconds(), "rx-frames/s")
			}
			b.ReportMetric(100*float64(int64(b.N)-n)/float64(b.N), "loss%")
			b.ReportMetric(100*float64(overrun)/float64(b.N), "overrun%")
		})
	}
}

// TestPacketInterfaceGone deletes the veth pair under two ports: a Recv
// waiting on one ends with an error saying so, and Send fails too.
func TestPacketInterfaceGone(t *testing.T) {
	testutil.CheckGoroutines(t)
	c := newPacketCable(t, 0)
	done := make(chan error, 1)
	go func() {
		n, err := c.a.Recv(make([]*Buf, 8))
		if n != 0 {
			err = fmt.Errorf("got %d frames from an idle cable", n)
		}
		done <- err
	}()
	waitParkedInRecv(t)
	if err := DeleteVethPair(c.nsA, c.ifA); err != nil {
		t.Fatalf("DeleteVethPair: %v", err)
	}
	select {
	case err := <-done:
		if err == nil || errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "gone") {
			t.Errorf("Recv when the interface was deleted = %v, want an error saying it is gone", err)
		}
	case <-time.After(2 * time.Minute):
		// The kernel wakes a waiting socket when its interface goes down,
		// not when it is deleted after: Recv must look again by itself
		// (it once hung here).
		t.Error("Recv still waits two minutes after its interface was deleted")
		c.a.Close()
		<-done
	}
	f := Get()
	f.SetBytes(tagged(64, 0))
	if n, err := c.b.Send([]*Buf{f}); n != 0 || err == nil || !strings.Contains(err.Error(), "gone") {
		f.Release()
		t.Errorf("Send on a deleted interface = %d, %v; want 0 and an error saying it is gone", n, err)
	}
}

// TestPacketCallerNamespace opens a port with NewPacketPort on a veth end in
// the test's own namespace, cabled to a port in another namespace, and then
// checks that no thread of the process was left in another namespace by
// NewPacketPortInNetns or SetupVethPair.
func TestPacketCallerNamespace(t *testing.T) {
	requirePacketCables(t)
	suffix := fmt.Sprintf("%08x", rand.Uint32())
	ns := fmt.Sprintf("vmfex-link-%d-%d-%s", os.Getpid(), packetCableSeq.Add(1), suffix)
	ifHere, ifThere := "pkh"+suffix, "pkt"+suffix
	t.Cleanup(func() {
		if err := DeleteVethPair("", ifHere); err != nil {
			t.Errorf("DeleteVethPair: %v", err)
		}
		if err := DeleteNetns(ns); err != nil {
			t.Errorf("DeleteNetns: %v", err)
		}
	})
	if _, err := AddNetns(ns); err != nil {
		t.Skipf("no network namespaces here: %v", err)
	}
	if err := SetupVethPair("", ifHere, ns, ifThere, 0); err != nil {
		t.Fatalf("SetupVethPair: %v", err)
	}
	here, err := NewPacketPort(ifHere)
	if err != nil {
		t.Fatalf("NewPacketPort(%s): %v", ifHere, err)
	}
	t.Cleanup(func() { here.Close() })
	// Many at once, so that several threads enter the namespace and leave.
	ports := make(chan *PacketPort, 8)
	for range cap(ports) {
		go func() {
			p, err := NewPacketPortInNetns(ns, ifThere)
			if err != nil {
				t.Errorf("NewPacketPortInNetns: %v", err)
			}
			ports <- p
		}()
	}
	var there *PacketPort
	for range cap(ports) {
		if p := <-ports; p != nil {
			t.Cleanup(func() { p.Close() })
			there = p
		}
	}
	if there == nil {
		t.FailNow()
	}
	f := tagged(128, 9, vnTag(0x8002_0003))
	exchange(t, here, there, [][]byte{f})
	exchange(t, there, here, [][]byte{f})

	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if ns, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net"); err == nil && ns != self {
			t.Errorf("thread %s is in network namespace %s, want the process's %s", task.Name(), ns, self)
		}
	}
}
