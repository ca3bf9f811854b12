package guestalive

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestPingAnswersAfterRetries(t *testing.T) {
	var calls atomic.Int32
	since := time.Now().Add(-30 * time.Millisecond)
	r := Check(context.Background(), Config{
		Ping: func(ctx context.Context) error {
			if calls.Add(1) < 3 {
				return errors.New("fake: not yet")
			}
			return nil
		},
		Since: since, Interval: time.Millisecond,
	})
	if !r.Alive || r.Method != MethodPing || calls.Load() != 3 {
		t.Fatalf("Check = %+v after %d pings, want alive by guest-ping on the 3rd", r, calls.Load())
	}
	if r.After < 30*time.Millisecond {
		t.Errorf("After = %v, want counted from Since (>= 30ms)", r.After)
	}
}

func TestPingNeverAnswers(t *testing.T) {
	r := Check(context.Background(), Config{
		Ping: func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		},
		Timeout: 150 * time.Millisecond, AttemptTimeout: 40 * time.Millisecond, Interval: time.Millisecond,
	})
	if r.Alive || r.Method != MethodPing || !strings.Contains(r.Detail, "no answer to guest-ping within 150ms") {
		t.Fatalf("Check = %+v, want not alive with the reason", r)
	}
}

func TestCountersProgress(t *testing.T) {
	for _, tt := range []struct {
		name   string
		next   Sample
		method string
	}{
		{"vcpu", Sample{CPUTicks: 11, TxPackets: 5}, MethodVCPU},
		{"tx", Sample{CPUTicks: 10, TxPackets: 6}, MethodNICTx},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := 0
			r := Check(context.Background(), Config{
				Sample: func() (Sample, error) {
					n++
					if n < 3 {
						return Sample{CPUTicks: 10, TxPackets: 5}, nil
					}
					return tt.next, nil
				},
				Interval: time.Millisecond,
			})
			if !r.Alive || r.Method != tt.method {
				t.Fatalf("Check = %+v, want alive by %s", r, tt.method)
			}
		})
	}
}

func TestCountersStill(t *testing.T) {
	r := Check(context.Background(), Config{
		Sample:  func() (Sample, error) { return Sample{CPUTicks: 10, TxPackets: 5}, nil },
		Timeout: 60 * time.Millisecond, Interval: 5 * time.Millisecond,
	})
	if r.Alive || !strings.Contains(r.Detail, "no vCPU time and no packet sent") {
		t.Fatalf("Check = %+v, want not alive", r)
	}
	r = Check(context.Background(), Config{Sample: func() (Sample, error) { return Sample{}, errors.New("fake: gone") }})
	if r.Alive || !strings.Contains(r.Detail, "fake: gone") {
		t.Fatalf("Check on a failing sampler = %+v, want not alive naming the error", r)
	}
}

func TestVCPUTicks(t *testing.T) {
	root := t.TempDir()
	write := func(tid, comm, stat string) {
		dir := filepath.Join(root, "42", "task", tid)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "comm"), []byte(comm+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644)
	}
	// Fields after "(comm)": state ppid pgrp session tty tpgid flags minflt
	// cminflt majflt cmajflt utime stime ...
	write("42", "qemu-system-x86", "42 (qemu-system-x86) S 1 1 1 0 -1 0 0 0 0 0 500 500 0 0")
	write("43", "CPU 0/TCG", "43 (CPU 0/TCG) R 1 1 1 0 -1 0 0 0 0 0 120 30 0 0")
	write("44", "CPU 1/TCG", "44 (CPU 1/TCG) S 1 1 1 0 -1 0 0 0 0 0 7 3 0 0")
	sum, n, err := VCPUTicks(root, 42)
	if err != nil || sum != 160 || n != 2 {
		t.Fatalf("VCPUTicks = %d, %d, %v; want 160 ticks of 2 threads", sum, n, err)
	}
	if _, _, err := VCPUTicks(root, 7); err == nil {
		t.Error("VCPUTicks of a missing process: want an error")
	}
}
