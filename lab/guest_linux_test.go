package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/guest/linuxguest"
	"github.com/vmfex/vmfex/wire"
)

// linuxPair is a lab of two Linux guests on two hosts in VLAN 100.
type linuxPair struct {
	l            *Lab
	a, b         string // VM (and namespace) names
	ipA, ipB     string
	hostA, hostB string
}

func needLinuxGuests(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: Linux guests need root (network namespaces and TAP devices); run the tests as root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipping: /dev/net/tun is missing (%v)", err)
	}
	for _, c := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("skipping: %s is not installed (apt-get install iproute2 iputils-ping)", c)
		}
	}
}

// newLinuxPair builds and starts the lab; the names carry a random suffix
// so that tests running at once never share a namespace. Its cleanup
// removes the namespaces even when the test failed half way.
func newLinuxPair(t testing.TB) *linuxPair {
	t.Helper()
	needLinuxGuests(t)
	var r [3]byte
	if _, err := rand.Read(r[:]); err != nil {
		t.Fatal(err)
	}
	sfx := hex.EncodeToString(r[:])
	p := &linuxPair{a: "lg-a-" + sfx, b: "lg-b-" + sfx, ipA: "198.18.100.11", ipB: "198.18.100.12", hostA: "esx1", hostB: "esx2"}
	mac := func(n byte) wire.MAC { return wire.MAC{0x00, 0x25, 0xb5, 0x00, 0x01, n} }
	topo := Topology{
		FI: "fi-a",
		Profiles: []fabric.PortProfile{
			{Name: "web-vlan100", Mode: fabric.ModeAccess, AccessVLAN: 100, QoSClass: "best-effort", HighPerformance: true},
		},
		Hosts: []HostSpec{{Name: p.hostA, ServerPort: "Ethernet1/1"}, {Name: p.hostB, ServerPort: "Ethernet1/2"}},
		VMs: []VMSpec{
			{Name: p.a, Host: p.hostA, Profile: "web-vlan100", MAC: mac(0x11), IP: [4]byte{198, 18, 100, 11}, Guest: GuestLinux},
			{Name: p.b, Host: p.hostB, Profile: "web-vlan100", MAC: mac(0x12), IP: [4]byte{198, 18, 100, 12}, Guest: GuestLinux},
		},
	}
	t.Cleanup(func() {
		if p.l != nil {
			if err := p.l.Close(); err != nil {
				t.Errorf("lab Close: %v", err)
			}
		}
		for _, n := range []string{p.a, p.b} {
			if _, err := linuxguest.Destroy(n); err != nil {
				t.Errorf("Destroy %s: %v", n, err)
			}
			if _, err := os.Stat(filepath.Join("/var/run/netns", n)); err == nil {
				t.Errorf("namespace %s left after the lab closed", n)
				_ = exec.Command("ip", "netns", "del", n).Run()
			}
		}
	})
	l, err := Build(topo)
	if err != nil {
		t.Fatal(err)
	}
	p.l = l
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *linuxPair) vm(name string) *VM {
	for _, vm := range p.l.VMs() {
		if vm.Name() == name {
			return vm
		}
	}
	return nil
}

func (p *linuxPair) stats() string {
	return fmt.Sprintf("%s: %+v\n%s: %+v", p.a, p.vm(p.a).LinuxGuest().Stats(), p.b, p.vm(p.b).LinuxGuest().Stats())
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)
var pingRTT = regexp.MustCompile(`rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms`)

// ping runs ping in namespace ns and returns (transmitted, received) and
// the output.
func ping(ctx context.Context, ns string, args ...string) (int, int, string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, "ping"}, args...)...)
	out, err := cmd.CombinedOutput()
	m := pingSummary.FindStringSubmatch(string(out))
	if m == nil {
		return 0, 0, string(out), fmt.Errorf("ping: %v: no summary in %q", err, out)
	}
	tx, _ := strconv.Atoi(m[1])
	rx, _ := strconv.Atoi(m[2])
	return tx, rx, string(out), nil
}

// TestLinuxGuestsPing: a Linux guest pings another on the other host
// through the fabric (direct path, VN-Tag, FI), without loss.
func TestLinuxGuestsPing(t *testing.T) {
	p := newLinuxPair(t)
	tx, rx, out, err := ping(context.Background(), p.a, "-c", "5", "-i", "0.2", "-W", "2", p.ipB)
	if err != nil || tx != 5 || rx != 5 {
		t.Fatalf("ping %s -> %s: %d/%d replies, %v\n%s\n%s", p.a, p.ipB, rx, tx, err, out, p.stats())
	}
	if m := pingRTT.FindStringSubmatch(out); m != nil {
		t.Logf("ping %s -> %s over the fabric: rtt min/avg/max %s/%s/%s ms", p.a, p.b, m[1], m[2], m[3])
	}
	for _, n := range []string{p.a, p.b} {
		s := p.vm(n).LinuxGuest().Stats()
		if s.TxFrames == 0 || s.RxFrames == 0 || s.Dropped() != 0 {
			t.Errorf("%s stats %+v: want frames both ways and no drops", n, s)
		}
	}
}

// TestLinuxGuestsIperf3: a TCP iperf3 run between the guests succeeds.
func TestLinuxGuestsIperf3(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("skipping: iperf3 is not installed (apt-get install -y iperf3)")
	}
	p := newLinuxPair(t)
	bps, retr := iperf3(t, p, 3)
	t.Logf("iperf3 TCP %s -> %s (two hosts, direct path, through the FI): %.0f Mbit/s, %d retransmits", p.a, p.b, bps/1e6, retr)
}

// iperf3 runs an iperf3 TCP client in a for secs seconds against a server
// in b, and returns the receiver's bits per second and the retransmits.
func iperf3(t *testing.T, p *linuxPair, secs int) (float64, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+30)*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", p.b, "iperf3", "-s", "-1", "-B", p.ipB)
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = srv.Wait() }()
	var out []byte
	var err error
	// The server listens once it has started: retry the client until it
	// connects, without guessing how long that takes.
	// (iperf3 -J may exit 0 with the refusal in its JSON.)
	for {
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", p.a, "iperf3", "-c", p.ipB, "-t", strconv.Itoa(secs), "-J")
		out, err = cmd.Output()
		if !bytes.Contains(out, []byte("Connection refused")) || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("iperf3 client: %v\n%s\nserver: %s\n%s", err, out, srvOut.String(), p.stats())
	}
	var res struct {
		End struct {
			SumSent     struct{ Retransmits int } `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("iperf3 JSON: %v\n%s", err, out)
	}
	if res.End.SumReceived.BitsPerSecond <= 0 {
		t.Fatalf("iperf3 moved nothing:\n%s", out)
	}
	return res.End.SumReceived.BitsPerSecond, res.End.SumSent.Retransmits
}

// inNetns runs fn on a thread inside namespace ns: sockets fn creates stay
// in ns, whichever thread uses them later.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		back, err := func() (bool, error) {
			self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return true, err
			}
			defer unix.Close(self)
			target, err := unix.Open(filepath.Join("/var/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return true, err
			}
			defer unix.Close(target)
			if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
				return true, err
			}
			ferr := fn()
			if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
				return false, errors.Join(ferr, err)
			}
			return true, ferr
		}()
		if back {
			// Otherwise the thread stays locked and dies with this goroutine.
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// echo is a TCP echo between the guests' namespaces: the client in a sends
// numbered 1 KiB messages and checks each one comes back intact.
type echo struct {
	ln     net.Listener
	conn   net.Conn
	rounds atomic.Uint64
	done   chan error
	stop   atomic.Bool
}

func startEcho(t *testing.T, p *linuxPair) *echo {
	t.Helper()
	e := &echo{done: make(chan error, 1)}
	if err := inNetns(p.b, func() (err error) {
		e.ln, err = net.Listen("tcp", net.JoinHostPort(p.ipB, "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := e.ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	if err := inNetns(p.a, func() (err error) {
		e.conn, err = net.DialTimeout("tcp", e.ln.Addr().String(), 10*time.Second)
		return err
	}); err != nil {
		e.ln.Close()
		t.Fatalf("echo connect %s -> %s: %v\n%s", p.a, e.ln.Addr(), err, p.stats())
	}
	t.Cleanup(func() { e.stop.Store(true); e.conn.Close(); e.ln.Close() })
	go func() {
		msg, back := make([]byte, 1024), make([]byte, 1024)
		for i := uint64(0); !e.stop.Load(); i++ {
			for j := range msg {
				msg[j] = byte(i + uint64(j))
			}
			// A migration pauses the path for milliseconds; TCP resends.
			_ = e.conn.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := e.conn.Write(msg); err != nil {
				e.done <- fmt.Errorf("round %d: write: %w", i, err)
				return
			}
			if _, err := io.ReadFull(e.conn, back); err != nil {
				e.done <- fmt.Errorf("round %d: read: %w", i, err)
				return
			}
			if !bytes.Equal(msg, back) {
				e.done <- fmt.Errorf("round %d: echo differs", i)
				return
			}
			e.rounds.Add(1)
		}
		e.done <- nil
	}()
	return e
}

// waitRounds waits until the echo has done n more round trips, or failed.
func (e *echo) waitRounds(t *testing.T, n uint64, what string) {
	t.Helper()
	target := e.rounds.Load() + n
	deadline := time.Now().Add(30 * time.Second)
	for e.rounds.Load() < target {
		select {
		case err := <-e.done:
			t.Fatalf("TCP echo %s: %v", what, err)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("TCP echo %s: stuck at %d round trips", what, e.rounds.Load())
		}
	}
}

// TestLinuxGuestMigration: a Linux guest migrates to the other host and
// back while ping runs every 10 ms and a TCP echo runs between the
// namespaces; the TCP connection survives both moves.
func TestLinuxGuestMigration(t *testing.T) {
	p := newLinuxPair(t)
	if _, rx, out, err := ping(context.Background(), p.a, "-c", "1", "-W", "2", p.ipB); err != nil || rx != 1 {
		t.Fatalf("first ping: %v\n%s\n%s", err, out, p.stats())
	}
	e := startEcho(t, p)
	e.waitRounds(t, 100, "before the migration")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type pingResult struct {
		tx, rx int
		out    string
		err    error
	}
	pr := make(chan pingResult, 1)
	go func() {
		tx, rx, out, err := ping(ctx, p.a, "-i", "0.01", "-c", "300", "-W", "1", p.ipB)
		pr <- pingResult{tx, rx, out, err}
	}()
	for _, to := range []string{p.hostB, p.hostA} {
		e.waitRounds(t, 50, "before moving to "+to)
		rep, err := p.l.Migrate(ctx, p.a, to)
		if err != nil {
			t.Fatalf("migrate %s to %s: %v\n%s", p.a, to, err, p.stats())
		}
		t.Logf("migrated %s to %s: total %.1f ms, downtime %.2f ms, %d pre-copy rounds", p.a, to, rep.TotalMs, rep.DowntimeMs, rep.PrecopyRounds)
		if vm := p.vm(p.a); vm.Host.Name != to {
			t.Fatalf("%s runs on %s after migrating to %s", p.a, vm.Host.Name, to)
		}
		e.waitRounds(t, 100, "after moving to "+to)
	}
	r := <-pr
	if r.err != nil {
		t.Fatalf("ping during the migrations: %v\n%s", r.err, r.out)
	}
	t.Logf("ping -i 0.01 during two migrations: %d sent, %d replies, %d lost", r.tx, r.rx, r.tx-r.rx)
	if r.rx == 0 {
		t.Errorf("no ping reply during the migrations\n%s", r.out)
	}
	if _, rx, out, err := ping(context.Background(), p.a, "-c", "5", "-i", "0.2", "-W", "2", p.ipB); err != nil || rx != 5 {
		t.Errorf("ping after the migrations: %d/5 replies, %v\n%s", rx, err, out)
	}
	t.Logf("TCP echo: %d round trips, connection intact\n%s", e.rounds.Load(), p.stats())
}

// BenchmarkLinuxGuestTCP streams TCP from one Linux guest to the other
// through the fabric (two hosts, direct path) and reports the goodput.
func BenchmarkLinuxGuestTCP(b *testing.B) {
	p := newLinuxPair(b)
	var ln net.Listener
	if err := inNetns(p.b, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(p.ipB, "0"))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	var c net.Conn
	if err := inNetns(p.a, func() (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	n := <-got
	b.StopTimer()
	c.Close()
	if n != int64(b.N)*int64(len(chunk)) {
		b.Fatalf("received %d bytes of %d", n, int64(b.N)*int64(len(chunk)))
	}
}
