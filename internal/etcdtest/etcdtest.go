// Package etcdtest starts a single-member etcd server in process, for tests
// of code that talks to etcd (the manager's store and election).
package etcdtest

import (
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Start starts a single-member etcd keeping its data in dir, on free
// loopback ports, and returns its client URL and the function that stops
// it. wait bounds the start: give race-built code on busy machines minutes.
func Start(dir string, wait time.Duration) (endpoint string, stop func(), err error) {
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	// Durability across crashes is not what tests of a client check.
	cfg.UnsafeNoFsync = true
	u, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*u}, []url.URL{*u}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*u}, []url.URL{*u}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return "", nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return "", nil, fmt.Errorf("embedded etcd failed: %w", err)
	case <-time.After(wait):
		e.Close()
		return "", nil, fmt.Errorf("embedded etcd not ready within %v", wait)
	}
	return "http://" + e.Clients[0].Addr().String(), e.Close, nil
}
