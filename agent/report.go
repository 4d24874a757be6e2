package agent

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/lab"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
	"github.com/vmfex/vmfex/metrics"
)

func slicesSort(s []string) { sort.Strings(s) }

// HostStatus is what a host agent reports.
type HostStatus struct {
	ServerPort string         `json:"server_port"`
	Uplink     link.PortStats `json:"uplink"` // the adapter's cable to the FI
	VMs        []vmReport     `json:"vms"`
}

type vmReport struct {
	Name    string             `json:"name"`
	VEth    uint32             `json:"veth"`
	Vif     uint16             `json:"vif"`
	Mode    string             `json:"mode"`
	Guest   string             `json:"guest,omitempty"`
	Traffic guest.TrafficStats `json:"traffic"` // zero for a Linux guest
}

// HostStatusOf decodes a host agent's status.
func HostStatusOf(a manager.Agent) (HostStatus, error) {
	var st HostStatus
	err := json.Unmarshal(a.Status, &st)
	return st, err
}

// FIStatusOf decodes an FI agent's status.
func FIStatusOf(a manager.Agent) (FIStatus, error) {
	var st FIStatus
	err := json.Unmarshal(a.Status, &st)
	return st, err
}

func (a *HostAgent) report(ctx context.Context) error {
	a.mu.Lock()
	st := HostStatus{ServerPort: a.obj.ServerPort, Uplink: a.Host.Adapter.UplinkStats()}
	for _, vm := range a.vms {
		r := vmReport{Name: vm.Name(), VEth: vm.VEth, Vif: vm.Vif, Mode: vm.Mode().String(), Guest: vm.Config().Spec.Guest}
		if vm.Traffic != nil {
			r.Traffic = vm.Traffic.Stats(vm.Memory())
		}
		st.VMs = append(st.VMs, r)
	}
	a.mu.Unlock()
	sort.Slice(st.VMs, func(i, j int) bool { return st.VMs[i].Name < st.VMs[j].Name })
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return putAgent(ctx, a.cfg.Manager, manager.Agent{Name: manager.AgentName(manager.RoleHost, a.cfg.Name),
		Role: manager.RoleHost, Object: a.cfg.Name, MigrationAddr: a.MigrationAddr(),
		HeartbeatUnixMs: time.Now().UnixMilli(), Status: raw})
}

// jobReporter writes a migration's progress to the manager off the
// migration's path: a phase must not wait for an API round trip (the VM
// may be frozen), so updates queue and a goroutine sends the latest.
type jobReporter struct {
	c    *client.Client
	mu   sync.Mutex
	m    manager.Migration // guarded by mu
	kick chan struct{}
	done chan struct{}
	ctx  context.Context
}

func newJobReporter(ctx context.Context, c *client.Client, m manager.Migration) *jobReporter {
	r := &jobReporter{c: c, m: m, kick: make(chan struct{}, 1), done: make(chan struct{}), ctx: context.WithoutCancel(ctx)}
	go r.run()
	return r
}

func (r *jobReporter) update(fn func(*manager.Migration)) {
	r.mu.Lock()
	fn(&r.m)
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *jobReporter) run() {
	defer close(r.done)
	for range r.kick {
		r.send()
	}
}

func (r *jobReporter) send() {
	r.mu.Lock()
	m := r.m
	m.Revision = 0
	m.Phases = append([]manager.MigrationPhase(nil), r.m.Phases...)
	r.mu.Unlock()
	for try := 0; try < 50; try++ {
		ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
		err := r.c.Update(ctx, manager.KindMigrations, m.Name, &m, nil)
		cancel()
		var ce *client.Error
		if err == nil || errors.As(err, &ce) && ce.Status < 500 {
			return // written, or refused: retrying cannot help
		}
		time.Sleep(200 * time.Millisecond) // the manager is away: retry
	}
}

// close sends the last state and stops.
func (r *jobReporter) close() {
	close(r.kick)
	<-r.done
	r.send()
}

// The agents as metrics sources (metrics.Source).

// Collectors returns what an FI agent serves at /metrics: its FI's
// counters.
func (a *FIAgent) Collectors() []prometheus.Collector {
	return []prometheus.Collector{metrics.NewCollector(metricsSource{fi: a.FI})}
}

// Collectors returns what a host agent serves at /metrics: its adapter's,
// hypervisor's and guests' counters, and the migrations it ran.
func (a *HostAgent) Collectors() []prometheus.Collector {
	return []prometheus.Collector{metrics.NewCollector(metricsSource{host: a}), a.migrations}
}

type metricsSource struct {
	fi   *fabric.FI
	host *HostAgent
}

func (s metricsSource) FI() *fabric.FI { return s.fi }

func (s metricsSource) Hosts() []*lab.Host {
	if s.host == nil {
		return nil
	}
	return []*lab.Host{s.host.Host}
}

func (s metricsSource) Views() []lab.VMView {
	if s.host == nil {
		return nil
	}
	a := s.host
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]lab.VMView, 0, len(a.vms))
	for _, vm := range a.vms {
		out = append(out, lab.VMView{Name: vm.Name(), ID: vm.ID(), Host: a.cfg.Name, VEth: vm.VEth, Vif: vm.Vif, VLAN: vm.VLAN, Mode: vm.Mode()})
	}
	return out
}

func (s metricsSource) Stats() map[uint32]guest.TrafficStats {
	out := map[uint32]guest.TrafficStats{}
	if s.host == nil {
		return out
	}
	a := s.host
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, vm := range a.vms {
		if vm.Traffic != nil {
			out[vm.ID()] = vm.Traffic.Stats(vm.Memory())
		}
	}
	return out
}

// reconcileLoop runs reconcile whenever the manager reports a change to
// one of kinds (its watch), and every period in any case (a change missed
// while a watch reconnects is picked up then), and report every
// manager.AgentHeartbeat, until ctx ends. It logs the transitions between
// reaching the manager and running headless on the last state.
func reconcileLoop(ctx context.Context, log *slog.Logger, c *client.Client, kinds []string, period time.Duration,
	reconcile, report func(context.Context) error) {
	kick := make(chan struct{}, 1)
	var wg sync.WaitGroup
	for _, kind := range kinds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			watchKinds(ctx, c, kind, kick)
		}()
	}
	defer wg.Wait()
	tick := time.NewTicker(period)
	defer tick.Stop()
	beat := time.NewTicker(manager.AgentHeartbeat)
	defer beat.Stop()
	var lastBeat time.Time
	online := false
	for {
		err := reconcile(ctx)
		if err == nil && time.Since(lastBeat) >= manager.AgentHeartbeat {
			if err = report(ctx); err == nil {
				lastBeat = time.Now()
			}
		}
		switch {
		case err == nil && !online:
			online = true
			log.Info("manager reachable: reconciling")
		case err != nil && online && ctx.Err() == nil:
			online = false
			log.Warn("manager unreachable: running on the last state (headless)", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-beat.C:
		case <-kick:
		}
	}
}

// watchKinds follows the manager's watch of kind and kicks on every
// change, reconnecting (after a second) when the stream ends.
func watchKinds(ctx context.Context, c *client.Client, kind string, kick chan<- struct{}) {
	for ctx.Err() == nil {
		_ = c.Watch(ctx, kind, 0, func(client.WatchEvent) {
			select {
			case kick <- struct{}{}:
			default:
			}
		})
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
