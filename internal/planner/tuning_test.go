package planner

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/scripttest"
)

// TestTuningScenarios runs testdata/tuning.txt: blocks of
//
//	tune TITLE
//	key=value ...   strategy, bandwidth, rtt, src, dst (comma-separated
//	                features or "none"), multifd, maxchannels, stream, window,
//	                compress, ratio, nonzero, dirty
//	----
//	one line per choice: NAME=VALUE, then its reason indented
//
// Rewrite with -rewrite, as for TestScenarios.
func TestTuningScenarios(t *testing.T) {
	blocks := 0
	scripttest.Run(t, "testdata/tuning.txt", func(t *testing.T, b scripttest.Block) []string {
		if d := b.Directive(); d != "tune" {
			b.Fatalf(t, "want a tune block, got %q", b.Header[0])
		}
		blocks++
		in, err := parseTune(b.Header[1:])
		if err != nil {
			b.Fatalf(t, "%v", err)
		}
		return fmtTuning(Tune(in))
	})
	if blocks < 8 {
		t.Fatalf("read %d tune blocks, want at least 8", blocks)
	}
}

func fmtTuning(tu Tuning) []string {
	var out []string
	for _, c := range tu.Choices {
		out = append(out, c.Name+"="+c.Value, "  "+c.Reason)
	}
	out = append(out, fmt.Sprintf("apply: preempt=%v multifd=%d zero-page=%q compression=%q level=%d avail-switchover=%d postcopy-share=%g postcopy-at=%.3f/%d warmup=%s/%g",
		tu.PostcopyPreempt, tu.MultifdChannels, tu.ZeroPageDetection, tu.Compression, tu.ZstdLevel, tu.AvailSwitchoverBandwidth, tu.PostcopyBackgroundShare, tu.PostcopyAtFraction, tu.PostcopyAtBytes,
		tu.PostcopyWarmup, tu.PostcopyWarmupShare))
	return out
}

func parseFeatures(s string) (Features, error) {
	var f Features
	if s == "none" {
		return f, nil
	}
	for _, name := range strings.Split(s, ",") {
		switch name {
		case "qemu10.0":
			f.PostcopyPreempt, f.ZeroPageDetection, f.AvailSwitchoverBandwidth, f.Zstd = true, true, true, true
		case "preempt":
			f.PostcopyPreempt = true
		case "zero-page":
			f.ZeroPageDetection = true
		case "avail-switchover":
			f.AvailSwitchoverBandwidth = true
		case "zstd":
			f.Zstd = true
		case "multifd-postcopy":
			f.MultifdPostcopy = true
		default:
			return f, fmt.Errorf("unknown feature %q", name)
		}
	}
	return f, nil
}

func parseTune(lines []string) (TuneInputs, error) {
	var in TuneInputs
	for _, l := range lines {
		if strings.HasPrefix(l, "#") {
			continue
		}
		for _, kv := range strings.Fields(l) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return in, fmt.Errorf("want key=value, got %q", kv)
			}
			var err error
			switch k {
			case "strategy":
				in.Strategy = v
			case "bandwidth":
				in.BandwidthBytesPerSec, err = parseRate(v)
			case "stream":
				in.StreamBytesPerSec, err = parseRate(v)
			case "dirty":
				in.DirtyRateBytesPerSec, err = parseRate(v)
			case "nonzero":
				in.NonZeroBytes, err = parseSize(v)
			case "compress":
				in.CompressBytesPerSec, err = parseRate(v)
			case "rtt":
				in.RTT, err = time.ParseDuration(v)
			case "stall":
				in.LinkStall, err = time.ParseDuration(v)
			case "window":
				var w int64
				w, err = parseSize(v)
				in.WindowBytes = float64(w)
			case "multifd":
				in.MultifdChannels, err = strconv.Atoi(v)
			case "maxchannels":
				in.MaxChannels, err = strconv.Atoi(v)
			case "ratio":
				in.CompressRatio, err = strconv.ParseFloat(v, 64)
			case "src":
				in.Src, err = parseFeatures(v)
			case "dst":
				in.Dst, err = parseFeatures(v)
			default:
				err = fmt.Errorf("unknown key")
			}
			if err != nil {
				return in, fmt.Errorf("%s: %w", kv, err)
			}
		}
	}
	return in, nil
}
