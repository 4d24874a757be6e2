//go:build race

package vmxnet3_test

const raceEnabled = true
