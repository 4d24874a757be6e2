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
		return err
	}
	v.dev.Discard()
	v.host = host
	v.handoffs.Add(1)
	signalChan(v.retarget)
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
	signalChan(v.retarget)
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
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-a.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		a.deliverTo(ctx, v, nil, nil)
	}()
}

// HostSend implements vem.Uplink: frames from the hypervisor's emulated
// device leave as the vNIC's own, tagged with its vif. It takes ownership
// of the first n buffers (all of them unless the uplink closed).
func (v *VNIC) HostSend(bufs []*link.Buf) (int, error) {
	vlan := uint16(v.defaultVLAN.Load())
	tag := wire.VNTag{SVIF: v.vif}
	var bytes uint64
	k := 0
	for i, b := range bufs {
		n := b.Len
		if !tagUp(b, vmxnet3.TxMeta{}, vlan, tag) {
			v.adapter.drops.TxTagFail.Add(1)
			b.Release()
			continue
		}
		bytes += uint64(n)
		bufs[k], bufs[i] = b, bufs[k]
		k++
	}
	n, err := v.adapter.uplink.Send(bufs[:k])
	v.stats.txFrames.Add(uint64(n))
	v.stats.txBytes.Add(bytes)
	if err != nil {
		v.stats.txDropped.Add(uint64(k - n))
		link.ReleaseAll(bufs[n:k])
	}
	return len(bufs), err
}

func signalChan(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
