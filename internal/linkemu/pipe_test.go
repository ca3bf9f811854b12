package linkemu

import (
	"math"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func at(ms float64) time.Time { return t0.Add(time.Duration(ms * float64(time.Millisecond))) }

func frame(n int) []byte { return make([]byte, n) }

func TestPipeDelayOnly(t *testing.T) {
	p := NewPipe(Params{Delay: 20 * time.Millisecond}, 1)
	if v := p.Push(at(0), frame(100)); v != Queued {
		t.Fatalf("push: %v", v)
	}
	p.Push(at(5), frame(100))
	if due, ok := p.Next(); !ok || !due.Equal(at(20)) {
		t.Fatalf("next = %v %v, want 20ms", due, ok)
	}
	if got := p.Pop(at(19.999), nil); len(got) != 0 {
		t.Fatalf("popped %d frames before they were due", len(got))
	}
	if got := p.Pop(at(20), nil); len(got) != 1 {
		t.Fatalf("popped %d frames at 20ms, want 1", len(got))
	}
	if due, _ := p.Next(); !due.Equal(at(25)) {
		t.Fatalf("second frame due %v, want 25ms", due.Sub(t0))
	}
	if got := p.Pop(at(100), nil); len(got) != 1 || p.Len() != 0 {
		t.Fatalf("popped %d, left %d", len(got), p.Len())
	}
	if s := p.Stats(); s.Delivered != 2 || s.DeliveredB != 200 {
		t.Fatalf("stats %+v", s)
	}
}

func TestPipeRatePacesFrames(t *testing.T) {
	// 1000 B/s and 100-byte frames: one frame every 100 ms.
	p := NewPipe(Params{Rate: 1000, QueueBytes: 1 << 20}, 1)
	for range 5 {
		p.Push(at(0), frame(100))
	}
	for i := 1; i <= 5; i++ {
		due, _ := p.Next()
		if want := at(float64(100 * i)); !due.Equal(want) {
			t.Fatalf("frame %d due %v, want %v", i, due.Sub(t0), want.Sub(t0))
		}
		p.Pop(due, nil)
	}
	// An idle transmitter starts at once: a frame pushed later is not
	// delayed by the earlier burst.
	p.Push(at(1000), frame(100))
	if due, _ := p.Next(); !due.Equal(at(1100)) {
		t.Fatalf("frame after idle due %v, want 1100ms", due.Sub(t0))
	}
}

func TestPipeRateOverLongRun(t *testing.T) {
	// Offer twice the rate for 10 s; what comes out must be the rate.
	const rate = 48 << 20
	p := NewPipe(Params{Rate: rate, Delay: 20 * time.Millisecond}, 1)
	var delivered int
	step := 10 * time.Microsecond
	for now := t0; now.Before(t0.Add(10 * time.Second)); now = now.Add(step) {
		// 2*rate bytes/s in 1500-byte frames: one every ~14.9 us.
		if now.Sub(t0)%(15*time.Microsecond) < step {
			p.Push(now, frame(1500))
		}
		for _, f := range p.Pop(now, nil) {
			delivered += len(f)
		}
	}
	got := float64(delivered) / 10
	if math.Abs(got-rate)/rate > 0.01 {
		t.Fatalf("delivered %.0f B/s, want %d ±1%%", got, rate)
	}
	if p.Stats().DroppedFull == 0 {
		t.Fatal("offered twice the rate but nothing was dropped: the queue is unbounded")
	}
}

func TestPipeQueueTailDrop(t *testing.T) {
	p := NewPipe(Params{Rate: 10000, QueueBytes: 1000}, 1)
	var queued, dropped int
	for range 20 {
		switch p.Push(at(0), frame(100)) {
		case Queued:
			queued++
		case DroppedFull:
			dropped++
		}
	}
	// Unsent bytes, the frame on the wire included, stay within 1000.
	if queued != 10 || dropped != 10 {
		t.Fatalf("queued %d dropped %d, want 10 and 10", queued, dropped)
	}
	if s := p.Stats(); s.DroppedFull != 10 {
		t.Fatalf("stats %+v", s)
	}
}

func TestPipeDefaultQueueHoldsARoundTrip(t *testing.T) {
	p := Params{Rate: 48 << 20, Delay: 20 * time.Millisecond}
	rate, window := float64(48<<20), 0.06
	if got, want := p.DefaultQueueBytes(), int64(rate*window); got != want {
		t.Fatalf("default queue %d, want %d", got, want)
	}
	if got := (Params{Rate: 1 << 20}).DefaultQueueBytes(); got != MinQueueBytes {
		t.Fatalf("small default queue %d, want %d", got, MinQueueBytes)
	}
}

func TestPipeLossRate(t *testing.T) {
	p := NewPipe(Params{Loss: 0.1}, 42)
	const n = 50000
	for range n {
		p.Push(at(0), frame(64))
	}
	lost := float64(p.Stats().DroppedLoss) / n
	if math.Abs(lost-0.1) > 0.005 {
		t.Fatalf("lost %.4f of frames, want 0.1 ± 0.005", lost)
	}
	if p.Len()+int(p.Stats().DroppedLoss) != n {
		t.Fatalf("queued %d + lost %d != %d", p.Len(), p.Stats().DroppedLoss, n)
	}
}

func TestPipeJitterBoundedAndInOrder(t *testing.T) {
	p := NewPipe(Params{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond}, 7)
	var prev time.Time
	minD, maxD := time.Hour, time.Duration(0)
	for i := range 10000 {
		now := at(float64(i) * 2) // sparse enough for jitter not to be hidden by ordering
		p.Push(now, frame(64))
		due, _ := p.Next()
		if due.Before(prev) {
			t.Fatalf("frame %d due %v before the previous frame %v", i, due, prev)
		}
		prev = due
		d := due.Sub(now)
		minD, maxD = min(minD, d), max(maxD, d)
		p.Pop(due, nil)
	}
	if minD < 15*time.Millisecond || maxD > 25*time.Millisecond {
		t.Fatalf("delays in [%v, %v], want within [15ms, 25ms]", minD, maxD)
	}
	if maxD-minD < 9*time.Millisecond {
		t.Fatalf("delays in [%v, %v]: jitter not applied", minD, maxD)
	}
}

func TestPipeDownDropsAllAndUpRestores(t *testing.T) {
	params := Params{Delay: 10 * time.Millisecond}
	p := NewPipe(params, 1)
	p.Push(at(0), frame(100))
	p.Push(at(1), frame(100))
	down := params
	down.Down = true
	p.Set(at(2), down)
	if p.Len() != 0 {
		t.Fatalf("%d frames still queued after going down", p.Len())
	}
	if v := p.Push(at(3), frame(100)); v != DroppedDown {
		t.Fatalf("push while down: %v", v)
	}
	if got := p.Pop(at(100), nil); len(got) != 0 {
		t.Fatalf("delivered %d frames while down", len(got))
	}
	if s := p.Stats(); s.DroppedDown != 3 {
		t.Fatalf("dropped-down %d, want 3", s.DroppedDown)
	}
	p.Set(at(200), params)
	p.Push(at(200), frame(100))
	if due, ok := p.Next(); !ok || !due.Equal(at(210)) {
		t.Fatalf("after up: next %v %v, want 210ms", due.Sub(t0), ok)
	}
}

func TestParamsValidate(t *testing.T) {
	bad := []Params{
		{Delay: -1},
		{Delay: 2 * time.Minute},
		{Delay: time.Millisecond, Jitter: 2 * time.Millisecond},
		{Loss: 1.5},
		{Loss: math.NaN()},
		{Rate: -5},
		{Rate: 10},
		{QueueBytes: -1},
	}
	for _, p := range bad {
		if err := p.Validate(); err == nil {
			t.Errorf("%+v: valid, want an error", p)
		}
	}
	if err := (Params{Delay: 20 * time.Millisecond, Jitter: 2 * time.Millisecond, Loss: 0.001, Rate: 48 << 20}).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseRateAndLoss(t *testing.T) {
	rates := map[string]int64{
		"48MiB": 48 << 20, "48MiB/s": 48 << 20, "48mib": 48 << 20, "100Mbit": 12500000,
		"1GiB": 1 << 30, "0": 0, "1500": 1500, "64KiB": 64 << 10, "8kbit": 1000, "10MB": 10e6,
	}
	for in, want := range rates {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "48XB", "-1MiB"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q): no error", in)
		}
	}
	losses := map[string]float64{"0.1%": 0.001, "1%": 0.01, "0.5": 0.5, "0": 0, "100%": 1}
	for in, want := range losses {
		got, err := ParseLoss(in)
		if err != nil || math.Abs(got-want) > 1e-12 {
			t.Errorf("ParseLoss(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "2", "150%", "-1%", "x"} {
		if _, err := ParseLoss(in); err == nil {
			t.Errorf("ParseLoss(%q): no error", in)
		}
	}
	if got := FormatRate(48 << 20); got != "48MiB/s" {
		t.Errorf("FormatRate = %q", got)
	}
}
