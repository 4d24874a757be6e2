// Package client is the Go client of the vmfex manager's HTTP API, used by
// the CLI (and later by the host and FI agents). A Client is safe for
// concurrent use and starts no goroutines.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Error is an error the manager returned: its HTTP status, what is wrong and
// how to fix it.
type Error struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Hint    string `json:"hint"`
}

func (e *Error) Error() string {
	if e.Hint == "" {
		return e.Message
	}
	return e.Message + "\n  hint: " + e.Hint
}

// Client talks to one manager.
type Client struct {
	what  string       // immutable; the service, in messages: "the manager"
	base  string       // immutable; "http://host:port" without a trailing slash
	token string       // immutable
	hc    *http.Client // immutable
	sock  string       // immutable; the Unix socket's path, if any
}

// New returns a client of the manager at server (e.g.
// "http://127.0.0.1:8443") that authenticates with token.
func New(server, token string) (*Client, error) { return NewTLS(server, token, TLSFiles{}) }

// TLSFiles name the PEM files of a client of a manager that serves TLS
// (https URLs): the manager's CA, and this client's certificate and key,
// which the manager requires (vmfex manager issue-cert makes them).
type TLSFiles struct {
	CA, Cert, Key string
}

// NewTLS is New for an https manager, authenticating both ends with t.
func NewTLS(server, token string, t TLSFiles) (*Client, error) {
	if path, ok := strings.CutPrefix(server, "unix://"); ok {
		return newUnix(path, token)
	}
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("manager address %q is not an http(s) or unix:// URL; give one like http://127.0.0.1:8443 or unix:///run/vmfex/manager.sock", server)
	}
	if token == "" {
		return nil, errors.New("no API token; pass --token-file FILE or set VMFEX_TOKEN (vmfex manager prints where its token file is)")
	}
	// No overall timeout: watches stream; callers bound requests with ctx.
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		ResponseHeaderTimeout: 30 * time.Second,
	}
	if u.Scheme == "https" {
		cfg, err := t.config()
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = cfg
	}
	hc := &http.Client{Transport: tr}
	return &Client{what: "the manager", base: strings.TrimSuffix(u.String(), "/"), token: token, hc: hc}, nil
}

// NewService is New for another service that speaks the same JSON and
// token conventions (an FI agent's control API); what names it in errors.
func NewService(what, server, token string, t TLSFiles) (*Client, error) {
	c, err := NewTLS(server, token, t)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	c.what = what
	return c, nil
}

// do sends a request with body in (if not nil) and decodes the response
// into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.hc.Do(req)
	if err != nil {
		at := c.base
		if c.sock != "" {
			at = "unix://" + c.sock
		}
		if c.what != "the manager" {
			return fmt.Errorf("cannot reach %s at %s: %w", c.what, at, err)
		}
		return fmt.Errorf("cannot reach the manager at %s: %w\n  hint: is vmfex manager running? set --server or VMFEX_SERVER", at, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read response of %s %s: %w", method, path, err)
	}
	if res.StatusCode >= 300 {
		e := &Error{Status: res.StatusCode}
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s %s: HTTP %d: %s", method, path, res.StatusCode, bytes.TrimSpace(b))
		}
		return e
	}
	if out == nil || res.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s sent an unexpected response to %s %s: %w", c.what, method, path, err)
	}
	return nil
}

func objPath(kind, name string) string {
	return "/api/v1/" + url.PathEscape(kind) + "/" + url.PathEscape(name)
}

// Create creates an object of kind (e.g. "vms") from in and decodes the
// stored object, with its defaults and revision, into out.
func (c *Client) Create(ctx context.Context, kind string, in, out any) error {
	return c.do(ctx, "POST", "/api/v1/"+url.PathEscape(kind), in, out)
}

// Get decodes the named object into out.
func (c *Client) Get(ctx context.Context, kind, name string, out any) error {
	return c.do(ctx, "GET", objPath(kind, name), nil, out)
}

// List decodes the objects of kind into out, a pointer to a slice, and
// returns the revision they were read at.
func (c *Client) List(ctx context.Context, kind string, out any) (int64, error) {
	var res struct {
		Items    json.RawMessage `json:"items"`
		Revision int64           `json:"revision"`
	}
	if err := c.do(ctx, "GET", "/api/v1/"+url.PathEscape(kind), nil, &res); err != nil {
		return 0, err
	}
	if err := json.Unmarshal(res.Items, out); err != nil {
		return 0, fmt.Errorf("manager sent an unexpected list of %s: %w", kind, err)
	}
	return res.Revision, nil
}

// Update replaces the named object with in; a non-zero revision in in must
// match the stored one.
func (c *Client) Update(ctx context.Context, kind, name string, in, out any) error {
	return c.do(ctx, "PUT", objPath(kind, name), in, out)
}

// Delete deletes the named object; rev 0 means whatever its revision.
func (c *Client) Delete(ctx context.Context, kind, name string, rev int64) error {
	p := objPath(kind, name)
	if rev != 0 {
		p += "?revision=" + strconv.FormatInt(rev, 10)
	}
	return c.do(ctx, "DELETE", p, nil, nil)
}

// newUnix returns a client of the server on the Unix socket at path.
func newUnix(path, token string) (*Client, error) {
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("unix://%s: give the socket's absolute path, e.g. unix:///run/vmfex/manager.sock", path)
	}
	if token == "" {
		return nil, errors.New("no API token; pass --token-file FILE or set VMFEX_TOKEN (vmfex manager prints where its token file is)")
	}
	var d net.Dialer
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		},
		ResponseHeaderTimeout: 30 * time.Second,
	}}
	// The host in the URL only names the socket in messages.
	return &Client{what: "the manager", base: "http://unix", token: token, hc: hc, sock: path}, nil
}

// WatchEvent is one line of a watch stream (the manager's WatchEvent).
type WatchEvent struct {
	Type     string          `json:"type"` // put, delete or error
	Kind     string          `json:"kind,omitempty"`
	Name     string          `json:"name,omitempty"`
	Revision int64           `json:"revision,omitempty"`
	Object   json.RawMessage `json:"object,omitempty"`
	Error    string          `json:"error,omitempty"`
	Hint     string          `json:"hint,omitempty"`
}

// Watch streams the changes to objects of kind after revision rev (0: the
// current objects, then changes) to fn, until ctx ends or the stream does.
// It returns the error that ended it; an "error" event ends it too.
func (c *Client) Watch(ctx context.Context, kind string, rev int64, fn func(WatchEvent)) error {
	req, err := http.NewRequestWithContext(ctx, "GET",
		c.base+"/api/v1/watch?kind="+url.QueryEscape(kind)+"&revision="+strconv.FormatInt(rev, 10), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	res, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("watch %s: %w", kind, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		e := &Error{Status: res.StatusCode}
		b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<16))
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("watch %s: HTTP %d", kind, res.StatusCode)
		}
		return e
	}
	dec := json.NewDecoder(res.Body)
	for {
		var ev WatchEvent
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watch %s: %w", kind, err)
		}
		if ev.Type == "error" {
			return fmt.Errorf("watch %s: %s", kind, ev.Error)
		}
		fn(ev)
	}
}

func (t TLSFiles) config() (*tls.Config, error) {
	if t.CA == "" || t.Cert == "" || t.Key == "" {
		return nil, errors.New("an https manager needs --ca-file, --cert-file and --key-file (or VMFEX_CA_FILE, VMFEX_CERT_FILE, VMFEX_KEY_FILE): its CA and a client certificate from vmfex manager issue-cert")
	}
	caPEM, err := os.ReadFile(t.CA)
	if err != nil {
		return nil, fmt.Errorf("the manager's CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", t.CA)
	}
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}, nil
}
