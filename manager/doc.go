// Package manager is the vmfex control plane: the configuration objects (port
// profiles, hosts, Fabric Interconnects, VMs), their validation, and the HTTP
// JSON API that the CLI and agents use, on top of a store.Store.
//
// Concurrency: Server is safe for concurrent use. Mutations are serialized by
// one mutex so that checks across objects (references, max_ports, max_vnics,
// vEth numbering) and the writes they allow happen as one step; the manager
// must therefore be the store's only writer. Reads go to the store directly.
// Server starts no goroutines; net/http runs the handlers.
package manager
