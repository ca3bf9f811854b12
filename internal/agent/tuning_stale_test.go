package agent

import (
	"testing"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/qmp"
)

// A QEMU keeps the migration parameters and capabilities of the migration
// it received: a source must name compression and preempt even when off,
// or the last migration's zstd or preempt would carry over.
func TestTuningNamesWhatIsOff(t *testing.T) {
	var p qmp.MigrationParameters
	tuneParams(&agentv1.MigrationTuning{ZeroPageDetection: "multifd"}, true, true, &p)
	if p.MultifdCompression == nil || *p.MultifdCompression != qmp.MultiFDCompressionNone {
		t.Errorf("multifd without compression: multifd-compression %v, want none", p.MultifdCompression)
	}
	var q qmp.MigrationParameters
	tuneParams(&agentv1.MigrationTuning{}, true, false, &q)
	if q.MultifdCompression != nil {
		t.Errorf("without multifd: multifd-compression %v, want unset", *q.MultifdCompression)
	}
	caps := tuningCaps(&agentv1.MigrationTuning{}, true)
	if len(caps) != 1 || caps[0].Capability != qmp.CapPostcopyPreempt || caps[0].State {
		t.Errorf("preempt off on a QEMU that has it: %+v, want postcopy-preempt=false", caps)
	}
	if caps := tuningCaps(&agentv1.MigrationTuning{}, false); len(caps) != 0 {
		t.Errorf("preempt off on a QEMU without it: %+v, want nothing named", caps)
	}
}
