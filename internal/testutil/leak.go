// Package testutil holds helpers for the tests of every package: for now a
// goroutine leak check. It starts no goroutines of its own beyond the test's.
package testutil

import (
	"bytes"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// LeakWait is how long CheckGoroutines waits for goroutines to exit before it
// reports them. It is a failure deadline, not a measure of anything.
const LeakWait = 5 * time.Second

// CheckGoroutines records the goroutines alive now and registers a cleanup
// that, once the test and the cleanups registered after this call are done,
// waits up to LeakWait for every goroutine started since to exit. It fails the
// test with the stacks of those still running.
//
// Call it first in a test, so that its cleanup runs last. It cannot tell the
// test's goroutines from those of tests running in parallel with it, so it
// is not for tests that call t.Parallel.
func CheckGoroutines(t testing.TB) { CheckGoroutinesWithin(t, LeakWait) }

// CheckGoroutinesWithin is CheckGoroutines with a wait of its own.
func CheckGoroutinesWithin(t testing.TB, wait time.Duration) {
	t.Helper()
	base := make(map[uint64]bool)
	for _, g := range goroutines() {
		base[g.id] = true
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(wait)
		for {
			extra := extraGoroutines(base)
			if len(extra) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d goroutine(s) still running %v after the test:\n\n%s",
					len(extra), wait, strings.Join(extra, "\n\n"))
				return
			}
			time.Sleep(10 * time.Millisecond) // poll; goroutines exit on their own time
		}
	})
}

// extraGoroutines returns the stacks of the goroutines not in base.
func extraGoroutines(base map[uint64]bool) []string {
	var extra []string
	for _, g := range goroutines() {
		if !base[g.id] {
			extra = append(extra, g.stack)
		}
	}
	return extra
}

type goroutine struct {
	id    uint64
	stack string
}

// goroutines returns every user goroutine with its stack, as runtime.Stack
// prints them: blocks separated by a blank line, each opening with
// "goroutine ID [state]:".
func goroutines() []goroutine {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var gs []goroutine
	for _, block := range bytes.Split(buf, []byte("\n\n")) {
		rest, ok := bytes.CutPrefix(block, []byte("goroutine "))
		if !ok {
			continue
		}
		idText, _, ok := bytes.Cut(rest, []byte(" "))
		if !ok {
			continue
		}
		id, err := strconv.ParseUint(string(idText), 10, 64)
		if err != nil {
			continue
		}
		gs = append(gs, goroutine{id: id, stack: string(block)})
	}
	return gs
}
