package client

import "context"

// Do sends method to path (e.g. "/api/v1/vms/web-1/mode") with in, if not
// nil, as its JSON body and decodes the response into out, if not nil. It
// is for endpoints that are not objects of a kind, such as the actions of
// `vmfex lab up`'s API; errors are the same *Error as the other methods'.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	return c.do(ctx, method, path, in, out)
}
