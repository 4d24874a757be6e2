package manager

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// Listen opens the listener of an API (the manager's, an FI agent's control
// API) at addr: "unix:/PATH" for a Unix socket — reachable from every
// network namespace of the machine, readable by its owner only — or
// HOST:PORT on a loopback address, since the APIs are plain HTTP for now.
// It returns the listener and the URL clients use (unix:///PATH or
// http://HOST:PORT).
func Listen(addr string) (net.Listener, string, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		path = "/" + strings.TrimLeft(path, "/")
		// A socket left by a process that died is in the way; anything
		// else at the path is not ours to remove.
		if fi, err := os.Lstat(path); err == nil {
			if fi.Mode()&os.ModeSocket == 0 {
				return nil, "", fmt.Errorf("%s exists and is not a socket; choose another path", path)
			}
			if c, err := net.Dial("unix", path); err == nil {
				c.Close()
				return nil, "", fmt.Errorf("%s is in use by a running server", path)
			}
			os.Remove(path)
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, "", fmt.Errorf("listen on %s: %w", path, err)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			ln.Close()
			return nil, "", err
		}
		return ln, "unix://" + path, nil
	}
	if err := CheckLoopback(addr); err != nil {
		return nil, "", err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, "http://" + ln.Addr().String(), nil
}

// CheckLoopback refuses addresses other than loopback ones: the APIs are
// plain HTTP for now.
func CheckLoopback(listen string) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %q is not HOST:PORT or unix:/PATH: %v", listen, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return errors.New("--listen " + listen + " is not a loopback address; the API is plain HTTP for now, so use 127.0.0.1:PORT or unix:/PATH")
}
