package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
)

func newShowCmd() *cobra.Command {
	var o clientOpts
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the manager's configuration in NX-OS style tables (-o json for scripts)",
	}
	addClientFlags(cmd, &o)
	cmd.AddCommand(
		&cobra.Command{
			Use:     "port-profile [NAME]",
			Aliases: []string{"port-profiles"},
			Short:   "Port profiles: VLANs, QoS class, MAC forging, ports in use",
			Args:    cobra.MaximumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return showPortProfiles(cmd, &o, args)
			},
		},
		&cobra.Command{
			Use:     "vm [NAME]",
			Aliases: []string{"vms"},
			Short:   "VMs: host, port profile, vEth, MAC, IP, requested mode, and state as their host agents report it",
			Args:    cobra.MaximumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return showVMs(cmd, &o, args)
			},
		},
		&cobra.Command{
			Use:     "vethernet [N]",
			Aliases: []string{"veth"},
			Short:   "vEths, from the VMs bound to them: VM, profile, VLAN, host, requested mode",
			Example: "  vmfex show vethernet\n  vmfex show vethernet 32769",
			Args:    cobra.MaximumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return showVEths(cmd, &o, args)
			},
		},
	)
	withShowMAC(cmd, &o)
	return cmd
}

// snapshot is what the views need from the manager.
type snapshot struct {
	profiles []manager.PortProfile
	vms      []manager.VM
}

func fetch(ctx context.Context, c *client.Client, profiles, vms bool) (snapshot, error) {
	var s snapshot
	if profiles {
		if _, err := c.List(ctx, manager.KindPortProfiles, &s.profiles); err != nil {
			return s, err
		}
	}
	if vms {
		if _, err := c.List(ctx, manager.KindVMs, &s.vms); err != nil {
			return s, err
		}
	}
	return s, nil
}

func showPortProfiles(cmd *cobra.Command, o *clientOpts, args []string) error {
	c, err := o.connect()
	if err != nil {
		return err
	}
	s, err := fetch(cmd.Context(), c, true, true)
	if err != nil {
		return err
	}
	s.profiles, err = selectNamed(s.profiles, func(p manager.PortProfile) string { return p.Name }, args, "port profile", "port-profile")
	if err != nil || o.output == "json" {
		return jsonOr(cmd, err, s.profiles, args)
	}
	inUse := map[string]int{}
	for _, v := range s.vms {
		inUse[v.PortProfile]++
	}
	var rows [][]string
	for _, p := range s.profiles {
		native := "-"
		if p.NativeVLAN != 0 {
			native = strconv.Itoa(p.NativeVLAN)
		}
		rows = append(rows, []string{p.Name, p.Mode, p.VLANs(), native, p.QoSClass, p.MACForging,
			fmt.Sprintf("%d/%d", inUse[p.Name], p.MaxPorts), yesNo(p.HighPerformance), orDash(p.Description)})
	}
	return table(cmd.OutOrStdout(),
		[]string{"Port-Profile", "Mode", "VLANs", "Native", "QoS-Class", "MAC-Forging", "Ports(used/max)", "High-Perf", "Description"}, rows)
}

func showVMs(cmd *cobra.Command, o *clientOpts, args []string) error {
	c, err := o.connect()
	if err != nil {
		return err
	}
	s, err := fetch(cmd.Context(), c, true, true)
	if err != nil {
		return err
	}
	s.vms, err = selectNamed(s.vms, func(v manager.VM) string { return v.Name }, args, "VM", "vm")
	if err != nil {
		return err
	}
	l, err := fetchLive(cmd.Context(), c)
	if err != nil {
		return err
	}
	var out []vmRow
	for _, v := range s.vms {
		st, mode, host := l.vmState(v)
		if st == "running" {
			v.Host = host // where it runs, while a move is being recorded
		}
		r := vmRow{VM: v, State: st, OperMode: mode}
		if i := slices.IndexFunc(s.profiles, func(p manager.PortProfile) bool { return p.Name == v.PortProfile }); i >= 0 &&
			v.ModeRequested == "direct" && !s.profiles[i].HighPerformance {
			// As UCS Manager does: a vNIC asks for VMDirectPath, its
			// profile decides.
			r.ModeReason = "port profile " + v.PortProfile + " is not high-performance"
		}
		out = append(out, r)
	}
	if o.output == "json" {
		return jsonOr(cmd, nil, out, args)
	}
	var rows [][]string
	for _, r := range out {
		v := r.VM
		oper := r.OperMode
		if r.ModeReason != "" && oper == "emulated" {
			oper += " (" + r.ModeReason + ")"
		}
		rows = append(rows, []string{v.Name, v.Host, v.PortProfile, vethName(v.VEth), v.MAC, orDash(v.IP),
			strconv.Itoa(v.MemMiB), v.ModeRequested, r.State, oper})
	}
	return table(cmd.OutOrStdout(), []string{"VM", "Host", "Port-Profile", "Interface", "MAC", "IP", "Mem(MiB)", "Mode", "State", "Oper-Mode"}, rows)
}

// vethRow is one vEth as show vethernet reports it.
type vethRow struct {
	VEth          int    `json:"veth"`
	Interface     string `json:"interface"`
	VM            string `json:"vm"`
	PortProfile   string `json:"port_profile"`
	VLAN          string `json:"vlan"` // access VLAN, or the trunk's allowed VLANs
	Host          string `json:"host"`
	ModeRequested string `json:"mode_requested"`
	// From the FI agent, when one reports the vEth.
	State    string               `json:"state,omitempty"` // up or down
	Counters *fabric.VEthCounters `json:"counters,omitempty"`
}

func vethName(n int) string { return "Veth" + strconv.Itoa(n) }

// parseVEth accepts 32769, Veth32769 and Vethernet32769.
func parseVEth(s string) (int, error) {
	t := strings.ToLower(s)
	t = strings.TrimPrefix(t, "vethernet")
	t = strings.TrimPrefix(t, "veth")
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a vEth; give its number, e.g. %d or Veth%d", s, manager.FirstVEth, manager.FirstVEth)
	}
	return n, nil
}

func showVEths(cmd *cobra.Command, o *clientOpts, args []string) error {
	want := 0
	if len(args) == 1 {
		var err error
		if want, err = parseVEth(args[0]); err != nil {
			return err
		}
	}
	c, err := o.connect()
	if err != nil {
		return err
	}
	s, err := fetch(cmd.Context(), c, true, true)
	if err != nil {
		return err
	}
	l, err := fetchLive(cmd.Context(), c)
	if err != nil {
		return err
	}
	profiles := map[string]manager.PortProfile{}
	for _, p := range s.profiles {
		profiles[p.Name] = p
	}
	var rows []vethRow
	for _, v := range s.vms {
		if want != 0 && v.VEth != want {
			continue
		}
		vlan := "-"
		if p, ok := profiles[v.PortProfile]; ok {
			vlan = p.VLANs()
			if p.Mode == "trunk" {
				vlan = "trunk " + vlan
			}
		}
		r := vethRow{VEth: v.VEth, Interface: vethName(v.VEth), VM: v.Name, PortProfile: v.PortProfile,
			VLAN: vlan, Host: v.Host, ModeRequested: v.ModeRequested}
		if info, ok := l.veths[v.VEth]; ok {
			r.State, r.Counters = info.State.String(), &info.Counters
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b vethRow) int { return a.VEth - b.VEth })
	if want != 0 && len(rows) == 0 {
		return fmt.Errorf("vEth %d not found; vmfex show vethernet lists them", want)
	}
	if o.output == "json" {
		if want != 0 {
			return printJSON(cmd.OutOrStdout(), rows[0])
		}
		if rows == nil {
			rows = []vethRow{}
		}
		return printJSON(cmd.OutOrStdout(), rows)
	}
	var tr [][]string
	withCounters := len(l.veths) > 0
	for _, r := range rows {
		row := []string{r.Interface, r.VM, r.PortProfile, r.VLAN, r.Host, r.ModeRequested}
		if withCounters {
			if r.Counters != nil {
				row = append(row, r.State, strconv.FormatUint(r.Counters.IngressFrames, 10),
					strconv.FormatUint(r.Counters.EgressFrames, 10), strconv.FormatUint(r.Counters.Drops.Total(), 10))
			} else {
				row = append(row, "-", "-", "-", "-")
			}
		}
		tr = append(tr, row)
	}
	header := []string{"Interface", "VM", "Port-Profile", "VLAN", "Host", "Mode"}
	if withCounters {
		header = append(header, "State", "In-Frames", "Out-Frames", "Drops")
	}
	return table(cmd.OutOrStdout(), header, tr)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// selectNamed keeps the item named args[0], if a name was given; what and
// view name the object and its show command in the error.
func selectNamed[T any](items []T, name func(T) string, args []string, what, view string) ([]T, error) {
	if len(args) == 0 {
		return items, nil
	}
	i := slices.IndexFunc(items, func(x T) bool { return name(x) == args[0] })
	if i < 0 {
		return nil, fmt.Errorf("%s %q not found; vmfex show %s lists them", what, args[0], view)
	}
	return items[i : i+1], nil
}

// jsonOr returns err, or prints items as JSON: the one object when a name
// was asked for, else the list.
func jsonOr[T any](cmd *cobra.Command, err error, items []T, args []string) error {
	if err != nil {
		return err
	}
	if len(args) == 1 {
		return printJSON(cmd.OutOrStdout(), items[0])
	}
	return printJSON(cmd.OutOrStdout(), items)
}
