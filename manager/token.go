package manager

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// TokenFileName is the token file LoadOrCreateToken keeps in a data
// directory.
const TokenFileName = "token"

// LoadToken reads a bearer token from a file that only its owner can read.
func LoadToken(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("token file %s has mode %04o, readable by others; run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty; put a token in it or remove it to have one generated", path)
	}
	return tok, nil
}

// LoadOrCreateToken returns the manager's token: from tokenFile if it is
// given, else from dataDir/token, which it creates with a new random token
// (mode 0600) if it does not exist. It returns the file it used and whether
// it created it.
func LoadOrCreateToken(dataDir, tokenFile string) (token, path string, created bool, err error) {
	if tokenFile != "" {
		tok, err := LoadToken(tokenFile)
		return tok, tokenFile, false, err
	}
	path = filepath.Join(dataDir, TokenFileName)
	tok, err := LoadToken(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return tok, path, false, err
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", path, false, err
	}
	tok = hex.EncodeToString(b[:])
	// O_EXCL: if another process created it meanwhile, do not overwrite.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", path, false, fmt.Errorf("create token file: %w", err)
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return "", path, false, fmt.Errorf("write token file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", path, false, err
	}
	return tok, path, true, f.Close()
}
