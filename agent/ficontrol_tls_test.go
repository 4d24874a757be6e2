package agent

import (
	"errors"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
)

// TestControlAPIMutualTLS: an FI agent's control API served with a
// certificate of the manager's CA admits host agents with certificates of
// that CA, and nobody else.
func TestControlAPIMutualTLS(t *testing.T) {
	dir := t.TempDir()
	if _, err := manager.EnsurePKI(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "certs")
	fiCert, fiKey, err := manager.IssueCert(dir, "fi-a", out, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	hostCert, hostKey, err := manager.IssueCert(dir, "esx1", out, nil)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, manager.PKIDir, manager.CACertFile)
	cfg, err := manager.ServerTLS(ca, fiCert, fiKey)
	if err != nil {
		t.Fatal(err)
	}
	fi := fabric.New(fabric.Config{Name: "fi-a"})
	a, b := link.NewMemCable(0)
	t.Cleanup(func() { b.Close() })
	if err := fi.AddServerPort("Ethernet1/1", a, nil); err != nil {
		t.Fatal(err)
	}
	if err := fi.SetPortProfile(fabric.PortProfile{Name: "web", AccessVLAN: 100}); err != nil {
		t.Fatal(err)
	}
	if err := fi.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fi.Close() })
	srv := httptest.NewUnstartedServer(newControlServer(fi, "secret"))
	srv.TLS = cfg
	srv.StartTLS()
	t.Cleanup(srv.Close)

	c, err := NewFIClient(srv.URL, "secret", client.TLSFiles{CA: ca, Cert: hostCert, Key: hostKey})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Attach(32769, AttachRequest{ServerPort: "Ethernet1/1", Vif: 1, MAC: "00:25:b5:00:00:11", Profile: "web"}); err != nil {
		t.Fatalf("attach over mutual TLS: %v", err)
	}
	if _, err := c.VEthInfo(32769); err != nil {
		t.Fatal(err)
	}

	// A client of another CA gets nowhere.
	other := t.TempDir()
	if _, err := manager.EnsurePKI(other, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	rc, rk, err := manager.IssueCert(other, "rogue", filepath.Join(other, "certs"), nil)
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := NewFIClient(srv.URL, "secret", client.TLSFiles{CA: ca, Cert: rc, Key: rk})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rogue.VEthInfo(32769); err == nil || errors.Is(err, fabric.ErrUnknownVEth) {
		t.Errorf("a certificate of another CA: err = %v, want a refused handshake", err)
	}
	// Nor one without the files.
	if _, err := NewFIClient(srv.URL, "secret", client.TLSFiles{}); err == nil {
		t.Error("an https control API without client certificate files was accepted")
	}
}
