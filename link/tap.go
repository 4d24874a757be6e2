package link

// TapFunc sees every frame that crosses a tapped port: tx is true for frames
// sent from this end. The frame is valid only during the call.
type TapFunc func(tx bool, frame []byte)

// Tap is a Port that shows every frame crossing it to a TapFunc, as a
// capture point on a cable does (a SPAN of the server port).
type Tap struct {
	Port
	fn TapFunc
}

var _ Port = (*Tap)(nil)

// NewTap wraps p; fn runs on the sending or receiving goroutine.
func NewTap(p Port, fn TapFunc) *Tap { return &Tap{Port: p, fn: fn} }

// Send shows the frames to the tap, then sends them: once sent they belong
// to the peer and may change.
func (t *Tap) Send(bufs []*Buf) (int, error) {
	for _, b := range bufs {
		t.fn(true, b.Bytes())
	}
	return t.Port.Send(bufs)
}

// Recv receives, then shows the frames to the tap.
func (t *Tap) Recv(bufs []*Buf) (int, error) {
	n, err := t.Port.Recv(bufs)
	for _, b := range bufs[:n] {
		t.fn(false, b.Bytes())
	}
	return n, err
}
