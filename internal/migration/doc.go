// Package migration holds the agents' small state machines of a migration's
// two sides (Source, Incoming). Each is a transition table with a Step
// function that rejects events out of order, so a late, repeated or
// confused step is an error instead of an action. The package is pure: no
// I/O. The control plane's engine lives in internal/migration/core (the
// pure step function) and internal/migration/exec (its executor).
package migration

import "errors"

// ErrOutOfOrder is returned by the Step functions for an event the current
// state does not accept.
var ErrOutOfOrder = errors.New("event out of order")
