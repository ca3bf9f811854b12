package store

import (
	"context"
	"fmt"

	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// The owner switch of a live migration, prepared before the guest's pause:
// the VM record is read (with its revision) while RAM still moves, so that
// inside the pause one transaction moves the owner and writes the switched
// migration record.

// GetVMRevision returns a VM record and the store revision it was last
// written at (the guard of SwitchOwner).
func (s *Etcd) GetVMRevision(ctx context.Context, name string) (*ferryv1.VM, int64, error) {
	return s.getVM(ctx, name)
}

// PutMigrationRevision is PutMigration that returns the revision the record
// was written at (the guard of SwitchOwner).
func (s *Etcd) PutMigrationRevision(ctx context.Context, m *statev1.MigrationRecord) (int64, error) {
	v, err := encode(m)
	if err != nil {
		return 0, err
	}
	_, _, rev, err := s.writeRev(ctx, "store migration "+m.Id, nil, []clientv3.Op{clientv3.OpPut(migPrefix+m.Id, v)})
	if err != nil {
		return 0, err
	}
	return rev, nil
}

// SwitchOwner writes vm (its owner changed) with generation
// expectGeneration+1 and the migration record m in one fenced transaction:
// both or neither. It holds only if the VM record is unchanged since it was
// read at vmRev with generation expectGeneration, and — with migRev > 0 —
// the migration record since it was written at migRev (a switch delayed
// past its caller's deadline cannot overwrite a newer record). A guard that
// fails is ErrConflict; nothing is written. On success vm.Generation is the
// new generation and the revision of the write is returned.
func (s *Etcd) SwitchOwner(ctx context.Context, vm *ferryv1.VM, vmRev, expectGeneration int64, m *statev1.MigrationRecord, migRev int64) (int64, error) {
	name := vm.GetSpec().GetName()
	if vm.Generation != expectGeneration {
		return 0, fmt.Errorf("VM %s generation is %d, expected %d: %w", name, vm.Generation, expectGeneration, ErrConflict)
	}
	next := proto.Clone(vm).(*ferryv1.VM)
	next.Generation = expectGeneration + 1
	vv, err := encode(next)
	if err != nil {
		return 0, err
	}
	mv, err := encode(m)
	if err != nil {
		return 0, err
	}
	vmKey, migKey := vmsPrefix+name, migPrefix+m.Id
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(vmKey), "=", vmRev)}
	if migRev > 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(migKey), "=", migRev))
	}
	ok, _, rev, err := s.writeRev(ctx, "switch owner of VM "+name, cmps, []clientv3.Op{clientv3.OpPut(vmKey, vv), clientv3.OpPut(migKey, mv)})
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("VM %s or migration %s changed since the switch was prepared: %w", name, m.Id, ErrConflict)
	}
	vm.Generation = next.Generation
	return rev, nil
}
