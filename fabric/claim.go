package fabric

// Claiming a vEth: the commit point of a live migration, decided by the FI.
//
// A migration rebinds the vEth to the destination's (server port, vif)
// before it tells the destination to run the VM. If the stream between the
// hosts breaks then, neither host knows what the other will do; the FI,
// which both can reach, decides. The destination runs the VM only after
// ClaimVEth succeeds; the source takes the vEth back only with RevertVEth,
// which fails once the destination claimed it. Exactly one of them wins.
//
// The claim also sets the vEth's count base: the counters at that moment.
// A vNIC's own counts start at zero when it is created, so the FI's counts
// beyond the base are comparable with them (the count barrier of a
// migration's freeze).

import "fmt"

// ClaimVEth records that the adapter at (serverPort, vif) took the vEth: it
// must be bound there. Claiming a claimed vEth again does nothing.
func (f *FI) ClaimVEth(id uint32, serverPort string, vif uint16) error {
	f.holdMu.Lock() // not during a release's drain: the base must be exact
	defer f.holdMu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	v, err := f.boundVEthLocked(id, serverPort, vif)
	if err != nil {
		return err
	}
	if v.claimed {
		return nil
	}
	v.claimed = true
	v.baseEgress = v.ctr.egressFrames.Load()
	v.baseIngress = v.ctr.ingressFrames.Load()
	f.log.Info("vEth claimed", "veth", v.name, "port", v.port.name, "vif", v.vif,
		"base_egress", v.baseEgress, "base_ingress", v.baseIngress)
	return nil
}

// RevertVEth moves a vEth bound to (fromPort, fromVif) and not claimed
// there back to (toPort, toVif), as claimed, with the count base it had:
// a migration that failed before its commit point returns the vEth to its
// source. It fails with ErrClaimed if the new binding was claimed (the
// migration committed) and ErrNotBound if the vEth is bound elsewhere.
func (f *FI) RevertVEth(id uint32, fromPort string, fromVif uint16, toPort string, toVif uint16) error {
	f.holdMu.Lock()
	f.mu.Lock()
	v, err := f.boundVEthLocked(id, fromPort, fromVif)
	if err == nil && v.claimed {
		err = fmt.Errorf("%w: %s at %s vif %d", ErrClaimed, v.name, fromPort, fromVif)
	}
	f.mu.Unlock()
	f.holdMu.Unlock()
	if err != nil {
		return err
	}
	// holdMu is released between the check and the rebind, so a claim may
	// come in between: check again under the locks the rebind takes.
	return f.rebind(id, toPort, toVif, func(v *veth) error {
		if v.claimed || v.port.name != fromPort || v.vif != fromVif {
			return fmt.Errorf("%w: %s was claimed or moved while reverting", ErrClaimed, v.name)
		}
		return nil
	}, true)
}

// boundVEthLocked returns vEth id if it is bound to (serverPort, vif).
func (f *FI) boundVEthLocked(id uint32, serverPort string, vif uint16) (*veth, error) {
	if f.state == stateClosed {
		return nil, ErrClosed
	}
	v := f.veths[id]
	if v == nil {
		return nil, fmt.Errorf("%w: Veth%d", ErrUnknownVEth, id)
	}
	if v.port.name != serverPort || v.vif != vif {
		return nil, fmt.Errorf("%w: Veth%d is at %s vif %d, not %s vif %d",
			ErrNotBound, id, v.port.name, v.vif, serverPort, vif)
	}
	return v, nil
}
