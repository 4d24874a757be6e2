package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// DefaultWatchBuffer is how many live events a watcher may have pending
// before the store gives up on it and closes its channel.
const DefaultWatchBuffer = 1024

// maxNameLen bounds names well under bbolt's key limit (32 KiB) so that an
// error names the real problem.
const maxNameLen = 1024

// Bucket layout of the bbolt file:
//
//	meta/revision      8-byte big-endian store revision
//	objects/<kind>/<name>  8-byte big-endian object revision, then JSON value
var (
	bucketMeta    = []byte("meta")
	bucketObjects = []byte("objects")
	keyRevision   = []byte("revision")
)

// BoltOptions tunes OpenBoltOptions.
type BoltOptions struct {
	// WatchBuffer is the per-watcher bound on pending live events;
	// 0 means DefaultWatchBuffer.
	WatchBuffer int
	// LockTimeout is how long to wait for another process to release the
	// file; 0 means one second.
	LockTimeout time.Duration
}

// BoltStore is a Store in one bbolt file. Every write is fsynced before it
// returns (bbolt's default), so an acknowledged write survives a crash.
type BoltStore struct {
	db     *bolt.DB
	buffer int // immutable

	// mu serializes writes with their publication to watchers, so watchers
	// see changes in revision order, and makes registering a watcher atomic
	// with reading its initial state. Lock order: mu, then bbolt's writer
	// lock (taken inside db.Update).
	mu       sync.Mutex
	watchers map[*watcher]struct{} // guarded by mu
	closed   bool                  // guarded by mu

	done chan struct{}  // closed by Close; ends the watchers' goroutines
	wg   sync.WaitGroup // watcher goroutines
}

var _ Store = (*BoltStore)(nil)

type watcher struct {
	kind string
	ch   chan Event    // buffered; closed by removeLocked
	gone chan struct{} // closed by removeLocked, ends the watcher goroutine
}

// OpenBolt opens (creating if needed) the store file at path.
func OpenBolt(path string) (*BoltStore, error) {
	return OpenBoltOptions(path, BoltOptions{})
}

// OpenBoltOptions is OpenBolt with options.
func OpenBoltOptions(path string, o BoltOptions) (*BoltStore, error) {
	if o.WatchBuffer <= 0 {
		o.WatchBuffer = DefaultWatchBuffer
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = time.Second
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: o.LockTimeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: the file is locked by another process; stop the other vmfex manager using this data directory or choose another one", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketMeta); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(bucketObjects)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise store %s: %w", path, err)
	}
	return &BoltStore{
		db:       db,
		buffer:   o.WatchBuffer,
		watchers: make(map[*watcher]struct{}),
		done:     make(chan struct{}),
	}, nil
}

func validKey(kind, name string) error {
	switch {
	case kind == "":
		return fmt.Errorf("%w: empty kind", ErrInvalid)
	case len(kind) > maxNameLen:
		return fmt.Errorf("%w: kind longer than %d bytes", ErrInvalid, maxNameLen)
	case name == "":
		return fmt.Errorf("%w: %s with an empty name; give it a name", ErrInvalid, kind)
	case len(name) > maxNameLen:
		return fmt.Errorf("%w: %s name longer than %d bytes; use a shorter one", ErrInvalid, kind, maxNameLen)
	}
	return nil
}

func validObject(o Object) error {
	if err := validKey(o.Kind, o.Name); err != nil {
		return err
	}
	if !json.Valid(o.Value) {
		return fmt.Errorf("%w: %s %q: value is not valid JSON", ErrInvalid, o.Kind, o.Name)
	}
	return nil
}

func encodeRecord(rev int64, value []byte) []byte {
	b := make([]byte, 8+len(value))
	binary.BigEndian.PutUint64(b, uint64(rev))
	copy(b[8:], value)
	return b
}

// decodeRecord copies out of rec, which bbolt owns only during the
// transaction.
func decodeRecord(kind, name string, rec []byte) (Object, error) {
	if len(rec) < 8 {
		return Object{}, fmt.Errorf("store: corrupt record %s/%s (%d bytes); restore the data directory from a backup", kind, name, len(rec))
	}
	return Object{
		Kind:     kind,
		Name:     name,
		Revision: int64(binary.BigEndian.Uint64(rec)),
		Value:    bytes.Clone(rec[8:]),
	}, nil
}

func currentRev(tx *bolt.Tx) int64 {
	v := tx.Bucket(bucketMeta).Get(keyRevision)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

// nextRev increments and returns the store revision inside a write tx.
func nextRev(tx *bolt.Tx) (int64, error) {
	rev := currentRev(tx) + 1
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(rev))
	return rev, tx.Bucket(bucketMeta).Put(keyRevision, b[:])
}

// Get implements Store.
func (s *BoltStore) Get(ctx context.Context, kind, name string) (Object, error) {
	if err := ctx.Err(); err != nil {
		return Object{}, err
	}
	if err := validKey(kind, name); err != nil {
		return Object{}, err
	}
	var o Object
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketObjects).Bucket([]byte(kind))
		var rec []byte
		if b != nil {
			rec = b.Get([]byte(name))
		}
		if rec == nil {
			return fmt.Errorf("%w: %s %q", ErrNotFound, kind, name)
		}
		var err error
		o, err = decodeRecord(kind, name, rec)
		return err
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return Object{}, ErrClosed
	}
	return o, err
}

// List implements Store.
func (s *BoltStore) List(ctx context.Context, kind string) ([]Object, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if err := validKey(kind, "-"); err != nil {
		return nil, 0, err
	}
	var objs []Object
	var rev int64
	err := s.db.View(func(tx *bolt.Tx) error {
		rev = currentRev(tx)
		var err error
		objs, err = listTx(tx, kind)
		return err
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return nil, 0, ErrClosed
	}
	return objs, rev, err
}

// listTx returns the objects of kind sorted by name (bbolt's key order).
func listTx(tx *bolt.Tx, kind string) ([]Object, error) {
	b := tx.Bucket(bucketObjects).Bucket([]byte(kind))
	if b == nil {
		return nil, nil
	}
	var objs []Object
	err := b.ForEach(func(k, v []byte) error {
		o, err := decodeRecord(kind, string(k), v)
		objs = append(objs, o)
		return err
	})
	return objs, err
}

// write runs fn in one bbolt write transaction under s.mu and, once it has
// committed (and so is on disk), publishes the event fn produced.
func (s *BoltStore) write(ctx context.Context, fn func(tx *bolt.Tx) (Event, error)) (Event, error) {
	if err := ctx.Err(); err != nil {
		return Event{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Event{}, ErrClosed
	}
	var ev Event
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		ev, err = fn(tx)
		return err
	})
	if err != nil {
		return Event{}, err
	}
	s.publishLocked(ev)
	// Watchers share ev's Value; the caller gets its own copy to modify.
	ev.Object.Value = bytes.Clone(ev.Object.Value)
	return ev, nil
}

// Create implements Store.
func (s *BoltStore) Create(ctx context.Context, obj Object) (Object, error) {
	if err := validObject(obj); err != nil {
		return Object{}, err
	}
	ev, err := s.write(ctx, func(tx *bolt.Tx) (Event, error) {
		b, err := tx.Bucket(bucketObjects).CreateBucketIfNotExists([]byte(obj.Kind))
		if err != nil {
			return Event{}, err
		}
		if b.Get([]byte(obj.Name)) != nil {
			return Event{}, fmt.Errorf("%w: %s %q; choose another name or update the existing one", ErrExists, obj.Kind, obj.Name)
		}
		rev, err := nextRev(tx)
		if err != nil {
			return Event{}, err
		}
		o := Object{Kind: obj.Kind, Name: obj.Name, Revision: rev, Value: bytes.Clone(obj.Value)}
		return Event{Type: EventPut, Object: o}, b.Put([]byte(o.Name), encodeRecord(rev, o.Value))
	})
	return ev.Object, err
}

// existing returns the current record of kind/name inside tx and checks the
// expected revision.
func existing(tx *bolt.Tx, kind, name string, want int64) (*bolt.Bucket, Object, error) {
	b := tx.Bucket(bucketObjects).Bucket([]byte(kind))
	var rec []byte
	if b != nil {
		rec = b.Get([]byte(name))
	}
	if rec == nil {
		return nil, Object{}, fmt.Errorf("%w: %s %q", ErrNotFound, kind, name)
	}
	old, err := decodeRecord(kind, name, rec)
	if err != nil {
		return nil, Object{}, err
	}
	if want != 0 && want != old.Revision {
		return nil, Object{}, fmt.Errorf("%w: %s %q is at revision %d, not %d; read it again and retry with its current revision",
			ErrConflict, kind, name, old.Revision, want)
	}
	return b, old, nil
}

// Update implements Store.
func (s *BoltStore) Update(ctx context.Context, obj Object) (Object, error) {
	if err := validObject(obj); err != nil {
		return Object{}, err
	}
	ev, err := s.write(ctx, func(tx *bolt.Tx) (Event, error) {
		b, _, err := existing(tx, obj.Kind, obj.Name, obj.Revision)
		if err != nil {
			return Event{}, err
		}
		rev, err := nextRev(tx)
		if err != nil {
			return Event{}, err
		}
		o := Object{Kind: obj.Kind, Name: obj.Name, Revision: rev, Value: bytes.Clone(obj.Value)}
		return Event{Type: EventPut, Object: o}, b.Put([]byte(o.Name), encodeRecord(rev, o.Value))
	})
	return ev.Object, err
}

// Delete implements Store.
func (s *BoltStore) Delete(ctx context.Context, kind, name string, rev int64) error {
	if err := validKey(kind, name); err != nil {
		return err
	}
	_, err := s.write(ctx, func(tx *bolt.Tx) (Event, error) {
		b, old, err := existing(tx, kind, name, rev)
		if err != nil {
			return Event{}, err
		}
		drev, err := nextRev(tx)
		if err != nil {
			return Event{}, err
		}
		old.Revision = drev
		return Event{Type: EventDelete, Object: old}, b.Delete([]byte(name))
	})
	return err
}

// Watch implements Store.
func (s *BoltStore) Watch(ctx context.Context, kind string, fromRev int64) (<-chan Event, error) {
	if err := validKey(kind, "-"); err != nil {
		return nil, err
	}
	if fromRev < 0 {
		return nil, fmt.Errorf("%w: negative watch revision %d; use 0 to start from the current state", ErrInvalid, fromRev)
	}
	// Holding mu keeps writers out between the snapshot and registration,
	// so the watcher misses no change and sees none twice.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	var snap []Object
	err := s.db.View(func(tx *bolt.Tx) error {
		cur := currentRev(tx)
		if fromRev > cur {
			return fmt.Errorf("%w: asked to watch from revision %d but the store is at %d; watch from 0 or from a revision a List returned", ErrFutureRevision, fromRev, cur)
		}
		if fromRev == cur && fromRev != 0 {
			return nil
		}
		var err error
		snap, err = listTx(tx, kind)
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(snap, func(i, j int) bool { return snap[i].Revision < snap[j].Revision })
	// The replay fits in the buffer by construction, so it never counts
	// against the watcher's allowance for live events.
	w := &watcher{kind: kind, ch: make(chan Event, len(snap)+s.buffer), gone: make(chan struct{})}
	for _, o := range snap {
		w.ch <- Event{Type: EventPut, Object: o}
	}
	s.watchers[w] = struct{}{}
	s.wg.Add(1)
	go s.watchUntilDone(ctx, w)
	return w.ch, nil
}

// watchUntilDone removes w when its context ends; it is the one goroutine a
// watch owns.
func (s *BoltStore) watchUntilDone(ctx context.Context, w *watcher) {
	defer s.wg.Done()
	select {
	case <-ctx.Done():
	case <-w.gone:
		return
	case <-s.done:
		return
	}
	s.mu.Lock()
	s.removeLocked(w)
	s.mu.Unlock()
}

// removeLocked closes w's channel once.
func (s *BoltStore) removeLocked(w *watcher) {
	if _, ok := s.watchers[w]; !ok {
		return
	}
	delete(s.watchers, w)
	close(w.ch)
	close(w.gone)
}

// publishLocked hands ev to every watcher of its kind without blocking: a
// watcher whose buffer is full is dropped so that writers never wait on a
// slow reader.
func (s *BoltStore) publishLocked(ev Event) {
	for w := range s.watchers {
		if w.kind != ev.Object.Kind {
			continue
		}
		select {
		case w.ch <- ev:
		default:
			s.removeLocked(w)
		}
	}
}

// Close implements Store.
func (s *BoltStore) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for w := range s.watchers {
		s.removeLocked(w)
	}
	close(s.done)
	s.mu.Unlock()
	s.wg.Wait()
	return s.db.Close()
}
