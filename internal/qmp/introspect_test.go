package qmp

import (
	"encoding/json"
	"slices"
	"testing"
)

func TestCommandArgs(t *testing.T) {
	raw := json.RawMessage(`[
	 {"name":"migrate-set-parameters","meta-type":"command","arg-type":"7","ret-type":"0"},
	 {"name":"query-status","meta-type":"command","arg-type":"0","ret-type":"9"},
	 {"name":"0","meta-type":"object","members":[]},
	 {"name":"7","meta-type":"object","members":[{"name":"max-bandwidth","type":"int"},{"name":"zero-page-detection","type":"12"}]},
	 {"name":"12","meta-type":"enum","members":[{"name":"none"},{"name":"legacy"},{"name":"multifd"}],"values":["none","legacy","multifd"]},
	 {"name":"MIGRATION","meta-type":"event","arg-type":"13"}
	]`)
	schema, err := ParseSchema(raw)
	if err != nil {
		t.Fatal(err)
	}
	args, ok := CommandArgs(schema, "migrate-set-parameters")
	if !ok || !slices.Equal(args, []string{"max-bandwidth", "zero-page-detection"}) {
		t.Errorf("migrate-set-parameters args %v %v", args, ok)
	}
	if args, ok := CommandArgs(schema, "query-status"); !ok || len(args) != 0 {
		t.Errorf("query-status args %v %v", args, ok)
	}
	if _, ok := CommandArgs(schema, "MIGRATION"); ok {
		t.Error("an event is not a command")
	}
	if _, ok := CommandArgs(schema, "migrate-frobnicate"); ok {
		t.Error("unknown command found")
	}
	if _, err := ParseSchema(json.RawMessage(`{}`)); err == nil {
		t.Error("ParseSchema accepted an object")
	}
}
