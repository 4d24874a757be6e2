package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// DefaultEtcdPrefix is the key prefix of an EtcdStore when none is given.
const DefaultEtcdPrefix = "/vmfex/"

// DefaultEtcdTimeout bounds every etcd call whose context has no earlier
// deadline.
const DefaultEtcdTimeout = 10 * time.Second

// ErrFenced: the store refused a write because the manager holding it is
// not (or no longer) the active one. See Fence.
var ErrFenced = errors.New("store: write refused, this manager is not the active one")

// Key layout under the prefix P (default "/vmfex/"):
//
//	P objects/<kind>/<name>   the JSON document; its ModRevision is the
//	                          object's revision. <kind> is path-escaped so it
//	                          holds no '/', which keeps kinds apart whatever
//	                          the names hold.
//	P election/<lease id>     the managers' leader election (package manager)
//
// The store revision is etcd's: one cluster-wide counter that every write
// to any key increments, so revisions of one kind have gaps where other
// keys changed. They still only grow, which is all the Store contract asks.
const objectsDir = "objects/"

// ElectionDir is the directory under the prefix that the managers' election
// uses; no object key is ever under it.
const ElectionDir = "election"

// EtcdOptions configures OpenEtcd.
type EtcdOptions struct {
	// Endpoints are the etcd client URLs ("http://10.0.0.1:2379"), used
	// when Client is nil.
	Endpoints []string
	// Client, if not nil, is used instead of dialing Endpoints; Close then
	// leaves it open for its owner.
	Client *clientv3.Client
	// Prefix is put before every key; "" means DefaultEtcdPrefix. Two
	// stores with different prefixes share nothing but the revision.
	Prefix string
	// DialTimeout bounds connecting to Endpoints; 0 means 5 seconds.
	DialTimeout time.Duration
	// RequestTimeout bounds each call whose context has no earlier
	// deadline; 0 means DefaultEtcdTimeout.
	RequestTimeout time.Duration
	// WatchBuffer is the per-watcher bound on pending live events;
	// 0 means DefaultWatchBuffer.
	WatchBuffer int
}

// Fence makes every write of an EtcdStore conditional, in the same etcd
// transaction, on one key existing with one creation revision: the election
// key of the active manager. A manager whose session expired (its key is
// gone, and a standby may already be writing) thus cannot write any more,
// even if it has not noticed yet. The zero Fence refuses every write without
// asking etcd.
type Fence struct {
	Key string // the active manager's election key
	Rev int64  // its creation revision
}

// EtcdStore is a Store in an etcd v3 cluster, shared by every manager
// pointed at it. Writes are etcd transactions comparing the object's
// ModRevision, so they are linearizable and durable once acknowledged (etcd
// commits them to a quorum's WAL first); reads are linearizable.
//
// It starts one goroutine per open watch, which ends when the watch's
// context is cancelled, when the watcher falls behind or etcd ends the
// watch, or at Close; Close waits for them.
type EtcdStore struct {
	cli       *clientv3.Client // immutable
	ownClient bool             // immutable: Close closes cli
	prefix    string           // immutable
	timeout   time.Duration    // immutable
	buffer    int              // immutable

	mu     sync.Mutex
	closed bool   // guarded by mu
	fence  *Fence // guarded by mu; nil: writes are unconditional

	closing context.Context    // done at Close; ends the watchers' goroutines
	close   context.CancelFunc // ends closing
	wg      sync.WaitGroup     // watcher goroutines
}

var _ Store = (*EtcdStore)(nil)

// OpenEtcd returns a store on the etcd cluster of o.Endpoints (or o.Client).
// It does not wait for the cluster: an unreachable one shows as errors of
// the first calls.
func OpenEtcd(o EtcdOptions) (*EtcdStore, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultEtcdPrefix
	}
	if !strings.HasSuffix(o.Prefix, "/") {
		o.Prefix += "/"
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultEtcdTimeout
	}
	if o.WatchBuffer <= 0 {
		o.WatchBuffer = DefaultWatchBuffer
	}
	s := &EtcdStore{
		cli:     o.Client,
		prefix:  o.Prefix,
		timeout: o.RequestTimeout,
		buffer:  o.WatchBuffer,
	}
	s.closing, s.close = context.WithCancel(context.Background())
	if s.cli == nil {
		if len(o.Endpoints) == 0 {
			return nil, errors.New("open etcd store: no endpoints; give the etcd client URLs, e.g. http://127.0.0.1:2379")
		}
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:   o.Endpoints,
			DialTimeout: o.DialTimeout,
			// Errors are returned to the caller; the client's own log
			// would only repeat them.
			Logger: zap.NewNop(),
		})
		if err != nil {
			return nil, fmt.Errorf("open etcd store at %s: %w; check the endpoint URLs", strings.Join(o.Endpoints, ","), err)
		}
		s.cli, s.ownClient = cli, true
	}
	return s, nil
}

// Client returns the etcd client the store uses, for the managers' election
// to share its connection. It is closed by Close if OpenEtcd dialed it.
func (s *EtcdStore) Client() *clientv3.Client { return s.cli }

// Prefix returns the key prefix, ending in '/'.
func (s *EtcdStore) Prefix() string { return s.prefix }

// SetFence makes every later write conditional on f (see Fence); nil makes
// writes unconditional again.
func (s *EtcdStore) SetFence(f *Fence) {
	if f != nil {
		f = &Fence{Key: f.Key, Rev: f.Rev}
	}
	s.mu.Lock()
	s.fence = f
	s.mu.Unlock()
}

func (s *EtcdStore) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *EtcdStore) kindPrefix(kind string) string {
	return s.prefix + objectsDir + url.PathEscape(kind) + "/"
}

func (s *EtcdStore) key(kind, name string) string { return s.kindPrefix(kind) + name }

// opCtx bounds one etcd call by the store's request timeout.
func (s *EtcdStore) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// etcdErr wraps an error of the etcd client for op on kind/name with what
// the caller can do about it.
func (s *EtcdStore) etcdErr(op, kind, name string, err error) error {
	if s.isClosed() {
		return ErrClosed
	}
	what := kind
	if name != "" {
		what = fmt.Sprintf("%s %q", kind, name)
	}
	switch {
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("store: etcd %s %s: %w", op, what, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("store: etcd %s %s: %w; check that the etcd endpoints %s are reachable and the cluster has a leader (etcdctl endpoint health), then retry",
			op, what, err, strings.Join(s.cli.Endpoints(), ","))
	}
	return fmt.Errorf("store: etcd %s %s: %w; check the etcd cluster (etcdctl endpoint health) and retry", op, what, err)
}

// toObject turns a key-value of kind into an Object; the values of the
// etcd client's responses are ours to keep.
func (s *EtcdStore) toObject(kind string, kv *mvccpb.KeyValue) Object {
	return Object{
		Kind:     kind,
		Name:     strings.TrimPrefix(string(kv.Key), s.kindPrefix(kind)),
		Revision: kv.ModRevision,
		Value:    kv.Value,
	}
}

// Get implements Store.
func (s *EtcdStore) Get(ctx context.Context, kind, name string) (Object, error) {
	if err := validKey(kind, name); err != nil {
		return Object{}, err
	}
	if s.isClosed() {
		return Object{}, ErrClosed
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.key(kind, name))
	if err != nil {
		return Object{}, s.etcdErr("get", kind, name, err)
	}
	if len(resp.Kvs) == 0 {
		return Object{}, fmt.Errorf("%w: %s %q", ErrNotFound, kind, name)
	}
	return s.toObject(kind, resp.Kvs[0]), nil
}

// List implements Store.
func (s *EtcdStore) List(ctx context.Context, kind string) ([]Object, int64, error) {
	if err := validKey(kind, "-"); err != nil {
		return nil, 0, err
	}
	if s.isClosed() {
		return nil, 0, ErrClosed
	}
	return s.list(ctx, kind)
}

// list reads the objects of kind sorted by name (etcd's key order) and the
// revision of that read.
func (s *EtcdStore) list(ctx context.Context, kind string) ([]Object, int64, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.kindPrefix(kind), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, s.etcdErr("list", kind, "", err)
	}
	var objs []Object
	for _, kv := range resp.Kvs {
		objs = append(objs, s.toObject(kind, kv))
	}
	return objs, resp.Header.Revision, nil
}

// write commits then if the object kind/name satisfies cond and the fence
// holds. When the transaction fails it returns ErrFenced if the fence did
// not hold, else the object's current key-value (nil if it does not exist)
// for the caller to say why cond failed.
func (s *EtcdStore) write(ctx context.Context, op, kind, name string, cond clientv3.Cmp, then clientv3.Op) (rev int64, cur *mvccpb.KeyValue, ok bool, err error) {
	s.mu.Lock()
	closed, fence := s.closed, s.fence
	s.mu.Unlock()
	if closed {
		return 0, nil, false, ErrClosed
	}
	if fence != nil && fence.Key == "" {
		return 0, nil, false, fmt.Errorf("%w: %s %s %q not written: this manager has not won the election; send the request to the active manager", ErrFenced, op, kind, name)
	}
	key := s.key(kind, name)
	cmps := []clientv3.Cmp{cond}
	orElse := []clientv3.Op{clientv3.OpGet(key)}
	if fence != nil {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(fence.Key), "=", fence.Rev))
		orElse = append(orElse, clientv3.OpGet(fence.Key))
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(then).Else(orElse...).Commit()
	if err != nil {
		return 0, nil, false, s.etcdErr(op, kind, name, err)
	}
	if resp.Succeeded {
		// The header of a write transaction carries the revision it
		// created.
		return resp.Header.Revision, nil, true, nil
	}
	if fence != nil {
		fkvs := resp.Responses[1].GetResponseRange().Kvs
		if len(fkvs) == 0 || fkvs[0].CreateRevision != fence.Rev {
			return 0, nil, false, fmt.Errorf("%w: %s %s %q not written: this manager's election key %s is gone, another manager is or becomes active; send the request to the active manager",
				ErrFenced, op, kind, name, fence.Key)
		}
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		cur = kvs[0]
	}
	return 0, cur, false, nil
}

// Create implements Store.
func (s *EtcdStore) Create(ctx context.Context, obj Object) (Object, error) {
	if err := validObject(obj); err != nil {
		return Object{}, err
	}
	key := s.key(obj.Kind, obj.Name)
	rev, _, ok, err := s.write(ctx, "create", obj.Kind, obj.Name,
		clientv3.Compare(clientv3.CreateRevision(key), "=", 0), clientv3.OpPut(key, string(obj.Value)))
	if err != nil {
		return Object{}, err
	}
	if !ok {
		return Object{}, fmt.Errorf("%w: %s %q; choose another name or update the existing one", ErrExists, obj.Kind, obj.Name)
	}
	return Object{Kind: obj.Kind, Name: obj.Name, Revision: rev, Value: append([]byte(nil), obj.Value...)}, nil
}

// expect is the condition of an Update or Delete expecting revision want
// (0: any) of key.
func expect(key string, want int64) clientv3.Cmp {
	if want == 0 {
		return clientv3.Compare(clientv3.CreateRevision(key), ">", 0)
	}
	return clientv3.Compare(clientv3.ModRevision(key), "=", want)
}

// whyNot explains a failed Update or Delete of kind/name expecting want.
func whyNot(kind, name string, want int64, cur *mvccpb.KeyValue) error {
	if cur == nil {
		return fmt.Errorf("%w: %s %q", ErrNotFound, kind, name)
	}
	return fmt.Errorf("%w: %s %q is at revision %d, not %d; read it again and retry with its current revision",
		ErrConflict, kind, name, cur.ModRevision, want)
}

// Update implements Store.
func (s *EtcdStore) Update(ctx context.Context, obj Object) (Object, error) {
	if err := validObject(obj); err != nil {
		return Object{}, err
	}
	key := s.key(obj.Kind, obj.Name)
	rev, cur, ok, err := s.write(ctx, "update", obj.Kind, obj.Name, expect(key, obj.Revision), clientv3.OpPut(key, string(obj.Value)))
	if err != nil {
		return Object{}, err
	}
	if !ok {
		return Object{}, whyNot(obj.Kind, obj.Name, obj.Revision, cur)
	}
	return Object{Kind: obj.Kind, Name: obj.Name, Revision: rev, Value: append([]byte(nil), obj.Value...)}, nil
}

// Delete implements Store.
func (s *EtcdStore) Delete(ctx context.Context, kind, name string, rev int64) error {
	if err := validKey(kind, name); err != nil {
		return err
	}
	key := s.key(kind, name)
	_, cur, ok, err := s.write(ctx, "delete", kind, name, expect(key, rev), clientv3.OpDelete(key))
	if err != nil {
		return err
	}
	if !ok {
		return whyNot(kind, name, rev, cur)
	}
	return nil
}

// Watch implements Store. The replay is a linearizable read of the kind at
// revision R, and the live events come from an etcd watch starting at R+1,
// so none is missed or repeated. The replay needs no history, so a watch
// from a revision etcd has compacted away works as the contract says; if
// etcd compacts past R before the watch starts (or ends the watch for any
// other reason: lost leader, cancelled) the channel is closed and the client
// lists and watches again.
func (s *EtcdStore) Watch(ctx context.Context, kind string, fromRev int64) (<-chan Event, error) {
	if err := validKey(kind, "-"); err != nil {
		return nil, err
	}
	if fromRev < 0 {
		return nil, fmt.Errorf("%w: negative watch revision %d; use 0 to start from the current state", ErrInvalid, fromRev)
	}
	if s.isClosed() {
		return nil, ErrClosed
	}
	snap, cur, err := s.list(ctx, kind)
	if err != nil {
		return nil, err
	}
	if fromRev > cur {
		return nil, fmt.Errorf("%w: asked to watch from revision %d but the store is at %d; watch from 0 or from a revision a List returned", ErrFutureRevision, fromRev, cur)
	}
	if fromRev == cur && fromRev != 0 {
		snap = nil
	}
	sort.Slice(snap, func(i, j int) bool { return snap[i].Revision < snap[j].Revision })

	// The replay fits in the buffer by construction, so it never counts
	// against the watcher's allowance for live events.
	out := make(chan Event, len(snap)+s.buffer)
	for _, o := range snap {
		out <- Event{Type: EventPut, Object: o}
	}
	// Registering under mu keeps wg.Add from racing with Close's Wait.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	s.wg.Add(1)
	go s.forward(ctx, kind, cur+1, out)
	return out, nil
}

// forward runs the etcd watch of kind from revision from and copies it to
// out until the watch ends, out is full, ctx is done or the store closes;
// then it closes out. It is the one goroutine a watch owns. It opens the
// etcd watch itself because the client's Watch waits for a connection.
func (s *EtcdStore) forward(ctx context.Context, kind string, from int64, out chan<- Event) {
	defer s.wg.Done()
	defer close(out)
	// WithRequireLeader ends the watch when the member loses its leader,
	// instead of leaving it silent behind a partition.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	stop := context.AfterFunc(s.closing, cancel)
	defer stop()
	wch := s.cli.Watch(wctx, s.kindPrefix(kind), clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithPrevKV())
	defer func() {
		cancel()
		for range wch { // the client closes wch once it sees the cancel
		}
	}()
	for resp := range wch {
		if resp.Canceled || resp.Err() != nil {
			return // compacted, no leader, or cancelled: the client re-lists
		}
		for _, ev := range resp.Events {
			e := Event{Type: EventPut, Object: s.toObject(kind, ev.Kv)}
			if ev.Type == mvccpb.DELETE {
				e.Type = EventDelete
				// Kv holds the key and the deletion's revision; the
				// last value is in PrevKv.
				e.Object.Value = []byte("null")
				if ev.PrevKv != nil {
					e.Object.Value = ev.PrevKv.Value
				}
			}
			select {
			case out <- e:
			default:
				return // too far behind: drop the watcher, like BoltStore
			}
		}
	}
}

// Close implements Store. It closes every watch channel and, if OpenEtcd
// dialed the client, the client.
func (s *EtcdStore) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.close()
	s.mu.Unlock()
	s.wg.Wait()
	if s.ownClient {
		return s.cli.Close()
	}
	return nil
}
