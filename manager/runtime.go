package manager

// Runtime objects: what the agents report (agents) and the live
// migrations the operator asks for (migrations). Unlike the configuration
// kinds, agents write them.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"time"
)

// Runtime kinds.
const (
	KindAgents     = "agents"
	KindMigrations = "migrations"
)

// Agent roles.
const (
	RoleFI   = "fi"
	RoleHost = "host"
)

// AgentStaleAfter is how long after its last heartbeat an agent counts as
// down; agents report every AgentHeartbeat.
const (
	AgentHeartbeat  = time.Second
	AgentStaleAfter = 5 * AgentHeartbeat
)

// Agent is a running FI or host agent as it last reported itself. Its name
// is "<role>.<object>", e.g. "host.esx1".
type Agent struct {
	Name     string `json:"name"`
	Revision int64  `json:"revision,omitempty"`
	Role     string `json:"role"`   // fi or host
	Object   string `json:"object"` // the FI's or host's name
	// ControlURL is the FI agent's control API (vEth hold, rebind, claim).
	ControlURL string `json:"control_url,omitempty"`
	// MigrationAddr is the host agent's migration listener (TCP host:port).
	MigrationAddr string `json:"migration_addr,omitempty"`
	// HeartbeatUnixMs is when the agent last reported (its clock).
	HeartbeatUnixMs int64 `json:"heartbeat_unix_ms"`
	// Status is the role's report (see package agent).
	Status json.RawMessage `json:"status,omitempty"`
}

// AgentName returns the name of the agent of role for object.
func AgentName(role, object string) string { return role + "." + object }

// Up reports whether the agent reported within AgentStaleAfter of now.
func (a *Agent) Up(now time.Time) bool {
	return now.Sub(time.UnixMilli(a.HeartbeatUnixMs)) < AgentStaleAfter
}

func (a *Agent) objName() string  { return a.Name }
func (a *Agent) setName(n string) { a.Name = n }
func (a *Agent) rev() int64       { return a.Revision }
func (a *Agent) setRev(r int64)   { a.Revision = r }

func (a *Agent) normalize() error {
	if err := checkEnum("role", a.Role, []string{RoleFI, RoleHost}); err != nil {
		return err
	}
	if err := checkName("agent object", a.Object); err != nil {
		return err
	}
	if want := AgentName(a.Role, a.Object); a.Name != want {
		return badRequest(fmt.Sprintf("agent name %q does not match role %s and object %s", a.Name, a.Role, a.Object),
			fmt.Sprintf("name it %q", want))
	}
	if a.MigrationAddr != "" {
		if _, err := netip.ParseAddrPort(a.MigrationAddr); err != nil {
			return badRequest(fmt.Sprintf("migration_addr %q is not ip:port", a.MigrationAddr), "give the listener's address, e.g. 127.0.0.1:7001")
		}
	}
	if len(a.Status) > 0 && !json.Valid(a.Status) {
		return badRequest("status is not valid JSON", "send a JSON object")
	}
	return nil
}

func (s *Server) checkAgent(ctx context.Context, o, _ object) error {
	a := o.(*Agent)
	switch a.Role {
	case RoleFI:
		if _, ok, err := getKind[FabricInterconnect](ctx, s, KindFabricInterconnects, a.Object); err != nil {
			return err
		} else if !ok {
			return missing("fabric interconnect", a.Object, "object", "agent "+a.Name, "vmfex fi create "+a.Object)
		}
	case RoleHost:
		if _, ok, err := getKind[Host](ctx, s, KindHosts, a.Object); err != nil {
			return err
		} else if !ok {
			return missing("host", a.Object, "object", "agent "+a.Name, "vmfex host create "+a.Object)
		}
	}
	return nil
}

// Migration states.
const (
	MigrationPending    = "pending"     // asked for; the source's agent has not taken it
	MigrationRunning    = "running"     // the source's agent runs it
	MigrationSucceeded  = "succeeded"   // the VM runs on the destination
	MigrationRolledBack = "rolled-back" // the VM runs on its source
	MigrationFailed     = "failed"      // neither: see Error
)

// MigrationPhase is one step of a migration's timeline, in µs since its
// start.
type MigrationPhase struct {
	Name    string `json:"name"`
	StartUs int64  `json:"start_us"`
	EndUs   int64  `json:"end_us"`
}

// Migration is a live migration (vMotion) job: the operator creates it,
// the agent of the VM's host runs it and reports its phases and outcome.
type Migration struct {
	Name     string `json:"name"`
	Revision int64  `json:"revision,omitempty"`
	VM       string `json:"vm"`
	From     string `json:"from,omitempty"` // set by the manager: the VM's host when asked
	To       string `json:"to"`
	// Transport carries the stream: tcp between host agents; the
	// one-process lab also offers pipe.
	Transport string `json:"transport,omitempty"`
	// Fault injects a failure, to prove the rollback: "refuse@prepare",
	// "refuse@resume" or "cut@<phase>". Empty in normal use.
	Fault            string           `json:"fault,omitempty"`
	State            string           `json:"state,omitempty"`
	Phases           []MigrationPhase `json:"phases,omitempty"`
	TotalMs          float64          `json:"total_ms,omitempty"`
	DowntimeMs       float64          `json:"downtime_ms,omitempty"`
	PrecopyRounds    int              `json:"precopy_rounds,omitempty"`
	BytesTransferred uint64           `json:"bytes_transferred,omitempty"`
	// CableLossAtFreeze: frames a lossy cable had dropped when the
	// freeze's count barrier stopped waiting for them (lost by the cable,
	// not by the migration).
	CableLossAtFreeze uint64 `json:"cable_loss_at_freeze,omitempty"`
	Error             string `json:"error,omitempty"`
	CreatedUnixMs     int64  `json:"created_unix_ms,omitempty"`
}

func (m *Migration) objName() string  { return m.Name }
func (m *Migration) setName(n string) { m.Name = n }
func (m *Migration) rev() int64       { return m.Revision }
func (m *Migration) setRev(r int64)   { m.Revision = r }

// Done reports whether the migration reached a final state.
func (m *Migration) Done() bool {
	return m.State == MigrationSucceeded || m.State == MigrationRolledBack || m.State == MigrationFailed
}

var migrationStates = []string{MigrationPending, MigrationRunning, MigrationSucceeded, MigrationRolledBack, MigrationFailed}

func (m *Migration) normalize() error {
	if err := checkName("migration", m.Name); err != nil {
		return err
	}
	if m.VM == "" {
		return badRequest("migration "+m.Name+" has no vm", "name the VM to move")
	}
	if m.To == "" {
		return badRequest("migration "+m.Name+" has no to", "name the destination host")
	}
	if m.State == "" {
		m.State = MigrationPending
	}
	if m.Transport == "" {
		m.Transport = "tcp"
	}
	if m.Transport != "tcp" {
		return badRequest(fmt.Sprintf("transport %q: host agents migrate over tcp", m.Transport),
			"leave transport out or set it to tcp (pipe exists only in a one-process lab)")
	}
	return checkEnum("state", m.State, migrationStates)
}

// checkMigration: a new migration needs the VM, a destination host other
// than its own with a free dynamic vNIC, and no other migration of the VM
// under way; an update may only move it forward.
func (s *Server) checkMigration(ctx context.Context, o, old object) error {
	m := o.(*Migration)
	if old != nil {
		was := old.(*Migration)
		if was.VM != m.VM || was.To != m.To || was.From != m.From || was.Fault != m.Fault {
			return badRequest("a migration's vm, from, to and fault cannot change", "create another migration")
		}
		if was.Done() && m.State != was.State {
			return apiError(http.StatusConflict, fmt.Sprintf("migration %s already ended (%s)", m.Name, was.State), "")
		}
		m.CreatedUnixMs = was.CreatedUnixMs
		return nil
	}
	if m.State != MigrationPending {
		return badRequest("a new migration is pending", `leave state out`)
	}
	vm, ok, err := getKind[VM](ctx, s, KindVMs, m.VM)
	if err != nil {
		return err
	}
	if !ok {
		return missing("VM", m.VM, "vm", "migration "+m.Name, "vmfex show vm lists the VMs")
	}
	host, ok, err := getKind[Host](ctx, s, KindHosts, m.To)
	if err != nil {
		return err
	}
	if !ok {
		return missing("host", m.To, "to", "migration "+m.Name, "vmfex host create "+m.To)
	}
	if vm.Host == host.Name {
		return apiError(http.StatusConflict, fmt.Sprintf("VM %s already runs on %s", vm.Name, host.Name), "choose another destination host")
	}
	vms, err := listKind[VM](ctx, s, KindVMs)
	if err != nil {
		return err
	}
	if on := vmsWhere(vms, func(x *VM) bool { return x.Host == host.Name }); len(on) >= host.MaxVNICs {
		return apiError(http.StatusConflict,
			fmt.Sprintf("host %s has no free dynamic vNIC: all %d are in use (VMs %s)", host.Name, host.MaxVNICs, names(on)),
			"raise max_vnics on the host, move a VM off it, or choose another destination")
	}
	migs, err := listKind[Migration](ctx, s, KindMigrations)
	if err != nil {
		return err
	}
	if i := slices.IndexFunc(migs, func(x *Migration) bool { return x.VM == m.VM && !x.Done() }); i >= 0 {
		return apiError(http.StatusConflict, fmt.Sprintf("VM %s is already migrating (%s, %s)", m.VM, migs[i].Name, migs[i].State),
			"wait for it to end: vmfex show migration "+migs[i].Name)
	}
	m.From = vm.Host
	m.CreatedUnixMs = time.Now().UnixMilli()
	return nil
}

// assignVif gives a new VM the lowest vif no other VM has: the vif of its
// vNIC on whichever host's adapter carries it (VN-Tag vifs are 12 bits).
func (s *Server) assignVif(ctx context.Context, v *VM) error {
	vms, err := listKind[VM](ctx, s, KindVMs)
	if err != nil {
		return err
	}
	used := make(map[int]bool, len(vms))
	for _, x := range vms {
		used[x.Vif] = true
	}
	for vif := 1; vif <= MaxVif; vif++ {
		if !used[vif] {
			v.Vif = vif
			return nil
		}
	}
	return apiError(http.StatusConflict, fmt.Sprintf("all %d vifs are in use", MaxVif), "delete VMs you no longer need")
}

// MaxVif is the largest vif (VN-Tag svif/dvif are 12 bits).
const MaxVif = 4095
