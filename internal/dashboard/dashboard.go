// Package dashboard is the web dashboard `ferry server` serves at /ui/:
// the page and its script and style (plain files embedded in the binary,
// no build step), and its data: a snapshot of hosts, VMs, live and
// finished migrations and recent events (/ui/api/snapshot), the same as a
// server-sent event stream, one snapshot a second (/ui/api/stream), and a
// migration's plot as SVG (/ui/api/plot?id=ID). The page asks for a token
// and sends it with every call; the server's authentication middleware
// guards the data (viewer role) and the actions the page takes through the
// API itself (Migrate: operator role).
package dashboard

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"regexp"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migplot"
	"github.com/ferryvm/ferry/internal/svgplot"
)

//go:embed static
var static embed.FS

// ErrNotFound is wrapped by a Source's error for an unknown migration.
var ErrNotFound = errors.New("not found")

// Source reads the cluster state the dashboard shows.
type Source interface {
	// Input returns hosts, VMs, migrations (without samples) and the
	// recent events (oldest first).
	Input(ctx context.Context) (Input, error)
	// Migration returns one migration with its samples (ErrNotFound).
	Migration(ctx context.Context, id string) (*ferryv1.Migration, error)
}

// Config configures a Handler.
type Config struct {
	Source Source
	Log    *slog.Logger
	// Interval is the stream's period (default DefaultInterval).
	Interval time.Duration
	// MaxStream ends a stream after this long; the page reconnects
	// (default DefaultMaxStream).
	MaxStream time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Defaults of Config.
const (
	DefaultInterval  = time.Second
	DefaultMaxStream = time.Hour
	// readTimeout bounds one read of the cluster state.
	readTimeout = 5 * time.Second
)

// Handler serves the dashboard under /ui/.
type Handler struct {
	cfg Config
	mux *http.ServeMux
}

// New returns the dashboard's handler; mount it at "/ui/" (and "/ui").
func New(cfg Config) *Handler {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.MaxStream <= 0 {
		cfg.MaxStream = DefaultMaxStream
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Handler{cfg: cfg, mux: http.NewServeMux()}
	assets, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	h.mux.Handle("GET /ui/assets/", http.StripPrefix("/ui/", http.FileServerFS(assets)))
	h.mux.HandleFunc("GET /ui/{$}", func(w http.ResponseWriter, r *http.Request) {
		b, _ := fs.ReadFile(assets, "index.html")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(b))
	})
	h.mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/", http.StatusMovedPermanently) })
	h.mux.HandleFunc("GET /ui/api/snapshot", h.snapshot)
	h.mux.HandleFunc("GET /ui/api/stream", h.stream)
	h.mux.HandleFunc("GET /ui/api/plot", h.plot)
	return h
}

// ServeHTTP implements http.Handler, with headers that keep the page to
// its own script and data.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cache-Control", "no-store")
	h.mux.ServeHTTP(w, r)
}

// read builds the snapshot now.
func (h *Handler) read(ctx context.Context) (Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	in, err := h.cfg.Source.Input(ctx)
	if err != nil {
		return Snapshot{}, fmt.Errorf("dashboard: read the cluster state: %w", err)
	}
	return Build(in, h.cfg.Now()), nil
}

func (h *Handler) snapshot(w http.ResponseWriter, r *http.Request) {
	s, err := h.read(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(s); err != nil {
		h.cfg.Log.Debug("dashboard: write snapshot", "err", err)
	}
}

// stream sends a snapshot at once and then every Interval as server-sent
// events ("snapshot"; "error" when a read failed, the stream goes on)
// until the client leaves or MaxStream passed.
func (h *Handler) stream(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.MaxStream)
	defer cancel()
	if _, err := fmt.Fprintf(w, "retry: 2000\n\n"); err != nil {
		return
	}
	tick := time.NewTicker(h.cfg.Interval)
	defer tick.Stop()
	for {
		event, data := "snapshot", []byte(nil)
		s, err := h.read(ctx)
		if err == nil {
			data, err = json.Marshal(s)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			event, data = "error", mustJSON(map[string]string{"error": err.Error()})
		}
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of strings
	}
	return b
}

var migrationIDRE = regexp.MustCompile(`^[a-z0-9][-a-z0-9]{0,63}$`)

func (h *Handler) plot(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	if !migrationIDRE.MatchString(id) {
		http.Error(w, fmt.Sprintf("id: a migration id (mig-...) is required, got %q", id), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	m, err := h.cfg.Source.Migration(ctx, id)
	if err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, ErrNotFound) {
			code = http.StatusNotFound
		}
		http.Error(w, fmt.Sprintf("migration %s: %v", id, err), code)
		return
	}
	c, err := migplot.Chart(m)
	if err != nil {
		http.Error(w, fmt.Sprintf("migration %s: %v", id, err), http.StatusNotFound)
		return
	}
	var b bytes.Buffer
	if err := svgplot.Write(&b, c); err != nil {
		http.Error(w, fmt.Sprintf("plot %s: %v", id, err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "image/svg+xml")
	_, _ = w.Write(b.Bytes())
}
