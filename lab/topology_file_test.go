package lab

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestLoadTopologyDemo proves examples/demo.yaml is the demo fabric: what
// `vmfex lab up examples/demo.yaml` runs is what `vmfex demo` runs.
func TestLoadTopologyDemo(t *testing.T) {
	got, err := LoadTopology(filepath.Join("..", "examples", "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := DemoTopology()
	// The file spells out the defaults the demo leaves zero.
	for i := range want.VMs {
		want.VMs[i].MemSize = 8 << 20
	}
	want.Traffic.FrameLen = 64
	if !reflect.DeepEqual(got, want) {
		t.Errorf("examples/demo.yaml:\n%+v\nwant DemoTopology:\n%+v", got, want)
	}
	// And it builds.
	l, err := Build(got)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestLoadTopologyTrunk(t *testing.T) {
	path := writeTopology(t, `
fi: fi-b
port_profiles:
  - {name: tr, mode: trunk, allowed_vlans: [30, 20, 30], native_vlan: 20, mac_forging: allow, max_ports: 4, qos_class: gold}
hosts: [{name: h1, server_port: Ethernet1/3}]
vms: [{name: v1, host: h1, port_profile: tr, mac: 0225.b500.0001, ip: 10.0.0.1}]
traffic: {frame_size: 128, rate: 1000}
`)
	got, err := LoadTopology(path)
	if err != nil {
		t.Fatal(err)
	}
	pp := got.Profiles[0]
	if !pp.AllowForgedMAC || pp.NativeVLAN != 20 || len(pp.AllowedVLANs) != 3 || pp.MaxPorts != 4 || pp.QoSClass != "gold" {
		t.Errorf("profile %+v", pp)
	}
	if got.VMs[0].MemSize != 0 || got.VMs[0].IP != [4]byte{10, 0, 0, 1} || got.Traffic.Rate != 1000 || got.Traffic.FrameLen != 128 {
		t.Errorf("topology %+v", got)
	}
}

// TestLoadTopologyErrors checks that each mistake is refused with the
// file, the entry and what to fix.
func TestLoadTopologyErrors(t *testing.T) {
	const head = "fi: fi-a\nport_profiles: [{name: p, access_vlan: 10}]\nhosts: [{name: h1, server_port: Ethernet1/1}, {name: h2, server_port: Ethernet1/2}]\n"
	vm := func(fields string) string {
		return head + "vms: [{name: v1, host: h1, port_profile: p, mac: '00:25:b5:00:00:01', ip: 10.0.0.1" + fields + "}]\n"
	}
	cases := []struct{ name, yaml, want string }{
		{"empty", "", "empty"},
		{"unknown top key", head + "fabric: x\n", "field fabric not found"},
		{"unknown vm key", vm(", memory: 8"), "field memory not found"},
		{"bad guest", vm(", guest: windows"), `guest "windows": use probe`},
		{"no fi", "hosts: [{name: h, server_port: e}]\n", "fi is missing"},
		{"no hosts", "fi: a\n", "hosts is empty"},
		{"bad mode", "fi: a\nport_profiles: [{name: p, mode: hybrid, access_vlan: 1}]\nhosts: [{name: h, server_port: e}]\n", "port_profiles[0] (p): mode \"hybrid\": use access or trunk"},
		{"bad vlan", "fi: a\nport_profiles: [{name: p, access_vlan: 4095}]\nhosts: [{name: h, server_port: e}]\n", "access_vlan 4095"},
		{"vlan overflow", "fi: a\nport_profiles: [{name: p, access_vlan: 70000}]\nhosts: [{name: h, server_port: e}]\n", "line 2"},
		{"trunk fields on access", "fi: a\nport_profiles: [{name: p, access_vlan: 1, native_vlan: 2}]\nhosts: [{name: h, server_port: e}]\n", "set mode: trunk"},
		{"bad forging", "fi: a\nport_profiles: [{name: p, access_vlan: 1, mac_forging: maybe}]\nhosts: [{name: h, server_port: e}]\n", "use allow or deny"},
		{"dup host", "fi: a\nhosts: [{name: h, server_port: e1}, {name: h, server_port: e2}]\n", "defined twice"},
		{"dup port", "fi: a\nhosts: [{name: h, server_port: e1}, {name: g, server_port: e1}]\n", "already host h's"},
		{"unknown host", head + "vms: [{name: v1, host: h9, port_profile: p, mac: '00:25:b5:00:00:01', ip: 10.0.0.1}]\n", "vms[0] (v1): host \"h9\" is not in hosts"},
		{"unknown profile", head + "vms: [{name: v1, host: h1, port_profile: q, mac: '00:25:b5:00:00:01', ip: 10.0.0.1}]\n", "port_profile \"q\" is not in port_profiles"},
		{"bad mac", head + "vms: [{name: v1, host: h1, port_profile: p, mac: nope, ip: 10.0.0.1}]\n", "mac \"nope\""},
		{"multicast mac", head + "vms: [{name: v1, host: h1, port_profile: p, mac: '01:00:5e:00:00:01', ip: 10.0.0.1}]\n", "unicast"},
		{"bad ip", head + "vms: [{name: v1, host: h1, port_profile: p, mac: '00:25:b5:00:00:01', ip: '::1'}]\n", "IPv4"},
		{"huge memory", vm(", memory_mib: 8192"), "memory_mib 8192"},
		{"dup mac", head + "vms: [{name: v1, host: h1, port_profile: p, mac: '00:25:b5:00:00:01', ip: 10.0.0.1}, {name: v2, host: h2, port_profile: p, mac: '00:25:b5:00:00:01', ip: 10.0.0.2}]\n", "already VM v1's"},
		{"bad frame size", vm("") + "traffic: {frame_size: 20}\n", "frame_size 20"},
		{"two documents", vm("") + "---\nfi: b\n", "more than one YAML document"},
		{"not yaml", "fi: [\n", "topology"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeTopology(t, c.yaml)
			_, err := LoadTopology(path)
			if err == nil {
				t.Fatalf("loaded:\n%s", c.yaml)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q: want the file and %q", err, c.want)
			}
		})
	}
	if _, err := LoadTopology(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

func writeTopology(t *testing.T, s string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "topo.yaml")
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
