package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ferryvm/ferry/internal/pki"
)

// caKey holds the cluster CA in etcd, so every replica uses the same one.
const caKey = "/ferry/pki/ca"

type storedCA struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// ClusterCA returns the cluster's CA. With caDir set it is the CA in that
// directory (created there if absent: `--ca DIR` shared by the replicas).
// Otherwise it is the one in etcd; if etcd has none, the one in
// DATA/pki is published (created first if absent); a replica that loses
// the race to publish uses the winner's. A copy is kept in DATA/pki
// (key mode 0600). created reports that this call made a new CA.
func ClusterCA(ctx context.Context, c *clientv3.Client, dataDir, caDir string) (ca *pki.CA, created bool, err error) {
	if caDir != "" {
		return pki.LoadOrCreateCA(caDir)
	}
	local := filepath.Join(dataDir, "pki")
	resp, err := c.Get(ctx, caKey)
	if err != nil {
		return nil, false, fmt.Errorf("read the cluster CA from etcd: %w", err)
	}
	if len(resp.Kvs) == 0 {
		mine, made, err := pki.LoadOrCreateCA(local)
		if err != nil {
			return nil, false, err
		}
		b, err := json.Marshal(storedCA{Cert: string(mine.CertPEM), Key: string(mine.KeyPEM)})
		if err != nil {
			return nil, false, err
		}
		txn, err := c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(caKey), "=", 0)).
			Then(clientv3.OpPut(caKey, string(b))).Else(clientv3.OpGet(caKey)).Commit()
		if err != nil {
			return nil, false, fmt.Errorf("publish the cluster CA: %w", err)
		}
		if txn.Succeeded {
			return mine, made, nil
		}
		resp = (*clientv3.GetResponse)(txn.Responses[0].GetResponseRange())
	}
	var s storedCA
	if err := json.Unmarshal(resp.Kvs[0].Value, &s); err != nil {
		return nil, false, fmt.Errorf("cluster CA in etcd: %w", err)
	}
	ca, err = pki.ParseCA([]byte(s.Cert), []byte(s.Key))
	if err != nil {
		return nil, false, fmt.Errorf("cluster CA in etcd: %w", err)
	}
	if old, err := pki.LoadCA(local); err == nil && old.Fingerprint() != ca.Fingerprint() || errors.Is(err, pki.ErrNoCA) {
		if err := ca.Save(local); err != nil {
			return nil, false, err
		}
	}
	return ca, false, nil
}
