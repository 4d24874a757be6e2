//go:build linux

package lab

// An iperf3 TCP session between two Linux guests on different hosts while
// each of them live-migrates to the other host and back, and a ping every
// 10 ms beside it:
//
//	lg-a (client, esx1) ── iperf3 -c ──> lg-b (server, esx2)
//	                       ping -i 0.01
//	moves: lg-a -> esx2, lg-b -> esx1, lg-a -> esx1, lg-b -> esx2 (those
//	that fit in the 10 s session: all four here, one or two under -race)
//
// The session must survive every move (iperf3 exits 0 on both ends and
// keeps moving bytes afterwards). The stall is measured, not asserted: the
// longest run of 0.1 s iperf3 intervals that carried ~0 bytes, on the
// sender's and on the receiver's side. Lost ping replies are a count, and
// that is asserted: under 5%.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// iperfInterval is one interval report of iperf3 -J (intervals[].sum).
type iperfInterval struct {
	Start   float64 `json:"start"`
	End     float64 `json:"end"`
	Seconds float64 `json:"seconds"`
	Bytes   int64   `json:"bytes"`
}

// iperfResult is the part of iperf3's -J output the test reads.
type iperfResult struct {
	Intervals []struct {
		Sum iperfInterval `json:"sum"`
	} `json:"intervals"`
	End struct {
		SumSent struct {
			Bytes       int64 `json:"bytes"`
			Retransmits int   `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			Bytes         int64   `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// stall is the longest run of consecutive intervals whose bytes are ~0.
type stall struct {
	start, end float64 // seconds since the test began, iperf3's clock
	intervals  int
}

func (s stall) String() string {
	if s.intervals == 0 {
		return "none (no interval of ~0 bytes)"
	}
	return fmt.Sprintf("%.0f ms (%d intervals, %.2f s to %.2f s)", (s.end-s.start)*1e3, s.intervals, s.start, s.end)
}

// longestStall finds the longest run of intervals that carried less than
// 1% of the median interval's bytes (0 bytes when the median is below 100).
func longestStall(ivs []iperfInterval) stall {
	if len(ivs) == 0 {
		return stall{}
	}
	b := make([]int64, len(ivs))
	for i, iv := range ivs {
		b[i] = iv.Bytes
	}
	slices.Sort(b)
	threshold := b[len(b)/2] / 100
	var best, cur stall
	for _, iv := range ivs {
		if iv.Bytes > threshold {
			cur = stall{}
			continue
		}
		if cur.intervals == 0 {
			cur.start = iv.Start
		}
		cur.end = iv.End
		cur.intervals++
		if cur.end-cur.start > best.end-best.start {
			best = cur
		}
	}
	return best
}

// deepestDip returns the interval that carried the fewest bytes, and its
// bytes as a fraction of the median interval's: a stall shorter than an
// interval shows as a dip, not as ~0 bytes.
func deepestDip(ivs []iperfInterval) (iperfInterval, float64) {
	if len(ivs) == 0 {
		return iperfInterval{}, 0
	}
	b := make([]int64, len(ivs))
	low := ivs[0]
	for i, iv := range ivs {
		b[i] = iv.Bytes
		if iv.Bytes < low.Bytes {
			low = iv
		}
	}
	slices.Sort(b)
	if med := b[len(b)/2]; med > 0 {
		return low, float64(low.Bytes) / float64(med)
	}
	return low, 0
}

// intervals returns the interval reports within the first secs seconds
// that last 50 ms or more: iperf3 also emits zero-length ones, and the
// receiver reports on past the sender's end.
func (r *iperfResult) intervals(secs float64) []iperfInterval {
	var ivs []iperfInterval
	for _, iv := range r.Intervals {
		if iv.Sum.Seconds >= 0.05 && iv.Sum.End <= secs {
			ivs = append(ivs, iv.Sum)
		}
	}
	return ivs
}

func TestLongestStall(t *testing.T) {
	iv := func(start float64, b int64) iperfInterval {
		return iperfInterval{Start: start, End: start + 0.1, Seconds: 0.1, Bytes: b}
	}
	tests := []struct {
		name string
		in   []iperfInterval
		want int // intervals
	}{
		{"empty", nil, 0},
		{"steady", []iperfInterval{iv(0, 100), iv(0.1, 110), iv(0.2, 90)}, 0},
		{"one gap", []iperfInterval{iv(0, 1000), iv(0.1, 0), iv(0.2, 1000), iv(0.3, 1000)}, 1},
		{"longest of two", []iperfInterval{iv(0, 1e6), iv(0.1, 0), iv(0.2, 1e6), iv(0.3, 5), iv(0.4, 0), iv(0.5, 1e6), iv(0.6, 1e6)}, 2},
		{"at the end", []iperfInterval{iv(0, 1000), iv(0.1, 1000), iv(0.2, 0)}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := longestStall(tt.in); got.intervals != tt.want {
				t.Errorf("longestStall(%v) = %+v, want %d intervals", tt.in, got, tt.want)
			}
		})
	}
	// intervals drops the zero-length and trailing reports iperf3 emits.
	var r iperfResult
	for _, v := range []iperfInterval{iv(0, 1), {Start: 0.1, End: 0.1}, iv(0.1, 2), iv(9.95, 3), iv(10, 4)} {
		r.Intervals = append(r.Intervals, struct {
			Sum iperfInterval `json:"sum"`
		}{v})
	}
	if got := r.intervals(10); len(got) != 2 || got[0].Bytes != 1 || got[1].Bytes != 2 {
		t.Errorf("intervals(10) = %+v, want the two full intervals before 10 s", got)
	}
}

// bgCmd is a program running in a guest's namespace with its output kept.
type bgCmd struct {
	cmd  *exec.Cmd
	out  bytes.Buffer // stdout
	errb bytes.Buffer // stderr
	done chan struct{}
	err  error // valid after done is closed
}

// startIn starts argv in namespace ns. `ip netns exec` execs the program
// itself, so cmd.Process is the program (a signal reaches it).
func startIn(t *testing.T, ns string, argv ...string) *bgCmd {
	t.Helper()
	c := &bgCmd{done: make(chan struct{})}
	c.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.errb
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start %v in %s: %v", argv, ns, err)
	}
	go func() { c.err = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

func (c *bgCmd) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// wait waits for the program to exit, at most d.
func (c *bgCmd) wait(t *testing.T, d time.Duration, what string) error {
	t.Helper()
	select {
	case <-c.done:
		return c.err
	case <-time.After(d):
		// Its output is whole only once it has exited.
		_ = c.cmd.Process.Kill()
		<-c.done
		t.Fatalf("%s still running after %v (killed)\nstdout: %s\nstderr: %s", what, d, c.out.String(), c.errb.String())
		return nil
	}
}

// waitListening polls until a TCP socket listens on port in namespace ns.
func waitListening(t *testing.T, ns string, port int, srv *bgCmd) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := exec.Command("ss", "-N", ns, "-Hltn", "sport = :"+strconv.Itoa(port)).Output()
		if err == nil && len(bytes.TrimSpace(out)) > 0 {
			return
		}
		if srv.exited() {
			t.Fatalf("iperf3 server in %s exited: %v\n%s%s", ns, srv.err, srv.out.String(), srv.errb.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on port %d in %s after 20 s (ss: %v %s)", port, ns, err, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pinger is `ping -i 0.01` in a guest's namespace whose replies are
// counted as they arrive.
type pinger struct {
	cmd  *bgCmd
	rd   *os.File
	seen chan struct{} // closed when the reader has read everything
	// Written by the reader goroutine until seen is closed; read by
	// waitReplies through the atomics, and whole after seen.
	replies atomic.Int64 // distinct icmp_seq answered
	maxSeq  atomic.Int64 // the highest icmp_seq answered
	mu      sync.Mutex   // guards text
	text    strings.Builder
}

var pingReply = regexp.MustCompile(`icmp_seq=(\d+) `)

func startPinger(t *testing.T, ns, ip string) *pinger {
	t.Helper()
	rd, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	pg := &pinger{rd: rd, seen: make(chan struct{})}
	c := &bgCmd{done: make(chan struct{})}
	c.cmd = exec.Command("ip", "netns", "exec", ns, "ping", "-i", "0.01", "-W", "1", ip)
	c.cmd.Stdout, c.cmd.Stderr = wr, &c.errb
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start ping in %s: %v", ns, err)
	}
	wr.Close()
	go func() { c.err = c.cmd.Wait(); close(c.done) }()
	pg.cmd = c
	t.Cleanup(func() {
		if !c.exited() {
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		<-pg.seen
	})
	go pg.read()
	return pg
}

// read counts the replies ping prints, one line each; a duplicate (DUP!)
// counts once.
func (pg *pinger) read() {
	defer close(pg.seen)
	defer pg.rd.Close()
	got := map[int64]bool{}
	sc := bufio.NewScanner(pg.rd)
	for sc.Scan() {
		line := sc.Text()
		pg.mu.Lock()
		pg.text.WriteString(line + "\n")
		pg.mu.Unlock()
		m := pingReply.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		seq, _ := strconv.ParseInt(m[1], 10, 64)
		if !got[seq] {
			got[seq] = true
			pg.replies.Add(1)
		}
		if seq > pg.maxSeq.Load() {
			pg.maxSeq.Store(seq)
		}
	}
}

// output is what ping printed so far (and its stderr once it exited).
func (pg *pinger) output() string {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	if pg.cmd.exited() {
		return pg.text.String() + pg.cmd.errb.String()
	}
	return pg.text.String()
}

// waitReplies waits for n more replies.
func (pg *pinger) waitReplies(t *testing.T, n int64, what string) {
	t.Helper()
	target := pg.replies.Load() + n
	deadline := time.Now().Add(30 * time.Second)
	for pg.replies.Load() < target {
		if pg.cmd.exited() || time.Now().After(deadline) {
			t.Fatalf("ping %s: %d replies, waiting for %d (exit %v)\n%s", what, pg.replies.Load(), target, pg.cmd.err, pg.output())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop interrupts ping and returns its summary (probes sent, replies) and
// the probes lost: those up to the last one answered that got no reply, so
// a probe still in flight when ping stops is not counted as lost.
func (pg *pinger) stop(t *testing.T) (sent, replies, lost int) {
	t.Helper()
	if err := pg.cmd.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatalf("stop ping: %v", err)
	}
	_ = pg.cmd.wait(t, 10*time.Second, "ping after SIGINT")
	<-pg.seen
	out := pg.output()
	m := pingSummary.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("ping: %v: no summary\n%s", pg.cmd.err, out)
	}
	sent, _ = strconv.Atoi(m[1])
	replies, _ = strconv.Atoi(m[2])
	return sent, replies, int(pg.maxSeq.Load() - pg.replies.Load())
}

// TestLinuxGuestIperf3Migration: an iperf3 TCP session between two Linux
// guests on different hosts survives live migrations (the client's VM to
// the server's host, the server's VM to the client's, then both back: as
// many of the four as fit in the session, at least the first); a ping
// every 10 ms across the migrations loses under 5% of its replies.
func TestLinuxGuestIperf3Migration(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("skipping: iperf3 is not installed (apt-get install -y iperf3)")
	}
	needLinuxGuests(t)
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("skipping: ss is not installed (apt-get install -y iproute2)")
	}
	p := newLinuxPair(t)
	// A first ping resolves ARP both ways before anything is measured.
	if _, rx, out, err := ping(context.Background(), p.a, "-c", "1", "-W", "2", p.ipB); err != nil || rx != 1 {
		t.Fatalf("first ping: %v\n%s\n%s", err, out, p.stats())
	}

	const port = 5201 // the namespace is the test's own
	// The session's length. The moves are paced by ping replies and bytes
	// moved, not by time; a move starts only if the session will most
	// likely outlast it (under -race a move takes about a second).
	const secs = 10
	srv := startIn(t, p.b, "iperf3", "-s", "-1", "-J", "-i", "0.1", "-B", p.ipB, "-p", strconv.Itoa(port))
	waitListening(t, p.b, port, srv)
	began := time.Now()
	cli := startIn(t, p.a, "iperf3", "-c", p.ipB, "-p", strconv.Itoa(port), "-t", strconv.Itoa(secs), "-i", "0.1", "--json")

	// moved returns the bytes the guest name has sent and received.
	moved := func(name string) uint64 {
		s := p.vm(name).LinuxGuest().Stats()
		return s.TxBytes + s.RxBytes
	}
	// progress waits until the client's guest moved n more bytes: the
	// session runs (again). It returns false if iperf3 ended first.
	progress := func(n uint64, what string) bool {
		t.Helper()
		target := moved(p.a) + n
		deadline := time.Now().Add(30 * time.Second)
		for moved(p.a) < target {
			if cli.exited() {
				return false
			}
			if time.Now().After(deadline) {
				t.Fatalf("iperf3 moved no data for 30 s %s\n%s", what, p.stats())
			}
			time.Sleep(5 * time.Millisecond)
		}
		return true
	}
	mustProgress := func(n uint64, what string) {
		t.Helper()
		if !progress(n, what) {
			t.Fatalf("iperf3 client ended %s (raise secs if the moves are slow here): %v\n%s%s\n%s",
				what, cli.err, cli.out.String(), cli.errb.String(), p.stats())
		}
	}
	mustProgress(1<<20, "before the first migration")

	pinger := startPinger(t, p.a, p.ipB)
	type move struct{ vm, to string }
	moves := []move{{p.a, p.hostB}, {p.b, p.hostA}, {p.a, p.hostA}, {p.b, p.hostB}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Before each move: 50 more ping replies (the path works again, and
	// each move has about half a second of probes around it) and 512 KiB
	// more of iperf3 (the session runs again).
	const repliesBetween = 50
	var done int
	var slowest, lastEnd time.Duration // the longest wait+move; the last move's end, since began
	for i, m := range moves {
		cycle := time.Now()
		if i > 0 && time.Since(began)+2*slowest+time.Second > secs*time.Second {
			t.Logf("not moving %s to %s: the session (%d s) would likely end first", m.vm, m.to, secs)
			break
		}
		pinger.waitReplies(t, repliesBetween, "before moving "+m.vm+" to "+m.to)
		mustProgress(512<<10, "before moving "+m.vm+" to "+m.to)
		at := time.Since(began)
		rep, err := p.l.Migrate(ctx, m.vm, m.to)
		if err != nil {
			t.Fatalf("migrate %s to %s: %v\n%s", m.vm, m.to, err, p.stats())
		}
		if vm := p.vm(m.vm); vm.Host.Name != m.to {
			t.Fatalf("%s runs on %s after migrating to %s", m.vm, vm.Host.Name, m.to)
		}
		lastEnd = time.Since(began)
		slowest = max(slowest, time.Since(cycle))
		done++
		t.Logf("migrated %s to %s at %.2f s after the client started: total %.1f ms, VM frozen %.2f ms, %d pre-copy rounds",
			m.vm, m.to, at.Seconds(), rep.TotalMs, rep.DowntimeMs, rep.PrecopyRounds)
	}
	pinger.waitReplies(t, repliesBetween, "after the last migration")
	// Bytes after the last move prove the session ran on after it: seen
	// here while iperf3 runs, or else in its receiver's intervals below.
	movedAfter := progress(512<<10, "after the last migration")
	ptx, prx, lost := pinger.stop(t)

	cliErr := cli.wait(t, time.Duration(secs+60)*time.Second, "iperf3 client")
	srvErr := srv.wait(t, 60*time.Second, "iperf3 server")
	var cr, sr iperfResult
	cjErr := json.Unmarshal(cli.out.Bytes(), &cr)
	sjErr := json.Unmarshal(srv.out.Bytes(), &sr)
	if cliErr != nil || cjErr != nil || cr.Error != "" {
		t.Fatalf("the TCP session did not survive: iperf3 client: exit %v, JSON %v, error %q\n%s\n%s",
			cliErr, cjErr, cr.Error, cli.errb.String(), p.stats())
	}
	if srvErr != nil || sjErr != nil || sr.Error != "" {
		t.Fatalf("iperf3 server: exit %v, JSON %v, error %q\n%s", srvErr, sjErr, sr.Error, srv.errb.String())
	}
	if cr.End.SumReceived.Bytes <= 0 {
		t.Fatalf("iperf3 moved nothing:\n%s", cli.out.String())
	}
	if !movedAfter {
		// iperf3's clock starts after began, so an interval that starts
		// after lastEnd on its clock surely came after the last move.
		var after int64
		for _, iv := range sr.intervals(secs + 1) {
			if iv.Start >= lastEnd.Seconds() {
				after += iv.Bytes
			}
		}
		if after == 0 {
			t.Fatalf("no iperf3 bytes after the last move (ended %.2f s after the client started)\n%s", lastEnd.Seconds(), p.stats())
		}
	}
	t.Logf("iperf3 TCP %s -> %s across %d migrations: exit 0, %.1f MB received, %.0f Mbit/s average, %d retransmits",
		p.a, p.b, done, float64(cr.End.SumReceived.Bytes)/1e6, cr.End.SumReceived.BitsPerSecond/1e6, cr.End.SumSent.Retransmits)
	t.Logf("longest stall (0.1 s intervals of ~0 bytes): sender %v; receiver %v",
		longestStall(cr.intervals(secs)), longestStall(sr.intervals(secs)))
	for _, side := range []struct {
		name string
		r    *iperfResult
	}{{"sender", &cr}, {"receiver", &sr}} {
		iv, frac := deepestDip(side.r.intervals(secs))
		t.Logf("deepest dip, %s: the interval %.2f s to %.2f s carried %.0f%% of the median interval's bytes", side.name, iv.Start, iv.End, frac*100)
	}

	t.Logf("ping -i 0.01 across the %d migrations: %d sent, %d replies, %d lost", done, ptx, prx, lost)
	if ptx == 0 || lost*100 >= ptx*5 {
		t.Errorf("ping across the migrations lost %d of %d replies; want under 5%%\n%s", lost, ptx, pinger.output())
	}
	if _, rx, out, err := ping(context.Background(), p.a, "-c", "5", "-i", "0.2", "-W", "2", p.ipB); err != nil || rx != 5 {
		t.Errorf("ping after the migrations: %d/5 replies, %v\n%s", rx, err, out)
	}
	for _, n := range []string{p.a, p.b} {
		if s := p.vm(n).LinuxGuest().Stats(); s.Dropped() != 0 {
			t.Errorf("%s dropped frames: %+v", n, s)
		}
	}
	if t.Failed() {
		t.Log(p.stats())
	}
}
