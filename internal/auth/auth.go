// Package auth authenticates and authorizes every call to Ferry's control
// plane API: who calls (an agent's or replica's certificate, an admin
// certificate, a bearer token) and whether its role may call the method.
// Roles: viewer (read), operator (VM lifecycle, migrate), admin (tokens,
// everything); agent (heartbeat and renew for its own host); server (a
// peer replica: everything, and it may vouch for the caller it forwards).
package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/ferryvm/ferry/internal/pki"
)

// Role is what a caller may do.
type Role string

// Roles.
const (
	RoleViewer   Role = "viewer"
	RoleOperator Role = "operator"
	RoleAdmin    Role = "admin"
	RoleAgent    Role = "agent"
	RoleServer   Role = "server"
	// Anyone is a procedure's requirement when it needs no credential.
	Anyone Role = ""
)

// ParseRole reads a role a token may carry.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleViewer, RoleOperator, RoleAdmin, RoleAgent:
		return r, nil
	}
	return "", fmt.Errorf("role: must be agent, viewer, operator or admin, got %q", s)
}

var rank = map[Role]int{RoleViewer: 1, RoleOperator: 2, RoleAdmin: 3, RoleServer: 4}

// Allows reports whether a caller of role have may call a method needing
// want. Agent methods are for agents (and peer replicas) only; agents may
// call nothing else.
func Allows(have, want Role) bool {
	switch {
	case want == Anyone:
		return true
	case have == RoleServer:
		return true
	case want == RoleAgent || have == RoleAgent:
		return have == want
	}
	return rank[have] >= rank[want]
}

// Policy is the role each procedure needs. A procedure missing from it
// needs admin (new methods are closed until classified).
var Policy = map[string]Role{
	"/ferry.v1.AuthService/CreateToken":          RoleAdmin,
	"/ferry.v1.AuthService/Join":                 Anyone, // the token in the body is the credential
	"/ferry.v1.AuthService/Renew":                RoleAgent,
	"/ferry.v1.AuthService/WhoAmI":               RoleViewer,
	"/ferry.v1.ClusterService/GetClusterStatus":  RoleViewer,
	"/ferry.v1.MigrationService/Migrate":         RoleOperator,
	"/ferry.v1.MigrationService/GetMigration":    RoleViewer,
	"/ferry.v1.MigrationService/ListMigrations":  RoleViewer,
	"/ferry.v1.MigrationService/CancelMigration": RoleOperator,
	"/ferry.v1.HostService/Heartbeat":            RoleAgent,
	"/ferry.v1.HostService/ListHosts":            RoleViewer,
	"/ferry.v1.HostService/GetHost":              RoleViewer,
	"/ferry.v1.VMService/CreateVM":               RoleOperator,
	"/ferry.v1.VMService/GetVM":                  RoleViewer,
	"/ferry.v1.VMService/ListVMs":                RoleViewer,
	"/ferry.v1.VMService/StartVM":                RoleOperator,
	"/ferry.v1.VMService/StopVM":                 RoleOperator,
	"/ferry.v1.VMService/DeleteVM":               RoleOperator,
	"/ferry.v1.VMService/Console":                RoleOperator,
	"/ferry.v1.EventService/ListEvents":          RoleViewer,
	"/ferry.v1.EventService/WatchEvents":         RoleViewer,
	// Prometheus scrapes the API's /metrics with a bearer token (viewer);
	// `ferry server --metrics-listen` serves it without one on loopback.
	"/metrics": RoleViewer,
	// The dashboard's data (its page and assets are Open: they hold none).
	"/ui/api/snapshot": RoleViewer,
	"/ui/api/stream":   RoleViewer,
	"/ui/api/plot":     RoleViewer,
	"/ferry.v1.FleetService/EnterMaintenance":    RoleOperator,
	"/ferry.v1.FleetService/ExitMaintenance":     RoleOperator,
	"/ferry.v1.FleetService/CancelEvacuation":    RoleOperator,
	"/ferry.v1.FleetService/GetEvacuation":       RoleViewer,
	"/ferry.v1.FleetService/GetPolicies":         RoleViewer,
	"/ferry.v1.FleetService/SetPolicies":         RoleAdmin,
	"/ferry.v1.FleetService/Balance":             RoleOperator,
	"/ferry.v1.FleetService/ListRecommendations": RoleViewer,
}

// Needed is the role procedure needs.
func Needed(procedure string) Role {
	if r, ok := Policy[procedure]; ok {
		return r
	}
	return RoleAdmin
}

// Open paths need no credential: the health check, and the dashboard's
// page and static assets (they carry no cluster data; the page asks for a
// token and sends it with every data call).
var Open = map[string]bool{"/healthz": true, "/ui": true, "/ui/": true}

// OpenPrefixes are path prefixes that need no credential (the dashboard's
// static assets).
var OpenPrefixes = []string{"/ui/assets/"}

// IsOpen reports whether path needs no credential.
func IsOpen(path string) bool {
	if Open[path] {
		return true
	}
	for _, p := range OpenPrefixes {
		if strings.HasPrefix(path, p) && !strings.Contains(path, "..") {
			return true
		}
	}
	return false
}

// Caller is an authenticated caller.
type Caller struct {
	Role Role
	// ID names it: "agent:h1", "server:s1", "cert:dev-admin", "token:<id>".
	ID string
	// Host is an agent's host name.
	Host string
}

func (c Caller) encode() string { return string(c.Role) + "|" + c.ID + "|" + c.Host }

func decodeCaller(s string) (Caller, bool) {
	f := strings.SplitN(s, "|", 3)
	if len(f) != 3 {
		return Caller{}, false
	}
	c := Caller{Role: Role(f[0]), ID: f[1], Host: f[2]}
	_, known := rank[c.Role]
	return c, known || c.Role == RoleAgent
}

type callerKey struct{}

// WithCaller returns ctx carrying c.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the caller the middleware authenticated, if any.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// Sentinel errors (wrapped in the connect errors the middleware writes).
var (
	ErrNoCredential  = errors.New("no credential: log in with `ferry login URL --token T` (a token from `ferry token create`), or use a client certificate")
	ErrBadToken      = errors.New("token not valid: unknown, expired or already used")
	ErrRoleForbidden = errors.New("role may not call this method")
)

// ForwardedCallerHeader carries the caller a replica authenticated when it
// forwards a call to the leader; only a server certificate may set it.
const ForwardedCallerHeader = "Ferry-Forwarded-Caller"

// TokenRecord is a stored token (by the SHA-256 of its secret).
type TokenRecord struct {
	ID        string    `json:"id"`
	Role      Role      `json:"role"`
	ExpiresAt time.Time `json:"expiresAt"`
	// OneTime tokens (agent join tokens) are consumed by their first use.
	OneTime bool `json:"oneTime"`
}

// Tokens stores tokens and the host names agents hold.
type Tokens interface {
	// PutToken stores a new token under hash.
	PutToken(ctx context.Context, hash string, rec TokenRecord) error
	// GetToken returns the token stored under hash (ErrBadToken if none).
	GetToken(ctx context.Context, hash string) (TokenRecord, error)
	// ConsumeToken deletes a one-time token; ErrBadToken if it was gone.
	ConsumeToken(ctx context.Context, hash string) error
	// ClaimHost records that host's agent joined; ErrHostTaken if an
	// agent holds the name already.
	ClaimHost(ctx context.Context, host, by string) error
}

// ErrHostTaken: a second agent claimed a host name already joined.
var ErrHostTaken = errors.New("host name already taken by a joined agent")

// Hash is the storage key of a token.
func Hash(token string) string {
	s := sha256.Sum256([]byte(token))
	return hex.EncodeToString(s[:])
}

// TokenPrefix starts every token: "ferry-<CA fingerprint prefix>-<secret>".
const TokenPrefix = "ferry-"

// CAPrefix returns the CA fingerprint prefix a token carries.
func CAPrefix(token string) (string, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(token), TokenPrefix)
	fp, secret, ok2 := strings.Cut(rest, "-")
	if !ok || !ok2 || len(fp) != pki.FingerprintPrefixLen || !pki.ValidHex(fp) || len(secret) < 32 {
		return "", errors.New("token: not a Ferry token (ferry-<16 hex>-<secret>, from `ferry token create`)")
	}
	return fp, nil
}

// Authenticator identifies callers.
type Authenticator struct {
	CA     *pki.CA
	Tokens Tokens
	Now    func() time.Time
}

// Authenticate returns the caller of r: its verified client certificate,
// the caller a peer replica vouches for, or its bearer token.
func (a *Authenticator) Authenticate(r *http.Request) (Caller, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		id := pki.IdentityOf(r.TLS.VerifiedChains[0][0])
		switch id.Kind {
		case pki.KindAgent:
			return Caller{Role: RoleAgent, ID: "agent:" + id.Name, Host: id.Name}, nil
		case pki.KindAdmin:
			return Caller{Role: RoleAdmin, ID: "cert:" + id.Name}, nil
		case pki.KindServer:
			if v := r.Header.Get(ForwardedCallerHeader); v != "" {
				if c, ok := decodeCaller(v); ok {
					return c, nil
				}
			}
			return Caller{Role: RoleServer, ID: "server:" + id.Name}, nil
		}
		// Any other kind, pki.KindQEMU above all (a host's stream
		// certificate, which its QEMU processes hold), is no credential.
	}
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" {
		return Caller{}, ErrNoCredential
	}
	rec, err := a.Tokens.GetToken(r.Context(), Hash(tok))
	if err != nil {
		return Caller{}, err
	}
	if rec.OneTime || !a.now().Before(rec.ExpiresAt) {
		return Caller{}, ErrBadToken
	}
	return Caller{Role: rec.Role, ID: "token:" + rec.ID}, nil
}

func (a *Authenticator) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Middleware authenticates and authorizes every request before next:
// open paths pass, RPCs need the role Policy names, and the caller is put
// in the request's context (and in ForwardedCallerHeader, for the leader
// when this replica forwards the call). Refusals are Connect errors:
// unauthenticated or permission_denied, naming the method and role.
func (a *Authenticator) Middleware(next http.Handler) http.Handler {
	ew := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if IsOpen(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		want := Needed(r.URL.Path)
		c, err := a.Authenticate(r)
		r.Header.Del(ForwardedCallerHeader)
		if err != nil {
			if want == Anyone {
				next.ServeHTTP(w, r)
				return
			}
			_ = ew.Write(w, r, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("%s: %w", r.URL.Path, err)))
			return
		}
		if !Allows(c.Role, want) {
			_ = ew.Write(w, r, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s needs role %s; %s has role %s: %w", r.URL.Path, want, c.ID, c.Role, ErrRoleForbidden)))
			return
		}
		r.Header.Set(ForwardedCallerHeader, c.encode())
		next.ServeHTTP(w, r.WithContext(WithCaller(r.Context(), c)))
	})
}
