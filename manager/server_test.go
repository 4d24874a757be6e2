package manager

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfex/vmfex/manager/store"
)

const testToken = "s3cret-token"

type env struct {
	t     *testing.T
	srv   *httptest.Server
	store *store.BoltStore
	path  string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, path: filepath.Join(t.TempDir(), "manager.db")}
	e.start()
	return e
}

// start opens the store and serves the API on it.
func (e *env) start() {
	e.t.Helper()
	st, err := store.OpenBolt(e.path)
	if err != nil {
		e.t.Fatal(err)
	}
	s, err := New(Config{Store: st, Token: testToken})
	if err != nil {
		e.t.Fatal(err)
	}
	e.store, e.srv = st, httptest.NewServer(s)
	e.t.Cleanup(e.stop)
}

// stop is idempotent so that tests can restart the manager.
func (e *env) stop() {
	if e.srv != nil {
		e.srv.Close()
		e.store.Close()
		e.srv = nil
	}
}

type resp struct {
	status int
	body   []byte
}

func (r resp) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("response %s is not JSON: %v", r.body, err)
	}
}

func (e *env) req(method, path, body string, token string) resp {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := e.srv.Client().Do(r)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, b}
}

func (e *env) do(method, path, body string) resp { return e.req(method, path, body, testToken) }

// must runs a request that has to succeed.
func (e *env) must(method, path, body string, want int) resp {
	e.t.Helper()
	r := e.do(method, path, body)
	if r.status != want {
		e.t.Fatalf("%s %s %s: status %d, want %d: %s", method, path, body, r.status, want, r.body)
	}
	return r
}

// dump is the whole store, revision included, to show that a rejected
// request changed nothing.
func (e *env) dump() string {
	e.t.Helper()
	var b strings.Builder
	for _, k := range append(Kinds, kindCounters) {
		objs, rev, err := e.store.List(context.Background(), k)
		if err != nil {
			e.t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s@%d:", k, rev)
		for _, o := range objs {
			fmt.Fprintf(&b, " %s@%d=%s", o.Name, o.Revision, o.Value)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// fabric creates fi-a, host esx1 on Ethernet1/1 (2 vNICs), esx2, port
// profiles web (access 10, max_ports 2) and db (trunk), and VM vm1.
func (e *env) fabric() {
	e.must("POST", "/api/v1/fabric-interconnects", `{"name":"fi-a"}`, 201)
	e.must("POST", "/api/v1/hosts", `{"name":"esx1","fi":"fi-a","server_port":"Ethernet1/1","max_vnics":2}`, 201)
	e.must("POST", "/api/v1/hosts", `{"name":"esx2","fi":"fi-a","server_port":"Ethernet1/2"}`, 201)
	e.must("POST", "/api/v1/port-profiles", `{"name":"web","access_vlan":10,"max_ports":2,"qos_class":"gold","high_performance":true}`, 201)
	e.must("POST", "/api/v1/port-profiles", `{"name":"db","mode":"trunk","allowed_vlans":[30,20,20],"native_vlan":20}`, 201)
	e.must("POST", "/api/v1/vms", `{"name":"vm1","host":"esx1","port_profile":"web","mac":"00:25:B5:00:00:01","ip":"10.0.10.11"}`, 201)
}

func TestCreateDefaultsAndGet(t *testing.T) {
	e := newEnv(t)
	e.fabric()
	var p PortProfile
	e.must("GET", "/api/v1/port-profiles/db", "", 200).decode(t, &p)
	if p.Mode != "trunk" || fmt.Sprint(p.AllowedVLANs) != "[20 30]" || p.QoSClass != "best-effort" ||
		p.MACForging != "allow" || p.MaxPorts != DefaultMaxPorts || p.Revision == 0 {
		t.Errorf("GET db = %+v; want trunk [20 30], best-effort, allow, max_ports %d, a revision", p, DefaultMaxPorts)
	}
	var h Host
	e.must("GET", "/api/v1/hosts/esx2", "", 200).decode(t, &h)
	if h.MaxVNICs != DefaultMaxVNICs {
		t.Errorf("esx2 max_vnics = %d, want default %d", h.MaxVNICs, DefaultMaxVNICs)
	}
	var v VM
	e.must("GET", "/api/v1/vms/vm1", "", 200).decode(t, &v)
	if v.MAC != "00:25:b5:00:00:01" || v.VEth != FirstVEth || v.ModeRequested != "direct" || v.MemMiB != DefaultMemMiB {
		t.Errorf("GET vm1 = %+v", v)
	}
	var list ListResponse[VM]
	e.must("GET", "/api/v1/vms", "", 200).decode(t, &list)
	if len(list.Items) != 1 || list.Revision < v.Revision {
		t.Errorf("list = %+v", list)
	}
	var empty struct{ Items []VM }
	e.must("GET", "/api/v1/vms", "", 200)
	e.must("DELETE", "/api/v1/vms/vm1", "", 204)
	e.must("GET", "/api/v1/vms", "", 200).decode(t, &empty)
	if empty.Items == nil {
		t.Error(`empty list is null, want []`)
	}
}

// TestRejectedRequests checks that each bad request gets its status and a
// message naming the problem, and leaves the store exactly as it was.
func TestRejectedRequests(t *testing.T) {
	e := newEnv(t)
	e.fabric()
	// small: 1 port, used by vm2 on esx2.
	e.must("POST", "/api/v1/port-profiles", `{"name":"small","access_vlan":40,"max_ports":1}`, 201)
	e.must("POST", "/api/v1/vms", `{"name":"vm2","host":"esx2","port_profile":"small","mac":"00:25:b5:00:00:02"}`, 201)
	var vm1 VM
	e.must("GET", "/api/v1/vms/vm1", "", 200).decode(t, &vm1)

	vm := func(name, host, prof, mac string) string {
		return fmt.Sprintf(`{"name":%q,"host":%q,"port_profile":%q,"mac":%q}`, name, host, prof, mac)
	}
	cases := []struct {
		name, method, path, body string
		status                   int
		want                     string // in the error message
	}{
		{"access vlan 0", "POST", "/api/v1/port-profiles", `{"name":"p","access_vlan":0}`, 400, "no access_vlan"},
		{"access vlan 4095", "POST", "/api/v1/port-profiles", `{"name":"p","access_vlan":4095}`, 400, "access_vlan 4095 is out of range"},
		{"negative vlan", "POST", "/api/v1/port-profiles", `{"name":"p","access_vlan":-1}`, 400, "out of range"},
		{"trunk vlan 4095", "POST", "/api/v1/port-profiles", `{"name":"p","mode":"trunk","allowed_vlans":[10,4095]}`, 400, "allowed_vlans entry 4095"},
		{"trunk vlan 0", "POST", "/api/v1/port-profiles", `{"name":"p","mode":"trunk","allowed_vlans":[0]}`, 400, "allowed_vlans entry 0"},
		{"trunk no vlans", "POST", "/api/v1/port-profiles", `{"name":"p","mode":"trunk"}`, 400, "no allowed_vlans"},
		{"native not allowed", "POST", "/api/v1/port-profiles", `{"name":"p","mode":"trunk","allowed_vlans":[10],"native_vlan":20}`, 400, "native_vlan 20 is not in allowed_vlans"},
		{"access with trunk fields", "POST", "/api/v1/port-profiles", `{"name":"p","access_vlan":10,"allowed_vlans":[10]}`, 400, "trunk port profiles only"},
		{"bad mode", "POST", "/api/v1/port-profiles", `{"name":"p","mode":"hybrid","access_vlan":10}`, 400, `mode "hybrid"`},
		{"bad qos", "POST", "/api/v1/port-profiles", `{"name":"p","access_vlan":10,"qos_class":"diamond"}`, 400, `qos_class "diamond"`},
		{"bad mac forging", "POST", "/api/v1/port-profiles", `{"name":"p","access_vlan":10,"mac_forging":"maybe"}`, 400, "mac_forging"},
		{"max ports 0 is default, negative is not", "POST", "/api/v1/port-profiles", `{"name":"p","access_vlan":10,"max_ports":-3}`, 400, "max_ports -3"},
		{"duplicate profile", "POST", "/api/v1/port-profiles", `{"name":"web","access_vlan":11}`, 409, `port profile "web" already exists`},
		{"unknown field", "POST", "/api/v1/port-profiles", `{"name":"p","access_vlan":10,"vlan":10}`, 400, `unknown field "vlan"`},
		{"malformed JSON", "POST", "/api/v1/port-profiles", `{"name":"p",`, 400, "not a valid port profile"},
		{"wrong type", "POST", "/api/v1/port-profiles", `{"name":"p","access_vlan":"10"}`, 400, "not a valid port profile"},
		{"trailing data", "POST", "/api/v1/port-profiles", `{"name":"p","access_vlan":10} {}`, 400, "data after the JSON object"},
		{"empty body", "POST", "/api/v1/fabric-interconnects", ``, 400, "not a valid fabric interconnect"},
		{"bad name", "POST", "/api/v1/fabric-interconnects", `{"name":"fi b"}`, 400, `name "fi b" is not valid`},
		{"no name", "POST", "/api/v1/fabric-interconnects", `{}`, 400, "has no name"},
		{"duplicate fi", "POST", "/api/v1/fabric-interconnects", `{"name":"fi-a"}`, 409, "already exists"},
		{"host missing fi", "POST", "/api/v1/hosts", `{"name":"h","fi":"fi-z","server_port":"Ethernet1/9"}`, 422, `fabric interconnect "fi-z" (fi of host h) does not exist`},
		{"host bad port", "POST", "/api/v1/hosts", `{"name":"h","fi":"fi-a","server_port":"eth0"}`, 400, `server_port "eth0"`},
		{"host port taken", "POST", "/api/v1/hosts", `{"name":"h","fi":"fi-a","server_port":"Ethernet1/1"}`, 409, "already cabled to host esx1"},
		{"host too many vnics", "POST", "/api/v1/hosts", `{"name":"h","fi":"fi-a","server_port":"Ethernet1/9","max_vnics":5000}`, 400, "max_vnics 5000"},
		{"vm missing host", "POST", "/api/v1/vms", vm("v", "esx9", "web", "00:25:b5:00:00:09"), 422, `host "esx9" (host of VM v) does not exist`},
		{"vm missing profile", "POST", "/api/v1/vms", vm("v", "esx2", "nope", "00:25:b5:00:00:09"), 422, `port profile "nope" (port_profile of VM v) does not exist`},
		{"vm multicast mac", "POST", "/api/v1/vms", vm("v", "esx2", "web", "01:00:5e:00:00:01"), 400, "is not unicast (a multicast or broadcast address)"},
		{"vm broadcast mac", "POST", "/api/v1/vms", vm("v", "esx2", "web", "ff:ff:ff:ff:ff:ff"), 400, "is not unicast"},
		{"vm zero mac", "POST", "/api/v1/vms", vm("v", "esx2", "web", "00:00:00:00:00:00"), 400, "not a usable address"},
		{"vm bad mac", "POST", "/api/v1/vms", vm("v", "esx2", "web", "00:25:b5"), 400, "not a MAC address"},
		{"vm duplicate mac", "POST", "/api/v1/vms", vm("v", "esx2", "web", "00:25:B5:00:00:01"), 409, "already used by VM vm1"},
		{"vm bad ip", "POST", "/api/v1/vms", `{"name":"v","host":"esx2","port_profile":"web","mac":"00:25:b5:00:00:09","ip":"10.0.0.300"}`, 400, "not an IP address"},
		{"vm bad mode", "POST", "/api/v1/vms", `{"name":"v","host":"esx2","port_profile":"web","mac":"00:25:b5:00:00:09","mode_requested":"fast"}`, 400, "mode_requested"},
		{"vm sets veth", "POST", "/api/v1/vms", `{"name":"v","host":"esx2","port_profile":"web","mac":"00:25:b5:00:00:09","veth":5}`, 400, "veth and vif are assigned by the manager"},
		{"vm duplicate", "POST", "/api/v1/vms", vm("vm1", "esx2", "web", "00:25:b5:00:00:09"), 409, `VM "vm1" already exists`},
		{"max_ports reached", "POST", "/api/v1/vms", vm("v", "esx1", "small", "00:25:b5:00:00:09"), 409, "all its max_ports (1) in use, by VMs vm2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { e.t = t; e.rejected(c.method, c.path, c.body, c.status, c.want) })
	}
	e.t = t

	// Fill esx1 (max_vnics 2) and check the third vNIC is refused.
	e.must("POST", "/api/v1/vms", vm("vm3", "esx1", "db", "00:25:b5:00:00:03"), 201)
	later := []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"max_vnics reached", "POST", "/api/v1/vms", vm("v", "esx1", "db", "00:25:b5:00:00:09"), 409, "host esx1 has all its 2 dynamic vNICs in use"},
		{"move vm onto full profile", "PUT", "/api/v1/vms/vm1", vm("vm1", "esx1", "small", "00:25:b5:00:00:01"), 409, "max_ports"},
		{"move vm onto full host", "PUT", "/api/v1/vms/vm2", vm("vm2", "esx1", "small", "00:25:b5:00:00:02"), 409, "dynamic vNICs"},
		{"change veth", "PUT", "/api/v1/vms/vm1", `{"host":"esx1","port_profile":"web","mac":"00:25:b5:00:00:01","veth":40000}`, 400, "cannot change"},
		{"stale revision", "PUT", "/api/v1/vms/vm1", fmt.Sprintf(`{"revision":%d,"host":"esx1","port_profile":"web","mac":"00:25:b5:00:00:01"}`, vm1.Revision-1), 409, "changed by someone else"},
		{"rename", "PUT", "/api/v1/vms/vm1", vm("vm9", "esx1", "web", "00:25:b5:00:00:01"), 400, `name "vm9" in the body differs from "vm1"`},
		{"update missing", "PUT", "/api/v1/vms/vm9", vm("vm9", "esx1", "web", "00:25:b5:00:00:01"), 404, `VM "vm9" not found`},
		{"update unknown field", "PUT", "/api/v1/vms/vm1", `{"host":"esx1","port_profile":"web","mac":"00:25:b5:00:00:01","vlan":3}`, 400, "unknown field"},
		{"update to missing profile", "PUT", "/api/v1/vms/vm1", vm("vm1", "esx1", "gone", "00:25:b5:00:00:01"), 422, `port profile "gone"`},
		{"lower max_vnics below use", "PUT", "/api/v1/hosts/esx1", `{"fi":"fi-a","server_port":"Ethernet1/1","max_vnics":1}`, 409, "runs 2 VMs, more than max_vnics 1"},
		{"host to missing fi", "PUT", "/api/v1/hosts/esx1", `{"fi":"fi-b","server_port":"Ethernet1/1","max_vnics":2}`, 422, `"fi-b"`},
		{"delete profile in use", "DELETE", "/api/v1/port-profiles/web", "", 409, `port profile "web" is in use by VMs vm1`},
		{"delete host with vms", "DELETE", "/api/v1/hosts/esx1", "", 409, `host "esx1" still runs VMs vm1, vm3`},
		{"delete fi with hosts", "DELETE", "/api/v1/fabric-interconnects/fi-a", "", 409, "in use by hosts esx1, esx2"},
		{"delete stale revision", "DELETE", fmt.Sprintf("/api/v1/vms/vm1?revision=%d", vm1.Revision+100), "", 409, "changed by someone else"},
		{"delete bad revision", "DELETE", "/api/v1/vms/vm1?revision=abc", "", 400, "not a revision"},
		{"delete missing", "DELETE", "/api/v1/vms/nope", "", 404, "not found"},
		{"get missing", "GET", "/api/v1/port-profiles/nope", "", 404, `port profile "nope" not found`},
		{"no such endpoint", "GET", "/api/v1/vnics", "", 404, "no endpoint"},
	}
	for _, c := range later {
		t.Run(c.name, func(t *testing.T) { e.t = t; e.rejected(c.method, c.path, c.body, c.status, c.want) })
	}
	e.t = t
	e.must("POST", "/api/v1/vms", vm("vm4", "esx2", "web", "00:25:b5:00:00:04"), 201)
	e.rejected("PUT", "/api/v1/port-profiles/web", `{"access_vlan":10,"max_ports":1}`, 409, "bound to 2 VMs, more than max_ports 1")
	e.must("PUT", "/api/v1/port-profiles/web", `{"access_vlan":10,"max_ports":2}`, 200)
}

// rejected sends a request that must fail with status and a message
// containing want, and checks it changed nothing.
func (e *env) rejected(method, path, body string, status int, want string) {
	e.t.Helper()
	before := e.dump()
	r := e.do(method, path, body)
	if r.status != status {
		e.t.Fatalf("%s %s %s: status %d, want %d: %s", method, path, body, r.status, status, r.body)
	}
	var ae Error
	r.decode(e.t, &ae)
	if !strings.Contains(ae.Message, want) {
		e.t.Errorf("%s %s: error %q does not contain %q", method, path, ae.Message, want)
	}
	if ae.Hint == "" {
		e.t.Errorf("%s %s: error %q has no hint", method, path, ae.Message)
	}
	if after := e.dump(); after != before {
		e.t.Errorf("%s %s changed the store:\nbefore:\n%s\nafter:\n%s", method, path, before, after)
	}
}

func TestUpdateWithRevision(t *testing.T) {
	e := newEnv(t)
	e.fabric()
	var v VM
	e.must("GET", "/api/v1/vms/vm1", "", 200).decode(t, &v)
	v.IP, v.ModeRequested = "10.0.10.99", "emulated"
	b, _ := json.Marshal(v)
	var got VM
	e.must("PUT", "/api/v1/vms/vm1", string(b), 200).decode(t, &got)
	if got.IP != "10.0.10.99" || got.VEth != v.VEth || got.Revision <= v.Revision {
		t.Errorf("PUT = %+v; want new ip, same veth %d, newer revision than %d", got, v.VEth, v.Revision)
	}
	// The same body again carries the old revision now.
	e.rejected("PUT", "/api/v1/vms/vm1", string(b), 409, "changed by someone else")
	e.must("DELETE", fmt.Sprintf("/api/v1/vms/vm1?revision=%d", got.Revision), "", 204)
}

func TestVEthStableAndNeverReused(t *testing.T) {
	e := newEnv(t)
	e.fabric() // vm1: 32769
	create := func(name, mac string) int {
		var v VM
		e.must("POST", "/api/v1/vms", fmt.Sprintf(`{"name":%q,"host":"esx2","port_profile":"db","mac":%q}`, name, mac), 201).decode(t, &v)
		return v.VEth
	}
	veth := func(name string) int {
		var v VM
		e.must("GET", "/api/v1/vms/"+name, "", 200).decode(t, &v)
		return v.VEth
	}
	if got := create("vm2", "00:25:b5:00:00:02"); got != FirstVEth+1 {
		t.Fatalf("vm2 veth = %d, want %d", got, FirstVEth+1)
	}
	// Moving the VM to another host and profile keeps its vEth.
	e.must("PUT", "/api/v1/vms/vm1", `{"host":"esx2","port_profile":"db","mac":"00:25:b5:00:00:01","mode_requested":"emulated"}`, 200)
	if got := veth("vm1"); got != FirstVEth {
		t.Errorf("vm1 veth after move = %d, want %d", got, FirstVEth)
	}
	e.must("DELETE", "/api/v1/vms/vm2", "", 204)
	if got := create("vm3", "00:25:b5:00:00:03"); got != FirstVEth+2 {
		t.Errorf("vm3 veth = %d, want %d (vm2's %d must not be reused)", got, FirstVEth+2, FirstVEth+1)
	}
	// A recreated VM is a new VM: a new number.
	e.must("DELETE", "/api/v1/vms/vm1", "", 204)
	if got := create("vm1", "00:25:b5:00:00:01"); got != FirstVEth+3 {
		t.Errorf("recreated vm1 veth = %d, want %d", got, FirstVEth+3)
	}
	// The counter is durable: after a restart numbering goes on.
	e.stop()
	e.start()
	if got := veth("vm3"); got != FirstVEth+2 {
		t.Errorf("vm3 veth after restart = %d, want %d", got, FirstVEth+2)
	}
	if got := create("vm4", "00:25:b5:00:00:04"); got != FirstVEth+4 {
		t.Errorf("vm4 veth after restart = %d, want %d", got, FirstVEth+4)
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t)
	for _, tok := range []string{"", "wrong", testToken + "x"} {
		before := e.dump()
		r := e.req("POST", "/api/v1/fabric-interconnects", `{"name":"fi-x"}`, tok)
		if r.status != 401 {
			t.Errorf("token %q: status %d, want 401", tok, r.status)
		}
		var ae Error
		r.decode(t, &ae)
		if ae.Hint == "" || !strings.Contains(ae.Message, "bearer token") {
			t.Errorf("token %q: error %+v, want one about the bearer token with a hint", tok, ae)
		}
		if e.dump() != before {
			t.Errorf("token %q: unauthenticated request changed the store", tok)
		}
	}
	for _, path := range []string{"/api/v1/vms", "/api/v1/vms/x", "/api/v1/watch?kind=vms"} {
		if r := e.req("GET", path, "", ""); r.status != 401 {
			t.Errorf("GET %s without token: status %d, want 401", path, r.status)
		}
	}
	if r := e.req("GET", "/healthz", "", ""); r.status != 200 {
		t.Errorf("GET /healthz without token: %d", r.status)
	}
	if r := e.req("GET", "/api/v1/openapi.yaml", "", ""); r.status != 200 || !strings.HasPrefix(string(r.body), "openapi: 3") {
		t.Errorf("GET openapi.yaml: %d %.40s", r.status, r.body)
	}
}

// watchLines streams a watch and returns its lines on a channel.
func (e *env) watch(ctx context.Context, query string) (<-chan WatchEvent, int) {
	e.t.Helper()
	r, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/api/v1/watch?"+query, nil)
	r.Header.Set("Authorization", "Bearer "+testToken)
	res, err := e.srv.Client().Do(r)
	if err != nil {
		e.t.Fatal(err)
	}
	ch := make(chan WatchEvent, 100)
	if res.StatusCode != 200 {
		res.Body.Close()
		close(ch)
		return ch, res.StatusCode
	}
	go func() {
		defer close(ch)
		defer res.Body.Close()
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			var ev WatchEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				ev = WatchEvent{Type: "bad line: " + sc.Text()}
			}
			ch <- ev
		}
	}()
	return ch, 200
}

func next(t *testing.T, ch <-chan WatchEvent) WatchEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch stream ended")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no watch event within 5s")
	}
	return WatchEvent{}
}

func TestWatch(t *testing.T) {
	e := newEnv(t)
	e.fabric()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var list ListResponse[VM]
	e.must("GET", "/api/v1/vms", "", 200).decode(t, &list)
	live, _ := e.watch(ctx, fmt.Sprintf("kind=vms&revision=%d", list.Revision))
	replay, _ := e.watch(ctx, "kind=vms")
	if _, st := e.watch(ctx, "kind=counters"); st != 400 {
		t.Errorf("watch kind=counters: status %d, want 400", st)
	}
	if _, st := e.watch(ctx, fmt.Sprintf("kind=vms&revision=%d", list.Revision+10)); st != 400 {
		t.Errorf("watch from a future revision: status %d, want 400", st)
	}

	if ev := next(t, replay); ev.Type != "put" || ev.Name != "vm1" {
		t.Errorf("replay starts with %+v, want put vm1", ev)
	}
	e.must("POST", "/api/v1/vms", `{"name":"vm2","host":"esx2","port_profile":"db","mac":"00:25:b5:00:00:02"}`, 201)
	e.must("POST", "/api/v1/port-profiles", `{"name":"other","access_vlan":5}`, 201) // another kind
	e.must("PUT", "/api/v1/vms/vm2", `{"host":"esx2","port_profile":"db","mac":"00:25:b5:00:00:02","ip":"10.0.20.2"}`, 200)
	e.must("DELETE", "/api/v1/vms/vm2", "", 204)

	for name, ch := range map[string]<-chan WatchEvent{"live": live, "replay": replay} {
		var last int64
		for i, want := range []string{"put", "put", "delete"} {
			ev := next(t, ch)
			var v VM
			json.Unmarshal(ev.Object, &v)
			if ev.Type != want || ev.Name != "vm2" || ev.Kind != "vms" || ev.Revision <= last || v.Name != "vm2" {
				t.Errorf("%s event %d = %+v, want %s vm2 after revision %d", name, i, ev, want, last)
			}
			if i == 1 && v.IP != "10.0.20.2" {
				t.Errorf("%s update event carries ip %q, want 10.0.20.2", name, v.IP)
			}
			if v.VEth != FirstVEth+1 || v.Revision != ev.Revision {
				t.Errorf("%s event %d object = %+v; want veth %d, revision %d", name, i, v, FirstVEth+1, ev.Revision)
			}
			last = ev.Revision
		}
	}
}

// TestOpenAPICoversRoutes checks that the document lists exactly the
// routes the server registers, by reading its path and method keys.
func TestOpenAPICoversRoutes(t *testing.T) {
	documented := map[string]bool{}
	path := ""
	for _, line := range strings.Split(string(openAPISpec), "\n") {
		if p, ok := strings.CutPrefix(line, "  /"); ok && strings.HasSuffix(p, ":") {
			path = "/" + strings.TrimSuffix(p, ":")
			continue
		}
		if !strings.HasPrefix(line, "  ") || strings.HasPrefix(line, "components:") {
			path = ""
		}
		if m, ok := strings.CutPrefix(line, "    "); ok && path != "" {
			if m, ok := strings.CutSuffix(m, ":"); ok {
				switch m {
				case "get", "put", "post", "delete", "patch":
					documented[strings.ToUpper(m)+" "+path] = true
				}
			}
		}
	}
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s, _ := New(Config{Store: st, Token: "x"})
	registered := map[string]bool{}
	for _, r := range s.Routes() {
		k := r.Method + " " + r.Path
		registered[k] = true
		if !documented[k] {
			t.Errorf("route %s is not in openapi.yaml", k)
		}
	}
	for k := range documented {
		if !registered[k] {
			t.Errorf("openapi.yaml documents %s, which the server does not serve", k)
		}
	}
	if len(registered) < 20 {
		t.Errorf("only %d routes registered", len(registered))
	}
}

func TestNewRefusesEmptyToken(t *testing.T) {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := New(Config{Store: st, Token: " "}); err == nil {
		t.Error("New with a blank token succeeded")
	}
}
