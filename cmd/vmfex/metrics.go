package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vmfex/vmfex/lab"
	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/store"
	"github.com/vmfex/vmfex/metrics"
)

// metricsListen is the value of a --metrics-listen flag. It is checked when
// the flag is parsed, so a non-loopback address fails the command before
// anything starts: /metrics is plain HTTP without a token, like the APIs.
type metricsListen string

func (m *metricsListen) String() string { return string(*m) }
func (m *metricsListen) Type() string   { return "ADDR" }
func (m *metricsListen) Set(s string) error {
	if s != "" {
		if checkLoopback(s) != nil {
			return errors.New("not a loopback HOST:PORT; /metrics is plain HTTP, so use one such as 127.0.0.1:9464")
		}
	}
	*m = metricsListen(s)
	return nil
}

const metricsFlagUsage = "loopback address and port to serve Prometheus metrics on, at /metrics (default: off)"

// serveLabMetrics serves l's metrics and the lab's migrations on addr
// (--metrics-listen), if given. Call the returned function to stop serving.
func serveLabMetrics(out io.Writer, l *lab.Lab, migrations *metrics.MigrationObserver, addr string) (stop func()) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewLabCollector(l), migrations)
	return serveMetrics(out, "lab", addr, reg)
}

// serveAgentMetrics serves an agent's fabric counters on addr
// (--metrics-listen), if given.
func serveAgentMetrics(out io.Writer, who, addr string, cs ...prometheus.Collector) (stop func()) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(cs...)
	return serveMetrics(out, who, addr, reg)
}

// serveManagerMetrics serves st's object counts and revision on addr
// (--metrics-listen), if given. Call the returned function to stop serving.
func serveManagerMetrics(out io.Writer, st store.Store, addr string) (stop func()) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewManagerCollector(st, manager.Kinds))
	return serveMetrics(out, "manager", addr, reg)
}

// serveMetrics serves reg at http://addr/metrics until stop is called; an
// empty addr serves nothing. Metrics are an aid, not the service: if addr
// cannot be bound the command says so and goes on without them.
func serveMetrics(out io.Writer, who, addr string, reg *prometheus.Registry) (stop func()) {
	if addr == "" {
		return func() {}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(out, "vmfex %s: metrics not served: listen on %s: %v; pick a free port with --metrics-listen\n", who, addr, err)
		return func() {}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = hs.Serve(ln) // http.ErrServerClosed once stop runs
	}()
	fmt.Fprintf(out, "vmfex %s: Prometheus metrics at http://%s/metrics\n", who, ln.Addr())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx) // a stuck scrape only; the listener is closed regardless
		<-done
	}
}
