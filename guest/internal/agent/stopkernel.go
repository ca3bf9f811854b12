//go:build linux

package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/ferryvm/ferry/guest/guestapi"
)

// maxStopDelay bounds POST /stop-kernel's delay_ms.
const maxStopDelay = 10 * time.Minute

// stopArm is a pending request to stop the kernel.
type stopArm struct {
	onGuestAgent bool      // at the next guest agent command
	at           time.Time // when asked
}

// stopKernelHandler serves POST /stop-kernel: delay_ms after its reply
// (guest time, at least replyLead; it stands still while the VM is
// paused) or, with on=guest-agent, at the next command on the guest agent
// channel (before it is answered), the
// guest logs guestapi.StopKernelLine on the console and stops its kernel
// (a.StopKernel: a sysrq crash with panic=0, so it hangs and answers
// nothing any more).
func (a *Agent) stopKernelHandler(w http.ResponseWriter, r *http.Request) {
	if a.StopKernel == nil {
		http.Error(w, "this guest cannot stop its kernel (not PID 1)", http.StatusNotImplemented)
		return
	}
	q := r.URL.Query()
	var delay time.Duration
	if s := q.Get("delay_ms"); s != "" {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err != nil || ms < 0 || time.Duration(ms)*time.Millisecond > maxStopDelay {
			http.Error(w, fmt.Sprintf("delay_ms: must be 0..%d, got %q", maxStopDelay.Milliseconds(), s), http.StatusBadRequest)
			return
		}
		delay = time.Duration(ms) * time.Millisecond
	}
	on := q.Get("on")
	if on != "" && on != "guest-agent" {
		http.Error(w, fmt.Sprintf("on: must be guest-agent (or absent), got %q", on), http.StatusBadRequest)
		return
	}
	resp := map[string]any{"boot_id": a.BootIDHex}
	if on == "guest-agent" {
		a.mu.Lock()
		a.stop = &stopArm{onGuestAgent: true, at: time.Now()}
		a.mu.Unlock()
		resp["stop"] = "at the next guest agent command"
		a.logf("stop-kernel armed: at the next guest agent command")
	} else {
		resp["stop"] = fmt.Sprintf("in %v", delay)
		a.logf("stop-kernel armed: in %v", delay)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(resp)
	if on == "guest-agent" {
		return
	}
	// The clock starts once the reply is on its way, and never runs out
	// before replyLead: a stop scheduled before the reply was written (CI:
	// delay_ms=0) crashed the kernel with the 202 still in the guest, and
	// the caller timed out instead of seeing it accepted.
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	time.AfterFunc(max(delay, replyLead), func() { a.stopNow(fmt.Sprintf("%v after the request", delay)) })
}

// replyLead is the least time between POST /stop-kernel's reply and the
// stop: enough for the guest's NIC to send the reply.
const replyLead = 200 * time.Millisecond

// GuestAgentCommand is called before each guest agent command is answered:
// an armed on=guest-agent stop happens now, so the command gets no answer.
func (a *Agent) GuestAgentCommand(cmd string) {
	a.mu.Lock()
	arm := a.stop
	a.mu.Unlock()
	if arm != nil && arm.onGuestAgent {
		a.stopNow(fmt.Sprintf("guest agent command %s (armed %v ago)", cmd, time.Since(arm.at).Round(time.Millisecond)))
	}
}

// stopNow logs the stop line and stops the kernel; it returns only if that
// failed (or StopKernel is a test's fake).
func (a *Agent) stopNow(why string) {
	fmt.Fprintf(a.console(), "%s%s\n", guestapi.StopKernelLine, why)
	if err := a.StopKernel(); err != nil {
		a.logf("stop-kernel: %v", err)
	}
}
