// Command vmfex runs a software VM Fabric Extender: Fabric Interconnect,
// VIC adapters with dynamic VMXNET3 vNICs, hosts and VMs.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "vmfex",
		Short:         "A software VM Fabric Extender (VM-FEX): VMXNET3 vNICs on a VIC, vEths on a Fabric Interconnect",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newDemoCmd(), newBenchCmd(), newManagerCmd(), newPortProfileCmd(), newHostCmd(), newFICmd(), newVMCmd(), withShowMigration(newShowCmd()), newLabCmd(), newVNICCmd(), newVMotionCmd(), newTrafficCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "vmfex:", err)
		os.Exit(1)
	}
}
