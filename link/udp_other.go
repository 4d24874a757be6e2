//go:build !linux

package link

import "net"

// forceSocketBuffers reports false: only Linux can raise socket buffers past
// the system limits.
func forceSocketBuffers(c *net.UDPConn, size int) bool { return false }
