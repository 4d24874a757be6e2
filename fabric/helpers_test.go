package fabric_test

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/fabric/fabrictest"
	"github.com/vmfex/vmfex/internal/testutil"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/wire"
)

// settleTimeout bounds every wait for the fabric to go idle; it is a
// failure deadline, not a measure of anything.
const settleTimeout = 10 * time.Second

// rig is an FI with fake adapters on its server ports and fake LANs on its
// uplinks, all over in-memory cables.
type rig struct {
	t     *testing.T
	fi    *fabric.FI
	clock *fabrictest.Clock
	ends  []*fabrictest.End
	port  map[string]*fabrictest.End
}

func serverPortName(i int) string { return fmt.Sprintf("Ethernet1/%d", i+1) }
func uplinkName(i int) string     { return fmt.Sprintf("Ethernet1/%d", 17+i) }

// newRig builds and starts an FI with servers server ports named
// Ethernet1/1.. and uplinks uplinks named Ethernet1/17...
func newRig(t *testing.T, servers, uplinks int, cfg fabric.Config) *rig {
	t.Helper()
	testutil.CheckGoroutines(t)
	r := &rig{t: t, clock: fabrictest.NewClock(), port: make(map[string]*fabrictest.End)}
	if cfg.Now == nil {
		cfg.Now = r.clock.Now
	}
	if cfg.Name == "" {
		cfg.Name = "fi-a"
	}
	r.fi = fabric.New(cfg)
	for i := 0; i < servers; i++ {
		fiSide, far := link.NewMemCable(0)
		e := fabrictest.NewAdapter(serverPortName(i), far)
		if err := r.fi.AddServerPort(e.Name(), fiSide, e); err != nil {
			t.Fatalf("AddServerPort(%s): %v", e.Name(), err)
		}
		r.ends = append(r.ends, e)
		r.port[e.Name()] = e
	}
	for i := 0; i < uplinks; i++ {
		fiSide, far := link.NewMemCable(0)
		e := fabrictest.NewLAN(uplinkName(i), far)
		if err := r.fi.AddUplink(e.Name(), fiSide); err != nil {
			t.Fatalf("AddUplink(%s): %v", e.Name(), err)
		}
		r.ends = append(r.ends, e)
		r.port[e.Name()] = e
	}
	t.Cleanup(func() {
		if err := r.fi.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		for _, e := range r.ends {
			e.Close()
		}
	})
	if err := r.fi.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return r
}

func (r *rig) end(port string) *fabrictest.End { return r.port[port] }

func (r *rig) profile(pp fabric.PortProfile) {
	r.t.Helper()
	if err := r.fi.SetPortProfile(pp); err != nil {
		r.t.Fatalf("SetPortProfile(%s): %v", pp.Name, err)
	}
}

func (r *rig) veth(id uint32, port string, vif uint16, mac wire.MAC, profile string) {
	r.t.Helper()
	err := r.fi.CreateVEth(fabric.VEthConfig{ID: id, ServerPort: port, VIF: vif, MAC: mac, Profile: profile})
	if err != nil {
		r.t.Fatalf("CreateVEth(%d): %v", id, err)
	}
}

func (r *rig) settle() {
	r.t.Helper()
	if err := fabrictest.Settle(r.fi, settleTimeout, r.ends...); err != nil {
		r.t.Fatal(err)
	}
}

// send sends an untagged Ethernet frame from dst/src with payload id as the
// guest behind vif on port, tagged with vlan (0 = untagged).
func (r *rig) send(port string, vif, vlan uint16, dst, src wire.MAC, id uint32) {
	r.t.Helper()
	if err := r.end(port).Send(vif, vlan, 0, frame(dst, src, id)); err != nil {
		r.t.Fatalf("send on %s: %v", port, err)
	}
}

func (r *rig) counters(id uint32) fabric.VEthCounters {
	r.t.Helper()
	v, ok := r.fi.VEth(id)
	if !ok {
		r.t.Fatalf("VEth(%d) missing", id)
	}
	return v.Counters
}

// take returns the frames each end received, by port name, and forgets them.
func (r *rig) take() map[string][]fabrictest.Frame {
	out := make(map[string][]fabrictest.Frame)
	for _, e := range r.ends {
		out[e.Name()] = e.Take()
	}
	return out
}

// mac returns 02:00:00:00:hi:lo.
func mac(n int) wire.MAC { return wire.MAC{0x02, 0, 0, 0, byte(n >> 8), byte(n)} }

// testEtherType is an IEEE local experimental EtherType.
const testEtherType = 0x88B5

// frame builds a test frame whose payload starts with id.
func frame(dst, src wire.MAC, id uint32) []byte {
	var p [4]byte
	binary.BigEndian.PutUint32(p[:], id)
	return fabrictest.EthFrame(dst, src, testEtherType, p[:])
}

func frameID(f fabrictest.Frame) uint32 {
	if f.EtherType != testEtherType || len(f.Payload) < 4 {
		return ^uint32(0)
	}
	return binary.BigEndian.Uint32(f.Payload)
}

// downTag is the VN-Tag the FI should put on a frame to dvif (svif and
// looped only for hairpin).
func downTag(dvif, svif uint16) wire.VNTag {
	return wire.VNTag{FromBridge: true, DVIF: dvif, SVIF: svif, Looped: svif != 0}
}
