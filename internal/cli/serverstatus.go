package cli

import (
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/spf13/cobra"
)

func (g *globals) cluster() ferryv1connect.ClusterServiceClient {
	hc, base := failover.Client(g.server)
	return ferryv1connect.NewClusterServiceClient(hc, base)
}

func newServerStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the control plane: server replicas, the leader, etcd members and their health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.cluster().GetClusterStatus(cmd.Context(), connect.NewRequest(&ferryv1.GetClusterStatusRequest{}))
			if err != nil {
				return err
			}
			st := resp.Msg.Status
			if g.output == "json" {
				return printJSON(g.stdout, st)
			}
			now := time.Now()
			leader := st.Leader
			if leader == "" {
				leader = "none (electing)"
			}
			fmt.Fprintf(g.stdout, "leader: %s %s\n\n", leader, st.LeaderUrl)
			var rows [][]string
			for _, r := range st.Replicas {
				rows = append(rows, []string{r.Name, r.Role, r.Url, age(r.LastSeen, now) + " ago", age(r.StartedAt, now)})
			}
			if err := table(g.stdout, []string{"REPLICA", "ROLE", "URL", "LAST SEEN", "UP"}, rows); err != nil {
				return err
			}
			fmt.Fprintln(g.stdout)
			rows = rows[:0]
			for _, m := range st.EtcdMembers {
				health := "healthy"
				if !m.Healthy {
					health = "unhealthy: " + m.Error
				}
				role := "follower"
				if m.IsLeader {
					role = "leader"
				}
				if m.IsLearner {
					role = "learner"
				}
				rows = append(rows, []string{orDash(m.Name), fmt.Sprintf("%x", m.Id), role, health, strings.Join(m.ClientUrls, ","), orDash(m.Version)})
			}
			return table(g.stdout, []string{"ETCD MEMBER", "ID", "RAFT", "HEALTH", "CLIENT URLS", "VERSION"}, rows)
		},
	}
}
