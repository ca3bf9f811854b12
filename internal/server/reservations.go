package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/reserve"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Reservation bounds.
const (
	// createReservationMargin is added to the agent call timeout to bound a
	// create's reservation (it is released when CreateVM returns).
	createReservationMargin = time.Minute
	// migrationReservationMargin is added to a migration's timeout and
	// recovery window to bound its reservation on the destination.
	migrationReservationMargin = 2 * time.Minute
	// releaseTimeout bounds one release of a reservation.
	releaseTimeout = 10 * time.Second
)

// newReservations returns cfg.Reservations, or a table in the store's etcd
// when the store is etcd, or nil (reservations off) otherwise.
func newReservations(cfg Config) *reserve.Table {
	if cfg.Reservations != nil {
		return cfg.Reservations
	}
	if e, ok := cfg.Store.(interface{ Client() *clientv3.Client }); ok {
		t := reserve.New(e.Client())
		if f, ok := cfg.Store.(interface {
			FenceCmp() (clientv3.Cmp, bool)
		}); ok {
			t.Fence = f.FenceCmp // reservations are leader writes too
		}
		return t
	}
	return nil
}

// claims is what the VM records claim, per host and VM.
func (s *Server) claims(ctx context.Context) (map[string]reserve.Claims, error) {
	vms, err := s.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]reserve.Claims{}
	for _, vm := range vms {
		if out[vm.Host] == nil {
			out[vm.Host] = reserve.Claims{}
		}
		out[vm.Host][vm.Spec.GetName()] = reserve.Held{VCPUs: int(vm.Spec.GetVcpus()), MemoryMiB: vm.Spec.GetMemoryMib()}
	}
	return out, nil
}

// usageOn is what the VM records placed on host claim.
func (s *Server) usageOn(ctx context.Context, host string) (reserve.Claims, error) {
	all, err := s.claims(ctx)
	if err != nil {
		return nil, err
	}
	return all[host], nil
}

// heldByHost is the capacity reservations hold per host (empty without a
// reservation table).
func (s *Server) heldByHost(ctx context.Context) (map[string]reserve.Held, error) {
	if s.reserve == nil {
		return map[string]reserve.Held{}, nil
	}
	return s.reserve.HeldByHost(ctx)
}

// allocated is what VM records and reservations claim per host, a VM
// with both on one host counted once. Reservations are read first, like
// Reserve does, so no VM slips between the two reads.
func (s *Server) allocated(ctx context.Context) (map[string]reserve.Held, error) {
	var rs []*statev1.Reservation
	if s.reserve != nil {
		var err error
		if rs, err = s.reserve.List(ctx); err != nil {
			return nil, err
		}
	}
	vms, err := s.claims(ctx)
	if err != nil {
		return nil, err
	}
	return reserve.Allocated(vms, rs), nil
}

// reserveOn takes the room for sp on host under id.
func (s *Server) reserveOn(ctx context.Context, id, owner string, sp *ferryv1.VMSpec, host *ferryv1.Host, ttl time.Duration) error {
	if s.reserve == nil {
		return nil
	}
	_, err := s.reserve.Reserve(ctx, reserve.Request{
		ID: id, Owner: owner, Host: host.Name, VM: sp.GetName(),
		Capacity: reserve.Capacity{CPUs: int(host.GetCapacity().GetCpus()), MemoryMiB: host.GetCapacity().GetMemoryMib()},
		VCPUs:    int(sp.GetVcpus()), MemoryMiB: sp.GetMemoryMib(), TTL: ttl,
	}, s.usageOn)
	switch {
	case err == nil:
		s.log.Info("capacity reserved", "reservation", id, "owner", owner, "host", host.Name, "vm", sp.GetName())
		return nil
	case errors.Is(err, reserve.ErrNoRoom):
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("host %s cannot take VM %s: %w", host.Name, sp.GetName(), err))
	case errors.Is(err, reserve.ErrFenced):
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("this server is no longer the leader: %w", err))
	case errors.Is(err, reserve.ErrContention):
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("host %s is busy with other placements, try again: %w", host.Name, err))
	}
	return connectError(err)
}

// releaseReservation drops reservation id (bounded; a failure only leaves
// a reservation that expires on its own, and is logged).
func (s *Server) releaseReservation(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := s.releaseReservationErr(ctx, id); err != nil {
		s.log.Warn("release reservation (it expires on its own)", "reservation", id, "err", err)
	}
}

// placeAndReserve chooses a host for sp (the pinned one, or placement's
// choice) and reserves its room there. When another request took the room
// between placement and the reservation, placement runs again without that
// host (at most once per host). The returned release must be called when
// the create ends.
func (s *Server) placeAndReserve(ctx context.Context, sp *ferryv1.VMSpec, pinned string) (*ferryv1.Host, func(), error) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	id := "create-" + sp.GetName() + "-" + hex.EncodeToString(b)
	var exclude []string
	for {
		host, err := s.pickHost(ctx, sp, pinned, exclude)
		if err != nil {
			return nil, nil, err
		}
		err = s.reserveOn(ctx, id, "create of VM "+sp.GetName(), sp, host, s.timeout+createReservationMargin)
		if err == nil {
			return host, func() { s.releaseReservation(id) }, nil
		}
		if pinned != "" || connect.CodeOf(err) != connect.CodeResourceExhausted {
			return nil, nil, err
		}
		exclude = append(exclude, host.Name)
	}
}

// reserveMigration holds the VM's room on the migration's destination
// until the migration ends (releaseReservation(id)).
func (s *Server) reserveMigration(ctx context.Context, id string, vm *ferryv1.VM, dst *ferryv1.Host, opt *ferryv1.MigrationOptions) error {
	ttl := time.Duration(opt.GetTimeoutMs()+opt.GetRecoveryWindowMs())*time.Millisecond + migrationReservationMargin
	return s.reserveOn(ctx, id, "migration "+id, vm.Spec, dst, ttl)
}

// setAllocated sets c's allocation to what VM records and reservations
// claim on its host (checkRoom counts reservations like placement does).
func (s *Server) setAllocated(ctx context.Context, c *placement.Host) error {
	a, err := s.allocated(ctx)
	if err != nil {
		return connectError(err)
	}
	c.AllocatedVCPUs, c.AllocatedMemoryMiB = a[c.Name].VCPUs, a[c.Name].MemoryMiB
	return nil
}

// releaseReservationErr drops reservation id and returns the error (for
// the migration engine's Release hook; idempotent).
func (s *Server) releaseReservationErr(ctx context.Context, id string) error {
	if s.reserve == nil {
		return nil
	}
	return s.reserve.Release(ctx, id)
}
