package linuxguest

// Receive coalescing (gro.go): in-order segments of one flow reach the
// kernel as one GSO frame; anything else as it came, in order.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfex/vmfex/vmxnet3"
)

// segments cuts a TCP/IPv4 packet of payload bytes into frames of mss
// (TSO, as a peer's device sends them), each with valid checksums.
func segments(t *testing.T, payload, mss int) (pkt []byte, frames [][]byte) {
	t.Helper()
	pkt, l4 := tcpFrame(t, false, testMAC(2), testMAC(1), payload)
	hlen := l4 + 32
	p := append([]byte(nil), pkt...)
	if !vmxnet3.PrepareTSO(p, hlen) {
		t.Fatal("PrepareTSO refused the packet")
	}
	out := make([][]byte, vmxnet3.MaxTSOSegs)
	for i := range out {
		out[i] = make([]byte, hlen+mss)
	}
	lens := make([]int, len(out))
	n, ok := vmxnet3.SegmentTCP(p, hlen, mss, out, lens)
	if !ok {
		t.Fatal("SegmentTCP refused the packet")
	}
	for i := range n {
		frames = append(frames, out[i][:lens[i]])
	}
	return pkt, frames
}

// deliver hands frames to w's Receive (as the driver does in one poll),
// steps it once, and returns what the kernel end reads.
func deliver(t *testing.T, w *Workload, kern int, frames ...[]byte) [][]byte {
	t.Helper()
	for _, f := range frames {
		if err := w.m.Write(testRxPA, f); err != nil {
			t.Fatal(err)
		}
		w.Receive(nil, testRxPA, len(f), 0)
	}
	dev := &fakeDev{m: w.m, mac: testMAC(1), pa: testTxPA, size: testTxRoom, out: func([]byte) {}}
	w.Step(dev, 0)
	var got [][]byte
	buf := make([]byte, 1<<17)
	for {
		n, _, err := unix.Recvfrom(kern, buf, unix.MSG_DONTWAIT)
		if err != nil {
			return got
		}
		got = append(got, append([]byte(nil), buf[:n]...))
	}
}

// TestGROMergesARun: the 46 segments of a 64 KiB TSO packet reach the
// kernel as one write: GSO TCPV4 at the MSS, NEEDS_CSUM, the packet's
// headers and payload, a checksum that completes to a valid one.
func TestGROMergesARun(t *testing.T) {
	cfg := Config{Name: uniqueName(t, "gro"), MAC: testMAC(1)}
	w, kern := socketGuestVnet(t, cfg, true)
	pkt, frames := segments(t, 65535-20-32, 1448)
	got := deliver(t, w, kern, frames...)
	if len(got) != 1 {
		t.Fatalf("kernel read %d writes, want 1", len(got))
	}
	h, f := decodeVnetHdr(got[0]), got[0][vnetHdrLen:]
	if h.flags != vnetFlagNeedsCsum || h.gsoType != vnetGSOTCPv4 || h.gsoSize != 1448 || h.hdrLen != 66 || h.csumStart != 34 || h.csumOffset != 16 {
		t.Errorf("vnet header %+v", h)
	}
	if len(f) != len(pkt) || !bytes.Equal(f[66:], pkt[66:]) || !bytes.Equal(f[:16], pkt[:16]) || !bytes.Equal(f[20:50], pkt[20:50]) {
		t.Fatalf("merged frame (%d bytes) is not the packet (%d)", len(f), len(pkt))
	}
	// What the kernel does with NEEDS_CSUM: complete it; then it verifies.
	if !vmxnet3.FinishChecksum(f, 34, 50) {
		t.Fatal("FinishChecksum refused")
	}
	verifyTCP(t, f)
	if s := w.Stats(); s.RxFrames != uint64(len(frames)) || s.Dropped() != 0 {
		t.Errorf("Stats %+v, want %d rx frames", s, len(frames))
	}
}

// TestGROKeepsOrder: what does not continue a run ends it, and every frame
// reaches the kernel in the order it arrived.
func TestGROKeepsOrder(t *testing.T) {
	cfg := Config{Name: uniqueName(t, "groord"), MAC: testMAC(1)}
	w, kern := socketGuestVnet(t, cfg, true)
	_, s := segments(t, 6*1000, 1000) // 6 segments
	other := frame(cfg.MAC, testMAC(2), 200, 9)
	bad := append([]byte(nil), s[4]...)
	bad[len(bad)-1] ^= 0xFF // its TCP checksum fails
	otherFlow := append([]byte(nil), s[3]...)
	otherFlow[34] ^= 1 // another source port (checksums fixed below)
	fixTCP(otherFlow)
	got := deliver(t, w, kern, s[0], s[1], other, s[2], otherFlow, s[3], bad, s[5])
	// want: run{0,1}, other, single 2 (then its run ends: otherFlow),
	// otherFlow alone, run{3} broken by bad, bad as it came, 5 alone
	// (it does not continue 3: 4 is missing).
	type w8 struct {
		flags, gso uint8
		len        int
	}
	want := []w8{
		{vnetFlagNeedsCsum, vnetGSOTCPv4, 66 + 2000},
		{0, 0, 200},
		{vnetFlagDataValid, 0, 1066},
		{vnetFlagDataValid, 0, 1066},
		{vnetFlagDataValid, 0, 1066},
		{0, 0, 1066},
		{vnetFlagDataValid, 0, 1066},
	}
	if len(got) != len(want) {
		t.Fatalf("kernel read %d writes, want %d", len(got), len(want))
	}
	for i, g := range got {
		h := decodeVnetHdr(g)
		if h.flags != want[i].flags || h.gsoType != want[i].gso || len(g)-vnetHdrLen != want[i].len {
			t.Errorf("write %d: flags %d gso %d, %d bytes; want %+v", i, h.flags, h.gsoType, len(g)-vnetHdrLen, want[i])
		}
	}
	if !bytes.Equal(got[1][vnetHdrLen:], other) || !bytes.Equal(got[5][vnetHdrLen:], bad) || !bytes.Equal(got[4][vnetHdrLen:], s[3]) {
		t.Errorf("frames written out of order or changed")
	}
	if st := w.Stats(); st.RxFrames != 8 {
		t.Errorf("RxFrames = %d, want 8", st.RxFrames)
	}
}

// TestGROPushEndsRun: a segment with PSH closes its run.
func TestGROPushEndsRun(t *testing.T) {
	cfg := Config{Name: uniqueName(t, "gropsh"), MAC: testMAC(1)}
	w, kern := socketGuestVnet(t, cfg, true)
	_, s := segments(t, 4*1000, 1000) // PSH on the last (tcpFrame sets it)
	_, s2 := segments(t, 2*1000, 1000)
	got := deliver(t, w, kern, append(s, s2[0])...)
	if len(got) != 2 || decodeVnetHdr(got[0]).gsoType != vnetGSOTCPv4 || len(got[0]) != vnetHdrLen+66+4000 {
		t.Fatalf("kernel read %d writes (first %d bytes), want a run of 4 then 1", len(got), len(got[0]))
	}
	if f := got[0][vnetHdrLen:]; f[34+13]&0x08 == 0 {
		t.Errorf("the merged frame lost the last segment's PSH")
	}
}

// fixTCP recomputes f's TCP checksum (IPv4, no options in IP).
func fixTCP(f []byte) {
	f[50], f[51] = 0, 0
	s := naiveSum16(f[26:34], 6+uint32(len(f)-34))
	binary.BigEndian.PutUint16(f[50:], ^uint16(naiveSum16(f[34:], s)))
}

// FuzzReceiveVnet: whatever frames arrive, Receive and Step never panic,
// every frame is counted once (written or dropped), and a merged write is
// a valid GSO frame.
func FuzzReceiveVnet(f *testing.F) {
	f.Add([]byte{}, uint8(3))
	cfg := Config{Name: uniqueName(f, "fuzzgro"), MAC: testMAC(1)}
	w, kern := socketGuestVnet(f, cfg, true)
	buf := make([]byte, 1<<17)
	dev := &fakeDev{m: w.m, mac: testMAC(1), pa: testTxPA, size: testTxRoom, out: func([]byte) {}}
	f.Fuzz(func(t *testing.T, tmpl []byte, n uint8) {
		// Segments built from the template: an in-order run whose
		// bytes the fuzzer edits.
		_, segs := segments(t, 3*500, 500)
		before := w.Stats()
		count := 0
		for i := range int(n % 8) {
			s := append([]byte(nil), segs[i%len(segs)]...)
			for j, b := range tmpl {
				s[(j*7+i)%len(s)] ^= b
			}
			if len(tmpl) > 0 {
				s = s[:max(14, len(s)-int(tmpl[0]%64))]
			}
			_ = w.m.Write(testRxPA, s)
			w.Receive(nil, testRxPA, len(s), 0)
			count++
		}
		w.Step(dev, 0)
		for {
			k, _, err := unix.Recvfrom(kern, buf, unix.MSG_DONTWAIT)
			if err != nil {
				break
			}
			h := decodeVnetHdr(buf[:k])
			if h.gsoType == vnetGSOTCPv4 && (h.gsoSize == 0 || int(h.hdrLen) >= k-vnetHdrLen || h.csumStart != 34) {
				t.Fatalf("bad GSO write: %+v, %d bytes", h, k)
			}
		}
		after := w.Stats()
		if got := after.RxFrames + after.Dropped() - before.RxFrames - before.Dropped(); got != uint64(count) {
			t.Fatalf("%d frames in, %d counted", count, got)
		}
	})
}

// inNetns runs f on a thread inside namespace ns: the sockets f creates
// belong to ns and keep working from any thread afterwards.
func inNetns(t *testing.T, ns string, f func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		defer unix.Close(self)
		target, err := unix.Open(filepath.Join(netnsDir, ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		ferr := f()
		if unix.Setns(self, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread() // else the thread ends with the goroutine
		}
		errc <- ferr
	}()
	return <-errc
}

// TestTCPBulkBackToBack: 32 MiB over TCP between two guests' kernels,
// through TSO (the fake device segments with vmxnet3's code) and receive
// coalescing, arrive intact: the data path's offloads keep every byte.
func TestTCPBulkBackToBack(t *testing.T) {
	needRoot(t)
	na, nb := uniqueName(t, "lgb-a"), uniqueName(t, "lgb-b")
	a := newTestVCPU(t, na, testMAC(1), netip.MustParsePrefix("198.18.0.1/24"))
	b := newTestVCPU(t, nb, testMAC(2), netip.MustParsePrefix("198.18.0.2/24"))
	stop := connect(t, a, b)
	var ln net.Listener
	if err := inNetns(t, nb, func() (err error) { ln, err = net.Listen("tcp", "198.18.0.2:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	data := make([]byte, 32<<20)
	for i := range data {
		data[i] = byte(i*2654435761>>13) ^ byte(i>>16)
	}
	want := sha256.Sum256(data)
	got := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- [32]byte{}
			return
		}
		defer c.Close()
		h := sha256.New()
		_, _ = io.Copy(h, c)
		var s [32]byte
		copy(s[:], h.Sum(nil))
		got <- s
	}()
	var c net.Conn
	if err := inNetns(t, na, func() (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(data); err != nil {
		t.Fatalf("write: %v (a %+v, b %+v)", err, a.w.Stats(), b.w.Stats())
	}
	c.Close()
	select {
	case s := <-got:
		if s != want {
			t.Fatalf("the receiver's SHA-256 differs: bytes changed on the way")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("receiver did not finish")
	}
	stop() // the vCPUs write their devices' records: read them after
	sa, sb := a.w.Stats(), b.w.Stats()
	if sa.Drops[DropTxBadOffload] != 0 || sb.Drops[DropTxBadOffload] != 0 {
		t.Errorf("offload drops: a %+v, b %+v", sa, sb)
	}
	var tso int
	for _, o := range a.dev.offs {
		if o.Mode == vmxnet3.OMTSO {
			tso++
		}
	}
	t.Logf("a sent %d frames (%d TSO), b received %d", sa.TxFrames, tso, sb.RxFrames)
	if tso == 0 {
		t.Errorf("the sender's kernel used no TSO")
	}
}
