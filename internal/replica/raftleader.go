package replica

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// shedRaftLeadership keeps etcd's raft leadership off this replica's own
// embedded member while it leads, until ctx ends. If the leading replica's
// process dies and takes the raft leader with it, etcd first elects a new
// raft leader and then extends every lease, so the dead replica's election
// key outlives it by a raft election more; with the raft leader elsewhere a
// dead leader is replaced within its lease TTL. Best effort: errors are
// logged and retried at the next check.
func (r *Replica) shedRaftLeadership(ctx context.Context, endpoint string) {
	c := r.cfg.Store.Client()
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		r.moveRaftLeaderAway(ctx, c, endpoint)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Replica) moveRaftLeaderAway(ctx context.Context, c *clientv3.Client, endpoint string) {
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := c.Status(sctx, endpoint)
	if err != nil || st.Header == nil || st.Leader != st.Header.MemberId {
		return
	}
	ml, err := c.MemberList(sctx)
	if err != nil {
		return
	}
	for _, m := range ml.Members {
		if m.ID == st.Header.MemberId || m.IsLearner || len(m.ClientURLs) == 0 {
			continue
		}
		if _, err := c.Status(sctx, m.ClientURLs[0]); err != nil {
			continue // not healthy: do not hand it the cluster
		}
		if _, err := c.MoveLeader(sctx, m.ID); err != nil {
			r.cfg.Log.Warn("move etcd raft leadership off the leading replica", "to", m.Name, "err", err)
			return
		}
		r.cfg.Log.Info("moved etcd raft leadership off the leading replica", "to", m.Name)
		return
	}
}
