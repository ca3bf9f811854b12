// Package revert provides an undo stack for multi-step operations:
//
//	r := revert.New()
//	defer r.Fail()
//	... r.Add(func() { undo step })
//	r.Success()
//
// Fail runs the registered undo functions in reverse order unless Success
// was called first.
package revert

import "sync"

// Reverter collects undo functions for the steps of one operation.
type Reverter struct {
	mu   sync.Mutex
	fns  []func()
	done bool
}

// New returns an empty Reverter.
func New() *Reverter { return &Reverter{} }

// Add registers an undo function; it runs before those added earlier.
func (r *Reverter) Add(fn func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fns = append(r.fns, fn)
}

// Fail runs every undo function in reverse order, once, unless Success was
// called. It is meant to be deferred.
func (r *Reverter) Fail() {
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		return
	}
	r.done = true
	fns := r.fns
	r.fns = nil
	r.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

// Success discards the undo functions: the operation is complete.
func (r *Reverter) Success() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done = true
	r.fns = nil
}

// Clone moves the pending undo functions into a new Reverter and marks r
// successful, for handing the undo duty to a caller.
func (r *Reverter) Clone() *Reverter {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := &Reverter{fns: r.fns}
	r.fns = nil
	r.done = true
	return c
}
