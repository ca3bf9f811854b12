package server

import "context"

// RunEngine is a temporary shim until the migration engine lands: it
// recovers the migrations a previous leader left in flight and blocks until
// ctx ends (leadership lost or shutdown). The integrator deletes this file
// when merging the real RunEngine.
func (s *Server) RunEngine(ctx context.Context) error {
	if err := s.RecoverMigrations(ctx); err != nil {
		s.log.Error("recover migrations", "err", err)
	}
	<-ctx.Done()
	return nil
}
