package server

import (
	"github.com/ferryvm/ferry/gen/ferry/agent/v1/agentv1connect"
	"sync"

	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// agentClients are the services one agent serves.
type agentClients struct {
	agentv1connect.AgentServiceClient
	mig  agentv1connect.MigrationAgentServiceClient
	disk agentv1connect.DiskAgentServiceClient
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
		AgentServiceClient: agentv1connect.NewAgentServiceClient(hc, base),
		mig:                agentv1connect.NewMigrationAgentServiceClient(hc, base),
		disk:               agentv1connect.NewDiskAgentServiceClient(hc, base),
	}
	p.clients[addr] = c
	return c
}
