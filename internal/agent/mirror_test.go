package agent

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/qmp"
	"github.com/ferryvm/ferry/internal/qmp/qmptest"
)

// fakeJobs answers query-block-jobs with the entry set last (a fake QMP
// server standing in for QEMU's mirror job).
type fakeJobs struct {
	mu  sync.Mutex
	job map[string]any
}

func (f *fakeJobs) set(j map[string]any) {
	f.mu.Lock()
	f.job = j
	f.mu.Unlock()
}

func (f *fakeJobs) handle(json.RawMessage) qmptest.Reply {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.job == nil {
		return qmptest.Reply{Return: []any{}}
	}
	return qmptest.Reply{Return: []any{f.job}}
}

// The progress a mirror reports is QEMU's job offset, at most the data to
// send (the image's data at the start plus what the guest wrote since): a
// job that has not scanned the image yet (0/0) reports nothing sent, not
// the whole disk (the session-4 figure showed 101.5 of 101.5 MB 3 s into an
// 8 MiB/s mirror that had copied 35.7 MB); an offset that runs past the data
// (the zero clusters of an image that arrived by a mirror: QEMU processes
// the whole disk, the link carries no payload for them) is not data sent;
// the figures never go back.
func TestMirrorProgressIsTheJobOffset(t *testing.T) {
	srv := qmptest.NewServer(t)
	jobs := &fakeJobs{}
	srv.Handle("query-block-jobs", jobs.handle)
	var wr sync.Mutex
	written := int64(0)
	srv.Handle("query-blockstats", func(json.RawMessage) qmptest.Reply {
		wr.Lock()
		defer wr.Unlock()
		return qmptest.Reply{Return: []any{map[string]any{"qdev": "/machine/peripheral/data-dev/virtio-backend", "stats": map[string]any{"wr_bytes": 7_000_000 + written}}}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mon, err := qmp.Connect(ctx, srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	const mb = 1000 * 1000
	set := &mirrorSet{nbd: "198.18.0.2:10809", disks: []*diskMirror{{name: "data", job: "data-mirror", state: mirrorRunning, allocated: 101_500_000, wrStart: 7_000_000}}}
	job := func(length, offset int64, ready bool, status string) map[string]any {
		return map[string]any{"device": "data-mirror", "type": "mirror", "len": length, "offset": offset, "ready": ready, "status": status, "busy": true, "paused": false, "speed": 8 << 20, "io-status": "ok", "auto-finalize": true, "auto-dismiss": false}
	}
	for _, c := range []struct {
		name             string
		job              map[string]any
		written          int64
		wantState        string
		wantSent, wantOf int64
		wantReady        bool
	}{
		{"created, not scanned", job(0, 0, false, "running"), 0, mirrorRunning, 0, 101_500_000, false},
		{"copying", job(101_500_000, 35_700_000, false, "running"), 0, mirrorRunning, 35_700_000, 101_500_000, false},
		{"the guest wrote 2.5 MB", job(104*mb, 60*mb, false, "running"), 2_500_000, mirrorRunning, 60 * mb, 104 * mb, false},
		{"a stale answer does not go back", job(103*mb, 59*mb, false, "running"), 2_500_000, mirrorRunning, 60 * mb, 104 * mb, false},
		{"zero clusters past the data", job(1100*mb, 600*mb, false, "running"), 3_000_000, mirrorRunning, 104_500_000, 104_500_000, false},
		{"in sync", job(1105*mb, 1105*mb, true, "ready"), 3_500_000, mirrorReady, 105 * mb, 105 * mb, true},
		{"completed at the switchover", job(1106*mb, 1106*mb, true, "concluded"), 4_500_000, mirrorCompleted, 106 * mb, 106 * mb, true},
	} {
		jobs.set(c.job)
		wr.Lock()
		written = c.written
		wr.Unlock()
		ready, err := set.refresh(ctx, mon)
		if err != nil {
			t.Fatalf("%s: refresh: %v", c.name, err)
		}
		st := &agentv1.OutgoingStatus{}
		set.fill(st)
		d := st.Disks[0]
		if ready != c.wantReady || d.State != c.wantState || st.DiskBytesTransferred != c.wantSent || st.DiskBytesTotal != c.wantOf || d.DataBytes != c.wantSent {
			t.Errorf("%s: ready %v state %s, %d of %d bytes (disk data %d); want ready %v state %s, %d of %d",
				c.name, ready, d.State, st.DiskBytesTransferred, st.DiskBytesTotal, d.DataBytes, c.wantReady, c.wantState, c.wantSent, c.wantOf)
		}
	}
}

// A job error fails the set with the disk and the destination named.
func TestMirrorJobErrorFails(t *testing.T) {
	srv := qmptest.NewServer(t)
	srv.HandleStatic("query-block-jobs", qmptest.Reply{Return: []any{map[string]any{"device": "data-mirror", "len": 10, "offset": 5, "status": "running", "error": "Input/output error"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mon, err := qmp.Connect(ctx, srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	set := &mirrorSet{nbd: "198.18.0.2:10809", disks: []*diskMirror{{name: "data", job: "data-mirror", state: mirrorRunning, allocated: 10}}}
	if _, err := set.refresh(ctx, mon); err == nil || err.Error() != "mirror of disk data to 198.18.0.2:10809 failed: Input/output error" {
		t.Errorf("refresh: %v", err)
	}
	st := &agentv1.OutgoingStatus{}
	set.fill(st)
	if st.Status != "failed" || st.Disks[0].State != mirrorFailed {
		t.Errorf("status %q disk %s", st.Status, st.Disks[0].State)
	}
}

// The data of an image is its data extents that are not zero.
func TestMapDataBytes(t *testing.T) {
	out := []byte(`[{ "start": 0, "length": 2752512, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 1074200576},
{ "start": 2752512, "length": 1070989312, "depth": 0, "present": false, "zero": true, "data": false, "compressed": false},
{ "start": 1073741824, "length": 65536, "depth": 0, "present": true, "zero": true, "data": true, "compressed": false},
{ "start": 1073807360, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 327680}]`)
	n, err := mapDataBytes(out)
	if err != nil || n != 2752512+1048576 {
		t.Errorf("mapDataBytes = %d, %v; want %d", n, err, 2752512+1048576)
	}
	if _, err := mapDataBytes([]byte("qemu-img: oops")); err == nil {
		t.Error("garbage decoded")
	}
}
