//go:build linux

package sysinit

import (
	"fmt"
	"os"
)

// StopKernel makes the kernel stop for good: it sets the panic timeout to
// 0 (never reboot) and triggers a sysrq crash, so the kernel panics and
// hangs (the panicking vCPU spins in the panic loop, the others are
// stopped). Nothing in the guest answers afterwards. It returns only on
// failure.
func StopKernel() error {
	if err := os.WriteFile("/proc/sys/kernel/panic", []byte("0\n"), 0o644); err != nil {
		return fmt.Errorf("stop kernel: set panic timeout 0: %w", err)
	}
	if err := os.WriteFile("/proc/sysrq-trigger", []byte("c"), 0o200); err != nil {
		return fmt.Errorf("stop kernel: sysrq crash: %w", err)
	}
	return fmt.Errorf("stop kernel: the sysrq crash returned")
}
