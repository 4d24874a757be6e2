package main

// The commands that act on a running `vmfex lab up`: vnic mode, vmotion and
// show migration. They take the same client flags as the manager commands;
// without --server or VMFEX_SERVER they talk to the lab's default address,
// and without a token they use the one lab up generates by default.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
)

// addLabClientFlags is addClientFlags with help that names the lab's
// defaults, which labConnect applies.
func addLabClientFlags(cmd *cobra.Command, o *clientOpts) {
	addClientFlags(cmd, o)
	f := cmd.PersistentFlags()
	f.Lookup("server").Usage = "lab API URL (default $VMFEX_SERVER, else http://" + defaultLabListen + ")"
	f.Lookup("token-file").Usage = "file holding the API token (default: $VMFEX_TOKEN, else the token vmfex lab up generates in " +
		filepath.Join(defaultLabTokenDir(), manager.TokenFileName) + ")"
}

// labConnect connects to the lab API: the flags, then the environment, then
// the defaults of `vmfex lab up`.
func (o *clientOpts) labConnect() (*client.Client, error) {
	lo := *o
	if lo.server == "" && os.Getenv("VMFEX_SERVER") == "" {
		lo.server = "http://" + defaultLabListen
	}
	if lo.tokenFile == "" && strings.TrimSpace(os.Getenv("VMFEX_TOKEN")) == "" {
		if p := filepath.Join(defaultLabTokenDir(), manager.TokenFileName); fileExists(p) {
			lo.tokenFile = p
		}
	}
	return lo.connect()
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func newVNICCmd() *cobra.Command {
	var o clientOpts
	cmd := &cobra.Command{
		Use:   "vnic",
		Short: "Act on the vNICs of a running lab (vmfex lab up)",
	}
	addLabClientFlags(cmd, &o)
	cmd.AddCommand(&cobra.Command{
		Use:     "mode VM direct|emulated",
		Short:   "Switch a VM's vNIC, live, between the adapter (direct, VM-FEX) and the hypervisor's emulated VMXNET3",
		Example: "  vmfex vnic mode web-1 emulated\n  vmfex vnic mode web-1 direct",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, ok := parseMode(args[1]); !ok {
				return fmt.Errorf("mode %q is not a vNIC mode; use direct or emulated", args[1])
			}
			c, err := o.labConnect()
			if err != nil {
				return err
			}
			var res modeResult
			err = c.Do(cmd.Context(), "POST", "/api/v1/vms/"+url.PathEscape(args[0])+"/mode", modeRequest{Mode: args[1]}, &res)
			var ce *client.Error
			if errors.As(err, &ce) && ce.Status == http.StatusNotFound && strings.HasPrefix(ce.Message, "no endpoint") {
				// Not a lab but the manager: the mode is desired state,
				// and the VM's host agent applies it.
				return managerVNICMode(cmd, c, &o, args[0], args[1])
			}
			if err != nil {
				return err
			}
			if o.output == "json" {
				return printJSON(cmd.OutOrStdout(), res)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: vNIC %s -> %s, guest paused %d µs (freeze %d, handoff %d, resume %d)\n",
				res.VM, res.Previous, res.Mode, res.PauseUs, res.FreezeUs, res.HandoffUs, res.ResumeUs)
			return err
		},
	})
	return cmd
}

// pollInterval is how often vmotion asks for progress: a migration of a
// lab VM takes tens of milliseconds, so coarser would print nothing but
// the end.
const pollInterval = 20 * time.Millisecond

func newVMotionCmd() *cobra.Command {
	var o clientOpts
	var to, transport string
	cmd := &cobra.Command{
		Use:   "vmotion VM --to HOST",
		Short: "Migrate a VM of a running lab to another host, live, printing each phase as it ends",
		Long: `vmotion starts a live migration in the lab (vmfex lab up) and follows it:
each phase prints as it ends, then a summary. It exits non-zero if the
migration rolled back (the VM still runs on its source host) or failed.`,
		Example: "  vmfex vmotion web-1 --to esx2\n  vmfex vmotion web-1 --to esx1 --transport pipe",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if transport != "tcp" && transport != "pipe" {
				return fmt.Errorf("--transport %q: use tcp or pipe", transport)
			}
			c, err := o.labConnect()
			if err != nil {
				return err
			}
			name := fmt.Sprintf("%s-%d", args[0], time.Now().UnixMilli())
			return vmotion(cmd.Context(), cmd.OutOrStdout(), c, &o, migrationRequest{Name: name, VM: args[0], To: to, Transport: transport})
		},
	}
	addLabClientFlags(cmd, &o)
	cmd.Flags().StringVar(&to, "to", "", "destination host")
	cmd.Flags().StringVar(&transport, "transport", "tcp", "migration stream: tcp (a loopback connection) or pipe (in process)")
	cmd.MarkFlagRequired("to")
	return cmd
}

func vmotion(ctx context.Context, w io.Writer, c *client.Client, o *clientOpts, req migrationRequest) error {
	var j migrationJob
	if err := c.Create(ctx, "migrations", req, &j); err != nil {
		return err
	}
	table := o.output != "json"
	if table {
		fmt.Fprintf(w, "vmotion %s: %s -> %s over %s (migration %s)\n", j.VM, j.From, j.To, orDash(j.Transport), j.Name)
	}
	printed := 0
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if table {
			for ; printed < len(j.Phases); printed++ {
				fmt.Fprintln(w, phaseLine(j.Phases[printed].Name, j.Phases[printed].EndUs))
			}
		}
		if j.Done() {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped following migration %s, which goes on: %w; follow it with vmfex show migration %s", j.Name, ctx.Err(), j.Name)
		case <-tick.C:
		}
		if err := c.Get(ctx, "migrations", j.Name, &j); err != nil {
			return fmt.Errorf("follow migration %s: %w", j.Name, err)
		}
	}
	if !table {
		if err := printJSON(w, j); err != nil {
			return err
		}
	} else if j.State == manager.MigrationSucceeded {
		fmt.Fprintf(w, "%s now runs on %s: total %.2f ms, downtime %.2f ms, %d pre-copy rounds, %s transferred\n",
			j.VM, j.To, j.TotalMs, j.DowntimeMs, j.PrecopyRounds, mib(j.BytesTransferred))
	}
	switch j.State {
	case manager.MigrationSucceeded:
		return nil
	case manager.MigrationRolledBack:
		return fmt.Errorf("migration %s rolled back; %s still runs on %s: %s", j.Name, j.VM, j.From, j.Error)
	default:
		return fmt.Errorf("migration %s %s: %s; see vmfex show migration %s and the agents' logs", j.Name, j.State, j.Error, j.Name)
	}
}

// phaseLine is one progress line: "  precopy          done at   48.34 ms".
func phaseLine(name string, endUs int64) string {
	return fmt.Sprintf("  %-16s done at %8.2f ms", name, float64(endUs)/1e3)
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// withShowMigration adds `show migration` to the show command. Its client
// flags are its own (they shadow show's) so that it gets the lab's
// defaults rather than the manager's.
func withShowMigration(show *cobra.Command) *cobra.Command {
	var o clientOpts
	cmd := &cobra.Command{
		Use:     "migration [ID]",
		Aliases: []string{"migrations"},
		Short:   "Migrations of a running lab (vmfex lab up); with ID, its phase timeline",
		Example: "  vmfex show migration\n  vmfex show migration 1 -o json",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return showMigrations(cmd, &o, args)
		},
	}
	addLabClientFlags(cmd, &o)
	show.AddCommand(cmd)
	return show
}

func showMigrations(cmd *cobra.Command, o *clientOpts, args []string) error {
	if len(args) == 1 && !manager.ValidName(args[0]) {
		return fmt.Errorf("%q is not a migration ID; vmfex show migration lists them", args[0])
	}
	c, err := o.labConnect()
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	if len(args) == 1 {
		var j migrationJob
		if err := c.Get(cmd.Context(), "migrations", args[0], &j); err != nil {
			return err
		}
		if o.output == "json" {
			return printJSON(w, j)
		}
		return showMigration(w, j)
	}
	var jobs []migrationJob
	if _, err := c.List(cmd.Context(), "migrations", &jobs); err != nil {
		return err
	}
	if o.output == "json" {
		if jobs == nil {
			jobs = []migrationJob{}
		}
		return printJSON(w, jobs)
	}
	var rows [][]string
	for _, j := range jobs {
		rows = append(rows, []string{j.Name, j.VM, j.From, j.To, orDash(j.Transport), j.State,
			fmt.Sprintf("%.2f", j.TotalMs), fmt.Sprintf("%.2f", j.DowntimeMs), strconv.Itoa(j.PrecopyRounds),
			mib(j.BytesTransferred), orDash(j.Error)})
	}
	return table(w, []string{"ID", "VM", "From", "To", "Transport", "State", "Total(ms)", "Downtime(ms)", "Rounds", "Transferred", "Error"}, rows)
}

func showMigration(w io.Writer, j migrationJob) error {
	fmt.Fprintf(w, "Migration %s: %s %s -> %s over %s, %s\n", j.Name, j.VM, j.From, j.To, orDash(j.Transport), j.State)
	if j.Done() {
		fmt.Fprintf(w, "  total %.2f ms, downtime %.2f ms, %d pre-copy rounds, %s transferred\n",
			j.TotalMs, j.DowntimeMs, j.PrecopyRounds, mib(j.BytesTransferred))
	}
	if j.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", j.Error)
	}
	fmt.Fprintln(w)
	var rows [][]string
	for _, p := range j.Phases {
		rows = append(rows, []string{p.Name, fmt.Sprintf("%.2f", float64(p.StartUs)/1e3), fmt.Sprintf("%.2f", float64(p.EndUs)/1e3),
			fmt.Sprintf("%.2f", float64(p.EndUs-p.StartUs)/1e3)})
	}
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "no phase done yet")
		return err
	}
	return table(w, []string{"Phase", "Start(ms)", "End(ms)", "Duration(ms)"}, rows)
}

// managerVNICMode sets the VM's requested mode in the manager and waits
// until its host agent reports the VM in the mode it gets.
func managerVNICMode(cmd *cobra.Command, c *client.Client, o *clientOpts, name, mode string) error {
	ctx := cmd.Context()
	var v manager.VM
	if err := c.Get(ctx, manager.KindVMs, name, &v); err != nil {
		return err
	}
	prev := v.ModeRequested
	v.ModeRequested = mode
	if err := c.Update(ctx, manager.KindVMs, name, &v, &v); err != nil {
		return err
	}
	var pp manager.PortProfile
	if err := c.Get(ctx, manager.KindPortProfiles, v.PortProfile, &pp); err != nil {
		return err
	}
	want := mode
	if mode == "direct" && !pp.HighPerformance {
		want = "emulated"
	}
	deadline := time.Now().Add(time.Minute)
	for {
		l, err := fetchLive(ctx, c)
		if err != nil {
			return err
		}
		st, oper, host := l.vmState(v)
		if st == "running" && oper == want {
			if o.output == "json" {
				return printJSON(cmd.OutOrStdout(), vmRow{VM: v, State: st, OperMode: oper})
			}
			note := ""
			if want != mode {
				note = " (port profile " + pp.Name + " is not high-performance)"
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s: vNIC mode %s -> %s; %s runs it %s%s\n", name, prev, mode, host, oper, note)
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: mode %s requested, but its host's agent reports it %s, %s after a minute; is vmfex host run %s running?", name, mode, st, oper, v.Host)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
