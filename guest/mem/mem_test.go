package mem

import (
	"bytes"
	"errors"
	"math"
	"sync"
	"testing"
)

func newMem(t *testing.T, size uint64) *Memory {
	t.Helper()
	m, err := New(size)
	if err != nil {
		t.Fatal(err)
	}
	m.Dirty(nil) // start clean
	return m
}

func TestNewRejectsBadSizes(t *testing.T) {
	for _, size := range []uint64{0, 100, PageSize + 1, MaxSize + PageSize} {
		if _, err := New(size); !errors.Is(err, ErrSize) {
			t.Errorf("New(%d) = %v, want ErrSize", size, err)
		}
	}
}

func TestFreshMemoryIsAllDirty(t *testing.T) {
	m, err := New(130 * PageSize)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.DirtyCount(); got != 130 {
		t.Fatalf("fresh memory: %d dirty pages, want 130", got)
	}
	if got := len(m.Dirty(nil)); got != 130 {
		t.Fatalf("Dirty returned %d pages, want 130", got)
	}
	if m.DirtyCount() != 0 {
		t.Fatal("Dirty did not clear the log")
	}
}

func TestLittleEndianAccessors(t *testing.T) {
	m := newMem(t, 4*PageSize)
	m.PutU64(8, 0x0102030405060708)
	var b [8]byte
	if err := m.Read(8, b[:]); err != nil {
		t.Fatal(err)
	}
	if want := []byte{8, 7, 6, 5, 4, 3, 2, 1}; !bytes.Equal(b[:], want) {
		t.Fatalf("PutU64 bytes %x, want %x", b, want)
	}
	if m.U32(8) != 0x05060708 || m.U16(12) != 0x0304 || m.U8(15) != 1 {
		t.Fatalf("narrow reads: %#x %#x %#x", m.U32(8), m.U16(12), m.U8(15))
	}
	// Unaligned words take the byte path and agree.
	m.PutU32(3, 0xdeadbeef)
	if m.U32(3) != 0xdeadbeef {
		t.Fatalf("unaligned U32 = %#x", m.U32(3))
	}
	m.PutU64(17, math.MaxUint64-1)
	if m.U64(17) != math.MaxUint64-1 {
		t.Fatalf("unaligned U64 = %#x", m.U64(17))
	}
	m.StoreU32Release(32, 0xcafef00d)
	if m.LoadU32Acquire(32) != 0xcafef00d || m.U32(32) != 0xcafef00d {
		t.Fatal("acquire/release word mismatch")
	}
}

func TestOutOfRangeNeverPanics(t *testing.T) {
	m := newMem(t, PageSize)
	end := m.Size()
	for _, pa := range []uint64{end, end - 1, end - 3, math.MaxUint64, math.MaxUint64 - 2} {
		if m.U64(pa) != 0 || m.U32(pa) != 0 {
			t.Errorf("read at %#x returned data", pa)
		}
		if m.PutU64(pa, 1) || m.PutU32(pa, 1) {
			t.Errorf("write at %#x accepted", pa)
		}
		if pa != end-3 && (m.PutU16(pa, 1) || m.U16(pa) != 0) {
			t.Errorf("16-bit access at %#x accepted", pa)
		}
		if m.LoadU32Acquire(pa) != 0 || m.StoreU32Release(pa, 1) {
			t.Errorf("atomic access at %#x accepted", pa)
		}
	}
	if m.InRange(math.MaxUint64, 2) || m.InRange(10, math.MaxUint64) {
		t.Error("InRange overflowed")
	}
	if err := m.Write(end-2, []byte{1, 2, 3}); !errors.Is(err, ErrRange) {
		t.Errorf("Write past the end: %v", err)
	}
	if _, ok := m.View(end-1, 2); ok {
		t.Error("View past the end")
	}
	if m.StoreU32Release(2, 1) {
		t.Error("unaligned release store accepted")
	}
	if m.DirtyCount() != 0 {
		t.Fatalf("rejected writes dirtied %d pages", m.DirtyCount())
	}
}

func TestWritesMarkExactlyTheirPages(t *testing.T) {
	m := newMem(t, 16*PageSize)
	m.PutU8(5*PageSize+7, 1)
	m.PutU32(PageSize-2, 1)                               // straddles pages 0 and 1
	_ = m.Write(9*PageSize+100, make([]byte, 2*PageSize)) // pages 9, 10, 11
	m.StoreU32Release(14*PageSize, 1)
	_ = m.Zero(15*PageSize, 1)
	got := m.Dirty(nil)
	want := []uint64{0, 1, 5, 9, 10, 11, 14, 15}
	if len(got) != len(want) {
		t.Fatalf("dirty %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("dirty %v, want %v", got, want)
		}
	}
	// Reads never dirty.
	_ = m.U64(3 * PageSize)
	v, _ := m.View(0, PageSize)
	_ = v[0]
	if m.DirtyCount() != 0 {
		t.Fatal("reads dirtied pages")
	}
}

// TestDirtyNeverLosesAWrite races writers against Dirty: every page a writer
// wrote after the collector's last round must show up in a later round. This
// is the property pre-copy rounds rely on.
func TestDirtyNeverLosesAWrite(t *testing.T) {
	const pages = 256
	m := newMem(t, pages*PageSize)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	seen := make([]uint64, pages) // highest value seen per page at collection
	written := make([]uint64, pages)
	var mu sync.Mutex
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := uint64(1); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := (i*7 + uint64(w)*61) % pages
				if p%4 != uint64(w) {
					continue // each page has one writer
				}
				mu.Lock()
				written[p] = i
				mu.Unlock()
				m.PutU64(p*PageSize, i)
			}
		}(w)
	}
	var buf []uint64
	for round := 0; round < 2000; round++ {
		buf = m.Dirty(buf[:0])
		for _, p := range buf {
			seen[p] = m.U64(p * PageSize)
		}
	}
	close(stop)
	wg.Wait()
	// Final round after the writers stopped: everything must now be current.
	for _, p := range m.Dirty(buf[:0]) {
		seen[p] = m.U64(p * PageSize)
	}
	for p := range written {
		if written[p] != 0 && seen[p] != written[p] {
			t.Fatalf("page %d: last write %d, last copied %d: a dirty page was lost", p, written[p], seen[p])
		}
	}
}

func TestPageCopyMovesMemory(t *testing.T) {
	src := newMem(t, 8*PageSize)
	for i := uint64(0); i < 8*PageSize; i += 8 {
		src.PutU64(i, i*31+7)
	}
	dst := newMem(t, 8*PageSize)
	for p := uint64(0); p < src.Pages(); p++ {
		if err := dst.LoadPage(p, src.Page(p)); err != nil {
			t.Fatal(err)
		}
	}
	if dst.DirtyCount() != 0 {
		t.Fatal("LoadPage dirtied the destination")
	}
	for i := uint64(0); i < 8*PageSize; i += 8 {
		if dst.U64(i) != i*31+7 {
			t.Fatalf("word at %d differs", i)
		}
	}
	if err := dst.LoadPage(8, src.Page(0)); !errors.Is(err, ErrRange) {
		t.Fatalf("LoadPage out of range: %v", err)
	}
}

func BenchmarkPutU64(b *testing.B) {
	m, _ := New(1 << 20)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		m.PutU64(uint64(i*8)&(1<<20-1), uint64(i))
	}
}
