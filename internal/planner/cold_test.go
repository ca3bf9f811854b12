package planner

import (
	"strings"
	"testing"
	"time"
)

func TestPredictCold(t *testing.T) {
	for _, c := range []struct {
		name          string
		in            ColdInputs
		total, down   time.Duration
		bytes         int64
		reasonHas     string
		wantErrSubstr string
	}{
		{"running, no disks", ColdInputs{Running: true}, 150 * time.Millisecond, 80 * time.Millisecond, 0, "no RAM", ""},
		{"running, 1 GiB at 100 MiB/s", ColdInputs{BandwidthBytesPerSec: 100 << 20, DiskBytes: 1 << 30, Running: true}, 10860 * time.Millisecond, 10390 * time.Millisecond, 1 << 30, "1 GiB of local disks", ""},
		{"stopped, 100 MiB at 100 MiB/s", ColdInputs{BandwidthBytesPerSec: 100 << 20, DiskBytes: 100 << 20}, 1620 * time.Millisecond, 0, 100 << 20, "stays stopped", ""},
		{"disks without a rate", ColdInputs{DiskBytes: 1}, 0, 0, 0, "", "BandwidthBytesPerSec"},
		{"negative disks", ColdInputs{DiskBytes: -1}, 0, 0, 0, "", "DiskBytes"},
	} {
		p, err := PredictCold(c.in)
		if c.wantErrSubstr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErrSubstr) {
				t.Errorf("%s: err %v, want one naming %s", c.name, err, c.wantErrSubstr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if p.Strategy != StrategyCold || !p.Converges || p.Total != c.total || p.Downtime != c.down || p.Bytes != c.bytes || !strings.Contains(p.Reason, c.reasonHas) {
			t.Errorf("%s: %+v; want total %s downtime %s bytes %d, reason with %q", c.name, p, c.total, c.down, c.bytes, c.reasonHas)
		}
	}
}
