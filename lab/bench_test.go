package lab_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/vmfex/vmfex/lab"
)

// BenchmarkDirectVMToVM measures frames per second from one VM to another
// on the direct path: guest driver, adapter DMA, VN-Tag, FI forwarding,
// VN-Tag, adapter DMA, guest driver; one op is one frame delivered.
// allocs/op covers every goroutine of the fabric.
func BenchmarkDirectVMToVM(b *testing.B) {
	for _, size := range []int{64, 1500} {
		for _, hairpin := range []bool{false, true} {
			name := fmt.Sprintf("%dB/cross-host", size)
			if hairpin {
				name = fmt.Sprintf("%dB/hairpin", size)
			}
			b.Run(name, func(b *testing.B) {
				b.ReportAllocs()
				n := uint64(max(b.N, 1))
				b.ResetTimer()
				res, err := lab.RunPair(context.Background(), size, hairpin, 0, n)
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
