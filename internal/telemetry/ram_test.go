package telemetry

import (
	"math"
	"testing"
)

func TestNonZeroNow(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name                      string
		count, rssAt, rssNow, mem int64
		wantBytes, wantGrown      int64
	}{
		{"no growth", 116 * mib, 300 * mib, 300 * mib, 1024 * mib, 116 * mib, 0},
		{"small growth is QEMU's own", 116 * mib, 300 * mib, 331 * mib, 1024 * mib, 116 * mib, 0},
		{"guest filled 1 GiB after the count", 156 * mib, 400 * mib, 1424 * mib, 4096 * mib, 1180 * mib, 1024 * mib},
		{"RSS shrank", 500 * mib, 900 * mib, 600 * mib, 1024 * mib, 500 * mib, 0},
		{"unknown RSS at the count", 116 * mib, 0, 900 * mib, 1024 * mib, 116 * mib, 0},
		{"capped by the guest's RAM", 900 * mib, 300 * mib, 700 * mib, 1024 * mib, 1024 * mib, 124 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, g := NonZeroNow(tc.count, tc.rssAt, tc.rssNow, tc.mem)
			if b != tc.wantBytes || g != tc.wantGrown {
				t.Errorf("NonZeroNow(%d, %d, %d, %d) = %d MiB (+%d MiB), want %d MiB (+%d MiB)", tc.count/mib, tc.rssAt/mib, tc.rssNow/mib, tc.mem/mib,
					b/mib, g/mib, tc.wantBytes/mib, tc.wantGrown/mib)
			}
		})
	}
}

func TestCompressRatioNow(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name         string
		ratio        float64
		count, grown int64
		want         float64
	}{
		{"no growth keeps the sample", 0.45, 106 * mib, 0, 0.45},
		{"nothing sampled stays unknown", 0, 106 * mib, 272 * mib, 0},
		{"half bench: 272 MiB grown over a 0.45 sample of 106 MiB", 0.45, 106 * mib, 272 * mib, (0.45*106 + 272) / 378},
		{"big bench: 1 GiB grown over 156 MiB", 0.32, 156 * mib, 1044 * mib, (0.32*156 + 1044) / 1200},
		{"nothing counted: the grown RAM is all there is", 0.5, 0, 64 * mib, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := CompressRatioNow(tc.ratio, tc.count, tc.grown); math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("CompressRatioNow(%.2f, %d MiB, %d MiB) = %.4f, want %.4f", tc.ratio, tc.count/mib, tc.grown/mib, got, tc.want)
			}
		})
	}
}
