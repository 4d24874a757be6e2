// Package store is the manager's durable key-value store of JSON documents
// with one global revision: embedded on bbolt, or on an etcd cluster shared
// by active and standby managers.
//
// Objects are addressed by kind and name. Every committed change takes the
// next value of one store-wide revision counter (as in etcd), so a client can
// list at revision R and then watch for what changed after R.
//
// Concurrency: every method of Store is safe for concurrent use. A BoltStore
// (and an EtcdStore) starts one goroutine per open watch, which ends when the watch's context is
// cancelled, when the watcher falls behind, or at Close; Close waits for them.
package store
