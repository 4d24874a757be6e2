package main

import (
	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/manager"
)

func newPortProfileCmd() *cobra.Command {
	var o clientOpts
	cmd := &cobra.Command{
		Use:     "port-profile",
		Aliases: []string{"pp"},
		Short:   "Create and delete port profiles (the policy a vEth gets: VLANs, QoS, MAC forging)",
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
	cmd.AddCommand(create, del)
	return cmd
}
