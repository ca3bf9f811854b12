package server

import (
	"sync"

	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// agentClients are the services one agent serves.
type agentClients struct {
	ferryv1connect.AgentServiceClient
	mig ferryv1connect.MigrationAgentServiceClient
}

// agentPool caches the clients of each agent address.
type agentPool struct {
	mu      sync.Mutex
	clients map[string]*agentClients
}

func newAgentPool() *agentPool {
	return &agentPool{clients: map[string]*agentClients{}}
}

func (p *agentPool) get(addr string) *agentClients {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[addr]; ok {
		return c
	}
	hc, base := rpcaddr.Client(addr)
	c := &agentClients{
		AgentServiceClient: ferryv1connect.NewAgentServiceClient(hc, base),
		mig:                ferryv1connect.NewMigrationAgentServiceClient(hc, base),
	}
	p.clients[addr] = c
	return c
}
