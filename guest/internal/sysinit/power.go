//go:build linux

package sysinit

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	evKey       = 0x01
	keyPower    = 116
	inputEvSize = 24 // struct input_event on 64-bit: timeval(16) type(2) code(2) value(4)
)

// WatchPowerButton watches every input device named "Power Button" (ACPI
// button driver + evdev) and calls onPress when KEY_POWER is pressed, e.g.
// after QMP system_powerdown. It returns the number of devices watched.
func WatchPowerButton(logf Logf, onPress func()) int {
	// devices may show up a little after the modules load
	var devs []string
	for i := 0; i < 50 && len(devs) == 0; i++ {
		devs = findPowerButtons()
		if len(devs) == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, d := range devs {
		f, err := os.Open(d)
		if err != nil {
			logf("power button %s: %v", d, err)
			continue
		}
		go func(f *os.File) {
			defer f.Close()
			ev := make([]byte, inputEvSize*16)
			for {
				n, err := f.Read(ev)
				if err != nil {
					logf("power button %s: %v", f.Name(), err)
					return
				}
				for o := 0; o+inputEvSize <= n; o += inputEvSize {
					typ := binary.NativeEndian.Uint16(ev[o+16:])
					code := binary.NativeEndian.Uint16(ev[o+18:])
					val := int32(binary.NativeEndian.Uint32(ev[o+20:]))
					if typ == evKey && code == keyPower && val == 1 {
						onPress()
					}
				}
			}
		}(f)
	}
	return len(devs)
}

func findPowerButtons() []string {
	names, _ := filepath.Glob("/sys/class/input/event*/device/name")
	var out []string
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil || strings.TrimSpace(string(b)) != "Power Button" {
			continue
		}
		ev := filepath.Base(filepath.Dir(filepath.Dir(n)))
		out = append(out, "/dev/input/"+ev)
	}
	return out
}
