package vmxnet3

// DriverShared offsets, absolute from the DriverShared PA (spec §3.1–3.4).
const (
	DSMagic = 0
	DSSize  = 4 // pad (newest headers: size)

	// devRead.misc (spec §3.2)
	DSDriverVersion = 8
	DSGOS           = 12
	DSRevSpt        = 16
	DSUPTVerSpt     = 20
	DSUPTFeatures   = 24 // u64
	DSDDPA          = 32 // u64
	DSQueueDescPA   = 40 // u64
	DSDDLen         = 48
	DSQueueDescLen  = 52
	DSMTU           = 56
	DSMaxNumRxSG    = 60 // u16
	DSNumTxQueues   = 62 // u8
	DSNumRxQueues   = 63 // u8

	// devRead.intrConf (spec §3.3)
	DSAutoMask     = 80 // u8
	DSNumIntrs     = 81 // u8
	DSEventIntrIdx = 82 // u8
	DSModLevels    = 83 // [25]u8
	DSIntrCtrl     = 108

	// devRead.rxFilterConf (spec §3.4)
	DSRxMode     = 120
	DSMFTableLen = 124 // u16
	DSMFTablePA  = 128 // u64
	DSVFTable    = 136 // [128]u32

	DSRSSConfDesc    = 648
	DSPMConfDesc     = 664
	DSPluginConfDesc = 680
	DSECR            = 696 // device-written
	DSCmdInfo        = 704
	DSIntrConfExt    = 720 // Rev 6 only
)

// gosType values in driverInfo.gos bits 5..2 (spec §3.2).
const (
	GOSBits64    = 2
	GOSTypeLinux = 1
	GOSShiftType = 2
)

// Queue descriptor entry offsets, inside a 256-byte TxQueueDesc/RxQueueDesc
// (spec §3.7). "D" marks device-written fields.
const (
	// Tx
	TQTxNumDeferred      = 0
	TQTxThreshold        = 4 // D
	TQTxRingBasePA       = 16
	TQDataRingBasePA     = 24
	TQCompRingBasePA     = 32
	TQDDPA               = 40
	TQTxRingSize         = 56
	TQDataRingSize       = 60
	TQCompRingSize       = 64
	TQDDLen              = 68
	TQIntrIdx            = 72
	TQTxDataRingDescSize = 74

	// Rx
	RQUpdateRxProd       = 0 // u8, D
	RQRxRingBasePA0      = 16
	RQRxRingBasePA1      = 24
	RQCompRingBasePA     = 32
	RQDDPA               = 40
	RQRxDataRingBasePA   = 48
	RQRxRingSize0        = 56
	RQRxRingSize1        = 60
	RQCompRingSize       = 64
	RQDDLen              = 68
	RQIntrIdx            = 72
	RQRxDataRingDescSize = 74

	// Both
	QStatusStopped = 80 // u8, D
	QStatusError   = 84 // D
	QStats         = 88 // 10 × u64, D
	QTSConf        = 168
)

// UPT1 counters, in queue-descriptor order (spec §3.7).
const (
	TxStatTSOPkts = iota
	TxStatTSOBytes
	TxStatUcastPkts
	TxStatUcastBytes
	TxStatMcastPkts
	TxStatMcastBytes
	TxStatBcastPkts
	TxStatBcastBytes
	TxStatErrors
	TxStatDiscards
	NumUPT1Stats
)

// Rx UPT1 counter indices.
const (
	RxStatLROPkts = iota
	RxStatLROBytes
	RxStatUcastPkts
	RxStatUcastBytes
	RxStatMcastPkts
	RxStatMcastBytes
	RxStatBcastPkts
	RxStatBcastBytes
	RxStatOutOfBuf
	RxStatErrors
)
