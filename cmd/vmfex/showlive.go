package main

// What the agents report, joined with the configuration: VM state, vEth
// counters and the FI's MAC address table.

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/agent"
	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
)

// live is the agents' reports.
type live struct {
	hostUp   map[string]bool // host -> its agent reports
	hostSeen map[string]bool
	running  map[string]runningVM    // VM -> where and how it runs
	veths    map[int]fabric.VEthInfo // from the FI agents that are up
	macs     []fabric.MACEntry
}

type runningVM struct {
	host string
	mode string
}

func fetchLive(ctx context.Context, c *client.Client) (*live, error) {
	var agents []manager.Agent
	if _, err := c.List(ctx, manager.KindAgents, &agents); err != nil {
		return nil, err
	}
	l := &live{hostUp: map[string]bool{}, hostSeen: map[string]bool{}, running: map[string]runningVM{}, veths: map[int]fabric.VEthInfo{}}
	now := time.Now()
	for _, a := range agents {
		up := a.Up(now)
		switch a.Role {
		case manager.RoleHost:
			l.hostSeen[a.Object] = true
			l.hostUp[a.Object] = up
			st, err := agent.HostStatusOf(a)
			if err != nil || !up {
				continue
			}
			for _, v := range st.VMs {
				l.running[v.Name] = runningVM{host: a.Object, mode: v.Mode}
			}
		case manager.RoleFI:
			st, err := agent.FIStatusOf(a)
			if err != nil || !up {
				continue
			}
			for _, v := range st.VEths {
				l.veths[int(v.ID)] = v
			}
			l.macs = append(l.macs, st.MACTable...)
		}
	}
	return l, nil
}

// vmState says whether v runs: running, down (its host's agent stopped
// reporting), stopped (the agent runs but not the VM) or unknown (no agent
// ever reported for its host).
func (l *live) vmState(v manager.VM) (state, mode, host string) {
	if r, ok := l.running[v.Name]; ok {
		return "running", r.mode, r.host
	}
	switch {
	case !l.hostSeen[v.Host]:
		return "unknown", "-", v.Host
	case !l.hostUp[v.Host]:
		return "down", "-", v.Host
	}
	return "stopped", "-", v.Host
}

// vmRow is one VM as show vm -o json reports it: its configuration, and
// what its host's agent says.
type vmRow struct {
	manager.VM
	State    string `json:"state"`
	OperMode string `json:"oper_mode,omitempty"`
	// ModeReason says why a vNIC that asked for direct cannot have it.
	ModeReason string `json:"mode_reason,omitempty"`
}

func withShowMAC(show *cobra.Command, o *clientOpts) {
	var vlan int
	cmd := &cobra.Command{
		Use:     "mac address-table [--vlan N]",
		Short:   "The MAC address table the FI agents report: VLAN, MAC, type, vEth or uplink, age",
		Example: "  vmfex show mac address-table\n  vmfex show mac address-table --vlan 100",
		Args: cobra.MatchAll(cobra.ExactArgs(1), func(_ *cobra.Command, args []string) error {
			if args[0] != "address-table" {
				return fmt.Errorf("show mac %q: did you mean show mac address-table?", args[0])
			}
			return nil
		}),
		RunE: func(cmd *cobra.Command, args []string) error {
			if vlan < 0 || vlan > manager.MaxVLAN {
				return fmt.Errorf("--vlan %d: use 1..%d", vlan, manager.MaxVLAN)
			}
			c, err := o.connect()
			if err != nil {
				return err
			}
			l, err := fetchLive(cmd.Context(), c)
			if err != nil {
				return err
			}
			var out []fabric.MACEntry
			for _, e := range l.macs {
				if vlan == 0 || int(e.VLAN) == vlan {
					out = append(out, e)
				}
			}
			if o.output == "json" {
				if out == nil {
					out = []fabric.MACEntry{}
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			var rows [][]string
			for _, e := range out {
				rows = append(rows, []string{strconv.Itoa(int(e.VLAN)), e.MAC.String(), e.Type, strconv.Itoa(int(e.Age.Seconds())), e.Port})
			}
			return table(cmd.OutOrStdout(), []string{"VLAN", "MAC Address", "Type", "Age(s)", "Port"}, rows)
		},
	}
	cmd.Flags().IntVar(&vlan, "vlan", 0, "only this VLAN")
	show.AddCommand(cmd)
}
