package capture

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfex/vmfex/wire"
)

// tsharkArgs are the options every run uses: checksums are verified, and
// the AFS RX dissector, which Wireshark binds to UDP 7000-7009 and would
// read our probe payload as RX, is off so the payload shows as data.
var tsharkArgs = []string{
	"-o", "ip.check_checksum:TRUE",
	"-o", "udp.check_checksum:TRUE",
	"--disable-protocol", "rx",
}

// TestTSharkDecodesCapture writes fabric frames with our encoders and has
// TShark (protocols.md §8 used 4.0.17) decode them: the VN-Tag and 802.1Q
// fields must come out as written, checksums must be good, and nothing may
// be malformed or raise a warning.
func TestTSharkDecodesCapture(t *testing.T) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		t.Skip("tshark not on PATH")
	}

	// Frame 1 is the tag pair verified in protocols.md §1.3: word
	// 0x81238045 (from bridge, dvif 291, looped, svif 69), then PCP 5 VID 100.
	tag := wire.VNTag{FromBridge: true, DVIF: 0x123, Looped: true, SVIF: 0x045}
	if tag.Word() != 0x81238045 {
		t.Fatalf("tag word = %#08x, want 0x81238045", tag.Word())
	}
	tci := wire.TCI(5, 100)
	frames := [][]byte{
		tagged(probeFrame(t, 1, 128), &tag, &tci),
		probeFrame(t, 2, 1514),
		tagged(probeFrame(t, 3, 0), nil, &tci),
	}
	arp := make([]byte, wire.MinFrameLen)
	frames = append(frames, tagged(arp[:wire.BuildRARPAnnounce(arp, macA)], &wire.VNTag{SVIF: 7}, &tci))
	arp = make([]byte, wire.MinFrameLen)
	frames = append(frames, arp[:wire.BuildARPRequest(arp, macA, ipA, ipA)])
	icmp := make([]byte, 128)
	e := wire.ICMPEcho{Type: wire.ICMPEchoRequest, ID: 1, Seq: 1}
	frames = append(frames, icmp[:wire.BuildICMPEchoFrame(icmp, macB, macA, ipA, ipB, e, []byte("vmfex ping"))])

	path := filepath.Join(t.TempDir(), "fabric.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Now()
	for i, fr := range frames {
		if err := w.WriteFrame(ts.Add(time.Duration(i)*time.Microsecond), fr); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(tshark, append(append([]string{"-r", path}, tsharkArgs...), args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, stderr.String())
		}
		return string(out)
	}

	out := run("-c", "1", "-T", "fields",
		"-e", "vntag.dir", "-e", "vntag.src", "-e", "vntag.dst", "-e", "vlan.id",
		"-e", "ip.src", "-e", "udp.dstport",
		"-e", "ip.checksum.status", "-e", "udp.checksum.status")
	got := strings.Split(strings.TrimRight(out, "\r\n"), "\t")
	want := []string{"1", "69", "291", "100", "10.0.0.1", "7001", "1", "1"}
	if len(got) != len(want) {
		t.Fatalf("tshark fields = %q, want %q", got, want)
	}
	for i := range want {
		if !sameField(got[i], want[i]) {
			t.Errorf("tshark field %d = %q, want %q (all: %q)", i, got[i], want[i], got)
		}
	}

	if bad := run("-Y", "_ws.malformed || _ws.expert.severity >= warning"); strings.TrimSpace(bad) != "" {
		t.Errorf("tshark reports malformed frames or warnings:\n%s", bad)
	}
	if n := strings.Count(run(), "\n"); n != len(frames) {
		t.Errorf("tshark read %d frames, want %d", n, len(frames))
	}
}

// sameField compares a tshark field with the value wanted, allowing for
// the spellings of booleans and checksum status across versions.
func sameField(got, want string) bool {
	if got == want {
		return true
	}
	switch want {
	case "1":
		return strings.EqualFold(got, "true") || strings.EqualFold(got, "good")
	}
	return false
}

// tagged returns a copy of the untagged frame f with a VN-Tag and/or an
// 802.1Q tag pushed after the source MAC, VN-Tag outermost (protocols.md
// §1.1).
func tagged(f []byte, vn *wire.VNTag, tci *uint16) []byte {
	out := append([]byte(nil), f[:12]...)
	if vn != nil {
		var g [wire.VNTagLen]byte
		wire.PutVNTag(g[:], *vn)
		out = append(out, g[:]...)
	}
	if tci != nil {
		var g [wire.VLANTagLen]byte
		wire.PutVLANTag(g[:], *tci)
		out = append(out, g[:]...)
	}
	return append(out, f[12:]...)
}
