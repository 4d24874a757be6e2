package vic

// Host mode: a dynamic vNIC driven by the hypervisor instead of the guest.
// While the VM runs on the hypervisor's emulated device, its vNIC stays on
// the adapter with the same vif, so the FI sees the same vEth: frames for
// the vif go to a host-side sink (the VM's VEM port) and frames the VEM
// sends are tagged with the vif like the guest's own.
//
// The hand-off between the vNIC's device and the host side happens under
// the vNIC's rx lock, which the rx engine holds whenever it hands a frame
// to either side. So at the moment of a switch every frame of the vif is
// in exactly one place: still on the cable (it will reach the new side), in
// the old device's held frames (they travel in its state), or in the host
// queue (the hand-off drains it into the state) — never in two, never none.

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmfex/vmfex/link"
	"github.com/vmfex/vmfex/vmxnet3"
	"github.com/vmfex/vmfex/wire"
)

// ErrMode is returned for a hand-off that does not fit the vNIC's mode.
var ErrMode = errors.New("vic: vNIC is not in the mode this hand-off starts from")

// HostDriven reports whether the hypervisor drives the vNIC.
func (v *VNIC) HostDriven() bool {
	v.rxMu.Lock()
	defer v.rxMu.Unlock()
	return v.host != nil
}

// DetachToHost hands the vNIC to the hypervisor. It freezes the vNIC's
// device first — a tx batch in flight finishes, later frames for the vif
// are held — while the guest still runs, so that nothing waits on a guest
// that can no longer drain its rings; then it calls pause (the hypervisor
// freezes the vCPU), saves the device's state and hands it to load (the
// hypervisor restores it into its emulated device). If both succeed, the
// vif's frames go to host from then on and the device is discarded; if
// either fails, the device thaws and the guest keeps driving it (the caller
// resumes the vCPU if pause succeeded).
func (v *VNIC) DetachToHost(host link.Sink, pause func() error, load func(vmxnet3.State) error) error {
	if v.HostDriven() {
		return fmt.Errorf("%w: vif %d is already host-driven", ErrMode, v.vif)
	}
	v.dev.Freeze()
	if err := pause(); err != nil {
		v.dev.Thaw()
		v.doorbell(vmxnet3.DoorbellTx, 0) // doorbells rung during the freeze
		return err
	}
	v.rxMu.Lock()
	defer v.rxMu.Unlock()
	st, err := v.dev.Save()
	if err == nil {
		err = load(st)
	}
	if err != nil {
		v.dev.Thaw()
		v.doorbell(vmxnet3.DoorbellTx, 0)
		return err
	}
	v.dev.Discard()
	v.host = host
	v.handoffs.Add(1)
	v.retargetLocked()
	v.adapter.log.Info("vNIC detached to host", "vif", v.vif)
	return nil
}

// AttachFromHost takes the state from save (the hypervisor freezes its
// emulated device and drains the VEM port), loads it into the vNIC's device
// with the extra frames behind its held ones, and gives the rings back to
// the guest. The caller then re-points the guest's BAR0 and calls Kick.
func (v *VNIC) AttachFromHost(save func() (vmxnet3.State, [][]byte, error)) error {
	v.rxMu.Lock()
	if v.host == nil {
		v.rxMu.Unlock()
		return fmt.Errorf("%w: vif %d is not host-driven", ErrMode, v.vif)
	}
	st, extra, err := save()
	if err != nil {
		v.rxMu.Unlock()
		return err
	}
	if err := v.dev.Restore(st); err != nil {
		v.rxMu.Unlock()
		return err
	}
	if err := v.dev.AddPending(0, extra); err != nil {
		v.rxMu.Unlock()
		return err
	}
	v.host = nil
	v.handoffs.Add(1)
	v.dev.Thaw()
	v.retargetLocked()
	v.rxMu.Unlock()
	v.adapter.log.Info("vNIC attached direct", "vif", v.vif)
	return nil
}

// Kick makes the adapter scan the vNIC's tx ring and deliver the frames its
// device holds, as after a hand-off.
func (v *VNIC) Kick() {
	v.doorbell(vmxnet3.DoorbellTx, 0)
	if v.dev.HeldFrames(0) == 0 {
		return
	}
	// The rx engine only offers frames when some arrive; held frames must
	// not wait for the next one.
	a := v.adapter
	if a.closed.Load() {
		return
	}
	a.wg.Add(2)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { // tracked: ends with the flush or the adapter
		defer a.wg.Done()
		select {
		case <-a.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	go func() {
		defer a.wg.Done()
		defer cancel()
		a.deliverTo(ctx, v, nil, nil)
	}()
}

// HostTxDepth bounds the frames the hypervisor may queue on a vNIC.
const HostTxDepth = 1024

// HostQueue queues frames from the hypervisor's emulated device for
// transmission as the vNIC's own, tagged with its vif. It never waits: it
// takes (and owns) as many as there is room for and returns how many. The
// adapter's tx engine sends them, in order, before anything it gathers from
// the guest's ring afterwards.
func (v *VNIC) HostQueue(bufs []*link.Buf) int {
	v.txMu.Lock()
	n := min(len(bufs), HostTxDepth-len(v.backlog))
	v.backlog = append(v.backlog, bufs[:n]...)
	v.txMu.Unlock()
	if n > 0 {
		v.doorbell(vmxnet3.DoorbellTx, 0)
	}
	return n
}

// HostTxRoom returns how many frames HostQueue would take now.
func (v *VNIC) HostTxRoom() int {
	v.txMu.Lock()
	defer v.txMu.Unlock()
	return HostTxDepth - len(v.backlog)
}

// HostWantRoom asks for an OnHostTxRoom call once the queue has room; it
// reports true when there is room already. The call-back stays asked for
// while the room is less than a batch, so that a sender that needs more
// than what there is — a TSO packet's segments, which leave together — is
// called again after the next batch drained (a spurious call-back is
// harmless: the sender looks at TxRoom again).
func (v *VNIC) HostWantRoom() bool {
	v.wantRoom.Store(true)
	room := v.HostTxRoom()
	if room >= txBatch {
		v.wantRoom.Store(false)
	}
	return room > 0
}

// OnHostTxRoom sets the call-back the tx engine makes when the queue, found
// full, has room again. It runs on the adapter's tx engine and must not
// block.
func (v *VNIC) OnHostTxRoom(fn func()) { v.roomFn.Store(&fn) }

// sendBacklog sends up to one batch of the frames the hypervisor queued.
func (a *Adapter) sendBacklog(v *VNIC) (int, error) {
	v.txMu.Lock()
	k := min(len(v.backlog), txBatch)
	batch := v.txOut[:0]
	batch = append(batch, v.backlog[:k]...)
	rest := copy(v.backlog, v.backlog[k:])
	clear(v.backlog[rest:])
	v.backlog = v.backlog[:rest]
	v.txInFlight.Add(int64(k)) // out of the queue, not yet on the wire
	v.txMu.Unlock()
	defer v.txInFlight.Add(-int64(k))
	v.txOut = batch[:0]
	if k == 0 {
		return 0, nil
	}
	vlan := uint16(v.defaultVLAN.Load())
	tag := wire.VNTag{SVIF: v.vif}
	var bytes uint64
	j := 0
	for _, b := range batch {
		n := b.Len
		if !tagUp(b, vmxnet3.TxMeta{}, vlan, tag) {
			a.drops.TxTagFail.Add(1)
			b.Release()
			continue
		}
		bytes += uint64(n)
		batch[j] = b
		j++
	}
	n, err := a.uplink.Send(batch[:j])
	v.stats.txFrames.Add(uint64(n))
	v.stats.txBytes.Add(bytes)
	if err != nil {
		v.stats.txDropped.Add(uint64(j - n))
		link.ReleaseAll(batch[n:j])
	}
	clear(batch)
	if v.wantRoom.Swap(false) {
		if fn := v.roomFn.Load(); fn != nil {
			(*fn)()
		}
	}
	return k, err
}

// dropBacklog releases queued host frames (the vNIC is going away).
func (v *VNIC) dropBacklog() int {
	v.txMu.Lock()
	defer v.txMu.Unlock()
	n := len(v.backlog)
	link.ReleaseAll(v.backlog)
	v.backlog = v.backlog[:0]
	return n
}

// retargetLocked wakes every goroutine waiting to hand the vif's frames to
// the side a hand-off retired. Callers hold rxMu.
func (v *VNIC) retargetLocked() {
	close(v.retarget)
	v.retarget = make(chan struct{})
}
