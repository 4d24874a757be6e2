package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/manager"
)

func newPortProfileCmd() *cobra.Command {
	var o clientOpts
	cmd := &cobra.Command{
		Use:     "port-profile",
		Aliases: []string{"pp"},
		Short:   "Create, change and delete port profiles (the policy a vEth gets: VLANs, QoS, MAC forging)",
	}
	addClientFlags(cmd, &o)

	var p manager.PortProfile
	var trunk bool
	create := &cobra.Command{
		Use:   "create NAME (--access-vlan N | --trunk --allowed-vlans 10,20 [--native-vlan 10])",
		Short: "Create a port profile",
		Example: `  vmfex port-profile create web --access-vlan 10 --qos-class gold --high-performance
  vmfex port-profile create db --trunk --allowed-vlans 20,30 --native-vlan 20 --mac-forging deny`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			p.Name = args[0]
			if trunk {
				p.Mode = "trunk"
			}
			var out manager.PortProfile
			if err := c.Create(cmd.Context(), manager.KindPortProfiles, &p, &out); err != nil {
				return err
			}
			return o.created(cmd.OutOrStdout(), "port-profile", out.Name, &out)
		},
	}
	f := create.Flags()
	f.IntVar(&p.AccessVLAN, "access-vlan", 0, "VLAN of an access profile (1-4094)")
	f.BoolVar(&trunk, "trunk", false, "make a trunk profile (802.1Q tagged) carrying --allowed-vlans")
	f.IntSliceVar(&p.AllowedVLANs, "allowed-vlans", nil, "VLANs a trunk carries, comma-separated")
	f.IntVar(&p.NativeVLAN, "native-vlan", 0, "untagged VLAN of a trunk (one of --allowed-vlans)")
	f.StringVar(&p.QoSClass, "qos-class", "", "best-effort, bronze, silver, gold, platinum or fc (default best-effort)")
	f.StringVar(&p.MACForging, "mac-forging", "", "allow or deny frames from MACs the vEth does not own (default allow)")
	f.IntVar(&p.MaxPorts, "max-ports", 0, "most vEths the profile may be bound to (default 64)")
	f.BoolVar(&p.HighPerformance, "high-performance", false, "allow VMDirectPath (direct) mode on the adapter")
	f.StringVar(&p.Description, "description", "", "free text")

	var u manager.PortProfile
	update := &cobra.Command{
		Use:   "update NAME [--access-vlan N] [--allowed-vlans ..] [--native-vlan N] [--qos-class C] [--mac-forging allow|deny] [--max-ports N] [--high-performance=true|false] [--description TEXT]",
		Short: "Change a port profile; the change reaches every vEth using it, live",
		Example: `  vmfex port-profile update web --qos-class platinum
  vmfex port-profile update web --high-performance=false     # its VMs' vNICs go to the emulated path`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			var p manager.PortProfile
			if err := c.Get(cmd.Context(), manager.KindPortProfiles, args[0], &p); err != nil {
				return err
			}
			fl := cmd.Flags()
			set := func(name string, apply func()) {
				if fl.Changed(name) {
					apply()
				}
			}
			set("access-vlan", func() { p.AccessVLAN = u.AccessVLAN })
			set("allowed-vlans", func() { p.AllowedVLANs = u.AllowedVLANs })
			set("native-vlan", func() { p.NativeVLAN = u.NativeVLAN })
			set("qos-class", func() { p.QoSClass = u.QoSClass })
			set("mac-forging", func() { p.MACForging = u.MACForging })
			set("max-ports", func() { p.MaxPorts = u.MaxPorts })
			set("high-performance", func() { p.HighPerformance = u.HighPerformance })
			set("description", func() { p.Description = u.Description })
			var out manager.PortProfile
			if err := c.Update(cmd.Context(), manager.KindPortProfiles, args[0], &p, &out); err != nil {
				return err
			}
			if o.output == "json" {
				return printJSON(cmd.OutOrStdout(), &out)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "port-profile %s updated\n", out.Name)
			return err
		},
	}
	uf := update.Flags()
	uf.IntVar(&u.AccessVLAN, "access-vlan", 0, "VLAN of an access profile (1-4094)")
	uf.IntSliceVar(&u.AllowedVLANs, "allowed-vlans", nil, "VLANs a trunk carries, comma-separated")
	uf.IntVar(&u.NativeVLAN, "native-vlan", 0, "untagged VLAN of a trunk")
	uf.StringVar(&u.QoSClass, "qos-class", "", "best-effort, bronze, silver, gold, platinum or fc")
	uf.StringVar(&u.MACForging, "mac-forging", "", "allow or deny")
	uf.IntVar(&u.MaxPorts, "max-ports", 0, "most vEths the profile may be bound to")
	uf.BoolVar(&u.HighPerformance, "high-performance", false, "allow VMDirectPath (direct) mode on the adapter")
	uf.StringVar(&u.Description, "description", "", "free text")

	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a port profile (refused while VMs use it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			if err := c.Delete(cmd.Context(), manager.KindPortProfiles, args[0], 0); err != nil {
				return err
			}
			return o.deleted(cmd.OutOrStdout(), "port-profile", args[0])
		},
	}
	cmd.AddCommand(create, update, del)
	return cmd
}
