package server

import (
	"context"
	"sort"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// hostExpectation fills a heartbeat reply with what the records place on
// host (see expectationFor). The reply is authoritative only when both
// lists were read completely and this replica's view counts (see
// viewIsAuthoritative); an agent reaps orphan QEMUs only on such replies.
func (s *Server) hostExpectation(ctx context.Context, host string, resp *ferryv1.HeartbeatResponse) {
	vms, err := s.store.ListVMs(ctx)
	if err != nil {
		s.log.Warn("heartbeat: list VMs for the host's expectation", "host", host, "err", err)
		return
	}
	migs, err := s.store.ListMigrations(ctx)
	if err != nil {
		s.log.Warn("heartbeat: list migrations for the host's expectation", "host", host, "err", err)
		return
	}
	expectationFor(host, vms, migs, resp)
	resp.Authoritative = s.viewIsAuthoritative()
}

// migrationRef is what the expectation reads of a stored migration record.
type migrationRef interface {
	GetId() string
	GetVm() string
	GetFrom() string
	GetTo() string
	GetFinishedAt() *timestamppb.Timestamp
}

// expectationFor lists the VMs whose record names host and the migrations
// not yet finished whose source or destination it is (their VMs count as
// expected too: a cold migration's destination runs under no migration id).
func expectationFor[M migrationRef](host string, vms []*ferryv1.VM, migs []M, resp *ferryv1.HeartbeatResponse) {
	seen := map[string]bool{}
	add := func(name string) {
		if !seen[name] {
			seen[name] = true
			resp.ExpectedVms = append(resp.ExpectedVms, name)
		}
	}
	for _, vm := range vms {
		if vm.Host == host {
			add(vm.Spec.GetName())
		}
	}
	for _, m := range migs {
		if m.GetFinishedAt() != nil || (m.GetFrom() != host && m.GetTo() != host) {
			continue
		}
		resp.InflightMigrations = append(resp.InflightMigrations, m.GetId())
		if a, ok := any(m).(interface{ GetAttempt() int32 }); ok && a.GetAttempt() > 1 {
			// A retried attempt's agent steps carry its own id.
			resp.InflightMigrations = append(resp.InflightMigrations, core.AttemptIDOf(m.GetId(), a.GetAttempt()))
		}
		add(m.GetVm())
	}
	sort.Strings(resp.ExpectedVms)
	sort.Strings(resp.InflightMigrations)
}

// viewIsAuthoritative reports whether this replica's reading of the
// records is the cluster's: with one server it always is; with several
// only the leader's is (a follower answering a heartbeat itself, because no
// leader could be reached, must not make an agent reap anything).
func (s *Server) viewIsAuthoritative() bool { return s.leading() }
