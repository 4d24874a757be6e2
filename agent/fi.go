package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
)

// DefaultReconcile is how often an agent compares its state with the
// manager's even when its watches report nothing.
const DefaultReconcile = 2 * time.Second

// FIConfig configures an FI agent.
type FIConfig struct {
	Name    string         // the FI object's name
	Manager *client.Client // the manager
	Token   string         // the manager's token; the control API takes it too
	// ControlListen is the control API's address (default 127.0.0.1:0):
	// a loopback HOST:PORT or unix:/PATH; with ControlTLS any HOST:PORT.
	ControlListen string
	// ControlTLS, if set, serves the control API with mutual TLS (see
	// manager.ServerTLS): host agents present their certificates.
	ControlTLS *tls.Config
	Reconcile  time.Duration // default DefaultReconcile
	Logger     *slog.Logger
}

// FIAgent runs a Fabric Interconnect for the manager.
type FIAgent struct {
	cfg FIConfig
	FI  *fabric.FI
	log *slog.Logger
	ln  net.Listener
	url string // the control API's URL
	srv *http.Server

	mu       sync.Mutex
	ports    map[string]link.Port // server port -> its cable; guarded by mu
	profiles map[string]manager.PortProfile
	warned   map[string]bool // hosts whose missing cable was logged

	cancel context.CancelFunc
	done   chan struct{}
}

// StartFI starts an FI agent: the FI, its control API, and the loops that
// reconcile with and report to the manager.
func StartFI(ctx context.Context, cfg FIConfig) (*FIAgent, error) {
	if cfg.Reconcile == 0 {
		cfg.Reconcile = DefaultReconcile
	}
	if cfg.ControlListen == "" {
		cfg.ControlListen = "127.0.0.1:0"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("fi", cfg.Name)
	a := &FIAgent{cfg: cfg, log: log, ports: map[string]link.Port{},
		profiles: map[string]manager.PortProfile{}, warned: map[string]bool{}, done: make(chan struct{})}
	a.FI = fabric.New(fabric.Config{Name: cfg.Name, Logger: log})
	if err := a.FI.Start(); err != nil {
		return nil, err
	}
	var ln net.Listener
	var url string
	var err error
	if cfg.ControlTLS != nil {
		var tl net.Listener
		if tl, err = net.Listen("tcp", cfg.ControlListen); err == nil {
			ln, url = tls.NewListener(tl, cfg.ControlTLS), "https://"+tl.Addr().String()
		}
	} else {
		ln, url, err = manager.Listen(cfg.ControlListen)
	}
	if err != nil {
		a.FI.Close()
		return nil, fmt.Errorf("fi agent: control API: %w", err)
	}
	a.ln, a.url = ln, url
	a.srv = &http.Server{Handler: newControlServer(a.FI, cfg.Token), ReadHeaderTimeout: 10 * time.Second}
	go a.srv.Serve(ln)
	ctx, a.cancel = context.WithCancel(ctx)
	go a.loop(ctx)
	return a, nil
}

// ControlURL is the control API's URL.
func (a *FIAgent) ControlURL() string { return a.url }

// Close stops the agent and its FI.
func (a *FIAgent) Close() error {
	a.cancel()
	<-a.done
	a.srv.Close()
	return a.FI.Close()
}

func (a *FIAgent) loop(ctx context.Context) {
	defer close(a.done)
	reconcileLoop(ctx, a.log, a.cfg.Manager, []string{manager.KindPortProfiles, manager.KindHosts, manager.KindVMs},
		a.cfg.Reconcile, a.reconcile, a.report)
}

func (a *FIAgent) reconcile(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var profiles []manager.PortProfile
	var hosts []manager.Host
	var vms []manager.VM
	if _, err := a.cfg.Manager.List(ctx, manager.KindPortProfiles, &profiles); err != nil {
		return err
	}
	if _, err := a.cfg.Manager.List(ctx, manager.KindHosts, &hosts); err != nil {
		return err
	}
	if _, err := a.cfg.Manager.List(ctx, manager.KindVMs, &vms); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// Port profiles: every change reaches the vEths that use them, live.
	want := map[string]bool{}
	for _, p := range profiles {
		want[p.Name] = true
		if old, ok := a.profiles[p.Name]; ok && old.Revision == p.Revision {
			continue
		}
		if err := a.FI.SetPortProfile(FabricProfile(p)); err != nil {
			a.log.Error("port profile not applied", "profile", p.Name, "err", err)
			continue
		}
		a.profiles[p.Name] = p
	}
	// Server ports: one UDP cable per host cabled to this FI.
	for _, h := range hosts {
		if h.FI != a.cfg.Name || a.ports[h.ServerPort] != nil {
			continue
		}
		p, err := fiCable(h)
		if err != nil {
			if !a.warned[h.Name] {
				a.warned[h.Name] = true
				a.log.Warn("no cable to the host", "host", h.Name, "err", err)
			}
			continue
		}
		if err := a.FI.AddServerPort(h.ServerPort, p, nil); err != nil {
			p.Close()
			a.log.Error("server port", "port", h.ServerPort, "err", err)
			continue
		}
		a.ports[h.ServerPort] = p
		a.log.Info("server port up", "port", h.ServerPort, "host", h.Name, "cable", cableName(h))
	}
	// vEths are created when a host's vNIC comes up (the control API's
	// attach); here they follow their VM's profile and go with it.
	byVEth := map[uint32]manager.VM{}
	for _, v := range vms {
		byVEth[uint32(v.VEth)] = v
	}
	for _, info := range a.FI.VEths() {
		v, ok := byVEth[info.ID]
		if !ok {
			if err := a.FI.DeleteVEth(info.ID); err == nil {
				a.log.Info("vEth removed: its VM was deleted", "veth", info.Name)
			}
			continue
		}
		if info.Profile != v.PortProfile {
			if err := a.FI.SetVEthProfile(info.ID, v.PortProfile); err != nil {
				a.log.Error("vEth profile", "veth", info.Name, "profile", v.PortProfile, "err", err)
			}
		}
	}
	for name := range a.profiles {
		if !want[name] {
			if err := a.FI.DeletePortProfile(name); err == nil || !errors.Is(err, fabric.ErrProfileInUse) {
				delete(a.profiles, name)
			}
		}
	}
	return nil
}

// FabricProfile converts a manager port profile into the FI's.
func FabricProfile(p manager.PortProfile) fabric.PortProfile {
	pp := fabric.PortProfile{Name: p.Name, QoSClass: p.QoSClass, MaxPorts: p.MaxPorts,
		AllowForgedMAC: p.MACForging != "deny", HighPerformance: p.HighPerformance}
	if p.Mode == "trunk" {
		pp.Mode = fabric.ModeTrunk
		for _, v := range p.AllowedVLANs {
			pp.AllowedVLANs = append(pp.AllowedVLANs, uint16(v))
		}
		pp.NativeVLAN = uint16(p.NativeVLAN)
	} else {
		pp.Mode = fabric.ModeAccess
		pp.AccessVLAN = uint16(p.AccessVLAN)
	}
	return pp
}

// FIStatus is what an FI agent reports.
type FIStatus struct {
	VEths    []fabric.VEthInfo `json:"veths"`
	MACTable []fabric.MACEntry `json:"mac_table"`
	Ports    []fabric.PortInfo `json:"ports"`
	Drops    map[string]uint64 `json:"drops,omitempty"`
}

func (a *FIAgent) report(ctx context.Context) error {
	st := FIStatus{VEths: a.FI.VEths(), MACTable: a.FI.MACTable(0), Ports: a.FI.Ports()}
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return putAgent(ctx, a.cfg.Manager, manager.Agent{Name: manager.AgentName(manager.RoleFI, a.cfg.Name),
		Role: manager.RoleFI, Object: a.cfg.Name, ControlURL: a.ControlURL(),
		HeartbeatUnixMs: time.Now().UnixMilli(), Status: raw})
}

// putAgent writes the agent's object: an update, or a create the first time.
func putAgent(ctx context.Context, c *client.Client, ag manager.Agent) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := c.Update(ctx, manager.KindAgents, ag.Name, &ag, nil)
	var e *client.Error
	if errors.As(err, &e) && e.Status == http.StatusNotFound {
		err = c.Create(ctx, manager.KindAgents, &ag, nil)
	}
	return err
}

// fiCable opens the FI's end of host h's cable: UDP between fi_addr and
// uplink_addr, or raw Ethernet on the veth end fi_if in this process's
// network namespace.
func fiCable(h manager.Host) (link.Port, error) {
	switch {
	case h.FIIf != "":
		return link.NewPacketPort(h.FIIf)
	case h.FIAddr != "" && h.UplinkAddr != "":
		return link.NewUDPPort(h.FIAddr, h.UplinkAddr)
	}
	return nil, fmt.Errorf("host %s has no cable: set fi_addr and uplink_addr (UDP) or fi_if and uplink_if (veth)", h.Name)
}

// hostCable opens the host's end of its cable (see fiCable).
func hostCable(h manager.Host) (link.Port, error) {
	switch {
	case h.UplinkIf != "":
		return link.NewPacketPort(h.UplinkIf)
	case h.FIAddr != "" && h.UplinkAddr != "":
		return link.NewUDPPort(h.UplinkAddr, h.FIAddr)
	}
	return nil, fmt.Errorf("host %s has no cable: set fi_addr and uplink_addr (UDP) or fi_if and uplink_if (veth)", h.Name)
}

func cableName(h manager.Host) string {
	if h.FIIf != "" {
		return "veth " + h.FIIf + " <-> " + h.UplinkIf
	}
	return "udp " + h.FIAddr + " <-> " + h.UplinkAddr
}
