//go:build !race

package fabric

// raceEnabled reports whether the race detector is on: it makes sync.Pool
// drop buffers at random, so allocation budgets are not checked under it.
const raceEnabled = false
