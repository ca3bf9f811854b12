package server

import (
	"strings"
	"testing"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

func TestRetryPolicyChecked(t *testing.T) {
	for _, tc := range []struct {
		opt  *ferryv1.MigrationOptions
		want string // "" = accepted
	}{
		{&ferryv1.MigrationOptions{Strategy: "precopy"}, ""},
		{&ferryv1.MigrationOptions{Strategy: "precopy", MaxAttempts: 10, RetryBackoffMs: 30000}, ""},
		{&ferryv1.MigrationOptions{Strategy: "precopy", MaxAttempts: 11}, "max_attempts: must be between 1 and 10"},
		{&ferryv1.MigrationOptions{Strategy: "precopy", MaxAttempts: -1}, "max_attempts"},
		{&ferryv1.MigrationOptions{Strategy: "precopy", RetryBackoffMs: 30001}, "retry_backoff_ms: must be between 1 and 30000 ms"},
		{&ferryv1.MigrationOptions{Strategy: "cold", MaxAttempts: 2}, "only applies to live strategies"},
	} {
		err := checkRetryPolicy(tc.opt)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: refused: %v", tc.opt, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || connect.CodeOf(err) != connect.CodeInvalidArgument):
			t.Errorf("%v: err %v, want InvalidArgument naming %q", tc.opt, err, tc.want)
		}
	}
}
