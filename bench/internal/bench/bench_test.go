package bench

import (
	"encoding/xml"
	"strings"
	"testing"

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
	o := Options{Scenarios: []string{"idle", "half", "heavy"}, LinkMiBps: 48, WSSMiB: 256}
	scs, err := o.scenarios()
	if err != nil {
		t.Fatal(err)
	}
	if scs[0].DirtyMiBps != 0 || scs[0].ShapedMiBps != 0 || scs[1].DirtyMiBps != 24 || scs[2].DirtyMiBps != 96 || scs[2].ShapedMiBps != 48 {
		t.Errorf("scenarios = %+v", scs)
	}
	if _, err := (Options{Scenarios: []string{"bogus"}}).scenarios(); err == nil {
		t.Error("unknown scenario accepted")
	}
}
