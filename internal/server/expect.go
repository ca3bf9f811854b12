package server

import (
	"context"
	"sort"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// hostExpectation fills a heartbeat reply with what the records place on
// host: the VMs whose record names it and the in-flight migrations whose
// source or destination it is (their VMs count as expected too). The reply is authoritative only when both
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
	for _, vm := range vms {
		if vm.Host == host {
			resp.ExpectedVms = append(resp.ExpectedVms, vm.Spec.GetName())
		}
	}
	for _, m := range migs {
		if migrationEnded(m) || (m.From != host && m.To != host) {
			continue
		}
		resp.InflightMigrations = append(resp.InflightMigrations, m.Id)
		// A migration's VM may run here under no migration id (a cold
		// migration's destination is started by StartVM).
		resp.ExpectedVms = append(resp.ExpectedVms, m.Vm)
	}
	sort.Strings(resp.ExpectedVms)
	sort.Strings(resp.InflightMigrations)
	resp.Authoritative = s.viewIsAuthoritative()
}

// migrationEnded reports whether a migration record is final.
func migrationEnded(m *ferryv1.Migration) bool {
	switch m.Status {
	case "completed", "failed", "cancelled":
		return true
	}
	return false
}

// viewIsAuthoritative reports whether this replica's reading of the
// records is the cluster's: with one server it always is; with several
// only the leader's is (replicas that are not leading must return false).
func (s *Server) viewIsAuthoritative() bool { return true }
