package vmxnet3

// Descriptor bit layouts (spec §4.2–4.5). Words are little-endian u32 inside
// a 16-byte descriptor: dw0 at +0, dw1 at +4, dw2 at +8, dw3 at +12.

// TxDesc (spec §4.2): dw0–dw1 addr; dw2 len/gen/oco/dtype/ext1/msscof;
// dw3 hlen/om/eop/cq/ext2/ti/tci. The gen bit lives in dw2, so dw2 is the
// publish word.
const (
	TxDescAddr = 0
	TxDescDW2  = 8
	TxDescDW3  = 12

	TxLenMask     = 0x3FFF
	TxGenBit      = 1 << 14
	TxDTypeBit    = 1 << 16
	TxMSSCOFShift = 18
	TxHLenMask    = 0x3FF
	TxOMShift     = 10
	TxOMMask      = 3
	TxEOPBit      = 1 << 12
	TxCQBit       = 1 << 13
	TxTIBit       = 1 << 15
	TxTCIShift    = 16
)

// Offload modes (spec §4.2).
const (
	OMNone  = 0
	OMEncap = 1
	OMCsum  = 2
	OMTSO   = 3
)

// TxCompDesc (spec §4.3): dw0 bits 11..0 txdIdx; dw3 bits 30..24 type,
// bit 31 gen. dw3 is the publish word.
const (
	TxCompDW0     = 0
	TxCompDW3     = 12
	TxCompIdxMask = 0xFFF
	CompGenBit    = 1 << 31
	CompTypeShift = 24
	CompTypeMask  = 0x7F
)

// RxDesc (spec §4.4): dw0–dw1 addr; dw2 len 13..0, btype 14, dtype 15,
// gen 31. dw2 is the publish word.
const (
	RxDescAddr  = 0
	RxDescDW2   = 8
	RxLenMask   = 0x3FFF
	RxBTypeBody = 1 << 14
	RxDTypeBit  = 1 << 15
	RxGenBit    = 1 << 31
)

// RxCompDesc (spec §4.5). dw3 (type, gen) is the publish word.
const (
	RxCompDW0 = 0
	RxCompDW1 = 4 // rssHash
	RxCompDW2 = 8
	RxCompDW3 = 12

	RxCompIdxMask   = 0xFFF
	RxCompEOPBit    = 1 << 14
	RxCompSOPBit    = 1 << 15
	RxCompRqIDShift = 16
	RxCompRqIDMask  = 0x3FF
	RxCompCNCBit    = 1 << 30
	RxCompLenMask   = 0x3FFF
	RxCompErrBit    = 1 << 14
	RxCompTSBit     = 1 << 15
	RxCompTCIShift  = 16
	RxCompTypeRx    = 3
	RxCompTypeLRO   = 4
	TxCompTypeTx    = 0

	RxCompFlagTUC = 1 << 16
	RxCompFlagUDP = 1 << 17
	RxCompFlagTCP = 1 << 18
	RxCompFlagIPC = 1 << 19
	RxCompFlagV6  = 1 << 20
	RxCompFlagV4  = 1 << 21
	RxCompFlagFRG = 1 << 22
	RxCompFlagFCS = 1 << 23
)

// TxDesc is a decoded transmit descriptor.
type TxDesc struct {
	Addr   uint64
	Len    uint32 // decoded: 0 in the field means 16384
	Gen    bool
	DType  bool
	MSSCOF uint16
	HLen   uint16
	OM     uint8
	EOP    bool
	CQ     bool
	TI     bool
	TCI    uint16
}

// DecodeTxDesc decodes a TxDesc from its four words.
func DecodeTxDesc(addr uint64, dw2, dw3 uint32) TxDesc {
	l := dw2 & TxLenMask
	if l == 0 {
		l = MaxTxBufLen
	}
	return TxDesc{
		Addr:   addr,
		Len:    l,
		Gen:    dw2&TxGenBit != 0,
		DType:  dw2&TxDTypeBit != 0,
		MSSCOF: uint16(dw2 >> TxMSSCOFShift),
		HLen:   uint16(dw3 & TxHLenMask),
		OM:     uint8(dw3>>TxOMShift) & TxOMMask,
		EOP:    dw3&TxEOPBit != 0,
		CQ:     dw3&TxCQBit != 0,
		TI:     dw3&TxTIBit != 0,
		TCI:    uint16(dw3 >> TxTCIShift),
	}
}

// Words encodes d; Len 16384 is encoded as 0.
func (d TxDesc) Words() (addr uint64, dw2, dw3 uint32) {
	dw2 = d.Len & TxLenMask
	if d.Gen {
		dw2 |= TxGenBit
	}
	if d.DType {
		dw2 |= TxDTypeBit
	}
	dw2 |= uint32(d.MSSCOF&0x3FFF) << TxMSSCOFShift
	dw3 = uint32(d.HLen & TxHLenMask)
	dw3 |= uint32(d.OM&TxOMMask) << TxOMShift
	if d.EOP {
		dw3 |= TxEOPBit
	}
	if d.CQ {
		dw3 |= TxCQBit
	}
	if d.TI {
		dw3 |= TxTIBit
	}
	dw3 |= uint32(d.TCI) << TxTCIShift
	return d.Addr, dw2, dw3
}

// RxDesc is a decoded receive descriptor.
type RxDesc struct {
	Addr  uint64
	Len   uint32
	Body  bool // btype: 1 = BODY buffer
	DType bool
	Gen   bool
}

// DecodeRxDesc decodes an RxDesc.
func DecodeRxDesc(addr uint64, dw2 uint32) RxDesc {
	return RxDesc{
		Addr:  addr,
		Len:   dw2 & RxLenMask,
		Body:  dw2&RxBTypeBody != 0,
		DType: dw2&RxDTypeBit != 0,
		Gen:   dw2&RxGenBit != 0,
	}
}

// Word2 encodes dw2 of d.
func (d RxDesc) Word2() uint32 {
	w := d.Len & RxLenMask
	if d.Body {
		w |= RxBTypeBody
	}
	if d.DType {
		w |= RxDTypeBit
	}
	if d.Gen {
		w |= RxGenBit
	}
	return w
}

// RxComp is a decoded receive completion.
type RxComp struct {
	RxdIdx  uint16
	EOP     bool
	SOP     bool
	RqID    uint16
	RSSType uint8
	CNC     bool
	RSSHash uint32
	Len     uint32
	Err     bool
	TS      bool
	TCI     uint16
	Csum    uint16
	Flags   uint32 // dw3 bits 23..16, in place
	Type    uint8
	Gen     bool
}

// Words encodes c.
func (c RxComp) Words() (dw0, dw1, dw2, dw3 uint32) {
	dw0 = uint32(c.RxdIdx) & RxCompIdxMask
	if c.EOP {
		dw0 |= RxCompEOPBit
	}
	if c.SOP {
		dw0 |= RxCompSOPBit
	}
	dw0 |= uint32(c.RqID&RxCompRqIDMask) << RxCompRqIDShift
	dw0 |= uint32(c.RSSType&0xF) << 26
	if c.CNC {
		dw0 |= RxCompCNCBit
	}
	dw1 = c.RSSHash
	dw2 = c.Len & RxCompLenMask
	if c.Err {
		dw2 |= RxCompErrBit
	}
	if c.TS {
		dw2 |= RxCompTSBit
	}
	dw2 |= uint32(c.TCI) << RxCompTCIShift
	dw3 = uint32(c.Csum) | c.Flags&0x00FF0000 | uint32(c.Type&CompTypeMask)<<CompTypeShift
	if c.Gen {
		dw3 |= CompGenBit
	}
	return
}

// DecodeRxComp decodes an RxCompDesc.
func DecodeRxComp(dw0, dw1, dw2, dw3 uint32) RxComp {
	return RxComp{
		RxdIdx:  uint16(dw0 & RxCompIdxMask),
		EOP:     dw0&RxCompEOPBit != 0,
		SOP:     dw0&RxCompSOPBit != 0,
		RqID:    uint16(dw0>>RxCompRqIDShift) & RxCompRqIDMask,
		RSSType: uint8(dw0>>26) & 0xF,
		CNC:     dw0&RxCompCNCBit != 0,
		RSSHash: dw1,
		Len:     dw2 & RxCompLenMask,
		Err:     dw2&RxCompErrBit != 0,
		TS:      dw2&RxCompTSBit != 0,
		TCI:     uint16(dw2 >> RxCompTCIShift),
		Csum:    uint16(dw3),
		Flags:   dw3 & 0x00FF0000,
		Type:    uint8(dw3>>CompTypeShift) & CompTypeMask,
		Gen:     dw3&CompGenBit != 0,
	}
}
