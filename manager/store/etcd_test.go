package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmfex/vmfex/internal/etcdtest"
	"github.com/vmfex/vmfex/internal/testutil"
)

// etcdWait bounds waits on the embedded etcd: a failure deadline for
// race-built code on busy machines, not a measure of anything.
const etcdWait = 2 * time.Minute

// testEtcd is the one embedded etcd server the tests of this package share,
// started by the first test that needs it and stopped by TestMain. Each
// test works under a prefix of its own.
var testEtcd struct {
	once     sync.Once
	endpoint string
	err      error
	stop     func()
	prefixes atomic.Int64
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testEtcd.stop != nil {
		testEtcd.stop()
	}
	os.Exit(code)
}

// etcdEndpoint returns the shared server's client URL, starting it on first
// use. Call it before testutil.CheckGoroutines so that the server's
// goroutines do not count as the test's.
func etcdEndpoint(t *testing.T) string {
	t.Helper()
	testEtcd.once.Do(func() {
		dir, err := os.MkdirTemp("", "vmfex-etcd-test-")
		if err != nil {
			testEtcd.err = err
			return
		}
		var stop func()
		testEtcd.endpoint, stop, testEtcd.err = etcdtest.Start(dir, etcdWait)
		testEtcd.stop = func() {
			if stop != nil {
				stop()
			}
			os.RemoveAll(dir)
		}
	})
	if testEtcd.err != nil {
		t.Fatal(testEtcd.err)
	}
	return testEtcd.endpoint
}

// newPrefix returns a key prefix no other test uses.
func newPrefix() string { return fmt.Sprintf("/vmfex-test-%d/", testEtcd.prefixes.Add(1)) }

func openEtcdTest(t *testing.T, o EtcdOptions) *EtcdStore {
	t.Helper()
	if o.Client == nil && o.Endpoints == nil {
		o.Endpoints = []string{etcdEndpoint(t)}
	}
	if o.Prefix == "" {
		o.Prefix = newPrefix()
	}
	s, err := OpenEtcd(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestEtcdKeysKeepKindsAndPrefixesApart(t *testing.T) {
	ep := etcdEndpoint(t)
	testutil.CheckGoroutines(t)
	ctx := context.Background()
	p := newPrefix()
	s := openEtcdTest(t, EtcdOptions{Endpoints: []string{ep}, Prefix: p})
	other := openEtcdTest(t, EtcdOptions{Endpoints: []string{ep}, Prefix: strings.TrimSuffix(p, "/") + "-other"})

	for _, o := range []Object{obj("a/b", "c", `1`), obj("a", "b/c", `2`), obj("a", "b", `3`), obj("a%2Fb", "c", `4`)} {
		if _, err := s.Create(ctx, o); err != nil {
			t.Fatalf("Create(%s, %s): %v", o.Kind, o.Name, err)
		}
	}
	for kind, want := range map[string][]string{"a/b": {"c"}, "a": {"b", "b/c"}, "a%2Fb": {"c"}} {
		list, _, err := s.List(ctx, kind)
		var names []string
		for _, o := range list {
			names = append(names, o.Name)
		}
		if err != nil || fmt.Sprint(names) != fmt.Sprint(want) {
			t.Errorf("List(%q) = %v, %v; want %v", kind, names, err, want)
		}
	}
	if list, _, err := other.List(ctx, "a"); err != nil || len(list) != 0 {
		t.Errorf("List(a) under another prefix = %+v, %v; want nothing", list, err)
	}
	if _, err := other.Create(ctx, obj("a", "b", `9`)); err != nil {
		t.Errorf("Create(a/b) under another prefix: %v", err)
	}
	if got, err := s.Get(ctx, "a", "b"); err != nil || string(got.Value) != `3` {
		t.Errorf("Get(a, b) = %+v, %v; want the value 3 of its own prefix", got, err)
	}
}

func TestEtcdFence(t *testing.T) {
	ep := etcdEndpoint(t)
	testutil.CheckGoroutines(t)
	ctx := context.Background()
	s := openEtcdTest(t, EtcdOptions{Endpoints: []string{ep}})
	leaderKey := s.Prefix() + ElectionDir + "/test"
	resp, err := s.Client().Put(ctx, leaderKey, "me")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, obj("k", "before", `1`)); err != nil {
		t.Fatalf("Create without fence: %v", err)
	}

	s.SetFence(&Fence{})
	if _, err := s.Create(ctx, obj("k", "a", `1`)); !errors.Is(err, ErrFenced) {
		t.Fatalf("Create under the zero fence: err = %v, want ErrFenced", err)
	}

	s.SetFence(&Fence{Key: leaderKey, Rev: resp.Header.Revision})
	a, err := s.Create(ctx, obj("k", "a", `1`))
	if err != nil {
		t.Fatalf("Create while the fence holds: %v", err)
	}
	// A failed condition is still told apart from a failed fence.
	if _, err := s.Create(ctx, obj("k", "a", `1`)); !errors.Is(err, ErrExists) {
		t.Fatalf("Create(a) again while the fence holds: err = %v, want ErrExists", err)
	}
	if _, err := s.Update(ctx, Object{Kind: "k", Name: "a", Revision: a.Revision + 100, Value: json.RawMessage(`2`)}); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale Update while the fence holds: err = %v, want ErrConflict", err)
	}

	// The key recreated is another term: same name, new creation revision.
	if _, err := s.Client().Delete(ctx, leaderKey); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client().Put(ctx, leaderKey, "someone else"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, obj("k", "a", `3`)); !errors.Is(err, ErrFenced) {
		t.Fatalf("Update after the fence key changed: err = %v, want ErrFenced", err)
	}
	if err := s.Delete(ctx, "k", "a", 0); !errors.Is(err, ErrFenced) {
		t.Fatalf("Delete after the fence key changed: err = %v, want ErrFenced", err)
	}
	if got, err := s.Get(ctx, "k", "a"); err != nil || got.Revision != a.Revision {
		t.Fatalf("Get(a) = %+v, %v; want it unchanged at revision %d", got, err, a.Revision)
	}
	s.SetFence(nil)
	if err := s.Delete(ctx, "k", "a", 0); err != nil {
		t.Fatalf("Delete without fence: %v", err)
	}
}

// TestEtcdWatchAfterCompaction: a watch from a revision etcd has compacted
// away still gets the contract's replay of the current objects, then the
// live changes.
func TestEtcdWatchAfterCompaction(t *testing.T) {
	ep := etcdEndpoint(t)
	testutil.CheckGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := openEtcdTest(t, EtcdOptions{Endpoints: []string{ep}})
	first, err := s.Create(ctx, obj("vms", "a", `1`))
	if err != nil {
		t.Fatal(err)
	}
	s.Create(ctx, obj("vms", "b", `1`))
	s.Update(ctx, obj("vms", "a", `2`))
	s.Delete(ctx, "vms", "b", 0)
	_, cur, _ := s.List(ctx, "vms")
	if _, err := s.Client().Compact(ctx, cur, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	ch, err := s.Watch(ctx, "vms", first.Revision)
	if err != nil {
		t.Fatalf("Watch(%d) after compaction to %d: %v", first.Revision, cur, err)
	}
	if ev := recv(t, ch); ev.Type != EventPut || ev.Object.Name != "a" || string(ev.Object.Value) != `2` {
		t.Fatalf("first event = %v %s %s; want the replay of a = 2", ev.Type, ev.Object.Name, ev.Object.Value)
	}
	c, _ := s.Create(ctx, obj("vms", "c", `1`))
	if ev := recv(t, ch); ev.Type != EventPut || ev.Object.Name != "c" || ev.Object.Revision != c.Revision {
		t.Fatalf("second event = %v %s@%d; want the live create of c@%d", ev.Type, ev.Object.Name, ev.Object.Revision, c.Revision)
	}
}

// TestEtcdUnreachable: with no etcd behind the endpoint, calls fail within
// the request timeout with an error that says what to check.
func TestEtcdUnreachable(t *testing.T) {
	testutil.CheckGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there any more
	s := openEtcdTest(t, EtcdOptions{Endpoints: []string{dead}, RequestTimeout: 100 * time.Millisecond})
	done := make(chan error, 1)
	go func() {
		_, err := s.Get(context.Background(), "vms", "a")
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(etcdWait):
		t.Fatalf("Get against an unreachable etcd still blocked after %v", etcdWait)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), dead) || !strings.Contains(err.Error(), `vms "a"`) {
		t.Fatalf("Get against an unreachable etcd: err = %v; want a deadline error naming the object and the endpoint", err)
	}
}
