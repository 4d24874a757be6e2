package store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

func TestLockedByOtherOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// bbolt's flock is per open file description, so a second open in the
	// same process is refused like another process would be.
	if _, err := OpenBoltOptions(path, BoltOptions{LockTimeout: 50 * time.Millisecond}); err == nil {
		t.Fatal("second OpenBolt of a file in use succeeded")
	}
}

// The durability test runs TestHelperWriter in a child process (this test
// binary again), kills it with SIGKILL mid-stream and checks that every
// write it acknowledged is in the reopened file.
const helperEnv = "VMFEX_STORE_HELPER_DB"

func TestHelperWriter(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		t.Skip("helper process for TestDurableAcrossSIGKILL")
	}
	s, err := OpenBolt(path)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		name := fmt.Sprintf("obj-%06d", i)
		if _, err := s.Create(context.Background(), obj("durable", name, strconv.Itoa(i))); err != nil {
			fmt.Println("ERROR", err)
			os.Exit(2)
		}
		// Only now, after the commit returned, is the write acknowledged.
		fmt.Println(name)
	}
}

func TestDurableAcrossSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	path := filepath.Join(t.TempDir(), "store.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWriter$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	const killAfter = 40
	var acked []string
	sc := bufio.NewScanner(out)
	killed := false
	for sc.Scan() {
		line := sc.Text()
		if len(line) < 4 || line[:4] != "obj-" {
			if line[:min(5, len(line))] == "ERROR" {
				t.Fatalf("helper: %s", line)
			}
			continue // test framework chatter
		}
		acked = append(acked, line)
		if len(acked) == killAfter && !killed {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
		// Keep reading: lines already in the pipe were acknowledged too.
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("helper exited by itself after %d acknowledgements: %v", len(acked), err)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper ended with %v, want killed by SIGKILL", err)
	}

	s, err := OpenBolt(path)
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	defer s.Close()
	for i, name := range acked {
		o, err := s.Get(context.Background(), "durable", name)
		if err != nil {
			t.Fatalf("acknowledged write %s lost after SIGKILL: %v", name, err)
		}
		if string(o.Value) != strconv.Itoa(i) {
			t.Fatalf("%s = %s after SIGKILL, want %d", name, o.Value, i)
		}
	}
	list, rev, _ := s.List(context.Background(), "durable")
	if len(list) < len(acked) || rev < int64(len(acked)) {
		t.Fatalf("after SIGKILL: %d objects at revision %d, fewer than the %d acknowledged", len(list), rev, len(acked))
	}
	t.Logf("%d writes acknowledged before SIGKILL, %d on disk", len(acked), len(list))
}
