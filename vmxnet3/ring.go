package vmxnet3

// Ring is one side's position on a descriptor ring: the next index it will
// produce or consume and its generation bit (spec §4.6). Both the guest
// driver and the device use it; it is plain data and part of saved state.
type Ring struct {
	Base uint64 // guest-physical base address
	Size uint32 // number of descriptors
	Next uint32 // next index to produce or consume
	Gen  bool   // this side's current generation
}

// Reset puts the ring at index 0 with gen = 1, as after ACTIVATE.
func (r *Ring) Reset() { r.Next, r.Gen = 0, InitGen == 1 }

// Advance moves to the next slot, flipping gen on wrap.
func (r *Ring) Advance() {
	r.Next++
	if r.Next == r.Size {
		r.Next = 0
		r.Gen = !r.Gen
	}
}

// Addr returns the PA of descriptor i.
func (r *Ring) Addr(i uint32) uint64 { return r.Base + uint64(i)*DescSize }

// GenBit returns the ring's gen as 0 or 1.
func (r *Ring) GenBit() uint32 {
	if r.Gen {
		return 1
	}
	return 0
}
