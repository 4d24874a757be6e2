package main

import (
	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/manager"
)

func newFICmd() *cobra.Command {
	var o clientOpts
	cmd := &cobra.Command{
		Use:   "fi",
		Short: "Create and delete Fabric Interconnects",
	}
	addClientFlags(cmd, &o)
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a Fabric Interconnect",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			var out manager.FabricInterconnect
			if err := c.Create(cmd.Context(), manager.KindFabricInterconnects, &manager.FabricInterconnect{Name: args[0]}, &out); err != nil {
				return err
			}
			return o.created(cmd.OutOrStdout(), "fi", out.Name, &out)
		},
	}
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a Fabric Interconnect (refused while hosts use it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.connect()
			if err != nil {
				return err
			}
			if err := c.Delete(cmd.Context(), manager.KindFabricInterconnects, args[0], 0); err != nil {
				return err
			}
			return o.deleted(cmd.OutOrStdout(), "fi", args[0])
		},
	}
	cmd.AddCommand(create, del, newFIRunCmd(&o))
	return cmd
}
