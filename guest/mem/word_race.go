//go:build race

package mem

import (
	"encoding/binary"
	"sync/atomic"
	"unsafe"
)

// Under the race detector, aligned word accesses use sync/atomic so that an
// observer reading guest memory while the vCPU runs (a controller reading a
// workload's counters, as a hypervisor reads guest pages) is well-defined.
// See word_norace.go for why normal builds need not.

func load32(p unsafe.Pointer) uint32     { return atomic.LoadUint32((*uint32)(p)) }
func store32(p unsafe.Pointer, v uint32) { atomic.StoreUint32((*uint32)(p), v) }
func load64(p unsafe.Pointer) uint64     { return atomic.LoadUint64((*uint64)(p)) }
func store64(p unsafe.Pointer, v uint64) { atomic.StoreUint64((*uint64)(p), v) }

// copyIn writes src at data[pa:] with word-atomic stores, so that a
// concurrent word-atomic reader (a migration's page copy running beside a
// device's DMA) is well-defined under the race detector. Partial words are
// merged with compare-and-swap so that neighbouring bytes written by other
// goroutines are kept.
func copyIn(data []byte, pa uint64, src []byte) {
	for len(src) > 0 {
		w := pa &^ 7
		off := pa - w
		n := min(8-off, uint64(len(src)))
		p := (*uint64)(unsafe.Pointer(&data[w]))
		if off == 0 && n == 8 {
			atomic.StoreUint64(p, binary.LittleEndian.Uint64(src))
		} else {
			for {
				old := atomic.LoadUint64(p)
				var b [8]byte
				binary.LittleEndian.PutUint64(b[:], old)
				copy(b[off:off+n], src[:n])
				if atomic.CompareAndSwapUint64(p, old, binary.LittleEndian.Uint64(b[:])) {
					break
				}
			}
		}
		pa += n
		src = src[n:]
	}
}

const raceEnabled = true
