package server

import (
	"net/http"
	"sync"

	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// agentPool caches one AgentService client per agent address.
type agentPool struct {
	mu      sync.Mutex
	clients map[string]ferryv1connect.AgentServiceClient
}

func newAgentPool() *agentPool {
	return &agentPool{clients: map[string]ferryv1connect.AgentServiceClient{}}
}

func (p *agentPool) get(addr string) ferryv1connect.AgentServiceClient {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[addr]; ok {
		return c
	}
	var hc *http.Client
	hc, base := rpcaddr.Client(addr)
	c := ferryv1connect.NewAgentServiceClient(hc, base)
	p.clients[addr] = c
	return c
}
