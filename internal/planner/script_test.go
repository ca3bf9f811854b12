package planner

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/scripttest"
)

// TestScenarios runs testdata/scenarios.txt, a sequence of blocks in the
// style of etcd-raft's interaction tests (cockroachdb/datadriven):
//
//	# comments
//	plan TITLE                      or: controller TITLE
//	key=value key=value ...         inputs, any number of lines
//	sample t=3s round=2 ...         controller blocks: one line per sample
//	----
//	expected output, up to a blank line
//
// A plan block prints every prediction (converges or not, its figures and
// reason) and then "choose: STRATEGY" or "choose: error" with the reasons.
// A controller block prints the action of every sample. Rewrite the
// expected output with -rewrite (then review the diff).
func TestScenarios(t *testing.T) {
	plans, controllers := 0, 0
	scripttest.Run(t, "testdata/scenarios.txt", func(t *testing.T, b scripttest.Block) []string {
		switch d := b.Directive(); d {
		case "plan":
			plans++
			return runPlan(t, b)
		case "controller":
			controllers++
			return runController(t, b)
		default:
			b.Fatalf(t, "unknown directive %q", d)
			return nil
		}
	})
	if plans < 8 || controllers < 2 {
		t.Fatalf("read %d plan and %d controller scenarios, want at least 8 and 2", plans, controllers)
	}
}

// runPlan predicts and chooses for a plan block.
func runPlan(t *testing.T, b scripttest.Block) []string {
	in, _, _ := parseInputs(t, b)
	var got []string
	preds := Predict(in)
	for _, p := range preds {
		got = append(got, fmtPrediction(p), "  "+p.Reason)
	}
	d, err := Choose(in, preds)
	if err != nil {
		var npe *NoPlanError
		if !errors.As(err, &npe) || !errors.Is(err, ErrNoPlan) {
			b.Fatalf(t, "Choose error %v is not a *NoPlanError matching ErrNoPlan", err)
		}
		got = append(got, "choose: error")
		for _, r := range npe.Reasons {
			got = append(got, "  "+r)
		}
		return got
	}
	return append(got, "choose: "+d.Strategy, "  "+d.Reason)
}

func fmtPrediction(p Prediction) string {
	if !p.Converges {
		s := fmt.Sprintf("%s: does not converge rounds=%d", p.Strategy, p.Rounds)
		if p.Throttle > 0 {
			s += fmt.Sprintf(" throttle=%d%%", p.Throttle)
		}
		return s
	}
	s := fmt.Sprintf("%s: converges rounds=%d downtime=%sms total=%ss bytes=%sMiB", p.Strategy, p.Rounds,
		strconv.FormatFloat(float64(p.Downtime)/1e6, 'f', -1, 64), strconv.FormatFloat(p.Total.Seconds(), 'f', -1, 64),
		trim(float64(p.Bytes)/mib, 2))
	if p.Throttle > 0 {
		s += fmt.Sprintf(" throttle=%d%%", p.Throttle)
	}
	if p.Postcopy {
		s += " postcopy"
	}
	if p.DowntimeLimit > 0 {
		s += " limit=" + p.DowntimeLimit.String()
	}
	return s
}

// runController feeds a controller block's samples to a Controller.
func runController(t *testing.T, b scripttest.Block) []string {
	in, samples, opt := parseInputs(t, b)
	c := NewSteppedController(in, opt)
	var got []string
	for _, s := range samples {
		a := c.Observe(s)
		line := fmt.Sprintf("t=%s round=%d: %s", s.Elapsed, s.Round, a.Kind)
		if a.Kind == Throttle {
			line += fmt.Sprintf(" %d%%", a.Throttle)
		}
		if a.Kind == RaiseBandwidth {
			line += " " + fmtRate(a.BandwidthBytesPerSec)
		}
		if a.Kind == RaiseDowntime {
			line += " " + a.DowntimeLimit.String()
		}
		if a.RetryAs != "" {
			line += " retry-as=" + a.RetryAs
		}
		if opt.StepDowntime || opt.DowntimeOnly {
			line += " (limit " + c.DowntimeLimit().String() + ")"
		}
		got = append(got, line, "  "+a.Reason)
	}
	return got
}

// parseInputs reads key=value pairs and sample lines; step=downtime or
// step=downtime-only and chosen=auto set the controller's options.
func parseInputs(t *testing.T, b scripttest.Block) (Inputs, []Sample, ControllerOptions) {
	t.Helper()
	var in Inputs
	var opt ControllerOptions
	var samples []Sample
	fail := func(format string, a ...any) {
		t.Helper()
		b.Fatalf(t, format, a...)
	}
	for _, l := range b.Header[1:] {
		fields := strings.Fields(l)
		if len(fields) > 0 && fields[0] == "sample" {
			var s Sample
			for _, f := range fields[1:] {
				k, v, _ := strings.Cut(f, "=")
				var err error
				switch k {
				case "t":
					s.Elapsed, err = time.ParseDuration(v)
				case "round":
					s.Round, err = strconv.Atoi(v)
				case "remaining":
					s.RemainingBytes, err = parseSize(v)
				case "transferred":
					s.TransferredBytes, err = parseSize(v)
				case "dirty":
					s.DirtyRateBytesPerSec, err = parseRate(v)
				case "rate":
					s.RateBytesPerSec, err = parseRate(v)
				case "throttle":
					s.Throttle, err = strconv.Atoi(strings.TrimSuffix(v, "%"))
				case "postcopy":
					s.Postcopy, err = strconv.ParseBool(v)
				default:
					err = fmt.Errorf("unknown sample key %q", k)
				}
				if err != nil {
					fail("%s: %v", f, err)
				}
			}
			samples = append(samples, s)
			continue
		}
		for _, f := range fields {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				fail("want key=value, got %q", f)
			}
			var err error
			var n int64
			var d time.Duration
			switch k {
			case "step":
				switch v {
				case "downtime":
					opt.StepDowntime = true
				case "downtime-only":
					opt.DowntimeOnly = true
				default:
					err = fmt.Errorf("want step=downtime or step=downtime-only")
				}
			case "chosen":
				if v != "auto" {
					err = fmt.Errorf("want chosen=auto")
				}
				opt.AutoChosen = true
			case "memory":
				in.MemoryBytes, err = parseSize(v)
			case "nonzero":
				in.NonZeroBytes, err = parseSize(v)
			case "wss":
				in.WSSBytes, err = parseSize(v)
			case "device":
				in.DeviceStateBytes, err = parseSize(v)
			case "dirty":
				in.DirtyRateBytesPerSec, err = parseRate(v)
			case "bandwidth":
				in.BandwidthBytesPerSec, err = parseRate(v)
			case "stream":
				in.StreamBytesPerSec, err = parseRate(v)
			case "channels":
				in.MultifdChannels, err = strconv.Atoi(v)
			case "zstd":
				in.Zstd, err = strconv.ParseBool(v)
			case "compress":
				in.CompressBytesPerSec, err = parseRate(v)
			case "ratio":
				in.CompressRatio, err = strconv.ParseFloat(v, 64)
			case "setup", "switchover", "boot":
				d, err = time.ParseDuration(v)
				*map[string]*float64{"setup": &in.SetupSeconds, "switchover": &in.SwitchoverSeconds, "boot": &in.ColdBootSeconds}[k] = d.Seconds()
			case "stall":
				in.LinkStall, err = time.ParseDuration(v)
			case "rtt":
				in.RTT, err = time.ParseDuration(v)
			case "max-downtime":
				in.MaxDowntime, err = time.ParseDuration(v)
			case "max-total":
				in.Policy.MaxTotal, err = time.ParseDuration(v)
			case "max-throttle", "throttle-initial", "throttle-increment":
				n, err = strconv.ParseInt(strings.TrimSuffix(v, "%"), 10, 32)
				*map[string]*int{"max-throttle": &in.Policy.MaxThrottle, "throttle-initial": &in.Policy.ThrottleInitial,
					"throttle-increment": &in.Policy.ThrottleIncrement}[k] = int(n)
			case "allow":
				for _, s := range strings.Split(v, ",") {
					switch s {
					case "precopy":
						in.Policy.AllowPrecopy = true
					case "converge":
						in.Policy.AllowConverge = true
					case "postcopy":
						in.Policy.AllowPostcopy = true
					case "cold":
						in.Policy.AllowCold = true
					case "none":
					default:
						err = fmt.Errorf("unknown strategy %q", s)
					}
				}
			default:
				err = fmt.Errorf("unknown key")
			}
			if err != nil {
				fail("%s: %v", f, err)
			}
		}
	}
	// A plan block with step= predicts what the stepped controller does.
	in.StepDowntime = opt.StepDowntime || opt.DowntimeOnly
	return in, samples, opt
}

// parseSize parses "4GiB", "512MiB", "64KiB" or plain bytes.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", gib}, {"MiB", mib}, {"KiB", kib}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	return int64(v * float64(mult)), err
}

// parseRate parses "100MiB/s".
func parseRate(s string) (float64, error) {
	if !strings.HasSuffix(s, "/s") {
		return 0, fmt.Errorf("want a rate like 100MiB/s, got %q", s)
	}
	v, err := parseSize(strings.TrimSuffix(s, "/s"))
	return float64(v), err
}
