package server

import "net/http"

// replicaHooks connect the Server to the replica running it (package
// replica): the handler wrapper that forwards writes to the leader, and
// whether this replica leads.
type replicaHooks struct {
	wrap    func(http.Handler) http.Handler
	leading func() bool
}

func (r replicaHooks) handler(h http.Handler) http.Handler {
	if r.wrap == nil {
		return h
	}
	return r.wrap(h)
}

// isLeading reports whether this replica leads (always, without a replica).
func (r replicaHooks) isLeading() bool { return r.leading == nil || r.leading() }

// leading reports whether this server's replica leads: reconcilers run only
// on the leader.
func (s *Server) leading() bool { return s.replica.isLeading() }
