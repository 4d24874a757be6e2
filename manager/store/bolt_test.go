package store

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmfex/vmfex/internal/testutil"
)

func openTest(t *testing.T, o BoltOptions) *BoltStore {
	t.Helper()
	s, err := OpenBoltOptions(filepath.Join(t.TempDir(), "store.db"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func obj(kind, name, v string) Object {
	return Object{Kind: kind, Name: name, Value: json.RawMessage(v)}
}

func TestCRUD(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, BoltOptions{})

	a, err := s.Create(ctx, obj("vms", "a", `{"x":1}`))
	if err != nil || a.Revision != 1 {
		t.Fatalf("Create(a) = %+v, %v; want revision 1", a, err)
	}
	if _, err := s.Create(ctx, obj("vms", "a", `{}`)); !errors.Is(err, ErrExists) {
		t.Fatalf("Create(a) again: err = %v, want ErrExists", err)
	}
	// The same name in another kind is another object.
	if _, err := s.Create(ctx, obj("hosts", "a", `{}`)); err != nil {
		t.Fatalf("Create(hosts/a): %v", err)
	}
	got, err := s.Get(ctx, "vms", "a")
	if err != nil || got.Revision != 1 || string(got.Value) != `{"x":1}` {
		t.Fatalf("Get(a) = %+v, %v", got, err)
	}
	if _, err := s.Get(ctx, "vms", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(nope): err = %v, want ErrNotFound", err)
	}

	u, err := s.Update(ctx, Object{Kind: "vms", Name: "a", Revision: 1, Value: json.RawMessage(`{"x":2}`)})
	if err != nil || u.Revision != 3 {
		t.Fatalf("Update(a@1) = %+v, %v; want revision 3", u, err)
	}
	if _, err := s.Update(ctx, Object{Kind: "vms", Name: "a", Revision: 1, Value: json.RawMessage(`{"x":9}`)}); !errors.Is(err, ErrConflict) {
		t.Fatalf("Update(a@1) stale: err = %v, want ErrConflict", err)
	}
	if _, err := s.Update(ctx, obj("vms", "a", `{"x":3}`)); err != nil {
		t.Fatalf("Update(a@any): %v", err)
	}
	if _, err := s.Update(ctx, obj("vms", "nope", `{}`)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update(nope): err = %v, want ErrNotFound", err)
	}
	if _, err := s.Create(ctx, obj("vms", "b", `{not json`)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Create(bad JSON): err = %v, want ErrInvalid", err)
	}
	if _, err := s.Create(ctx, obj("vms", "", `{}`)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Create(no name): err = %v, want ErrInvalid", err)
	}

	if _, err := s.Create(ctx, obj("vms", "b", `{}`)); err != nil {
		t.Fatal(err)
	}
	list, rev, err := s.List(ctx, "vms")
	if err != nil || len(list) != 2 || list[0].Name != "a" || list[1].Name != "b" || rev != 5 {
		t.Fatalf("List = %+v, rev %d, %v; want a, b at revision 5", list, rev, err)
	}

	if err := s.Delete(ctx, "vms", "a", 1); !errors.Is(err, ErrConflict) {
		t.Fatalf("Delete(a@1): err = %v, want ErrConflict", err)
	}
	if err := s.Delete(ctx, "vms", "a", 4); err != nil {
		t.Fatalf("Delete(a@4): %v", err)
	}
	if err := s.Delete(ctx, "vms", "a", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete(a) again: err = %v, want ErrNotFound", err)
	}
	if list, _, _ := s.List(ctx, "fabric-interconnects"); len(list) != 0 {
		t.Fatalf("List(empty kind) = %+v", list)
	}
}

func TestReopenKeepsRevision(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	s.Create(ctx, obj("k", "a", `1`))
	s.Create(ctx, obj("k", "b", `2`))
	s.Delete(ctx, "k", "a", 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Create(ctx, obj("k", "c", `3`)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Create after Close: err = %v, want ErrClosed", err)
	}
	s, err = OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := s.Create(ctx, obj("k", "c", `3`))
	if err != nil || c.Revision != 4 {
		t.Fatalf("Create after reopen = %+v, %v; want revision 4 (revisions never go back)", c, err)
	}
}

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

func recv(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed early")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	return Event{}
}

func TestWatchOrder(t *testing.T) {
	testutil.CheckGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := openTest(t, BoltOptions{})

	s.Create(ctx, obj("vms", "old1", `1`))
	s.Create(ctx, obj("hosts", "h", `1`))
	s.Create(ctx, obj("vms", "old2", `2`))
	s.Update(ctx, obj("vms", "old1", `11`))
	_, listRev, _ := s.List(ctx, "vms")

	// From 0: the current state first, in revision order, then live.
	all, err := s.Watch(ctx, "vms", 0)
	if err != nil {
		t.Fatal(err)
	}
	// From the list's revision: only what follows.
	live, err := s.Watch(ctx, "vms", listRev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Watch(ctx, "vms", listRev+1); !errors.Is(err, ErrFutureRevision) {
		t.Fatalf("Watch(future): err = %v, want ErrFutureRevision", err)
	}

	s.Create(ctx, obj("vms", "n", `1`))
	s.Create(ctx, obj("hosts", "h2", `1`)) // another kind: not delivered
	s.Update(ctx, obj("vms", "n", `2`))
	s.Delete(ctx, "vms", "n", 0)

	type step struct {
		typ  EventType
		name string
		rev  int64
		val  string
	}
	want := []step{
		{EventPut, "old2", 3, `2`}, {EventPut, "old1", 4, `11`},
		{EventPut, "n", 5, `1`}, {EventPut, "n", 7, `2`}, {EventDelete, "n", 8, `2`},
	}
	for i, w := range want {
		ev := recv(t, all)
		if ev.Type != w.typ || ev.Object.Name != w.name || ev.Object.Revision != w.rev || string(ev.Object.Value) != w.val {
			t.Errorf("watch(0) event %d = %v %s@%d %s; want %v %s@%d %s", i, ev.Type, ev.Object.Name, ev.Object.Revision, ev.Object.Value, w.typ, w.name, w.rev, w.val)
		}
	}
	for i, w := range want[2:] {
		ev := recv(t, live)
		if ev.Type != w.typ || ev.Object.Name != w.name || ev.Object.Revision != w.rev {
			t.Errorf("watch(%d) event %d = %v %s@%d; want %v %s@%d", listRev, i, ev.Type, ev.Object.Name, ev.Object.Revision, w.typ, w.name, w.rev)
		}
	}
	cancel()
	for range all { // closed once the context is done
	}
	for range live {
	}
}

func TestSlowWatcherDoesNotBlockWriters(t *testing.T) {
	testutil.CheckGoroutines(t)
	ctx := context.Background()
	s := openTest(t, BoltOptions{WatchBuffer: 4})
	slow, err := s.Watch(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20 {
			if _, err := s.Create(ctx, obj("k", strconv.Itoa(i), `1`)); err != nil {
				t.Error(err)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("writers blocked behind a watcher that does not read")
	}
	n := 0
	for range slow {
		n++
	}
	if n != 4 {
		t.Errorf("slow watcher got %d events before its channel closed, want its buffer (4)", n)
	}
	// A watcher of an empty store still sees everything after re-listing.
	again, err := s.Watch(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		recv(t, again)
	}
	s.Close()
	if _, ok := <-again; ok {
		t.Error("watch channel still open after Close")
	}
}

// TestConcurrentWriters races creators and updaters (run with -race) and
// checks that every write got its own revision and a watcher saw them all in
// order.
func TestConcurrentWriters(t *testing.T) {
	testutil.CheckGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := openTest(t, BoltOptions{WatchBuffer: 10000})
	w, err := s.Watch(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 25
	var wg sync.WaitGroup
	var mu sync.Mutex
	revs := map[int64]bool{}
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("w%d", g)
			o, err := s.Create(ctx, obj("k", name, `0`))
			if err != nil {
				t.Error(err)
				return
			}
			got := []int64{o.Revision}
			for i := 1; i < each; i++ {
				// Half go through optimistic concurrency on their own
				// object, half overwrite a shared one.
				if i%2 == 0 {
					o, err = s.Update(ctx, Object{Kind: "k", Name: name, Revision: o.Revision, Value: json.RawMessage(strconv.Itoa(i))})
				} else {
					var sh Object
					sh, err = s.Update(ctx, obj("k", "shared", strconv.Itoa(i)))
					if errors.Is(err, ErrNotFound) {
						sh, err = s.Create(ctx, obj("k", "shared", `0`))
						if errors.Is(err, ErrExists) {
							sh, err = s.Update(ctx, obj("k", "shared", strconv.Itoa(i)))
						}
					}
					if err != nil {
						t.Error(err)
						return
					}
					got = append(got, sh.Revision)
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				got = append(got, o.Revision)
			}
			mu.Lock()
			for _, r := range got {
				if revs[r] {
					t.Errorf("revision %d acknowledged twice", r)
				}
				revs[r] = true
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	_, cur, _ := s.List(ctx, "k")
	if int(cur) != len(revs) || len(revs) != writers*each {
		t.Fatalf("store revision %d, %d distinct acknowledged revisions; want both %d", cur, len(revs), writers*each)
	}
	var last int64
	for range cur {
		ev := recv(t, w)
		if ev.Object.Revision <= last {
			t.Fatalf("watch went from revision %d to %d", last, ev.Object.Revision)
		}
		last = ev.Object.Revision
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
