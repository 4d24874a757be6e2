// Package vmxnet3 is the VMXNET3 paravirtual NIC interface: register
// offsets, command codes, the DriverShared and queue-descriptor layouts, the
// descriptor bit layouts with generation bits, the receive filter, and the
// device model that both the VIC's dynamic vNICs and the hypervisor's
// emulated device run, meeting at the plain-data State they hand over.
//
// All layouts follow ../shared/specs/vmxnet3.md; comments cite its sections.
// Guest memory is reached only through guest/mem accessors at the named
// offsets below, never through Go struct overlays.
//
// Transmit offloads (offload.go): the device performs checksum offload
// (om 2) and TSO (om 3) over IPv4 and IPv6 as a NIC does, cutting a TSO
// packet of up to 64 KiB into MSS-sized frames with fixed-up headers and
// checksums before they leave; a TSO packet's segments leave in one
// ProcessTx batch (at most MaxTSOSegs). Receive checksums are not
// verified: every rx completion says cnc (checksum not calculated).
package vmxnet3

// PCI identity (spec §1.1).
const (
	PCIVendorVMware  = 0x15AD
	PCIDeviceVMXNET3 = 0x07B0
	PCIRevision      = 0x01
)

// BAR sizes (spec §1.2).
const (
	BAR0Size = 4096 // PT registers: IMR and doorbells
	BAR1Size = 4096 // VD registers: version, shared address, command, MAC
	BAR2Size = 8192 // MSI-X table and PBA
)

// BAR0 ("PT", pass-through) registers, stride 8 (spec §1.3).
const (
	RegIMR     = 0x000 // + 8·vector
	RegTXPROD  = 0x600 // + 8·txq
	RegRXPROD  = 0x800 // + 8·rxq, rx ring 0
	RegRXPROD2 = 0xA00 // + 8·rxq, rx ring 1
	RegStride  = 8
)

// BAR1 ("VD", virtual-device) registers (spec §1.4).
const (
	RegVRRS = 0x00
	RegUVRS = 0x08
	RegDSAL = 0x10
	RegDSAH = 0x18
	RegCMD  = 0x20
	RegMACL = 0x28
	RegMACH = 0x30
	RegICR  = 0x38
	RegECR  = 0x40
	RegDCR  = 0x48 // Rev 7, 0x48..0x80
	RegPTCR = 0x88 // Rev 7, 0x88..0xB0
)

// Revisions (spec §2.3): VRRS bit n means Rev n+1.
const (
	RevisionsSupported = 1 << 0 // this device model implements Rev 1
	UPTVersion1        = 1 << 0
)

// SET commands (spec §2.2).
const (
	CmdActivateDev       = 0xCAFE0000
	CmdQuiesceDev        = 0xCAFE0001
	CmdResetDev          = 0xCAFE0002
	CmdUpdateRxMode      = 0xCAFE0003
	CmdUpdateMACFilters  = 0xCAFE0004
	CmdUpdateVLANFilters = 0xCAFE0005
	CmdUpdateRSSIDT      = 0xCAFE0006
	CmdUpdateIML         = 0xCAFE0007
	CmdUpdatePMCfg       = 0xCAFE0008
	CmdUpdateFeature     = 0xCAFE0009
	CmdSetCoalesce       = 0xCAFE000E
	CmdRegisterMemRegs   = 0xCAFE000F
	CmdSetRSSFields      = 0xCAFE0010
	CmdSetRingBufferSize = 0xCAFE0013
)

// GET commands (spec §2.2).
const (
	CmdGetQueueStatus     = 0xF00D0000
	CmdGetStats           = 0xF00D0001
	CmdGetLink            = 0xF00D0002
	CmdGetPermMACLo       = 0xF00D0003
	CmdGetPermMACHi       = 0xF00D0004
	CmdGetDIDLo           = 0xF00D0005
	CmdGetDIDHi           = 0xF00D0006
	CmdGetDevExtraInfo    = 0xF00D0007
	CmdGetConfIntr        = 0xF00D0008
	CmdGetAdaptiveRing    = 0xF00D0009
	CmdGetTxDataDescSize  = 0xF00D000A
	CmdGetCoalesce        = 0xF00D000B
	CmdGetRSSFields       = 0xF00D000C
	CmdGetMaxQueuesConf   = 0xF00D000F
	CmdGetMaxCapabilities = 0xF00D0011
	CmdGetDCR0Reg         = 0xF00D0012
)

// GET_LINK result: bit 0 link up, bits 31..16 speed in Mb/s (spec §2.2).
const (
	LinkUp        = 1
	LinkSpeedMbps = 10000
)

// GET_CONF_INTR result fields (spec §5.1).
const (
	IntrTypeAuto = 0
	IntrTypeINTx = 1
	IntrTypeMSI  = 2
	IntrTypeMSIX = 3

	IntrMaskAuto   = 0
	IntrMaskActive = 1
	IntrMaskLazy   = 2
)

// Event bits in DriverShared.ecr (spec §5.4).
const (
	EventRQErr = 1 << 0
	EventTQErr = 1 << 1
	EventLink  = 1 << 2
	EventDIC   = 1 << 3
	EventDebug = 1 << 4
)

// Limits (spec §8, constants at a glance).
const (
	Magic            = 0xBABEFEE1
	InitGen          = 1
	DescSize         = 16
	QueueDescSize    = 256
	RingBaseAlign    = 512
	RingSizeAlign    = 32
	QueueTableAlign  = 128
	MaxTxRingSize    = 4096
	MaxRxRingSize    = 4096
	MaxRxCompSize    = 8192
	MaxTxCompSize    = 4096
	MaxTxBufLen      = 16384 // len field 0 means this
	MaxRxBufLen      = 16383
	MinHeadBufLen    = 128
	MaxTxDescPerPkt  = 16
	MaxCsumOffset    = 1024
	MinMTU           = 60
	MaxMTU           = 9000
	MaxIntrs         = 25
	MaxTxQueues      = 8
	MaxRxQueues      = 16
	VLANTableWords   = 128
	DriverSharedSize = 720
)

// TxQueueSize/RxQueueSize validity (spec §4.1).
func ValidTxRingSize(n uint32) bool {
	return n >= RingSizeAlign && n <= MaxTxRingSize && n%RingSizeAlign == 0
}

// ValidRxRingSize reports whether n is a legal rx ring 0/1 size.
func ValidRxRingSize(n uint32) bool {
	return n >= RingSizeAlign && n <= MaxRxRingSize && n%RingSizeAlign == 0
}

// Queue error codes written to status.error (spec §4.9).
const (
	QErrNoEOP        = 0x80000000
	QErrDescReuse    = 0x80000001
	QErrTooManyDescs = 0x80000002
	QErrDescType     = 0x80000003
	QErrHeadTooSmall = 0x80000004
	QErrStress       = 0x80000005
	QErrModeSwitch   = 0x80000006
	QErrInvalidDesc  = 0x80000007
)

// Receive-mode bits (spec §6).
const (
	RxModeUcast    = 0x01
	RxModeMcast    = 0x02
	RxModeBcast    = 0x04
	RxModeAllMulti = 0x08
	RxModePromisc  = 0x10
)

// uptFeatures bits (spec §3.2).
const (
	FeatureRxCsum = 1 << 0
	FeatureRSS    = 1 << 1
	FeatureRxVLAN = 1 << 2
	FeatureLRO    = 1 << 3
)

// IntrCtrl bit (spec §3.3).
const IntrCtrlDisableAll = 1

// TxPROD returns the BAR0 offset of tx queue q's doorbell.
func TxPROD(q int) uint32 { return RegTXPROD + RegStride*uint32(q) }

// RxPROD returns the BAR0 offset of rx queue q's ring-0 producer.
func RxPROD(q int) uint32 { return RegRXPROD + RegStride*uint32(q) }

// RxPROD2 returns the BAR0 offset of rx queue q's ring-1 producer.
func RxPROD2(q int) uint32 { return RegRXPROD2 + RegStride*uint32(q) }

// IMR returns the BAR0 offset of vector v's mask register.
func IMR(v int) uint32 { return RegIMR + RegStride*uint32(v) }

// MACL/MACH encodings (spec §1.4).
func MACToRegs(mac [6]byte) (lo, hi uint32) {
	lo = uint32(mac[0]) | uint32(mac[1])<<8 | uint32(mac[2])<<16 | uint32(mac[3])<<24
	hi = uint32(mac[4]) | uint32(mac[5])<<8
	return
}

// RegsToMAC decodes MACL/MACH values.
func RegsToMAC(lo, hi uint32) (mac [6]byte) {
	mac[0], mac[1], mac[2], mac[3] = byte(lo), byte(lo>>8), byte(lo>>16), byte(lo>>24)
	mac[4], mac[5] = byte(hi), byte(hi>>8)
	return
}

// BAR is a 32-bit register window (BAR0 or BAR1). Offsets are relative to
// the BAR base; only aligned 32-bit accesses exist (spec §1.2).
type BAR interface {
	Read32(off uint32) uint32
	Write32(off uint32, v uint32)
}

// InterruptSink is the guest's interrupt controller end of a device: the
// device calls Interrupt when it delivers vector v (after masking rules).
// It must not block.
type InterruptSink interface {
	Interrupt(vector int)
}
