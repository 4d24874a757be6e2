package migration

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/vmxnet3/vmxnet3test"
	"github.com/vmfex/vmfex/wire"
)

// fillRandom sets every field reachable from v to a random value: slices
// get 0..3 elements (none as nil, the decoder's form of empty). A field of
// a kind the codec does not know, or an unexported one, fails the test, so
// a state type that grows cannot slip past the round-trip tests.
func fillRandom(t *testing.T, v reflect.Value, rng *rand.Rand, path string) {
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(rng.IntN(2) == 1)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(rng.Uint64()))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(rng.Uint64())
	case reflect.String:
		b := make([]byte, 1+rng.IntN(40))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		v.SetString(string(b))
	case reflect.Array:
		for i := range v.Len() {
			fillRandom(t, v.Index(i), rng, path+"[]")
		}
	case reflect.Slice:
		n := rng.IntN(4)
		if n == 0 {
			v.SetZero()
			return
		}
		v.Set(reflect.MakeSlice(v.Type(), n, n))
		for i := range n {
			fillRandom(t, v.Index(i), rng, path+"[]")
		}
	case reflect.Struct:
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() {
				t.Fatalf("%s.%s is unexported: the state codec cannot carry it", path, f.Name)
			}
			fillRandom(t, v.Field(i), rng, path+"."+f.Name)
		}
	default:
		t.Fatalf("%s has kind %v: teach the state codec (and this filler) about it", path, v.Kind())
	}
}

// TestStateRoundTripEveryField fills every field of every state type at
// random and demands encode→decode give it back and decode→encode give the
// same bytes.
func TestStateRoundTripEveryField(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		var s vmxnet3.State
		fillRandom(t, reflect.ValueOf(&s).Elem(), rng, "State")
		env, err := EncodeDeviceState(&s)
		if err != nil {
			t.Fatalf("EncodeDeviceState: %v", err)
		}
		got, err := DecodeDeviceState(env)
		if err != nil {
			t.Fatalf("iteration %d: DecodeDeviceState: %v", i, err)
		}
		if !reflect.DeepEqual(got, s) {
			t.Fatalf("iteration %d: device state round trip:\n got %+v\nwant %+v", i, got, s)
		}
		again, _ := EncodeDeviceState(&got)
		if !bytes.Equal(again, env) {
			t.Fatalf("iteration %d: re-encoding differs", i)
		}

		var v VCPUState
		fillRandom(t, reflect.ValueOf(&v).Elem(), rng, "VCPUState")
		env, _ = EncodeVCPU(v)
		if gotV, err := DecodeVCPU(env); err != nil || gotV != v {
			t.Fatalf("DecodeVCPU(EncodeVCPU(%+v)) = %+v, %v", v, gotV, err)
		}

		var sp VMSpec
		fillRandom(t, reflect.ValueOf(&sp).Elem(), rng, "VMSpec")
		env, _ = EncodeVMSpec(sp)
		if gotS, err := DecodeVMSpec(env); err != nil || gotS != sp {
			t.Fatalf("DecodeVMSpec(EncodeVMSpec(%+v)) = %+v, %v", sp, gotS, err)
		}
	}
}

// TestDeviceStateSaveEncodeRestore is the hand-off the migration makes: a
// real device with traffic held at the freeze is saved, encoded, decoded,
// restored into another device, and saved again, equal.
func TestDeviceStateSaveEncodeRestore(t *testing.T) {
	cfg := vmxnet3test.Config{
		NumTxQueues: 2, NumRxQueues: 2, AutoMask: true,
		VLANs: []uint16{10, 20}, MCast: [][6]byte{{0x01, 0x00, 0x5e, 0, 0, 1}},
	}
	src, err := vmxnet3test.NewRig(cfg, vmxnet3test.RigMAC)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.G.Up(); err != nil {
		t.Fatal(err)
	}
	frame := func(i byte) []byte {
		f := make([]byte, 64)
		copy(f, vmxnet3test.RigMAC[:])
		f[12], f[13], f[14] = 0x08, 0x00, i
		return f
	}
	src.Dev.DeliverBatch(0, [][]byte{frame(1), frame(2)})
	src.Dev.Freeze()
	// Frames arriving while frozen are held: they become State.Pending.
	src.Dev.DeliverBatch(1, [][]byte{frame(3), frame(4), frame(5)})
	saved, err := src.Dev.Save()
	if err != nil {
		t.Fatal(err)
	}
	if len(saved.RxQueues) != 2 || len(saved.RxQueues[1].Pending) != 3 {
		t.Fatalf("saved state lacks the held frames: %+v", saved.RxQueues)
	}

	env, err := EncodeDeviceState(&saved)
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := DecodeDeviceState(env)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(decoded, saved) {
		t.Fatalf("decode(encode(save)):\n got %+v\nwant %+v", decoded, saved)
	}

	dst, err := vmxnet3test.NewRig(cfg, vmxnet3test.RigMAC)
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Dev.Restore(decoded); err != nil {
		t.Fatalf("Restore(decoded): %v", err)
	}
	again, err := dst.Dev.Save()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again, saved) {
		t.Fatalf("save(restore(decode(encode(save)))):\n got %+v\nwant %+v", again, saved)
	}
}

func TestVMSpecValidate(t *testing.T) {
	good := VMSpec{Name: "vm1", ID: 7, MemSize: 16 << 20, MAC: wire.MAC{0, 0x50, 0x56, 0, 0, 7}, Driver: guest.DefaultDriverConfig()}
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate(%+v) = %v", good, err)
	}
	for _, tc := range []struct {
		name string
		edit func(*VMSpec)
	}{
		{"empty name", func(s *VMSpec) { s.Name = "" }},
		{"long name", func(s *VMSpec) { s.Name = strings.Repeat("x", MaxNameLen+1) }},
		{"zero memory", func(s *VMSpec) { s.MemSize = 0 }},
		{"unaligned memory", func(s *VMSpec) { s.MemSize = 4097 }},
		{"huge memory", func(s *VMSpec) { s.MemSize = 1 << 40 }},
		{"bad ring", func(s *VMSpec) { s.Driver.TxRingSize = 33 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			tc.edit(&s)
			if err := s.Validate(); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Validate(%+v) = %v, want ErrMalformed", s, err)
			}
		})
	}
}

// reseal recomputes an envelope's checksum after a test edited it.
func reseal(b []byte) []byte {
	n := len(b) - envelopeTrailer
	binary.BigEndian.PutUint32(b[n:], crc32.Checksum(b[:n], castagnoli))
	return b
}

func TestEnvelopeRejects(t *testing.T) {
	vcpu, _ := EncodeVCPU(VCPUState{IRQ: 5})
	edit := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), vcpu...))
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"short", vcpu[:envelopeMin-1], ErrTruncated},
		{"bad magic", edit(func(b []byte) []byte { b[0] = 'X'; return b }), ErrBadMagic},
		{"future version", edit(func(b []byte) []byte { b[5] = 2; return reseal(b) }), ErrVersion},
		{"payload flipped", edit(func(b []byte) []byte { b[envelopeHeader] ^= 1; return b }), ErrChecksum},
		{"checksum flipped", edit(func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b }), ErrChecksum},
		{"over the cap", edit(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], MaxEnvelopePayload+1); return b }), ErrTooLarge},
		{"length too long", edit(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], 5); return reseal(b) }), ErrTruncated},
		{"trailing byte", append(append([]byte(nil), vcpu...), 0), ErrTruncated},
		{"wrong kind", edit(func(b []byte) []byte { b[7] = byte(KindVMSpec); return reseal(b) }), ErrKind},
		{"unknown kind", edit(func(b []byte) []byte { b[7] = 99; return reseal(b) }), ErrKind},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeVCPU(tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("DecodeVCPU(% x) = %v, want %v", tc.in, err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "migration: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
		})
	}
}

// devicePayload builds a KindDeviceState envelope whose payload is the
// encoding of s with its tail (from the rx queue count on) replaced.
func deviceEnvelopeWithTail(t *testing.T, tail []byte) []byte {
	t.Helper()
	var s vmxnet3.State
	env, err := EncodeDeviceState(&s)
	if err != nil {
		t.Fatal(err)
	}
	_, p, _ := Open(env)
	// The zero state ends with: rx count (4), AutoMask (1), vectors (4 +
	// 2×MaxIntrs), drops (8×8).
	head := p[:len(p)-(4+1+4+2*vmxnet3.MaxIntrs+64)]
	out, err := Seal(nil, KindDeviceState, append(append([]byte(nil), head...), tail...))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDecodeHostileCounts: counts a hostile peer states are checked against
// the bytes present and the allocation budget before anything is allocated.
func TestDecodeHostileCounts(t *testing.T) {
	t.Run("count beyond the bytes", func(t *testing.T) {
		env := deviceEnvelopeWithTail(t, []byte{0xff, 0xff, 0xff, 0xff})
		if _, err := DecodeDeviceState(env); !errors.Is(err, ErrMalformed) {
			t.Fatalf("DecodeDeviceState = %v, want ErrMalformed", err)
		}
	})
	t.Run("bool other than 0 or 1", func(t *testing.T) {
		var s vmxnet3.State
		env, _ := EncodeDeviceState(&s)
		env[envelopeHeader+24] = 2 // DSALValid: after Version, VRRS, UVRS, DSPA, DSAL
		if _, err := DecodeDeviceState(reseal(env)); !errors.Is(err, ErrMalformed) {
			t.Fatalf("DecodeDeviceState = %v, want ErrMalformed", err)
		}
	})
	t.Run("allocation beyond the cap", func(t *testing.T) {
		// One rx queue whose pending list claims one empty frame per 4
		// bytes of a near-cap payload: 24 bytes of slice header each, six
		// times the payload, so the budget must refuse it.
		var q bytes.Buffer
		q.Write([]byte{0, 0, 0, 1}) // one rx queue
		q.Write(make([]byte, rxqMin-4))
		q.Bytes()[4+8+3*ringSize+1+3] = vmxnet3.NumUPT1Stats // stats length
		n := (MaxEnvelopePayload - 1<<20) / 4
		var cnt [4]byte
		binary.BigEndian.PutUint32(cnt[:], uint32(n))
		q.Write(cnt[:])
		q.Write(make([]byte, 4*n))
		env := deviceEnvelopeWithTail(t, q.Bytes())
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := DecodeDeviceState(env)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("DecodeDeviceState = %v, want ErrTooLarge", err)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
			t.Fatalf("refusing the envelope allocated %d bytes", d)
		}
	})
	t.Run("ReadEnvelope with a lying length", func(t *testing.T) {
		vcpu, _ := EncodeVCPU(VCPUState{})
		h := append([]byte(nil), vcpu[:envelopeHeader]...)
		binary.BigEndian.PutUint32(h[8:], MaxEnvelopePayload)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := ReadEnvelope(bytes.NewReader(append(h, 1, 2, 3)))
		runtime.ReadMemStats(&after)
		if err == nil || !strings.Contains(err.Error(), "unexpected EOF") {
			t.Fatalf("ReadEnvelope = %v, want unexpected EOF", err)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 4<<20 {
			t.Fatalf("a 15-byte input made ReadEnvelope allocate %d bytes", d)
		}
	})
}

func TestReadEnvelope(t *testing.T) {
	spec := VMSpec{Name: "vm", MemSize: 1 << 20, Driver: guest.DefaultDriverConfig()}
	env, _ := EncodeVMSpec(spec)
	r := bytes.NewReader(append(append([]byte(nil), env...), 0xAA))
	got, err := ReadEnvelope(r)
	if err != nil || !bytes.Equal(got, env) {
		t.Fatalf("ReadEnvelope = % x, %v; want % x", got, err, env)
	}
	if r.Len() != 1 {
		t.Fatalf("ReadEnvelope consumed past the envelope: %d bytes left, want 1", r.Len())
	}
	if s, err := DecodeVMSpec(got); err != nil || s != spec {
		t.Fatalf("DecodeVMSpec = %+v, %v", s, err)
	}
}

// FuzzDecodeEnvelope: arbitrary bytes never panic, never decode into more
// than the cap allows, and whatever decodes re-encodes to the same bytes.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, seed := range envelopeSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		kind, _, err := Open(data)
		viaReader, rerr := ReadEnvelope(bytes.NewReader(data))
		if err == nil && (rerr != nil || !bytes.Equal(viaReader, data)) {
			t.Fatalf("Open accepts what ReadEnvelope refuses: %v", rerr)
		}
		if err != nil {
			return
		}
		var again []byte
		switch kind {
		case KindDeviceState:
			s, err := DecodeDeviceState(data)
			if err != nil {
				return
			}
			again, _ = EncodeDeviceState(&s)
		case KindVCPU:
			v, err := DecodeVCPU(data)
			if err != nil {
				return
			}
			again, _ = EncodeVCPU(v)
		case KindVMSpec:
			s, err := DecodeVMSpec(data)
			if err != nil {
				return
			}
			s.Validate()
			again, _ = EncodeVMSpec(s)
		default:
			return
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("decode→encode changed the envelope:\n in % x\nout % x", data, again)
		}
	})
}

// sampleState is an active device's state with one queue each way.
func sampleState() vmxnet3.State {
	var s vmxnet3.State
	s.Version = vmxnet3.StateVersion
	s.Active = true
	s.Config.NumTxQueues, s.Config.NumRxQueues = 1, 1
	s.Config.MCastList = [][6]byte{{1, 0, 0x5e, 0, 0, 1}}
	s.TxQueues = []vmxnet3.TxQueueState{{DescPA: 0x2000, Ring: vmxnet3.Ring{Base: 0x3000, Size: 32, Gen: true}}}
	s.RxQueues = []vmxnet3.RxQueueState{{DescPA: 0x2080, Pending: [][]byte{make([]byte, 60), {1, 2, 3}}}}
	return s
}

// envelopeSeeds are valid envelopes of every kind (also written to
// testdata/fuzz/FuzzDecodeEnvelope).
func envelopeSeeds() [][]byte {
	var out [][]byte
	add := func(b []byte, err error) {
		if err == nil {
			out = append(out, b)
		}
	}
	add(EncodeVCPU(VCPUState{IRQ: 0x11}))
	add(EncodeVMSpec(VMSpec{Name: "vm1", ID: 1, MemSize: 64 << 20, MAC: wire.MAC{0, 0x50, 0x56, 0, 0, 1}, Driver: guest.DefaultDriverConfig()}))
	add(EncodeDeviceState(&vmxnet3.State{Version: vmxnet3.StateVersion}))
	s := sampleState()
	add(EncodeDeviceState(&s))
	return out
}
