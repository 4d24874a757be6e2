package main

// `vmfex lab up` runs a whole fabric from a topology file in this process
// and serves a small HTTP JSON API to act on it live: switch a vNIC between
// the direct (VM-FEX) path and the emulated one, and vMotion a VM between
// hosts. The API follows the manager's conventions (/api/v1, bearer token,
// JSON errors with a hint) so that the same client and CLI flags work.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/lab"
	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/metrics"
)

// defaultLabListen is where `vmfex lab up` serves by default: next to the
// manager's 8443 so that both can run at once.
const defaultLabListen = "127.0.0.1:8444"

// defaultLabTokenDir is where `vmfex lab up` keeps its generated token, and
// where the lab commands look for it when no token is given.
func defaultLabTokenDir() string { return filepath.Join(os.TempDir(), "vmfex-lab") }

type labOpts struct {
	topology  string
	listen    string
	tokenFile string
	tokenDir  string // where the token is generated if tokenFile is empty
	traffic   bool
	metrics   metricsListen // --metrics-listen; empty: off
	netns     bool          // --netns: processes in network namespaces
	stateDir  string        // --state-dir of a lab in namespaces
	prefix    string        // --netns-prefix
}

func newLabCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a fabric from a topology file and act on it live (vnic mode, vmotion)",
	}
	var o labOpts
	up := &cobra.Command{
		Use:   "up TOPOLOGY.yaml",
		Short: "Build and start the fabric of TOPOLOGY.yaml in this process and serve its API until Ctrl-C",
		Long: `lab up builds the fabric TOPOLOGY.yaml describes (see examples/demo.yaml):
the Fabric Interconnect, hosts with their VIC adapters, port profiles and VMs
with dynamic vNICs, all in this process. With --traffic every VM sends probe
traffic to every other VM in its VLAN, counted exactly once.

It serves an HTTP JSON API on a loopback address (bearer token; the token is
generated into ` + filepath.Join(defaultLabTokenDir(), manager.TokenFileName) + ` unless --token-file is
given) for these commands:

  vmfex vnic mode VM direct|emulated   switch a vNIC's path, live
  vmfex vmotion VM --to HOST           migrate a VM, live, phase by phase
  vmfex show migration [ID]            migrations and their timelines

Stop the lab with vmfex lab down from another shell, or Ctrl-C (or SIGTERM).
It then stops the traffic, lets the fabric drain and prints the exactly-once
summary: frames sent, received, lost and duplicated. It exits non-zero if a
frame was lost or duplicated.`,
		Example: "  vmfex lab up examples/demo.yaml --traffic\n  vmfex vmotion web-1 --to esx2",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.topology = args[0]
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if o.netns {
				return runLabNetns(ctx, cmd.OutOrStdout(), o, netnsOpts{stateDir: o.stateDir, prefix: o.prefix})
			}
			return runLab(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	var co clientOpts
	var downNetns bool
	var downState string
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop a running vmfex lab up: it drains, prints its exactly-once summary and exits",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if downNetns {
				return labDownNetns(cmd.Context(), cmd.OutOrStdout(), downState)
			}
			c, err := co.labConnect()
			if err != nil {
				return err
			}
			if err := c.Do(cmd.Context(), "POST", "/api/v1/lab/down", struct{}{}, nil); err != nil {
				return err
			}
			// The lab answers until its API closes, after the drain.
			deadline := time.Now().Add(2 * time.Minute)
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(cmd.Context(), time.Second)
				err := c.Do(ctx, "GET", "/healthz", nil, nil)
				cancel()
				if err != nil {
					_, err := fmt.Fprintln(cmd.OutOrStdout(), "lab stopped; its summary is in the output of vmfex lab up")
					return err
				}
				time.Sleep(50 * time.Millisecond)
			}
			return errors.New("the lab still answers two minutes after lab down; stop it with Ctrl-C")
		},
	}
	addLabClientFlags(down, &co)
	down.Flags().BoolVar(&downNetns, "netns", false, "stop a lab up --netns (signals it; it drains, reports and removes its namespaces)")
	down.Flags().StringVar(&downState, "state-dir", defaultNetnsStateDir(), "with --netns: the lab's state directory")
	cmd.AddCommand(down)
	f := up.Flags()
	f.StringVar(&o.listen, "listen", defaultLabListen, "loopback address and port to serve the lab API on")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the API token (default: "+
		filepath.Join(defaultLabTokenDir(), manager.TokenFileName)+", generated if missing)")
	f.BoolVar(&o.traffic, "traffic", false, "start the probe traffic between the VMs of each VLAN")
	f.Var(&o.metrics, "metrics-listen", metricsFlagUsage)
	f.BoolVar(&o.netns, "netns", false, "run the manager, the FI and each host as separate processes in network namespaces joined by veth pairs (needs root)")
	f.StringVar(&o.stateDir, "state-dir", defaultNetnsStateDir(), "with --netns: where the sockets, the manager's data and the logs go")
	f.StringVar(&o.prefix, "netns-prefix", "vmfex-", "with --netns: prefix of the namespaces' names")
	cmd.AddCommand(up)
	return cmd
}

// runLab runs the lab until ctx is done, then stops it and reports.
func runLab(ctx context.Context, out, logOut io.Writer, o labOpts) error {
	if o.tokenDir == "" {
		o.tokenDir = defaultLabTokenDir()
	}
	r, err := startLab(o, logOut)
	if err != nil {
		return err
	}
	defer serveLabMetrics(out, r.lab, r.api.migrations, string(o.metrics))()
	traffic := "off (--traffic starts it)"
	if o.traffic {
		traffic = "on"
	}
	fmt.Fprintf(out, "vmfex lab: %s up from %s: %d hosts, %d VMs, traffic %s\n",
		r.fi, o.topology, len(r.lab.Hosts()), len(r.lab.VMs()), traffic)
	verb := "is in"
	if r.tokenCreated {
		verb = "generated into"
	}
	fmt.Fprintf(out, "vmfex lab: serving %s (plain HTTP, loopback only); API token %s %s\n", r.url, verb, r.tokenPath)
	fmt.Fprintf(out, "vmfex lab: try: vmfex vmotion %s --to HOST --server %s --token-file %s\n", firstVM(r.lab), r.url, r.tokenPath)
	fmt.Fprintln(out, "vmfex lab: stop with Ctrl-C")
	select {
	case <-ctx.Done():
	case <-r.api.down:
		fmt.Fprintln(out, "vmfex lab: lab down asked for")
	case err := <-r.serveErr:
		fmt.Fprintf(out, "vmfex lab: API server failed: %v; stopping\n", err)
	}
	fmt.Fprintln(out, "vmfex lab: stopping")
	sum, err := r.stop()
	printLabSummary(out, sum, o.traffic)
	return err
}

func firstVM(l *lab.Lab) string {
	if vms := l.VMs(); len(vms) > 0 {
		return vms[0].Name()
	}
	return "VM"
}

// labRun is a started lab and its API server.
type labRun struct {
	lab          *lab.Lab
	fi           string
	api          *labAPI
	url          string
	tokenPath    string
	tokenCreated bool
	traffic      bool
	hs           *http.Server
	serveErr     chan error
}

// startLab builds and starts the lab of o.topology and serves its API on
// o.listen. The caller must call stop.
func startLab(o labOpts, logOut io.Writer) (*labRun, error) {
	if err := checkLoopback(o.listen); err != nil {
		return nil, err
	}
	topo, err := lab.LoadTopology(o.topology)
	if err != nil {
		return nil, err
	}
	if o.tokenFile == "" {
		if err := os.MkdirAll(o.tokenDir, 0o700); err != nil {
			return nil, fmt.Errorf("create the token directory: %w; pass --token-file FILE instead", err)
		}
	}
	token, tokenPath, created, err := manager.LoadOrCreateToken(o.tokenDir, o.tokenFile)
	if err != nil {
		return nil, err
	}
	topo.Logger = slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelWarn}))
	l, err := lab.Build(topo)
	if err != nil {
		return nil, fmt.Errorf("build the fabric of %s: %w", o.topology, err)
	}
	if err := l.Start(); err != nil {
		l.Close()
		return nil, fmt.Errorf("start the fabric: %w", err)
	}
	if o.traffic {
		l.StartTraffic()
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("listen on %s: %w (is another lab running? pick another port with --listen)", o.listen, err)
	}
	api := newLabAPI(l, token)
	r := &labRun{
		lab: l, fi: topo.FI, api: api, url: "http://" + ln.Addr().String(), tokenPath: tokenPath,
		tokenCreated: created, traffic: o.traffic, serveErr: make(chan error, 1),
		hs: &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second},
	}
	go func() { r.serveErr <- r.hs.Serve(ln) }()
	return r, nil
}

// stop ends the API, lets a running migration finish, stops the traffic,
// drains the fabric and closes it. It returns the exactly-once accounting
// and an error if a frame was lost or duplicated.
func (r *labRun) stop() (guest.Summary, error) {
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = r.hs.Shutdown(sctx) // stuck clients only; the lab stops regardless
	cancel()
	r.api.close(30 * time.Second)
	var drainErr error
	if r.traffic {
		r.lab.StopTraffic()
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		drainErr = r.lab.Drain(dctx, 3*time.Second)
		cancel()
	}
	sum := guest.Reconcile(r.lab.Stats())
	errs := []error{r.lab.Close()}
	if r.traffic {
		if sum.Lost != 0 {
			errs = append(errs, fmt.Errorf("%d frames lost (drain: %v)", sum.Lost, drainErr))
		}
		if sum.Duplicated != 0 || sum.Misdelivered != 0 {
			errs = append(errs, fmt.Errorf("invariant broken: %d duplicated, %d misdelivered", sum.Duplicated, sum.Misdelivered))
		}
	}
	return sum, errors.Join(errs...)
}

func printLabSummary(w io.Writer, s guest.Summary, traffic bool) {
	if !traffic {
		fmt.Fprintln(w, "vmfex lab: stopped (no traffic ran)")
		return
	}
	fmt.Fprintf(w, "vmfex lab: exactly-once summary: sent %d, received %d unique, lost %d, duplicated %d, misdelivered %d, reordered %d\n",
		s.Sent, s.Unique, s.Lost, s.Duplicated, s.Misdelivered, s.Reordered)
}

// API objects, shared by the server and the CLI.

// labVM is one VM as GET /api/v1/vms reports it.
type labVM struct {
	Name      string `json:"name"`
	Host      string `json:"host"`
	VEth      uint32 `json:"veth"`
	Interface string `json:"interface"`
	Vif       uint16 `json:"vif"`
	VLAN      uint16 `json:"vlan"`
	Mode      string `json:"mode"` // direct | emulated
	Sent      uint64 `json:"sent"`
	Received  uint64 `json:"received_unique"`
	// Lost is what its peers sent it and it has not received yet: with
	// traffic running it includes frames in flight.
	Lost int64 `json:"lost"`
}

type modeRequest struct {
	Mode string `json:"mode"`
}

// modeResult is the answer to a mode switch: the guest pause, phase by
// phase, in µs.
type modeResult struct {
	VM        string `json:"vm"`
	Previous  string `json:"previous"`
	Mode      string `json:"mode"`
	PauseUs   int64  `json:"pause_us"`
	FreezeUs  int64  `json:"freeze_us"`
	HandoffUs int64  `json:"handoff_us"`
	ResumeUs  int64  `json:"resume_us"`
}

type migrationRequest struct {
	Name      string `json:"name,omitempty"` // the manager needs one; the lab numbers its own
	VM        string `json:"vm"`
	To        string `json:"to"`
	Transport string `json:"transport,omitempty"` // tcp (default) | pipe
}

// migrationJob is one migration as the API reports it: the manager's
// shape, so that vmotion and show migration work against both. The lab
// names its migrations 1, 2, ...
type migrationJob = manager.Migration

// labAPI serves the lab API.
type labAPI struct {
	lab  *lab.Lab
	auth *manager.BearerAuth // immutable
	mux  *http.ServeMux      // immutable after newLabAPI
	// ctx outlives requests: a migration started by a POST goes on after
	// the response; close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // background migrations

	// mu guards the fields below. One operation at a time moves a vNIC:
	// a mode switch and a migration of the same VM would fight over its
	// device, so each refuses while the other runs.
	mu        sync.Mutex
	jobs      []*migrationJob // jobs[i].Name == i+1
	migrating bool
	switching map[string]bool // VMs with a mode switch in progress

	migrations *metrics.MigrationObserver // what the finished jobs did, for /metrics

	down     chan struct{} // closed by POST /api/v1/lab/down
	downOnce sync.Once
}

func newLabAPI(l *lab.Lab, token string) *labAPI {
	ctx, cancel := context.WithCancel(context.Background())
	a := &labAPI{lab: l, auth: manager.NewBearerAuth(token, "vmfex-lab", "vmfex lab up"), mux: http.NewServeMux(),
		ctx: ctx, cancel: cancel, switching: map[string]bool{}, migrations: metrics.NewMigrationObserver(),
		down: make(chan struct{})}
	a.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		manager.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	a.handle("GET /api/v1/vms", a.listVMs)
	a.handle("GET /api/v1/vms/{name}", a.getVM)
	a.handle("POST /api/v1/vms/{name}/mode", a.switchMode)
	a.handle("GET /api/v1/migrations", a.listMigrations)
	a.handle("POST /api/v1/migrations", a.startMigration)
	a.handle("GET /api/v1/migrations/{id}", a.getMigration)
	a.handle("POST /api/v1/lab/down", func(w http.ResponseWriter, _ *http.Request) {
		a.downOnce.Do(func() { close(a.down) })
		manager.WriteJSON(w, http.StatusAccepted, map[string]string{"status": "stopping"})
	})
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		manager.WriteError(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path),
			"the lab API has GET /api/v1/vms, POST /api/v1/vms/{name}/mode, GET and POST /api/v1/migrations, GET /api/v1/migrations/{id}, POST /api/v1/lab/down")
	})
	return a
}

func (a *labAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// handle registers h behind the bearer token check.
func (a *labAPI) handle(pattern string, h http.HandlerFunc) {
	a.mux.HandleFunc(pattern, a.auth.Wrap(h))
}

// close waits up to grace for a running migration to end, then cancels
// what still runs (a migration cancelled before its commit point rolls
// back) and waits for it.
func (a *labAPI) close(grace time.Duration) {
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
	}
	a.cancel()
	<-done
}

// labDecode reads one JSON object into v, refusing unknown fields and
// trailing data so that a typo never passes silently.
func labDecode(w http.ResponseWriter, r *http.Request, v any, example string) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, err2 := dec.Token(); err2 != io.EOF {
			err = errors.New("data after the JSON object")
		}
	}
	if err != nil {
		manager.WriteError(w, http.StatusBadRequest, "request body is not valid: "+err.Error(), "send one JSON object like "+example)
		return false
	}
	return true
}

func (a *labAPI) vms() []labVM {
	stats := a.lab.Stats()
	sum := guest.Reconcile(stats)
	lostTo := map[uint32]int64{}
	for _, p := range sum.Pairs {
		lostTo[p.Dst] += p.Lost
	}
	var out []labVM
	for _, v := range a.lab.Views() {
		st := stats[v.ID]
		out = append(out, labVM{Name: v.Name, Host: v.Host, VEth: v.VEth, Interface: "Veth" + strconv.FormatUint(uint64(v.VEth), 10),
			Vif: v.Vif, VLAN: v.VLAN, Mode: v.Mode.String(), Sent: st.Sent.Frames, Received: st.Received.Unique, Lost: lostTo[v.ID]})
	}
	return out
}

func (a *labAPI) listVMs(w http.ResponseWriter, _ *http.Request) {
	manager.WriteJSON(w, http.StatusOK, map[string]any{"items": a.vms()})
}

func (a *labAPI) notFoundVM(w http.ResponseWriter, name string) {
	manager.WriteError(w, http.StatusNotFound, fmt.Sprintf("VM %q not found", name),
		fmt.Sprintf("this lab's VMs are %s (GET /api/v1/vms)", strings.Join(a.lab.SortedVMs(), ", ")))
}

func (a *labAPI) getVM(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	for _, v := range a.vms() {
		if v.Name == name {
			manager.WriteJSON(w, http.StatusOK, v)
			return
		}
	}
	a.notFoundVM(w, name)
}

func parseMode(s string) (hypervisor.Mode, bool) {
	switch s {
	case "direct":
		return hypervisor.ModeDirect, true
	case "emulated":
		return hypervisor.ModeEmulated, true
	}
	return 0, false
}

func (a *labAPI) switchMode(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req modeRequest
	if !labDecode(w, r, &req, `{"mode":"emulated"}`) {
		return
	}
	to, ok := parseMode(req.Mode)
	if !ok {
		manager.WriteError(w, http.StatusBadRequest, fmt.Sprintf("mode %q is not a vNIC mode", req.Mode), `send "direct" (VM-FEX, on the adapter) or "emulated" (the hypervisor's VMXNET3)`)
		return
	}
	hv, ok := a.lab.Hypervisor(name)
	if !ok {
		a.notFoundVM(w, name)
		return
	}
	a.mu.Lock()
	switch {
	case a.migrating:
		a.mu.Unlock()
		manager.WriteError(w, http.StatusConflict, "a migration is running", "wait until it ends (vmfex show migration), then switch the mode")
		return
	case a.switching[name]:
		a.mu.Unlock()
		manager.WriteError(w, http.StatusConflict, fmt.Sprintf("VM %s is already switching modes", name), "wait for that switch to end and retry")
		return
	}
	a.switching[name] = true
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.switching, name)
		a.mu.Unlock()
	}()
	// A migration may have replaced the hypervisor VM between the lookup
	// and the switching flag; look again now that none can start.
	if hv, ok = a.lab.Hypervisor(name); !ok {
		a.notFoundVM(w, name)
		return
	}
	from := hv.Mode()
	if from == to {
		manager.WriteError(w, http.StatusConflict, fmt.Sprintf("VM %s is already in %s mode", name, to),
			fmt.Sprintf("nothing to do; to switch back send {\"mode\":%q}", otherMode(to)))
		return
	}
	// Not the request's context: a client that goes away must not cut a
	// switch in the middle.
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	t, err := hv.SwitchMode(ctx, to)
	if err != nil {
		manager.WriteError(w, http.StatusInternalServerError, fmt.Sprintf("switch %s to %s: %v", name, to, err),
			"the VM stays in mode "+hv.Mode().String()+"; check the lab's log and retry")
		return
	}
	manager.WriteJSON(w, http.StatusOK, modeResult{VM: name, Previous: from.String(), Mode: hv.Mode().String(),
		PauseUs: t.Total.Microseconds(), FreezeUs: t.Freeze.Microseconds(), HandoffUs: t.Handoff.Microseconds(), ResumeUs: t.Resume.Microseconds()})
}

func otherMode(m hypervisor.Mode) string {
	if m == hypervisor.ModeDirect {
		return "emulated"
	}
	return "direct"
}

// snapshot copies a job under a.mu, so that the encoder never reads a
// phase list the migration is appending to.
func (a *labAPI) snapshot(j *migrationJob) migrationJob {
	c := *j
	c.Phases = slices.Clone(j.Phases)
	if c.Phases == nil {
		c.Phases = []manager.MigrationPhase{}
	}
	return c
}

func (a *labAPI) listMigrations(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	items := make([]migrationJob, 0, len(a.jobs))
	for _, j := range a.jobs {
		items = append(items, a.snapshot(j))
	}
	a.mu.Unlock()
	manager.WriteJSON(w, http.StatusOK, map[string]any{"items": items})
}

func (a *labAPI) getMigration(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.Atoi(r.PathValue("id"))
	a.mu.Lock()
	if err != nil || id < 1 || id > len(a.jobs) {
		n := len(a.jobs)
		a.mu.Unlock()
		manager.WriteError(w, http.StatusNotFound, fmt.Sprintf("migration %q not found", r.PathValue("id")),
			fmt.Sprintf("migrations are numbered 1..%d; list them with GET /api/v1/migrations", n))
		return
	}
	j := a.snapshot(a.jobs[id-1])
	a.mu.Unlock()
	manager.WriteJSON(w, http.StatusOK, j)
}

func (a *labAPI) startMigration(w http.ResponseWriter, r *http.Request) {
	var req migrationRequest
	if !labDecode(w, r, &req, `{"vm":"web-1","to":"esx2","transport":"tcp"}`) {
		return
	}
	tr := lab.Transport(req.Transport)
	switch tr {
	case "":
		tr = lab.TransportTCP
	case lab.TransportTCP, lab.TransportPipe:
	default:
		manager.WriteError(w, http.StatusBadRequest, fmt.Sprintf("transport %q is not a migration transport", req.Transport),
			`use "tcp" (a loopback connection) or "pipe" (in process)`)
		return
	}
	v, ok := a.lab.View(req.VM)
	if !ok {
		a.notFoundVM(w, req.VM)
		return
	}
	var hosts []string
	for _, h := range a.lab.Hosts() {
		hosts = append(hosts, h.Name)
	}
	if !slices.Contains(hosts, req.To) {
		manager.WriteError(w, http.StatusNotFound, fmt.Sprintf("host %q not found", req.To), "this lab's hosts are "+strings.Join(hosts, ", "))
		return
	}
	a.mu.Lock()
	if a.migrating {
		running := a.jobs[len(a.jobs)-1]
		a.mu.Unlock()
		manager.WriteError(w, http.StatusConflict, fmt.Sprintf("migration %s (%s to %s) is still running", running.Name, running.VM, running.To),
			"one migration at a time; wait until it ends (vmfex show migration) and retry")
		return
	}
	if len(a.switching) != 0 {
		a.mu.Unlock()
		manager.WriteError(w, http.StatusConflict, "a vNIC mode switch is in progress", "retry when it ends, in a few milliseconds")
		return
	}
	// Read the host again under a.mu: no migration can move the VM now.
	if v, _ = a.lab.View(req.VM); v.Host == req.To {
		a.mu.Unlock()
		manager.WriteError(w, http.StatusConflict, fmt.Sprintf("VM %s already runs on %s", req.VM, req.To),
			"choose another host: "+strings.Join(slices.DeleteFunc(hosts, func(h string) bool { return h == req.To }), ", "))
		return
	}
	j := &migrationJob{Name: strconv.Itoa(len(a.jobs) + 1), State: manager.MigrationRunning, VM: req.VM, From: v.Host, To: req.To,
		Transport: string(tr), CreatedUnixMs: time.Now().UnixMilli()}
	a.jobs = append(a.jobs, j)
	a.migrating = true
	res := a.snapshot(j)
	a.wg.Add(1)
	a.mu.Unlock()
	go a.migrate(j, tr)
	manager.WriteJSON(w, http.StatusAccepted, res)
}

// migrate runs job j to its end.
func (a *labAPI) migrate(j *migrationJob, tr lab.Transport) {
	defer a.wg.Done()
	rep, err := a.lab.MigrateWith(a.ctx, j.VM, j.To, lab.MigrateOptions{Transport: tr,
		Progress: func(p lab.MigrationPhase) {
			a.mu.Lock()
			j.Phases = append(j.Phases, manager.MigrationPhase(p))
			a.mu.Unlock()
		}})
	a.mu.Lock()
	defer a.mu.Unlock()
	a.migrating = false
	if len(rep.Phases) >= len(j.Phases) {
		j.Phases = j.Phases[:0]
		for _, p := range rep.Phases {
			j.Phases = append(j.Phases, manager.MigrationPhase(p))
		}
	}
	j.TotalMs, j.DowntimeMs, j.PrecopyRounds, j.BytesTransferred = rep.TotalMs, rep.DowntimeMs, rep.PrecopyRounds, rep.BytesTransferred
	switch {
	case err == nil:
		j.State = manager.MigrationSucceeded
	case errors.Is(err, lab.ErrRolledBack):
		j.State, j.Error = manager.MigrationRolledBack, err.Error()
	default:
		j.State, j.Error = manager.MigrationFailed, err.Error()
	}
	a.migrations.Observe(rep, j.State)
}
