package server

import (
	"context"
	"fmt"
	"net/http"
	"sync"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/dashboard"
)

// dashboardHandler is the web dashboard at /ui/ (internal/dashboard),
// reading through the same code as the API.
func (s *Server) dashboardHandler() http.Handler {
	return dashboard.New(dashboard.Config{Source: &dashSource{s: s}, Log: s.log})
}

// dashSource implements dashboard.Source. It re-reads the event history
// only when the newest event changed (a stream reads the state every
// second; the history holds up to DefaultKeepEvents).
type dashSource struct {
	s *Server

	mu     sync.Mutex
	lastID string
	events []*ferryv1.Event // the newest dashboard.MaxEvents, oldest first
}

func (d *dashSource) Input(ctx context.Context) (dashboard.Input, error) {
	var in dashboard.Input
	hs, err := (&hostService{d.s}).ListHosts(ctx, connect.NewRequest(&ferryv1.ListHostsRequest{}))
	if err != nil {
		return in, fmt.Errorf("hosts: %w", err)
	}
	vs, err := (&vmService{d.s}).ListVMs(ctx, connect.NewRequest(&ferryv1.ListVMsRequest{}))
	if err != nil {
		return in, fmt.Errorf("VMs: %w", err)
	}
	ms, err := (&migrationService{d.s}).ListMigrations(ctx, connect.NewRequest(&ferryv1.ListMigrationsRequest{}))
	if err != nil {
		return in, fmt.Errorf("migrations: %w", err)
	}
	evs, err := d.recentEvents(ctx)
	if err != nil {
		return in, fmt.Errorf("events: %w", err)
	}
	in.Hosts, in.VMs, in.Migrations, in.Events = hs.Msg.Hosts, vs.Msg.Vms, ms.Msg.Migrations, evs
	return in, nil
}

func (d *dashSource) recentEvents(ctx context.Context) ([]*ferryv1.Event, error) {
	last, err := d.s.store.LastEvent(ctx)
	if err != nil {
		return nil, err
	}
	id := last.GetId()
	d.mu.Lock()
	defer d.mu.Unlock()
	if id == d.lastID && d.events != nil {
		return d.events, nil
	}
	all, err := d.s.store.ListEvents(ctx)
	if err != nil {
		return nil, err
	}
	if n := dashboard.MaxEvents; len(all) > n {
		all = all[len(all)-n:]
	}
	d.lastID, d.events = id, append([]*ferryv1.Event{}, all...)
	return d.events, nil
}

func (d *dashSource) Migration(ctx context.Context, id string) (*ferryv1.Migration, error) {
	r, err := (&migrationService{d.s}).GetMigration(ctx, connect.NewRequest(&ferryv1.GetMigrationRequest{Id: id}))
	if connect.CodeOf(err) == connect.CodeNotFound {
		return nil, fmt.Errorf("%w: %w", dashboard.ErrNotFound, err)
	}
	if err != nil {
		return nil, err
	}
	return r.Msg.Migration, nil
}
