package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Item statuses of an evacuation, all reported (0 when none) so a
// dashboard's series do not vanish.
var evacItemStatuses = []string{"pending", "migrating", "completed", "failed", "unplaced", "cancelled"}

// Health verdicts of a host (ferry_host_health is 1 for its own, 0 for the
// others).
var healthVerdicts = []string{"healthy", "degraded", "failed", "unreachable"}

var (
	hostHealthDesc  = prometheus.NewDesc("ferry_host_health", "1 for a host's health verdict (healthy, degraded, failed by its agent's checks; unreachable when its lease expired), 0 for the others.", []string{"host", "health"}, nil)
	hostMaintDesc   = prometheus.NewDesc("ferry_host_maintenance", "1 while a host is in maintenance (has an evacuation record), else 0.", []string{"host"}, nil)
	evacVMsDesc     = prometheus.NewDesc("ferry_evacuation_vms", "VMs of a host's evacuation by status (their sum: the VMs planned; completed: done; failed and unplaced: failed).", []string{"host", "status"}, nil)
	evacRunningDesc = prometheus.NewDesc("ferry_evacuation_running", "1 while a host's evacuation runs (running or cancelling), else 0.", []string{"host", "reason"}, nil)
	evacETADesc     = prometheus.NewDesc("ferry_evacuation_predicted_eta_seconds", "The plan's predicted duration of a host's evacuation.", []string{"host"}, nil)
	evacElapsedDesc = prometheus.NewDesc("ferry_evacuation_elapsed_seconds", "Time a host's evacuation has run (so far, or in all once ended).", []string{"host"}, nil)
	balRecsDesc     = prometheus.NewDesc("ferry_balancer_recommendations", "Migrations the balancer's last plan recommends.", nil, nil)
	balImbDesc      = prometheus.NewDesc("ferry_balancer_imbalance", "The cluster's load imbalance (0..1) before the balancer's last plan and predicted after it.", []string{"when"}, nil)
	balActiveDesc   = prometheus.NewDesc("ferry_balancer_active", "1 while the balancer's hysteresis keeps it acting, else 0.", nil, nil)
)

// fleetCollector reports host health and maintenance, evacuation progress
// and the balancer's recommendations at scrape time.
type fleetCollector struct{ s *Server }

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{hostHealthDesc, hostMaintDesc, evacVMsDesc, evacRunningDesc, evacETADesc, evacElapsedDesc, balRecsDesc, balImbDesc, balActiveDesc} {
		ch <- d
	}
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	one := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	if hs, err := c.s.store.ListHosts(ctx); err == nil {
		for _, h := range hs {
			verdict := string(hostHealth(h))
			for _, v := range healthVerdicts {
				gauge(hostHealthDesc, one(v == verdict), h.Name, v)
			}
			gauge(hostMaintDesc, one(h.GetMaintenance()), h.Name)
		}
	}
	if evs, err := c.s.evacuations(ctx); err == nil {
		now := time.Now()
		for _, e := range evs {
			n := map[string]int{}
			for _, it := range e.GetItems() {
				n[it.GetStatus()]++
			}
			for _, st := range evacItemStatuses {
				gauge(evacVMsDesc, float64(n[st]), e.GetHost(), st)
			}
			gauge(evacRunningDesc, one(e.GetState() == "running" || e.GetState() == "cancelling"), e.GetHost(), e.GetReason())
			gauge(evacETADesc, float64(e.GetPredictedEtaMs())/1000, e.GetHost())
			elapsed := float64(e.GetMeasuredMs()) / 1000
			if (e.GetState() == "running" || e.GetState() == "cancelling") && e.GetStartedAt() != nil {
				elapsed = max(elapsed, now.Sub(e.GetStartedAt().AsTime()).Seconds())
			}
			gauge(evacElapsedDesc, elapsed, e.GetHost())
		}
	}
	if c.s.balancer != nil {
		if b := c.s.balancer.Recommendations(); b != nil {
			gauge(balRecsDesc, float64(len(b.GetProposals())))
			gauge(balImbDesc, b.GetImbalanceBefore(), "before")
			gauge(balImbDesc, b.GetImbalanceAfter(), "after")
			gauge(balActiveDesc, one(b.GetActive()))
		}
	}
}
