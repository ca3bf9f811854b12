package qga

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func feed(p *Parser, s string) []string {
	var out []string
	for i := 0; i < len(s); i++ {
		if obj := p.Feed(s[i]); obj != nil {
			out = append(out, string(obj))
		}
	}
	return out
}

func TestParserSplitsObjects(t *testing.T) {
	var p Parser
	got := feed(&p, ` {"execute":"guest-ping"}`+"\n"+`{"execute":"x","arguments":{"s":"}{\"\\"}}junk{"a":1}`)
	want := []string{`{"execute":"guest-ping"}`, `{"execute":"x","arguments":{"s":"}{\"\\"}}`, `{"a":1}`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("objects = %q, want %q", got, want)
	}
}

func TestParserResetsOnDelimiter(t *testing.T) {
	var p Parser
	got := feed(&p, `{"execute":"guest-pi`+"\xff"+`{"execute":"guest-ping"}`)
	if len(got) != 1 || got[0] != `{"execute":"guest-ping"}` {
		t.Fatalf("objects = %q, want only the command after 0xFF", got)
	}
}

func TestParserDropsOverlong(t *testing.T) {
	var p Parser
	got := feed(&p, `{"a":"`+strings.Repeat("x", maxCommand)+`"}{"b":2}`)
	if len(got) != 1 || got[0] != `{"b":2}` {
		t.Fatalf("objects = %q, want the over-long one dropped", got)
	}
}

func TestHandle(t *testing.T) {
	var seen []string
	h := Handler{Before: func(c string) { seen = append(seen, c) }}
	for _, tt := range []struct{ in, want string }{
		{`{"execute":"guest-ping"}`, "{\"return\": {}}\n"},
		{`{"execute":"guest-sync","arguments":{"id":4503599627370495}}`, "{\"return\": 4503599627370495}\n"},
		{`{"execute":"guest-sync-delimited","arguments":{"id":42}}`, "\xff{\"return\": 42}\n"},
		{`{"execute":"guest-sync"}`, `"Parameter 'id' is missing"`},
		{`{"execute":"guest-sync","arguments":{"id":"x"}}`, `"Parameter 'id' is missing"`},
		{`{"execute":"guest-exec"}`, `"class":"CommandNotFound"`},
		{`{"nope":1}`, `Invalid JSON command`},
	} {
		got := string(h.Handle([]byte(tt.in)))
		if !strings.Contains(got, tt.want) || !strings.HasSuffix(got, "\n") {
			t.Errorf("Handle(%s) = %q, want containing %q and a newline", tt.in, got, tt.want)
		}
	}
	if strings.Join(seen, ",") != "guest-ping,guest-sync,guest-sync-delimited,guest-sync,guest-sync,guest-exec" {
		t.Errorf("Before saw %v", seen)
	}
	var info struct {
		Return struct {
			Version  string `json:"version"`
			Commands []struct {
				Name string `json:"name"`
			} `json:"supported_commands"`
		} `json:"return"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(h.Handle([]byte(`{"execute":"guest-info"}`))), &info); err != nil || len(info.Return.Commands) != 4 {
		t.Errorf("guest-info = %+v, %v", info, err)
	}
}
