package link

import (
	"sync"
)

// Headroom is the space kept in front of every frame so that tags (VN-Tag 6,
// 802.1Q 4, and later ERSPAN's outer headers) are pushed in place, without a
// copy.
const Headroom = 128

// MaxFrame is the largest frame a buffer holds after its headroom: a 9000-byte
// MTU plus Ethernet, 802.1Q and VN-Tag headers, rounded up.
const MaxFrame = 9216

// BufSize is the full size of one frame buffer.
const BufSize = Headroom + MaxFrame

// Buf is one frame in flight. The frame is data[Off : Off+Len]. A Buf has one
// owner at a time; every method that takes a Buf says who owns it afterwards.
type Buf struct {
	Off  int // start of the frame inside data
	Len  int // frame length in bytes
	data [BufSize]byte
}

var pool = sync.Pool{New: func() any { return new(Buf) }}

// Get returns an empty buffer with the default headroom. The caller owns it.
func Get() *Buf {
	b := pool.Get().(*Buf)
	b.Off = Headroom
	b.Len = 0
	return b
}

// Release returns b to the pool. The caller must not touch b afterwards.
// Only the offsets are reset: frame bytes are always overwritten before being
// read, and clearing 9 KiB per frame would dominate the data path.
func (b *Buf) Release() {
	if b == nil {
		return
	}
	b.Off, b.Len = Headroom, 0
	pool.Put(b)
}

// Bytes returns the frame.
func (b *Buf) Bytes() []byte { return b.data[b.Off : b.Off+b.Len] }

// Space returns the writable area from the frame start to the end of the
// buffer, to receive a frame (then set Len).
func (b *Buf) Space() []byte { return b.data[b.Off:] }

// SetBytes copies p in as the frame, at the default headroom. It reports
// false if p does not fit.
func (b *Buf) SetBytes(p []byte) bool {
	if len(p) > MaxFrame {
		return false
	}
	b.Off = Headroom
	b.Len = copy(b.data[Headroom:], p)
	return true
}

// InsertAt opens a gap of n bytes at offset off of the frame (e.g. 12, after
// the MAC addresses) by moving the first off bytes towards the front, and
// returns the gap, whose bytes are stale until the caller writes them. It
// reports nil, leaving b unchanged, if the headroom is exhausted or off or n
// is out of range.
func (b *Buf) InsertAt(off, n int) []byte {
	if off < 0 || n < 0 || n > b.Off || off > b.Len {
		return nil
	}
	copy(b.data[b.Off-n:], b.data[b.Off:b.Off+off])
	b.Off -= n
	b.Len += n
	return b.data[b.Off+off : b.Off+off+n]
}

// RemoveAt deletes n bytes at offset off of the frame by moving the first off
// bytes towards the back. It reports false if the frame is too short.
func (b *Buf) RemoveAt(off, n int) bool {
	if off+n > b.Len || off < 0 || n < 0 {
		return false
	}
	copy(b.data[b.Off+n:], b.data[b.Off:b.Off+off])
	b.Off += n
	b.Len -= n
	return true
}

// ReleaseAll releases every buffer in bufs and clears the slice entries.
func ReleaseAll(bufs []*Buf) {
	for i, b := range bufs {
		b.Release()
		bufs[i] = nil
	}
}
