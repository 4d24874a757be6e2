// Package linktest holds test doubles for cables: in-memory cable pairs, a
// Port wrapper that injects loss, reordering and duplication, and helpers
// that send and receive whole frames as byte slices.
//
// Goroutines: Faulty starts none. RecvN runs one receiving goroutine per
// call and does not return before it has ended.
//
// Concurrency: a Faulty may be used as any Port (Send and Recv at the same
// time, Close from anywhere); its Send calls take turns, so its fault
// decisions follow the order of the frames it is given, and its counters may
// be read at any time. SendFrames and RecvN fail the test with t.Fatalf, so
// they are called from the test's goroutine.
package linktest
