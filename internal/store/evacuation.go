package store

import (
	"context"
	"fmt"
	"strings"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// evacPrefix holds one evacuation record per host in maintenance: its
// presence makes the host unschedulable (Host.Maintenance on read).
const evacPrefix = "/ferry/evacuations/"

// PutEvacuation writes a host's evacuation record (fenced like every
// write): its generation is incremented.
func (s *Etcd) PutEvacuation(ctx context.Context, e *ferryv1.Evacuation) error {
	if e.GetHost() == "" {
		return fmt.Errorf("store evacuation: host is empty")
	}
	e = proto.Clone(e).(*ferryv1.Evacuation)
	e.Generation++
	v, err := encode(e)
	if err != nil {
		return err
	}
	if _, _, err := s.write(ctx, "store evacuation of "+e.Host, nil, []clientv3.Op{clientv3.OpPut(evacPrefix+e.Host, v)}); err != nil {
		return err
	}
	return nil
}

// GetEvacuation returns a host's evacuation record (ErrNotFound: the
// host is not in maintenance).
func (s *Etcd) GetEvacuation(ctx context.Context, host string) (*ferryv1.Evacuation, error) {
	resp, err := s.c.Get(ctx, evacPrefix+host)
	if err != nil {
		return nil, fmt.Errorf("get evacuation of %s: %w", host, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("evacuation of host %q: %w", host, ErrNotFound)
	}
	e := &ferryv1.Evacuation{}
	if err := decode(resp.Kvs[0].Value, e); err != nil {
		return nil, err
	}
	return e, nil
}

// ListEvacuations returns every evacuation record, sorted by host.
func (s *Etcd) ListEvacuations(ctx context.Context) ([]*ferryv1.Evacuation, error) {
	resp, err := s.c.Get(ctx, evacPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("list evacuations: %w", err)
	}
	var out []*ferryv1.Evacuation
	for _, kv := range resp.Kvs {
		e := &ferryv1.Evacuation{}
		if err := decode(kv.Value, e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// DeleteEvacuation removes a host's record: the host leaves maintenance.
// Deleting one that is gone is not an error.
func (s *Etcd) DeleteEvacuation(ctx context.Context, host string) error {
	_, _, err := s.write(ctx, "delete evacuation of "+host, nil, []clientv3.Op{clientv3.OpDelete(evacPrefix + host)})
	return err
}

// maintenanceHosts returns the hosts with an evacuation record, from the
// keys of a prefix read.
func maintenanceHosts(kvs [][]byte) map[string]bool {
	out := map[string]bool{}
	for _, k := range kvs {
		out[strings.TrimPrefix(string(k), evacPrefix)] = true
	}
	return out
}
