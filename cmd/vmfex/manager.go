package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/store"
)

type managerOpts struct {
	dataDir   string
	listen    string
	tokenFile string
	metrics   metricsListen // --metrics-listen; empty: off

	store         string        // --store: bolt ("" too) or etcd
	etcdEndpoints string        // --etcd-endpoints, comma-separated
	etcdPrefix    string        // --etcd-prefix
	advertise     string        // --advertise; "": the URL served
	electionTTL   time.Duration // --election-ttl
	tls           bool          // --tls: mutual TLS with the manager's own CA
}

func newManagerCmd() *cobra.Command {
	var o managerOpts
	cmd := &cobra.Command{
		Use:   "manager",
		Short: "Run the control-plane daemon: port profiles, hosts, FIs and VMs behind an HTTP JSON API",
		Long: `manager keeps the fabric's configuration (Fabric Interconnects, hosts, port
profiles, VMs and their vEth numbers) in DATA-DIR/manager.db, fsynced on
every change, and serves it as an HTTP JSON API under /api/v1 (described at
/api/v1/openapi.yaml).

Without --tls the API is plain HTTP and --listen must be a loopback address
or a Unix socket: the bearer token would otherwise cross the network in
clear. With --tls the manager serves HTTPS with mutual TLS on any address: it
creates its own CA and server certificate in DATA-DIR/pki on first start,
and every client (agents, the CLI) presents a certificate the CA issued
(vmfex manager issue-cert NAME) besides the token. Clients present the token
from --token-file; without that flag the manager uses DATA-DIR/token,
generating it (mode 0600) on first start, and prints where it is.

With --store etcd the objects live in an etcd cluster instead, under
--etcd-prefix, and several managers can share it: one is active (elected
through etcd) and the others are standbys, like a VSM pair. Standbys serve
reads; writes sent to a standby get 503 naming the active manager's
--advertise URL. If the active manager dies, a standby takes over after
--election-ttl. Give every manager of the cluster the same --token-file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runManager(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), o, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", "", "directory for the database and the generated token (created if missing)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:8443", "address and port to serve the API on (loopback unless --tls), or unix:/PATH for a Unix socket")
	f.BoolVar(&o.tls, "tls", false, "serve HTTPS with mutual TLS (CA and server certificate in DATA-DIR/pki, created if missing); allows any --listen address")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the API token (default: DATA-DIR/token, generated if missing)")
	f.Var(&o.metrics, "metrics-listen", metricsFlagUsage)
	f.StringVar(&o.store, "store", "bolt", "where objects are kept: bolt (DATA-DIR/manager.db) or etcd (--etcd-endpoints; active/standby managers)")
	f.StringVar(&o.etcdEndpoints, "etcd-endpoints", "http://127.0.0.1:2379", "with --store etcd: comma-separated etcd client URLs")
	f.StringVar(&o.etcdPrefix, "etcd-prefix", store.DefaultEtcdPrefix, "with --store etcd: key prefix of this fabric's objects and election")
	f.StringVar(&o.advertise, "advertise", "", "with --store etcd: the URL standbys name for this manager when it is active (default: the URL served)")
	f.DurationVar(&o.electionTTL, "election-ttl", manager.DefaultElectionTTL, "with --store etcd: how long after the active manager dies a standby takes over")
	cmd.MarkFlagRequired("data-dir")
	var certOut string
	var serverHosts []string
	issueCert := &cobra.Command{
		Use:   "issue-cert NAME --data-dir DIR [--out DIR]",
		Short: "Issue a client certificate (for an agent or a CLI user) from the manager's CA, for --tls",
		Example: `  vmfex manager issue-cert esx1 --data-dir /var/lib/vmfex
  vmfex host run esx1 --server https://fabric-mgr:8443 --ca-file ca.crt --cert-file esx1.crt --key-file esx1.key --token-file token`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.dataDir == "" {
				return errors.New("--data-dir is required: the manager's CA is in DATA-DIR/pki")
			}
			out := certOut
			if out == "" {
				out = filepath.Join(o.dataDir, manager.PKIDir, "clients")
			}
			c, k, err := manager.IssueCert(o.dataDir, args[0], out, serverHosts)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "issued %s: certificate %s, key %s; the CA is %s\n", args[0], c, k,
				filepath.Join(o.dataDir, manager.PKIDir, manager.CACertFile))
			return err
		},
	}
	issueCert.Flags().StringVar(&o.dataDir, "data-dir", "", "the manager's data directory")
	issueCert.Flags().StringVar(&certOut, "out", "", "where to write NAME.crt and NAME.key (default DATA-DIR/pki/clients)")
	issueCert.Flags().StringSliceVar(&serverHosts, "server-host", nil, "the certificate also serves TLS for these addresses or names (an FI agent's --control-tls)")
	cmd.AddCommand(issueCert)
	return cmd
}

// checkLoopback refuses addresses other than loopback ones (and unix:
// sockets), because the API is plain HTTP for now.
func checkLoopback(listen string) error {
	if strings.HasPrefix(listen, "unix:") {
		return nil
	}
	return manager.CheckLoopback(listen)
}

// runManager serves until ctx is done. If ready is not nil it receives the
// API's URL once the listener is up.
func runManager(ctx context.Context, out, logOut io.Writer, o managerOpts, ready chan<- string) error {
	if o.dataDir == "" {
		return errors.New("--data-dir is required: the manager keeps its database there")
	}
	if err := checkLoopback(o.listen); err != nil && !o.tls {
		return err
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	token, tokenPath, created, err := manager.LoadOrCreateToken(o.dataDir, o.tokenFile)
	if err != nil {
		return err
	}
	var st store.Store
	var est *store.EtcdStore // with --store etcd
	switch o.store {
	case "", "bolt":
		bst, err := store.OpenBolt(filepath.Join(o.dataDir, "manager.db"))
		if err != nil {
			return err
		}
		st = bst
	case "etcd":
		est, err = store.OpenEtcd(store.EtcdOptions{Endpoints: splitList(o.etcdEndpoints), Prefix: o.etcdPrefix})
		if err != nil {
			return err
		}
		st = est
	default:
		return fmt.Errorf("--store %q: use bolt (one manager, DATA-DIR/manager.db) or etcd (active/standby managers)", o.store)
	}
	defer st.Close()
	defer serveManagerMetrics(out, st, string(o.metrics))()
	log := slog.New(slog.NewTextHandler(logOut, nil))
	var ln net.Listener
	var url string
	if o.tls {
		host, _, err := net.SplitHostPort(o.listen)
		if err != nil {
			return fmt.Errorf("--listen %q is not HOST:PORT: %v", o.listen, err)
		}
		name, _ := os.Hostname()
		cfg, err := manager.EnsurePKI(o.dataDir, []string{host, "127.0.0.1", "::1", "localhost", name})
		if err != nil {
			return fmt.Errorf("TLS: %w", err)
		}
		tl, err := net.Listen("tcp", o.listen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w (is another manager running?)", o.listen, err)
		}
		ln, url = tls.NewListener(tl, cfg), "https://"+tl.Addr().String()
	} else {
		ln, url, err = manager.Listen(o.listen)
		if err != nil {
			return fmt.Errorf("%w (is another manager running?)", err)
		}
	}
	defer ln.Close() // Serve closes it too; this is for the errors before
	cfg := manager.Config{Store: st, Token: token, Logger: log}
	var el *manager.Election // with --store etcd
	if est != nil {
		adv := o.advertise
		if adv == "" {
			adv = url
		}
		el, err = manager.StartElection(manager.ElectionConfig{Store: est, Advertise: adv, TTL: o.electionTTL, Logger: log})
		if err != nil {
			return err
		}
		defer el.Close()
		cfg.Leader = el
	}
	srv, err := manager.New(cfg)
	if err != nil {
		return err
	}
	verb := "is in"
	if created {
		verb = "generated into"
	}
	how := "plain HTTP, loopback only"
	if o.tls {
		how = "mutual TLS; CA " + filepath.Join(o.dataDir, manager.PKIDir, manager.CACertFile) + ", client certificates from vmfex manager issue-cert"
	}
	if est == nil {
		fmt.Fprintf(out, "vmfex manager: serving %s (%s), data in %s\n", url, how, o.dataDir)
	} else {
		fmt.Fprintf(out, "vmfex manager: serving %s (%s), objects in etcd %s under %s; standby until elected active\n",
			url, how, o.etcdEndpoints, est.Prefix())
	}
	fmt.Fprintf(out, "vmfex manager: API token %s %s; clients: --server %s --token-file %s\n", verb, tokenPath, url, tokenPath)

	// Handlers, watches included, see ctx: cancelling it ends the streams
	// so that Shutdown does not wait on them.
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	if ready != nil {
		ready <- url
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	if el != nil {
		// Hand over first, so that a standby takes over without waiting
		// for the TTL; writes still in flight here get 503.
		el.Close()
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	<-errc // http.ErrServerClosed
	fmt.Fprintln(out, "vmfex manager: stopped")
	return nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
