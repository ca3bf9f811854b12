package spec

import (
	"errors"
	"fmt"
	"strings"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// Violation is one bad field: its path (e.g. "spec.disks[1].size") and a
// description saying what is wrong and how to fix it.
type Violation struct {
	Field       string
	Description string
}

// String renders the violation as "field: description".
func (v Violation) String() string { return v.Field + ": " + v.Description }

// ValidationError lists every problem found in a spec.
type ValidationError struct {
	Violations []Violation
}

// Error renders a count line followed by one indented line per violation.
func (e *ValidationError) Error() string {
	var b strings.Builder
	n := len(e.Violations)
	word := "problems"
	if n == 1 {
		word = "problem"
	}
	fmt.Fprintf(&b, "invalid VM spec (%d %s):", n, word)
	for _, v := range e.Violations {
		b.WriteString("\n  ")
		b.WriteString(v.String())
	}
	return b.String()
}

// ToBadRequest converts the *ValidationError wrapped in err (if any) into a
// ferryv1.BadRequest for an InvalidArgument API error. It returns nil when
// err does not wrap a *ValidationError.
func ToBadRequest(err error) *ferryv1.BadRequest {
	var ve *ValidationError
	if !errors.As(err, &ve) || ve == nil {
		return nil
	}
	br := &ferryv1.BadRequest{}
	for _, v := range ve.Violations {
		br.Violations = append(br.Violations, &ferryv1.FieldViolation{Field: v.Field, Description: v.Description})
	}
	return br
}

// FromBadRequest converts a ferryv1.BadRequest back into a *ValidationError.
// It returns nil when br holds no violations.
func FromBadRequest(br *ferryv1.BadRequest) *ValidationError {
	if len(br.GetViolations()) == 0 {
		return nil
	}
	ve := &ValidationError{}
	for _, fv := range br.GetViolations() {
		ve.Violations = append(ve.Violations, Violation{Field: fv.GetField(), Description: fv.GetDescription()})
	}
	return ve
}

// collector accumulates violations.
type collector struct{ vs []Violation }

func (c *collector) add(field, format string, args ...any) {
	c.vs = append(c.vs, Violation{Field: field, Description: fmt.Sprintf(format, args...)})
}

func (c *collector) err() error {
	if len(c.vs) == 0 {
		return nil
	}
	return &ValidationError{Violations: c.vs}
}
