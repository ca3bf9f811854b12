//go:build linux

// Package agent wires the guest's services together and serves /status.
package agent

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/guest/internal/cmdline"
	"github.com/ferryvm/ferry/guest/internal/dirtier"
	"github.com/ferryvm/ferry/guest/internal/diskwriter"
	"github.com/ferryvm/ferry/guest/internal/stream"
)

// Agent is the running guest.
type Agent struct {
	BootID    [16]byte
	BootIDHex string
	Kernel    string
	Cmdline   string
	Config    cmdline.Config

	Stream  *stream.Server
	Dirtier *dirtier.Dirtier
	Disk    *diskwriter.Writer

	// Uptime returns the time since boot.
	Uptime func() time.Duration

	// StopKernel stops the guest's kernel (POST /stop-kernel); nil when
	// the guest cannot (not PID 1). Console receives the stop line and Logf
	// the rest (defaults: stdout, nothing).
	StopKernel func() error
	Console    io.Writer
	Logf       func(format string, args ...any)

	mu     sync.Mutex
	netErr string
	stop   *stopArm
}

func (a *Agent) console() io.Writer {
	if a.Console != nil {
		return a.Console
	}
	return os.Stdout
}

func (a *Agent) logf(format string, args ...any) {
	if a.Logf != nil {
		a.Logf(format, args...)
	}
}

// NewBootID returns a random 16-byte boot id.
func NewBootID() ([16]byte, error) {
	var id [16]byte
	_, err := rand.Read(id[:])
	return id, err
}

// New builds an agent (nothing is started) for a parsed command line. dirt
// may be an already running dirtier for cfg; nil creates one.
func New(bootID [16]byte, cmd string, cfg cmdline.Config, dirt *dirtier.Dirtier, diskDev string, uptime func() time.Duration) *Agent {
	if dirt == nil {
		dirt = dirtier.New(cfg.WSSMiB, cfg.RateMiBps)
	}
	a := &Agent{
		BootID:    bootID,
		BootIDHex: hex.EncodeToString(bootID[:]),
		Cmdline:   cmd,
		Config:    cfg,
		Stream:    stream.New(guestapi.StreamInterval),
		Dirtier:   dirt,
		Disk:      diskwriter.New(diskDev, cfg.DiskKiBps, bootID),
		Uptime:    uptime,
	}
	a.Disk.Uptime = uptime
	return a
}

// SetNetError records a network configuration failure for /status.
func (a *Agent) SetNetError(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		a.netErr = ""
	} else {
		a.netErr = err.Error()
	}
}

// Status returns the current status document.
func (a *Agent) Status() guestapi.Status {
	now := time.Now()
	a.mu.Lock()
	netErr := a.netErr
	a.mu.Unlock()
	st := guestapi.Status{
		BootID:            a.BootIDHex,
		UptimeS:           a.Uptime().Seconds(),
		Kernel:            a.Kernel,
		Cmdline:           a.Cmdline,
		ConfigErrors:      a.Config.Errors,
		NetError:          netErr,
		StreamClients:     a.Stream.Clients(),
		StreamConnections: a.Stream.Total(),
	}
	if a.Config.IP.IsValid() {
		st.IP = a.Config.IP.String()
	}
	if a.Config.Gateway.IsValid() {
		st.Gateway = a.Config.Gateway.String()
	}
	d := a.Dirtier.Stats(now)
	st.WSSMiB, st.RateMiBps = d.WSSMiB, d.RateMiBps
	st.DirtyState, st.DirtyError = d.State, d.Error
	st.PagesDirtied, st.PagesSkipped, st.DirtyPasses = d.PagesDirtied, d.PagesSkipped, d.Passes
	st.DirtyElapsedS, st.AchievedMiBps, st.FillS = d.Elapsed.Seconds(), d.AchievedMiBps, d.Fill.Seconds()

	w := a.Disk.Stats(now)
	st.DiskRateKiBps, st.DiskState = w.RateKiBps, w.State
	if w.RateKiBps > 0 {
		st.DiskDevice = w.Device
	}
	st.DiskRecords, st.LastSeq, st.DiskSkipped = w.Records, w.LastSeq, w.Skipped
	st.DiskWriteErrors, st.DiskError, st.DiskAchievedKiBs = w.WriteErrors, w.Error, w.AchievedKiBps
	return st
}

// Handler serves GET /status, POST /stop-kernel (and a short index on /).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		b, err := json.MarshalIndent(a.Status(), "", "  ")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(append(b, '\n'))
	})
	mux.HandleFunc("GET "+guestapi.VerifyPath, func(w http.ResponseWriter, r *http.Request) {
		b, err := json.MarshalIndent(a.Disk.Verify(), "", "  ")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(append(b, '\n'))
	})
	mux.HandleFunc("POST /stop-kernel", a.stopKernelHandler)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "ferry-guest boot_id=%s\nGET /status  JSON status\nGET /verify  disk records read back\nPOST /stop-kernel?delay_ms=N|on=guest-agent  stop the kernel\nTCP %d      counter stream\n", a.BootIDHex, guestapi.StreamPort)
	})
	return mux
}
