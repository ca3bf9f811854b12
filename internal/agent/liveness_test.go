package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
)

// fakeGuestAgent serves the guest agent protocol on the VM's qga.sock (what
// QEMU's chardev plus a guest agent in the guest look like from the host);
// a silent one reads and never answers, like a stopped guest.
func fakeGuestAgent(t *testing.T, path string, silent bool) {
	t.Helper()
	l, err := net.Listen("unix", path)
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
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadBytes('\n')
					if err != nil {
						return
					}
					var cmd struct {
						Execute   string `json:"execute"`
						Arguments struct {
							ID int64 `json:"id"`
						} `json:"arguments"`
					}
					if silent || json.Unmarshal(bytes.TrimLeft(line, "\xff"), &cmd) != nil {
						continue
					}
					switch cmd.Execute {
					case "guest-sync-delimited":
						fmt.Fprintf(c, "\xff{\"return\": %d}\n", cmd.Arguments.ID)
					case "guest-ping":
						fmt.Fprint(c, "{\"return\": {}}\n")
					}
				}
			}(c)
		}
	}()
}

func checkAlive(t *testing.T, ta *testAgent, timeoutMs int64) *agentv1.CheckGuestAliveResponse {
	t.Helper()
	r, err := (&livenessService{ta.a}).CheckGuestAlive(testCtx(t), connect.NewRequest(&agentv1.CheckGuestAliveRequest{Name: "web", TimeoutMs: timeoutMs}))
	if err != nil {
		t.Fatalf("CheckGuestAlive: %v", err)
	}
	return r.Msg
}

func TestCheckGuestAlivePingsTheGuestAgent(t *testing.T) {
	ta := newTestAgent(t)
	sp := testSpec(t, "web")
	sp.GuestAgent = true
	must[agentv1.AgentStartVMResponse](t)(ta.svc.StartVM(testCtx(t), connect.NewRequest(&agentv1.AgentStartVMRequest{Spec: sp})))
	v, _ := ta.a.find("web")
	fakeGuestAgent(t, v.paths.GuestAgentSocket, false)
	if r := checkAlive(t, ta, 2000); !r.Alive || r.Method != "guest-ping" || r.AliveAfterMs < 1 {
		t.Fatalf("CheckGuestAlive = %+v, want alive by guest-ping", r)
	}
	// A restarted agent finds the channel again (the spec is on disk).
	ta = ta.restart()
	if r := checkAlive(t, ta, 2000); !r.Alive || r.Method != "guest-ping" {
		t.Fatalf("after an agent restart: CheckGuestAlive = %+v, want alive by guest-ping", r)
	}
}

func TestCheckGuestAliveSilentGuest(t *testing.T) {
	ta := newTestAgent(t)
	sp := testSpec(t, "web")
	sp.GuestAgent = true
	must[agentv1.AgentStartVMResponse](t)(ta.svc.StartVM(testCtx(t), connect.NewRequest(&agentv1.AgentStartVMRequest{Spec: sp})))
	v, _ := ta.a.find("web")
	fakeGuestAgent(t, v.paths.GuestAgentSocket, true)
	if r := checkAlive(t, ta, 300); r.Alive || r.AliveAfterMs != -1 || r.Method != "guest-ping" {
		t.Fatalf("CheckGuestAlive of a silent guest = %+v, want not alive, -1", r)
	}
	_, err := (&livenessService{ta.a}).CheckGuestAlive(testCtx(t), connect.NewRequest(&agentv1.CheckGuestAliveRequest{Name: "web", TimeoutMs: -5}))
	wantCode(t, err, connect.CodeInvalidArgument)
	_, err = (&livenessService{ta.a}).CheckGuestAlive(testCtx(t), connect.NewRequest(&agentv1.CheckGuestAliveRequest{Name: "nope"}))
	wantCode(t, err, connect.CodeNotFound)
}

func TestCheckGuestAliveUsesTheResumeProbe(t *testing.T) {
	for _, silent := range []bool{false, true} {
		ta := newTestAgent(t)
		sp := testSpec(t, "web")
		sp.GuestAgent = true
		must[agentv1.AgentStartVMResponse](t)(ta.svc.StartVM(testCtx(t), connect.NewRequest(&agentv1.AgentStartVMRequest{Spec: sp})))
		v, _ := ta.a.find("web")
		fakeGuestAgent(t, v.paths.GuestAgentSocket, silent)
		v.startAliveProbe("m1", time.Now().Add(-50*time.Millisecond)) // as markRan does at the RESUME
		r, err := (&livenessService{ta.a}).CheckGuestAlive(testCtx(t), connect.NewRequest(&agentv1.CheckGuestAliveRequest{Name: "web", MigrationId: "m1", TimeoutMs: 300}))
		if err != nil {
			t.Fatal(err)
		}
		switch m := r.Msg; {
		case !silent && (!m.Alive || m.AliveAfterMs < 50 || m.Method != "guest-ping"):
			t.Errorf("probe of an answering guest: %+v, want alive >= 50 ms after the resume", m)
		case silent && (m.Alive || m.AliveAfterMs != -1 || !strings.Contains(m.Detail, "probing since the resume")):
			t.Errorf("probe of a silent guest: %+v, want not alive", m)
		}
	}
}
