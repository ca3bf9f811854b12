package core

import (
	"fmt"
	"time"

	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func tm(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}

// ToProto is the persisted form of r (without the volatile session). The
// report field is left for the executor to fill.
func ToProto(r Record) *statev1.MigrationRecord {
	f := r.Facts
	m := &statev1.MigrationRecord{
		Version: r.writtenVersion(), Id: r.ID, Vm: r.VM, From: r.From, To: r.To, Strategy: string(r.Strategy),
		Options: &statev1.MigrationBounds{
			StallTimeout: durationpb.New(r.Options.StallTimeout), Timeout: durationpb.New(r.Options.Timeout),
			RecoveryWindow: durationpb.New(r.Options.RecoveryWindow),
			MaxAttempts:    r.Options.MaxAttempts, RetryBackoff: durationpb.New(r.Options.RetryBackoff),
			Auto: r.Options.Auto,
		},
		State: string(r.State), PrevVmState: string(r.PrevVMState), Generation: r.Generation,
		DestUri: r.DestURI, RecoverUri: r.RecoverURI, DiskUri: r.DiskURI,
		Facts: &statev1.MigrationFacts{
			DestPrepared: f.DestPrepared, OutgoingStarted: f.OutgoingStarted, PostcopyAsked: f.PostcopyAsked,
			SourceStopped: f.SourceStopped, OwnerSwitched: f.OwnerSwitched, DestArmed: f.DestArmed,
			ContinueSent: f.ContinueSent, PostcopyStarted: f.PostcopyStarted, DestRan: f.DestRan,
			DestAborted: f.DestAborted, SourceResumed: f.SourceResumed, SourceQuit: f.SourceQuit,
			SourceLost: f.SourceLost, DestLost: f.DestLost, VmRecordReleased: f.VMRecordReleased,
			ReservationFreed: f.ReservationFreed, GaveUp: f.GaveUp, DisksCopied: f.DisksCopied,
		},
		StartedAt: ts(r.StartedAt), Deadline: ts(r.Deadline), SwitchedAt: ts(r.SwitchedAt), GiveUpAt: ts(r.GiveUpAt),
		Attempts: r.Attempts, TransferredBytes: r.Transferred, Rounds: r.Rounds,
		LastProgressAt: ts(r.LastProgressAt), PostcopyPausedAt: ts(r.PausedAt),
		CancelRequested: r.CancelRequested, PostcopyWanted: r.PostcopyWanted, Error: r.Error, Note: r.Note,
		FinishedAt: ts(r.FinishedAt), FinalVmState: string(r.FinalVMState),
		Attempt: r.Attempt, NextAttemptAt: ts(r.NextAttemptAt), Retrying: r.Retrying,
	}
	for _, t := range r.Retries {
		m.Retries = append(m.Retries, &statev1.MigrationRecordRetry{Attempt: t.Attempt, FailedAt: ts(t.At), Reason: t.Reason,
			Backoff: durationpb.New(t.Backoff), Strategy: string(t.Strategy)})
	}
	for _, e := range r.History {
		m.History = append(m.History, &statev1.MigrationRecordEvent{At: ts(e.At), State: string(e.State), Message: e.Message})
	}
	m.Options.PostcopyAtFraction = r.Options.PostcopyAtFraction
	m.Options.PostcopyAtBytes = r.Options.PostcopyAtBytes
	m.CopyDisks = r.CopyDisks
	m.HandoverTerm, m.HandedOverAt = r.Handover.Term, ts(r.Handover.At)
	return m
}

// FromProto reads a persisted record; it refuses a newer version and a
// record that cannot be driven (Validate).
func FromProto(m *statev1.MigrationRecord) (Record, error) {
	if m == nil {
		return Record{}, fmt.Errorf("%w: nil", ErrBadRecord)
	}
	f := m.GetFacts()
	o := m.GetOptions()
	r := Record{
		Version: m.Version, ID: m.Id, VM: m.Vm, From: m.From, To: m.To, Strategy: Strategy(m.Strategy),
		Options: Options{
			StallTimeout: o.GetStallTimeout().AsDuration(), Timeout: o.GetTimeout().AsDuration(),
			RecoveryWindow: o.GetRecoveryWindow().AsDuration(),
			MaxAttempts:    o.GetMaxAttempts(), RetryBackoff: o.GetRetryBackoff().AsDuration(),
			Auto: o.GetAuto(),
		},
		State: State(m.State), PrevVMState: VMState(m.PrevVmState), Generation: m.Generation,
		DestURI: m.DestUri, RecoverURI: m.RecoverUri, DiskURI: m.DiskUri,
		Facts: Facts{
			DestPrepared: f.GetDestPrepared(), OutgoingStarted: f.GetOutgoingStarted(), PostcopyAsked: f.GetPostcopyAsked(),
			SourceStopped: f.GetSourceStopped(), OwnerSwitched: f.GetOwnerSwitched(), DestArmed: f.GetDestArmed(),
			ContinueSent: f.GetContinueSent(), PostcopyStarted: f.GetPostcopyStarted(), DestRan: f.GetDestRan(),
			DestAborted: f.GetDestAborted(), SourceResumed: f.GetSourceResumed(), SourceQuit: f.GetSourceQuit(),
			SourceLost: f.GetSourceLost(), DestLost: f.GetDestLost(), VMRecordReleased: f.GetVmRecordReleased(),
			ReservationFreed: f.GetReservationFreed(), GaveUp: f.GetGaveUp(), DisksCopied: f.GetDisksCopied(),
		},
		StartedAt: tm(m.StartedAt), Deadline: tm(m.Deadline), SwitchedAt: tm(m.SwitchedAt), GiveUpAt: tm(m.GiveUpAt),
		Attempts: m.Attempts, Transferred: m.TransferredBytes, Rounds: m.Rounds,
		LastProgressAt: tm(m.LastProgressAt), PausedAt: tm(m.PostcopyPausedAt),
		CancelRequested: m.CancelRequested, PostcopyWanted: m.PostcopyWanted, Error: m.Error, Note: m.Note,
		FinishedAt: tm(m.FinishedAt), FinalVMState: VMState(m.FinalVmState),
		Attempt: m.Attempt, NextAttemptAt: tm(m.NextAttemptAt), Retrying: m.Retrying,
	}
	for _, t := range m.Retries {
		r.Retries = append(r.Retries, Retry{Attempt: t.Attempt, At: tm(t.FailedAt), Reason: t.Reason, Backoff: t.GetBackoff().AsDuration(),
			Strategy: Strategy(t.GetStrategy())})
	}
	for _, e := range m.History {
		r.History = append(r.History, Event{At: tm(e.At), State: State(e.State), Message: e.Message})
	}
	r.Options.PostcopyAtFraction = o.GetPostcopyAtFraction()
	r.Options.PostcopyAtBytes = o.GetPostcopyAtBytes()
	r.CopyDisks = m.GetCopyDisks()
	r.Handover = Handover{Term: m.GetHandoverTerm(), At: tm(m.GetHandedOverAt())}
	if err := r.Validate(); err != nil {
		return Record{}, err
	}
	return r, nil
}
