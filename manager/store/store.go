package store

import (
	"context"
	"encoding/json"
	"errors"
)

// Errors returned by every Store implementation, wrapped with the kind, name
// and what the caller can do about it. Test them with errors.Is.
var (
	// ErrNotFound: no object of that kind and name exists.
	ErrNotFound = errors.New("store: not found")
	// ErrExists: Create found an object of that kind and name already.
	ErrExists = errors.New("store: already exists")
	// ErrConflict: the expected revision is not the object's current one.
	ErrConflict = errors.New("store: revision conflict")
	// ErrInvalid: the object itself is malformed (no kind or name, bad JSON).
	ErrInvalid = errors.New("store: invalid object")
	// ErrFutureRevision: Watch was asked to start after a revision the store
	// has not reached.
	ErrFutureRevision = errors.New("store: revision not reached yet")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store: closed")
)

// Object is one stored JSON document.
type Object struct {
	// Kind groups objects, like a table ("vms", "hosts").
	Kind string `json:"kind"`
	// Name is unique within Kind.
	Name string `json:"name"`
	// Revision is the store revision of the object's last change. On Update
	// and Delete it is the expected revision; 0 means "whatever it is".
	Revision int64 `json:"revision"`
	// Value is the document; it must be valid JSON.
	Value json.RawMessage `json:"value"`
}

// EventType says what happened to an object.
type EventType int

const (
	// EventPut: the object was created or updated (or, in a watch's initial
	// replay, exists).
	EventPut EventType = iota + 1
	// EventDelete: the object was deleted; Object holds its last value and
	// the revision of the deletion.
	EventDelete
)

// String returns "put" or "delete", the names used on the wire.
func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	}
	return "unknown"
}

// Event is one committed change delivered by Watch.
type Event struct {
	Type   EventType
	Object Object
}

// Store is the seam between the manager and its storage, small enough that
// an etcd backend can implement it later.
type Store interface {
	// Get returns the object, or an error wrapping ErrNotFound.
	Get(ctx context.Context, kind, name string) (Object, error)
	// List returns the objects of kind sorted by name, and the store
	// revision they were read at (to start a Watch from).
	List(ctx context.Context, kind string) ([]Object, int64, error)
	// Create stores a new object (its Revision is ignored) and returns it
	// with its revision. It fails with ErrExists if the name is taken.
	Create(ctx context.Context, obj Object) (Object, error)
	// Update replaces an existing object. If obj.Revision is not 0 it must
	// be the current revision, else the error wraps ErrConflict.
	Update(ctx context.Context, obj Object) (Object, error)
	// Delete removes an object; rev 0 means any revision.
	Delete(ctx context.Context, kind, name string, rev int64) error
	// Watch streams the committed changes of kind in revision order. If
	// fromRev is lower than the current revision (0 included), the current
	// objects of kind come first as EventPut, sorted by revision; deletions
	// before the watch are not replayed, so a client that must see them
	// re-lists. The channel is closed when ctx is done, at Close, or when
	// the watcher falls too far behind; the client then lists and watches
	// again.
	Watch(ctx context.Context, kind string, fromRev int64) (<-chan Event, error)
	// Close releases the store and closes every watch channel. It is
	// idempotent.
	Close() error
}
