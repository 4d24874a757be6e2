package guest

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Clock returns the guest's time in nanoseconds. All VMs of a fabric share
// one time base (wall-clock nanoseconds) so that one VM can compute the
// latency of a probe another VM timestamped.
type Clock func() int64

// WallClock is the default guest clock.
func WallClock() int64 { return time.Now().UnixNano() }

// rxBudget bounds rx completions per poll so a flood cannot starve transmit.
const rxBudget = 256

// VCPU runs a guest: the driver and its workload, in a loop on one
// goroutine, as a vCPU runs guest code. It is also the guest's interrupt
// controller: devices deliver vectors to it (InterruptSink).
//
// The loop stops only at step boundaries, so a paused vCPU is never in the
// middle of a driver operation; everything the guest knows is then in guest
// memory, plus the interrupt bits returned by Pause.
type VCPU struct {
	drv   *Driver
	wl    Workload
	clock Clock

	irr  atomic.Uint32 // interrupt request bits, one per vector
	wake chan struct{} // cap 1: an interrupt or a control request arrived

	ctl struct {
		mu      sync.Mutex
		pause   bool          // guarded by mu: the loop must park
		parked  chan struct{} // closed by the loop when it has parked
		resume  chan struct{} // closed by Resume
		running bool
	}
	steps   atomic.Uint64
	idle    atomic.Uint64
	stalled atomic.Bool
}

// NewVCPU returns a vCPU for drv and wl; it starts nothing.
func NewVCPU(drv *Driver, wl Workload, clock Clock) *VCPU {
	if clock == nil {
		clock = WallClock
	}
	return &VCPU{drv: drv, wl: wl, clock: clock, wake: make(chan struct{}, 1)}
}

// Interrupt implements vmxnet3.InterruptSink. It never blocks.
func (v *VCPU) Interrupt(vector int) {
	v.irr.Or(1 << uint(vector&31))
	v.kick()
}

func (v *VCPU) kick() {
	select {
	case v.wake <- struct{}{}:
	default:
	}
}

// Driver returns the vCPU's driver.
func (v *VCPU) Driver() *Driver { return v.drv }

// Steps returns how many loop iterations ran and how many ended idle.
func (v *VCPU) Steps() (steps, idle uint64) { return v.steps.Load(), v.idle.Load() }

// ErrRunning is returned by Run when the vCPU already runs.
var ErrRunning = errors.New("guest: vCPU already running")

// Run executes the guest until ctx is done. Driver errors end it.
func (v *VCPU) Run(ctx context.Context) error {
	v.ctl.mu.Lock()
	if v.ctl.running {
		v.ctl.mu.Unlock()
		return ErrRunning
	}
	v.ctl.running = true
	v.ctl.mu.Unlock()
	defer func() {
		v.ctl.mu.Lock()
		v.ctl.running = false
		if v.ctl.pause && v.ctl.parked != nil {
			// A Pause waiting on a loop that ended: let it return.
			select {
			case <-v.ctl.parked:
			default:
				close(v.ctl.parked)
			}
		}
		v.ctl.mu.Unlock()
	}()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	polling := v.drv.cfg.Polling
	spins := 0
	for {
		if ctx.Err() != nil {
			return nil
		}
		v.parkIfAsked(ctx)
		if v.stalled.Load() {
			// Busy elsewhere: no driver code runs, interrupts stay pending.
			v.idle.Add(1)
			v.waitFor(ctx, timer, 0)
			continue
		}
		now := v.clock()
		if v.irr.Swap(0) != 0 {
			v.drv.CountInterrupt()
		}
		work, err := v.drv.Poll(v.wl, now, rxBudget)
		if err != nil {
			return err
		}
		var next int64
		if v.wl != nil {
			next = v.wl.Step(v.drv, now)
		}
		v.drv.Flush()
		v.steps.Add(1)
		if work > 0 {
			spins = 0
			continue
		}
		if next != 0 && next < now && v.drv.TxFree() > 0 {
			continue // the workload is behind its schedule and can send
		}
		if polling {
			// Polling mode: no interrupts; yield the CPU between polls so
			// that other guests and the adapter run on a small machine.
			spins++
			if spins > 64 {
				runtime.Gosched()
			}
			if next > now {
				if d := time.Duration(next - now); d > 50*time.Microsecond {
					v.waitFor(ctx, timer, d)
				}
			}
			continue
		}
		// Interrupt mode (NAPI-like): the device auto-masked our vector
		// when it fired; unmask now that the rings are drained. A vector
		// that fired meanwhile is delivered at unmask and wakes us.
		v.drv.Unmask()
		if v.drv.Pending() {
			continue
		}
		v.idle.Add(1)
		var d time.Duration
		if next > now {
			d = time.Duration(next - now)
		}
		v.waitFor(ctx, timer, d)
	}
}

// waitFor sleeps until an interrupt, a control request, ctx, or d elapses
// (d = 0: no timeout). The timeout is the workload's own schedule.
func (v *VCPU) waitFor(ctx context.Context, timer *time.Timer, d time.Duration) {
	if d > 0 {
		timer.Reset(d)
		defer timer.Stop()
		select {
		case <-v.wake:
		case <-timer.C:
		case <-ctx.Done():
		}
		return
	}
	select {
	case <-v.wake:
	case <-ctx.Done():
	}
}

func (v *VCPU) parkIfAsked(ctx context.Context) {
	v.ctl.mu.Lock()
	if !v.ctl.pause {
		v.ctl.mu.Unlock()
		return
	}
	parked, resume := v.ctl.parked, v.ctl.resume
	close(parked)
	v.ctl.mu.Unlock()
	select {
	case <-resume:
	case <-ctx.Done():
	}
}

// Stall makes the guest stop servicing its NIC (on) or go back to it (off),
// as a guest busy in a long task with the NIC's vector masked: no driver
// code runs, so its rx ring fills, the vector the device auto-masked stays
// masked and interrupts stay pending. The vCPU still pauses and resumes.
// A stall is the vCPU's, not the guest memory's: a migrated VM runs.
func (v *VCPU) Stall(on bool) {
	v.stalled.Store(on)
	v.kick()
}

// Pause freezes the guest at its next step boundary and returns when it is
// frozen (no more doorbells, IMR or command writes), or when ctx ends.
// It returns the interrupt bits pending at the freeze.
func (v *VCPU) Pause(ctx context.Context) (uint32, error) {
	v.ctl.mu.Lock()
	if v.ctl.pause {
		v.ctl.mu.Unlock()
		return v.irr.Load(), nil
	}
	v.ctl.pause = true
	v.ctl.parked = make(chan struct{})
	v.ctl.resume = make(chan struct{})
	parked := v.ctl.parked
	running := v.ctl.running
	v.ctl.mu.Unlock()
	if !running {
		return v.irr.Load(), nil
	}
	v.kick()
	select {
	case <-parked:
		return v.irr.Load(), nil
	case <-ctx.Done():
		// Take the request back, or the loop would park at its next step
		// boundary with nobody left to resume it.
		v.Resume(0)
		return 0, ctx.Err()
	}
}

// Resume unfreezes the guest, re-raising irq bits (those Pause returned, or
// the ones carried over from another host).
func (v *VCPU) Resume(irq uint32) {
	v.ctl.mu.Lock()
	defer v.ctl.mu.Unlock()
	if !v.ctl.pause {
		return
	}
	v.ctl.pause = false
	close(v.ctl.resume)
	if irq != 0 {
		v.irr.Or(irq)
	}
	v.kick()
}
