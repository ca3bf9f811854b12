package sim

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/ferryvm/ferry/internal/migration/core"
)

// Interp runs script commands against a World (the scripts in
// internal/migration/core/testdata). Each command returns its output.
//
//	start <strategy> [stopped] [disks]  a new world; the VM runs (or is stopped) on h1 (disks: with a local disk)
//	run [for=<duration>]            run to the end (or for a while); prints the trace since the last print
//	deliver [n=<events>]            process the next event(s) only
//	crash server [manual] [at=<action>] [for=<duration>]   (manual: stays down until restart)
//	crash agent src|dst [manual] [at=<action>] [for=<duration>]
//	restart server | restart agent src|dst
//	hand over [at=<action>]         the leading server resigns (handover), the next one adopts
//	kill qemu src|dst [at=<action>]
//	drop request|reply [at=<action>]   (default: the next action)
//	cut src|dst [at=<action>] [for=<duration>]
//	link down [at=<action>] [for=<duration>]
//	stuck [at=<action>]             the next resume of a post-copy hangs (neither connects nor gives up) until the source is paused
//	fail store [at=<action>]
//	cancel [at=<action>]
//	corrupt copy [at=<action>]      the cold disk copy arrives corrupted: the destination's checksum differs
//	state                           the record's state, facts and the world
//	history                         the stored record's history (state and message of each event)
//
// at=<action> arms the fault for the next action whose name starts with it
// (e.g. at=FinishIncoming, at=CASOwner(h2)); in=<state> for the first action
// the engine performs in that state; without either it happens now (drop:
// on the next action).
type Interp struct {
	W       *World
	printed int
	armed   []armed
}

type armed struct {
	state  core.State // or: the first action while the engine is in this state
	prefix string
	fn     func(a core.Action) Disposition
}

// Do runs one command.
func (in *Interp) Do(cmd string, args []string) (string, error) {
	kv := map[string]string{}
	var pos []string
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			kv[k] = v
		} else {
			pos = append(pos, a)
		}
	}
	dur := func(def time.Duration) (time.Duration, error) {
		if s, ok := kv["for"]; ok {
			return time.ParseDuration(s)
		}
		return def, nil
	}
	side := func() (core.Side, error) {
		if len(pos) < 1 {
			return 0, fmt.Errorf("%s: want src or dst", cmd)
		}
		switch pos[len(pos)-1] {
		case "src":
			return core.Src, nil
		case "dst":
			return core.Dst, nil
		}
		return 0, fmt.Errorf("%s: want src or dst, got %q", cmd, pos[len(pos)-1])
	}
	if cmd != "start" && in.W == nil {
		return "", fmt.Errorf("%s before start", cmd)
	}
	// now or at the next matching action
	schedule := func(fn func(a core.Action) Disposition) string {
		if st, ok := kv["in"]; ok {
			in.armed = append(in.armed, armed{state: core.State(st), fn: fn})
			return "armed in " + st
		}
		if p, ok := kv["at"]; ok {
			in.armed = append(in.armed, armed{prefix: p, fn: fn})
			return "armed at " + p
		}
		fn(core.Action{})
		return "ok"
	}
	switch cmd {
	case "start":
		if len(pos) < 1 {
			return "", fmt.Errorf("start: want a strategy")
		}
		s, err := core.ParseStrategy(pos[0])
		if err != nil {
			return "", err
		}
		prev := core.VMRunning
		if len(pos) > 1 && pos[1] == "stopped" {
			prev = core.VMStopped
		}
		in.W = NewWorld(s, prev, 1)
		for _, p := range pos[1:] {
			if p == "disks" {
				in.W.WithLocalDisks()
			}
		}
		in.printed, in.armed = 0, nil
		in.W.Hook = in.hook
		in.W.Start()
		return "ok", nil
	case "run":
		if d, ok := kv["for"]; ok {
			dd, err := time.ParseDuration(d)
			if err != nil {
				return "", err
			}
			in.W.RunFor(dd)
			return strings.TrimSuffix(in.flush(), "\n"), nil
		}
		in.W.Run()
		in.W.CheckEnd()
		out := in.flush() + "end: " + in.W.Summary() + "\n"
		if v := dedup(in.W.Violations); len(v) > 0 {
			out += "violations:\n  " + strings.Join(v, "\n  ") + "\n"
		} else {
			out += "violations: none\n"
		}
		return strings.TrimSuffix(out, "\n"), nil
	case "restart":
		if len(pos) > 0 && pos[0] == "server" {
			in.W.RestartServer()
			return strings.TrimSuffix(in.flush(), "\n"), nil
		}
		s, err := side()
		if err != nil {
			return "", err
		}
		in.W.RestartAgent(s)
		return strings.TrimSuffix(in.flush(), "\n"), nil
	case "deliver":
		n := 1
		if v, ok := kv["n"]; ok {
			if _, err := fmt.Sscan(v, &n); err != nil {
				return "", fmt.Errorf("deliver: n: %w", err)
			}
		}
		in.W.Events(n)
		return strings.TrimSuffix(in.flush(), "\n"), nil
	case "crash":
		d, err := dur(0)
		if err != nil {
			return "", err
		}
		manual := len(pos) > 0 && pos[len(pos)-1] == "manual"
		if manual {
			pos = pos[:len(pos)-1]
			d = -1
		}
		if len(pos) > 0 && pos[0] == "server" {
			if d == 0 {
				d = ServerDown
			}
			return schedule(func(core.Action) Disposition {
				in.W.logf("FAULT crash server")
				if d < 0 {
					in.W.serverUp = false
					in.W.epoch++
					return DispDrop
				}
				in.W.CrashServer(d)
				return DispDrop
			}), nil
		}
		s, err := side()
		if err != nil {
			return "", err
		}
		if d == 0 {
			d = AgentDown
		}
		return schedule(func(core.Action) Disposition {
			in.W.logf("FAULT crash agent %s", s)
			in.W.CrashAgent(s, max(d, 0))
			return DispDeliver
		}), nil
	case "kill":
		s, err := side()
		if err != nil {
			return "", err
		}
		return schedule(func(core.Action) Disposition {
			in.W.logf("FAULT kill qemu %s", s)
			in.W.KillQEMU(s)
			return DispDeliver
		}), nil
	case "drop":
		if len(pos) < 1 || (pos[0] != "request" && pos[0] != "reply") {
			return "", fmt.Errorf("drop: want request or reply")
		}
		disp := DispLoseRequest
		if pos[0] == "reply" {
			disp = DispLoseReply
		}
		if _, ok := kv["at"]; !ok && kv["in"] == "" {
			kv["at"] = ""
		}
		what := pos[0]
		return schedule(func(a core.Action) Disposition {
			in.W.logf("FAULT drop %s", what)
			if a.Kind.IsStore() && disp == DispLoseRequest {
				return DispStoreFailure
			}
			return disp
		}), nil
	case "cut":
		s, err := side()
		if err != nil {
			return "", err
		}
		d, err := dur(CutFor)
		if err != nil {
			return "", err
		}
		return schedule(func(core.Action) Disposition {
			in.W.logf("FAULT cut server-%s for %s", s, d)
			in.W.Cut(s, d)
			return DispDeliver
		}), nil
	case "link":
		d, err := dur(LinkDownFor)
		if err != nil {
			return "", err
		}
		return schedule(func(core.Action) Disposition {
			in.W.logf("FAULT link down for %s", d)
			in.W.linkUntil = in.W.Clock.now.Add(d)
			return DispDeliver
		}), nil
	case "stuck":
		return schedule(func(core.Action) Disposition {
			in.W.logf("FAULT the next resume hangs until the source is paused")
			in.W.stuckResume = true
			return DispDeliver
		}), nil
	case "fail":
		return schedule(func(core.Action) Disposition {
			in.W.logf("FAULT store write fails")
			in.W.Store.failNext = true
			return DispDeliver
		}), nil
	case "corrupt":
		return schedule(func(core.Action) Disposition {
			in.W.logf("FAULT the disk copy is corrupted on its way")
			in.W.corruptCopy = true
			return DispDeliver
		}), nil
	case "cancel":
		return schedule(func(core.Action) Disposition {
			in.W.logf("FAULT user cancels")
			w, epoch := in.W, in.W.epoch
			w.after(0, func() { w.deliverIf(epoch, core.Observation{Kind: core.ObsCancel}) })
			return DispDeliver
		}), nil
	case "hand":
		return schedule(func(core.Action) Disposition {
			in.W.logf("FAULT the leader hands over")
			in.W.HandOver()
			return DispDeliver
		}), nil
	case "history":
		var b strings.Builder
		for _, e := range in.W.Record().History {
			fmt.Fprintf(&b, "%7.3fs %s: %s\n", e.At.Sub(in.W.rec.StartedAt).Seconds(), e.State, e.Message)
		}
		return strings.TrimSuffix(b.String(), "\n"), nil
	case "state":
		r := in.W.Record()
		return fmt.Sprintf("state %s facts [%s]\n%s", r.State, facts(r.Facts), in.W.Summary()), nil
	}
	return "", fmt.Errorf("unknown command %q", cmd)
}

func (in *Interp) hook(w *World, k int, a core.Action) Disposition {
	for i, ar := range in.armed {
		if ar.state != "" && w.rec.State == ar.state || ar.state == "" && strings.HasPrefix(a.String(), ar.prefix) {
			in.armed = append(in.armed[:i], in.armed[i+1:]...)
			return ar.fn(a)
		}
	}
	return DispDeliver
}

func (in *Interp) flush() string {
	var b strings.Builder
	for _, t := range in.W.Trace[in.printed:] {
		b.WriteString(t)
		b.WriteByte('\n')
	}
	in.printed = len(in.W.Trace)
	return b.String()
}

// facts lists the facts that are set.
func facts(f core.Facts) string {
	v := reflect.ValueOf(f)
	var out []string
	for i := 0; i < v.NumField(); i++ {
		if v.Field(i).Bool() {
			out = append(out, v.Type().Field(i).Name)
		}
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}
