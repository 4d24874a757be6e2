package lab_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmfex/vmfex/capture"
	"github.com/vmfex/vmfex/lab"
	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/wire"
)

// needTShark returns tshark's path; CI installs it, so there a missing
// tshark fails the test instead of skipping it.
func needTShark(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("tshark is not installed; run ./scripts/install-test-deps.sh")
		}
		t.Skip("tshark not installed (./scripts/install-test-deps.sh installs it)")
	}
	return p
}

// TestServerPortCaptureDecodesInTShark captures both directions of esx1's
// server-port cable and has tshark, written by others, decode every frame:
// each must be VN-Tag with the right direction and vifs, then 802.1Q with
// the VM's VLAN, then intact IPv4/UDP (checksums verified), and nothing may
// be malformed.
func TestServerPortCaptureDecodesInTShark(t *testing.T) {
	tshark := needTShark(t)
	path := filepath.Join(t.TempDir(), "esx1.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := capture.NewWriter(f, 65535)
	if err != nil {
		t.Fatal(err)
	}
	topo := lab.DemoTopology()
	topo.Traffic = lab.TrafficSpec{FrameLen: 128, Rate: 2000}
	topo.Tap = func(host string) link.TapFunc {
		if host != "esx1" {
			return nil
		}
		return func(_ bool, frame []byte) { _ = w.WriteFrame(time.Now(), frame) }
	}
	l, err := lab.Build(topo)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	l.StartTraffic()
	time.Sleep(300 * time.Millisecond) // how long traffic runs
	l.StopTraffic()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := l.Drain(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	captured := w.Stats().Captured
	if captured < 100 {
		t.Fatalf("captured only %d frames", captured)
	}

	// Who is who: by IPv4 address.
	type who struct {
		host string
		vif  uint16
		vlan uint16
	}
	byIP := map[string]who{}
	for _, vm := range l.VMs() {
		ip := fmt.Sprintf("%d.%d.%d.%d", vm.IP[0], vm.IP[1], vm.IP[2], vm.IP[3])
		byIP[ip] = who{vm.Host.Name, vm.Vif, vm.VLAN}
	}

	out, err := exec.Command(tshark, "-r", path, "-n",
		"-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
		"-T", "fields", "-E", "separator=|",
		"-e", "frame.protocols", "-e", "vntag.dir", "-e", "vntag.src", "-e", "vntag.dst", "-e", "vntag.looped",
		"-e", "vlan.id", "-e", "ip.src", "-e", "ip.dst", "-e", "udp.dstport",
		"-e", "ip.checksum.status", "-e", "udp.checksum.status", "-e", "arp.src.proto_ipv4").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if uint64(len(lines)) != captured {
		t.Fatalf("tshark decoded %d frames, we captured %d", len(lines), captured)
	}
	up, down, hairpin, arps := 0, 0, 0, 0
	byVif := map[uint16]who{}
	for _, w := range byIP {
		if w.host == "esx1" {
			byVif[w.vif] = w
		}
	}
	for i, line := range lines {
		c := strings.Split(line, "|")
		if len(c) != 12 {
			t.Fatalf("frame %d: %q", i+1, line)
		}
		if c[0] == "eth:ethertype:vntag:ethertype:vlan:ethertype:arp" {
			// A guest's boot-time ARP announcement: broadcast, flooded
			// within its VLAN only.
			arps++
			src := byIP[c[11]]
			vlan, _ := strconv.Atoi(c[5])
			svif, _ := strconv.Atoi(c[2])
			dvif, _ := strconv.Atoi(c[3])
			if src.host == "" || uint16(vlan) != src.vlan {
				t.Fatalf("frame %d: ARP from %s on VLAN %d", i+1, c[11], vlan)
			}
			if c[1] == "1" || c[1] == "True" {
				if dst, ok := byVif[uint16(dvif)]; !ok || dst.vlan != src.vlan {
					t.Fatalf("frame %d: ARP announcement of VLAN %d flooded to vif %d", i+1, src.vlan, dvif)
				}
			} else if uint16(svif) != src.vif {
				t.Fatalf("frame %d: upstream ARP with svif %d, want %d", i+1, svif, src.vif)
			}
			continue
		}
		if c[0] != "eth:ethertype:vntag:ethertype:vlan:ethertype:ip:udp:data" {
			t.Fatalf("frame %d: protocol stack %q, want VN-Tag/802.1Q/IPv4/UDP", i+1, c[0])
		}
		src, dst := byIP[c[6]], byIP[c[7]]
		if src.host == "" || dst.host == "" {
			t.Fatalf("frame %d: unknown addresses %s -> %s", i+1, c[6], c[7])
		}
		vlan, _ := strconv.Atoi(c[5])
		if uint16(vlan) != src.vlan || src.vlan != dst.vlan {
			t.Fatalf("frame %d: VLAN %d between VLAN %d and VLAN %d VMs", i+1, vlan, src.vlan, dst.vlan)
		}
		if c[8] != strconv.Itoa(wire.ProbePort) || c[9] != "1" || c[10] != "1" {
			t.Fatalf("frame %d: udp port %s, ip/udp checksum status %s/%s (1 = good)", i+1, c[8], c[9], c[10])
		}
		svif, _ := strconv.Atoi(c[2])
		dvif, _ := strconv.Atoi(c[3])
		sameHost := src.host == dst.host
		switch c[1] {
		case "0", "False": // upstream: adapter to FI
			up++
			if src.host != "esx1" || uint16(svif) != src.vif || dvif != 0 {
				t.Fatalf("frame %d: upstream svif %d dvif %d, want svif %d from %s", i+1, svif, dvif, src.vif, src.host)
			}
		case "1", "True": // downstream: FI to adapter
			down++
			if dst.host != "esx1" || uint16(dvif) != dst.vif {
				t.Fatalf("frame %d: downstream dvif %d, want %d", i+1, dvif, dst.vif)
			}
			looped := c[4] == "1" || c[4] == "True"
			if sameHost {
				hairpin++
				if !looped || uint16(svif) != src.vif {
					t.Fatalf("frame %d: hairpin frame with looped=%s svif=%d, want looped and svif %d", i+1, c[4], svif, src.vif)
				}
			} else if looped || svif != 0 {
				t.Fatalf("frame %d: frame from another server port with looped=%s svif=%d", i+1, c[4], svif)
			}
		default:
			t.Fatalf("frame %d: vntag.dir %q", i+1, c[1])
		}
	}
	if up == 0 || down == 0 || hairpin == 0 {
		t.Fatalf("up %d down %d hairpin %d: every kind must appear", up, down, hairpin)
	}

	// The "no malformed output" gate (tools.md).
	bad, err := exec.Command(tshark, "-r", path, "-n",
		"-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
		"-Y", "_ws.malformed || _ws.expert.severity >= warning").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	if s := strings.TrimSpace(string(bad)); s != "" {
		t.Fatalf("tshark flags frames:\n%s", s)
	}
	t.Logf("%d frames: %d upstream, %d downstream (%d hairpin), %d ARP announcements", len(lines), up, down, hairpin, arps)
}
