package qmp

import (
	"context"
	"os"
	"testing"
	"time"
)

// Scratch measurement (not committed).
func TestZZMeasure(t *testing.T) {
	if os.Getenv("ZZ") == "" {
		t.Skip()
	}
	g := "/work/main/build/guest/"
	src := startQEMU(t, "src", false, "-m", "1024", "-kernel", g+"vmlinuz", "-initrd", g+"initrd.img", "-append", "console=ttyS0 quiet ferry.dirty=256:0")
	time.Sleep(25 * time.Second)
	ctx := context.Background()
	run := func(name string, caps []CapabilityState, p MigrationParameters) {
		all := []CapabilityState{{CapMultifd, false}, {CapPostcopyRAM, false}, {CapPostcopyPreempt, false}}
		_ = src.mon.MigrateSetCapabilities(ctx, all)
		dst := startQEMU(t, "dst"+name, false, "-m", "1024", "-incoming", "defer")
		for _, vm := range []*qemuVM{src, dst} {
			if err := vm.mon.MigrateSetCapabilities(ctx, caps); err != nil {
				t.Logf("%s: %s caps: %v", name, vm.name, err)
				return
			}
			if err := vm.mon.MigrateSetParameters(ctx, p); err != nil {
				t.Logf("%s: %s params: %v", name, vm.name, err)
				return
			}
		}
		port := startIncoming(t, dst)
		if err := src.mon.Migrate(ctx, "tcp:127.0.0.1:"+port, MigrateOptions{}); err != nil {
			t.Logf("%s: migrate: %v", name, err)
			return
		}
		for {
			info, err := src.mon.QueryMigrate(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.CurrentStatus().Finished() {
				t.Logf("%s: %s total %d ms, transferred %d MiB, normal %d MiB, mbps %.0f", name, info.CurrentStatus(), Deref(info.TotalTime), info.RAM.Transferred>>20, (info.RAM.Normal*4096)>>20, info.RAM.Mbps)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = dst.mon.Run(ctx, "quit", nil, nil)
		_ = src.mon.Cont(ctx)
		time.Sleep(time.Second)
	}
	unl := Ptr[int64](1 << 40)
	mf := func(n int64) MigrationParameters {
		z := ZeroPageDetectionMultifd
		return MigrationParameters{MaxBandwidth: unl, MultifdChannels: Ptr(n), ZeroPageDetection: &z}
	}
	on := func(cs ...Capability) []CapabilityState {
		var out []CapabilityState
		for _, c := range cs {
			out = append(out, CapabilityState{Capability: c, State: true})
		}
		return out
	}
	for i := 0; i < 3; i++ {
		run("single", nil, MigrationParameters{MaxBandwidth: unl})
		run("multifd2", on(CapMultifd), mf(2))
		run("multifd4", on(CapMultifd), mf(4))
	}
	zstd := MultiFDCompressionZstd
	p := mf(2)
	p.MultifdCompression = &zstd
	p.MultifdZstdLevel = Ptr[int64](1)
	run("multifd2-zstd1", on(CapMultifd), p)
	run("single-48", nil, MigrationParameters{MaxBandwidth: Ptr[int64](48 << 20)})
	run("multifd2-48", on(CapMultifd), func() MigrationParameters { p := mf(2); p.MaxBandwidth = Ptr[int64](48 << 20); return p }())
}
