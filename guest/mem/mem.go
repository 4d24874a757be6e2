// Package mem is a VM's guest-physical memory: a byte arena with
// little-endian accessors and a dirty-page log, as KVM keeps one.
//
// Every write through this package marks the 4 KiB page it touches in a
// dirty bitmap; Dirty reads and clears the bitmap atomically, which is what
// live migration's pre-copy rounds are built on. Device DMA writes go through
// the same accessors, so adapter writes are logged like CPU writes.
//
// Words: aligned 32- and 64-bit accesses are single-copy atomic (the host is
// little-endian, so the native word is the little-endian encoding).
//
// Concurrency: all methods are safe for concurrent use. Plain accessors give
// no ordering between goroutines; a producer publishes a descriptor with
// StoreU32Release on the word holding its generation bit and a consumer reads
// it with LoadU32Acquire, which orders every plain access before the publish
// before every plain access after the acquire (Go memory model: atomics are
// sequentially consistent). Callers must keep to that protocol; the arena
// itself does not lock.
package mem

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"
	"unsafe"
)

// PageSize is the granularity of dirty tracking.
const PageSize = 4096

// PageShift is log2(PageSize).
const PageShift = 12

// MaxSize bounds one arena (64 GiB) so sizes fit every index type used here.
const MaxSize = 64 << 30

var (
	// ErrSize reports an arena size that is zero, not page-aligned or too large.
	ErrSize = errors.New("mem: size must be a positive multiple of 4096 up to 64 GiB")
	// ErrRange reports an access outside guest memory.
	ErrRange = errors.New("mem: guest-physical range outside guest memory")
)

// Memory is one VM's guest-physical address space, starting at PA 0.
type Memory struct {
	words []uint64        // backing store; uint64 so every 4/8-byte aligned word can be accessed atomically
	data  []byte          // the same bytes; immutable slice header
	dirty []atomic.Uint64 // one bit per page; set by writes, cleared by Dirty
	size  uint64          // immutable
}

// New allocates a zeroed arena of size bytes. Fresh memory counts as dirty:
// the first pre-copy round must send all of it.
func New(size uint64) (*Memory, error) {
	if size == 0 || size%PageSize != 0 || size > MaxSize {
		return nil, fmt.Errorf("%w (got %d)", ErrSize, size)
	}
	words := make([]uint64, size/8)
	m := &Memory{
		words: words,
		data:  unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), size),
		dirty: make([]atomic.Uint64, (size/PageSize+63)/64),
		size:  size,
	}
	m.MarkAllDirty()
	return m, nil
}

// Size returns the arena size in bytes.
func (m *Memory) Size() uint64 { return m.size }

// Pages returns the number of 4 KiB pages.
func (m *Memory) Pages() uint64 { return m.size / PageSize }

// InRange reports whether [pa, pa+n) lies inside guest memory, without
// overflowing on hostile addresses.
func (m *Memory) InRange(pa, n uint64) bool {
	return pa <= m.size && n <= m.size-pa
}

func (m *Memory) markRange(pa, n uint64) {
	if n == 0 {
		return
	}
	first := pa >> PageShift
	last := (pa + n - 1) >> PageShift
	for p := first; p <= last; p++ {
		// Always a locked Or, never "test, then Or": a plain data store
		// may still sit in this core's store buffer when a test-load runs,
		// so a writer could see the bit set, skip it, and have the
		// collector clear the bit and copy the page before the store is
		// visible — a write lost to migration. The locked Or drains the
		// store buffer first.
		m.dirty[p>>6].Or(uint64(1) << (p & 63))
	}
}

func (m *Memory) markPage(pa uint64) {
	p := pa >> PageShift
	m.dirty[p>>6].Or(uint64(1) << (p & 63)) // unconditional: see markRange
}

// U8 reads one byte; 0 when out of range (callers validate with InRange).
func (m *Memory) U8(pa uint64) uint8 {
	if pa >= m.size {
		return 0
	}
	return m.data[pa]
}

// U16 reads a little-endian uint16; 0 when out of range.
func (m *Memory) U16(pa uint64) uint16 {
	if !m.InRange(pa, 2) {
		return 0
	}
	return binary.LittleEndian.Uint16(m.data[pa:])
}

// U32 reads a little-endian uint32; 0 when out of range.
func (m *Memory) U32(pa uint64) uint32 {
	if !m.InRange(pa, 4) {
		return 0
	}
	if pa&3 == 0 {
		return load32(unsafe.Pointer(&m.data[pa]))
	}
	return binary.LittleEndian.Uint32(m.data[pa:])
}

// U64 reads a little-endian uint64; 0 when out of range.
func (m *Memory) U64(pa uint64) uint64 {
	if !m.InRange(pa, 8) {
		return 0
	}
	if pa&7 == 0 {
		return load64(unsafe.Pointer(&m.data[pa]))
	}
	return binary.LittleEndian.Uint64(m.data[pa:])
}

// PutU8 writes one byte and marks its page dirty; out-of-range writes are
// ignored and reported false.
func (m *Memory) PutU8(pa uint64, v uint8) bool {
	if pa >= m.size {
		return false
	}
	copyIn(m.data, pa, []byte{v})
	m.markPage(pa)
	return true
}

// PutU16 writes a little-endian uint16.
func (m *Memory) PutU16(pa uint64, v uint16) bool {
	if !m.InRange(pa, 2) {
		return false
	}
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	copyIn(m.data, pa, b[:])
	m.markRange(pa, 2)
	return true
}

// PutU32 writes a little-endian uint32.
func (m *Memory) PutU32(pa uint64, v uint32) bool {
	if !m.InRange(pa, 4) {
		return false
	}
	if pa&3 == 0 {
		store32(unsafe.Pointer(&m.data[pa]), v)
		m.markPage(pa)
		return true
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	copyIn(m.data, pa, b[:])
	m.markRange(pa, 4)
	return true
}

// PutU64 writes a little-endian uint64.
func (m *Memory) PutU64(pa uint64, v uint64) bool {
	if !m.InRange(pa, 8) {
		return false
	}
	if pa&7 == 0 {
		store64(unsafe.Pointer(&m.data[pa]), v)
		m.markPage(pa)
		return true
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	copyIn(m.data, pa, b[:])
	m.markRange(pa, 8)
	return true
}

// word32 returns the aligned 32-bit word at pa for atomic access. The host is
// little-endian (amd64, arm64), so the atomic value equals the LE encoding.
func (m *Memory) word32(pa uint64) (*uint32, bool) {
	if pa&3 != 0 || !m.InRange(pa, 4) {
		return nil, false
	}
	return (*uint32)(unsafe.Pointer(&m.data[pa])), true
}

// LoadU32Acquire atomically reads the aligned little-endian word at pa. It is
// the consumer side of a publish: plain reads after it see every plain write
// the producer made before its StoreU32Release. Returns 0 when pa is
// unaligned or out of range.
func (m *Memory) LoadU32Acquire(pa uint64) uint32 {
	p, ok := m.word32(pa)
	if !ok {
		return 0
	}
	return atomic.LoadUint32(p)
}

// StoreU32Release atomically writes the aligned word at pa after all earlier
// writes of this goroutine, and marks the page dirty. It is how a producer
// flips a generation bit.
func (m *Memory) StoreU32Release(pa uint64, v uint32) bool {
	p, ok := m.word32(pa)
	if !ok {
		return false
	}
	atomic.StoreUint32(p, v)
	m.markPage(pa)
	return true
}

// Read copies len(dst) bytes from pa into dst.
func (m *Memory) Read(pa uint64, dst []byte) error {
	if !m.InRange(pa, uint64(len(dst))) {
		return ErrRange
	}
	copy(dst, m.data[pa:])
	return nil
}

// Write copies src to pa and marks the pages it covers dirty.
func (m *Memory) Write(pa uint64, src []byte) error {
	if !m.InRange(pa, uint64(len(src))) {
		return ErrRange
	}
	copyIn(m.data, pa, src)
	m.markRange(pa, uint64(len(src)))
	return nil
}

// Zero clears n bytes at pa.
func (m *Memory) Zero(pa, n uint64) error {
	if !m.InRange(pa, n) {
		return ErrRange
	}
	if raceEnabled {
		var zero [512]byte
		for off := uint64(0); off < n; off += uint64(len(zero)) {
			copyIn(m.data, pa+off, zero[:min(uint64(len(zero)), n-off)])
		}
	} else {
		clear(m.data[pa : pa+n])
	}
	m.markRange(pa, n)
	return nil
}

// View returns the guest bytes [pa, pa+n) without copying, for reading only
// (a DMA read). Writing through it would bypass the dirty log.
func (m *Memory) View(pa, n uint64) ([]byte, bool) {
	if !m.InRange(pa, n) {
		return nil, false
	}
	return m.data[pa : pa+n : pa+n], true
}

// MarkAllDirty sets every page dirty.
func (m *Memory) MarkAllDirty() {
	pages := m.Pages()
	for i := range m.dirty {
		n := pages - uint64(i)*64
		if n >= 64 {
			m.dirty[i].Store(^uint64(0))
		} else {
			m.dirty[i].Store(uint64(1)<<n - 1)
		}
	}
}

// Dirty appends to dst the numbers of the pages written since the last call
// and clears their bits atomically: a write racing with Dirty is either
// reported now or stays dirty for the next call, never lost.
func (m *Memory) Dirty(dst []uint64) []uint64 {
	for i := range m.dirty {
		if m.dirty[i].Load() == 0 {
			continue
		}
		w := m.dirty[i].Swap(0)
		for w != 0 {
			b := bits.TrailingZeros64(w)
			dst = append(dst, uint64(i)*64+uint64(b))
			w &^= 1 << b
		}
	}
	return dst
}

// DirtyCount returns how many pages are dirty now, without clearing.
func (m *Memory) DirtyCount() int {
	n := 0
	for i := range m.dirty {
		n += bits.OnesCount64(m.dirty[i].Load())
	}
	return n
}

// Page returns a read-only view of page p, for copying it out.
func (m *Memory) Page(p uint64) []byte {
	off := p << PageShift
	return m.data[off : off+PageSize : off+PageSize]
}

// LoadPage overwrites page p with src (len PageSize) without marking it dirty:
// it is the destination side of a memory copy, not a guest write.
func (m *Memory) LoadPage(p uint64, src []byte) error {
	if p >= m.Pages() || len(src) != PageSize {
		return ErrRange
	}
	copy(m.data[p<<PageShift:], src)
	return nil
}
