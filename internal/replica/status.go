package replica

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/leader"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type statusService struct{ r *Replica }

// GetClusterStatus reports the replicas, the leader and the etcd members.
func (s *statusService) GetClusterStatus(ctx context.Context, _ *connect.Request[ferryv1.GetClusterStatusRequest]) (*connect.Response[ferryv1.GetClusterStatusResponse], error) {
	st, err := Status(ctx, s.r.cfg.Store.Client())
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	st.AnsweredBy = s.r.cfg.Self.Name
	return connect.NewResponse(&ferryv1.GetClusterStatusResponse{Status: st}), nil
}

// Status reads the cluster status from etcd: registered replicas, the
// leader, and every etcd member with its health (each asked directly,
// bounded by a few seconds).
func Status(ctx context.Context, c *clientv3.Client) (*ferryv1.ClusterStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out := &ferryv1.ClusterStatus{}
	l, _, err := leader.Current(ctx, c, "")
	switch {
	case err == nil:
		out.Leader, out.LeaderUrl = l.Name, l.URL
	case err != leader.ErrNoLeader:
		return nil, err
	}
	reps, err := leader.Replicas(ctx, c)
	if err != nil {
		return nil, err
	}
	for _, rp := range reps {
		role := "follower"
		if rp.Name == out.Leader {
			role = "leader"
		}
		out.Replicas = append(out.Replicas, &ferryv1.ServerReplica{
			Name: rp.Name, Url: rp.URL, Role: role,
			StartedAt: timestamppb.New(rp.Started), LastSeen: timestamppb.New(rp.LastSeen),
		})
	}
	ml, err := c.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd members: %w", err)
	}
	var wg sync.WaitGroup
	out.EtcdMembers = make([]*ferryv1.EtcdMember, len(ml.Members))
	for i, m := range ml.Members {
		em := &ferryv1.EtcdMember{Id: m.ID, Name: m.Name, PeerUrls: m.PeerURLs, ClientUrls: m.ClientURLs, IsLearner: m.IsLearner}
		out.EtcdMembers[i] = em
		if len(m.ClientURLs) == 0 {
			em.Error = "no client URL (not started yet)"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			sr, err := c.Status(sctx, m.ClientURLs[0])
			if err != nil {
				em.Error = err.Error()
				return
			}
			em.Healthy = len(sr.Errors) == 0
			if !em.Healthy {
				em.Error = fmt.Sprint(sr.Errors)
			}
			em.IsLeader = sr.Leader == m.ID
			em.Version, em.DbSizeBytes, em.RaftTerm = sr.Version, sr.DbSize, sr.RaftTerm
		}()
	}
	wg.Wait()
	sort.Slice(out.EtcdMembers, func(i, j int) bool { return out.EtcdMembers[i].Name < out.EtcdMembers[j].Name })
	return out, nil
}
