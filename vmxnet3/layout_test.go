package vmxnet3_test

// Byte-for-byte layout tests against the spec's tables
// (../shared/specs/vmxnet3.md). Every expected value below is a literal
// copied from the spec, never derived from the package's own constants, so
// a wrong constant cannot agree with itself.

import (
	"encoding/binary"
	"fmt"
	"sort"
	"testing"

	"github.com/vmfex/vmfex/vmxnet3"
)

type constCase struct {
	name      string
	got, want uint64
}

func checkConsts(t *testing.T, cases []constCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.got != c.want {
				t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
			}
		})
	}
}

// §1.1, §1.2.
func TestPCIIdentityAndBARs(t *testing.T) {
	checkConsts(t, []constCase{
		{"PCIVendorVMware", vmxnet3.PCIVendorVMware, 0x15AD},
		{"PCIDeviceVMXNET3", vmxnet3.PCIDeviceVMXNET3, 0x07B0},
		{"PCIRevision", vmxnet3.PCIRevision, 0x01},
		{"BAR0Size", vmxnet3.BAR0Size, 4096},
		{"BAR1Size", vmxnet3.BAR1Size, 4096},
		{"BAR2Size", vmxnet3.BAR2Size, 8192},
	})
}

// §1.3: IMR[i] = 0x000 + 8i (i < 25), TXPROD[q] = 0x600 + 8q (q < 8),
// RXPROD[q] = 0x800 + 8q and RXPROD2[q] = 0xA00 + 8q (q < 16).
func TestBAR0Registers(t *testing.T) {
	cases := []constCase{
		{"RegIMR", vmxnet3.RegIMR, 0x000},
		{"RegTXPROD", vmxnet3.RegTXPROD, 0x600},
		{"RegRXPROD", vmxnet3.RegRXPROD, 0x800},
		{"RegRXPROD2", vmxnet3.RegRXPROD2, 0xA00},
		{"RegStride", vmxnet3.RegStride, 8},
	}
	for i := 0; i < 25; i++ {
		cases = append(cases, constCase{fmt.Sprintf("IMR(%d)", i), uint64(vmxnet3.IMR(i)), uint64(8 * i)})
	}
	for q := 0; q < 8; q++ {
		cases = append(cases, constCase{fmt.Sprintf("TxPROD(%d)", q), uint64(vmxnet3.TxPROD(q)), uint64(0x600 + 8*q)})
	}
	for q := 0; q < 16; q++ {
		cases = append(cases,
			constCase{fmt.Sprintf("RxPROD(%d)", q), uint64(vmxnet3.RxPROD(q)), uint64(0x800 + 8*q)},
			constCase{fmt.Sprintf("RxPROD2(%d)", q), uint64(vmxnet3.RxPROD2(q)), uint64(0xA00 + 8*q)})
	}
	checkConsts(t, cases)

	// The arrays must not run into each other nor out of the 4 KiB BAR.
	t.Run("no overlap", func(t *testing.T) {
		if last := vmxnet3.IMR(24) + 4; last > vmxnet3.TxPROD(0) {
			t.Errorf("IMR(24) ends at %#x, past TxPROD(0) %#x", last, vmxnet3.TxPROD(0))
		}
		if last := vmxnet3.TxPROD(7) + 4; last > vmxnet3.RxPROD(0) {
			t.Errorf("TxPROD(7) ends at %#x, past RxPROD(0) %#x", last, vmxnet3.RxPROD(0))
		}
		if last := vmxnet3.RxPROD(15) + 4; last > vmxnet3.RxPROD2(0) {
			t.Errorf("RxPROD(15) ends at %#x, past RxPROD2(0) %#x", last, vmxnet3.RxPROD2(0))
		}
		if last := vmxnet3.RxPROD2(15) + 4; last > vmxnet3.BAR0Size {
			t.Errorf("RxPROD2(15) ends at %#x, past BAR0 size %#x", last, vmxnet3.BAR0Size)
		}
	})
}

// §1.4.
func TestBAR1Registers(t *testing.T) {
	checkConsts(t, []constCase{
		{"RegVRRS", vmxnet3.RegVRRS, 0x00},
		{"RegUVRS", vmxnet3.RegUVRS, 0x08},
		{"RegDSAL", vmxnet3.RegDSAL, 0x10},
		{"RegDSAH", vmxnet3.RegDSAH, 0x18},
		{"RegCMD", vmxnet3.RegCMD, 0x20},
		{"RegMACL", vmxnet3.RegMACL, 0x28},
		{"RegMACH", vmxnet3.RegMACH, 0x30},
		{"RegICR", vmxnet3.RegICR, 0x38},
		{"RegECR", vmxnet3.RegECR, 0x40},
		{"RegDCR", vmxnet3.RegDCR, 0x48},
		{"RegPTCR", vmxnet3.RegPTCR, 0x88},
		{"RevisionsSupported (Rev 1 = bit 0)", vmxnet3.RevisionsSupported, 1},
		{"UPTVersion1", vmxnet3.UPTVersion1, 1},
	})
}

// §2.2.
func TestCommandCodes(t *testing.T) {
	checkConsts(t, []constCase{
		{"CmdActivateDev", vmxnet3.CmdActivateDev, 0xCAFE0000},
		{"CmdQuiesceDev", vmxnet3.CmdQuiesceDev, 0xCAFE0001},
		{"CmdResetDev", vmxnet3.CmdResetDev, 0xCAFE0002},
		{"CmdUpdateRxMode", vmxnet3.CmdUpdateRxMode, 0xCAFE0003},
		{"CmdUpdateMACFilters", vmxnet3.CmdUpdateMACFilters, 0xCAFE0004},
		{"CmdUpdateVLANFilters", vmxnet3.CmdUpdateVLANFilters, 0xCAFE0005},
		{"CmdUpdateRSSIDT", vmxnet3.CmdUpdateRSSIDT, 0xCAFE0006},
		{"CmdUpdateIML", vmxnet3.CmdUpdateIML, 0xCAFE0007},
		{"CmdUpdatePMCfg", vmxnet3.CmdUpdatePMCfg, 0xCAFE0008},
		{"CmdUpdateFeature", vmxnet3.CmdUpdateFeature, 0xCAFE0009},
		{"CmdSetCoalesce", vmxnet3.CmdSetCoalesce, 0xCAFE000E},
		{"CmdRegisterMemRegs", vmxnet3.CmdRegisterMemRegs, 0xCAFE000F},
		{"CmdSetRSSFields", vmxnet3.CmdSetRSSFields, 0xCAFE0010},
		{"CmdSetRingBufferSize", vmxnet3.CmdSetRingBufferSize, 0xCAFE0013},

		{"CmdGetQueueStatus", vmxnet3.CmdGetQueueStatus, 0xF00D0000},
		{"CmdGetStats", vmxnet3.CmdGetStats, 0xF00D0001},
		{"CmdGetLink", vmxnet3.CmdGetLink, 0xF00D0002},
		{"CmdGetPermMACLo", vmxnet3.CmdGetPermMACLo, 0xF00D0003},
		{"CmdGetPermMACHi", vmxnet3.CmdGetPermMACHi, 0xF00D0004},
		{"CmdGetDIDLo", vmxnet3.CmdGetDIDLo, 0xF00D0005},
		{"CmdGetDIDHi", vmxnet3.CmdGetDIDHi, 0xF00D0006},
		{"CmdGetDevExtraInfo", vmxnet3.CmdGetDevExtraInfo, 0xF00D0007},
		{"CmdGetConfIntr", vmxnet3.CmdGetConfIntr, 0xF00D0008},
		{"CmdGetAdaptiveRing", vmxnet3.CmdGetAdaptiveRing, 0xF00D0009},
		{"CmdGetTxDataDescSize", vmxnet3.CmdGetTxDataDescSize, 0xF00D000A},
		{"CmdGetCoalesce", vmxnet3.CmdGetCoalesce, 0xF00D000B},
		{"CmdGetRSSFields", vmxnet3.CmdGetRSSFields, 0xF00D000C},
		{"CmdGetMaxQueuesConf", vmxnet3.CmdGetMaxQueuesConf, 0xF00D000F},
		{"CmdGetMaxCapabilities", vmxnet3.CmdGetMaxCapabilities, 0xF00D0011},
		{"CmdGetDCR0Reg", vmxnet3.CmdGetDCR0Reg, 0xF00D0012},

		// GET_LINK result (§2.2), GET_CONF_INTR fields (§5.1).
		{"LinkUp", vmxnet3.LinkUp, 1},
		{"LinkSpeedMbps", vmxnet3.LinkSpeedMbps, 10000},
		{"IntrTypeAuto", vmxnet3.IntrTypeAuto, 0},
		{"IntrTypeINTx", vmxnet3.IntrTypeINTx, 1},
		{"IntrTypeMSI", vmxnet3.IntrTypeMSI, 2},
		{"IntrTypeMSIX", vmxnet3.IntrTypeMSIX, 3},
		{"IntrMaskAuto", vmxnet3.IntrMaskAuto, 0},
		{"IntrMaskActive", vmxnet3.IntrMaskActive, 1},
		{"IntrMaskLazy", vmxnet3.IntrMaskLazy, 2},
	})
}

// field is one row of a layout table: name, offset, size. got is the
// package constant for the row, or -1 for rows the package does not name
// (reserved words, padding).
type field struct {
	name       string
	got        int64
	off, size  uint64
	deviceOnly bool
}

// checkTiling checks every named row's constant and that the rows tile
// [0, total) exactly: no gap, no overlap, so the tables themselves are
// consistent with the structure sizes the spec gives.
func checkTiling(t *testing.T, rows []field, total uint64) {
	t.Helper()
	for _, r := range rows {
		if r.got < 0 {
			continue
		}
		t.Run(r.name, func(t *testing.T) {
			if uint64(r.got) != r.off {
				t.Errorf("%s = %d, want %d", r.name, r.got, r.off)
			}
		})
	}
	sorted := append([]field(nil), rows...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].off < sorted[j].off })
	at := uint64(0)
	for _, r := range sorted {
		if r.off != at {
			t.Errorf("layout: %s at %d, previous field ends at %d", r.name, r.off, at)
		}
		at = r.off + r.size
	}
	if at != total {
		t.Errorf("layout ends at %d, want %d", at, total)
	}
}

// §3.1–3.4, §3.6: DriverShared is 720 bytes (800 with the Rev 6 extension).
func TestDriverSharedOffsets(t *testing.T) {
	rows := []field{
		{"DSMagic", vmxnet3.DSMagic, 0, 4, false},
		{"DSSize", vmxnet3.DSSize, 4, 4, false},
		// misc, §3.2
		{"DSDriverVersion", vmxnet3.DSDriverVersion, 8, 4, false},
		{"DSGOS", vmxnet3.DSGOS, 12, 4, false},
		{"DSRevSpt", vmxnet3.DSRevSpt, 16, 4, false},
		{"DSUPTVerSpt", vmxnet3.DSUPTVerSpt, 20, 4, false},
		{"DSUPTFeatures", vmxnet3.DSUPTFeatures, 24, 8, false},
		{"DSDDPA", vmxnet3.DSDDPA, 32, 8, false},
		{"DSQueueDescPA", vmxnet3.DSQueueDescPA, 40, 8, false},
		{"DSDDLen", vmxnet3.DSDDLen, 48, 4, false},
		{"DSQueueDescLen", vmxnet3.DSQueueDescLen, 52, 4, false},
		{"DSMTU", vmxnet3.DSMTU, 56, 4, false},
		{"DSMaxNumRxSG", vmxnet3.DSMaxNumRxSG, 60, 2, false},
		{"DSNumTxQueues", vmxnet3.DSNumTxQueues, 62, 1, false},
		{"DSNumRxQueues", vmxnet3.DSNumRxQueues, 63, 1, false},
		{"misc.reserved", -1, 64, 16, false},
		// intrConf, §3.3
		{"DSAutoMask", vmxnet3.DSAutoMask, 80, 1, false},
		{"DSNumIntrs", vmxnet3.DSNumIntrs, 81, 1, false},
		{"DSEventIntrIdx", vmxnet3.DSEventIntrIdx, 82, 1, false},
		{"DSModLevels", vmxnet3.DSModLevels, 83, 25, false},
		{"DSIntrCtrl", vmxnet3.DSIntrCtrl, 108, 4, false},
		{"intrConf.reserved", -1, 112, 8, false},
		// rxFilterConf, §3.4
		{"DSRxMode", vmxnet3.DSRxMode, 120, 4, false},
		{"DSMFTableLen", vmxnet3.DSMFTableLen, 124, 2, false},
		{"rxFilterConf.pad", -1, 126, 2, false},
		{"DSMFTablePA", vmxnet3.DSMFTablePA, 128, 8, false},
		{"DSVFTable", vmxnet3.DSVFTable, 136, 512, false},
		// §3.1
		{"DSRSSConfDesc", vmxnet3.DSRSSConfDesc, 648, 16, false},
		{"DSPMConfDesc", vmxnet3.DSPMConfDesc, 664, 16, false},
		{"DSPluginConfDesc", vmxnet3.DSPluginConfDesc, 680, 16, false},
		{"DSECR", vmxnet3.DSECR, 696, 4, true},
		{"reserved", -1, 700, 4, false},
		{"DSCmdInfo", vmxnet3.DSCmdInfo, 704, 16, false},
	}
	checkTiling(t, rows, 720)
	checkConsts(t, []constCase{
		{"DriverSharedSize", vmxnet3.DriverSharedSize, 720},
		{"DSIntrConfExt (Rev 6)", vmxnet3.DSIntrConfExt, 720},
		{"VLANTableWords", vmxnet3.VLANTableWords, 128},
		{"IntrCtrlDisableAll", vmxnet3.IntrCtrlDisableAll, 1},
		{"GOSBits64", vmxnet3.GOSBits64, 2},
		{"GOSTypeLinux", vmxnet3.GOSTypeLinux, 1},
		{"GOSShiftType", vmxnet3.GOSShiftType, 2},
	})
}

// §3.7: both queue descriptor kinds share one 256-byte frame.
func TestQueueDescOffsets(t *testing.T) {
	common := []field{
		{"ctrl.reserved", -1, 8, 8, false},
		{"QStatusStopped", vmxnet3.QStatusStopped, 80, 1, true},
		{"status.pad", -1, 81, 3, false},
		{"QStatusError", vmxnet3.QStatusError, 84, 4, true},
		{"QStats", vmxnet3.QStats, 88, 80, true},
		{"QTSConf", vmxnet3.QTSConf, 168, 16, false},
		{"tail padding", -1, 184, 72, false},
	}
	t.Run("tx", func(t *testing.T) {
		rows := append([]field{
			{"TQTxNumDeferred", vmxnet3.TQTxNumDeferred, 0, 4, false},
			{"TQTxThreshold", vmxnet3.TQTxThreshold, 4, 4, true},
			{"TQTxRingBasePA", vmxnet3.TQTxRingBasePA, 16, 8, false},
			{"TQDataRingBasePA", vmxnet3.TQDataRingBasePA, 24, 8, false},
			{"TQCompRingBasePA", vmxnet3.TQCompRingBasePA, 32, 8, false},
			{"TQDDPA", vmxnet3.TQDDPA, 40, 8, false},
			{"conf.reserved", -1, 48, 8, false},
			{"TQTxRingSize", vmxnet3.TQTxRingSize, 56, 4, false},
			{"TQDataRingSize", vmxnet3.TQDataRingSize, 60, 4, false},
			{"TQCompRingSize", vmxnet3.TQCompRingSize, 64, 4, false},
			{"TQDDLen", vmxnet3.TQDDLen, 68, 4, false},
			{"TQIntrIdx", vmxnet3.TQIntrIdx, 72, 1, false},
			{"conf.pad", -1, 73, 1, false},
			{"TQTxDataRingDescSize", vmxnet3.TQTxDataRingDescSize, 74, 2, false},
			{"conf.pad2", -1, 76, 4, false},
		}, common...)
		checkTiling(t, rows, 256)
	})
	t.Run("rx", func(t *testing.T) {
		rows := append([]field{
			{"RQUpdateRxProd", vmxnet3.RQUpdateRxProd, 0, 1, true},
			{"ctrl.pad", -1, 1, 7, false},
			{"RQRxRingBasePA0", vmxnet3.RQRxRingBasePA0, 16, 8, false},
			{"RQRxRingBasePA1", vmxnet3.RQRxRingBasePA1, 24, 8, false},
			{"RQCompRingBasePA", vmxnet3.RQCompRingBasePA, 32, 8, false},
			{"RQDDPA", vmxnet3.RQDDPA, 40, 8, false},
			{"RQRxDataRingBasePA", vmxnet3.RQRxDataRingBasePA, 48, 8, false},
			{"RQRxRingSize0", vmxnet3.RQRxRingSize0, 56, 4, false},
			{"RQRxRingSize1", vmxnet3.RQRxRingSize1, 60, 4, false},
			{"RQCompRingSize", vmxnet3.RQCompRingSize, 64, 4, false},
			{"RQDDLen", vmxnet3.RQDDLen, 68, 4, false},
			{"RQIntrIdx", vmxnet3.RQIntrIdx, 72, 1, false},
			{"conf.pad", -1, 73, 1, false},
			{"RQRxDataRingDescSize", vmxnet3.RQRxDataRingDescSize, 74, 2, false},
			{"conf.pad2", -1, 76, 4, false},
		}, common...)
		checkTiling(t, rows, 256)
	})
	checkConsts(t, []constCase{{"QueueDescSize", vmxnet3.QueueDescSize, 256}})
}

// §3.7: UPT1 counters, 10 × u64 each, in this order.
func TestUPT1CounterOrder(t *testing.T) {
	checkConsts(t, []constCase{
		{"TxStatTSOPkts", vmxnet3.TxStatTSOPkts, 0},
		{"TxStatTSOBytes", vmxnet3.TxStatTSOBytes, 1},
		{"TxStatUcastPkts", vmxnet3.TxStatUcastPkts, 2},
		{"TxStatUcastBytes", vmxnet3.TxStatUcastBytes, 3},
		{"TxStatMcastPkts", vmxnet3.TxStatMcastPkts, 4},
		{"TxStatMcastBytes", vmxnet3.TxStatMcastBytes, 5},
		{"TxStatBcastPkts", vmxnet3.TxStatBcastPkts, 6},
		{"TxStatBcastBytes", vmxnet3.TxStatBcastBytes, 7},
		{"TxStatErrors", vmxnet3.TxStatErrors, 8},
		{"TxStatDiscards", vmxnet3.TxStatDiscards, 9},
		{"RxStatLROPkts", vmxnet3.RxStatLROPkts, 0},
		{"RxStatLROBytes", vmxnet3.RxStatLROBytes, 1},
		{"RxStatUcastPkts", vmxnet3.RxStatUcastPkts, 2},
		{"RxStatUcastBytes", vmxnet3.RxStatUcastBytes, 3},
		{"RxStatMcastPkts", vmxnet3.RxStatMcastPkts, 4},
		{"RxStatMcastBytes", vmxnet3.RxStatMcastBytes, 5},
		{"RxStatBcastPkts", vmxnet3.RxStatBcastPkts, 6},
		{"RxStatBcastBytes", vmxnet3.RxStatBcastBytes, 7},
		{"RxStatOutOfBuf", vmxnet3.RxStatOutOfBuf, 8},
		{"RxStatErrors", vmxnet3.RxStatErrors, 9},
		{"NumUPT1Stats", vmxnet3.NumUPT1Stats, 10},
	})
}

// §4.9, §5.4, §6, §3.2, §8.
func TestCodesAndLimits(t *testing.T) {
	checkConsts(t, []constCase{
		{"QErrNoEOP", vmxnet3.QErrNoEOP, 0x80000000},
		{"QErrDescReuse", vmxnet3.QErrDescReuse, 0x80000001},
		{"QErrTooManyDescs", vmxnet3.QErrTooManyDescs, 0x80000002},
		{"QErrDescType", vmxnet3.QErrDescType, 0x80000003},
		{"QErrHeadTooSmall", vmxnet3.QErrHeadTooSmall, 0x80000004},
		{"QErrStress", vmxnet3.QErrStress, 0x80000005},
		{"QErrModeSwitch", vmxnet3.QErrModeSwitch, 0x80000006},
		{"QErrInvalidDesc", vmxnet3.QErrInvalidDesc, 0x80000007},

		{"EventRQErr", vmxnet3.EventRQErr, 1 << 0},
		{"EventTQErr", vmxnet3.EventTQErr, 1 << 1},
		{"EventLink", vmxnet3.EventLink, 1 << 2},
		{"EventDIC", vmxnet3.EventDIC, 1 << 3},
		{"EventDebug", vmxnet3.EventDebug, 1 << 4},

		{"RxModeUcast", vmxnet3.RxModeUcast, 0x01},
		{"RxModeMcast", vmxnet3.RxModeMcast, 0x02},
		{"RxModeBcast", vmxnet3.RxModeBcast, 0x04},
		{"RxModeAllMulti", vmxnet3.RxModeAllMulti, 0x08},
		{"RxModePromisc", vmxnet3.RxModePromisc, 0x10},

		{"FeatureRxCsum", vmxnet3.FeatureRxCsum, 1 << 0},
		{"FeatureRSS", vmxnet3.FeatureRSS, 1 << 1},
		{"FeatureRxVLAN", vmxnet3.FeatureRxVLAN, 1 << 2},
		{"FeatureLRO", vmxnet3.FeatureLRO, 1 << 3},

		{"Magic", vmxnet3.Magic, 0xBABEFEE1},
		{"Magic (decimal)", vmxnet3.Magic, 3133079265},
		{"InitGen", vmxnet3.InitGen, 1},
		{"DescSize", vmxnet3.DescSize, 16},
		{"RingBaseAlign", vmxnet3.RingBaseAlign, 512},
		{"RingSizeAlign", vmxnet3.RingSizeAlign, 32},
		{"QueueTableAlign", vmxnet3.QueueTableAlign, 128},
		{"MaxTxRingSize", vmxnet3.MaxTxRingSize, 4096},
		{"MaxRxRingSize", vmxnet3.MaxRxRingSize, 4096},
		{"MaxRxCompSize", vmxnet3.MaxRxCompSize, 8192},
		{"MaxTxCompSize", vmxnet3.MaxTxCompSize, 4096},
		{"MaxTxBufLen", vmxnet3.MaxTxBufLen, 16384},
		{"MaxRxBufLen", vmxnet3.MaxRxBufLen, 16383},
		{"MinHeadBufLen", vmxnet3.MinHeadBufLen, 128},
		{"MaxTxDescPerPkt", vmxnet3.MaxTxDescPerPkt, 16},
		{"MaxCsumOffset", vmxnet3.MaxCsumOffset, 1024},
		{"MinMTU", vmxnet3.MinMTU, 60},
		{"MaxMTU", vmxnet3.MaxMTU, 9000},
		{"MaxIntrs", vmxnet3.MaxIntrs, 25},
		{"MaxTxQueues", vmxnet3.MaxTxQueues, 8},
		{"MaxRxQueues", vmxnet3.MaxRxQueues, 16},
	})
}

// §4.1: multiple of 32, at most 4096.
func TestValidRingSize(t *testing.T) {
	for _, c := range []struct {
		n    uint32
		want bool
	}{
		{0, false}, {1, false}, {31, false}, {32, true}, {48, false}, {64, true},
		{512, true}, {4064, true}, {4095, false}, {4096, true}, {4128, false}, {1 << 31, false},
	} {
		t.Run(fmt.Sprint(c.n), func(t *testing.T) {
			if got := vmxnet3.ValidTxRingSize(c.n); got != c.want {
				t.Errorf("ValidTxRingSize(%d) = %v, want %v", c.n, got, c.want)
			}
			if got := vmxnet3.ValidRxRingSize(c.n); got != c.want {
				t.Errorf("ValidRxRingSize(%d) = %v, want %v", c.n, got, c.want)
			}
		})
	}
}

func txBytes(d vmxnet3.TxDesc) (b [16]byte) {
	addr, dw2, dw3 := d.Words()
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], dw2)
	binary.LittleEndian.PutUint32(b[12:], dw3)
	return b
}

func decodeTx(b [16]byte) vmxnet3.TxDesc {
	return vmxnet3.DecodeTxDesc(binary.LittleEndian.Uint64(b[0:]), binary.LittleEndian.Uint32(b[8:]), binary.LittleEndian.Uint32(b[12:]))
}

// bytes16 builds a descriptor image from its four little-endian words,
// each written out byte by byte in the test tables.
func bytes16(dw0, dw1, dw2, dw3 [4]byte) (b [16]byte) {
	copy(b[0:], dw0[:])
	copy(b[4:], dw1[:])
	copy(b[8:], dw2[:])
	copy(b[12:], dw3[:])
	return b
}

var z4 = [4]byte{}

// §4.2: one field at a time at its maximum, so each bit range is pinned,
// then a realistic OM_CSUM descriptor with every field set.
func TestTxDescLayout(t *testing.T) {
	cases := []struct {
		name string
		d    vmxnet3.TxDesc
		want [16]byte
	}{
		{"addr", vmxnet3.TxDesc{Addr: 0x0102030405060708, Len: 1},
			bytes16([4]byte{0x08, 0x07, 0x06, 0x05}, [4]byte{0x04, 0x03, 0x02, 0x01}, [4]byte{0x01, 0, 0, 0}, z4)},
		{"len 13..0", vmxnet3.TxDesc{Len: 0x3FFF},
			bytes16(z4, z4, [4]byte{0xFF, 0x3F, 0, 0}, z4)},
		{"gen 14", vmxnet3.TxDesc{Len: 1, Gen: true},
			bytes16(z4, z4, [4]byte{0x01, 0x40, 0, 0}, z4)},
		{"dtype 16", vmxnet3.TxDesc{Len: 1, DType: true},
			bytes16(z4, z4, [4]byte{0x01, 0, 0x01, 0}, z4)},
		{"msscof 31..18", vmxnet3.TxDesc{Len: 1, MSSCOF: 0x3FFF},
			bytes16(z4, z4, [4]byte{0x01, 0, 0xFC, 0xFF}, z4)},
		{"hlen 9..0", vmxnet3.TxDesc{Len: 1, HLen: 0x3FF},
			bytes16(z4, z4, [4]byte{0x01, 0, 0, 0}, [4]byte{0xFF, 0x03, 0, 0})},
		{"om 11..10", vmxnet3.TxDesc{Len: 1, OM: vmxnet3.OMTSO},
			bytes16(z4, z4, [4]byte{0x01, 0, 0, 0}, [4]byte{0, 0x0C, 0, 0})},
		{"om csum", vmxnet3.TxDesc{Len: 1, OM: vmxnet3.OMCsum},
			bytes16(z4, z4, [4]byte{0x01, 0, 0, 0}, [4]byte{0, 0x08, 0, 0})},
		{"om encap", vmxnet3.TxDesc{Len: 1, OM: vmxnet3.OMEncap},
			bytes16(z4, z4, [4]byte{0x01, 0, 0, 0}, [4]byte{0, 0x04, 0, 0})},
		{"eop 12", vmxnet3.TxDesc{Len: 1, EOP: true},
			bytes16(z4, z4, [4]byte{0x01, 0, 0, 0}, [4]byte{0, 0x10, 0, 0})},
		{"cq 13", vmxnet3.TxDesc{Len: 1, CQ: true},
			bytes16(z4, z4, [4]byte{0x01, 0, 0, 0}, [4]byte{0, 0x20, 0, 0})},
		{"ti 15", vmxnet3.TxDesc{Len: 1, TI: true},
			bytes16(z4, z4, [4]byte{0x01, 0, 0, 0}, [4]byte{0, 0x80, 0, 0})},
		{"tci 31..16", vmxnet3.TxDesc{Len: 1, TCI: 0xFFFF},
			bytes16(z4, z4, [4]byte{0x01, 0, 0, 0}, [4]byte{0, 0, 0xFF, 0xFF})},
		// dw2 = 0x5EA | 1<<14 | 40<<18 = 0x00A045EA;
		// dw3 = 34 | 2<<10 | 1<<12 | 1<<13 | 1<<15 | 0x64<<16 = 0x0064B822.
		{"csum packet", vmxnet3.TxDesc{Addr: 0x123456780, Len: 1514, Gen: true, MSSCOF: 40, HLen: 34,
			OM: vmxnet3.OMCsum, EOP: true, CQ: true, TI: true, TCI: 100},
			bytes16([4]byte{0x80, 0x67, 0x45, 0x23}, [4]byte{0x01, 0, 0, 0}, [4]byte{0xEA, 0x45, 0xA0, 0x00}, [4]byte{0x22, 0xB8, 0x64, 0x00})},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := txBytes(c.d); got != c.want {
				t.Errorf("TxDesc%+v.Words() bytes = % x, want % x", c.d, got, c.want)
			}
			if got := decodeTx(c.want); got != c.d {
				t.Errorf("DecodeTxDesc(% x) = %+v, want %+v", c.want, got, c.d)
			}
		})
	}
}

// §4.2: "len: buffer length (0 means 16384)".
func TestTxDescLen16384(t *testing.T) {
	d := vmxnet3.TxDesc{Addr: 0x1000, Len: vmxnet3.MaxTxBufLen, Gen: true, EOP: true}
	b := txBytes(d)
	if b[8] != 0 || b[9]&0x3F != 0 {
		t.Errorf("len 16384 encodes as dw2 bytes % x, want len field 0", b[8:12])
	}
	if got := decodeTx(b); got.Len != 16384 {
		t.Errorf("DecodeTxDesc(len field 0).Len = %d, want 16384", got.Len)
	}
	if got := vmxnet3.DecodeTxDesc(0, 0, 0).Len; got != 16384 {
		t.Errorf("DecodeTxDesc(0,0,0).Len = %d, want 16384", got)
	}
	for _, n := range []uint32{1, 60, 1514, 9018, 16383} {
		d.Len = n
		if got := decodeTx(txBytes(d)).Len; got != n {
			t.Errorf("len %d round-trips to %d", n, got)
		}
	}
}

// Fields wider than their bit range must not spill into their neighbours.
func TestTxDescNoSpill(t *testing.T) {
	for _, c := range []struct {
		name     string
		d        vmxnet3.TxDesc
		dw2, dw3 uint32
	}{
		{"hlen 0xFFFF", vmxnet3.TxDesc{Len: 1, HLen: 0xFFFF}, 0x1, 0x3FF},
		{"om 0xFF", vmxnet3.TxDesc{Len: 1, OM: 0xFF}, 0x1, 0xC00},
		{"msscof 0xFFFF", vmxnet3.TxDesc{Len: 1, MSSCOF: 0xFFFF}, 0xFFFC0001, 0},
		{"len 0xFFFFFFFF", vmxnet3.TxDesc{Len: 0xFFFFFFFF}, 0x3FFF, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, dw2, dw3 := c.d.Words()
			if dw2 != c.dw2 || dw3 != c.dw3 {
				t.Errorf("Words() dw2, dw3 = %#08x, %#08x, want %#08x, %#08x", dw2, dw3, c.dw2, c.dw3)
			}
		})
	}
}

// §4.4.
func TestRxDescLayout(t *testing.T) {
	cases := []struct {
		name string
		d    vmxnet3.RxDesc
		want [4]byte // dw2
	}{
		{"len 13..0", vmxnet3.RxDesc{Len: 0x3FFF}, [4]byte{0xFF, 0x3F, 0, 0}},
		{"btype 14", vmxnet3.RxDesc{Len: 128, Body: true}, [4]byte{0x80, 0x40, 0, 0}},
		{"dtype 15", vmxnet3.RxDesc{Len: 128, DType: true}, [4]byte{0x80, 0x80, 0, 0}},
		{"gen 31", vmxnet3.RxDesc{Len: 128, Gen: true}, [4]byte{0x80, 0, 0, 0x80}},
		{"head 1536 gen", vmxnet3.RxDesc{Addr: 0xABCD000, Len: 1536, Gen: true}, [4]byte{0x00, 0x06, 0, 0x80}},
		{"body 4096 gen", vmxnet3.RxDesc{Addr: 0x7000, Len: 4096, Body: true, Gen: true}, [4]byte{0x00, 0x50, 0, 0x80}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got [4]byte
			binary.LittleEndian.PutUint32(got[:], c.d.Word2())
			if got != c.want {
				t.Errorf("RxDesc%+v.Word2() bytes = % x, want % x", c.d, got, c.want)
			}
			if back := vmxnet3.DecodeRxDesc(c.d.Addr, binary.LittleEndian.Uint32(c.want[:])); back != c.d {
				t.Errorf("DecodeRxDesc(%#x, % x) = %+v, want %+v", c.d.Addr, c.want, back, c.d)
			}
		})
	}
	if w := (vmxnet3.RxDesc{Len: 0xFFFFFFFF}).Word2(); w != 0x3FFF {
		t.Errorf("RxDesc{Len: 0xFFFFFFFF}.Word2() = %#x, want 0x3fff (no spill)", w)
	}
}

func rxCompBytes(c vmxnet3.RxComp) (b [16]byte) {
	dw0, dw1, dw2, dw3 := c.Words()
	binary.LittleEndian.PutUint32(b[0:], dw0)
	binary.LittleEndian.PutUint32(b[4:], dw1)
	binary.LittleEndian.PutUint32(b[8:], dw2)
	binary.LittleEndian.PutUint32(b[12:], dw3)
	return b
}

// §4.5.
func TestRxCompLayout(t *testing.T) {
	cases := []struct {
		name string
		c    vmxnet3.RxComp
		want [16]byte
	}{
		{"rxdIdx 11..0", vmxnet3.RxComp{RxdIdx: 0xFFF}, bytes16([4]byte{0xFF, 0x0F, 0, 0}, z4, z4, z4)},
		{"eop 14", vmxnet3.RxComp{EOP: true}, bytes16([4]byte{0, 0x40, 0, 0}, z4, z4, z4)},
		{"sop 15", vmxnet3.RxComp{SOP: true}, bytes16([4]byte{0, 0x80, 0, 0}, z4, z4, z4)},
		{"rqID 25..16", vmxnet3.RxComp{RqID: 0x3FF}, bytes16([4]byte{0, 0, 0xFF, 0x03}, z4, z4, z4)},
		{"rssType 29..26", vmxnet3.RxComp{RSSType: 0xF}, bytes16([4]byte{0, 0, 0, 0x3C}, z4, z4, z4)},
		{"cnc 30", vmxnet3.RxComp{CNC: true}, bytes16([4]byte{0, 0, 0, 0x40}, z4, z4, z4)},
		{"rssHash dw1", vmxnet3.RxComp{RSSHash: 0xDEADBEEF}, bytes16(z4, [4]byte{0xEF, 0xBE, 0xAD, 0xDE}, z4, z4)},
		{"len 13..0", vmxnet3.RxComp{Len: 0x3FFF}, bytes16(z4, z4, [4]byte{0xFF, 0x3F, 0, 0}, z4)},
		{"err 14", vmxnet3.RxComp{Err: true}, bytes16(z4, z4, [4]byte{0, 0x40, 0, 0}, z4)},
		{"ts 15", vmxnet3.RxComp{TS: true}, bytes16(z4, z4, [4]byte{0, 0x80, 0, 0}, z4)},
		{"tci 31..16", vmxnet3.RxComp{TCI: 0xFFFF}, bytes16(z4, z4, [4]byte{0, 0, 0xFF, 0xFF}, z4)},
		{"csum 15..0", vmxnet3.RxComp{Csum: 0xBEEF}, bytes16(z4, z4, z4, [4]byte{0xEF, 0xBE, 0, 0})},
		{"flag tuc 16", vmxnet3.RxComp{Flags: vmxnet3.RxCompFlagTUC}, bytes16(z4, z4, z4, [4]byte{0, 0, 0x01, 0})},
		{"flag udp 17", vmxnet3.RxComp{Flags: vmxnet3.RxCompFlagUDP}, bytes16(z4, z4, z4, [4]byte{0, 0, 0x02, 0})},
		{"flag tcp 18", vmxnet3.RxComp{Flags: vmxnet3.RxCompFlagTCP}, bytes16(z4, z4, z4, [4]byte{0, 0, 0x04, 0})},
		{"flag ipc 19", vmxnet3.RxComp{Flags: vmxnet3.RxCompFlagIPC}, bytes16(z4, z4, z4, [4]byte{0, 0, 0x08, 0})},
		{"flag v6 20", vmxnet3.RxComp{Flags: vmxnet3.RxCompFlagV6}, bytes16(z4, z4, z4, [4]byte{0, 0, 0x10, 0})},
		{"flag v4 21", vmxnet3.RxComp{Flags: vmxnet3.RxCompFlagV4}, bytes16(z4, z4, z4, [4]byte{0, 0, 0x20, 0})},
		{"flag frg 22", vmxnet3.RxComp{Flags: vmxnet3.RxCompFlagFRG}, bytes16(z4, z4, z4, [4]byte{0, 0, 0x40, 0})},
		{"flag fcs 23", vmxnet3.RxComp{Flags: vmxnet3.RxCompFlagFCS}, bytes16(z4, z4, z4, [4]byte{0, 0, 0x80, 0})},
		{"type 30..24 = 3", vmxnet3.RxComp{Type: vmxnet3.RxCompTypeRx}, bytes16(z4, z4, z4, [4]byte{0, 0, 0, 0x03})},
		{"type LRO = 4", vmxnet3.RxComp{Type: vmxnet3.RxCompTypeLRO}, bytes16(z4, z4, z4, [4]byte{0, 0, 0, 0x04})},
		{"type 0x7F", vmxnet3.RxComp{Type: 0x7F}, bytes16(z4, z4, z4, [4]byte{0, 0, 0, 0x7F})},
		{"gen 31", vmxnet3.RxComp{Gen: true}, bytes16(z4, z4, z4, [4]byte{0, 0, 0, 0x80})},
		// dw0 = 0x123 | eop | sop | 5<<16 | 2<<26 | cnc = 0x4805C123;
		// dw2 = 1500 | ts | 0x2064<<16 = 0x206485DC;
		// dw3 = 0xBEEF | tuc | udp | v4 | 3<<24 | gen = 0x8323BEEF.
		{"full", vmxnet3.RxComp{RxdIdx: 0x123, EOP: true, SOP: true, RqID: 5, RSSType: 2, CNC: true,
			RSSHash: 0x01020304, Len: 1500, TS: true, TCI: 0x2064, Csum: 0xBEEF,
			Flags: vmxnet3.RxCompFlagTUC | vmxnet3.RxCompFlagUDP | vmxnet3.RxCompFlagV4, Type: 3, Gen: true},
			bytes16([4]byte{0x23, 0xC1, 0x05, 0x48}, [4]byte{0x04, 0x03, 0x02, 0x01}, [4]byte{0xDC, 0x85, 0x64, 0x20}, [4]byte{0xEF, 0xBE, 0x23, 0x83})},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := rxCompBytes(c.c); got != c.want {
				t.Errorf("RxComp%+v.Words() bytes = % x, want % x", c.c, got, c.want)
			}
			w := c.want
			le := binary.LittleEndian
			if got := vmxnet3.DecodeRxComp(le.Uint32(w[0:]), le.Uint32(w[4:]), le.Uint32(w[8:]), le.Uint32(w[12:])); got != c.c {
				t.Errorf("DecodeRxComp(% x) = %+v, want %+v", w, got, c.c)
			}
		})
	}
}

// §4.3 and the word offsets of §4.2–4.5 (dw0 at +0 … dw3 at +12).
func TestCompAndWordConstants(t *testing.T) {
	checkConsts(t, []constCase{
		{"TxDescAddr", vmxnet3.TxDescAddr, 0},
		{"TxDescDW2", vmxnet3.TxDescDW2, 8},
		{"TxDescDW3", vmxnet3.TxDescDW3, 12},
		{"RxDescAddr", vmxnet3.RxDescAddr, 0},
		{"RxDescDW2", vmxnet3.RxDescDW2, 8},
		{"RxCompDW0", vmxnet3.RxCompDW0, 0},
		{"RxCompDW1", vmxnet3.RxCompDW1, 4},
		{"RxCompDW2", vmxnet3.RxCompDW2, 8},
		{"RxCompDW3", vmxnet3.RxCompDW3, 12},
		{"TxCompDW0", vmxnet3.TxCompDW0, 0},
		{"TxCompDW3", vmxnet3.TxCompDW3, 12},
		{"TxCompIdxMask (bits 11..0)", vmxnet3.TxCompIdxMask, 0xFFF},
		{"CompGenBit (dw3 bit 31)", vmxnet3.CompGenBit, 0x80000000},
		{"CompTypeShift (dw3 bits 30..24)", vmxnet3.CompTypeShift, 24},
		{"CompTypeMask", vmxnet3.CompTypeMask, 0x7F},
		{"TxCompTypeTx", vmxnet3.TxCompTypeTx, 0},
		{"RxCompTypeRx", vmxnet3.RxCompTypeRx, 3},
		{"RxCompTypeLRO", vmxnet3.RxCompTypeLRO, 4},
		{"TxGenBit (dw2 bit 14)", vmxnet3.TxGenBit, 0x4000},
		{"RxGenBit (dw2 bit 31)", vmxnet3.RxGenBit, 0x80000000},
		{"OMNone", vmxnet3.OMNone, 0},
		{"OMEncap", vmxnet3.OMEncap, 1},
		{"OMCsum", vmxnet3.OMCsum, 2},
		{"OMTSO", vmxnet3.OMTSO, 3},
	})
}

// §1.4: MACL holds bytes 0..3 (byte 0 in bits 7..0), MACH bytes 4..5.
func TestMACRegs(t *testing.T) {
	for _, c := range []struct {
		mac    [6]byte
		lo, hi uint32
	}{
		{[6]byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55}, 0x33221100, 0x5544},
		{[6]byte{0x00, 0x50, 0x56, 0xAB, 0xCD, 0xEF}, 0xAB565000, 0xEFCD},
		{[6]byte{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}, 0xFFFFFFFF, 0xFFFF},
		{[6]byte{}, 0, 0},
	} {
		t.Run(fmt.Sprintf("% x", c.mac), func(t *testing.T) {
			lo, hi := vmxnet3.MACToRegs(c.mac)
			if lo != c.lo || hi != c.hi {
				t.Errorf("MACToRegs(% x) = %#x, %#x, want %#x, %#x", c.mac, lo, hi, c.lo, c.hi)
			}
			if got := vmxnet3.RegsToMAC(c.lo, c.hi); got != c.mac {
				t.Errorf("RegsToMAC(%#x, %#x) = % x, want % x", c.lo, c.hi, got, c.mac)
			}
			// MACH bits 31..16 are not part of the address.
			if got := vmxnet3.RegsToMAC(c.lo, c.hi|0xABCD0000); got != c.mac {
				t.Errorf("RegsToMAC(%#x, %#x) = % x, want % x", c.lo, c.hi|0xABCD0000, got, c.mac)
			}
		})
	}
}

// §4.6: index 0 and gen 1 after reset; advancing past the last slot wraps to
// 0 and flips gen.
func TestRingWrap(t *testing.T) {
	for _, size := range []uint32{1, 32, 512, 4096} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			r := vmxnet3.Ring{Base: 0x10000, Size: size, Next: 7, Gen: false}
			r.Reset()
			if r.Next != 0 || !r.Gen || r.GenBit() != 1 {
				t.Fatalf("after Reset: Next %d Gen %v GenBit %d, want 0 true 1", r.Next, r.Gen, r.GenBit())
			}
			gen := true
			for lap := 0; lap < 3; lap++ {
				for i := uint32(0); i < size; i++ {
					if r.Next != i || r.Gen != gen {
						t.Fatalf("lap %d step %d: Next %d Gen %v, want %d %v", lap, i, r.Next, r.Gen, i, gen)
					}
					if got, want := r.Addr(i), 0x10000+uint64(i)*16; got != want {
						t.Fatalf("Addr(%d) = %#x, want %#x", i, got, want)
					}
					r.Advance()
				}
				gen = !gen
				if r.Next != 0 || r.Gen != gen {
					t.Fatalf("after lap %d: Next %d Gen %v, want 0 %v", lap, r.Next, r.Gen, gen)
				}
				if want := map[bool]uint32{false: 0, true: 1}[gen]; r.GenBit() != want {
					t.Fatalf("GenBit() = %d, want %d", r.GenBit(), want)
				}
			}
		})
	}
}
