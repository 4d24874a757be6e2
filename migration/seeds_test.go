package migration

import (
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

var updateSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite testdata/fuzz seed corpora from the seed generators")

// TestWriteFuzzSeeds rewrites the checked-in seed corpora when asked:
//
//	go test -run TestWriteFuzzSeeds ./migration/ -args -update-fuzz-seeds
//
// Without the flag it does nothing; go test runs the corpora through the
// fuzz targets in every ordinary run.
func TestWriteFuzzSeeds(t *testing.T) {
	if !*updateSeeds {
		t.Skip("use -update-fuzz-seeds to rewrite the corpora")
	}
	env := envelopeSeeds()
	hostileEnv := [][]byte{
		nil,
		[]byte("VFXS"),
		append(append([]byte(nil), env[0][:8]...), 0xff, 0xff, 0xff, 0xff), // length far over the cap
		append([]byte("XXXX"), env[0][4:]...),                              // bad magic
	}
	write(t, "FuzzDecodeEnvelope", append(env, hostileEnv...))

	rd := readerSeeds()
	huge := []byte{byte(MsgDeviceState), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(huge[1:], DefaultMaxMessage)
	rd = append(rd,
		huge, // a body claimed and never sent
		[]byte{byte(MsgPages), 0xff, 0xff, 0xff, 0xff},                  // over every limit
		[]byte{0xee, 0, 0, 0, 0},                                        // unknown type
		append([]byte{byte(MsgPages)}, 0xff, 0xff, 0xff, 0xff, 1, 2, 3), // framed: a lying page count
	)
	write(t, "FuzzReader", rd)
}

func write(t *testing.T, target string, seeds [][]byte) {
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
