package manager

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateToken(t *testing.T) {
	dir := t.TempDir()
	tok, path, created, err := LoadOrCreateToken(dir, "")
	if err != nil || !created || len(tok) != 64 || path != filepath.Join(dir, TokenFileName) {
		t.Fatalf("first call = %q, %s, created %v, %v", tok, path, created, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode = %v, %v; want 0600", fi.Mode(), err)
	}
	again, _, created, err := LoadOrCreateToken(dir, "")
	if err != nil || created || again != tok {
		t.Fatalf("second call = %q created %v %v; want the same token, not recreated", again, created, err)
	}

	own := filepath.Join(dir, "mine")
	os.WriteFile(own, []byte("  abc \n"), 0o600)
	if got, p, _, err := LoadOrCreateToken(dir, own); err != nil || got != "abc" || p != own {
		t.Errorf("given token file: %q, %s, %v", got, p, err)
	}
	os.Chmod(own, 0o644)
	if _, _, _, err := LoadOrCreateToken(dir, own); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable token file: err = %v, want advice to chmod 600", err)
	}
	if _, _, _, err := LoadOrCreateToken(dir, filepath.Join(dir, "absent")); err == nil {
		t.Error("missing --token-file accepted")
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	if _, _, _, err := LoadOrCreateToken(dir, empty); err == nil {
		t.Error("empty token file accepted")
	}
}
