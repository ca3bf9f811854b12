package exec

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/failpoint"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/store"
	"google.golang.org/protobuf/proto"
)

// The owner switch of a live migration, prepared before the guest's pause:
// the VM record is read when the transfer starts, the core hands the
// switched migration record with its CASOwner, and inside the pause one
// store transaction writes both (docs/migration.md, "The switchover").

// recordRevision is the store revision of a migration record's latest
// write (0: not known), shared by its writer and its owner switch.
type recordRevision struct{ rev atomic.Int64 }

// prefetchOwner reads the VM record (with its revision) for the owner
// switch, while RAM still moves. A failed read is not an error: the switch
// reads it then.
func (p *performer) prefetchOwner(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	vm, rev, err := p.store.GetVMRevision(rctx, p.vm)
	if err != nil {
		if p.log != nil {
			p.log.Info("prefetch of the VM record for the owner switch failed; the switch reads it", "err", err)
		}
		return
	}
	p.mu.Lock()
	p.owner = &ownerRead{vm: vm, rev: rev}
	p.mu.Unlock()
}

// takeOwner returns the prefetched VM record once (nil: none).
func (p *performer) takeOwner() *ownerRead {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := p.owner
	p.owner = nil
	return o
}

// switchOwner is casOwner for a live switchover: one transaction moves the
// owner and writes the switched migration record a.Record. A VM record
// changed since the prefetch (same generation) is read again once; a moved
// generation is Refused with the record as found, like SwapVM's.
func (p *performer) switchOwner(ctx context.Context, a core.Action, o *core.Observation) error {
	mig := p.record(*a.Record)
	for attempt := 0; ; attempt++ {
		cur := p.takeOwner()
		if cur == nil || attempt > 0 {
			vm, rev, err := p.store.GetVMRevision(ctx, p.vm)
			if err != nil {
				return fmt.Errorf("read VM %s for the owner switch: %w", p.vm, err)
			}
			cur = &ownerRead{vm: vm, rev: rev}
		}
		o.StoreVM = storeVM(cur.vm)
		if cur.vm.Generation != a.Generation {
			return fmt.Errorf("VM %s generation is %d, the migration expects %d (the record changed): %w", p.vm, cur.vm.Generation, a.Generation, store.ErrConflict)
		}
		next := proto.Clone(cur.vm).(*ferryv1.VM)
		next.Host = a.Owner
		var migRev int64
		if p.revs != nil {
			migRev = p.revs.rev.Load()
		}
		rev, err := p.store.SwitchOwner(ctx, next, cur.rev, a.Generation, mig, migRev)
		if errors.Is(err, store.ErrConflict) && attempt == 0 {
			continue // changed since the prefetch: read it again
		}
		if err != nil {
			return fmt.Errorf("owner switch to %s: %w", a.Owner, err)
		}
		if p.revs != nil {
			p.revs.rev.Store(rev)
		}
		o.StoreVM = storeVM(next)
		if p.log != nil {
			p.log.Info("migration step", "state", core.Record(*a.Record).State, "msg", "owner and migration record switched in one transaction")
		}
		return failpoint.Inject(AfterOwnerCAS)
	}
}
