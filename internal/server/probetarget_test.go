package server

import (
	"testing"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

func TestProbeTargetOnlyRegisteredMigrationAddress(t *testing.T) {
	dst := &ferryv1.Host{Name: "h2", MigrationIp: "198.18.0.2"}
	if err := probeTarget("198.18.0.2:40000", dst); err != nil {
		t.Fatalf("registered address refused: %v", err)
	}
	for _, addr := range []string{"10.0.0.1:22", "127.0.0.1:40000", "h2:40000", "198.18.0.2"} {
		if err := probeTarget(addr, dst); err == nil {
			t.Errorf("probeTarget(%q) accepted; only %s's migration address may be probed", addr, dst.Name)
		}
	}
	if err := probeTarget("198.18.0.2:1", &ferryv1.Host{Name: "h3"}); err == nil {
		t.Error("a host without a migration address was probed")
	}
}
