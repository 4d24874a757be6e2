package fabric

import "fmt"

// Text forms of the enums, for JSON output and configuration files.

// MarshalText implements encoding.TextMarshaler: "access" or "trunk".
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *Mode) UnmarshalText(b []byte) error {
	switch string(b) {
	case "access":
		*m = ModeAccess
	case "trunk":
		*m = ModeTrunk
	default:
		return fmt.Errorf("%w: switchport mode %q; use access or trunk", ErrInvalidConfig, b)
	}
	return nil
}

// MarshalText implements encoding.TextMarshaler: "up" or "down".
func (s LinkState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// MarshalText implements encoding.TextMarshaler: "server" or "uplink".
func (k PortKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// MarshalText implements encoding.TextMarshaler: the reason's name.
func (r DropReason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler (a report read back,
// e.g. from an FI agent's status).
func (s *LinkState) UnmarshalText(b []byte) error {
	return unmarshalEnum(b, s, []LinkState{LinkDown, LinkUp}, "link state")
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *PortKind) UnmarshalText(b []byte) error {
	return unmarshalEnum(b, k, []PortKind{PortServer, PortUplink}, "port kind")
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *DropReason) UnmarshalText(b []byte) error {
	all := make([]DropReason, NumDropReasons)
	for i := range all {
		all[i] = DropReason(i)
	}
	return unmarshalEnum(b, r, all, "drop reason")
}

func unmarshalEnum[E fmt.Stringer](b []byte, dst *E, all []E, what string) error {
	for _, e := range all {
		if e.String() == string(b) {
			*dst = e
			return nil
		}
	}
	return fmt.Errorf("%w: %s %q", ErrInvalidConfig, what, b)
}
