package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/manager"
)

func newVMCmd() *cobra.Command {
	var o clientOpts
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "Create and delete VMs; the manager gives each a vEth for its life",
	}
	addClientFlags(cmd, &o)

	var v manager.VM
	create := &cobra.Command{
		Use:     "create NAME --host H --port-profile P --mac M [--ip A]",
		Short:   "Create a VM and assign its vEth",
		Example: "  vmfex vm create web-1 --host esx1 --port-profile web --mac 00:25:b5:00:00:01 --ip 10.0.10.11",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			v.Name = args[0]
			var out manager.VM
			if err := c.Create(cmd.Context(), manager.KindVMs, &v, &out); err != nil {
				return err
			}
			if o.output == "json" {
				return printJSON(cmd.OutOrStdout(), &out)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "vm %s created, bound to Vethernet%d\n", out.Name, out.VEth)
			return err
		},
	}
	f := create.Flags()
	f.StringVar(&v.Host, "host", "", "host the VM runs on")
	f.StringVar(&v.PortProfile, "port-profile", "", "port profile of the VM's vEth")
	f.StringVar(&v.MAC, "mac", "", "unicast MAC of the VM's vNIC, e.g. 00:25:b5:00:00:01")
	f.StringVar(&v.IP, "ip", "", "IP address of the VM (informational)")
	f.IntVar(&v.MemMiB, "mem-mib", 0, "memory in MiB (default 1024)")
	f.StringVar(&v.ModeRequested, "mode", "", "direct (VMDirectPath on the adapter) or emulated (default direct)")
	f.IntVar(&v.ProbeRate, "probe-rate", 0, "probe frames/s to each peer (default 1000)")
	f.IntVar(&v.ProbeFrameLen, "probe-frame-len", 0, "probe frame length, 64..1518 (default 64)")
	f.BoolVar(&v.Traffic, "traffic", false, "start the probes as the VM boots")
	f.StringVar(&v.Guest, "guest", "", "the VM's program: probe (default) or linux (a network namespace named after the VM; its host agent needs root)")
	for _, n := range []string{"host", "port-profile", "mac"} {
		create.MarkFlagRequired(n)
	}

	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a VM (its vEth number is not reused)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			if err := c.Delete(cmd.Context(), manager.KindVMs, args[0], 0); err != nil {
				return err
			}
			return o.deleted(cmd.OutOrStdout(), "vm", args[0])
		},
	}
	cmd.AddCommand(create, del)
	return cmd
}
