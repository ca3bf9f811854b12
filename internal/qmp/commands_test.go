package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/ferryvm/ferry/internal/qmp/qmptest"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// strictDecode decodes data into v, failing on unknown members, and checks
// that re-encoding v yields the same JSON value (nothing lost or invented).
func strictDecode(t *testing.T, data []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("strict decode into %T: %v", v, err)
	}
	back, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var want, got any
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(back, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("round trip of %T differs:\n got %s\nwant %s", v, back, data)
	}
}

// jsonNum reads a number at path from a generic JSON document.
func jsonNum(t *testing.T, doc map[string]any, path ...string) float64 {
	t.Helper()
	var cur any = doc
	for _, p := range path {
		obj, ok := cur.(map[string]any)
		if !ok {
			t.Fatalf("%v: not an object", path)
		}
		if cur, ok = obj[p]; !ok {
			t.Fatalf("%v: missing in capture", path)
		}
	}
	f, ok := cur.(float64)
	if !ok {
		t.Fatalf("%v: not a number", path)
	}
	return f
}

func TestMigrationInfoFromRealQEMU(t *testing.T) {
	cases := []struct {
		file  string
		check func(t *testing.T, mi MigrationInfo, doc map[string]any)
	}{
		{"query-migrate-7.2.json", func(t *testing.T, mi MigrationInfo, doc map[string]any) {
			if mi.Status != MigrationStatusCompleted || !mi.Status.Finished() || mi.RAM == nil || mi.XBZRLECache == nil ||
				mi.Downtime == nil || mi.TotalTime == nil || mi.SetupTime == nil || mi.ExpectedDowntime != nil {
				t.Fatalf("%+v", mi)
			}
			r := mi.RAM
			if r.Total != 67641344 || r.Remaining != 0 || r.PageSize != 4096 || r.Transferred <= 0 || r.Mbps <= 0 {
				t.Fatalf("ram %+v", r)
			}
			if float64(*mi.Downtime) != jsonNum(t, doc, "downtime") || float64(*mi.TotalTime) != jsonNum(t, doc, "total-time") ||
				float64(mi.XBZRLECache.CacheMiss) != jsonNum(t, doc, "xbzrle-cache", "cache-miss") ||
				mi.XBZRLECache.CacheSize != 64<<20 {
				t.Fatalf("times/xbzrle do not match the capture: %+v", mi)
			}
		}},
		{"query-migrate-7.2-pre-switchover.json", func(t *testing.T, mi MigrationInfo, doc map[string]any) {
			if mi.Status != MigrationStatusPreSwitchover || mi.Status.Finished() || mi.RAM == nil ||
				Deref(mi.ExpectedDowntime) != 300 || mi.Downtime != nil || mi.RAM.MultifdBytes == 0 {
				t.Fatalf("%+v / %+v", mi, mi.RAM)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", c.file))
			if err != nil {
				t.Fatal(err)
			}
			var direct MigrationInfo
			strictDecode(t, data, &direct)
			var doc map[string]any
			if err := json.Unmarshal(data, &doc); err != nil {
				t.Fatal(err)
			}
			// Every RAM counter lands in the field of the same QAPI name.
			ramFields := map[string]float64{
				"transferred": float64(direct.RAM.Transferred), "remaining": float64(direct.RAM.Remaining),
				"total": float64(direct.RAM.Total), "duplicate": float64(direct.RAM.Duplicate),
				"skipped": float64(direct.RAM.Skipped), "normal": float64(direct.RAM.Normal),
				"normal-bytes": float64(direct.RAM.NormalBytes), "dirty-pages-rate": float64(direct.RAM.DirtyPagesRate),
				"mbps": direct.RAM.Mbps, "dirty-sync-count": float64(direct.RAM.DirtySyncCount),
				"postcopy-requests": float64(direct.RAM.PostcopyRequests), "page-size": float64(direct.RAM.PageSize),
				"multifd-bytes": float64(direct.RAM.MultifdBytes), "pages-per-second": float64(direct.RAM.PagesPerSecond),
				"precopy-bytes": float64(direct.RAM.PrecopyBytes), "downtime-bytes": float64(direct.RAM.DowntimeBytes),
				"postcopy-bytes":              float64(direct.RAM.PostcopyBytes),
				"dirty-sync-missed-zero-copy": float64(direct.RAM.DirtySyncMissedZeroCopy),
			}
			for name, got := range ramFields {
				if want := jsonNum(t, doc, "ram", name); got != want {
					t.Errorf("ram.%s = %v, capture has %v", name, got, want)
				}
			}
			if len(doc["ram"].(map[string]any)) != len(ramFields) {
				t.Errorf("capture has %d ram members, MigrationStats maps %d", len(doc["ram"].(map[string]any)), len(ramFields))
			}

			// And through the wire, exactly as QEMU sent it.
			s := qmptest.NewServer(t)
			s.HandleStatic("query-migrate", qmptest.Reply{Raw: data})
			m := connectFake(t, s)
			mi, err := m.QueryMigrate(testCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(mi, direct) {
				t.Fatalf("wire decode differs from direct decode")
			}
			c.check(t, mi, doc)
		})
	}
}

// TestMigrationInfoAllFields covers the members the captures do not have,
// using QEMU 7.2 member names and shapes.
func TestMigrationInfoAllFields(t *testing.T) {
	const data = `{
	  "status": "failed", "error-desc": "Unable to write to socket: Broken pipe",
	  "ram": {"transferred": 1, "remaining": 2, "total": 3, "duplicate": 4, "skipped": 0, "normal": 5,
	          "normal-bytes": 6, "dirty-pages-rate": 7, "mbps": 8.5, "dirty-sync-count": 9,
	          "postcopy-requests": 10, "page-size": 4096, "multifd-bytes": 11, "pages-per-second": 12,
	          "precopy-bytes": 13, "downtime-bytes": 14, "postcopy-bytes": 15, "dirty-sync-missed-zero-copy": 16},
	  "disk": {"transferred": 1, "remaining": 0, "total": 1, "duplicate": 0, "skipped": 0, "normal": 0,
	          "normal-bytes": 0, "dirty-pages-rate": 0, "mbps": 0, "dirty-sync-count": 0,
	          "postcopy-requests": 0, "page-size": 0, "multifd-bytes": 0, "pages-per-second": 0,
	          "precopy-bytes": 0, "downtime-bytes": 0, "postcopy-bytes": 0, "dirty-sync-missed-zero-copy": 0},
	  "vfio": {"transferred": 99},
	  "xbzrle-cache": {"cache-size": 67108864, "bytes": 1, "pages": 2, "cache-miss": 3, "cache-miss-rate": 0.5, "encoding-rate": 80.1, "overflow": 4},
	  "total-time": 100, "expected-downtime": 30, "downtime": 20, "setup-time": 5,
	  "cpu-throttle-percentage": 40,
	  "blocked-reasons": ["device 'x' is not migratable"],
	  "postcopy-blocktime": 7, "postcopy-vcpu-blocktime": [3, 4],
	  "compression": {"pages": 1, "busy": 2, "busy-rate": 0.25, "compressed-size": 3, "compression-rate": 1.5},
	  "socket-address": [{"type": "inet", "host": "127.0.0.1", "port": "4444", "ipv4": true},
	                     {"type": "unix", "path": "/run/mig.sock"}]
	}`
	var mi MigrationInfo
	strictDecode(t, []byte(data), &mi)
	if mi.Status != MigrationStatusFailed || !mi.Status.Finished() || mi.VFIO.Transferred != 99 ||
		*mi.CPUThrottlePercentage != 40 || *mi.PostcopyBlocktime != 7 || len(mi.PostcopyVCPUBlocktime) != 2 ||
		mi.Compression.BusyRate != 0.25 || mi.SocketAddress[0].Port != "4444" || mi.SocketAddress[1].Path != "/run/mig.sock" ||
		mi.RAM.DirtySyncMissedZeroCopy != 16 || mi.Disk.Total != 1 || len(mi.BlockedReasons) != 1 {
		t.Fatalf("%+v", mi)
	}

	var idle MigrationInfo
	strictDecode(t, []byte(`{}`), &idle)
	if idle.CurrentStatus() != MigrationStatusNone {
		t.Fatalf("idle status %q", idle.CurrentStatus())
	}
}

func TestMigrationParametersFromRealQEMU(t *testing.T) {
	// query-migrate-parameters of a fresh QEMU 7.2.22.
	const data = `{"cpu-throttle-tailslow": false, "xbzrle-cache-size": 67108864, "cpu-throttle-initial": 20, "announce-max": 550, "decompress-threads": 2, "compress-threads": 8, "compress-level": 1, "multifd-channels": 2, "multifd-zstd-level": 1, "announce-initial": 50, "block-incremental": false, "compress-wait-thread": true, "downtime-limit": 300, "tls-authz": "", "multifd-compression": "none", "announce-rounds": 5, "announce-step": 100, "tls-creds": "", "multifd-zlib-level": 1, "max-cpu-throttle": 99, "max-postcopy-bandwidth": 0, "tls-hostname": "", "throttle-trigger-threshold": 50, "max-bandwidth": 134217728, "x-checkpoint-delay": 20000, "cpu-throttle-increment": 10}`
	var p MigrationParameters
	strictDecode(t, []byte(data), &p)
	if *p.MaxBandwidth != 134217728 || *p.DowntimeLimit != 300 || *p.XCheckpointDelay != 20000 || *p.MaxCPUThrottle != 99 {
		t.Fatalf("%+v", p)
	}
}

// TestCommandWireFormat checks every typed helper sends QEMU's exact
// command name and argument object.
func TestCommandWireFormat(t *testing.T) {
	s := qmptest.NewServer(t)
	for _, name := range []string{"stop", "cont", "quit", "system_powerdown", "migrate-set-capabilities",
		"migrate-set-parameters", "migrate", "migrate-incoming", "migrate_cancel", "migrate-continue",
		"migrate-start-postcopy", "migrate-recover", "migrate-pause", "calc-dirty-rate", "announce-self", "yank", "object-add", "object-del"} {
		s.HandleStatic(name, qmptest.Reply{})
	}
	m := connectFake(t, s)
	ctx := testCtx(t)

	type call struct {
		run  func(context.Context) error
		exec string
		args string // "" = no arguments member
	}
	calls := []call{
		{m.Stop, "stop", ""},
		{m.Cont, "cont", ""},
		{m.SystemPowerdown, "system_powerdown", ""},
		{m.MigrateCancel, "migrate_cancel", ""},
		{m.MigrateStartPostcopy, "migrate-start-postcopy", ""},
		{m.MigratePause, "migrate-pause", ""},
		{m.YankMigration, "yank", `{"instances":[{"type":"migration"}]}`},
		{func(ctx context.Context) error { return m.YankBlockNode(ctx, "mirror-vda") }, "yank", `{"instances":[{"type":"block-node","node-name":"mirror-vda"}]}`},
		{func(ctx context.Context) error {
			return m.MigrateSetCapabilities(ctx, []CapabilityState{{CapPauseBeforeSwitchover, true}, {CapMultifd, false}})
		}, "migrate-set-capabilities", `{"capabilities":[{"capability":"pause-before-switchover","state":true},{"capability":"multifd","state":false}]}`},
		{func(ctx context.Context) error {
			return m.MigrateSetParameters(ctx, MigrationParameters{MaxBandwidth: Ptr[int64](0), DowntimeLimit: Ptr[int64](500), TLSCreds: Ptr("")})
		}, "migrate-set-parameters", `{"max-bandwidth":0,"downtime-limit":500,"tls-creds":""}`},
		{func(ctx context.Context) error {
			return m.MigrateSetParameters(ctx, MigrationParameters{BlockBitmapMapping: []BitmapMigrationNodeAlias{}})
		}, "migrate-set-parameters", `{"block-bitmap-mapping":[]}`},
		{func(ctx context.Context) error {
			return m.MigrateSetParameters(ctx, MigrationParameters{MultifdChannels: Ptr[int64](4), MultifdCompression: Ptr(MultiFDCompressionZstd),
				MultifdZstdLevel: Ptr[int64](1), ZeroPageDetection: Ptr(ZeroPageDetectionMultifd), AvailSwitchoverBandwidth: Ptr[int64](45298483)})
		}, "migrate-set-parameters", `{"multifd-channels":4,"multifd-compression":"zstd","multifd-zstd-level":1,"zero-page-detection":"multifd","avail-switchover-bandwidth":45298483}`},
		{func(ctx context.Context) error {
			return m.MigrateSetCapabilities(ctx, []CapabilityState{{CapPostcopyRAM, true}, {CapPostcopyPreempt, true}})
		}, "migrate-set-capabilities", `{"capabilities":[{"capability":"postcopy-ram","state":true},{"capability":"postcopy-preempt","state":true}]}`},
		{func(ctx context.Context) error { return m.Migrate(ctx, "tcp:10.0.0.2:4444", MigrateOptions{}) },
			"migrate", `{"uri":"tcp:10.0.0.2:4444"}`},
		{func(ctx context.Context) error {
			return m.Migrate(ctx, "tcp:10.0.0.2:4445", MigrateOptions{Resume: true})
		},
			"migrate", `{"uri":"tcp:10.0.0.2:4445","resume":true}`},
		{func(ctx context.Context) error { return m.MigrateIncoming(ctx, "tcp:0.0.0.0:0") },
			"migrate-incoming", `{"uri":"tcp:0.0.0.0:0"}`},
		{func(ctx context.Context) error { return m.MigrateContinue(ctx, MigrationStatusPreSwitchover) },
			"migrate-continue", `{"state":"pre-switchover"}`},
		{func(ctx context.Context) error { return m.MigrateRecover(ctx, "tcp:0.0.0.0:4446") },
			"migrate-recover", `{"uri":"tcp:0.0.0.0:4446"}`},
		{func(ctx context.Context) error { return m.CalcDirtyRate(ctx, 1, DirtyRateOptions{}) },
			"calc-dirty-rate", `{"calc-time":1}`},
		{func(ctx context.Context) error {
			return m.CalcDirtyRate(ctx, 2, DirtyRateOptions{SamplePages: 512, Mode: DirtyRateModeDirtyRing})
		}, "calc-dirty-rate", `{"calc-time":2,"sample-pages":512,"mode":"dirty-ring"}`},
		{func(ctx context.Context) error {
			return m.AnnounceSelf(ctx, AnnounceParameters{Initial: 50, Max: 550, Rounds: 5, Step: 100, Interfaces: []string{"net0"}})
		}, "announce-self", `{"initial":50,"max":550,"rounds":5,"step":100,"interfaces":["net0"]}`},
		{func(ctx context.Context) error {
			return m.ObjectAdd(ctx, map[string]any{"qom-type": "authz-simple", "id": "a1", "identity": "CN=h2"})
		}, "object-add", `{"qom-type":"authz-simple","id":"a1","identity":"CN=h2"}`},
		{func(ctx context.Context) error { return m.ObjectDel(ctx, "a1") }, "object-del", `{"id":"a1"}`},
		{m.Quit, "quit", ""},
	}
	for _, c := range calls {
		before := len(s.Received())
		if err := c.run(ctx); err != nil {
			t.Fatalf("%s: %v", c.exec, err)
		}
		rcv := s.Received()
		if len(rcv) != before+1 {
			t.Fatalf("%s: %d commands sent", c.exec, len(rcv)-before)
		}
		got := rcv[before]
		if got.Execute != c.exec {
			t.Fatalf("sent %q, want %q", got.Execute, c.exec)
		}
		if c.args == "" {
			if got.Arguments != nil {
				t.Fatalf("%s: unexpected arguments %s", c.exec, got.Arguments)
			}
			continue
		}
		var want, have any
		_ = json.Unmarshal([]byte(c.args), &want)
		if err := json.Unmarshal(got.Arguments, &have); err != nil || !reflect.DeepEqual(want, have) {
			t.Fatalf("%s: arguments %s, want %s", c.exec, got.Arguments, c.args)
		}
	}
}

func TestTypedQueries(t *testing.T) {
	s := qmptest.NewServer(t)
	s.HandleStatic("query-status", qmptest.Reply{Raw: json.RawMessage(`{"status": "inmigrate", "singlestep": false, "running": false}`)})
	s.HandleStatic("query-version", qmptest.Reply{Raw: json.RawMessage(`{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}`)})
	s.HandleStatic("query-migrate-capabilities", qmptest.Reply{Raw: json.RawMessage(`[{"state": false, "capability": "xbzrle"}, {"state": true, "capability": "postcopy-preempt"}]`)})
	s.HandleStatic("query-dirty-rate", qmptest.Reply{Raw: json.RawMessage(`{"status": "measured", "sample-pages": 512, "dirty-rate": 4, "mode": "page-sampling", "start-time": 1234, "calc-time": 1}`)})
	s.HandleStatic("query-migrate-parameters", qmptest.Reply{Raw: json.RawMessage(`{"downtime-limit": 300}`)})
	s.HandleStatic("bad-shape", qmptest.Reply{Raw: json.RawMessage(`[1,2]`)})
	m := connectFake(t, s)
	ctx := testCtx(t)

	if st, err := m.QueryStatus(ctx); err != nil || st.Status != RunStateInMigrate || st.Running {
		t.Fatalf("%+v %v", st, err)
	}
	if v, err := m.QueryVersion(ctx); err != nil || v.String() != "7.2.22" {
		t.Fatalf("%+v %v", v, err)
	}
	caps, err := m.QueryMigrateCapabilities(ctx)
	if cm := CapabilityMap(caps); err != nil || cm[CapXBZRLE] || !cm[CapPostcopyPreempt] || len(cm) != 2 {
		t.Fatalf("%v %v", caps, err)
	}
	if dr, err := m.QueryDirtyRate(ctx); err != nil || Deref(dr.DirtyRate) != 4 || dr.Status != DirtyRateStatusMeasured || dr.StartTime != 1234 {
		t.Fatalf("%+v %v", dr, err)
	}
	if p, err := m.QueryMigrateParameters(ctx); err != nil || Deref(p.DowntimeLimit) != 300 || p.MaxBandwidth != nil {
		t.Fatalf("%+v %v", p, err)
	}
	var out struct{ A int }
	if err := m.Run(ctx, "bad-shape", nil, &out); err == nil || !isProtocol(err) {
		t.Fatalf("undecodable reply: %v", err)
	}
}

func isProtocol(err error) bool {
	var oe *OpError
	return errors.As(err, &oe) && oe.Op == "bad-shape" && errors.Is(err, ErrProtocol)
}
