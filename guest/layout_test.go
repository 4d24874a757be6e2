package guest_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/mem"
	"github.com/vmfex/vmfex/vmxnet3"
)

// TestDriverConfigRejectsWhatTheSpecForbids: ring sizes off the 32 grid or
// above 4096, an MTU outside 60..9000, an unaligned base, or a layout that
// does not fit guest memory are refused with an error naming the field.
func TestDriverConfigRejectsWhatTheSpecForbids(t *testing.T) {
	m, err := mem.New(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	ok := guest.DefaultDriverConfig()
	ok.Base = 1 << 20
	for _, tc := range []struct {
		name string
		mod  func(*guest.DriverConfig)
		want string
	}{
		{"tx-not-multiple-of-32", func(c *guest.DriverConfig) { c.TxRingSize = 100 }, "tx ring size"},
		{"tx-too-big", func(c *guest.DriverConfig) { c.TxRingSize = 8192 }, "tx ring size"},
		{"tx-zero", func(c *guest.DriverConfig) { c.TxRingSize = 0 }, "tx ring size"},
		{"rx0-odd", func(c *guest.DriverConfig) { c.RxRingSize0 = 33 }, "rx ring sizes"},
		{"rx1-too-big", func(c *guest.DriverConfig) { c.RxRingSize1 = 4128 }, "rx ring sizes"},
		{"mtu-small", func(c *guest.DriverConfig) { c.MTU = 59 }, "MTU"},
		{"mtu-big", func(c *guest.DriverConfig) { c.MTU = 9001 }, "MTU"},
		{"base-unaligned", func(c *guest.DriverConfig) { c.Base = 4097 }, "page-aligned"},
		{"does-not-fit", func(c *guest.DriverConfig) { c.Base = 3 << 20; c.TxRingSize = 4096 }, "does not fit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			dev := vmxnet3.New(m, nil, [6]byte{2}, nil)
			_, err := guest.NewDriver(m, dev.BAR0(), dev.BAR1(), c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewDriver(%+v) = %v, want an error about %q", c, err, tc.want)
			}
			if tc.name == "does-not-fit" && !errors.Is(err, guest.ErrNoRoom) {
				t.Fatalf("error %v does not wrap ErrNoRoom", err)
			}
		})
	}
	dev := vmxnet3.New(m, nil, [6]byte{2}, nil)
	if _, err := guest.NewDriver(m, dev.BAR0(), dev.BAR1(), ok); err != nil {
		t.Fatalf("the default configuration: %v", err)
	}
}

// TestLayoutAlignment: every ring sits on the spec's 512-byte boundary and
// the queue table on 128, and nothing overlaps.
func TestLayoutAlignment(t *testing.T) {
	c := guest.DefaultDriverConfig()
	c.Base = 1 << 20
	l := c.Layout()
	for _, r := range []struct {
		name string
		pa   uint64
	}{{"tx", l.TxRing}, {"tx comp", l.TxComp}, {"rx0", l.RxRing0}, {"rx1", l.RxRing1}, {"rx comp", l.RxComp}} {
		if r.pa%vmxnet3.RingBaseAlign != 0 {
			t.Errorf("%s ring at %#x is not 512-aligned", r.name, r.pa)
		}
	}
	if l.QueueDesc%vmxnet3.QueueTableAlign != 0 {
		t.Errorf("queue table at %#x is not 128-aligned", l.QueueDesc)
	}
	if !(l.State < l.Shared && l.Shared < l.QueueDesc && l.QueueDesc < l.TxRing && l.TxRing < l.TxComp &&
		l.TxComp < l.RxRing0 && l.RxRing0 < l.RxRing1 && l.RxRing1 < l.RxComp && l.RxComp < l.TxBufs &&
		l.TxBufs < l.RxBufs0 && l.RxBufs0 < l.RxBufs1 && l.RxBufs1 < l.Assembly && l.Assembly < l.End) {
		t.Fatalf("layout regions out of order or overlapping: %+v", l)
	}
	if l.RxBufSize0 < uint32(c.MTU)+18 {
		t.Errorf("HEAD buffers of %d bytes cannot hold an MTU-%d frame", l.RxBufSize0, c.MTU)
	}
}
