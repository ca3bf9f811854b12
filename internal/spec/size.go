package spec

import (
	"fmt"
	"math/big"
	"strings"
)

// sizeUnits maps accepted (lower-cased) unit suffixes to multipliers. Units
// are binary, as in qemu-img: 10G means 10 GiB.
var sizeUnits = map[string]int64{
	"":    1,
	"b":   1,
	"k":   1 << 10,
	"ki":  1 << 10,
	"kib": 1 << 10,
	"m":   1 << 20,
	"mi":  1 << 20,
	"mib": 1 << 20,
	"g":   1 << 30,
	"gi":  1 << 30,
	"gib": 1 << 30,
	"t":   1 << 40,
	"ti":  1 << 40,
	"tib": 1 << 40,
	"p":   1 << 50,
	"pi":  1 << 50,
	"pib": 1 << 50,
}

// ParseSize parses a size such as "512MiB", "1GiB", "10G", "1.5G" or a
// plain byte count ("1073741824"). Units are binary (K, M, G, T, P with an
// optional "i" or "iB"; qemu-img's convention), case-insensitive; fractional
// values are rounded down to a whole byte. KB, MB, GB, TB and PB are
// rejected as ambiguous.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	if num == "" {
		return 0, fmt.Errorf("size %q: must start with a number (e.g. 512MiB, 1GiB, 10G or a byte count)", s)
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		if len(unit) == 2 && unit[1] == 'b' && strings.ContainsRune("kmgtp", rune(unit[0])) {
			return 0, fmt.Errorf("size %q: unit %q is ambiguous, use %siB (binary) or a byte count", s, t[i:], strings.ToUpper(unit[:1]))
		}
		return 0, fmt.Errorf("size %q: unknown unit %q (use B, KiB, MiB, GiB, TiB, PiB or K, M, G, T, P)", s, strings.TrimSpace(t[i:]))
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok || strings.Count(num, ".") > 1 || strings.HasSuffix(num, ".") || strings.HasPrefix(num, ".") {
		return 0, fmt.Errorf("size %q: invalid number %q", s, num)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	q := new(big.Int).Quo(r.Num(), r.Denom())
	if !q.IsInt64() {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return q.Int64(), nil
}
