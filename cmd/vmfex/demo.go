package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/capture"
	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/lab"
	"github.com/vmfex/vmfex/link"
)

type demoOpts struct {
	duration  time.Duration
	json      bool
	capture   string
	capHost   string
	capFrames int
	rate      uint64
	frameLen  int
	emulated  bool
	migrate   string // VM to migrate live ("" or "none": no migration)
	migrateTo string // destination host ("": the other one)
	transport string // migration stream: tcp or pipe
	memMiB    int    // guest memory per VM
}

func newDemoCmd() *cobra.Command {
	var o demoOpts
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Bring up a fabric in this process (1 FI, 2 hosts, 4 VMs on 2 VLANs), run traffic direct then emulated, report",
		Long: `demo builds a Fabric Interconnect with two server ports, two hosts each with
a VIC adapter, and four VMs whose VMXNET3 vNICs run on the adapters' dynamic
vNICs (high-performance mode). Every VM sends numbered probes to every other VM
of its VLAN; the report says, per VM, what was sent, received, lost,
duplicated and misdelivered.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(cmd.Context(), cmd.OutOrStdout(), o) },
	}
	f := cmd.Flags()
	f.DurationVar(&o.duration, "duration", 3*time.Second, "how long traffic runs")
	f.BoolVar(&o.json, "json", false, "print one JSON object instead of tables")
	f.StringVar(&o.capture, "capture", "", "write the frames seen on a server port (VN-Tags included) to this pcap file")
	f.StringVar(&o.capHost, "capture-host", "esx1", "host whose server-port cable --capture taps")
	f.IntVar(&o.capFrames, "capture-frames", 100000, "stop capturing after this many frames")
	f.Uint64Var(&o.rate, "rate", 0, "frames per second from each VM to each peer (0 = as fast as the rings allow)")
	f.IntVar(&o.frameLen, "frame-size", 64, "frame size in bytes, without FCS (64..1518)")
	f.BoolVar(&o.emulated, "emulated-phase", true, "after the direct phase, switch every vNIC live to the emulated device, run the same traffic there, and switch back")
	f.StringVar(&o.migrate, "migrate", "web-1", "then live-migrate this VM to the other host under the same traffic (none: skip)")
	f.StringVar(&o.migrateTo, "migrate-to", "", "destination host of --migrate (default: the host the VM is not on)")
	f.IntVar(&o.memMiB, "vm-memory", 8, "guest memory per VM in MiB (4..4096); the migration copies all of it")
	f.StringVar(&o.transport, "migrate-transport", "tcp", "migration stream between the hosts: tcp (loopback socket) or pipe (in process)")
	return cmd
}

// demoVM is one VM's line of the report.
type demoVM struct {
	Name         string  `json:"name"`
	Host         string  `json:"host"`
	VEth         string  `json:"veth"`
	Vif          uint16  `json:"vif"`
	VLAN         uint16  `json:"vlan"`
	Mode         string  `json:"mode"`
	Sent         uint64  `json:"frames_sent"`
	Received     uint64  `json:"frames_received"`
	Lost         int64   `json:"frames_lost"`
	Duplicated   uint64  `json:"frames_duplicated"`
	Misdelivered uint64  `json:"frames_misdelivered"`
	RxPPS        float64 `json:"direct_rx_pps"` // during the direct phase
	LatencyAvgUs float64 `json:"latency_avg_us"`
	LatencyMaxUs float64 `json:"latency_max_us"`
}

type demoReport struct {
	DurationS    float64        `json:"duration_s"`
	FrameSize    int            `json:"frame_size"`
	Sent         uint64         `json:"frames_sent"`
	Received     uint64         `json:"frames_received"`
	Lost         int64          `json:"frames_lost"`
	Duplicated   uint64         `json:"frames_duplicated"`
	Misdelivered uint64         `json:"frames_misdelivered"`
	Reordered    uint64         `json:"frames_reordered"`
	DirectPPS    float64        `json:"direct_pps"`
	EmulatedPPS  float64        `json:"emulated_pps,omitempty"`
	Switches     []demoSwitch   `json:"mode_switches,omitempty"`
	Migration    *demoMigration `json:"migration,omitempty"`
	FIDrops      uint64         `json:"fi_policy_drops"`
	Capture      string         `json:"capture,omitempty"`
	Captured     uint64         `json:"frames_captured,omitempty"`
	VMs          []demoVM       `json:"vms"`
}

func runDemo(ctx context.Context, out io.Writer, o demoOpts) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if o.frameLen < guest.MinTrafficFrameLen || o.frameLen > guest.MaxTrafficFrameLen {
		return fmt.Errorf("--frame-size %d: must be %d..%d bytes", o.frameLen, guest.MinTrafficFrameLen, guest.MaxTrafficFrameLen)
	}
	if o.duration <= 0 {
		return fmt.Errorf("--duration %v: must be positive, e.g. 3s", o.duration)
	}
	if o.migrate == "none" {
		o.migrate = ""
	}
	if o.transport == "" {
		o.transport = string(lab.TransportTCP)
	}
	if o.transport != string(lab.TransportTCP) && o.transport != string(lab.TransportPipe) {
		return fmt.Errorf("--migrate-transport %q: must be tcp or pipe", o.transport)
	}
	if o.memMiB == 0 {
		o.memMiB = 8
	}
	if o.memMiB < 4 || o.memMiB > 4096 {
		return fmt.Errorf("--vm-memory %d: must be 4..4096 MiB", o.memMiB)
	}
	topo := lab.DemoTopology()
	topo.Traffic = lab.TrafficSpec{FrameLen: o.frameLen, Rate: o.rate}
	for i := range topo.VMs {
		topo.VMs[i].MemSize = uint64(o.memMiB) << 20
	}

	var capW *capture.Writer
	if o.capture != "" {
		f, err := os.Create(o.capture)
		if err != nil {
			return fmt.Errorf("--capture: %w", err)
		}
		defer f.Close()
		capW, err = capture.NewWriter(f, 65535)
		if err != nil {
			return err
		}
		capW.SetMaxFrames(uint64(o.capFrames))
		found := false
		for _, h := range topo.Hosts {
			found = found || h.Name == o.capHost
		}
		if !found {
			return fmt.Errorf("--capture-host %q: no such host in the demo (esx1, esx2)", o.capHost)
		}
		topo.Tap = func(host string) link.TapFunc {
			if host != o.capHost {
				return nil
			}
			return func(_ bool, frame []byte) { _ = capW.WriteFrame(time.Now(), frame) }
		}
	}

	l, err := lab.Build(topo)
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Start(); err != nil {
		return err
	}
	if !o.json {
		fmt.Fprintf(out, "fabric up: FI %s, %d hosts, %d VMs on the direct path; traffic for %v\n",
			topo.FI, len(l.Hosts()), len(l.VMs()), o.duration)
	}
	start := time.Now()
	l.StartTraffic()
	select {
	case <-time.After(o.duration):
	case <-ctx.Done():
	}
	elapsed := time.Since(start)
	atStop := l.Stats()
	var emu emulatedPhase
	if o.emulated {
		// Same traffic, still running: every vNIC moves, live, onto its
		// hypervisor's emulated device, runs there, and moves back.
		if !o.json {
			fmt.Fprintf(out, "switching every vNIC to the emulated device, live; traffic for %v more\n", o.duration)
		}
		var err error
		if emu, err = runEmulatedPhase(ctx, l, o.duration); err != nil {
			return err
		}
	}
	var mig *demoMigration
	if o.migrate != "" {
		var err error
		if mig, err = runMigrationPhase(ctx, out, l, o); err != nil {
			return err
		}
	}
	l.StopTraffic()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	drainErr := l.Drain(dctx, 3*time.Second)

	rep := buildReport(l, atStop, l.Stats(), elapsed, o)
	if o.emulated {
		rep.EmulatedPPS = emu.pps
		rep.Switches = emu.switches
	}
	rep.Migration = mig
	if capW != nil {
		_ = capW.Close()
		rep.Capture = o.capture
		rep.Captured = capW.Stats().Captured
	}
	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printReport(out, rep)
	}
	if drainErr != nil && rep.Lost != 0 {
		return fmt.Errorf("%d frames lost: %w", rep.Lost, drainErr)
	}
	if rep.Duplicated != 0 || rep.Misdelivered != 0 {
		return fmt.Errorf("invariant broken: %d duplicated, %d misdelivered", rep.Duplicated, rep.Misdelivered)
	}
	return nil
}

func buildReport(l *lab.Lab, atStop, final map[uint32]guest.TrafficStats, elapsed time.Duration, o demoOpts) demoReport {
	sum := guest.Reconcile(final)
	stopSum := guest.Reconcile(atStop)
	secs := elapsed.Seconds()
	rep := demoReport{
		DurationS: secs, FrameSize: o.frameLen,
		Sent: sum.Sent, Received: sum.Unique, Lost: sum.Lost, Duplicated: sum.Duplicated,
		Misdelivered: sum.Misdelivered, Reordered: sum.Reordered,
		DirectPPS: float64(stopSum.Unique) / secs,
	}
	fiStats := l.FI.Stats()
	rep.FIDrops = fiStats.Drops.Total()
	lostTo := map[uint32]int64{}
	for _, p := range sum.Pairs {
		lostTo[p.Dst] += p.Lost
	}
	for _, vm := range l.VMs() {
		st := final[vm.ID()]
		rx := atStop[vm.ID()].Received.Unique
		rep.VMs = append(rep.VMs, demoVM{
			Name: vm.Name(), Host: vm.Host.Name, VEth: fmt.Sprintf("Veth%d", vm.VEth), Vif: vm.Vif,
			VLAN: vm.VLAN, Mode: vm.Mode().String(),
			Sent: st.Sent.Frames, Received: st.Received.Unique, Lost: lostTo[vm.ID()],
			Duplicated: st.Received.Duplicates, Misdelivered: st.Misdelivered,
			RxPPS:        float64(rx) / secs,
			LatencyAvgUs: float64(st.Received.Latency.Mean()) / 1e3,
			LatencyMaxUs: float64(st.Received.Latency.Max) / 1e3,
		})
	}
	sort.SliceStable(rep.VMs, func(i, j int) bool { return rep.VMs[i].Name < rep.VMs[j].Name })
	return rep
}

func printReport(out io.Writer, r demoReport) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nVM\tHOST\tVETH\tVIF\tVLAN\tMODE\tSENT\tRECEIVED\tLOST\tDUP\tMISDELIV\tDIRECT-RX-PPS\tLAT-AVG\tLAT-MAX")
	for _, v := range r.VMs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%.0f\t%.1fus\t%.1fus\n",
			v.Name, v.Host, v.VEth, v.Vif, v.VLAN, v.Mode, v.Sent, v.Received, v.Lost, v.Duplicated,
			v.Misdelivered, v.RxPPS, v.LatencyAvgUs, v.LatencyMaxUs)
	}
	fmt.Fprintf(tw, "TOTAL\t\t\t\t\t\t%d\t%d\t%d\t%d\t%d\t%.0f\t\t\n", r.Sent, r.Received, r.Lost, r.Duplicated, r.Misdelivered, r.DirectPPS)
	tw.Flush()
	fmt.Fprintf(out, "\n%d-byte frames for %.2fs: direct path %.0f frames/s VM to VM through the FI; %d reordered; %d FI policy drops\n",
		r.FrameSize, r.DurationS, r.DirectPPS, r.Reordered, r.FIDrops)
	if r.EmulatedPPS > 0 {
		fmt.Fprintf(out, "emulated path (trap per doorbell, device model, VEM): %.0f frames/s; direct/emulated %.2fx\n", r.EmulatedPPS, r.DirectPPS/r.EmulatedPPS)
		var worst time.Duration
		for _, s := range r.Switches {
			worst = max(worst, time.Duration(s.PauseUs*1e3))
		}
		fmt.Fprintf(out, "%d live mode switches under traffic; longest guest pause %v\n", len(r.Switches), worst)
	}
	if m := r.Migration; m != nil {
		fmt.Fprintf(out, "\nlive migration of %s from %s to %s over %s: total %.1f ms, VM frozen %.2f ms, longest gap in its streams %.2f ms (ended at %.2f ms); %d pre-copy rounds, %d bytes\n",
			m.VM, m.From, m.To, m.Transport, m.TotalMs, m.DowntimeMs, m.BlackoutMs, float64(m.BlackoutEndUs)/1e3, m.PrecopyRounds, m.BytesTransferred)
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PHASE\tSTART\tEND\tTOOK")
		for _, p := range m.Phases {
			fmt.Fprintf(tw, "%s\t%.2fms\t%.2fms\t%.2fms\n", p.Name, float64(p.StartUs)/1e3, float64(p.EndUs)/1e3, float64(p.EndUs-p.StartUs)/1e3)
		}
		tw.Flush()
	}
	if r.Capture != "" {
		fmt.Fprintf(out, "captured %d frames of the server port to %s (tshark -r %s -Y vntag)\n", r.Captured, r.Capture, r.Capture)
	}
	if r.Lost == 0 && r.Duplicated == 0 && r.Misdelivered == 0 {
		fmt.Fprintln(out, "exactly once: 0 lost, 0 duplicated, 0 misdelivered")
	}
}

// demoSwitch is one live mode switch of the demo.
type demoSwitch struct {
	VM      string  `json:"vm"`
	From    string  `json:"from"`
	To      string  `json:"to"`
	PauseUs float64 `json:"pause_us"` // the guest's vCPU was frozen this long
	Held    int     `json:"frames_handed_over"`
}

type emulatedPhase struct {
	pps      float64
	switches []demoSwitch
}

// runEmulatedPhase moves every VM to its emulated device under traffic,
// measures the same traffic there for d, and moves every VM back.
func runEmulatedPhase(ctx context.Context, l *lab.Lab, d time.Duration) (emulatedPhase, error) {
	var ph emulatedPhase
	sw := func(to hypervisor.Mode) error {
		for _, vm := range l.VMs() {
			t, err := vm.SwitchMode(ctx, to)
			if err != nil {
				return err
			}
			ph.switches = append(ph.switches, demoSwitch{VM: vm.Name(), From: t.From.String(), To: t.To.String(),
				PauseUs: float64(t.Total.Nanoseconds()) / 1e3, Held: t.Held})
		}
		return nil
	}
	if err := sw(hypervisor.ModeEmulated); err != nil {
		return ph, err
	}
	u0, t0 := guest.Reconcile(l.Stats()).Unique, time.Now()
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	u1 := guest.Reconcile(l.Stats()).Unique
	ph.pps = float64(u1-u0) / time.Since(t0).Seconds()
	return ph, sw(hypervisor.ModeDirect)
}

// demoMigration is the migration's part of the report.
type demoMigration struct {
	lab.MigrationReport
	// BlackoutMs is the longest gap in any stream to or from the VM, as the
	// receivers' sequence numbers show it.
	BlackoutMs float64 `json:"blackout_ms"`
	// BlackoutEndUs is when that gap ended, counted like the phases.
	BlackoutEndUs int64 `json:"blackout_end_us"`
}

// runMigrationPhase moves o.migrate to the other host, live, with the
// traffic still running, and lets traffic run on for a while so that the
// first frames after the move end the blackout.
func runMigrationPhase(ctx context.Context, out io.Writer, l *lab.Lab, o demoOpts) (*demoMigration, error) {
	var vm *lab.VM
	for _, v := range l.VMs() {
		if v.Name() == o.migrate {
			vm = v
		}
	}
	if vm == nil {
		return nil, fmt.Errorf("--migrate %q: no such VM in the demo (%v)", o.migrate, l.SortedVMs())
	}
	to := o.migrateTo
	if to == "" {
		for _, h := range l.Hosts() {
			if h != vm.Host {
				to = h.Name
				break
			}
		}
	}
	if !o.json {
		fmt.Fprintf(out, "live-migrating %s from %s to %s over %s, traffic running\n", vm.Name(), vm.Host.Name, to, o.transport)
	}
	l.ResetGaps()
	rep, err := l.MigrateWith(ctx, vm.Name(), to, lab.MigrateOptions{
		Transport: lab.Transport(o.transport),
		Progress: func(p lab.MigrationPhase) {
			if !o.json {
				fmt.Fprintf(out, "  %-16s done at %8.2f ms\n", p.Name, float64(p.EndUs)/1e3)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("--migrate %s: %w", o.migrate, err)
	}
	// Traffic runs on; the blackout ends with the first frames after it.
	settle := min(max(o.duration/3, 200*time.Millisecond), 2*time.Second)
	select {
	case <-time.After(settle):
	case <-ctx.Done():
	}
	gap, end := l.Blackout(vm.Name())
	return &demoMigration{MigrationReport: rep, BlackoutMs: float64(gap.Microseconds()) / 1e3, BlackoutEndUs: (end - rep.StartUnixNs) / 1e3}, nil
}
