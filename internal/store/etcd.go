package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

const (
	hostsPrefix = "/ferry/hosts/"
	alivePrefix = "/ferry/alive/"
	vmsPrefix   = "/ferry/vms/"
	migPrefix   = "/ferry/migrations/"
)

// Etcd is the Store kept in an etcd cluster.
type Etcd struct {
	c *clientv3.Client

	mu     sync.Mutex
	leases map[string]clientv3.LeaseID // host -> liveness lease

	fence fenceRef // nil: unfenced; see SetFence
}

// NewEtcd connects to the etcd cluster at endpoints in plaintext.
func NewEtcd(ctx context.Context, endpoints []string) (*Etcd, error) {
	return NewEtcdTLS(ctx, endpoints, nil)
}

// NewEtcdTLS connects to the etcd cluster at endpoints, over TLS with
// tlsCfg when it is not nil (internal/etcdtls builds it).
func NewEtcdTLS(ctx context.Context, endpoints []string, tlsCfg *tls.Config) (*Etcd, error) {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Context:     ctx,
		Logger:      nil,
		TLS:         tlsCfg,
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	// Fail fast with a clear message when the cluster is not reachable.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Get(sctx, "/ferry/ping"); err != nil {
		c.Close()
		return nil, fmt.Errorf("etcd %v not reachable: %w (check --etcd-endpoints, and for https:// --etcd-ca/--etcd-cert/--etcd-key)", endpoints, err)
	}
	return &Etcd{c: c, leases: map[string]clientv3.LeaseID{}}, nil
}

// Close closes the etcd client.
func (s *Etcd) Close() error { return s.c.Close() }

var marshal = protojson.MarshalOptions{UseProtoNames: false}

func encode(m proto.Message) (string, error) {
	b, err := marshal.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("encode %T: %w", m, err)
	}
	return string(b), nil
}

func decode(b []byte, m proto.Message) error {
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, m); err != nil {
		return fmt.Errorf("decode %T: %w", m, err)
	}
	return nil
}

// PutHost implements Store.
func (s *Etcd) PutHost(ctx context.Context, h *ferryv1.Host, ttl time.Duration) error {
	h = proto.Clone(h).(*ferryv1.Host)
	h.State = ""          // derived from the lease on read
	h.Maintenance = false // derived from the evacuation records on read
	v, err := encode(h)
	if err != nil {
		return err
	}
	lease, err := s.renewLease(ctx, h.Name, ttl)
	if err != nil {
		return err
	}
	_, err = s.c.Txn(ctx).Then(
		clientv3.OpPut(hostsPrefix+h.Name, v),
		clientv3.OpPut(alivePrefix+h.Name, "1", clientv3.WithLease(lease)),
	).Commit()
	if err != nil {
		return fmt.Errorf("store host %s: %w", h.Name, err)
	}
	return nil
}

func (s *Etcd) renewLease(ctx context.Context, host string, ttl time.Duration) (clientv3.LeaseID, error) {
	s.mu.Lock()
	id, ok := s.leases[host]
	s.mu.Unlock()
	if ok {
		if _, err := s.c.KeepAliveOnce(ctx, id); err == nil {
			return id, nil
		}
	}
	g, err := s.c.Grant(ctx, int64(ttl/time.Second))
	if err != nil {
		return 0, fmt.Errorf("grant lease for host %s: %w", host, err)
	}
	s.mu.Lock()
	s.leases[host] = g.ID
	s.mu.Unlock()
	return g.ID, nil
}

// GetHost implements Store.
func (s *Etcd) GetHost(ctx context.Context, name string) (*ferryv1.Host, error) {
	resp, err := s.c.Txn(ctx).Then(
		clientv3.OpGet(hostsPrefix+name),
		clientv3.OpGet(alivePrefix+name),
		clientv3.OpGet(evacPrefix+name, clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("get host %s: %w", name, err)
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, fmt.Errorf("host %q: %w", name, ErrNotFound)
	}
	h := &ferryv1.Host{}
	if err := decode(kvs[0].Value, h); err != nil {
		return nil, err
	}
	h.State = hostState(len(resp.Responses[1].GetResponseRange().Kvs) > 0)
	h.Maintenance = len(resp.Responses[2].GetResponseRange().Kvs) > 0
	return h, nil
}

func hostState(alive bool) string {
	if alive {
		return "ready"
	}
	return "unreachable"
}

// ListHosts implements Store.
func (s *Etcd) ListHosts(ctx context.Context) ([]*ferryv1.Host, error) {
	resp, err := s.c.Txn(ctx).Then(
		clientv3.OpGet(hostsPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(alivePrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		clientv3.OpGet(evacPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	var keys [][]byte
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		keys = append(keys, kv.Key)
	}
	inMaintenance := maintenanceHosts(keys)
	alive := map[string]bool{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		alive[string(kv.Key[len(alivePrefix):])] = true
	}
	var out []*ferryv1.Host
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		h := &ferryv1.Host{}
		if err := decode(kv.Value, h); err != nil {
			return nil, err
		}
		h.State = hostState(alive[h.Name])
		h.Maintenance = inMaintenance[h.Name]
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// CreateVM implements Store.
func (s *Etcd) CreateVM(ctx context.Context, vm *ferryv1.VM) error {
	name := vm.GetSpec().GetName()
	v, err := encode(vm)
	if err != nil {
		return err
	}
	key := vmsPrefix + name
	ok, _, err := s.write(ctx, "create VM "+name,
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
		[]clientv3.Op{clientv3.OpPut(key, v)})
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("VM %q: %w", name, ErrExists)
	}
	return nil
}

func (s *Etcd) getVM(ctx context.Context, name string) (*ferryv1.VM, int64, error) {
	resp, err := s.c.Get(ctx, vmsPrefix+name)
	if err != nil {
		return nil, 0, fmt.Errorf("get VM %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("VM %q: %w", name, ErrNotFound)
	}
	vm := &ferryv1.VM{}
	if err := decode(resp.Kvs[0].Value, vm); err != nil {
		return nil, 0, err
	}
	return vm, resp.Kvs[0].ModRevision, nil
}

// GetVM implements Store.
func (s *Etcd) GetVM(ctx context.Context, name string) (*ferryv1.VM, error) {
	vm, _, err := s.getVM(ctx, name)
	return vm, err
}

// ListVMs implements Store.
func (s *Etcd) ListVMs(ctx context.Context) ([]*ferryv1.VM, error) {
	resp, err := s.c.Get(ctx, vmsPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	out := make([]*ferryv1.VM, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		vm := &ferryv1.VM{}
		if err := decode(kv.Value, vm); err != nil {
			return nil, err
		}
		out = append(out, vm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetSpec().GetName() < out[j].GetSpec().GetName() })
	return out, nil
}

// UpdateVM implements Store.
func (s *Etcd) UpdateVM(ctx context.Context, name string, bump bool, fn func(*ferryv1.VM) error) (*ferryv1.VM, error) {
	for attempt := 0; attempt < 16; attempt++ {
		vm, rev, err := s.getVM(ctx, name)
		if err != nil {
			return nil, err
		}
		if err := fn(vm); err != nil {
			return nil, err
		}
		if bump {
			vm.Generation++
		}
		v, err := encode(vm)
		if err != nil {
			return nil, err
		}
		key := vmsPrefix + name
		ok, _, err := s.write(ctx, "update VM "+name,
			[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)},
			[]clientv3.Op{clientv3.OpPut(key, v)})
		if err != nil {
			return nil, err
		}
		if ok {
			return vm, nil
		}
	}
	return nil, fmt.Errorf("update VM %s: %w (gave up after 16 attempts)", name, ErrConflict)
}

// SwapVM implements Store.
func (s *Etcd) SwapVM(ctx context.Context, vm *ferryv1.VM, expectGeneration int64) error {
	name := vm.GetSpec().GetName()
	cur, rev, err := s.getVM(ctx, name)
	if err != nil {
		return err
	}
	if cur.Generation != expectGeneration {
		return fmt.Errorf("VM %s generation is %d, expected %d: %w", name, cur.Generation, expectGeneration, ErrConflict)
	}
	next := proto.Clone(vm).(*ferryv1.VM)
	next.Generation = expectGeneration + 1
	v, err := encode(next)
	if err != nil {
		return err
	}
	key := vmsPrefix + name
	ok, _, err := s.write(ctx, "swap VM "+name,
		[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)},
		[]clientv3.Op{clientv3.OpPut(key, v)})
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("VM %s changed during swap: %w", name, ErrConflict)
	}
	vm.Generation = next.Generation
	return nil
}

// DeleteVM implements Store.
func (s *Etcd) DeleteVM(ctx context.Context, name string) error {
	_, rs, err := s.write(ctx, "delete VM "+name, nil, []clientv3.Op{clientv3.OpDelete(vmsPrefix + name)})
	if err != nil {
		return err
	}
	if len(rs) == 0 || rs[0].GetResponseDeleteRange().GetDeleted() == 0 {
		return fmt.Errorf("VM %q: %w", name, ErrNotFound)
	}
	return nil
}

var _ Store = (*Etcd)(nil)

// IsNotFound reports whether err is ErrNotFound.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// PutMigration implements Store.
func (s *Etcd) PutMigration(ctx context.Context, m *statev1.MigrationRecord) error {
	v, err := encode(m)
	if err != nil {
		return err
	}
	if _, _, err := s.write(ctx, "store migration "+m.Id, nil, []clientv3.Op{clientv3.OpPut(migPrefix+m.Id, v)}); err != nil {
		return err
	}
	return nil
}

// DeleteMigration implements Store.
func (s *Etcd) DeleteMigration(ctx context.Context, id string) error {
	if _, _, err := s.write(ctx, "delete migration "+id, nil, []clientv3.Op{clientv3.OpDelete(migPrefix + id)}); err != nil {
		return err
	}
	return nil
}

// GetMigration implements Store.
func (s *Etcd) GetMigration(ctx context.Context, id string) (*statev1.MigrationRecord, error) {
	resp, err := s.c.Get(ctx, migPrefix+id)
	if err != nil {
		return nil, fmt.Errorf("get migration %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("migration %q: %w", id, ErrNotFound)
	}
	m := &statev1.MigrationRecord{}
	return m, decode(resp.Kvs[0].Value, m)
}

// ListMigrations implements Store.
func (s *Etcd) ListMigrations(ctx context.Context) ([]*statev1.MigrationRecord, error) {
	resp, err := s.c.Get(ctx, migPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	out := make([]*statev1.MigrationRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		m := &statev1.MigrationRecord{}
		if err := decode(kv.Value, m); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].GetStartedAt().AsTime(), out[j].GetStartedAt().AsTime()
		if !a.Equal(b) {
			return a.Before(b)
		}
		return out[i].Id < out[j].Id
	})
	return out, nil
}
