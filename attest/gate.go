package attest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// ErrGate is matched by every health gate failure.
var ErrGate = errors.New("health gate failed")

// Check is one named condition of the health gate.
type Check struct {
	Name string
	Run  func(ctx context.Context) error
}

// Gate is the health gate the updater calls before committing a trial boot:
// a set of named checks that all must pass. The zero value passes.
type Gate struct {
	checks []Check
}

// NewGate returns a gate of the given checks.
func NewGate(checks ...Check) *Gate { return &Gate{checks: checks} }

// Add appends a check.
func (g *Gate) Add(c Check) { g.checks = append(g.checks, c) }

// Failure is one check that did not pass.
type Failure struct {
	Check string
	Err   error
}

// GateError lists every failed check, in gate order.
type GateError struct {
	Failures []Failure
}

func (e *GateError) Error() string {
	parts := make([]string, len(e.Failures))
	for i, f := range e.Failures {
		parts[i] = f.Check + ": " + f.Err.Error()
	}
	return "health gate: " + strings.Join(parts, "; ")
}

// Checks returns the names of the failed checks, for the status report and rollback reason.
func (e *GateError) Checks() []string {
	out := make([]string, len(e.Failures))
	for i, f := range e.Failures {
		out[i] = f.Check
	}
	return out
}

// Unwrap exposes ErrGate and each check's error to errors.Is and errors.As.
func (e *GateError) Unwrap() []error {
	out := []error{ErrGate}
	for _, f := range e.Failures {
		out = append(out, f.Err)
	}
	return out
}

// Check runs every check concurrently and returns nil if all passed, else a
// *GateError naming each failed one. A check that panics fails. Its signature
// is the updater's health gate: pass g.Check.
func (g *Gate) Check(ctx context.Context) error {
	errs := make([]error, len(g.checks))
	var wg sync.WaitGroup
	for i, c := range g.checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if r := recover(); r != nil {
					errs[i] = fmt.Errorf("panic: %v", r)
				}
			}()
			errs[i] = c.Run(ctx)
		}()
	}
	wg.Wait()
	var ge GateError
	for i, err := range errs {
		if err == nil && ctx.Err() != nil {
			err = ctx.Err()
		}
		if err != nil {
			ge.Failures = append(ge.Failures, Failure{Check: g.checks[i].Name, Err: err})
		}
	}
	if len(ge.Failures) == 0 {
		return nil
	}
	return &ge
}

// ClockCheck passes when a fresh clock check says ok. With offlineOK (the
// update policy allows running offline) an unknown clock passes too, as long
// as it is not below its lower bound; skewed and untrusted never pass.
func ClockCheck(c *Clock, offlineOK bool) Check {
	return Check{Name: "clock", Run: func(ctx context.Context) error {
		st := c.Check(ctx)
		if st.State == ClockUnknown && offlineOK {
			return nil
		}
		return st.Err()
	}}
}

// AttestationCheck passes when attestation is not required, or when attest
// (the agent's round trip: nonce from the hub, quote, the hub's verdict) succeeds.
func AttestationCheck(required bool, attest func(ctx context.Context) error) Check {
	return Check{Name: "attestation", Run: func(ctx context.Context) error {
		if !required {
			return nil
		}
		return attest(ctx)
	}}
}

// ContainersCheck wraps the reconciler's view: healthy returns nil when every
// app's container is running and healthy, else an error naming the apps.
func ContainersCheck(healthy func(ctx context.Context) error) Check {
	return Check{Name: "containers", Run: healthy}
}
