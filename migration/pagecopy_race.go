//go:build race

package migration

import (
	"encoding/binary"

	"github.com/vmfex/vmfex/guest/mem"
)

// copyPage copies page p of m word by word with mem's accessors, which are
// atomic under the race detector (guest/mem/word_race.go), so that copying
// while the vCPU writes aligned words is well-defined there. Guest writes
// narrower than a word or unaligned are plain stores in mem and would be
// reported against this copy; the normal build copies the page at once.
func copyPage(dst []byte, m *mem.Memory, p uint64) {
	base := p << mem.PageShift
	for off := uint64(0); off < mem.PageSize; off += 8 {
		binary.LittleEndian.PutUint64(dst[off:], m.U64(base+off))
	}
}
