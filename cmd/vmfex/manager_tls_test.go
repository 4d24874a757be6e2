package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfex/vmfex/manager"
)

// TestManagerMutualTLS: with --tls the manager serves HTTPS on a
// non-loopback address, creates its CA and server certificate, and admits
// only clients with a certificate its CA issued (and the token).
func TestManagerMutualTLS(t *testing.T) {
	dataDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var out, logs bytes.Buffer
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- runManager(ctx, &out, &logs, managerOpts{dataDir: dataDir, listen: "0.0.0.0:0", tls: true}, ready)
	}()
	var url string
	select {
	case url = <-ready:
	case err := <-done:
		t.Fatalf("manager: %v", err)
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	if !strings.HasPrefix(url, "https://") || !strings.Contains(out.String(), "mutual TLS") {
		t.Fatalf("url %s, output:\n%s", url, out.String())
	}
	url = strings.NewReplacer("0.0.0.0", "127.0.0.1", "[::]", "127.0.0.1").Replace(url)
	res, err := cli(t, "manager", "issue-cert", "esx1", "--data-dir", dataDir)
	if err != nil || !strings.Contains(res, "issued esx1") {
		t.Fatalf("issue-cert: %v\n%s", err, res)
	}
	pki := filepath.Join(dataDir, manager.PKIDir)
	tok := filepath.Join(dataDir, manager.TokenFileName)
	conn := []string{"--server", url, "--token-file", tok, "--ca-file", filepath.Join(pki, manager.CACertFile),
		"--cert-file", filepath.Join(pki, "clients", "esx1.crt"), "--key-file", filepath.Join(pki, "clients", "esx1.key")}
	if o := mustCLI(t, append([]string{"fi", "create", "fi-a"}, conn...)...); !strings.Contains(o, "fi fi-a created") {
		t.Errorf("fi create over mutual TLS: %q", o)
	}
	// Without a client certificate: refused by the client (it says what
	// it needs) and, forced, by the server's handshake.
	if _, err := cli(t, "show", "vm", "--server", url, "--token-file", tok); err == nil || !strings.Contains(err.Error(), "--cert-file") {
		t.Errorf("no client certificate: err = %v", err)
	}
	other := t.TempDir()
	runManagerPKIOnly(t, other)
	if _, err := cli(t, "manager", "issue-cert", "rogue", "--data-dir", other); err != nil {
		t.Fatal(err)
	}
	opki := filepath.Join(other, manager.PKIDir)
	_, err = cli(t, "show", "vm", "--server", url, "--token-file", tok, "--ca-file", filepath.Join(pki, manager.CACertFile),
		"--cert-file", filepath.Join(opki, "clients", "rogue.crt"), "--key-file", filepath.Join(opki, "clients", "rogue.key"))
	if err == nil {
		t.Error("a certificate from another CA was accepted")
	}
	// Plain HTTP to a TLS port gets nowhere.
	if _, err := cli(t, "show", "vm", "--server", strings.Replace(url, "https", "http", 1), "--token-file", tok); err == nil {
		t.Error("plain HTTP was answered")
	}
}

// runManagerPKIOnly creates a second, unrelated CA in dataDir.
func runManagerPKIOnly(t *testing.T, dataDir string) {
	t.Helper()
	if _, err := manager.EnsurePKI(dataDir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
}
