package main

import (
	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/manager"
)

func newHostCmd() *cobra.Command {
	var o clientOpts
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Create and delete hosts (servers with a VIC adapter cabled to an FI)",
	}
	addClientFlags(cmd, &o)

	var h manager.Host
	create := &cobra.Command{
		Use:     "create NAME --fi FI --server-port EthernetS/P [--max-vnics N]",
		Short:   "Create a host",
		Example: "  vmfex host create esx1 --fi fi-a --server-port Ethernet1/1",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			h.Name = args[0]
			var out manager.Host
			if err := c.Create(cmd.Context(), manager.KindHosts, &h, &out); err != nil {
				return err
			}
			return o.created(cmd.OutOrStdout(), "host", out.Name, &out)
		},
	}
	f := create.Flags()
	f.StringVar(&h.FI, "fi", "", "Fabric Interconnect the host is cabled to")
	f.StringVar(&h.ServerPort, "server-port", "", "FI server port of the host, e.g. Ethernet1/1")
	f.IntVar(&h.MaxVNICs, "max-vnics", 0, "dynamic vNICs the host's adapter offers (default 256)")
	f.StringVar(&h.UplinkAddr, "uplink-addr", "", "the host's end of its UDP cable to the FI, ip:port (for vmfex host run)")
	f.StringVar(&h.FIAddr, "fi-addr", "", "the FI's end of that cable, ip:port (for vmfex fi run)")
	f.StringVar(&h.UplinkIf, "uplink-if", "", "or a veth cable: its end in the host agent's network namespace")
	f.StringVar(&h.FIIf, "fi-if", "", "the veth's end in the FI agent's network namespace")
	create.MarkFlagRequired("fi")
	create.MarkFlagRequired("server-port")

	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a host (refused while VMs run on it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			if err := c.Delete(cmd.Context(), manager.KindHosts, args[0], 0); err != nil {
				return err
			}
			return o.deleted(cmd.OutOrStdout(), "host", args[0])
		},
	}
	cmd.AddCommand(create, del, newHostRunCmd(&o))
	return cmd
}
