// Package manager is the vmfex control plane: the configuration objects (port
// profiles, hosts, Fabric Interconnects, VMs), the runtime objects agents
// write (agents, migrations), their validation, and the HTTP JSON API that
// the CLI and agents use, on top of a store.Store.
//
// Concurrency: Server is safe for concurrent use. Mutations are serialized by
// one mutex so that checks across objects (references, max_ports, max_vnics,
// vEth and vif numbering) and the writes they allow happen as one step; the
// active manager must therefore be the store's only writer. Several managers
// on one etcd elect one active (Election, election.go); the others answer
// writes with 503 naming it, and the store fences a manager that lost the
// role. Reads go to the store directly. Server starts no goroutines;
// StartElection starts one.
package manager
