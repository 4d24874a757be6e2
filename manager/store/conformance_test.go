package store

// The conformance suite: the behaviour store.go documents, checked against
// every backend. Backend-specific tests (bbolt's file lock and SIGKILL
// durability, etcd's prefixes, fences and compaction) sit beside their
// backend.
//
// Revisions are checked relative to the store's revision when the test
// starts: a fresh bbolt file starts at 0, the shared test etcd wherever
// the tests before left it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vmfex/vmfex/internal/testutil"
)

// suiteWait bounds every wait of the suite: a failure deadline for
// race-built code on two busy cores, not a measure of anything.
const suiteWait = 2 * time.Minute

// backend opens empty stores of one implementation.
type backend struct {
	name string
	// prepare runs in the parent test, before any leak check: it starts
	// what the backend's stores share (the test etcd).
	prepare func(t *testing.T)
	// open returns an empty store, closed at the end of the test, and a
	// function that opens another Store on the same data.
	open func(t *testing.T, watchBuffer int) (s Store, reopen func() (Store, error))
}

var backends = []backend{
	{
		name:    "bolt",
		prepare: func(*testing.T) {},
		open: func(t *testing.T, watchBuffer int) (Store, func() (Store, error)) {
			path := filepath.Join(t.TempDir(), "store.db")
			s, err := OpenBoltOptions(path, BoltOptions{WatchBuffer: watchBuffer})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s, func() (Store, error) { return OpenBolt(path) }
		},
	},
	{
		name:    "etcd",
		prepare: func(t *testing.T) { etcdEndpoint(t) },
		open: func(t *testing.T, watchBuffer int) (Store, func() (Store, error)) {
			o := EtcdOptions{Endpoints: []string{etcdEndpoint(t)}, Prefix: newPrefix(), WatchBuffer: watchBuffer}
			s := openEtcdTest(t, o)
			return s, func() (Store, error) { return OpenEtcd(o) }
		},
	},
}

// forEachBackend runs test once per backend, as subtests named after them.
func forEachBackend(t *testing.T, test func(t *testing.T, b backend)) {
	for _, b := range backends {
		b.prepare(t)
		t.Run(b.name, func(t *testing.T) { test(t, b) })
	}
}

func obj(kind, name, v string) Object {
	return Object{Kind: kind, Name: name, Value: json.RawMessage(v)}
}

// startRev returns the store's revision before the test writes.
func startRev(t *testing.T, s Store) int64 {
	t.Helper()
	_, rev, err := s.List(context.Background(), "no-such-kind")
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func recv(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed early")
		}
		return ev
	case <-time.After(suiteWait):
		t.Fatalf("no event within %v", suiteWait)
	}
	return Event{}
}

func TestCRUD(t *testing.T) { forEachBackend(t, testCRUD) }

func testCRUD(t *testing.T, b backend) {
	ctx := context.Background()
	s, _ := b.open(t, 0)
	r0 := startRev(t, s)

	a, err := s.Create(ctx, obj("vms", "a", `{"x":1}`))
	if err != nil || a.Revision != r0+1 {
		t.Fatalf("Create(a) = %+v, %v; want revision %d", a, err, r0+1)
	}
	if _, err := s.Create(ctx, obj("vms", "a", `{}`)); !errors.Is(err, ErrExists) {
		t.Fatalf("Create(a) again: err = %v, want ErrExists", err)
	}
	// The same name in another kind is another object.
	if _, err := s.Create(ctx, obj("hosts", "a", `{}`)); err != nil {
		t.Fatalf("Create(hosts/a): %v", err)
	}
	got, err := s.Get(ctx, "vms", "a")
	if err != nil || got.Revision != r0+1 || string(got.Value) != `{"x":1}` {
		t.Fatalf("Get(a) = %+v, %v", got, err)
	}
	if _, err := s.Get(ctx, "vms", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(nope): err = %v, want ErrNotFound", err)
	}

	u, err := s.Update(ctx, Object{Kind: "vms", Name: "a", Revision: r0 + 1, Value: json.RawMessage(`{"x":2}`)})
	if err != nil || u.Revision != r0+3 {
		t.Fatalf("Update(a@%d) = %+v, %v; want revision %d", r0+1, u, err, r0+3)
	}
	if _, err := s.Update(ctx, Object{Kind: "vms", Name: "a", Revision: r0 + 1, Value: json.RawMessage(`{"x":9}`)}); !errors.Is(err, ErrConflict) {
		t.Fatalf("Update(a@%d) stale: err = %v, want ErrConflict", r0+1, err)
	}
	if _, err := s.Update(ctx, obj("vms", "a", `{"x":3}`)); err != nil {
		t.Fatalf("Update(a@any): %v", err)
	}
	if _, err := s.Update(ctx, obj("vms", "nope", `{}`)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update(nope): err = %v, want ErrNotFound", err)
	}
	if _, err := s.Update(ctx, Object{Kind: "vms", Name: "nope", Revision: r0 + 1, Value: json.RawMessage(`{}`)}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update(nope@%d): err = %v, want ErrNotFound", r0+1, err)
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
	if err != nil || len(list) != 2 || list[0].Name != "a" || list[1].Name != "b" || rev != r0+5 {
		t.Fatalf("List = %+v, rev %d, %v; want a, b at revision %d", list, rev, err, r0+5)
	}

	if err := s.Delete(ctx, "vms", "a", r0+1); !errors.Is(err, ErrConflict) {
		t.Fatalf("Delete(a@%d): err = %v, want ErrConflict", r0+1, err)
	}
	if err := s.Delete(ctx, "vms", "a", r0+4); err != nil {
		t.Fatalf("Delete(a@%d): %v", r0+4, err)
	}
	if err := s.Delete(ctx, "vms", "a", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete(a) again: err = %v, want ErrNotFound", err)
	}
	if list, _, _ := s.List(ctx, "fabric-interconnects"); len(list) != 0 {
		t.Fatalf("List(empty kind) = %+v", list)
	}
}

func TestReopenKeepsRevision(t *testing.T) { forEachBackend(t, testReopenKeepsRevision) }

func testReopenKeepsRevision(t *testing.T, b backend) {
	ctx := context.Background()
	s, reopen := b.open(t, 0)
	r0 := startRev(t, s)
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
	if _, err := s.Get(ctx, "k", "b"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: err = %v, want ErrClosed", err)
	}
	if _, err := s.Watch(ctx, "k", 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Watch after Close: err = %v, want ErrClosed", err)
	}
	s, err := reopen()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := s.Create(ctx, obj("k", "c", `3`))
	if err != nil || c.Revision != r0+4 {
		t.Fatalf("Create after reopen = %+v, %v; want revision %d (revisions never go back)", c, err, r0+4)
	}
	if list, _, err := s.List(ctx, "k"); err != nil || len(list) != 2 || list[0].Name != "b" || list[1].Name != "c" {
		t.Fatalf("List after reopen = %+v, %v; want b, c", list, err)
	}
}

func TestWatchOrder(t *testing.T) { forEachBackend(t, testWatchOrder) }

func testWatchOrder(t *testing.T, b backend) {
	testutil.CheckGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, _ := b.open(t, 0)
	r0 := startRev(t, s)

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
	// From an older revision: the current state again, then live.
	older, err := s.Watch(ctx, "vms", r0+1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Watch(ctx, "vms", listRev+1); !errors.Is(err, ErrFutureRevision) {
		t.Fatalf("Watch(future): err = %v, want ErrFutureRevision", err)
	}
	if _, err := s.Watch(ctx, "vms", -1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Watch(-1): err = %v, want ErrInvalid", err)
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
		{EventPut, "old2", r0 + 3, `2`}, {EventPut, "old1", r0 + 4, `11`},
		{EventPut, "n", r0 + 5, `1`}, {EventPut, "n", r0 + 7, `2`}, {EventDelete, "n", r0 + 8, `2`},
	}
	check := func(what string, ch <-chan Event, want []step) {
		t.Helper()
		for i, w := range want {
			ev := recv(t, ch)
			if ev.Type != w.typ || ev.Object.Name != w.name || ev.Object.Revision != w.rev || string(ev.Object.Value) != w.val {
				t.Errorf("%s event %d = %v %s@%d %s; want %v %s@%d %s", what, i, ev.Type, ev.Object.Name, ev.Object.Revision, ev.Object.Value, w.typ, w.name, w.rev, w.val)
			}
		}
	}
	check("watch(0)", all, want)
	check(fmt.Sprintf("watch(%d)", listRev), live, want[2:])
	check(fmt.Sprintf("watch(%d)", r0+1), older, want)
	cancel()
	for range all { // closed once the context is done
	}
	for range live {
	}
	for range older {
	}
}

func TestSlowWatcherDoesNotBlockWriters(t *testing.T) {
	forEachBackend(t, testSlowWatcherDoesNotBlockWriters)
}

func testSlowWatcherDoesNotBlockWriters(t *testing.T, b backend) {
	testutil.CheckGoroutines(t)
	ctx := context.Background()
	s, _ := b.open(t, 4)
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
	case <-time.After(suiteWait):
		t.Fatal("writers blocked behind a watcher that does not read")
	}
	// A backend may deliver events after the write returned (etcd does):
	// wait, without reading, until the buffer is full, so that the next
	// event overflows it whatever the backend's timing.
	deadline := time.Now().Add(suiteWait)
	for len(slow) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("slow watcher holds %d events %v after the writes, want its buffer (4) full", len(slow), suiteWait)
		}
		time.Sleep(5 * time.Millisecond)
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
func TestConcurrentWriters(t *testing.T) { forEachBackend(t, testConcurrentWriters) }

func testConcurrentWriters(t *testing.T, b backend) {
	testutil.CheckGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, _ := b.open(t, 10000)
	r0 := startRev(t, s)
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
	if int(cur-r0) != len(revs) || len(revs) != writers*each {
		t.Fatalf("store revision %d after %d, %d distinct acknowledged revisions; want %d writes", cur, r0, len(revs), writers*each)
	}
	var last int64
	for range cur - r0 {
		ev := recv(t, w)
		if ev.Object.Revision <= last {
			t.Fatalf("watch went from revision %d to %d", last, ev.Object.Revision)
		}
		last = ev.Object.Revision
	}
}
