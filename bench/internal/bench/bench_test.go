package bench

import (
	"encoding/xml"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/guest/guestapi"
)

func TestJobStats(t *testing.T) {
	st := jobStats("Job type: 2\n\noperation: 5\ntime_elapsed: 2000\ndata_remaining: 970326016\nmemory_iteration: 1\n")
	if statInt(st, "time_elapsed") != 2000 || statInt(st, "data_remaining") != 970326016 || statInt(st, "memory_iteration") != 1 {
		t.Errorf("jobStats = %v", st)
	}
}

func TestDomainXMLIsValidAndMatchesGuest(t *testing.T) {
	sc := Scenario{Name: "half", WSSMiB: 256, DirtyMiBps: 24}
	g := newGuest("libvirt", sc, "/guest", 1024)
	x := domainXML(g, "/var/log/libvirt/x.log")
	var v struct {
		Name    string `xml:"name"`
		Cmdline string `xml:"os>cmdline"`
		MAC     struct {
			Address string `xml:"address,attr"`
		} `xml:"devices>interface>mac"`
	}
	if err := xml.Unmarshal([]byte(x), &v); err != nil {
		t.Fatalf("domain XML does not parse: %v\n%s", err, x)
	}
	if v.Name != "bench-libvirt" || v.MAC.Address != g.MAC || !strings.HasPrefix(v.Cmdline, guestapi.BaseCmdline+" ") ||
		!strings.Contains(v.Cmdline, "ferry.dirty=256:24") || !strings.Contains(v.Cmdline, "ferry.ip=198.19.0.23/15") {
		t.Errorf("domain XML = %+v", v)
	}
}

func TestScenarios(t *testing.T) {
	o := Options{Scenarios: AllScenarios, LinkMiBps: 48, WSSMiB: 256, MemoryMiB: 1024}
	scs, err := o.scenarios()
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]Scenario{}
	for _, sc := range scs {
		by[sc.Name] = sc
	}
	if sc := by["idle"]; sc.DirtyMiBps != 0 || sc.Shaped() || sc.MemoryMiB != 1024 {
		t.Errorf("idle = %+v", sc)
	}
	if by["half"].DirtyMiBps != 24 || by["heavy"].DirtyMiBps != 96 || by["heavy"].ShapedMiBps != 48 {
		t.Errorf("half/heavy = %+v / %+v", by["half"], by["heavy"])
	}
	if sc := by["wan"]; sc.DelayMs != 20 || sc.LossPct != 0.1 || sc.DirtyMiBps != 16 || sc.ShapedMiBps != 48 {
		t.Errorf("wan = %+v", sc)
	}
	if sc := by["flaky"]; sc.Flaps != 2 || sc.FlapDownMs != 2000 || sc.DirtyMiBps != 16 || !sc.Shaped() {
		t.Errorf("flaky = %+v", sc)
	}
	if sc := by["big"]; sc.MemoryMiB != 4096 || sc.WSSMiB != 1024 || sc.DirtyMiBps != 0 || sc.Shaped() {
		t.Errorf("big = %+v", sc)
	}
	if sc := by["disk"]; sc.MemoryMiB != 1024 || sc.DiskMiB != 4096 || sc.DiskAllocMiB != 1024 || sc.DiskKiBps != 512 || sc.Shaped() {
		t.Errorf("disk = %+v", sc)
	}
	if g := newGuest("ferry", by["disk"], "/g", 1024); !strings.Contains(g.Cmdline, " ferry.disk=512") {
		t.Errorf("disk guest cmdline %q lacks the disk writer", g.Cmdline)
	}
	if g := newGuest("ferry", by["big"], "/g", 4096); strings.Contains(g.Cmdline, "ferry.disk") || diskXML(g) != "" {
		t.Errorf("big guest has a disk: %q", g.Cmdline)
	}
	if linkKey(by["flaky"]) != linkKey(by["half"]) || linkKey(by["wan"]) == linkKey(by["half"]) {
		t.Error("warm-up link keys: flaky must share half's link, wan must not")
	}
	if _, err := (Options{Scenarios: []string{"bogus"}}).scenarios(); err == nil {
		t.Error("unknown scenario accepted")
	}
}

func TestEstimate(t *testing.T) {
	o := Options{Scenarios: AllScenarios, Systems: AllSystems, Runs: 3, Cap: 60 * time.Second, LinkMiBps: 48, WSSMiB: 256, MemoryMiB: 1024,
		Settle: 3 * time.Second, Warmup: true}
	full, err := EstimateFor(o)
	if err != nil {
		t.Fatal(err)
	}
	o.Runs = 1
	one, _ := EstimateFor(o)
	if full <= one || full > 90*time.Minute || one < 5*time.Minute {
		t.Errorf("estimates: 3 runs %v, 1 run %v", full, one)
	}
	o.Cap = 30 * time.Second
	if shorter, _ := EstimateFor(o); shorter >= one {
		t.Errorf("a shorter cap does not shorten the estimate: %v vs %v", shorter, one)
	}
}

func TestReadStatAndVersions(t *testing.T) {
	comm, ticks, start, err := readStat(os.Getpid())
	if err != nil || comm == "" || start == 0 {
		t.Fatalf("readStat(self) = %q, %d, %d, %v", comm, ticks, start, err)
	}
	if !versionAtLeast("11.3.0", "11.3") || versionAtLeast("9.0.0", "11.3") || !versionAtLeast("12.0", "11.3") || versionAtLeast("11.2.9", "11.3") {
		t.Error("versionAtLeast")
	}
}

func TestTunedFlags(t *testing.T) {
	base := &LibvirtSystem{libvirtd: &libvirtd{}, name: "libvirt"}
	tuned := base.Tuned()
	if tuned.Name() != "libvirt-tuned" || tuned.libvirtd != base.libvirtd || len(base.flags) != 0 {
		t.Errorf("tuned = %+v", tuned)
	}
	for _, f := range []string{"--auto-converge", "--postcopy", "--postcopy-after-precopy", "--parallel"} {
		if !slices.Contains(tuned.flags, f) {
			t.Errorf("tuned flags lack %s", f)
		}
	}
}

func TestCPUSamplerCountsAProcess(t *testing.T) {
	s, err := startCPUSampler(nil, nil, []int{os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	// Burn CPU until /proc shows at least two clock ticks more (bounded).
	deadline := time.Now().Add(10 * time.Second)
	_, t0, _, _ := readStat(os.Getpid())
	x := 0
	for time.Now().Before(deadline) {
		for i := 0; i < 1e6; i++ {
			x += i
		}
		if _, t1, _, _ := readStat(os.Getpid()); t1 >= t0+2 {
			break
		}
	}
	c := s.Stop("h1", "h2")
	if c.ControlPlaneS < 0.02 || c.HostsS() != 0 || len(c.Processes) != 1 || !strings.HasPrefix(c.Processes[0], "root ") {
		t.Errorf("cpu = %+v (x=%d)", c, x)
	}
}
