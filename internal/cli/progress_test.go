package cli

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func ts(ms int64) *timestamppb.Timestamp {
	return timestamppb.New(t0.Add(time.Duration(ms) * time.Millisecond))
}

// completedMig is the example of the report in the CLI's documentation.
func completedMig() *ferryv1.Migration {
	return &ferryv1.Migration{
		Id: "mig-1a2b3c4d", Vm: "web", From: "h1", To: "h2", Strategy: "precopy",
		Status: "completed", State: "completed",
		StartedAt: ts(0), FinishedAt: ts(2410), TotalMs: 2410, SetupMs: 12,
		DowntimeMs: 31,
		DowntimePhases: &ferryv1.DowntimePhases{
			FinalRoundMs: 20, SwitchoverMs: 9, DeviceStateMs: 6, ResumeMs: 3, TotalMs: 38,
		},
		TransferredBytes: 301_2 * mib / 10, TotalBytes: 512 * mib, Rounds: 5,
		BandwidthMibps: 189.4, DirtyRateMibps: 16,
	}
}

func TestFmtMs(t *testing.T) {
	for _, c := range []struct {
		ms   int64
		want string
	}{
		{-5, "0 ms"},
		{0, "0 ms"},
		{38, "38 ms"},
		{999, "999 ms"},
		{1000, "1.00 s"},
		{2410, "2.41 s"},
		{12_345, "12.3 s"},
		{59_999, "60.0 s"},
		{60_000, "1m00s"},
		{125_400, "2m05s"},
		{3_723_000, "1h02m03s"},
	} {
		if got := fmtMs(c.ms); got != c.want {
			t.Errorf("fmtMs(%d) = %q, want %q", c.ms, got, c.want)
		}
	}
}

func TestFmtMiB(t *testing.T) {
	for _, c := range []struct {
		b    int64
		want string
	}{
		{0, "0.0"},
		{mib / 2, "0.5"},
		{512 * mib, "512.0"},
		{3012 * mib / 10, "301.2"},
		{16 * 1024 * mib, "16384.0"},
	} {
		if got := fmtMiB(c.b); got != c.want {
			t.Errorf("fmtMiB(%d) = %q, want %q", c.b, got, c.want)
		}
	}
}

func TestRenderProgress(t *testing.T) {
	transferring := &ferryv1.Migration{
		Id: "mig-1", Status: "running", State: "transferring",
		StartedAt: ts(0), UpdatedAt: ts(3100),
		TransferredBytes: 120 * mib, RemainingBytes: 360 * mib, TotalBytes: 512 * mib,
		Rounds: 2, DirtyRateMibps: 16, BandwidthMibps: 150,
		Samples: []*ferryv1.MigrationSample{
			{TMs: 2000, TransferredBytes: 80 * mib},
			{TMs: 2500, TransferredBytes: 120 * mib}, // 40 MiB in 0.5 s
		},
	}
	noSamples := &ferryv1.Migration{
		Status: "running", State: "transferring", TotalMs: 0,
		StartedAt: ts(0), UpdatedAt: ts(65_000),
		TransferredBytes: 512 * mib, RemainingBytes: 0, TotalBytes: 512 * mib,
		Rounds: 7, BandwidthMibps: 189.4,
	}
	for _, c := range []struct {
		name  string
		m     *ferryv1.Migration
		width int
		want  string
	}{
		{
			name:  "zero totals: no bar, no byte counts",
			m:     &ferryv1.Migration{Status: "running", State: "preparing", StartedAt: ts(0), UpdatedAt: ts(450)},
			width: 100,
			want:  "preparing     450 ms",
		},
		{
			name:  "nothing known at all",
			m:     &ferryv1.Migration{},
			width: 0,
			want:  "-             0 ms",
		},
		{
			name:  "wide terminal: every field, the widest bar",
			m:     transferring,
			width: 130,
			want:  "transferring  [#######.......................]  120.0/512.0 MiB  360.0 MiB left  80.0 MiB/s  dirty 16.0 MiB/s  round 2  3.10 s",
		},
		{
			name:  "rate from the last two samples, bar fits the width",
			m:     transferring,
			width: 110,
			want:  "transferring  [###..........]  120.0/512.0 MiB  360.0 MiB left  80.0 MiB/s  dirty 16.0 MiB/s  round 2  3.10 s",
		},
		{
			name:  "100 columns: dirty rate dropped first",
			m:     transferring,
			width: 100,
			want:  "transferring  [##........]  120.0/512.0 MiB  360.0 MiB left  80.0 MiB/s  round 2  3.10 s",
		},
		{
			name:  "80 columns: then the round",
			m:     transferring,
			width: 80,
			want:  "transferring  [##........]  120.0/512.0 MiB  360.0 MiB left  80.0 MiB/s  3.10 s",
		},
		{
			name:  "60 columns: then remaining and rate",
			m:     transferring,
			width: 60,
			want:  "transferring  [##........]  120.0/512.0 MiB  3.10 s",
		},
		{
			name:  "40 columns: then the bar",
			m:     transferring,
			width: 40,
			want:  "transferring  120.0/512.0 MiB  3.10 s",
		},
		{
			name:  "30 columns: cut, never wraps",
			m:     transferring,
			width: 30,
			want:  "transferring  120.0/512.0 MiB",
		},
		{
			name:  "no samples: bandwidth_mibps, full bar",
			m:     noSamples,
			width: 110,
			want:  "transferring  [#############]  512.0/512.0 MiB  0.0 MiB left  189.4 MiB/s  round 7  1m05s",
		},
		{
			name: "cancel requested",
			m: &ferryv1.Migration{Status: "running", State: "rolling-back", CancelRequested: true,
				StartedAt: ts(0), UpdatedAt: ts(1500)},
			width: 80,
			want:  "rolling-back  cancelling  1.50 s",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := renderProgress(c.m, c.width)
			if got != c.want {
				t.Errorf("renderProgress:\n got %q\nwant %q", got, c.want)
			}
			w := c.width
			if w <= 0 {
				w = 80
			}
			if n := len([]rune(got)); n > w-1 {
				t.Errorf("line is %d runes, wider than %d-1", n, w)
			}
		})
	}
}

func TestProgressLineElapsed(t *testing.T) {
	m := &ferryv1.Migration{Status: "running", State: "switchover"}
	if got, want := progressLine(m, 80, 4200*time.Millisecond), "switchover    4.20 s"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestRenderReport(t *testing.T) {
	failed := &ferryv1.Migration{
		Id: "mig-00ff00ff", Vm: "db", From: "h1", To: "h3", Strategy: "precopy", Transport: "plain",
		Status: "failed", State: "failed", Error: "no progress for 15s (stall timeout); rolled back",
		StartedAt: ts(0), FinishedAt: ts(17_250), SetupMs: 40,
		TransferredBytes: 900 * mib, TotalBytes: 2048 * mib, RemainingBytes: 10 * mib, Rounds: 31,
		BandwidthMibps: 58.25, DirtyRateMibps: 240.5,
	}
	cold := &ferryv1.Migration{
		Id: "mig-c01d", Vm: "batch", From: "h2", To: "h1", Strategy: "cold",
		Status: "completed", State: "completed",
		StartedAt: ts(0), FinishedAt: ts(8_130), TotalMs: 8_130, DowntimeMs: 7_900,
	}
	running := &ferryv1.Migration{
		Id: "mig-77", Vm: "web", From: "h1", To: "h2", Strategy: "precopy",
		Status: "running", State: "transferring", CancelRequested: true,
		StartedAt: ts(0), UpdatedAt: ts(3_100), SetupMs: 9, ExpectedDowntimeMs: 120,
		TransferredBytes: 120 * mib, RemainingBytes: 360 * mib, TotalBytes: 512 * mib,
		Rounds: 1, BandwidthMibps: 100,
	}
	cancelled := &ferryv1.Migration{
		Id: "mig-88", Vm: "web", From: "h1", To: "h2", Strategy: "precopy",
		Status: "cancelled", State: "cancelled", Error: "cancelled by the user",
	}
	for _, c := range []struct {
		name string
		m    *ferryv1.Migration
		want string
	}{
		{"completed", completedMig(), "" +
			"migration mig-1a2b3c4d: web  h1 → h2  precopy  completed\n" +
			"  total        2.41 s   (setup 12 ms)\n" +
			"  downtime     38 ms    (QEMU 31 ms; final round 20 ms, switchover 9 ms, device state 6 ms, resume 3 ms)\n" +
			"  transferred  301.2 MiB in 5 rounds at 189.4 MiB/s, dirty rate 16.0 MiB/s\n"},
		{"failed with error", failed, "" +
			"migration mig-00ff00ff: db  h1 → h3  precopy  failed\n" +
			"  total        17.2 s   (setup 40 ms)\n" +
			"  transport    plaintext (insecureTransport)\n" +
			"  transferred  900.0 MiB in 31 rounds at 58.2 MiB/s, dirty rate 240.5 MiB/s\n" +
			"  error        no progress for 15s (stall timeout); rolled back\n"},
		{"cold without samples", cold, "" +
			"migration mig-c01d: batch  h2 → h1  cold  completed\n" +
			"  total        8.13 s\n" +
			"  downtime     7.90 s\n"},
		{"running", running, "" +
			"migration mig-77: web  h1 → h2  precopy  running (transferring), cancel requested\n" +
			"  elapsed      3.10 s   (setup 9 ms)\n" +
			"  downtime     ~120 ms expected (QEMU estimate)\n" +
			"  transferred  120.0 MiB in 1 round at 100.0 MiB/s; 360.0 MiB left of 512.0 MiB\n"},
		{"cancelled, nothing measured", cancelled, "" +
			"migration mig-88: web  h1 → h2  precopy  cancelled\n" +
			"  total        -\n" +
			"  error        cancelled by the user\n"},
		{"empty", &ferryv1.Migration{}, "" +
			"migration -: -  - → -  -  -\n" +
			"  total        -\n"},
		{"with the stop phase", &ferryv1.Migration{
			Id: "m", Vm: "v", From: "a", To: "b", Strategy: "precopy", Status: "completed", State: "completed", TotalMs: 1_200,
			DowntimeMs:     30,
			DowntimePhases: &ferryv1.DowntimePhases{StopMs: 2, FinalRoundMs: 18, SwitchoverMs: 9, DeviceStateMs: 6, ResumeMs: 3, TotalMs: 38},
		}, "" +
			"migration m: v  a → b  precopy  completed\n" +
			"  total        1.20 s\n" +
			"  downtime     38 ms    (QEMU 30 ms; stop 2 ms, final round 18 ms, switchover 9 ms, device state 6 ms, resume 3 ms)\n"},
		{"guest alive", &ferryv1.Migration{
			Id: "m", Vm: "v", From: "a", To: "b", Strategy: "precopy", Status: "completed", State: "completed", TotalMs: 900,
			GuestAliveAfterMs: 82, GuestAliveMethod: "guest-ping",
		}, "" +
			"migration m: v  a → b  precopy  completed\n" +
			"  total        900 ms\n" +
			"  guest alive  82 ms after the resume (guest-ping)\n"},
		{"guest unresponsive", &ferryv1.Migration{
			Id: "m", Vm: "v", From: "a", To: "b", Strategy: "precopy", Status: "completed", State: "completed", TotalMs: 3_500,
			GuestAliveAfterMs: -1, GuestAliveMethod: "guest-ping", Warnings: []string{"guest unresponsive: no sign of life on b after the switchover (no answer)"},
		}, "" +
			"migration m: v  a → b  precopy  completed, 1 warning(s)\n" +
			"  total        3.50 s\n" +
			"  guest alive  no sign of life (guest-ping)\n" +
			"  warning      guest unresponsive: no sign of life on b after the switchover (no answer)\n"},
		{"phases without total, no QEMU figure", &ferryv1.Migration{
			Id: "m", Vm: "v", From: "a", To: "b", Strategy: "precopy", Status: "completed", State: "completed", TotalMs: 900,
			DowntimePhases: &ferryv1.DowntimePhases{FinalRoundMs: 10, SwitchoverMs: 5, DeviceStateMs: 4, ResumeMs: 1},
		}, "" +
			"migration m: v  a → b  precopy  completed\n" +
			"  total        900 ms\n" +
			"  downtime     20 ms    (final round 10 ms, switchover 5 ms, device state 4 ms, resume 1 ms)\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := renderReport(c.m); got != c.want {
				t.Errorf("renderReport:\n got:\n%s\nwant:\n%s", got, c.want)
			}
		})
	}
}

func TestRenderDetails(t *testing.T) {
	m := completedMig()
	m.Events = []*ferryv1.MigrationEvent{
		{At: ts(0), State: "pending", Message: "recorded"},
		{At: ts(12), State: "preparing", Message: "destination QEMU listening on tcp:10.0.0.2:49152"},
		{At: ts(2_300), State: "switchover", Message: "owner h1 → h2"},
		{At: ts(2_410), State: "completed"},
	}
	m.Samples = []*ferryv1.MigrationSample{
		{TMs: 200, Round: 1, RemainingBytes: 400 * mib, TransferredBytes: 112 * mib, RateMibps: 560, DirtyRateMibps: 12.5},
		{TMs: 1_400, Round: 3, RemainingBytes: 8 * mib, TransferredBytes: 290 * mib, RateMibps: 180.25, DirtyRateMibps: 16},
	}
	want := renderReport(m) + `
events
  +0 ms    pending     recorded
  +12 ms   preparing   destination QEMU listening on tcp:10.0.0.2:49152
  +2.30 s  switchover  owner h1 → h2
  +2.41 s  completed

samples
  T       ROUND  REMAINING  TRANSFERRED  RATE         DIRTY
  200 ms  1      400.0 MiB  112.0 MiB    560.0 MiB/s  12.5 MiB/s
  1.40 s  3      8.0 MiB    290.0 MiB    180.2 MiB/s  16.0 MiB/s
`
	if got := renderDetails(m); got != want {
		t.Errorf("renderDetails:\n got:\n%s\nwant:\n%s", got, want)
	}

	// Many samples: at most maxSampleRows rows, first and last kept.
	m.Events = nil
	m.Samples = nil
	for i := range 100 {
		m.Samples = append(m.Samples, &ferryv1.MigrationSample{TMs: int64(i) * 100, Round: int64(i/10 + 1)})
	}
	got := renderDetails(m)
	if !strings.Contains(got, "\nsamples (30 of 100)\n") {
		t.Errorf("no sample count header in:\n%s", got)
	}
	rows := strings.Count(got[strings.Index(got, "samples ("):], "\n") - 2 // title and header
	if rows != maxSampleRows {
		t.Errorf("%d sample rows, want %d", rows, maxSampleRows)
	}
	if !strings.Contains(got, "  0 ms ") || !strings.Contains(got, "  9.90 s ") {
		t.Errorf("first or last sample missing:\n%s", got)
	}
}

func TestEvenPick(t *testing.T) {
	for _, c := range []struct {
		n, k int
		want []int
	}{
		{0, 30, nil},
		{3, 0, nil},
		{3, 30, []int{0, 1, 2}},
		{10, 1, []int{9}},
		{10, 2, []int{0, 9}},
		{10, 4, []int{0, 3, 6, 9}},
		{7, 5, []int{0, 1, 3, 4, 6}},
	} {
		if got := evenPick(c.n, c.k); !reflect.DeepEqual(got, c.want) {
			t.Errorf("evenPick(%d, %d) = %v, want %v", c.n, c.k, got, c.want)
		}
	}
}

func TestMigrationTable(t *testing.T) {
	now := t0.Add(5 * time.Minute)
	running := &ferryv1.Migration{Id: "mig-2", Vm: "db", From: "h2", To: "h3", Strategy: "cold",
		Status: "running", State: "copying", StartedAt: ts(4*60_000 + 50_000), UpdatedAt: ts(4*60_000 + 59_000)}
	var b bytes.Buffer
	if err := migrationTable(&b, []*ferryv1.Migration{completedMig(), running, {Id: "mig-3"}}, now); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"ID            VM   FROM  TO  STRATEGY  STATUS     STATE      TOTAL   DOWNTIME  STARTED\n" +
		"mig-1a2b3c4d  web  h1    h2  precopy   completed  completed  2.41 s  38 ms     5m0s ago\n" +
		"mig-2         db   h2    h3  cold      running    copying    9.00 s  -         10s ago\n" +
		"mig-3         -    -     -   -         -          -          -       -         -\n"
	if got := b.String(); got != want {
		t.Errorf("table:\n got:\n%s\nwant:\n%s", got, want)
		fmt.Println(got)
	}
}

// TestRenderReportNonConvergingPrediction: a prediction that the strategy
// does not converge reads as such, with its reason, never as predicted
// times of 0.
func TestRenderReportNonConvergingPrediction(t *testing.T) {
	m := completedMig()
	m.Predicted = &ferryv1.StrategyPrediction{Strategy: "precopy", Reason: "dirty rate 9 MiB/s ≥ bandwidth 8 MiB/s: pre-copy never converges"}
	got := renderReport(m)
	if !strings.Contains(got, "does not converge: dirty rate 9 MiB/s ≥ bandwidth 8 MiB/s") || strings.Contains(got, "total 0 ms") {
		t.Errorf("report:\n%s\nwant the prediction read as not converging, with its reason", got)
	}
}

// A retry that re-planned the migration says as what the next attempt ran.
func TestReportNamesTheRetriedStrategy(t *testing.T) {
	m := &ferryv1.Migration{Id: "mig-1", Strategy: "hybrid", Status: "completed", State: "completed", Attempt: 2,
		Retries: []*ferryv1.MigrationRetry{{Attempt: 1, Reason: "precopy did not converge in 4.1s after its downtime target reached its cap 270ms: retried as hybrid",
			BackoffMs: 500, Strategy: "hybrid"}}}
	out := renderReport(m)
	if !strings.Contains(out, "attempt 1: precopy did not converge in 4.1s") || !strings.Contains(out, "(next as hybrid after 500 ms)") ||
		!strings.Contains(out, "  hybrid  completed") {
		t.Fatalf("report:\n%s\nwant the retry as hybrid and the strategy that ran", out)
	}
}
