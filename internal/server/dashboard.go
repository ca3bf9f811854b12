package server

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/dashboard"
	"github.com/ferryvm/ferry/internal/drain"
)

// Read budget of the dashboard's source (see dashSource).
const (
	// dashShareFor is how long one read serves every open dashboard.
	dashShareFor = 500 * time.Millisecond
	// dashFullEvery bounds how long the list of migrations and the
	// events may go without a full re-read.
	dashFullEvery = 30 * time.Second
)

// dashboardHandler is the web dashboard at /ui/ (internal/dashboard),
// reading through the same code as the API.
func (s *Server) dashboardHandler() http.Handler {
	return dashboard.New(dashboard.Config{Source: &dashSource{s: s, shareFor: dashShareFor, fullEvery: dashFullEvery}, Log: s.log})
}

// dashSource implements dashboard.Source within a read budget: a stream
// reads every second, the store keeps up to DefaultKeepMigrations records
// and DefaultKeepEvents events. One read serves every dashboard for
// shareFor. Hosts and VMs are read each time; the migrations and the
// events only when the newest event changed (a migration started or
// changed state) or fullEvery passed, and in between only the live
// migrations, one by one, for their progress.
type dashSource struct {
	s         *Server
	shareFor  time.Duration
	fullEvery time.Duration

	mu     sync.Mutex
	at     time.Time // of the cached input
	full   time.Time // of the last full read
	lastID string    // the newest event at the last full read
	in     dashboard.Input
}

func (d *dashSource) Input(ctx context.Context) (dashboard.Input, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if !d.at.IsZero() && now.Sub(d.at) < d.shareFor {
		return d.in, nil
	}
	in := dashboard.Input{Migrations: d.in.Migrations, Events: d.in.Events}
	hs, err := (&hostService{d.s}).ListHosts(ctx, connect.NewRequest(&ferryv1.ListHostsRequest{}))
	if err != nil {
		return in, fmt.Errorf("hosts: %w", err)
	}
	vs, err := (&vmService{d.s}).ListVMs(ctx, connect.NewRequest(&ferryv1.ListVMsRequest{}))
	if err != nil {
		return in, fmt.Errorf("VMs: %w", err)
	}
	in.Hosts, in.VMs = hs.Msg.Hosts, vs.Msg.Vms
	if in.Evacuations, err = d.s.evacuations(ctx); err != nil {
		return in, fmt.Errorf("evacuations: %w", err)
	}
	if d.s.balancer != nil {
		in.Balance = d.s.balancer.Recommendations()
	}
	last, err := d.s.store.LastEvent(ctx)
	if err != nil {
		return in, fmt.Errorf("events: %w", err)
	}
	if d.full.IsZero() || last.GetId() != d.lastID || now.Sub(d.full) >= d.fullEvery {
		ms, err := (&migrationService{d.s}).ListMigrations(ctx, connect.NewRequest(&ferryv1.ListMigrationsRequest{}))
		if err != nil {
			return in, fmt.Errorf("migrations: %w", err)
		}
		evs, err := d.s.store.ListEvents(ctx)
		if err != nil {
			return in, fmt.Errorf("events: %w", err)
		}
		if n := dashboard.MaxEvents; len(evs) > n {
			evs = evs[len(evs)-n:]
		}
		in.Migrations, in.Events = ms.Msg.Migrations, evs
		d.full, d.lastID = now, last.GetId()
	} else {
		// A new slice: a Build of the previous input may still read it.
		in.Migrations = slices.Clone(in.Migrations)
		for i, m := range in.Migrations {
			if !dashboard.IsLive(m) {
				continue
			}
			r, err := (&migrationService{d.s}).GetMigration(ctx, connect.NewRequest(&ferryv1.GetMigrationRequest{Id: m.GetId(), WithoutSamples: true}))
			if err != nil {
				d.full = time.Time{} // gone or unreadable: list them all next time
				continue
			}
			in.Migrations[i] = r.Msg.Migration
		}
	}
	d.in, d.at = in, now
	return in, nil
}

// evacuations lists the hosts' maintenance records (none when the store
// keeps none).
func (s *Server) evacuations(ctx context.Context) ([]*ferryv1.Evacuation, error) {
	recs, ok := s.store.(drain.Records)
	if !ok {
		return nil, nil
	}
	return recs.ListEvacuations(ctx)
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
