package fabric

import "errors"

// Sentinel errors. Methods wrap them with the object concerned and what to
// do about it; test with errors.Is.
var (
	// ErrClosed is returned by methods of an FI that was closed.
	ErrClosed = errors.New("fabric: FI closed")
	// ErrInvalidConfig reports a value out of range in a port profile, a
	// vEth or a port.
	ErrInvalidConfig = errors.New("fabric: invalid configuration")
	// ErrPortExists reports a port name already in use.
	ErrPortExists = errors.New("fabric: port already exists")
	// ErrUnknownPort reports a port name that is not a port of this FI, or
	// not of the kind the call needs.
	ErrUnknownPort = errors.New("fabric: no such port")
	// ErrUnknownProfile reports a port profile name that is not configured.
	ErrUnknownProfile = errors.New("fabric: no such port profile")
	// ErrProfileInUse reports an attempt to delete a port profile that vEths
	// still inherit.
	ErrProfileInUse = errors.New("fabric: port profile in use")
	// ErrMaxPorts reports that a port profile already has MaxPorts vEths.
	ErrMaxPorts = errors.New("fabric: port profile max ports reached")
	// ErrVEthExists reports a vEth number already in use.
	ErrVEthExists = errors.New("fabric: vEth already exists")
	// ErrUnknownVEth reports a vEth number that does not exist.
	ErrUnknownVEth = errors.New("fabric: no such vEth")
	// ErrVifInUse reports a (server port, vif) pair already bound to a vEth.
	ErrVifInUse = errors.New("fabric: vif already bound")
	// ErrNotBound reports a ClaimVEth or RevertVEth naming a (server port,
	// vif) the vEth is not bound to.
	ErrNotBound = errors.New("fabric: vEth not bound there")
	// ErrClaimed reports a RevertVEth of a vEth whose new binding's adapter
	// already claimed it: the migration committed.
	ErrClaimed = errors.New("fabric: vEth already claimed by its new binding")
)
