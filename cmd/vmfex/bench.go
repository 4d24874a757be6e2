package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/lab"
)

type benchOpts struct {
	duration time.Duration
	sizes    []int
	json     bool
	switches int
}

func newBenchCmd() *cobra.Command {
	var o benchOpts
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure VM-to-VM throughput, direct vs emulated (cross-host and hairpin), and live mode-switch pauses",
		Long: `bench builds a two-VM fabric per case, sends one way as fast as the rings
allow, and counts the frames the receiving VM got during --duration. Every case
ends with a drain and checks that nothing was lost or duplicated.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBench(cmd.Context(), cmd.OutOrStdout(), o) },
	}
	f := cmd.Flags()
	f.DurationVar(&o.duration, "duration", 2*time.Second, "measurement time per case")
	f.IntSliceVar(&o.sizes, "frame-size", []int{64, 1500}, "frame sizes in bytes, without FCS")
	f.BoolVar(&o.json, "json", false, "print JSON instead of a table")
	f.IntVar(&o.switches, "switches", 2000, "live mode switches to time under full-rate traffic (0 = skip)")
	return cmd
}

type benchRow struct {
	Path      string  `json:"path"`
	Topology  string  `json:"topology"`
	FrameSize int     `json:"frame_size"`
	PPS       float64 `json:"pps"`
	Gbps      float64 `json:"gbps"`
	Lost      int64   `json:"frames_lost"`
	Dup       uint64  `json:"frames_duplicated"`
}

func runBench(ctx context.Context, out io.Writer, o benchOpts) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if o.duration <= 0 {
		return fmt.Errorf("--duration %v: must be positive, e.g. 2s", o.duration)
	}
	var rows []benchRow
	for _, size := range o.sizes {
		if size < 64 || size > 1518 {
			return fmt.Errorf("--frame-size %d: must be 64..1518", size)
		}
		for _, hairpin := range []bool{false, true} {
			topo := "cross-host"
			if hairpin {
				topo = "hairpin"
			}
			if !o.json {
				fmt.Fprintf(out, "measuring direct and emulated, %s, %dB ...\n", topo, size)
			}
			for _, mode := range []hypervisor.Mode{hypervisor.ModeDirect, hypervisor.ModeEmulated} {
				r, err := lab.RunPair(ctx, size, hairpin, mode, o.duration, 0)
				if err != nil {
					return err
				}
				rows = append(rows, benchRow{Path: mode.String(), Topology: topo, FrameSize: size, PPS: r.PPS, Gbps: r.Gbps, Lost: r.Lost, Dup: r.Dup})
			}
		}
	}
	var sw lab.SwitchResult
	if o.switches > 0 {
		if !o.json {
			fmt.Fprintf(out, "measuring %d live mode switches under full-rate traffic ...\n", o.switches)
		}
		var err error
		if sw, err = lab.MeasureSwitches(ctx, o.switches, 7); err != nil {
			return err
		}
	}
	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"cpus": runtime.NumCPU(), "results": rows, "mode_switch": map[string]any{
			"switches": sw.Switches, "p50_us": sw.P50.Microseconds(), "p99_us": sw.P99.Microseconds(),
			"max_us": sw.Max.Microseconds(), "frames_lost": sw.Lost, "frames_duplicated": sw.Duplicated}})
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PATH\tTOPOLOGY\tFRAME\tFRAMES/S\tGBIT/S\tLOST\tDUP\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%dB\t%.0f\t%.2f\t%d\t%d\t\n", r.Path, r.Topology, r.FrameSize, r.PPS, r.Gbps, r.Lost, r.Dup)
	}
	tw.Flush()
	fmt.Fprintf(out, "(%d CPUs; one-way, one sender, one process)\n", runtime.NumCPU())
	for _, size := range o.sizes {
		for _, topo := range []string{"cross-host", "hairpin"} {
			var d, e float64
			for _, r := range rows {
				if r.FrameSize == size && r.Topology == topo {
					if r.Path == "direct" {
						d = r.PPS
					} else {
						e = r.PPS
					}
				}
			}
			if e > 0 {
				fmt.Fprintf(out, "direct/emulated, %s %dB: %.2fx\n", topo, size, d/e)
			}
		}
	}
	if sw.Switches > 0 {
		fmt.Fprintf(out, "mode switch (guest pause), %d switches under load: p50 %v, p99 %v, max %v; %d lost, %d duplicated\n",
			sw.Switches, sw.P50, sw.P99, sw.Max, sw.Lost, sw.Duplicated)
	}
	return nil
}
