package main

// The agents: `vmfex fi run` and `vmfex host run` run a Fabric
// Interconnect or a host as their own processes, driven by the manager.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/agent"
	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
)

// agentToken is the token an agent presents to the manager and, for the
// FI's control API, to other agents.
func (o *clientOpts) agentToken() (string, error) {
	if o.tokenFile != "" {
		return manager.LoadToken(o.tokenFile)
	}
	if t := os.Getenv("VMFEX_TOKEN"); t != "" {
		return t, nil
	}
	return "", fmt.Errorf("no API token; pass --token-file FILE (vmfex manager prints where its token file is) or set VMFEX_TOKEN")
}

// runningAgent is an FI or host agent as the commands drive it.
type runningAgent interface {
	Collectors() []prometheus.Collector
	Close() error
}

// runAgent connects to the manager, starts an agent with start, serves its
// metrics on metricsAddr (if set) and runs it until SIGINT or SIGTERM.
func runAgent(cmd *cobra.Command, o *clientOpts, who, metricsAddr string,
	start func(ctx context.Context, c *client.Client, tok string, log *slog.Logger) (runningAgent, error)) error {
	c, err := o.connect()
	if err != nil {
		return err
	}
	tok, err := o.agentToken()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
	a, err := start(ctx, c, tok, log)
	if err != nil {
		return err
	}
	stopMetrics := serveAgentMetrics(cmd.ErrOrStderr(), who, metricsAddr, a.Collectors()...)
	defer stopMetrics()
	<-ctx.Done()
	return a.Close()
}

func newFIRunCmd(o *clientOpts) *cobra.Command {
	var control string
	var controlTLS bool
	var metricsAddr metricsListen
	cmd := &cobra.Command{
		Use:   "run NAME",
		Short: "Run the Fabric Interconnect NAME as an agent of the manager",
		Long: `fi run runs a Fabric Interconnect: it takes its port profiles, server
ports (one UDP cable per host: the host's fi_addr and uplink_addr) and vEth
policy from the manager, serves the control API host agents use to attach
vEths and migrate VMs, and reports its vEths, counters and MAC table every
second. Without the manager it keeps forwarding on its last state.`,
		Example: "  vmfex fi run fi-a --server http://127.0.0.1:8443 --token-file /var/lib/vmfex/token",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAgent(cmd, o, "fi", string(metricsAddr), func(ctx context.Context, c *client.Client, tok string, log *slog.Logger) (runningAgent, error) {
				cfg := agent.FIConfig{Name: args[0], Manager: c, Token: tok, ControlListen: control, Logger: log}
				if controlTLS {
					t := o.tlsFiles()
					if t.Cert == "" {
						return nil, errors.New("--control-tls serves the FI's certificate: pass --ca-file, --cert-file and --key-file (issue it with vmfex manager issue-cert NAME --server-host ADDR)")
					}
					var err error
					if cfg.ControlTLS, err = manager.ServerTLS(t.CA, t.Cert, t.Key); err != nil {
						return nil, fmt.Errorf("--control-tls: %w", err)
					}
				}
				a, err := agent.StartFI(ctx, cfg)
				if err == nil {
					log.Info("fi agent running", "fi", args[0], "control", a.ControlURL())
				}
				return a, err
			})
		},
	}
	cmd.Flags().StringVar(&control, "control-listen", "127.0.0.1:0", "address of the control API host agents use: loopback HOST:PORT or unix:/PATH (any HOST:PORT with --control-tls)")
	cmd.Flags().BoolVar(&controlTLS, "control-tls", false, "serve the control API with mutual TLS, with this agent's --cert-file (issued with --server-host) and --ca-file")
	cmd.Flags().Var(&metricsAddr, "metrics-listen", metricsFlagUsage)
	return cmd
}

func newHostRunCmd(o *clientOpts) *cobra.Command {
	var migration string
	var metricsAddr metricsListen
	cmd := &cobra.Command{
		Use:   "run NAME",
		Short: "Run the host NAME (hypervisor, VEM, VIC adapter) as an agent of the manager",
		Long: `host run runs a host: its adapter is cabled to the FI over UDP (the host's
uplink_addr and fi_addr), it boots the VMs the manager places on it (a VM's
probe peers are the VMs of its VLAN when it boots), applies their traffic
switch and vNIC mode, runs the migrations (vmotion) of its VMs to other
host agents over TCP, and reports its VMs and their probe counters every
second. Without the manager its VMs keep running on the last state.`,
		Example: "  vmfex host run esx1 --server http://127.0.0.1:8443 --token-file /var/lib/vmfex/token",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAgent(cmd, o, "host", string(metricsAddr), func(ctx context.Context, c *client.Client, tok string, log *slog.Logger) (runningAgent, error) {
				return agent.StartHost(ctx, agent.HostConfig{Name: args[0], Manager: c, Token: tok, TLS: o.tlsFiles(),
					MigrationListen: migration, Logger: log})
			})
		},
	}
	cmd.Flags().StringVar(&migration, "migration-listen", "127.0.0.1:0", "address of the migration listener (the vMotion network)")
	cmd.Flags().Var(&metricsAddr, "metrics-listen", metricsFlagUsage)
	return cmd
}

func newTrafficCmd() *cobra.Command {
	var o clientOpts
	cmd := &cobra.Command{
		Use:   "traffic",
		Short: "Switch the probe workload of VMs on or off",
	}
	addClientFlags(cmd, &o)
	set := func(on bool) func(cmd *cobra.Command, args []string) error {
		return func(cmd *cobra.Command, args []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			var vms []manager.VM
			if _, err := c.List(cmd.Context(), manager.KindVMs, &vms); err != nil {
				return err
			}
			want := map[string]bool{}
			for _, a := range args {
				want[a] = true
			}
			n := 0
			for _, v := range vms {
				if len(args) > 0 && !want[v.Name] {
					continue
				}
				delete(want, v.Name)
				v.Traffic = on
				if err := c.Update(cmd.Context(), manager.KindVMs, v.Name, &v, nil); err != nil {
					return fmt.Errorf("vm %s: %w", v.Name, err)
				}
				n++
			}
			for name := range want {
				return fmt.Errorf("no VM %q; vmfex show vm lists them", name)
			}
			state := "off"
			if on {
				state = "on"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "traffic %s on %d VMs\n", state, n)
			return err
		}
	}
	cmd.AddCommand(&cobra.Command{Use: "start [VM...]", Short: "Start the probes of the VMs named (default: all)", RunE: set(true)},
		&cobra.Command{Use: "stop [VM...]", Short: "Stop the probes of the VMs named (default: all)", RunE: set(false)})
	return cmd
}
