//go:build !race

package mem

import "unsafe"

// Aligned 32- and 64-bit accesses are single-copy atomic on the hosts we run
// on (amd64, arm64), as they are on real memory: the compiler emits one
// load or store, so a concurrent observer sees the old or the new value,
// never a torn one. Ordering between goroutines is not implied: publishing
// uses LoadU32Acquire/StoreU32Release. Plain accesses keep the per-frame
// path free of locked instructions.

func load32(p unsafe.Pointer) uint32     { return *(*uint32)(p) }
func store32(p unsafe.Pointer, v uint32) { *(*uint32)(p) = v }
func load64(p unsafe.Pointer) uint64     { return *(*uint64)(p) }
func store64(p unsafe.Pointer, v uint64) { *(*uint64)(p) = v }

// copyIn writes src at data[pa:]: a plain copy outside the race detector.
func copyIn(data []byte, pa uint64, src []byte) { copy(data[pa:], src) }

const raceEnabled = false
