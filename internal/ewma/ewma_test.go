package ewma

import (
	"math"
	"testing"
)

func TestStep(t *testing.T) {
	for _, c := range []struct{ avg, v, alpha, want float64 }{
		{100, 200, 0.3, 130},
		{100, 200, 1, 200},
		{100, 100, 0.3, 100},
		{200, 100, 0.5, 150},
	} {
		if got := Step(c.avg, c.v, c.alpha); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("Step(%v, %v, %v) = %v, want %v", c.avg, c.v, c.alpha, got, c.want)
		}
	}
}

func TestAverageFirstTakenAsIs(t *testing.T) {
	a := Average{Alpha: 0.3}
	a.Add(50)
	if a.Value != 50 || a.N != 1 {
		t.Fatalf("after one observation: %+v, want Value 50 N 1", a)
	}
	a.Add(150)
	if math.Abs(a.Value-80) > 1e-9 || a.N != 2 {
		t.Fatalf("after two observations: %+v, want Value 80 (0.3·150 + 0.7·50) N 2", a)
	}
}

func TestAverageConverges(t *testing.T) {
	a := Average{Alpha: 0.3}
	a.Add(0)
	for range 60 {
		a.Add(1000)
	}
	if math.Abs(a.Value-1000) > 1e-6 {
		t.Fatalf("after 60 observations of 1000: %v, want ≈1000", a.Value)
	}
}
