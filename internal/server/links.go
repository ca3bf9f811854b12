package server

// Link telemetry: the rate of each host pair, learned from past migrations
// and kept fresh by short background probes of the pairs that recently
// migrated, so a plan has a link figure without probing first. The policy
// is the pure telemetry.Links; this file holds its lock, the clock and the
// prober goroutine.

import (
	"context"
	"fmt"
	"github.com/ferryvm/ferry/internal/migration/core"
	"log/slog"
	"net"
	"sync"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/telemetry"
)

// The background prober looks for due pairs every linkProbeTick and probes
// at most probesPerTick of them (each telemetry.BackgroundProbe long): at
// most 4 % of any link's time, however many hosts there are.
const (
	linkProbeTick = 5 * time.Second
	probesPerTick = 2
)

// bandwidths is the server's link book (see telemetry.Links) and its book
// of stream and mirror rates (telemetry.Rates, rates.go), safe for
// concurrent use.
type bandwidths struct {
	mu    sync.Mutex
	links *telemetry.Links
	rates telemetry.Rates
	log   *slog.Logger // nil: no log of what the book learns
}

func (b *bandwidths) book() *telemetry.Links {
	if b.links == nil {
		b.links = telemetry.NewLinks()
	}
	return b.links
}

// observe folds in the rate (MiB/s) a finished migration from → to
// reached. The "*", "*" pair the driver also reports is folded in by the
// book itself, so that call is ignored.
func (b *bandwidths) observe(from, to string, mibps float64) {
	if mibps <= 0 || from == telemetry.Any || to == telemetry.Any {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.book().ObserveMigration(from, to, mibps*(1<<20), time.Now())
}

// observeStall records how long a completed migration from → to had its
// link carry nothing.
func (b *bandwidths) observeStall(from, to string, stalled time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.book().ObserveStall(from, to, stalled, time.Now())
}

// observeProbe records a probe's rate (MiB/s) and round-trip time.
func (b *bandwidths) observeProbe(from, to string, pr linkProbe, inline bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.book().ObserveProbe(from, to, pr.mibps*(1<<20), time.Now(), inline)
	b.book().ObserveRTT(from, to, pr.rtt)
}

// linkProbe is one probe's result.
type linkProbe struct {
	mibps float64
	rtt   time.Duration // the TCP handshake; 0 from an agent that does not measure it
}

// figure is the link rate to plan with from → to, if the book has one.
func (b *bandwidths) figure(from, to string) (telemetry.Figure, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.book().Figure(from, to, time.Now())
}

func (b *bandwidths) probeFailed(from, to string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.book().ProbeFailed(from, to, time.Now())
}

func (b *bandwidths) due(hosts []string) []telemetry.Pair {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.book().Due(time.Now(), hosts)
}

// probeLink runs a TCP probe of d from src to dst and returns its rate in
// MiB/s and the round-trip time of its handshake.
func (s *Server) probeLink(ctx context.Context, src, dst *ferryv1.Host, d time.Duration) (linkProbe, error) {
	sa, da := s.agents.get(src.Address), s.agents.get(dst.Address)
	lis, err := da.mig.ProbeListen(ctx, connect.NewRequest(&agentv1.ProbeListenRequest{}))
	if err != nil {
		return linkProbe{}, fmt.Errorf("open a bandwidth probe on %s: %w", dst.Name, err)
	}
	if err := probeTarget(lis.Msg.Address, dst); err != nil {
		return linkProbe{}, err
	}
	probe, err := sa.mig.ProbeSend(ctx, connect.NewRequest(&agentv1.ProbeSendRequest{Address: lis.Msg.Address, DurationMs: d.Milliseconds()}))
	if err != nil {
		return linkProbe{}, fmt.Errorf("probe the link %s → %s: %w", src.Name, dst.Name, err)
	}
	return linkProbe{mibps: probe.Msg.Mibps, rtt: time.Duration(probe.Msg.RttUs) * time.Microsecond}, nil
}

// linkProbeLoop probes, every linkProbeTick, at most probesPerTick of
// the pairs the book says are due (recently migrated pairs every 15 s,
// the others every ten minutes), skipping pairs with a migration running
// between their hosts: the probe would compete with it.
func (s *Server) linkProbeLoop(ctx context.Context) {
	t := time.NewTicker(linkProbeTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.probeDue(ctx)
	}
}

func (s *Server) probeDue(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hosts, err := s.store.ListHosts(lctx)
	if err != nil {
		return
	}
	byName := map[string]*ferryv1.Host{}
	var names []string
	for _, h := range hosts {
		if h.State == "ready" && h.MigrationIp != "" {
			byName[h.Name] = h
			names = append(names, h.Name)
		}
	}
	due := s.bw.due(names)
	if len(due) == 0 {
		return
	}
	ms, err := s.store.ListMigrations(lctx)
	if err != nil {
		return
	}
	busy := map[string]bool{}
	for _, m := range ms {
		if !core.State(m.State).Terminal() {
			busy[m.From], busy[m.To] = true, true
		}
	}
	probed := 0
	for _, p := range due {
		if probed == probesPerTick {
			return
		}
		if busy[p.From] || busy[p.To] {
			continue
		}
		probed++
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		pr, err := s.probeLink(pctx, byName[p.From], byName[p.To], telemetry.BackgroundProbe)
		pcancel()
		if err != nil {
			s.log.Debug("background link probe failed", "pair", p.String(), "err", err)
			s.bw.probeFailed(p.From, p.To)
			continue
		}
		s.bw.observeProbe(p.From, p.To, pr, false)
	}
}

// probeTarget checks that the probe sink an agent opened is on the
// registered migration address of that host, so a source agent is only
// ever asked to stream to a registered peer.
func probeTarget(addr string, dst *ferryv1.Host) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("probe sink of %s: %q is not IP:port: %w", dst.Name, addr, err)
	}
	want := net.ParseIP(dst.GetMigrationIp())
	if want == nil || !want.Equal(net.ParseIP(host)) {
		return fmt.Errorf("probe sink of %s is %s, not on its registered migration address %q: refusing to probe", dst.Name, addr, dst.GetMigrationIp())
	}
	return nil
}
