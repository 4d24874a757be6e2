package manager

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/vmfex/vmfex/internal/etcdtest"
	"github.com/vmfex/vmfex/internal/testutil"
	"github.com/vmfex/vmfex/manager/store"
)

// electionWait bounds every wait of the election tests: a failure deadline
// for race-built code on two busy cores, not a measure of anything.
const electionWait = 3 * time.Minute

// startEtcd starts a single-member etcd for the test on free loopback ports
// and returns its client URL; the test's cleanup stops it.
func startEtcd(t *testing.T) string {
	t.Helper()
	endpoint, stop, err := etcdtest.Start(t.TempDir(), electionWait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return endpoint
}

// member is one manager of an active/standby pair: its store, election and
// HTTP server.
type member struct {
	t   *testing.T
	url string
	st  *store.EtcdStore
	el  *Election
	hs  *httptest.Server
}

const testPrefix = "/vmfex-election-test/"

// roomyTTL is the session TTL of tests that hand over by revoking or
// closing, never by expiry: long enough that a stalled race-built manager
// keeps its role, short enough that a revoked one notices (at TTL/3).
const roomyTTL = 10 * time.Second

// startMember starts a manager on the etcd at endpoint and serves its API.
// The session TTL is how long the manager may stall before it loses the
// active role: tests that do not wait for an expiry give it room.
func startMember(t *testing.T, endpoint string, ttl time.Duration) *member {
	t.Helper()
	st, err := store.OpenEtcd(store.EtcdOptions{Endpoints: []string{endpoint}, Prefix: testPrefix})
	if err != nil {
		t.Fatal(err)
	}
	// The URL is needed before the server runs: it is what the election
	// advertises.
	hs := httptest.NewUnstartedServer(nil)
	m := &member{t: t, url: "http://" + hs.Listener.Addr().String(), st: st, hs: hs}
	m.el, err = StartElection(ElectionConfig{Store: st, Advertise: m.url, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Store: st, Token: testToken, Leader: m.el})
	if err != nil {
		t.Fatal(err)
	}
	hs.Config.Handler = srv
	hs.Start()
	t.Cleanup(m.stop)
	return m
}

// stop is idempotent.
func (m *member) stop() {
	m.hs.Close()
	m.el.Close()
	m.st.Close()
}

func (m *member) waitRole(want ElectionRole) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), electionWait)
	defer cancel()
	if err := m.el.WaitRole(ctx, want); err != nil {
		m.t.Fatalf("manager %s: %v", m.url, err)
	}
}

// do sends a request with the token and returns the status and body.
func (m *member) do(method, path, body string) (int, []byte, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r, err := http.NewRequest(method, m.url+path, rd)
	if err != nil {
		return 0, nil, err
	}
	r.Header.Set("Authorization", "Bearer "+testToken)
	c := http.Client{Timeout: electionWait}
	resp, err := c.Do(r)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (m *member) must(method, path, body string, want int) []byte {
	m.t.Helper()
	status, b, err := m.do(method, path, body)
	if err != nil || status != want {
		m.t.Fatalf("%s %s%s %s: status %d, %v, want %d: %s", method, m.url, path, body, status, err, want, b)
	}
	return b
}

// mustStandby checks that a write to m is refused with 503 naming active.
func (m *member) mustStandby(active *member) {
	m.t.Helper()
	b := m.must("POST", "/api/v1/fabric-interconnects", `{"name":"refused"}`, http.StatusServiceUnavailable)
	var e Error
	if err := json.Unmarshal(b, &e); err != nil || !strings.Contains(e.Message, active.url) || !strings.Contains(e.Hint, active.url) {
		m.t.Fatalf("standby %s answered %s (%v); want a JSON error naming the active manager %s", m.url, b, err, active.url)
	}
}

// veth returns the vEth the manager assigned to VM name.
func (m *member) veth(name string) int {
	m.t.Helper()
	var vm VM
	if err := json.Unmarshal(m.must("GET", "/api/v1/vms/"+name, "", 200), &vm); err != nil {
		m.t.Fatal(err)
	}
	return vm.VEth
}

// revokeSession deletes the active manager's election key the way its
// lease's expiry would after a crash: behind its back.
func revokeSession(t *testing.T, endpoint string) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), electionWait)
	defer cancel()
	resp, err := cli.Get(ctx, testPrefix+store.ElectionDir+"/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("read the election's leader: %v, %d keys", err, len(resp.Kvs))
	}
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatalf("revoke the leader's lease: %v", err)
	}
}

func TestActiveStandby(t *testing.T) {
	// First, so that its check runs after the server stopped.
	testutil.CheckGoroutinesWithin(t, electionWait)
	ep := startEtcd(t)

	a := startMember(t, ep, roomyTTL)
	a.waitRole(RoleActive)
	b := startMember(t, ep, roomyTTL)

	a.must("POST", "/api/v1/fabric-interconnects", `{"name":"fi-a"}`, 201)
	a.must("POST", "/api/v1/hosts", `{"name":"esx1","fi":"fi-a","server_port":"Ethernet1/1"}`, 201)
	a.must("POST", "/api/v1/port-profiles", `{"name":"web","access_vlan":10}`, 201)
	a.must("POST", "/api/v1/vms", `{"name":"vm1","host":"esx1","port_profile":"web","mac":"00:25:B5:00:00:01"}`, 201)

	// The standby refuses writes, naming the active, and serves reads.
	if got := b.el.Role(); got != RoleStandby {
		t.Fatalf("second manager is %v, want standby", got)
	}
	b.mustStandby(a)
	b.must("DELETE", "/api/v1/vms/vm1", "", http.StatusServiceUnavailable)
	b.must("PUT", "/api/v1/fabric-interconnects/fi-a", `{"name":"fi-a"}`, http.StatusServiceUnavailable)
	if v := b.veth("vm1"); v != a.veth("vm1") || v == 0 {
		t.Fatalf("standby reads vm1 with vEth %d, active with %d", v, a.veth("vm1"))
	}

	// While the active dies, a writer keeps writing to whichever manager
	// takes it; every write acknowledged must survive.
	var (
		mu    sync.Mutex
		acked []string
	)
	stopWriter := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for i := 0; ; i++ {
			select {
			case <-stopWriter:
				return
			default:
			}
			name := fmt.Sprintf("fi-%d", i)
			for _, m := range []*member{a, b} {
				status, _, err := m.do("POST", "/api/v1/fabric-interconnects", `{"name":"`+name+`"}`)
				if err == nil && status == http.StatusCreated {
					mu.Lock()
					acked = append(acked, name)
					mu.Unlock()
					break
				}
				if err == nil && status != http.StatusServiceUnavailable {
					t.Errorf("POST %s to %s: status %d, want 201 or 503", name, m.url, status)
					return
				}
			}
			time.Sleep(5 * time.Millisecond) // a client's pace, not a spin
		}
	}()

	revokeSession(t, ep) // a's lease is gone, as if a had been killed
	b.waitRole(RoleActive)
	a.waitRole(RoleStandby)
	close(stopWriter)
	<-writerDone

	a.mustStandby(b)
	b.must("POST", "/api/v1/vms", `{"name":"vm2","host":"esx1","port_profile":"web","mac":"00:25:B5:00:00:02"}`, 201)
	if v1, v2 := b.veth("vm1"), b.veth("vm2"); v2 <= v1 {
		t.Fatalf("vm2 got vEth %d after vm1's %d: the new active lost the vEth counter", v2, v1)
	}
	var list ListResponse[FabricInterconnect]
	if err := json.Unmarshal(b.must("GET", "/api/v1/fabric-interconnects", "", 200), &list); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, fi := range list.Items {
		have[fi.Name] = true
	}
	mu.Lock()
	defer mu.Unlock()
	for _, name := range append([]string{"fi-a"}, acked...) {
		if !have[name] {
			t.Errorf("acknowledged %s lost across the failover", name)
		}
	}
	if have["refused"] {
		t.Error("a write refused with 503 was stored")
	}
	t.Logf("%d writes acknowledged during the failover", len(acked))

	// A graceful stop hands over at once, without waiting for the TTL.
	b.stop()
	a.waitRole(RoleActive)
	a.must("DELETE", "/api/v1/vms/vm2", "", http.StatusNoContent)
}

func TestStandbyWithoutActive(t *testing.T) {
	// First, so that its check runs after the server stopped.
	testutil.CheckGoroutinesWithin(t, electionWait)
	ep := startEtcd(t)
	a := startMember(t, ep, roomyTTL)
	a.waitRole(RoleActive)
	// Close stops campaigning: the manager stays a standby, knows no
	// active, and says to retry later.
	a.el.Close()
	status, body, err := a.do("POST", "/api/v1/fabric-interconnects", `{"name":"x"}`)
	if err != nil || status != http.StatusServiceUnavailable || !strings.Contains(string(body), "no active manager") {
		t.Fatalf("write after the election closed: %d %s, %v; want 503 with no active manager known", status, body, err)
	}
}

// TestFailoverOnLeaseExpiry: an active manager that loses etcd without a
// word (killed, or cut off) is replaced once its lease expires.
func TestFailoverOnLeaseExpiry(t *testing.T) {
	testutil.CheckGoroutinesWithin(t, electionWait)
	ep := startEtcd(t)
	a := startMember(t, ep, DefaultElectionTTL)
	a.waitRole(RoleActive)
	b := startMember(t, ep, DefaultElectionTTL)
	a.must("POST", "/api/v1/fabric-interconnects", `{"name":"fi-a"}`, 201)

	// Closing a's client stops its keep-alives and leaves its lease to
	// expire, as a SIGKILL would; a cannot revoke it any more.
	a.hs.Close()
	a.st.Close()
	b.waitRole(RoleActive)
	b.must("POST", "/api/v1/fabric-interconnects", `{"name":"fi-b"}`, 201)
	b.must("GET", "/api/v1/fabric-interconnects/fi-a", "", 200)
}
