package manager

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/vmfex/vmfex/manager/store"
)

//go:embed openapi.yaml
var openAPISpec []byte

// maxBody bounds request bodies; objects are a few hundred bytes.
const maxBody = 1 << 20

// Config configures a Server.
type Config struct {
	// Store holds the objects; the Server does not close it.
	Store store.Store
	// Token is the bearer token clients must present; it must not be empty.
	Token string
	// Logger receives state transitions (objects created, updated,
	// deleted); nil discards.
	Logger *slog.Logger
	// Leader, if not nil, is asked before every request but GETs; on a
	// standby they get 503 naming the active manager (see election.go).
	Leader Leader
}

// Route is one endpoint the server registers.
type Route struct {
	Method string // GET, POST, PUT, DELETE
	Path   string // net/http pattern path, e.g. /api/v1/vms/{name}
	Public bool   // served without a bearer token
}

// Server serves the manager API. Create it with New.
type Server struct {
	store  store.Store // immutable
	auth   *BearerAuth // immutable
	leader Leader      // immutable; nil: always active
	log    *slog.Logger
	mux    *http.ServeMux // immutable after New
	kinds  []*kindSpec    // immutable after New
	routes []Route        // immutable after New

	// mu serializes mutations: the checks across objects and the writes
	// they allow must not interleave with another mutation's.
	mu sync.Mutex
}

// kindSpec describes one kind to the generic handlers.
type kindSpec struct {
	kind   string
	noun   string // in messages: "port profile"
	newObj func() object
	// check validates o against the other objects before a create (old is
	// nil) or an update, under Server.mu. It may set manager-owned fields
	// of o from old; it must not write.
	check func(ctx context.Context, o, old object) error
	// assign sets manager-owned fields of a new object, under Server.mu
	// after check passed; it may write (the vEth counter).
	assign func(ctx context.Context, o object) error
	// checkDelete refuses to delete an object still in use.
	checkDelete func(ctx context.Context, old object) error
}

func (s *Server) specs() []*kindSpec {
	return []*kindSpec{
		{kind: KindFabricInterconnects, noun: "fabric interconnect", newObj: func() object { return new(FabricInterconnect) },
			check: func(context.Context, object, object) error { return nil }, checkDelete: s.checkDeleteFI},
		{kind: KindHosts, noun: "host", newObj: func() object { return new(Host) },
			check: s.checkHost, checkDelete: s.checkDeleteHost},
		{kind: KindPortProfiles, noun: "port profile", newObj: func() object { return new(PortProfile) },
			check: s.checkPortProfile, checkDelete: s.checkDeletePortProfile},
		{kind: KindVMs, noun: "VM", newObj: func() object { return new(VM) },
			check: s.checkVM, assign: s.assignVEth,
			checkDelete: func(context.Context, object) error { return nil }},
		{kind: KindAgents, noun: "agent", newObj: func() object { return new(Agent) },
			check: s.checkAgent, checkDelete: func(context.Context, object) error { return nil }},
		{kind: KindMigrations, noun: "migration", newObj: func() object { return new(Migration) },
			check: s.checkMigration, checkDelete: func(context.Context, object) error { return nil }},
	}
}

// New returns a Server over cfg.Store.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("manager: no store configured")
	}
	if strings.TrimSpace(cfg.Token) == "" {
		return nil, errors.New("manager: empty API token; generate one with LoadOrCreateToken")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		store:  cfg.Store,
		auth:   NewBearerAuth(cfg.Token, "vmfex", "vmfex manager"),
		leader: cfg.Leader,
		log:    log.With("component", "manager"),
		mux:    http.NewServeMux(),
	}
	s.handle("GET", "/healthz", true, s.handleHealthz)
	s.handle("GET", "/api/v1/openapi.yaml", true, s.handleOpenAPI)
	s.handle("GET", "/api/v1/watch", false, s.handleWatch)
	s.kinds = s.specs()
	for _, k := range s.kinds {
		base := "/api/v1/" + k.kind
		s.handle("GET", base, false, s.listHandler(k))
		s.handle("POST", base, false, s.createHandler(k))
		s.handle("GET", base+"/{name}", false, s.getHandler(k))
		s.handle("PUT", base+"/{name}", false, s.updateHandler(k))
		s.handle("DELETE", base+"/{name}", false, s.deleteHandler(k))
	}
	// Anything else gets a JSON 404 that points at the spec.
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, apiError(http.StatusNotFound, fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path),
			"the API is described at GET /api/v1/openapi.yaml"))
	})
	return s, nil
}

// Routes returns the endpoints the server registered.
func (s *Server) Routes() []Route { return slices.Clone(s.routes) }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func (s *Server) handle(method, path string, public bool, h http.HandlerFunc) {
	s.routes = append(s.routes, Route{Method: method, Path: path, Public: public})
	if method != http.MethodGet {
		h = s.activeOnly(h)
	}
	if !public {
		h = s.auth.Wrap(h)
	}
	s.mux.HandleFunc(method+" "+path, h)
}

// BearerAuth checks requests for one bearer token; the manager and the
// lab's API share it.
type BearerAuth struct {
	hash  [32]byte // sha256 of the token
	realm string   // WWW-Authenticate realm
	who   string   // the command that printed the token file, for hints
}

// NewBearerAuth returns the check for token; realm names the service in
// WWW-Authenticate, who the command whose start-up output names the token
// file.
func NewBearerAuth(token, realm, who string) *BearerAuth {
	return &BearerAuth{hash: sha256.Sum256([]byte(token)), realm: realm, who: who}
}

// Wrap runs h only for a request with the token. Comparing fixed-size
// hashes in constant time leaks neither the token's bytes nor its length.
func (a *BearerAuth) Wrap(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+a.realm+`"`)
			writeError(w, apiError(http.StatusUnauthorized, "missing bearer token",
				`send "Authorization: Bearer <token>"; the token is in the file `+a.who+` printed at start (pass it with --token-file or VMFEX_TOKEN)`))
			return
		}
		got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		if subtle.ConstantTimeCompare(got[:], a.hash[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+a.realm+`", error="invalid_token"`)
			writeError(w, apiError(http.StatusUnauthorized, "invalid bearer token",
				"use the token from the file "+a.who+" printed at start"))
			return
		}
		h(w, r)
	}
}

// WriteJSON writes v as the indented JSON body of a response with status.
func WriteJSON(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v) }

// WriteError writes an API error: {"error": msg, "hint": hint}.
func WriteError(w http.ResponseWriter, status int, msg, hint string) {
	writeError(w, apiError(status, msg, hint))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v) // the client went away if this fails; nothing to do
}

func writeError(w http.ResponseWriter, e *Error) { writeJSON(w, e.Status, e) }

// fail writes err, turning store errors into API errors about k.
func (s *Server) fail(w http.ResponseWriter, k *kindSpec, name string, err error) {
	var ae *Error
	switch {
	case errors.As(err, &ae):
	case errors.Is(err, store.ErrNotFound):
		ae = apiError(http.StatusNotFound, fmt.Sprintf("%s %q not found", k.noun, name),
			"list them with GET /api/v1/"+k.kind)
	case errors.Is(err, store.ErrExists):
		ae = apiError(http.StatusConflict, fmt.Sprintf("%s %q already exists", k.noun, name),
			fmt.Sprintf("choose another name, or change it with PUT /api/v1/%s/%s", k.kind, name))
	case errors.Is(err, store.ErrConflict):
		ae = apiError(http.StatusConflict, fmt.Sprintf("%s %q was changed by someone else", k.noun, name),
			"GET it again and retry with its current revision (or send revision 0 to overwrite)")
	case errors.Is(err, store.ErrFenced):
		ae = s.notActiveError(w)
	case errors.Is(err, context.Canceled):
		return // the client went away
	default:
		s.log.Error("request failed", "kind", k.kind, "name", name, "err", err)
		ae = apiError(http.StatusInternalServerError, "internal error: "+err.Error(),
			"retry; if it persists, check the manager's log and its data directory")
	}
	writeError(w, ae)
}

// decode reads one JSON object into o, refusing unknown fields and trailing
// data so that a typo never passes silently.
func decode(w http.ResponseWriter, r *http.Request, k *kindSpec, o object) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(o); err != nil {
		return badRequest(fmt.Sprintf("request body is not a valid %s: %v", k.noun, err),
			"send one JSON object with the fields listed in /api/v1/openapi.yaml; unknown fields are rejected")
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("request body has data after the JSON object", "send exactly one JSON object")
	}
	return nil
}

// fromStore turns a stored document into its API object.
func fromStore(k *kindSpec, so store.Object) (object, error) {
	o := k.newObj()
	if err := json.Unmarshal(so.Value, o); err != nil {
		return nil, fmt.Errorf("stored %s %q is corrupt: %w", k.noun, so.Name, err)
	}
	o.setRev(so.Revision)
	return o, nil
}

// toStore encodes o without its revision, which the store keeps itself.
func toStore(k *kindSpec, o object) (store.Object, error) {
	rev := o.rev()
	o.setRev(0)
	v, err := json.Marshal(o)
	o.setRev(rev)
	return store.Object{Kind: k.kind, Name: o.objName(), Revision: rev, Value: v}, err
}

// ListResponse is the body of a list: the objects and the store revision
// they were read at, from which a watch continues.
type ListResponse[T any] struct {
	Items    []T   `json:"items"`
	Revision int64 `json:"revision"`
}

func (s *Server) listHandler(k *kindSpec) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sos, rev, err := s.store.List(r.Context(), k.kind)
		if err != nil {
			s.fail(w, k, "", err)
			return
		}
		items := make([]object, 0, len(sos))
		for _, so := range sos {
			o, err := fromStore(k, so)
			if err != nil {
				s.fail(w, k, so.Name, err)
				return
			}
			items = append(items, o)
		}
		writeJSON(w, http.StatusOK, ListResponse[object]{Items: items, Revision: rev})
	}
}

func (s *Server) getHandler(k *kindSpec) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if !ValidName(name) {
			s.fail(w, k, name, store.ErrNotFound)
			return
		}
		so, err := s.store.Get(r.Context(), k.kind, name)
		if err != nil {
			s.fail(w, k, name, err)
			return
		}
		o, err := fromStore(k, so)
		if err != nil {
			s.fail(w, k, name, err)
			return
		}
		writeJSON(w, http.StatusOK, o)
	}
}

func (s *Server) createHandler(k *kindSpec) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		o := k.newObj()
		if err := decode(w, r, k, o); err != nil {
			s.fail(w, k, "", err)
			return
		}
		o.setRev(0) // a new object has no revision to expect
		if err := o.normalize(); err != nil {
			s.fail(w, k, o.objName(), err)
			return
		}
		out, err := s.create(r.Context(), k, o)
		if err != nil {
			s.fail(w, k, o.objName(), err)
			return
		}
		w.Header().Set("Location", "/api/v1/"+k.kind+"/"+out.objName())
		writeJSON(w, http.StatusCreated, out)
	}
}

// create runs the checks and the writes of a create as one step.
func (s *Server) create(ctx context.Context, k *kindSpec, o object) (object, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.store.Get(ctx, k.kind, o.objName()); err == nil {
		return nil, store.ErrExists
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if err := k.check(ctx, o, nil); err != nil {
		return nil, err
	}
	// Everything that can refuse the request has run: from here on it
	// writes.
	if k.assign != nil {
		if err := k.assign(ctx, o); err != nil {
			return nil, err
		}
	}
	so, err := toStore(k, o)
	if err != nil {
		return nil, err
	}
	so, err = s.store.Create(ctx, so)
	if err != nil {
		return nil, err
	}
	o.setRev(so.Revision)
	s.log.Info("created", "kind", k.kind, "name", so.Name, "revision", so.Revision)
	return o, nil
}

func (s *Server) updateHandler(k *kindSpec) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		o := k.newObj()
		if err := decode(w, r, k, o); err != nil {
			s.fail(w, k, name, err)
			return
		}
		if o.objName() == "" {
			o.setName(name)
		}
		if o.objName() != name {
			s.fail(w, k, name, badRequest(fmt.Sprintf("name %q in the body differs from %q in the URL", o.objName(), name),
				"objects cannot be renamed: create one with the new name and delete the old one"))
			return
		}
		if err := o.normalize(); err != nil {
			s.fail(w, k, name, err)
			return
		}
		out, err := s.update(r.Context(), k, o)
		if err != nil {
			s.fail(w, k, name, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

func (s *Server) update(ctx context.Context, k *kindSpec, o object) (object, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	so, err := s.store.Get(ctx, k.kind, o.objName())
	if err != nil {
		return nil, err
	}
	if o.rev() != 0 && o.rev() != so.Revision {
		return nil, store.ErrConflict
	}
	old, err := fromStore(k, so)
	if err != nil {
		return nil, err
	}
	if err := k.check(ctx, o, old); err != nil {
		return nil, err
	}
	so, err = toStore(k, o)
	if err != nil {
		return nil, err
	}
	so, err = s.store.Update(ctx, so)
	if err != nil {
		return nil, err
	}
	o.setRev(so.Revision)
	s.log.Info("updated", "kind", k.kind, "name", so.Name, "revision", so.Revision)
	return o, nil
}

func (s *Server) deleteHandler(k *kindSpec) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		var rev int64
		if v := r.URL.Query().Get("revision"); v != "" {
			var err error
			if rev, err = strconv.ParseInt(v, 10, 64); err != nil || rev < 0 {
				s.fail(w, k, name, badRequest(fmt.Sprintf("revision %q is not a revision", v), "give a revision from a GET, or leave it out"))
				return
			}
		}
		if !ValidName(name) {
			s.fail(w, k, name, store.ErrNotFound)
			return
		}
		if err := s.delete(r.Context(), k, name, rev); err != nil {
			s.fail(w, k, name, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *Server) delete(ctx context.Context, k *kindSpec, name string, rev int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	so, err := s.store.Get(ctx, k.kind, name)
	if err != nil {
		return err
	}
	if rev != 0 && rev != so.Revision {
		return store.ErrConflict
	}
	old, err := fromStore(k, so)
	if err != nil {
		return err
	}
	if err := k.checkDelete(ctx, old); err != nil {
		return err
	}
	if err := s.store.Delete(ctx, k.kind, name, so.Revision); err != nil {
		return err
	}
	s.log.Info("deleted", "kind", k.kind, "name", name)
	return nil
}

func (s *Server) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) handleOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(openAPISpec)
}

// WatchEvent is one line of the watch stream. Type "error" ends the stream
// and says why; the client then lists again and watches from the list's
// revision.
type WatchEvent struct {
	Type     string          `json:"type"` // put, delete or error
	Kind     string          `json:"kind,omitempty"`
	Name     string          `json:"name,omitempty"`
	Revision int64           `json:"revision,omitempty"`
	Object   json.RawMessage `json:"object,omitempty"` // as GET returns it
	Error    string          `json:"error,omitempty"`
	Hint     string          `json:"hint,omitempty"`
}

func (s *Server) handleWatch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	kind := q.Get("kind")
	var k *kindSpec
	for _, spec := range s.kinds {
		if spec.kind == kind {
			k = spec
		}
	}
	if k == nil {
		writeError(w, badRequest(fmt.Sprintf("kind %q cannot be watched", kind), "use kind="+strings.Join(Kinds, ", kind=")))
		return
	}
	var rev int64
	if v := q.Get("revision"); v != "" {
		var err error
		if rev, err = strconv.ParseInt(v, 10, 64); err != nil || rev < 0 {
			writeError(w, badRequest(fmt.Sprintf("revision %q is not a revision", v),
				"give the revision of a list response, or 0 for the current state then changes"))
			return
		}
	}
	ctx := r.Context()
	ch, err := s.store.Watch(ctx, kind, rev)
	if errors.Is(err, store.ErrFutureRevision) {
		writeError(w, badRequest(err.Error(), "watch from the revision of a list response"))
		return
	}
	if err != nil {
		s.fail(w, k, "", err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	enc := json.NewEncoder(w)
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-ch:
			if !ok {
				if ctx.Err() == nil {
					enc.Encode(WatchEvent{Type: "error", Error: "watch ended by the manager (client too slow, or shutting down)",
						Hint: "list the objects again and watch from the list's revision"})
					rc.Flush()
				}
				return
			}
			o, err := fromStore(k, ev.Object)
			var body []byte
			if err == nil {
				body, err = json.Marshal(o)
			}
			if err != nil {
				enc.Encode(WatchEvent{Type: "error", Error: err.Error(), Hint: "check the manager's data directory"})
				rc.Flush()
				return
			}
			line := WatchEvent{Type: ev.Type.String(), Kind: kind, Name: ev.Object.Name, Revision: ev.Object.Revision, Object: body}
			if err := enc.Encode(line); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}
