package manager

// Active/standby managers.
//
// Several managers share one etcd cluster through store.EtcdStore. Each
// holds an etcd session (a lease kept alive every TTL/3) and campaigns with
// it in one etcd election; the manager whose key was created first is
// active, the others are standbys, as in a Nexus 1000V VSM pair:
//
//	manager A ──lease A──►  <prefix>election/<lease A> = "http://a:8443"   created first: active
//	manager B ──lease B──►  <prefix>election/<lease B> = "http://b:8443"   waits: standby
//
// When A stops, it revokes its lease; when A is killed or cut off, its lease
// expires after the TTL. Either deletes A's key, and B, which waits for that
// deletion, becomes active.
//
// Only the active manager writes. A standby answers writes with 503 and the
// active's advertised URL. The write handlers ask Config.Leader before they
// start, and every store write of the active carries a fence (store.Fence)
// on its own election key, in the same etcd transaction: once the key is
// gone, a manager that has not yet noticed it lost cannot write, so two
// managers never interleave their checks and writes.
//
// Standbys serve reads (GET, lists, watches). The store is etcd itself, not
// a copy: a standby's linearizable read is exactly as fresh as the active's,
// so refusing it would add nothing but a hop and make reads fail over with
// the writes. Agents can watch any manager, and keep watching through a
// failover.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/vmfex/vmfex/manager/store"
)

// DefaultElectionTTL is the session TTL: how long after the active manager
// died a standby takes over.
const DefaultElectionTTL = 5 * time.Second

// Leader tells the write handlers whether this manager may write. A Server
// without one (Config.Leader nil) is always active.
type Leader interface {
	// Active reports whether this manager is the active one. When it is
	// not, activeURL is the advertised URL of the active manager, or ""
	// while none is known (an election in progress).
	Active(ctx context.Context) (active bool, activeURL string)
}

// ElectionRole is where a manager stands in the election.
type ElectionRole int

const (
	// RoleStandby: campaigning, or waiting for etcd; writes are refused.
	RoleStandby ElectionRole = iota
	// RoleActive: this manager won and its session is alive.
	RoleActive
	// RoleClosed: Close was called; the manager no longer campaigns.
	RoleClosed
)

// String returns the role's name as logs show it.
func (r ElectionRole) String() string {
	switch r {
	case RoleStandby:
		return "standby"
	case RoleActive:
		return "active"
	case RoleClosed:
		return "closed"
	}
	return fmt.Sprintf("ElectionRole(%d)", int(r))
}

// ElectionConfig configures StartElection.
type ElectionConfig struct {
	// Store is the managers' shared store: the election uses its client
	// and prefix, and fences its writes. The election does not close it.
	Store *store.EtcdStore
	// Advertise is the URL clients use to reach this manager; standbys
	// name it in their 503s while this one is active. Required.
	Advertise string
	// TTL is the session's lease TTL, rounded up to whole seconds;
	// 0 means DefaultElectionTTL.
	TTL time.Duration
	// Logger receives the role transitions; nil discards.
	Logger *slog.Logger
}

// Election is one manager's place in the active/standby election. It
// implements Leader. Create it with StartElection, which starts its one
// goroutine; Close ends it. Its methods are safe for concurrent use.
type Election struct {
	st        *store.EtcdStore // immutable
	cli       *clientv3.Client // immutable
	pfx       string           // immutable: the election's key prefix
	advertise string           // immutable
	ttl       int              // immutable: seconds
	log       *slog.Logger     // immutable

	mu      sync.Mutex
	role    ElectionRole  // guarded by mu
	changed chan struct{} // guarded by mu; closed and replaced at each role change

	cancel context.CancelFunc // ends run
	wg     sync.WaitGroup     // run and its session watcher
}

var _ Leader = (*Election)(nil)

// StartElection starts campaigning in the background and returns at once,
// as a standby. Writes through cfg.Store are refused (store.ErrFenced) until
// this manager is active.
func StartElection(cfg ElectionConfig) (*Election, error) {
	if cfg.Store == nil {
		return nil, errors.New("manager: election without an etcd store; active/standby needs --store etcd")
	}
	if cfg.Advertise == "" {
		return nil, errors.New("manager: election without an advertised URL; set --advertise to the URL clients reach this manager at")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultElectionTTL
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Election{
		st:        cfg.Store,
		cli:       cfg.Store.Client(),
		pfx:       cfg.Store.Prefix() + store.ElectionDir,
		advertise: cfg.Advertise,
		ttl:       int((cfg.TTL + time.Second - 1) / time.Second),
		log:       log.With("component", "election", "advertise", cfg.Advertise),
		changed:   make(chan struct{}),
	}
	e.st.SetFence(&store.Fence{}) // no writes before the first win
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.wg.Add(1)
	go e.run(ctx)
	return e, nil
}

// Role returns where this manager stands now.
func (e *Election) Role() ElectionRole {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.role
}

// WaitRole waits until the role is want or ctx is done.
func (e *Election) WaitRole(ctx context.Context, want ElectionRole) error {
	for {
		e.mu.Lock()
		role, changed := e.role, e.changed
		e.mu.Unlock()
		if role == want {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("manager is %v, not %v: %w", role, want, ctx.Err())
		}
	}
}

// setRole is the one role transition; it logs it and wakes WaitRole.
func (e *Election) setRole(r ElectionRole) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.role == r || e.role == RoleClosed {
		return
	}
	e.log.Info("election role changed", "from", e.role, "to", r)
	e.role = r
	close(e.changed)
	e.changed = make(chan struct{})
}

// leaderLookupTimeout bounds the read of the active manager's URL.
const leaderLookupTimeout = 5 * time.Second

// Active implements Leader. A standby reads the active's URL from etcd: the
// value of the oldest key of the election.
func (e *Election) Active(ctx context.Context) (bool, string) {
	if e.Role() == RoleActive {
		return true, e.advertise
	}
	ctx, cancel := context.WithTimeout(ctx, leaderLookupTimeout)
	defer cancel()
	resp, err := e.cli.Get(ctx, e.pfx+"/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		return false, ""
	}
	url := string(resp.Kvs[0].Value)
	if url == e.advertise {
		return false, "" // won or lost a moment ago: ask again
	}
	return false, url
}

// Close stops campaigning and revokes the session, so that a standby takes
// over at once instead of after the TTL. It is idempotent.
func (e *Election) Close() error {
	e.setRole(RoleClosed)
	e.st.SetFence(&store.Fence{})
	e.cancel()
	e.wg.Wait()
	return nil
}

// run campaigns, one session after another, until ctx is done.
func (e *Election) run(ctx context.Context) {
	defer e.wg.Done()
	for ctx.Err() == nil {
		err := e.term(ctx)
		if ctx.Err() != nil {
			return
		}
		e.log.Warn("election session ended; campaigning again", "err", err)
		// Do not spin against an etcd that refuses sessions.
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// errSessionLost: the lease expired or etcd was lost while active.
var errSessionLost = errors.New("etcd session lost (lease expired or etcd unreachable)")

// term runs one session: campaign, hold the active role while the session
// lives, and give it up.
func (e *Election) term(ctx context.Context) error {
	sess, err := concurrency.NewSession(e.cli, concurrency.WithTTL(e.ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("open etcd session: %w", err)
	}
	defer e.endSession(sess)

	// Campaigning waits for the older keys to go; stop waiting if our own
	// lease goes first.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		select {
		case <-sess.Done():
			cancel()
		case <-cctx.Done():
		}
	}()
	el := concurrency.NewElection(sess, e.pfx)
	e.log.Info("campaigning", "lease", fmt.Sprintf("%x", sess.Lease()))
	if err := el.Campaign(cctx, e.advertise); err != nil {
		if ctx.Err() == nil && cctx.Err() != nil {
			return errSessionLost
		}
		return fmt.Errorf("campaign: %w", err)
	}
	// Fence first, then the role: a handler that sees the role writes
	// with this term's fence. If the session ended while we waited, the
	// fence already fails and the check below ends the term.
	e.st.SetFence(&store.Fence{Key: el.Key(), Rev: el.Rev()})
	e.setRole(RoleActive)
	select {
	case <-sess.Done():
		e.st.SetFence(&store.Fence{})
		e.setRole(RoleStandby)
		return errSessionLost
	case <-ctx.Done():
		return nil
	}
}

// endSession revokes sess's lease, deleting this manager's election key,
// so that the next standby does not wait for the TTL. ctx may be done by
// now, so the revoke has a context of its own.
func (e *Election) endSession(sess *concurrency.Session) {
	rctx, cancel := context.WithTimeout(context.Background(), time.Duration(e.ttl)*time.Second)
	defer cancel()
	e.cli.Revoke(rctx, sess.Lease()) // an expired lease is gone anyway
	sess.Orphan()
}

// activeOnly wraps a write handler: on a standby it answers 503 naming the
// active manager instead of running h.
func (s *Server) activeOnly(h http.HandlerFunc) http.HandlerFunc {
	if s.leader == nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if ok, url := s.leader.Active(r.Context()); !ok {
			writeError(w, notActive(w, url))
			return
		}
		h(w, r)
	}
}

// notActiveError is the answer to a write the store fenced off: this
// manager lost the active role while it handled the request.
func (s *Server) notActiveError(w http.ResponseWriter) *Error {
	url := ""
	if s.leader != nil {
		var ok bool
		if ok, url = s.leader.Active(context.Background()); ok {
			url = "" // not told yet that it lost
		}
	}
	return notActive(w, url)
}

// notActive is the 503 of a standby; activeURL is the active manager's URL,
// "" if none is known.
func notActive(w http.ResponseWriter, activeURL string) *Error {
	if activeURL == "" {
		w.Header().Set("Retry-After", "2")
		return apiError(http.StatusServiceUnavailable, "this manager is a standby and no active manager is known yet",
			"retry in a few seconds: a standby takes over once the old active manager's etcd session expires")
	}
	return apiError(http.StatusServiceUnavailable, "this manager is a standby; the active manager is "+activeURL,
		"retry the request at "+activeURL+" (standbys serve reads, only the active manager writes)")
}
