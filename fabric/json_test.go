package fabric_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/vmfex/vmfex/fabric"
)

// TestVEthInfoJSONRoundTrip: an FI agent's reports and control API answers
// (vEths, ports) decode back to what was encoded.
func TestVEthInfoJSONRoundTrip(t *testing.T) {
	r := newRig(t, 2, 0, fabric.Config{})
	r.profile(fabric.PortProfile{Name: "web", AccessVLAN: 10})
	r.veth(32769, "Ethernet1/1", 1, mac(1), "web")
	r.veth(32770, "Ethernet1/2", 2, mac(2), "web")
	r.send("Ethernet1/1", 1, 10, mac(2), mac(1), 1)
	r.send("Ethernet1/1", 1, 99, mac(2), mac(1), 2) // a drop
	r.settle()
	infos := r.fi.VEths()
	ports := r.fi.Ports()
	b, err := json.Marshal(struct {
		V []fabric.VEthInfo
		P []fabric.PortInfo
	}{infos, ports})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		V []fabric.VEthInfo
		P []fabric.PortInfo
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	if !reflect.DeepEqual(got.V, infos) || !reflect.DeepEqual(got.P, ports) {
		t.Errorf("round trip:\n got %+v %+v\nwant %+v %+v", got.V, got.P, infos, ports)
	}
	if infos[0].Counters.Drops.Total() != 1 {
		t.Errorf("drops = %+v, want one", infos[0].Counters.Drops)
	}
}
