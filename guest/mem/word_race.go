//go:build race

package mem

import (
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
