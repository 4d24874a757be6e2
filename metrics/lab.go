package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vmfex/vmfex/fabric"
	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/hypervisor"
	"github.com/vmfex/vmfex/lab"
	"github.com/vmfex/vmfex/vic"
)

// LabCollector reads a running lab's counters when Prometheus scrapes, so
// the datapath pays nothing per frame for being observed and no goroutine
// runs between scrapes. Every counter it reads is one the lab already keeps
// (atomics in the FI, the adapters and guest memory).
type LabCollector struct {
	src Source

	vethFrames, vethBytes, vethDrops *prometheus.Desc
	fiDrops                          *prometheus.Desc
	vnicFrames, vnicDrops            *prometheus.Desc
	adapterDrops                     *prometheus.Desc
	vnicMode                         *prometheus.Desc
	guestFrames, guestLost           *prometheus.Desc
}

// Source is what a LabCollector reads: a whole lab in one process, or the
// part of the fabric one agent runs (an FI agent has no hosts, a host
// agent no FI).
type Source interface {
	FI() *fabric.FI // nil if this process runs no FI
	Hosts() []*lab.Host
	// Views and Stats read the VMs consistently with migrations (see
	// lab.Lab.Views).
	Views() []lab.VMView
	Stats() map[uint32]guest.TrafficStats
}

// labSource is the Source of a whole lab.
type labSource struct{ l *lab.Lab }

func (s labSource) FI() *fabric.FI                       { return s.l.FI }
func (s labSource) Hosts() []*lab.Host                   { return s.l.Hosts() }
func (s labSource) Views() []lab.VMView                  { return s.l.Views() }
func (s labSource) Stats() map[uint32]guest.TrafficStats { return s.l.Stats() }

// NewLabCollector returns a collector for l; register it with a
// prometheus.Registry.
func NewLabCollector(l *lab.Lab) *LabCollector { return NewCollector(labSource{l}) }

// NewCollector returns a collector for src.
func NewCollector(src Source) *LabCollector {
	d := func(sub, name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, sub, name), help, labels, nil)
	}
	return &LabCollector{
		src:          src,
		vethFrames:   d(subsystemFI, "veth_frames_total", "Frames the FI received from (ingress) or sent towards (egress) the VM of a vEth.", "veth", "direction"),
		vethBytes:    d(subsystemFI, "veth_bytes_total", "Bytes, without the VN-Tag, the FI received from (ingress) or sent towards (egress) the VM of a vEth.", "veth", "direction"),
		vethDrops:    d(subsystemFI, "veth_drops_total", "Frames of a vEth the FI dropped, by reason.", "veth", "reason"),
		fiDrops:      d(subsystemFI, "drops_total", "Frames the FI dropped, by reason, whether or not a vEth owns the drop.", "reason"),
		vnicFrames:   d(subsystemVIC, "vnic_frames_total", "Frames a VIC vNIC sent up the uplink (tx) or wrote into guest buffers (rx).", "host", "vif", "vm", "direction"),
		vnicDrops:    d(subsystemVIC, "vnic_drops_total", "Frames a VIC vNIC lost: tx when the uplink closed, rx when the device rejected them.", "host", "vif", "vm", "direction"),
		adapterDrops: d(subsystemVIC, "adapter_drops_total", "Frames a VIC adapter dropped before any vNIC owned them, by reason.", "host", "reason"),
		vnicMode:     d(subsystemHypervisor, "vnic_mode", "1 for the mode that carries the VM's vNIC now (direct: VM-FEX on the adapter; emulated: the hypervisor's VMXNET3), 0 for the others.", "vm", "mode"),
		guestFrames:  d(subsystemGuest, "traffic_frames_total", "Probe frames a VM sent to a peer, or received from it for the first time.", "vm", "peer", "direction"),
		guestLost:    d(subsystemGuest, "traffic_lost_frames", "Probe frames the VM sent to the peer that the peer has not received (yet): frames in flight count until they arrive.", "vm", "peer"),
	}
}

// Describe sends every descriptor the collector uses.
func (c *LabCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.vethFrames, c.vethBytes, c.vethDrops, c.fiDrops,
		c.vnicFrames, c.vnicDrops, c.adapterDrops, c.vnicMode, c.guestFrames, c.guestLost} {
		ch <- d
	}
}

// vnicModes are the modes reported for every VM, so that a dashboard sees
// an explicit 0 for the mode a VM is not in rather than a missing series.
var vnicModes = []hypervisor.Mode{hypervisor.ModeDirect, hypervisor.ModeEmulated}

// Collect reads the lab's counters now.
func (c *LabCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- constMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- constMetric(d, prometheus.GaugeValue, v, labels...)
	}

	// The FI keeps every vEth's counters in the vEth object and reads them
	// under its own lock, so a rebinding during a migration neither resets
	// nor tears them.
	if fi := c.src.FI(); fi != nil {
		for _, v := range fi.VEths() {
			k := v.Counters
			counter(c.vethFrames, k.IngressFrames, v.Name, "ingress")
			counter(c.vethFrames, k.EgressFrames, v.Name, "egress")
			counter(c.vethBytes, k.IngressBytes, v.Name, "ingress")
			counter(c.vethBytes, k.EgressBytes, v.Name, "egress")
			for r, n := range k.Drops {
				counter(c.vethDrops, n, v.Name, fabric.DropReason(r).String())
			}
		}
		for r, n := range fi.Stats().Drops {
			counter(c.fiDrops, n, fabric.DropReason(r).String())
		}
	}

	hosts := make(map[string]*lab.Host)
	for _, h := range c.src.Hosts() {
		hosts[h.Name] = h
		dr := h.Adapter.Drops()
		for _, r := range []struct {
			name string
			n    uint64
		}{
			{"bad-vntag", dr.BadVNTag.Load()},
			{"unknown-vif", dr.UnknownVif.Load()},
			{"vif-list", dr.VifList.Load()},
			{"looped-self", dr.LoopedSelf.Load()},
			{"tx-tag-fail", dr.TxTagFail.Load()},
		} {
			counter(c.adapterDrops, r.n, h.Name, r.name)
		}
	}

	// Views reads each VM's host, vif and mode under the lab's lock, the
	// one a migration changes them under; the vNIC is then looked up on
	// that host's adapter (a lock-free map) rather than through the VM's
	// fields, which a migration rewrites. A vif that vanished in between
	// (a migration rolled back) is skipped for this scrape.
	views := c.src.Views()
	names := make(map[uint32]string, len(views))
	for _, v := range views {
		names[v.ID] = v.Name
		for _, m := range vnicModes {
			val := 0.0
			if v.Mode == m {
				val = 1
			}
			gauge(c.vnicMode, val, v.Name, m.String())
		}
		h := hosts[v.Host]
		if h == nil {
			continue
		}
		vn, ok := h.Adapter.VNIC(v.Vif)
		if !ok {
			continue
		}
		c.collectVNIC(counter, v, vn.Stats())
	}

	// Stats reads every VM's traffic counters under the lab's lock; they
	// live in guest memory, which moves with the VM, so they never go back.
	// Each VM's own counts of what it sent to and received from each
	// peer; "lost" needs both ends, so only pairs this process runs.
	stats := c.src.Stats()
	for id, st := range stats {
		for _, p := range st.Peers {
			counter(c.guestFrames, p.Sent.Frames, vmName(names, id), vmName(names, p.VM), "sent")
			counter(c.guestFrames, p.Received.Unique, vmName(names, id), vmName(names, p.VM), "received")
		}
	}
	for _, p := range guest.Reconcile(stats).Pairs {
		gauge(c.guestLost, float64(p.Lost), vmName(names, p.Src), vmName(names, p.Dst))
	}
}

func (c *LabCollector) collectVNIC(counter func(*prometheus.Desc, uint64, ...string), v lab.VMView, s vic.VNICStats) {
	vif := strconv.Itoa(int(v.Vif))
	counter(c.vnicFrames, s.TxFrames, v.Host, vif, v.Name, "tx")
	counter(c.vnicFrames, s.RxFrames, v.Host, vif, v.Name, "rx")
	counter(c.vnicDrops, s.TxDropped, v.Host, vif, v.Name, "tx")
	counter(c.vnicDrops, s.RxDropped, v.Host, vif, v.Name, "rx")
}

// vmName names a VM by id; a stream from or to a VM the lab no longer lists
// keeps a stable, recognisable label instead of an empty one.
func vmName(names map[uint32]string, id uint32) string {
	if n, ok := names[id]; ok {
		return n
	}
	return "vm-" + strconv.FormatUint(uint64(id), 10)
}
