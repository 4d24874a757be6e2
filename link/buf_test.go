package link

import (
	"bytes"
	"testing"
)

// pattern returns n bytes that differ from their neighbours, starting at seed.
func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i)
	}
	return p
}

func TestGet(t *testing.T) {
	b := Get()
	defer b.Release()
	if b.Off != Headroom || b.Len != 0 {
		t.Errorf("Get() = {Off %d, Len %d}, want {Off %d, Len 0}", b.Off, b.Len, Headroom)
	}
	if got := len(b.Space()); got != MaxFrame {
		t.Errorf("len(Space()) = %d, want %d", got, MaxFrame)
	}
	if got := len(b.Bytes()); got != 0 {
		t.Errorf("len(Bytes()) = %d, want 0", got)
	}
}

func TestSetBytes(t *testing.T) {
	for _, n := range []int{0, 1, 14, 1514, MaxFrame} {
		b := Get()
		p := pattern(n, 7)
		if !b.SetBytes(p) {
			t.Errorf("SetBytes(%d bytes) = false, want true", n)
		}
		if !bytes.Equal(b.Bytes(), p) || b.Off != Headroom {
			t.Errorf("after SetBytes(%d bytes): Off %d, Bytes equal %v; want Off %d, equal",
				n, b.Off, bytes.Equal(b.Bytes(), p), Headroom)
		}
		b.Release()
	}

	b := Get()
	defer b.Release()
	b.SetBytes(pattern(60, 1))
	if b.SetBytes(make([]byte, MaxFrame+1)) {
		t.Errorf("SetBytes(%d bytes) = true, want false", MaxFrame+1)
	}
	if !bytes.Equal(b.Bytes(), pattern(60, 1)) {
		t.Errorf("a refused SetBytes changed the frame")
	}
}

func TestInsertAt(t *testing.T) {
	const frameLen = 60
	tests := []struct {
		name    string
		off, n  int
		wantNil bool
	}{
		{"vntag after MACs", 12, 6, false},
		{"vlan after MACs", 12, 4, false},
		{"at front", 0, 8, false},
		{"at end", frameLen, 8, false},
		{"empty gap", 12, 0, false},
		{"all headroom", 12, Headroom, false},
		{"headroom exhausted", 12, Headroom + 1, true},
		{"offset past end", frameLen + 1, 4, true},
		{"negative offset", -1, 4, true},
		{"negative size", 12, -4, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frame := pattern(frameLen, 100)
			b := Get()
			defer b.Release()
			b.SetBytes(frame)
			gap := b.InsertAt(tt.off, tt.n)
			if tt.wantNil {
				if gap != nil {
					t.Fatalf("InsertAt(%d, %d) = %d bytes, want nil", tt.off, tt.n, len(gap))
				}
				if b.Off != Headroom || !bytes.Equal(b.Bytes(), frame) {
					t.Fatalf("refused InsertAt(%d, %d) changed the buffer", tt.off, tt.n)
				}
				return
			}
			if gap == nil || len(gap) != tt.n {
				t.Fatalf("InsertAt(%d, %d) = %v, want a %d-byte gap", tt.off, tt.n, gap, tt.n)
			}
			for i := range gap {
				gap[i] = 0xEE
			}
			want := append(append(append([]byte{}, frame[:tt.off]...), bytes.Repeat([]byte{0xEE}, tt.n)...), frame[tt.off:]...)
			if got := b.Bytes(); !bytes.Equal(got, want) {
				t.Errorf("after InsertAt(%d, %d):\n got %x\nwant %x", tt.off, tt.n, got, want)
			}
			if b.Off != Headroom-tt.n {
				t.Errorf("Off = %d, want %d", b.Off, Headroom-tt.n)
			}
		})
	}
}

func TestRemoveAt(t *testing.T) {
	const frameLen = 70
	tests := []struct {
		name   string
		off, n int
		wantOK bool
	}{
		{"vntag after MACs", 12, 6, true},
		{"at front", 0, 4, true},
		{"up to end", 60, 10, true},
		{"whole frame", 0, frameLen, true},
		{"nothing", 12, 0, true},
		{"past end", 60, 11, false},
		{"offset past end", frameLen + 1, 0, false},
		{"negative offset", -1, 4, false},
		{"negative size", 12, -4, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frame := pattern(frameLen, 3)
			b := Get()
			defer b.Release()
			b.SetBytes(frame)
			ok := b.RemoveAt(tt.off, tt.n)
			if ok != tt.wantOK {
				t.Fatalf("RemoveAt(%d, %d) = %v, want %v", tt.off, tt.n, ok, tt.wantOK)
			}
			want := frame
			if ok {
				want = append(append([]byte{}, frame[:tt.off]...), frame[tt.off+tt.n:]...)
			}
			if got := b.Bytes(); !bytes.Equal(got, want) {
				t.Errorf("after RemoveAt(%d, %d):\n got %x\nwant %x", tt.off, tt.n, got, want)
			}
		})
	}
}

// TestTagPushPop pushes a VN-Tag and an 802.1Q tag after the MAC addresses,
// as an adapter and a switch do, and pops them again.
func TestTagPushPop(t *testing.T) {
	frame := pattern(64, 9)
	b := Get()
	defer b.Release()
	b.SetBytes(frame)
	copy(b.InsertAt(12, 4), []byte{0x81, 0x00, 0x00, 0x64})
	copy(b.InsertAt(12, 6), []byte{0x89, 0x26, 0x81, 0x23, 0x80, 0x45})
	want := append(append(append([]byte{}, frame[:12]...),
		0x89, 0x26, 0x81, 0x23, 0x80, 0x45, 0x81, 0x00, 0x00, 0x64), frame[12:]...)
	if !bytes.Equal(b.Bytes(), want) {
		t.Fatalf("tagged frame:\n got %x\nwant %x", b.Bytes(), want)
	}
	if !b.RemoveAt(12, 6) || !b.RemoveAt(12, 4) {
		t.Fatalf("RemoveAt of a pushed tag failed")
	}
	if !bytes.Equal(b.Bytes(), frame) || b.Off != Headroom {
		t.Errorf("after pop: Off %d, frame %x; want Off %d, %x", b.Off, b.Bytes(), Headroom, frame)
	}
}

func TestRelease(t *testing.T) {
	var nilBuf *Buf
	nilBuf.Release() // must not panic

	bufs := []*Buf{Get(), nil, Get()}
	bufs[0].SetBytes(pattern(10, 0))
	bufs[0].InsertAt(0, 4)
	ReleaseAll(bufs)
	for i, b := range bufs {
		if b != nil {
			t.Errorf("ReleaseAll left bufs[%d] set", i)
		}
	}
}

// FuzzInsertRemove applies a sequence of InsertAt and RemoveAt to a buffer and
// to a plain byte slice (the oracle) and checks they agree.
func FuzzInsertRemove(f *testing.F) {
	f.Add(pattern(64, 0), []byte{0, 12, 6, 0, 12, 4, 1, 12, 4, 1, 12, 6})
	f.Add([]byte{}, []byte{0, 0, 200, 1, 0, 1, 0, 1, 1})
	f.Add(pattern(14, 5), []byte{0, 14, 128, 0, 0, 1, 1, 0, 14})
	f.Fuzz(func(t *testing.T, frame, ops []byte) {
		if len(frame) > MaxFrame {
			return
		}
		b := Get()
		defer b.Release()
		b.SetBytes(frame)
		model := append([]byte{}, frame...)
		headroom := Headroom
		for len(ops) >= 3 {
			op, off, n := ops[0]%2, int(ops[1]), int(ops[2])
			ops = ops[3:]
			if op == 0 {
				gap := b.InsertAt(off, n)
				valid := off <= len(model) && n <= headroom
				if (gap != nil) != valid {
					t.Fatalf("InsertAt(%d, %d) with len %d, headroom %d: got gap %v, want %v",
						off, n, len(model), headroom, gap != nil, valid)
				}
				if !valid {
					continue
				}
				for i := range gap {
					gap[i] = byte(off + i)
				}
				ins := make([]byte, n)
				copy(ins, gap)
				model = append(model[:off:off], append(ins, model[off:]...)...)
				headroom -= n
			} else {
				ok := b.RemoveAt(off, n)
				valid := off+n <= len(model)
				if ok != valid {
					t.Fatalf("RemoveAt(%d, %d) with len %d = %v, want %v", off, n, len(model), ok, valid)
				}
				if !valid {
					continue
				}
				model = append(model[:off:off], model[off+n:]...)
				headroom += n
			}
			if !bytes.Equal(b.Bytes(), model) {
				t.Fatalf("buffer and model differ:\n got %x\nwant %x", b.Bytes(), model)
			}
		}
	})
}
