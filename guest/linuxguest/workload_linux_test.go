package linuxguest

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfex/vmfex/internal/testutil"
)

// TestDataPath moves frames both ways between the "kernel" end and the
// driver, in order, and counts them.
func TestDataPath(t *testing.T) {
	cfg := Config{Name: uniqueName(t, "dp"), MAC: testMAC(1)}
	w, kern := socketGuest(t, cfg)
	var got [][]byte
	dev := &fakeDev{m: w.m, mac: cfg.MAC, pa: testTxPA, size: 1536, out: func(f []byte) { got = append(got, f) }}

	var want [][]byte
	for i := range 10 {
		f := frame(testMAC(2), cfg.MAC, 60+i*100, byte(i))
		want = append(want, f)
		if _, err := unix.Write(kern, f); err != nil {
			t.Fatal(err)
		}
	}
	if next := w.Step(dev, 1000); next != 1000+idlePoll {
		t.Errorf("Step with the TAP drained, no wake = %d, want now+idlePoll", next)
	}
	if len(got) != len(want) {
		t.Fatalf("driver got %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("frame %d differs", i)
		}
	}

	in := frame(cfg.MAC, testMAC(2), 1514, 0xab)
	if err := w.m.Write(testRxPA, in); err != nil {
		t.Fatal(err)
	}
	w.Receive(dev, testRxPA, len(in), 0)
	buf := make([]byte, 2000)
	n, err := unix.Read(kern, buf)
	if err != nil || !bytes.Equal(buf[:n], in) {
		t.Fatalf("kernel read %d bytes, err %v; want the %d-byte frame", n, err, len(in))
	}

	s := w.Stats()
	var wantBytes uint64
	for _, f := range want {
		wantBytes += uint64(len(f))
	}
	if s.TxFrames != 10 || s.TxBytes != wantBytes || s.RxFrames != 1 || s.RxBytes != 1514 || s.Dropped() != 0 {
		t.Errorf("Stats = %+v, want 10 tx frames of %d bytes, 1 rx of 1514, no drops", s, wantBytes)
	}
}

// TestDrops feeds frames the guest must refuse and checks each reason.
func TestDrops(t *testing.T) {
	cfg := Config{Name: uniqueName(t, "drop"), MAC: testMAC(1)}
	w, kern := socketGuest(t, cfg)
	var got int
	dev := &fakeDev{m: w.m, mac: cfg.MAC, pa: testTxPA, size: 1536, out: func([]byte) { got++ }}

	write := func(f []byte) {
		t.Helper()
		if _, err := unix.Write(kern, f); err != nil {
			t.Fatal(err)
		}
	}
	write(make([]byte, 10))                    // runt
	write(frame(testMAC(2), cfg.MAC, 1600, 1)) // over MTU 1500
	write(frame(testMAC(2), cfg.MAC, 60, 2))   // fine
	w.Step(dev, 0)
	dev.refuse = true
	write(frame(testMAC(2), cfg.MAC, 200, 3)) // the driver refuses it
	w.Step(dev, 0)
	dev.refuse = false

	w.Receive(dev, testRxPA, 5, 0)
	w.Receive(dev, testRxPA, -1, 0)
	w.Receive(dev, testRxPA, 9000, 0)
	w.Receive(dev, testMem-10, 60, 0)
	w.Receive(dev, ^uint64(0)-5, 60, 0)

	s := w.Stats()
	want := map[DropReason]uint64{
		DropTxRunt: 1, DropTxOverMTU: 1, DropTxOverBuffer: 1,
		DropRxRunt: 2, DropRxOverMTU: 1, DropRxGuestMemory: 2,
	}
	for r := range numDropReasons {
		if s.Drops[r] != want[r] {
			t.Errorf("drops[%v] = %d, want %d", r, s.Drops[r], want[r])
		}
	}
	if got != 1 || s.TxFrames != 1 {
		t.Errorf("delivered %d frames (TxFrames %d), want 1", got, s.TxFrames)
	}
}

// TestRingFull: with the tx ring full no frame is read, so none is lost.
func TestRingFull(t *testing.T) {
	cfg := Config{Name: uniqueName(t, "full"), MAC: testMAC(1)}
	w, kern := socketGuest(t, cfg)
	var got int
	dev := &fakeDev{m: w.m, mac: cfg.MAC, pa: testTxPA, size: 1536, full: true, out: func([]byte) { got++ }}
	for i := range 3 {
		if _, err := unix.Write(kern, frame(testMAC(2), cfg.MAC, 60, byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	if next := w.Step(dev, 77); next != 77 {
		t.Errorf("Step on a full ring = %d, want now (77)", next)
	}
	dev.full = false
	w.Step(dev, 78)
	if s := w.Stats(); got != 3 || s.TxFrames != 3 || s.TxRingFull != 1 || s.Dropped() != 0 {
		t.Errorf("after the ring drained: delivered %d, stats %+v; want 3 frames, 1 ring-full, no drops", got, s)
	}
}

// TestBudget: a Step moves at most txBudget frames and, with a wake
// function, asks to run again.
func TestBudget(t *testing.T) {
	cfg := Config{Name: uniqueName(t, "budget"), MAC: testMAC(1)}
	w, kern := socketGuest(t, cfg)
	// The waiter goroutine may wake the vCPU too (a frame arrived while
	// it was armed): count from both sides.
	var woken atomic.Int64
	w.SetWake(func() { woken.Add(1) })
	var got int
	dev := &fakeDev{m: w.m, mac: cfg.MAC, pa: testTxPA, size: 1536, out: func([]byte) { got++ }}
	for i := range txBudget + 5 {
		if _, err := unix.Write(kern, frame(testMAC(2), cfg.MAC, 60, byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	if next := w.Step(dev, 5); next != 0 || got != txBudget || woken.Load() < 1 {
		t.Errorf("first Step: next %d, %d frames, %d wake-ups; want 0, %d, at least 1", next, got, woken.Load(), txBudget)
	}
	if next := w.Step(dev, 6); next != 0 || got != txBudget+5 {
		t.Errorf("second Step: next %d, %d frames; want 0, %d", next, got, txBudget+5)
	}
}

// TestWaiterWakes: once a Step drained the TAP, a new frame wakes the
// owner's vCPU, once, until the next drain.
func TestWaiterWakes(t *testing.T) {
	cfg := Config{Name: uniqueName(t, "wake"), MAC: testMAC(1)}
	w, kern := socketGuest(t, cfg)
	wake := make(chan struct{}, 8)
	w.SetWake(func() { wake <- struct{}{} })
	dev := &fakeDev{m: w.m, mac: cfg.MAC, pa: testTxPA, size: 1536, out: func([]byte) {}}
	for round := range 3 {
		if next := w.Step(dev, 0); next != 0 {
			t.Fatalf("round %d: idle Step with a wake function = %d, want 0", round, next)
		}
		if _, err := unix.Write(kern, frame(testMAC(2), cfg.MAC, 60, 1)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-wake:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: no wake-up for a frame on the TAP", round)
		}
	}
	w.Step(dev, 0)
	if s := w.Stats(); s.TxFrames != 3 || s.Wakeups != 3 {
		t.Errorf("stats %+v, want 3 frames and 3 wake-ups", s)
	}
}

// TestHandOff: a second Workload for the same guest (a migration's
// destination) attaches to the same TAP; frames are neither lost nor
// duplicated across the switch; counters continue; closing the superseded
// Workload keeps the guest, closing the owner removes it.
func TestHandOff(t *testing.T) {
	testutil.CheckGoroutines(t)
	cfg := Config{Name: uniqueName(t, "handoff"), MAC: testMAC(1)}
	src, kern := socketGuest(t, cfg)
	m2 := newMem(t)
	dst, err := attach(m2, cfg, func(Config) (*kernelSide, error) {
		t.Fatal("the destination created a second guest")
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if src.k != dst.k {
		t.Fatal("the destination is not attached to the source's guest")
	}
	other := cfg
	other.MAC = testMAC(9)
	if _, err := attach(m2, other, nil); !errors.Is(err, ErrMismatch) {
		t.Errorf("attach with another MAC: %v, want ErrMismatch", err)
	}

	var got []byte
	out := func(f []byte) { got = append(got, f[wire14]) }
	sdev := &fakeDev{m: src.m, mac: cfg.MAC, pa: testTxPA, size: 1536, out: out}
	ddev := &fakeDev{m: dst.m, mac: cfg.MAC, pa: testTxPA, size: 1536, out: out}
	send := func(seq byte) {
		if _, err := unix.Write(kern, frame(testMAC(2), cfg.MAC, 60, seq)); err != nil {
			t.Fatal(err)
		}
	}
	send(0)
	send(1)
	src.Step(sdev, 0)
	send(2)
	send(3)
	// The source is frozen here; the destination runs.
	dst.Step(ddev, 0)
	if k := src.k.owner.Load(); k != dst {
		t.Error("the destination does not own the TAP after its first Step")
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	send(4)
	dst.Step(ddev, 0)
	if !bytes.Equal(got, []byte{0, 1, 2, 3, 4}) {
		t.Errorf("frames across the hand-off: %v, want [0 1 2 3 4]", got)
	}
	if s := dst.Stats(); s.TxFrames != 5 {
		t.Errorf("destination's TxFrames = %d, want 5 (continuous)", s.TxFrames)
	}
	// The superseded source is closed: it neither reads nor delivers.
	send(5)
	if next := src.Step(sdev, 0); next != 0 || len(got) != 5 {
		t.Errorf("closed source Step = %d, got %d frames; want 0 and 5", next, len(got))
	}
	src.Receive(sdev, testRxPA, 60, 0)
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	if s := dst.Stats(); s.Drops[DropRxClosed] != 1 {
		t.Errorf("rx_closed = %d, want 1", s.Drops[DropRxClosed])
	}
	registry.mu.Lock()
	_, left := registry.guests[cfg.Name]
	registry.mu.Unlock()
	if left {
		t.Error("the guest is still registered after its owner closed")
	}
	if err := dst.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// wire14 is the first payload byte of a test frame (its sequence number).
const wire14 = 14

func TestConfigErrors(t *testing.T) {
	m := newMem(t)
	for _, c := range []Config{
		{Name: "", MAC: testMAC(1)},
		{Name: "a/b", MAC: testMAC(1)},
		{Name: "..", MAC: testMAC(1)},
		{Name: "x"},
		{Name: "x", MAC: [6]byte{1, 2, 3, 4, 5, 6}},
		{Name: "x", MAC: testMAC(1), MTU: 20},
		{Name: "x", MAC: testMAC(1), Addr: netip.MustParsePrefix("2001:db8::1/64")},
	} {
		if _, err := New(m, c); !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v) = %v, want ErrConfig", c, err)
		}
	}
	if _, err := New(nil, Config{Name: "x", MAC: testMAC(1)}); !errors.Is(err, ErrConfig) {
		t.Errorf("New(nil memory) = %v, want ErrConfig", err)
	}
}

func TestNotRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("skipping: runs as root; the not-root error needs another user")
	}
	_, err := New(newMem(t), Config{Name: uniqueName(t, "nr"), MAC: testMAC(1)})
	if !errors.Is(err, ErrNotRoot) {
		t.Errorf("New as uid %d = %v, want ErrNotRoot", os.Geteuid(), err)
	}
}

// TestPingBackToBack: two real Linux guests whose NICs are wired to each
// other (no fabric) ping each other; closing them removes their
// namespaces.
func TestPingBackToBack(t *testing.T) {
	needRoot(t)
	testutil.CheckGoroutines(t)
	na, nb := uniqueName(t, "lgt-a"), uniqueName(t, "lgt-b")
	a := newTestVCPU(t, na, testMAC(1), netip.MustParsePrefix("198.18.0.1/24"))
	b := newTestVCPU(t, nb, testMAC(2), netip.MustParsePrefix("198.18.0.2/24"))
	connect(t, a, b)
	out, err := exec.Command("ip", "netns", "exec", na, "ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.0.2").CombinedOutput()
	if err != nil || !strings.Contains(string(out), " 0% packet loss") {
		t.Fatalf("ping between back-to-back guests: %v\n%s\nstats a %+v\nstats b %+v", err, out, a.w.Stats(), b.w.Stats())
	}
	if _, err := New(newMem(t), Config{Name: na, MAC: testMAC(1), MTU: 9000}); !errors.Is(err, ErrMismatch) {
		t.Errorf("New for a running guest with another MTU = %v, want ErrMismatch", err)
	}
	// A namespace this process does not own is refused, not reused.
	foreign := uniqueName(t, "lgt-f")
	if err := ip(nil, "netns", "add", foreign); err != nil {
		t.Fatal(err)
	}
	defer deleteNamespace(foreign)
	if _, err := New(newMem(t), Config{Name: foreign, MAC: testMAC(3)}); !errors.Is(err, ErrExists) {
		t.Errorf("New over a foreign namespace = %v, want ErrExists", err)
	}
	if err := a.w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, na)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %s after Close: %v, want it gone", na, err)
	}
}

// FuzzReceive: no length or address makes Receive panic.
func FuzzReceive(f *testing.F) {
	f.Add(uint64(testRxPA), 60)
	f.Add(uint64(0), -5)
	f.Add(^uint64(0), 1<<30)
	f.Add(uint64(testMem-14), 14)
	cfg := Config{Name: uniqueName(f, "fuzz"), MAC: testMAC(1)}
	w, kern := socketGuest(f, cfg)
	buf := make([]byte, 1<<16)
	f.Fuzz(func(t *testing.T, pa uint64, n int) {
		w.Receive(nil, pa, n, 0)
		for {
			if _, _, err := unix.Recvfrom(kern, buf, unix.MSG_DONTWAIT); err != nil {
				break
			}
		}
	})
}
