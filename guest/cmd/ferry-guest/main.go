//go:build linux

// Command ferry-guest is PID 1 (/init) of Ferry's test guest initramfs.
//
// As PID 1 it mounts /proc, /sys and /dev, loads the kernel modules listed
// in /etc/ferry/modules, configures eth0 from ferry.ip=, starts the memory
// dirtier (ferry.dirty=), the disk writer (ferry.disk=), the memory marker
// (ferry.marker=), the counter stream
// on TCP 7000, GET /status (and POST /stop-kernel) on TCP 8080 and the
// QEMU guest agent's ping on the org.qemu.guest_agent.0 port, then prints
// "FERRY-GUEST READY boot_id=<id>" on the console. It never exits.
//
// Run as an ordinary process (PID != 1) it skips the system setup and takes
// flags, which is handy for trying the services on a workstation:
//
//	go run ./guest/cmd/ferry-guest -cmdline 'ferry.dirty=64:16' -stream :7000 -http :8080
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/guest/internal/agent"
	"github.com/ferryvm/ferry/guest/internal/cmdline"
	"github.com/ferryvm/ferry/guest/internal/dirtier"
	"github.com/ferryvm/ferry/guest/internal/qga"
	"github.com/ferryvm/ferry/guest/internal/sysinit"
)

const (
	moduleList     = "/etc/ferry/modules"
	netIf          = "eth0"
	guestAgentPort = "org.qemu.guest_agent.0"
)

var logger = log.New(os.Stdout, guestapi.LogPrefix, 0)

func logf(format string, args ...any) { logger.Printf(format, args...) }

// marker holds the memory marker (ferry.marker=) for the guest's life.
var marker []byte

// placeMarker fills marker with guestapi.MarkerCopies copies of the
// seed's marker (resident: every page is written).
func placeMarker(seed string) {
	m := guestapi.Marker(seed)
	marker = make([]byte, len(m)*guestapi.MarkerCopies)
	for i := 0; i < len(marker); i += len(m) {
		copy(marker[i:], m)
	}
	logf("marker: %d copies of a %d-byte marker in RAM (%d KiB)", guestapi.MarkerCopies, len(m), len(marker)>>10)
}

func main() {
	pid1 := os.Getpid() == 1
	cmdFlag := ""
	streamAddr := fmt.Sprintf(":%d", guestapi.StreamPort)
	httpAddr := fmt.Sprintf(":%d", guestapi.HTTPPort)
	diskDev := "/dev/vda"
	if !pid1 {
		flag.StringVar(&cmdFlag, "cmdline", "", "kernel command line to use instead of /proc/cmdline")
		flag.StringVar(&streamAddr, "stream", streamAddr, "counter stream listen address")
		flag.StringVar(&httpAddr, "http", httpAddr, "status HTTP listen address")
		flag.StringVar(&diskDev, "disk", diskDev, "disk writer device")
		flag.Parse()
	}

	if pid1 {
		sysinit.IgnoreSignals()
		// Never let PID 1 exit: a panic in main is logged and we idle.
		defer func() {
			if r := recover(); r != nil {
				logf("PANIC in main: %v\n%s", r, debug.Stack())
			}
			idle()
		}()
		if err := sysinit.Mounts(); err != nil {
			logf("mounts: %v", err)
		}
		go safe("reaper", func() { sysinit.Reap(logf) })
	}
	kernel := sysinit.KernelRelease()
	logf("starting (pid %d, kernel %s, uptime %.2fs)", os.Getpid(), kernel, sysinit.Uptime().Seconds())

	// The kernel RNG may need a moment to initialise under emulation
	// (crypto/rand blocks in getrandom until it has); overlap that wait
	// with module loading and network setup.
	idCh := make(chan [16]byte, 1)
	go safe("boot-id", func() {
		t0 := time.Now()
		id, err := agent.NewBootID()
		for err != nil { // crypto/rand should never fail; never print a bogus id
			logf("boot id: %v (retrying)", err)
			time.Sleep(time.Second)
			id, err = agent.NewBootID()
		}
		if d := time.Since(t0); d > 100*time.Millisecond {
			logf("boot id: waited %v for the kernel RNG", d.Round(time.Millisecond))
		}
		idCh <- id
	})

	line := cmdFlag
	if line == "" && (pid1 || !isFlagSet("cmdline")) {
		if b, err := os.ReadFile("/proc/cmdline"); err == nil {
			line = strings.TrimSpace(string(b))
		} else {
			logf("read /proc/cmdline: %v", err)
		}
	}
	cfg := cmdline.Parse(line)
	ipS, gwS := "none", "none"
	if cfg.IP.IsValid() {
		ipS = cfg.IP.String()
	}
	if cfg.Gateway.IsValid() {
		gwS = cfg.Gateway.String()
	}
	logf("config: ip=%s gw=%s dirty=%d:%d disk=%d", ipS, gwS, cfg.WSSMiB, cfg.RateMiBps, cfg.DiskKiBps)
	for _, e := range cfg.Errors {
		logf("config error: %s", e)
	}

	if pid1 {
		if n := sysinit.LoadModules(moduleList, logf); n > 0 {
			logf("%d module(s) failed to load", n)
		}
	}

	var netErr error
	if pid1 {
		t0 := time.Now()
		netErr = sysinit.ConfigureNet(netIf, cfg.IP, cfg.Gateway, 10*time.Second)
		switch {
		case netErr != nil:
			logf("network: %v", netErr)
		case cfg.IP.IsValid():
			gw := ""
			if cfg.Gateway.IsValid() {
				gw = " gw " + cfg.Gateway.String()
			}
			logf("network: %s %s up%s (%v)", netIf, cfg.IP, gw, time.Since(t0).Round(time.Millisecond))
		default:
			logf("network: no ferry.ip=, only lo configured")
		}
	}

	bootID := <-idCh
	a := agent.New(bootID, line, cfg, nil, diskDev, sysinit.Uptime)
	a.Kernel = kernel
	a.Stream.Logf = logf
	a.SetNetError(netErr)
	a.Logf = logf
	if pid1 {
		a.StopKernel = sysinit.StopKernel
		go safe("guest-agent", func() { serveGuestAgent(a) })
	}

	sl := listen(streamAddr)
	hl := listen(httpAddr)
	go safe("stream", func() { logf("stream server stopped: %v", a.Stream.Serve(sl)) })
	go safe("http", func() {
		srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
		logf("http server stopped: %v", srv.Serve(hl))
	})

	if cfg.MarkerSeed != "" {
		placeMarker(cfg.MarkerSeed)
	}

	if cfg.DiskKiBps > 0 {
		go safe("disk", func() {
			if err := a.Disk.Run(nil); err != nil {
				logf("disk writer: %v", err)
			}
		})
	}

	if pid1 {
		go safe("power", func() {
			n := sysinit.WatchPowerButton(logf, func() {
				logf("power button pressed: powering off")
				if err := sysinit.PowerOff(); err != nil {
					logf("poweroff: %v", err)
				}
			})
			if n == 0 {
				logf("no ACPI power button found; system_powerdown will be ignored")
			}
		})
	}

	// The READY line is written with a single write of its own.
	fmt.Fprintf(os.Stdout, "%s%s\n", guestapi.ReadyPrefix, a.BootIDHex)
	logf("ready after %.2fs uptime: stream on %s, status on %s (GET /status)", sysinit.Uptime().Seconds(), sl.Addr(), hl.Addr())
	// The dirtier starts after READY so that the initial fill of a large
	// working set (seconds under TCG on one vCPU) does not delay boot;
	// /status shows dirty_state=filling until the working set is resident.
	go safe("dirtier", func() {
		if err := a.Dirtier.Run(nil); err != nil {
			logf("dirtier: %v", err)
		}
	})
	if cfg.WSSMiB > 0 {
		go safe("dirtier-log", func() {
			for a.Dirtier.Stats(time.Now()).State == dirtier.StateFilling {
				time.Sleep(10 * time.Millisecond)
			}
			s := a.Dirtier.Stats(time.Now())
			logf("dirtier: %s wss=%dMiB rate=%dMiB/s (initial fill %v)", s.State, s.WSSMiB, s.RateMiBps, s.Fill.Round(time.Millisecond))
		})
	}
	if cfg.DiskKiBps > 0 {
		go safe("disk-log", func() {
			time.Sleep(2 * time.Second)
			s := a.Disk.Stats(time.Now())
			logf("disk writer: state=%s dev=%s records=%d last_seq=%d direct_io=%v err=%q", s.State, s.Device, s.Records, s.LastSeq, s.DirectIO, s.Error)
		})
	}
	go safe("heartbeat", func() {
		for {
			time.Sleep(30 * time.Second)
			s := a.Status()
			logf("alive uptime=%.0fs stream_clients=%d pages_dirtied=%d achieved=%.1fMiB/s last_seq=%d",
				s.UptimeS, s.StreamClients, s.PagesDirtied, s.AchievedMiBps, s.LastSeq)
		}
	})
	idle()
}

// serveGuestAgent answers the QEMU guest agent protocol on the
// org.qemu.guest_agent.0 port, when the VM has one (the virtio_console
// module registers it shortly after loading).
func serveGuestAgent(a *agent.Agent) {
	var port string
	for i := 0; i < 100 && port == ""; i++ {
		if port = qga.FindPort("/sys", "/dev", guestAgentPort); port == "" {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if port == "" {
		logf("guest agent: no %s port (the VM has no guest agent channel)", guestAgentPort)
		return
	}
	logf("guest agent: serving on %s", port)
	logf("guest agent stopped: %v", qga.Serve(port, qga.Handler{Before: a.GuestAgentCommand}, logf))
}

func isFlagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// listen retries until the address can be bound: as PID 1 giving up is not
// an option.
func listen(addr string) net.Listener {
	for i := 0; ; i++ {
		l, err := net.Listen("tcp", addr)
		if err == nil {
			return l
		}
		if os.Getpid() != 1 && i >= 10 {
			logger.Fatalf("listen %s: %v", addr, err)
		}
		logf("listen %s: %v (retrying)", addr, err)
		time.Sleep(500 * time.Millisecond)
	}
}

// safe runs fn, logging (instead of crashing PID 1 on) a panic.
func safe(name string, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			logf("PANIC in %s: %v\n%s", name, r, debug.Stack())
		}
	}()
	fn()
}

func idle() {
	for {
		time.Sleep(time.Hour)
	}
}
