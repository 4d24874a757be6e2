package agent

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/manager/client"
)

// newControl returns an FI with two server ports behind its control API,
// and a client of it.
func newControl(t *testing.T) (*fabric.FI, *FIClient, string) {
	t.Helper()
	fi := fabric.New(fabric.Config{Name: "fi-a"})
	for _, p := range []string{"Ethernet1/1", "Ethernet1/2"} {
		a, b := link.NewMemCable(0)
		t.Cleanup(func() { b.Close() })
		if err := fi.AddServerPort(p, a, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := fi.SetPortProfile(fabric.PortProfile{Name: "web", AccessVLAN: 100}); err != nil {
		t.Fatal(err)
	}
	if err := fi.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fi.Close() })
	srv := httptest.NewServer(newControlServer(fi, "secret"))
	t.Cleanup(srv.Close)
	c, err := NewFIClient(srv.URL, "secret", client.TLSFiles{})
	if err != nil {
		t.Fatal(err)
	}
	return fi, c, srv.URL
}

// TestControlAPIMigrationSteps: the steps of a migration over the control
// API do what the FI's methods do, and fabric's errors come back as the
// same sentinels.
func TestControlAPIMigrationSteps(t *testing.T) {
	fi, c, _ := newControl(t)
	if err := c.Attach(32769, AttachRequest{ServerPort: "Ethernet1/1", Vif: 1, MAC: "00:25:b5:00:00:11", Profile: "web"}); err != nil {
		t.Fatal(err)
	}
	info, err := c.VEthInfo(32769)
	if err != nil {
		t.Fatal(err)
	}
	local, _ := fi.VEth(32769)
	if info.Name != "Veth32769" || info.ServerPort != "Ethernet1/1" || info.VIF != 1 || info.MAC != local.MAC || !info.Claimed {
		t.Errorf("VEthInfo = %+v, want the FI's %+v", info, local)
	}
	if _, err := c.HoldVEth(32769); err != nil {
		t.Fatal(err)
	}
	if err := c.RebindVEth(32769, "Ethernet1/2", 1); err != nil {
		t.Fatal(err)
	}
	if err := c.ClaimVEth(32769, "Ethernet1/1", 1); !errors.Is(err, fabric.ErrNotBound) {
		t.Errorf("claim at the old place = %v, want ErrNotBound", err)
	}
	if err := c.ClaimVEth(32769, "Ethernet1/2", 1); err != nil {
		t.Fatal(err)
	}
	if err := c.RevertVEth(32769, "Ethernet1/2", 1, "Ethernet1/1", 1); !errors.Is(err, fabric.ErrClaimed) {
		t.Errorf("revert after the claim = %v, want ErrClaimed", err)
	}
	if err := c.ReleaseVEth(32769); err != nil {
		t.Fatal(err)
	}
	if v, _ := fi.VEth(32769); v.Held || v.ServerPort != "Ethernet1/2" {
		t.Errorf("after the move: %+v", v)
	}
	if _, err := c.VEthInfo(40000); !errors.Is(err, fabric.ErrUnknownVEth) {
		t.Errorf("unknown vEth = %v, want ErrUnknownVEth", err)
	}
	// Attaching again (the VM booted anew) gives a fresh vEth.
	if err := c.Attach(32769, AttachRequest{ServerPort: "Ethernet1/1", Vif: 1, MAC: "00:25:b5:00:00:11", Profile: "web"}); err != nil {
		t.Fatal(err)
	}
	if v, _ := fi.VEth(32769); v.ServerPort != "Ethernet1/1" || v.Held {
		t.Errorf("after a second attach: %+v", v)
	}
}

// TestControlAPIBadRequests: bad input is a 4xx with a message, and
// changes nothing.
func TestControlAPIBadRequests(t *testing.T) {
	fi, c, url := newControl(t)
	for _, bad := range []struct {
		method, path, body, token string
		status                    int
		want                      string
	}{
		{"GET", "/fi/v1/veths/32769", "", "wrong", 401, "invalid bearer token"},
		{"GET", "/fi/v1/veths/x", "", "secret", 400, "not a vEth number"},
		{"PUT", "/fi/v1/veths/32769", `{"server_port":"Ethernet1/1"`, "secret", 422, "request body"},
		{"PUT", "/fi/v1/veths/32769", `{"server_port":"Ethernet1/1","vif":1,"mac":"00:25:b5:00:00:11","profile":"web","x":1}`, "secret", 422, "unknown field"},
		{"PUT", "/fi/v1/veths/32769", `{"server_port":"Ethernet1/1","vif":1,"mac":"01:00:5e:00:00:01","profile":"web"}`, "secret", 422, "unicast"},
		{"PUT", "/fi/v1/veths/32769", `{"server_port":"Ethernet1/9","vif":1,"mac":"00:25:b5:00:00:11","profile":"web"}`, "secret", 422, "Ethernet1/9"},
		{"PUT", "/fi/v1/veths/32769", `{"server_port":"Ethernet1/1","vif":5000,"mac":"00:25:b5:00:00:11","profile":"web"}`, "secret", 422, "vif 5000"},
		{"POST", "/fi/v1/veths/32769/hold", `{}`, "secret", 404, "no such vEth"},
		{"POST", "/fi/v1/nothing", `{}`, "secret", 404, "no endpoint"},
	} {
		req, _ := http.NewRequest(bad.method, url+bad.path, strings.NewReader(bad.body))
		req.Header.Set("Authorization", "Bearer "+bad.token)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		buf := make([]byte, 4096)
		n, _ := res.Body.Read(buf)
		b.Write(buf[:n])
		res.Body.Close()
		if res.StatusCode != bad.status || !strings.Contains(b.String(), bad.want) {
			t.Errorf("%s %s %s: %d %s; want %d with %q", bad.method, bad.path, bad.body, res.StatusCode, b.String(), bad.status, bad.want)
		}
	}
	if len(fi.VEths()) != 0 {
		t.Errorf("bad requests created vEths: %+v", fi.VEths())
	}
	_ = c
}
