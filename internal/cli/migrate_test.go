package cli

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// runCLI runs the ferry command line with args and returns what it wrote.
func runCLI(t *testing.T, ctx context.Context, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := NewRoot()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	if ctx == nil {
		ctx = context.Background()
	}
	err = root.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

func TestMigrateFlagValidation(t *testing.T) {
	// Nothing listens here: a case that got past validation would fail
	// with a connection error instead of the expected message.
	srv := []string{"--server", "127.0.0.1:1"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"migrate"}, "VM: required (the VM's name, see ferry vm list)"},
		{[]string{"migrate", "a", "b", "--to", "h2"}, "expected one VM, got 2 arguments"},
		{[]string{"migrate", "web"}, "--to: required (the destination host, see ferry host list)"},
		{[]string{"migrate", "web", "--to", "h2", "--strategy", "fast"}, `--strategy: must be auto, precopy, converge, postcopy, hybrid or cold, got "fast"`},
		{[]string{"migrate", "web", "--to", "h2", "--strategy", "postcopy", "--no-postcopy"}, "--no-postcopy: conflicts with --strategy postcopy"},
		{[]string{"migrate", "web", "--to", "h2", "--strategy", "converge", "--no-throttle"}, "--no-throttle: conflicts with --strategy converge"},
		{[]string{"migrate", "web", "--to", "h2", "--max-downtime", "500us"}, "--max-downtime: must be at least 1ms (0 uses the VM's maxDowntimeMs), got 500µs"},
		{[]string{"migrate", "web", "--to", "h2", "--max-downtime", "61s"}, "--max-downtime: must be at most 60s, got 1m1s"},
		{[]string{"migrate", "web", "--to", "h2", "--max-downtime", "-1ms"}, "--max-downtime: must not be negative, got -1ms"},
		{[]string{"migrate", "web", "--to", "h2", "--max-downtime", "100"}, `invalid argument "100" for "--max-downtime" flag`},
		{[]string{"migrate", "web", "--to", "h2", "--bandwidth", "-1"}, "--bandwidth: must be >= 0 MiB/s (0 = unlimited), got -1"},
		{[]string{"migrate", "web", "--to", "h2", "--multifd", "300"}, "--multifd: must be between 0 and 16 channels (0 or 1 = one stream), got 300"},
		{[]string{"migrate", "web", "--to", "h2", "--strategy", "cold", "--max-downtime", "100ms"}, "--max-downtime: only applies to live strategies"},
		{[]string{"migrate", "web", "--to", "h2", "--strategy", "cold", "--multifd", "4"}, "--multifd: only applies to live strategies"},
		{[]string{"migrate", "web", "--to", "h2", "--stall-timeout", "500ms"}, "--stall-timeout: must be at least 1s (0 uses the server's default), got 500ms"},
		{[]string{"migrate", "web", "--to", "h2", "--timeout", "-1s"}, "--timeout: must be at least 1s (0 uses the server's default), got -1s"},
		{[]string{"migrate", "web", "--to", "h2", "--stall-timeout", "20m", "--timeout", "10m"}, "--stall-timeout: must not exceed --timeout (10m0s), got 20m0s"},
		{[]string{"migrate", "web", "--to", "h2", "--wait-limits", "-1s"}, "--wait-limits: must be between 0 (refused at once) and 1h, got -1s"},
		{[]string{"migrate", "web", "--to", "h2", "--wait-limits", "1m", "--ignore-limits"}, "--wait-limits: conflicts with --ignore-limits"},
		{[]string{"migrate", "web", "--to", "h2", "-o", "yaml"}, `-o: must be table or json, got "yaml"`},
		{[]string{"migration", "get"}, "accepts 1 arg(s), received 0"},
		{[]string{"migration", "cancel"}, "accepts 1 arg(s), received 0"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			_, _, err := runCLI(t, nil, append(c.args, srv...)...)
			if err == nil || !strings.Contains(describe(err), c.want) {
				t.Errorf("error = %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestMigrateOptions(t *testing.T) {
	f := migrateFlags{to: "h2", strategy: "precopy", maxDowntime: 100 * time.Millisecond, bandwidth: 500,
		multifd: 4, stallTimeout: 15 * time.Second, timeout: 10 * time.Minute}
	got, err := f.options(func(string) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	want := &ferryv1.MigrationOptions{Strategy: "precopy", MaxDowntimeMs: 100, BandwidthMibps: 500,
		MultifdChannels: 4, StallTimeoutMs: 15_000, TimeoutMs: 600_000}
	if !proto.Equal(got, want) {
		t.Errorf("options = %v, want %v", got, want)
	}
	// Zeros mean "default" and pass.
	f = migrateFlags{to: "h2", strategy: "cold"}
	if _, err := f.options(func(string) bool { return false }); err != nil {
		t.Errorf("defaults rejected: %v", err)
	}
}

// fakeMigrations serves MigrationService from a script of polled states.
type fakeMigrations struct {
	ferryv1connect.UnimplementedMigrationServiceHandler
	mu        sync.Mutex
	req       *ferryv1.MigrateRequest
	script    []*ferryv1.Migration // what successive polls return; the last one repeats
	final     *ferryv1.Migration   // the full migration (with samples)
	polls     int                  // requests WithoutSamples
	full      int                  // requests with samples
	cancelled bool
	list      *ferryv1.ListMigrationsRequest
	refuse    int // Migrate answers this many limit refusals first
	starts    int // Migrate calls
}

func (f *fakeMigrations) Migrate(_ context.Context, r *connect.Request[ferryv1.MigrateRequest]) (*connect.Response[ferryv1.MigrateResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.req = r.Msg
	if f.starts++; f.starts <= f.refuse {
		return nil, connect.NewError(connect.CodeResourceExhausted, errors.New("VM web to h2: migration limit reached: policy maxParallelPerSource = 2 ... (fake)"))
	}
	return connect.NewResponse(&ferryv1.MigrateResponse{Migration: &ferryv1.Migration{
		Id: "mig-1a2b3c4d", Vm: r.Msg.Vm, From: "h1", To: r.Msg.To, Strategy: r.Msg.GetOptions().GetStrategy(),
		Status: "running", State: "pending", Options: r.Msg.Options,
	}}), nil
}

func (f *fakeMigrations) GetMigration(_ context.Context, r *connect.Request[ferryv1.GetMigrationRequest]) (*connect.Response[ferryv1.GetMigrationResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !r.Msg.WithoutSamples {
		f.full++
		if f.final != nil {
			return connect.NewResponse(&ferryv1.GetMigrationResponse{Migration: f.final}), nil
		}
	}
	m := f.script[min(f.polls, len(f.script)-1)]
	f.polls++
	return connect.NewResponse(&ferryv1.GetMigrationResponse{Migration: m}), nil
}

func (f *fakeMigrations) ListMigrations(_ context.Context, r *connect.Request[ferryv1.ListMigrationsRequest]) (*connect.Response[ferryv1.ListMigrationsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.list = r.Msg
	return connect.NewResponse(&ferryv1.ListMigrationsResponse{Migrations: []*ferryv1.Migration{f.final}}), nil
}

func (f *fakeMigrations) CancelMigration(_ context.Context, r *connect.Request[ferryv1.CancelMigrationRequest]) (*connect.Response[ferryv1.CancelMigrationResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancelled = true
	return connect.NewResponse(&ferryv1.CancelMigrationResponse{Migration: &ferryv1.Migration{
		Id: r.Msg.Id, Status: "running", State: "rolling-back", CancelRequested: true,
	}}), nil
}

// serveFake serves f, and whatever more each also mounts, with polls 1 ms
// apart.
func serveFake(t *testing.T, f *fakeMigrations, also ...func(*http.ServeMux)) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(ferryv1connect.NewMigrationServiceHandler(f))
	for _, a := range also {
		a(mux)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	old := pollInterval
	pollInterval = time.Millisecond
	t.Cleanup(func() { pollInterval = old })
	return srv.URL
}

func running(state string, tr int64) *ferryv1.Migration {
	return &ferryv1.Migration{Id: "mig-1a2b3c4d", Vm: "web", From: "h1", To: "h2", Strategy: "precopy",
		Status: "running", State: state, TransferredBytes: tr, TotalBytes: 512 * mib}
}

func TestMigrateWait(t *testing.T) {
	final := completedMig()
	final.Samples = []*ferryv1.MigrationSample{{TMs: 200, Round: 1, TransferredBytes: mib}}
	f := &fakeMigrations{
		script: []*ferryv1.Migration{
			running("preparing", 0), running("transferring", 10*mib), running("transferring", 90*mib),
			running("switchover", 300*mib), running("resuming", 301*mib), running("cleanup", 301*mib),
			{Id: "mig-1a2b3c4d", Status: "completed", State: "completed"},
		},
		final: final,
	}
	url := serveFake(t, f)
	out, _, err := runCLI(t, nil, "--server", url, "migrate", "web", "--to", "h2", "--wait", "--strategy", "precopy",
		"--max-downtime", "50ms", "--bandwidth", "500", "--multifd", "4")
	if err != nil {
		t.Fatal(err)
	}
	want := "" +
		"migration mig-1a2b3c4d started: web h1 → h2 (precopy)\n" +
		"  pending\n  preparing\n  transferring\n  switchover\n  resuming\n  cleanup\n" +
		renderReport(final)
	if out != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}
	wantReq := &ferryv1.MigrateRequest{Vm: "web", To: "h2", Options: &ferryv1.MigrationOptions{
		Strategy: "precopy", MaxDowntimeMs: 50, BandwidthMibps: 500, MultifdChannels: 4,
	}}
	if !proto.Equal(f.req, wantReq) {
		t.Errorf("request = %v, want %v", f.req, wantReq)
	}
	if f.full != 1 || f.polls != len(f.script) {
		t.Errorf("%d polls and %d full requests, want %d polls without samples and one full request", f.polls, f.full, len(f.script))
	}
}

func TestMigrateWaitFailed(t *testing.T) {
	failed := &ferryv1.Migration{Id: "mig-1a2b3c4d", Vm: "web", From: "h1", To: "h2", Strategy: "precopy",
		Status: "failed", State: "failed", Error: "destination QEMU exited: exit status 1"}
	f := &fakeMigrations{script: []*ferryv1.Migration{running("preparing", 0), failed}, final: failed}
	url := serveFake(t, f)
	out, _, err := runCLI(t, nil, "--server", url, "migrate", "web", "--to", "h2", "--wait")
	want := "migration mig-1a2b3c4d failed: destination QEMU exited: exit status 1 (the VM is still on h1)"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %q", err, want)
	}
	if !strings.HasSuffix(out, "  error        destination QEMU exited: exit status 1\n") {
		t.Errorf("no error line in the report:\n%s", out)
	}
}

func TestMigrateWaitJSON(t *testing.T) {
	final := completedMig()
	f := &fakeMigrations{script: []*ferryv1.Migration{running("transferring", mib), final}, final: final}
	url := serveFake(t, f)
	out, _, err := runCLI(t, nil, "--server", url, "migrate", "web", "--to", "h2", "--wait", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got ferryv1.Migration
	if err := protojson.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("stdout is not one Migration: %v\n%s", err, out)
	}
	if !proto.Equal(&got, final) {
		t.Errorf("printed %v, want %v", &got, final)
	}
}

func TestMigrateWaitInterrupted(t *testing.T) {
	f := &fakeMigrations{script: []*ferryv1.Migration{running("transferring", mib)}}
	url := serveFake(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			f.mu.Lock()
			n := f.polls
			f.mu.Unlock()
			if n >= 3 {
				cancel()
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	_, _, err := runCLI(t, ctx, "--server", url, "migrate", "web", "--to", "h2", "--wait")
	want := "still running: ferry migration get mig-1a2b3c4d / ferry migration cancel mig-1a2b3c4d"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %q", err, want)
	}
	if f.cancelled {
		t.Error("interrupting --wait cancelled the migration")
	}
}

func TestMigrateNoWait(t *testing.T) {
	f := &fakeMigrations{}
	url := serveFake(t, f)
	out, _, err := runCLI(t, nil, "--server", url, "migrate", "db", "--to", "h3", "--strategy", "cold")
	if err != nil {
		t.Fatal(err)
	}
	want := "migration mig-1a2b3c4d started: db h1 → h3 (cold)\nfollow with: ferry migration get mig-1a2b3c4d\n"
	if out != want {
		t.Errorf("output %q, want %q", out, want)
	}
	if f.polls != 0 {
		t.Errorf("%d polls without --wait", f.polls)
	}
}

func TestMigrationSubcommands(t *testing.T) {
	f := &fakeMigrations{final: completedMig()}
	url := serveFake(t, f)

	out, _, err := runCLI(t, nil, "--server", url, "migration", "cancel", "mig-1a2b3c4d")
	if err != nil {
		t.Fatal(err)
	}
	if want := "cancel requested for mig-1a2b3c4d (state rolling-back)\n"; out != want || !f.cancelled {
		t.Errorf("cancel: %q (cancelled %v), want %q", out, f.cancelled, want)
	}

	out, _, err = runCLI(t, nil, "--server", url, "migration", "get", "mig-1a2b3c4d")
	if err != nil {
		t.Fatal(err)
	}
	if want := renderDetails(completedMig()); out != want {
		t.Errorf("get:\n%s\nwant:\n%s", out, want)
	}

	out, _, err = runCLI(t, nil, "--server", url, "migration", "list", "--vm", "web", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var resp ferryv1.ListMigrationsResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil || len(resp.Migrations) != 1 || f.list.GetVm() != "web" {
		t.Errorf("list -o json: %v, %d migrations, filter %q\n%s", err, len(resp.Migrations), f.list.GetVm(), out)
	}

	out, _, err = runCLI(t, nil, "--server", url, "migration", "list")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "ID            VM   FROM  TO  STRATEGY  STATUS     STATE      TOTAL   DOWNTIME  STARTED\n"+
		"mig-1a2b3c4d  web  h1    h2  precopy   completed  completed  2.41 s  38 ms     ") {
		t.Errorf("list:\n%s", out)
	}
}

// The report shows each local disk's mirror.
func TestRenderReportDisks(t *testing.T) {
	m := &ferryv1.Migration{Id: "mig-1", Vm: "vm", From: "h1", To: "h2", Status: "completed", State: "completed",
		Disks: []*ferryv1.MigrationDisk{{Name: "data", Format: "qcow2", VirtualSizeBytes: 1 << 30, AllocatedBytes: 3 << 20,
			BytesTransferred: 4 << 20, MirrorMs: 105, CompleteMs: 744, State: "completed"}}}
	out := renderReport(m)
	want := "data (qcow2, 1024.0 MiB virtual, 3.0 MiB allocated): completed, 4.0 MiB copied, in sync after 105 ms, completed after 744 ms"
	if !strings.Contains(out, want) {
		t.Errorf("report:\n%s\nwant a disk line %q", out, want)
	}
}

func TestMigrateWaitLimits(t *testing.T) {
	defer func(d time.Duration) { limitRetry = d }(limitRetry)
	limitRetry = 10 * time.Millisecond
	// Without --wait-limits a refusal is the answer.
	f := &fakeMigrations{refuse: 1}
	_, _, err := runCLI(t, nil, "--server", serveFake(t, f), "migrate", "web", "--to", "h2")
	if err == nil || !strings.Contains(err.Error(), "maxParallelPerSource") || f.starts != 1 {
		t.Fatalf("err = %v after %d starts, want the limit refusal after 1", err, f.starts)
	}
	// With it, the start is retried until a slot frees up.
	f = &fakeMigrations{refuse: 3}
	out, stderr, err := runCLI(t, nil, "--server", serveFake(t, f), "migrate", "web", "--to", "h2", "--wait-limits", "1m")
	if err != nil || f.starts != 4 || !strings.Contains(out, "migration mig-1a2b3c4d started") || !strings.Contains(stderr, "waiting up to 1m0s for a migration slot") {
		t.Fatalf("err = %v after %d starts, out %q, stderr %q; want started on the 4th after saying it waits", err, f.starts, out, stderr)
	}
	// --ignore-limits reaches the server as the option.
	f = &fakeMigrations{}
	if _, _, err := runCLI(t, nil, "--server", serveFake(t, f), "migrate", "web", "--to", "h2", "--ignore-limits"); err != nil || !f.req.GetOptions().GetIgnoreLimits() {
		t.Fatalf("err = %v, request %v: want ignore_limits set", err, f.req)
	}
}
