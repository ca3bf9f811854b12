package qmp

import (
	"errors"
	"fmt"
)

// sentinelError is a constant-like error that may itself match a broader
// parent sentinel with errors.Is.
type sentinelError struct {
	msg    string
	parent error
}

// Error returns the sentinel's message.
func (e *sentinelError) Error() string { return e.msg }

// Unwrap returns the broader sentinel this one implies, if any.
func (e *sentinelError) Unwrap() error { return e.parent }

var (
	// ErrClosed is matched by every error caused by a monitor whose
	// connection has ended, whether Close was called or the socket went
	// away.
	ErrClosed error = &sentinelError{msg: "monitor closed"}

	// ErrDisconnected is matched when the connection ended without Close
	// being called (QEMU exited, the socket was closed or broke). Errors
	// matching ErrDisconnected also match ErrClosed.
	ErrDisconnected error = &sentinelError{msg: "disconnected from QEMU", parent: ErrClosed}

	// ErrNotConnected is matched when no QMP session could be established:
	// the socket could not be dialled, or a method was called on a nil
	// Monitor.
	ErrNotConnected error = &sentinelError{msg: "not connected"}

	// ErrHandshake is matched when the peer answered but the QMP greeting
	// or capabilities negotiation failed.
	ErrHandshake error = &sentinelError{msg: "QMP handshake failed"}

	// ErrProtocol is matched when QEMU sent something that is not valid
	// QMP (for example a reply that cannot be decoded into the result).
	ErrProtocol error = &sentinelError{msg: "protocol error"}

	// ErrEventMismatch is returned by the typed event decoders when the
	// event has a different name than the decoder expects.
	ErrEventMismatch error = &sentinelError{msg: "unexpected event name"}
)

// QMP error classes, as sent in {"error": {"class": ...}}.
const (
	ClassGenericError    = "GenericError"
	ClassCommandNotFound = "CommandNotFound"
	ClassDeviceNotActive = "DeviceNotActive"
	ClassDeviceNotFound  = "DeviceNotFound"
	ClassKVMMissingCap   = "KVMMissingCap"
)

// classError is the sentinel type for one QMP error class.
type classError struct{ class string }

// Error names the class.
func (e *classError) Error() string { return "QMP error class " + e.class }

var (
	// ErrGenericError matches a *CommandError of class GenericError, the
	// class QEMU uses for almost every failure.
	ErrGenericError error = &classError{ClassGenericError}
	// ErrCommandNotFound matches a *CommandError of class CommandNotFound
	// (the command does not exist in this QEMU build or version).
	ErrCommandNotFound error = &classError{ClassCommandNotFound}
	// ErrDeviceNotActive matches a *CommandError of class DeviceNotActive.
	ErrDeviceNotActive error = &classError{ClassDeviceNotActive}
	// ErrDeviceNotFound matches a *CommandError of class DeviceNotFound.
	ErrDeviceNotFound error = &classError{ClassDeviceNotFound}
	// ErrKVMMissingCap matches a *CommandError of class KVMMissingCap.
	ErrKVMMissingCap error = &classError{ClassKVMMissingCap}
)

// CommandError is an error reply from QEMU to a command.
type CommandError struct {
	// Command is the QMP command that failed, e.g. "migrate".
	Command string
	// Class is the QMP error class, e.g. "GenericError".
	Class string
	// Desc is QEMU's human-readable description. Do not parse it.
	Desc string
}

// Error formats the error as "qmp: <command>: <desc>".
func (e *CommandError) Error() string {
	return fmt.Sprintf("qmp: %s: %s", e.Command, e.Desc)
}

// Is reports whether target is the class sentinel for e.Class, so that
// errors.Is(err, ErrCommandNotFound) works on wrapped command errors.
func (e *CommandError) Is(target error) bool {
	ce, ok := target.(*classError)
	return ok && ce.class == e.Class
}

// OpError wraps a non-QEMU failure (transport, context, decoding) of one
// operation so that its message reads "qmp: <op>: <cause>".
type OpError struct {
	// Op is the QMP command or local operation ("connect", "close").
	Op string
	// Err is the underlying cause; it is what errors.Is/As inspect.
	Err error
}

// Error formats the error as "qmp: <op>: <cause>".
func (e *OpError) Error() string { return "qmp: " + e.Op + ": " + e.Err.Error() }

// Unwrap returns the underlying cause.
func (e *OpError) Unwrap() error { return e.Err }

// causeError joins a sentinel with the low-level cause that triggered it,
// so both can be matched with errors.Is / errors.As.
type causeError struct {
	sentinel error
	cause    error
}

// Error returns "<sentinel> (<cause>)".
func (e *causeError) Error() string {
	if e.cause == nil {
		return e.sentinel.Error()
	}
	return e.sentinel.Error() + " (" + e.cause.Error() + ")"
}

// Unwrap exposes both the sentinel and the cause.
func (e *causeError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.sentinel}
	}
	return []error{e.sentinel, e.cause}
}

// withCause returns an error matching both sentinel and cause.
func withCause(sentinel, cause error) error {
	return &causeError{sentinel: sentinel, cause: cause}
}

// opErr wraps err as an *OpError unless it already is a *CommandError or
// *OpError (which carry their own command context).
func opErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var ce *CommandError
	var oe *OpError
	if errors.As(err, &ce) || errors.As(err, &oe) {
		return err
	}
	return &OpError{Op: op, Err: err}
}
