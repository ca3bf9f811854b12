package agent

import (
	"os"
	"testing"
)

func TestParseCPUSeconds(t *testing.T) {
	line := "4242 (qemu-system-x86 (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 5 0 100 0 0"
	if got := parseCPUSeconds(line); got != 4 {
		t.Fatalf("got %v, want 4 (250+150 ticks)", got)
	}
	if got := parseCPUSeconds("garbage"); got != 0 {
		t.Fatalf("garbage: %v", got)
	}
	if got := cpuSeconds(os.Getpid()); got < 0 {
		t.Fatalf("own process: %v", got)
	}
}
