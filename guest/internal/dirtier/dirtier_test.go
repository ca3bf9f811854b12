//go:build linux

package dirtier

import (
	"testing"
	"time"
	"unsafe"
)

func TestOff(t *testing.T) {
	d := New(0, 0)
	if err := d.Run(nil); err != nil {
		t.Fatal(err)
	}
	if s := d.Stats(time.Now()); s.State != StateOff || s.PagesDirtied != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestFillNonZero(t *testing.T) {
	w := make([]uint64, 1<<16)
	fillWords(w, 0)
	for i, v := range w {
		if v == 0 {
			t.Fatalf("word %d is zero", i)
		}
	}
}

func TestIdleFillsWorkingSet(t *testing.T) {
	d := New(4, 0)
	stop := make(chan struct{})
	done := make(chan error)
	go func() { done <- d.Run(stop) }()
	deadline := time.Now().Add(5 * time.Second)
	for d.Stats(time.Now()).State != StateIdle {
		if time.Now().After(deadline) {
			t.Fatal("never became idle")
		}
		time.Sleep(time.Millisecond)
	}
	// every page resident and non-zero
	for pg := 0; pg < len(d.mem)/PageSize; pg++ {
		if *(*uint64)(unsafe.Pointer(&d.mem[pg*PageSize])) == 0 {
			t.Fatalf("page %d zero after fill", pg)
		}
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := d.Stats(time.Now()); s.PagesDirtied != 0 {
		t.Fatalf("rate 0 dirtied %d pages", s.PagesDirtied)
	}
}

func TestRate(t *testing.T) {
	d := New(8, 32) // 8 MiB WSS = 2048 pages, 32 MiB/s = 8192 pages/s: 4 passes/s
	stop := make(chan struct{})
	done := make(chan error)
	go func() { done <- d.Run(stop) }()
	deadline := time.Now().Add(5 * time.Second)
	for d.Stats(time.Now()).State != StateRunning {
		if time.Now().After(deadline) {
			t.Fatal("never started")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(1 * time.Second)
	s := d.Stats(time.Now())
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("stats: %+v", s)
	want := s.Elapsed.Seconds() * 8192
	if got := float64(s.PagesDirtied); got < 0.9*want || got > want+1 {
		t.Fatalf("dirtied %v pages in %v, want ~%v", got, s.Elapsed, want)
	}
	if s.AchievedMiBps < 28 || s.AchievedMiBps > 32.1 {
		t.Fatalf("achieved %v MiB/s", s.AchievedMiBps)
	}
	if s.Passes < 3 || s.Passes > 5 {
		t.Fatalf("passes = %d", s.Passes)
	}
}
