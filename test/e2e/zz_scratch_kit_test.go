package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/qmp"
)

// Temporary: why is the migration back slow?
func TestZZScratchBack(t *testing.T) {
	c := upCluster(t, 2)
	c.bootGuest("kit", "198.19.0.40", "64:16")
	m1, w1 := c.mustMigrateWait("kit", "h2")
	logReport(t, "m1", m1, w1)
	for _, s := range m1.Samples {
		t.Logf("m1 sample %v", s)
	}
	time.Sleep(2 * time.Second)
	ctx := context.Background()
	mon, err := qmp.Connect(ctx, c.observeSock("h2", "kit"))
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	start := time.Now()
	m := c.startMigration("kit", "h1")
	for time.Since(start) < 30*time.Second {
		info, err := mon.QueryMigrate(ctx)
		p, _ := mon.QueryMigrateParameters(ctx)
		var thr int64
		if info.CPUThrottlePercentage != nil {
			thr = *info.CPUThrottlePercentage
		}
		if info.RAM != nil {
			t.Logf("+%.1fs %s err %v ram %+v throttle %d maxbw %v", time.Since(start).Seconds(), info.Status, err, *info.RAM, thr, deref(p.MaxBandwidth))
		} else {
			t.Logf("+%.1fs %s err %v", time.Since(start).Seconds(), info.Status, err)
		}
		if info.Status == "completed" || info.Status == "failed" {
			break
		}
		time.Sleep(700 * time.Millisecond)
	}
	fm, _ := c.waitFinal(m.Id, 60*time.Second)
	logReport(t, "m2", fm, 0)
}

func deref(p *int64) int64 {
	if p == nil {
		return -1
	}
	return *p
}
