package linuxguest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// fakeDev is a NIC driver and device in one: a sent frame is copied
// through one tx buffer in guest memory and out to out at once, after the
// offload it asked for (checksum, TSO: as vmxnet3's device model does),
// as a device would DMA and send it.
type fakeDev struct {
	m      *mem.Memory
	mac    wire.MAC
	pa     uint64
	size   int  // TxRoom, when not full
	full   bool // TxRoom says the ring is full
	refuse bool // TxSend refuses every frame
	out    func([]byte)
	offs   []guest.TxOffload // what each sent frame asked for
}

func (d *fakeDev) MAC() wire.MAC { return d.mac }

func (d *fakeDev) TxReserve() (uint64, int, bool) {
	if d.full {
		return 0, 0, false
	}
	return d.pa, d.size, true
}

func (d *fakeDev) TxCommit(n int) {
	f := make([]byte, n)
	if err := d.m.Read(d.pa, f); err != nil {
		panic(err)
	}
	d.out(f)
}

func (d *fakeDev) TxRoom() int {
	if d.full {
		return 0
	}
	return d.size
}

func (d *fakeDev) TxSend(f []byte, o guest.TxOffload) bool {
	if d.full || d.refuse || len(f) > d.size || len(f) == 0 {
		return false
	}
	if d.m.Write(d.pa, f) != nil {
		return false
	}
	p := make([]byte, len(f))
	if err := d.m.Read(d.pa, p); err != nil {
		panic(err)
	}
	d.offs = append(d.offs, o)
	switch o.Mode {
	case vmxnet3.OMCsum:
		if !vmxnet3.ChecksumOffload(p, int(o.HLen), int(o.MSSCOF)) {
			panic("fakeDev: bad checksum offload")
		}
	case vmxnet3.OMTSO:
		out := make([][]byte, vmxnet3.MaxTSOSegs)
		for i := range out {
			out[i] = make([]byte, int(o.HLen)+int(o.MSSCOF))
		}
		lens := make([]int, len(out))
		n, ok := vmxnet3.SegmentTCP(p, int(o.HLen), int(o.MSSCOF), out, lens)
		if !ok {
			panic("fakeDev: bad TSO")
		}
		for i := range n {
			d.out(out[i][:lens[i]])
		}
		return true
	}
	d.out(p)
	return true
}

// Guest memory map of the tests: a tx buffer and an rx buffer.
const (
	testTxPA  = 0x1000
	testRxPA  = 0x20000
	testBufSz = 0x3000
	testMem   = 256 << 10
	// testTxRoom is a fakeDev's room for a guest with a vnet header: the
	// longest frame such a guest reads (a 64 KiB TSO segment).
	testTxRoom = 96 << 10
)

func newMem(t testing.TB) *mem.Memory {
	t.Helper()
	m, err := mem.New(testMem)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// socketGuest is a guest whose "TAP" is one end of a SOCK_SEQPACKET pair
// (one frame per read and write, as a TAP): the test holds the other end
// as the kernel. No root needed. Its frames have no vnet header.
func socketGuest(t testing.TB, cfg Config) (*Workload, int) {
	return socketGuestVnet(t, cfg, false)
}

// socketGuestVnet is socketGuest whose frames are behind a virtio_net_hdr
// when vnet is set, as on a TAP with offloads.
func socketGuestVnet(t testing.TB, cfg Config, vnet bool) (*Workload, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	w, err := attach(newMem(t), cfg, func(c Config) (*kernelSide, error) { return newKernelSide(c, fds[0], false, vnet) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = Destroy(cfg.Name)
		unix.Close(fds[1])
	})
	return w, fds[1]
}

func uniqueName(t testing.TB, prefix string) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return prefix + "-" + hex.EncodeToString(b[:])
}

func testMAC(n byte) wire.MAC { return wire.MAC{0x02, 0x25, 0xb5, 0x00, 0x00, n} }

// frame returns an Ethernet frame of n bytes from src to dst, payload
// numbered by seq.
func frame(dst, src wire.MAC, n int, seq byte) []byte {
	f := make([]byte, n)
	copy(f, dst[:])
	copy(f[6:], src[:])
	f[12], f[13] = 0x88, 0xb5 // local experimental EtherType
	for i := wire.EthHeaderLen; i < n; i++ {
		f[i] = seq
	}
	return f
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: Linux guests need root (network namespaces and TAP devices); run the tests as root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipping: /dev/net/tun is missing (%v)", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: iproute2's ip is not installed")
	}
}

// testVCPU runs a Workload as a vCPU does, with a fakeDev whose committed
// frames go to a peer's inbox: two of them are two guests on one wire.
type testVCPU struct {
	w     *Workload
	dev   *fakeDev
	wake  chan struct{}
	inbox chan []byte
}

func newTestVCPU(t *testing.T, name string, mac wire.MAC, addr netip.Prefix) *testVCPU {
	t.Helper()
	m := newMem(t)
	w, err := New(m, Config{Name: name, MAC: mac, Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Errorf("Close %s: %v", name, err)
		}
	})
	v := &testVCPU{w: w, wake: make(chan struct{}, 1), inbox: make(chan []byte, 1024)}
	v.dev = &fakeDev{m: m, mac: mac, pa: testTxPA, size: testTxRoom}
	w.SetWake(func() {
		select {
		case v.wake <- struct{}{}:
		default:
		}
	})
	return v
}

func (v *testVCPU) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var carry []byte // a frame taken while waiting, handled first
	for {
		now := time.Now().UnixNano()
		if carry != nil {
			_ = v.dev.m.Write(testRxPA, carry)
			v.w.Receive(v.dev, testRxPA, len(carry), now)
			carry = nil
		}
	rx:
		for {
			select {
			case f := <-v.inbox:
				_ = v.dev.m.Write(testRxPA, f)
				v.w.Receive(v.dev, testRxPA, len(f), now)
			default:
				break rx
			}
		}
		next := v.w.Step(v.dev, now)
		var tc <-chan time.Time
		if next != 0 {
			timer.Reset(time.Duration(max(next-now, 0)))
			tc = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-v.wake:
		case f := <-v.inbox:
			// Handled at the top; not put back, which would block on
			// an inbox the peer filled meanwhile.
			carry = f
		case <-tc:
		}
		timer.Stop()
	}
}

// connect wires a's transmit to b's inbox and back, and runs both; stop
// (also run at cleanup) ends them, after which their devices may be read.
func connect(t *testing.T, a, b *testVCPU) (stop func()) {
	t.Helper()
	a.dev.out = func(f []byte) {
		select {
		case b.inbox <- f:
		default:
		}
	}
	b.dev.out = func(f []byte) {
		select {
		case a.inbox <- f:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, v := range []*testVCPU{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); v.run(ctx) }()
	}
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}
