//go:build !linux

package linuxguest

import (
	"github.com/vmfex/vmfex/guest"
	"github.com/vmfex/vmfex/guest/mem"
)

// Workload is a Linux guest; on this system New always fails.
type Workload struct{}

var _ guest.Workload = (*Workload)(nil)

// New fails: Linux guests need Linux network namespaces and TAP devices.
func New(m *mem.Memory, cfg Config) (*Workload, error) { return nil, ErrUnsupported }

// Name returns "".
func (w *Workload) Name() string { return "" }

// SetWake does nothing.
func (w *Workload) SetWake(f func()) {}

// Step does nothing.
func (w *Workload) Step(dev guest.NetDev, now int64) int64 { return 0 }

// Receive does nothing.
func (w *Workload) Receive(dev guest.NetDev, pa uint64, n int, now int64) {}

// Stats returns zeroes.
func (w *Workload) Stats() Stats { return Stats{} }

// Close does nothing.
func (w *Workload) Close() error { return nil }

// Destroy does nothing.
func Destroy(name string) (bool, error) { return false, nil }
