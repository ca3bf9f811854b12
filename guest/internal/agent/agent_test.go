//go:build linux

package agent

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"
	"time"

	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/guest/internal/cmdline"
)

func TestStatusJSON(t *testing.T) {
	id, err := NewBootID()
	if err != nil {
		t.Fatal(err)
	}
	line := "console=ttyS0 ferry.ip=10.0.2.15/24 ferry.dirty=64:16 ferry.disk=256 ferry.nope=1"
	a := New(id, line, cmdline.Parse(line), nil, "/nonexistent/vda", func() time.Duration { return 1500 * time.Millisecond })
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content-type %q", ct)
	}
	var raw map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	// the contract's required keys, spelled exactly
	for _, k := range []string{"boot_id", "uptime_s", "stream_clients", "wss_mib", "rate_mibps", "pages_dirtied", "achieved_mibps", "ip", "last_seq", "disk_error"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("status lacks %q: %v", k, raw)
		}
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(raw["boot_id"].(string)) {
		t.Errorf("boot_id %v", raw["boot_id"])
	}
	if raw["uptime_s"].(float64) != 1.5 || raw["wss_mib"].(float64) != 64 || raw["rate_mibps"].(float64) != 16 || raw["ip"] != "10.0.2.15/24" {
		t.Errorf("values %v", raw)
	}
	if raw["dirty_state"] != "filling" || raw["disk_state"] != "waiting" || raw["disk_rate_kibps"].(float64) != 256 {
		t.Errorf("states %v", raw)
	}
	if errs, _ := raw["config_errors"].([]any); len(errs) != 1 {
		t.Errorf("config_errors %v", raw["config_errors"])
	}
	var st guestapi.Status
	b, _ := json.Marshal(raw)
	if err := json.Unmarshal(b, &st); err != nil || st.BootID != a.BootIDHex {
		t.Fatalf("decode into guestapi.Status: %v %+v", err, st)
	}

	r2, err := http.Get(srv.URL + "/")
	if err != nil || r2.StatusCode != 200 {
		t.Fatalf("index: %v %v", err, r2.Status)
	}
	r2.Body.Close()
	r3, _ := http.Get(srv.URL + "/nope")
	if r3.StatusCode != 404 {
		t.Fatalf("/nope: %v", r3.Status)
	}
	r3.Body.Close()
}
