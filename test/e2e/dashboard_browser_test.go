package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browserBinary finds a headless Chromium: $FERRY_CHROMIUM, else Debian's
// chromium-headless-shell or chromium (hack/deps.sh installs the first).
func browserBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("FERRY_CHROMIUM"); p != "" {
		return p
	}
	for _, n := range []string{"chromium-headless-shell", "chromium", "chromium-browser"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	t.Fatal("no headless Chromium: apt-get install chromium-headless-shell (hack/deps.sh does), or set FERRY_CHROMIUM")
	return ""
}

// artifactDir is where a test keeps what a person looks at afterwards:
// $FERRY_ARTIFACTS, else ferry-e2e-artifacts in the temporary directory.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("FERRY_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "ferry-e2e-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tcpRelay listens on a loopback TCP port and relays each connection to
// the unix socket at path (a browser dials no unix socket; TLS passes
// through unchanged). It returns the address; t.Cleanup stops it.
func tcpRelay(t *testing.T, path string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.DialTimeout("unix", path, 5*time.Second)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(u, c); done <- struct{}{} }()
				go func() { io.Copy(c, u); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return l.Addr().String()
}

// TestDashboardInBrowser: a headless Chromium opens the dashboard of a
// live dev cluster, logs in with an operator token, starts a migration
// with the VM row's Migrate button (strategy and a bandwidth cap chosen,
// the dry run's plan shown and confirmed), sees the live progress bar
// advance, the finished report appear with the VM on its new host, opens
// its plot; then puts that host in maintenance from its row (the dry run's
// ETA and plan confirmed), sees it drain (the VM moves back, the
// evacuation's per-VM progress), and checks a viewer token gets disabled
// controls. Screenshots are kept in ferry-e2e-artifacts.
func TestDashboardInBrowser(t *testing.T) {
	bin := browserBinary(t)
	c := upCluster(t, 2)
	const name, ip = "browse", "198.19.0.93"
	c.bootGuest(name, ip, "")
	token := strings.TrimSpace(c.mustFerry("token", "create", "--role", "operator"))
	addr := tcpRelay(t, strings.TrimPrefix(c.c.ServerURL(), "unix://"))

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.NoSandbox,
		// The server's certificate is the cluster CA's, for its service
		// name, not 127.0.0.1: this throwaway browser does not check it
		// (the HTTP test pins the CA).
		chromedp.IgnoreCertErrors,
		chromedp.WindowSize(1400, 1800),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(bctx, 4*time.Minute)
	defer cancel()
	do := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			shot(t, ctx, "dashboard-failed.png")
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			shot(t, ctx, "dashboard-failed.png")
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	eval := func(expr string) float64 {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[float64](expr))
		if err != nil {
			shot(t, ctx, "dashboard-failed.png")
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	poll := func(what, expr string) {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(60*time.Second))); err != nil {
			shot(t, ctx, "dashboard-failed.png")
			t.Fatalf("%s (%s): %v", what, expr, err)
		}
	}

	row := `tr[data-vm="` + name + `"]`
	do("open /ui/ and log in",
		chromedp.Navigate("https://"+addr+"/ui/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.CSS(`#login-form button`)),
		chromedp.WaitVisible(chromedp.CSS(row+` button.migrate:enabled`)),
	)
	if who := text("#who"); !strings.Contains(who, "operator") {
		t.Errorf("logged in as %q, want the operator token", who)
	}
	if n := eval(`document.querySelectorAll("#hosts tbody tr[data-host]").length`); n != 2 {
		t.Errorf("%v host rows, want 2", n)
	}

	do("plan the migration",
		chromedp.SetValue(chromedp.CSS(row+` select[aria-label^="strategy"]`), "precopy"),
		chromedp.SendKeys(chromedp.CSS(row+` input.cap`), "8"),
		chromedp.Click(chromedp.CSS(row+` button.migrate`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm-go:enabled`)),
	)
	if plan := text("#confirm-plan"); !strings.Contains(plan, "The planner chooses") || !strings.Contains(plan, "precopy") {
		t.Errorf("the dialog's plan %q lacks the dry run's choice", plan)
	}
	do("confirm", chromedp.Click(chromedp.ID("confirm-go")))

	// The live progress bar: distinct values strictly between 0 and 1.
	var seen []float64
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		v := eval(`(document.querySelector("#live progress") || {value: -1}).value`)
		if v > 0 && v < 1 && (len(seen) == 0 || v != seen[len(seen)-1]) {
			seen = append(seen, v)
			if len(seen) == 2 {
				shot(t, ctx, "dashboard-live.png")
			}
		}
		if eval(`document.querySelectorAll("#finished tr.completed").length`) > 0 {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("progress bar values seen: %v", seen)
	if len(seen) < 2 {
		t.Errorf("the progress bar showed %d distinct values between 0 and 1 (%v), want it advancing", len(seen), seen)
	}
	do("open the finished report's plot",
		chromedp.WaitVisible(chromedp.CSS(`#finished tr.completed button`)),
		chromedp.Click(chromedp.CSS(`#finished tr.completed button`)),
		chromedp.WaitVisible(chromedp.ID("report")),
	)
	poll("the plot drawn", `document.querySelector("#report-plot").naturalWidth > 0`)
	poll("the VM on h2", `document.querySelector('`+row+` td:nth-child(2)').textContent === "h2"`)
	poll("the completion among the events", `[...document.querySelectorAll("#events tbody tr")].some(r => r.textContent.includes("→ completed"))`)
	if report := text(`#finished tr.completed`); !strings.Contains(report, name) || !strings.Contains(report, "h1 → h2") || !strings.Contains(report, " ms") {
		t.Errorf("finished row %q: want the VM, its route and the times", report)
	}
	shot(t, ctx, "dashboard-finished.png")

	// Maintenance from the UI: h2's button shows the evacuation's dry run
	// (its ETA and plan) first; confirmed, h2 drains (the VM moves back to
	// h1) and the evacuation shows its per-VM progress.
	h2 := `tr[data-host="h2"]`
	do("plan h2's maintenance",
		chromedp.WaitVisible(chromedp.CSS(h2+` button.maint-enter:enabled`)),
		chromedp.Click(chromedp.CSS(h2+` button.maint-enter`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm-go:enabled`)),
	)
	if plan := text("#confirm-plan"); !strings.Contains(plan, "Predicted ETA") || !strings.Contains(plan, name) {
		t.Errorf("the maintenance dialog %q lacks the dry run's ETA or its plan for %s", plan, name)
	}
	shot(t, ctx, "dashboard-maintenance-plan.png")
	do("confirm maintenance", chromedp.Click(chromedp.ID("confirm-go")))
	poll("h2 in maintenance", `document.querySelector('`+h2+` td:nth-child(8)').textContent.startsWith("in maintenance")`)
	evac := `#evacuations div[data-evacuation="h2"]`
	poll("h2's evacuation lists the VM", `!!document.querySelector('`+evac+` tr[data-vm="`+name+`"]')`)
	poll("the VM back on h1", `document.querySelector('`+row+` td:nth-child(2)').textContent === "h1"`)
	poll("the evacuation completed", `document.querySelector('`+evac+` tr[data-vm="`+name+`"] td:nth-child(4)').textContent === "completed"`)
	if got := text(evac); !strings.Contains(got, "1 / 1 moved") {
		t.Errorf("evacuation %q: want 1 / 1 moved", got)
	}
	poll("the evacuation's completion among the events", `[...document.querySelectorAll("#events tbody tr")].some(r => r.cells[1].textContent === "evacuation" && r.cells[2].textContent === "h2" && r.cells[3].textContent.endsWith("→ completed"))`)
	poll("h2 offers the exit", `!!document.querySelector('`+h2+` button.maint-exit:not([hidden]):enabled')`)
	shot(t, ctx, "dashboard-evacuated.png")

	// A viewer sees the controls disabled (the server refuses them anyway).
	viewer := strings.TrimSpace(c.mustFerry("token", "create", "--role", "viewer"))
	do("log in as a viewer",
		chromedp.Click(chromedp.ID("logout")),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SetValue(chromedp.ID("token"), viewer),
		chromedp.Click(chromedp.CSS(`#login-form button`)),
		chromedp.WaitVisible(chromedp.CSS(h2+` button.maint-exit:disabled`)),
	)
	if n := eval(`document.querySelectorAll("#hosts button:enabled, #vms button:enabled, #balance-now:enabled").length`); n != 0 {
		t.Errorf("a viewer sees %v enabled controls, want none", n)
	}
}

// shot keeps a full-page screenshot in the artifact directory.
func shot(t *testing.T, ctx context.Context, file string) {
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			t.Logf("screenshot %s: %v", file, err)
		}
		return
	}
	p := filepath.Join(artifactDir(t), file)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Error(err)
		return
	}
	t.Logf("screenshot %s (%d bytes)", p, len(png))
}
