package link

import (
	"net"
	"syscall"
)

// forceSocketBuffers sets both buffers of c to size bytes past
// net.core.{r,w}mem_max (SO_RCVBUFFORCE, SO_SNDBUFFORCE; socket(7)). It
// reports false if the process may not (it needs CAP_NET_ADMIN).
func forceSocketBuffers(c *net.UDPConn, size int) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, size)
		if serr == nil {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, size)
		}
	})
	return err == nil && serr == nil
}
