package auth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ferryvm/ferry/internal/pki"
)

// NewToken makes a token for the cluster whose CA has fingerprint fp, and
// its record.
func NewToken(fp string, role Role, ttl time.Duration, now time.Time) (string, TokenRecord, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", TokenRecord{}, err
	}
	id := make([]byte, 6)
	if _, err := rand.Read(id); err != nil {
		return "", TokenRecord{}, err
	}
	tok := TokenPrefix + pki.ShortFingerprint(fp) + "-" + hex.EncodeToString(b)
	return tok, TokenRecord{ID: hex.EncodeToString(id), Role: role, ExpiresAt: now.Add(ttl), OneTime: role == RoleAgent}, nil
}

// Etcd keys of the auth state.
const (
	tokensPrefix = "/ferry/auth/tokens/"
	hostsPrefix  = "/ferry/auth/hosts/"
)

// EtcdTokens keeps tokens and host claims in etcd; a token's key expires
// with it (lease).
type EtcdTokens struct{ C *clientv3.Client }

// PutToken implements Tokens.
func (e EtcdTokens) PutToken(ctx context.Context, hash string, rec TokenRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	ttl := int64(time.Until(rec.ExpiresAt).Seconds()) + 1
	lease, err := e.C.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("token lease: %w", err)
	}
	_, err = e.C.Put(ctx, tokensPrefix+hash, string(b), clientv3.WithLease(lease.ID))
	return err
}

// GetToken implements Tokens.
func (e EtcdTokens) GetToken(ctx context.Context, hash string) (TokenRecord, error) {
	var rec TokenRecord
	resp, err := e.C.Get(ctx, tokensPrefix+hash)
	if err != nil {
		return rec, fmt.Errorf("read token: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return rec, ErrBadToken
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		return rec, fmt.Errorf("token record: %w", err)
	}
	return rec, nil
}

// ConsumeToken implements Tokens.
func (e EtcdTokens) ConsumeToken(ctx context.Context, hash string) error {
	resp, err := e.C.Delete(ctx, tokensPrefix+hash)
	if err != nil {
		return fmt.Errorf("consume token: %w", err)
	}
	if resp.Deleted == 0 {
		return ErrBadToken
	}
	return nil
}

// ClaimHost implements Tokens.
func (e EtcdTokens) ClaimHost(ctx context.Context, host, by string) error {
	k := hostsPrefix + host
	resp, err := e.C.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(clientv3.OpPut(k, by)).Commit()
	if err != nil {
		return fmt.Errorf("claim host %s: %w", host, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%s: %w", host, ErrHostTaken)
	}
	return nil
}

// MemTokens is an in-memory Tokens (tests, and a server without etcd).
type MemTokens struct {
	mu     sync.Mutex
	tokens map[string]TokenRecord
	hosts  map[string]string
}

// PutToken implements Tokens.
func (m *MemTokens) PutToken(_ context.Context, hash string, rec TokenRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tokens == nil {
		m.tokens, m.hosts = map[string]TokenRecord{}, map[string]string{}
	}
	m.tokens[hash] = rec
	return nil
}

// GetToken implements Tokens.
func (m *MemTokens) GetToken(_ context.Context, hash string) (TokenRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.tokens[hash]
	if !ok {
		return rec, ErrBadToken
	}
	return rec, nil
}

// ConsumeToken implements Tokens.
func (m *MemTokens) ConsumeToken(_ context.Context, hash string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.tokens[hash]; !ok {
		return ErrBadToken
	}
	delete(m.tokens, hash)
	return nil
}

// ClaimHost implements Tokens.
func (m *MemTokens) ClaimHost(_ context.Context, host, by string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.hosts == nil {
		m.tokens, m.hosts = map[string]TokenRecord{}, map[string]string{}
	}
	if _, ok := m.hosts[host]; ok {
		return fmt.Errorf("%s: %w", host, ErrHostTaken)
	}
	m.hosts[host] = by
	return nil
}
