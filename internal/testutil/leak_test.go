package testutil

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// recorder is a testing.TB that keeps its cleanups and failures for the test
// to inspect, instead of acting on them.
type recorder struct {
	testing.TB
	cleanups []func()
	errors   []string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(f string, a ...any) { r.errors = append(r.errors, fmt.Sprintf(f, a...)) }

func (r *recorder) runCleanups() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

// leakedUntilClosed blocks until stop is closed; its name shows in the stack.
func leakedUntilClosed(stop chan struct{}) { <-stop }

func TestCheckGoroutinesReportsLeak(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	r := &recorder{TB: t}
	CheckGoroutinesWithin(r, 50*time.Millisecond)
	go leakedUntilClosed(stop)
	r.runCleanups()
	if len(r.errors) != 1 {
		t.Fatalf("errors = %q, want one leak report", r.errors)
	}
	if !strings.Contains(r.errors[0], "leakedUntilClosed") {
		t.Errorf("leak report does not name the leaked goroutine's function:\n%s", r.errors[0])
	}
}

func TestCheckGoroutinesWaitsForExit(t *testing.T) {
	r := &recorder{TB: t}
	CheckGoroutinesWithin(r, LeakWait)
	stop := make(chan struct{})
	go leakedUntilClosed(stop)
	// The goroutine is still running when the check starts; it must wait.
	time.AfterFunc(20*time.Millisecond, func() { close(stop) })
	r.runCleanups()
	if len(r.errors) != 0 {
		t.Errorf("errors = %q, want none: the goroutine exited within the wait", r.errors)
	}
}

func TestCheckGoroutinesIgnoresOlder(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	go leakedUntilClosed(stop) // started before the snapshot
	r := &recorder{TB: t}
	CheckGoroutinesWithin(r, 10*time.Millisecond)
	r.runCleanups()
	if len(r.errors) != 0 {
		t.Errorf("errors = %q, want none: the goroutine predates the check", r.errors)
	}
}
