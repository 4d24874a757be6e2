package lab_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/lab"
)

// BenchmarkVMToVM measures frames per second from one VM to another on the
// direct path (guest driver, adapter DMA, VN-Tag, FI forwarding, VN-Tag,
// adapter DMA, guest driver) and on the emulated path (a trap per doorbell,
// the hypervisor's device model, the VEM, the vNIC driven by the
// hypervisor); one op is one frame delivered.
// allocs/op covers every goroutine of the fabric.
func BenchmarkVMToVM(b *testing.B) {
	for _, mode := range []hypervisor.Mode{hypervisor.ModeDirect, hypervisor.ModeEmulated} {
		for _, size := range []int{64, 1500} {
			for _, hairpin := range []bool{false, true} {
				name := fmt.Sprintf("%s/%dB/cross-host", mode, size)
				if hairpin {
					name = fmt.Sprintf("%s/%dB/hairpin", mode, size)
				}
				b.Run(name, func(b *testing.B) {
					b.ReportAllocs()
					n := uint64(max(b.N, 1))
					b.ResetTimer()
					res, err := lab.RunPair(context.Background(), size, hairpin, mode, 0, n)
					b.StopTimer()
					if err != nil {
						b.Fatal(err)
					}
					if res.Lost != 0 || res.Dup != 0 {
						b.Fatalf("lost %d duplicated %d", res.Lost, res.Dup)
					}
					b.ReportMetric(res.PPS, "frames/s")
					b.ReportMetric(res.Gbps, "Gbit/s")
				})
			}
		}
	}
}

// BenchmarkModeSwitch measures the guest's pause per live mode switch under
// full-rate traffic; one op is one switch.
func BenchmarkModeSwitch(b *testing.B) {
	res, err := lab.MeasureSwitches(context.Background(), max(b.N, 10), 7)
	if err != nil {
		b.Fatal(err)
	}
	if res.Lost != 0 || res.Duplicated != 0 {
		b.Fatalf("lost %d duplicated %d", res.Lost, res.Duplicated)
	}
	b.ReportMetric(float64(res.P50.Microseconds()), "p50-us")
	b.ReportMetric(float64(res.P99.Microseconds()), "p99-us")
}

// TestMeasureSwitches: the benchmark's measurement works even for a few
// switches, which finish before a generator has seen its start command
// unless the measurement waits for the traffic (it once did not).
func TestMeasureSwitches(t *testing.T) {
	res, err := lab.MeasureSwitches(context.Background(), 10, 7)
	if err != nil {
		t.Fatal(err)
	}
	if res.Switches != 10 || res.Sent == 0 || res.Lost != 0 || res.Duplicated != 0 {
		t.Errorf("result %+v: want 10 switches under traffic, 0 lost, 0 duplicated", res)
	}
}
