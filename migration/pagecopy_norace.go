//go:build !race

package migration

import "github.com/vmfex/vmfex/guest/mem"

// copyPage copies page p of m into dst while the guest may be writing it.
// The copy may be torn; a page written during the copy is dirty again and
// goes in a later round (the dirty bit is set after the data is written).
// This is the same plain-access contract as mem's own accessors
// (guest/mem/word_norace.go).
func copyPage(dst []byte, m *mem.Memory, p uint64) {
	copy(dst, m.Page(p))
}
