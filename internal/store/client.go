package store

import clientv3 "go.etcd.io/etcd/client/v3"

// Client returns the etcd client the store uses, for packages that keep
// their own keys in the same cluster (internal/reserve).
func (s *Etcd) Client() *clientv3.Client { return s.c }
