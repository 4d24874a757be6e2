package agent

// The FI agent's control API: what a host agent asks of the FI for its VMs
// — attach a vNIC's vEth, and the hold / rebind / claim / revert / release
// steps of a live migration (lab.FabricControl). Same bearer token as the
// manager. fabric's sentinel errors travel as statuses: 404 unknown vEth,
// 409 claimed, 412 not bound there.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/lab"
	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
	"github.com/vmfex/vmfex/wire"

	"encoding/json"
)

// AttachRequest creates (or recreates) the vEth of a VM whose vNIC came up
// on a host's adapter.
type AttachRequest struct {
	ServerPort  string `json:"server_port"`
	Vif         uint16 `json:"vif"`
	MAC         string `json:"mac"`
	Profile     string `json:"profile"`
	Description string `json:"description,omitempty"`
}

// BindingRequest names a (server port, vif), or two for a revert.
type BindingRequest struct {
	ServerPort string `json:"server_port"`
	Vif        uint16 `json:"vif"`
	ToPort     string `json:"to_port,omitempty"`
	ToVif      uint16 `json:"to_vif,omitempty"`
}

// controlServer serves the control API over fi.
type controlServer struct {
	fi  *fabric.FI
	mux *http.ServeMux
}

func newControlServer(fi *fabric.FI, token string) http.Handler {
	s := &controlServer{fi: fi, mux: http.NewServeMux()}
	auth := manager.NewBearerAuth(token, "vmfex-fi", "vmfex manager")
	h := func(pattern string, fn func(r *http.Request, id uint32) (any, error)) {
		s.mux.HandleFunc(pattern, auth.Wrap(func(w http.ResponseWriter, r *http.Request) {
			n, err := strconv.ParseUint(r.PathValue("id"), 10, 32)
			if err != nil || n == 0 {
				manager.WriteError(w, http.StatusBadRequest, fmt.Sprintf("vEth %q is not a vEth number", r.PathValue("id")), "use the number, e.g. 32769")
				return
			}
			out, err := fn(r, uint32(n))
			if err != nil {
				manager.WriteError(w, statusOf(err), err.Error(), "")
				return
			}
			manager.WriteJSON(w, http.StatusOK, out)
		}))
	}
	body := func(r *http.Request, v any) error {
		dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return fmt.Errorf("%w: request body: %v", fabric.ErrInvalidConfig, err)
		}
		return nil
	}
	h("GET /fi/v1/veths/{id}", func(_ *http.Request, id uint32) (any, error) {
		info, ok := fi.VEth(id)
		if !ok {
			return nil, fmt.Errorf("%w: Veth%d", fabric.ErrUnknownVEth, id)
		}
		return info, nil
	})
	h("PUT /fi/v1/veths/{id}", func(r *http.Request, id uint32) (any, error) {
		var a AttachRequest
		if err := body(r, &a); err != nil {
			return nil, err
		}
		mac, err := wire.ParseMAC(a.MAC)
		if err != nil {
			return nil, fmt.Errorf("%w: mac %q: %v", fabric.ErrInvalidConfig, a.MAC, err)
		}
		// A vNIC that comes up anew (its VM booted) gets a fresh vEth:
		// its counts start with the vNIC's.
		if _, ok := fi.VEth(id); ok {
			if err := fi.DeleteVEth(id); err != nil {
				return nil, err
			}
		}
		if err := fi.CreateVEth(fabric.VEthConfig{ID: id, ServerPort: a.ServerPort, VIF: a.Vif, MAC: mac,
			Profile: a.Profile, Description: a.Description}); err != nil {
			return nil, err
		}
		info, _ := fi.VEth(id)
		return info, nil
	})
	h("POST /fi/v1/veths/{id}/hold", func(_ *http.Request, id uint32) (any, error) { return fi.HoldVEth(id) })
	h("POST /fi/v1/veths/{id}/release", func(_ *http.Request, id uint32) (any, error) {
		return struct{}{}, fi.ReleaseVEth(id)
	})
	h("POST /fi/v1/veths/{id}/rebind", func(r *http.Request, id uint32) (any, error) {
		var b BindingRequest
		if err := body(r, &b); err != nil {
			return nil, err
		}
		return struct{}{}, fi.RebindVEth(id, b.ServerPort, b.Vif)
	})
	h("POST /fi/v1/veths/{id}/claim", func(r *http.Request, id uint32) (any, error) {
		var b BindingRequest
		if err := body(r, &b); err != nil {
			return nil, err
		}
		return struct{}{}, fi.ClaimVEth(id, b.ServerPort, b.Vif)
	})
	h("POST /fi/v1/veths/{id}/revert", func(r *http.Request, id uint32) (any, error) {
		var b BindingRequest
		if err := body(r, &b); err != nil {
			return nil, err
		}
		return struct{}{}, fi.RevertVEth(id, b.ServerPort, b.Vif, b.ToPort, b.ToVif)
	})
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		manager.WriteError(w, http.StatusNotFound, "no endpoint "+r.Method+" "+r.URL.Path, "the FI control API is under /fi/v1/veths/{id}")
	})
	return s.mux
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, fabric.ErrUnknownVEth):
		return http.StatusNotFound
	case errors.Is(err, fabric.ErrClaimed):
		return http.StatusConflict
	case errors.Is(err, fabric.ErrNotBound):
		return http.StatusPreconditionFailed
	case errors.Is(err, fabric.ErrClosed):
		return http.StatusServiceUnavailable
	}
	return http.StatusUnprocessableEntity
}

// FIClient is the FabricControl of an FI agent, over its control API.
type FIClient struct {
	c *client.Client
}

var _ lab.FabricControl = (*FIClient)(nil)

// NewFIClient returns the client of the FI agent's control API at url; an
// https URL needs t (the client certificate the agent has for the manager).
func NewFIClient(url, token string, t client.TLSFiles) (*FIClient, error) {
	c, err := client.NewService("the FI agent's control API", url, token, t)
	if err != nil {
		return nil, err
	}
	return &FIClient{c: c}, nil
}

// fiCallTimeout bounds one control request.
const fiCallTimeout = 10 * time.Second

func (f *FIClient) call(method string, id uint32, op string, in, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), fiCallTimeout)
	defer cancel()
	p := "/fi/v1/veths/" + strconv.FormatUint(uint64(id), 10)
	if op != "" {
		p += "/" + op
	}
	err := f.c.Do(ctx, method, p, in, out)
	var e *client.Error
	if errors.As(err, &e) {
		switch e.Status {
		case http.StatusNotFound:
			return fmt.Errorf("%w: %s", fabric.ErrUnknownVEth, e.Message)
		case http.StatusConflict:
			return fmt.Errorf("%w: %s", fabric.ErrClaimed, e.Message)
		case http.StatusPreconditionFailed:
			return fmt.Errorf("%w: %s", fabric.ErrNotBound, e.Message)
		}
	}
	return err
}

// Attach creates the vEth id for a vNIC that came up.
func (f *FIClient) Attach(id uint32, a AttachRequest) error { return f.call("PUT", id, "", a, nil) }

// HoldVEth holds the vEth's frames (fabric.FI.HoldVEth).
func (f *FIClient) HoldVEth(id uint32) (fabric.HoldTicket, error) {
	var t fabric.HoldTicket
	err := f.call("POST", id, "hold", struct{}{}, &t)
	return t, err
}

// ReleaseVEth sends the held frames on (fabric.FI.ReleaseVEth).
func (f *FIClient) ReleaseVEth(id uint32) error {
	return f.call("POST", id, "release", struct{}{}, nil)
}

// RebindVEth moves the vEth (fabric.FI.RebindVEth).
func (f *FIClient) RebindVEth(id uint32, port string, vif uint16) error {
	return f.call("POST", id, "rebind", BindingRequest{ServerPort: port, Vif: vif}, nil)
}

// ClaimVEth claims the vEth's binding (fabric.FI.ClaimVEth).
func (f *FIClient) ClaimVEth(id uint32, port string, vif uint16) error {
	return f.call("POST", id, "claim", BindingRequest{ServerPort: port, Vif: vif}, nil)
}

// RevertVEth takes an unclaimed binding back (fabric.FI.RevertVEth).
func (f *FIClient) RevertVEth(id uint32, fromPort string, fromVif uint16, toPort string, toVif uint16) error {
	return f.call("POST", id, "revert", BindingRequest{ServerPort: fromPort, Vif: fromVif, ToPort: toPort, ToVif: toVif}, nil)
}

// VEthInfo returns the vEth (fabric.FI.VEth).
func (f *FIClient) VEthInfo(id uint32) (fabric.VEthInfo, error) {
	var info fabric.VEthInfo
	err := f.call("GET", id, "", nil, &info)
	return info, err
}
