package agent

import (
	"context"
	"time"

	"github.com/ferryvm/ferry/internal/qemu"
)

// QEMUProcess is a running QEMU as the agent uses it (*qemu.Process is the
// real one).
type QEMUProcess interface {
	// PID is the process ID.
	PID() int
	// Alive reports whether the process still runs.
	Alive() bool
	// Exited is closed once the process is gone.
	Exited() <-chan struct{}
	// Kill ends the process (SIGKILL) and waits for it to be gone.
	Kill() error
	// StartedAt is when the process started.
	StartedAt() time.Time
	// RSSBytes is the process's resident memory (0 when gone).
	RSSBytes() int64
}

// QEMURuntime starts QEMU processes and finds the ones that survived an
// agent restart. The default runs real QEMU through internal/qemu; unit
// tests pass a fake (see Config.QEMU).
type QEMURuntime interface {
	// Start launches QEMU for cfg and returns once its QMP socket answers.
	Start(ctx context.Context, binary string, cfg qemu.Config) (QEMUProcess, error)
	// Attach finds the live QEMU owning paths; the error wraps
	// qemu.ErrNotRunning when there is none.
	Attach(paths qemu.Paths) (QEMUProcess, error)
}

// realQEMU is the QEMURuntime of internal/qemu.
type realQEMU struct{}

func (realQEMU) Start(ctx context.Context, binary string, cfg qemu.Config) (QEMUProcess, error) {
	p, err := qemu.Start(ctx, binary, cfg)
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (realQEMU) Attach(paths qemu.Paths) (QEMUProcess, error) {
	p, err := qemu.Attach(paths)
	if err != nil {
		return nil, err
	}
	return p, nil
}
