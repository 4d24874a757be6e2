// Package agent runs the fabric as separate processes: an FI agent (a
// Fabric Interconnect with its control API) and host agents (a hypervisor,
// VEM and VIC adapter each), joined by UDP cables and driven by the
// manager's desired state, as UCS Manager drives its FIs and vCenter its
// hosts.
//
// Each agent watches the kinds it applies and reconciles against the
// manager's lists on every change (and every DefaultReconcile in any case),
// reports itself (an Agent object with its status) every
// manager.AgentHeartbeat, and keeps forwarding on its last state while the
// manager is away (headless). Host agents migrate VMs between them over TCP
// (lab.MigrateOut, lab.ServeIncoming), asking the FI agent's control API to
// hold, rebind, claim and release the VM's vEth.
package agent
