package cli

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestVersionCommand(t *testing.T) {
	out, err := runRoot(t, "version")
	if err != nil || !strings.HasPrefix(out, "ferry ") || !strings.Contains(out, "\ngo1.") {
		t.Fatalf("ferry version: %v\n%s", err, out)
	}
	out, err = runRoot(t, "version", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Version, Go string }
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.Version == "" || v.Go == "" {
		t.Fatalf("ferry version -o json: %v\n%s", err, out)
	}
}
