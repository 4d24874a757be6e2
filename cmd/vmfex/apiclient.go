package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vmfex/vmfex/manager"
	"github.com/vmfex/vmfex/manager/client"
)

// defaultServer is where vmfex manager listens by default.
const defaultServer = "http://127.0.0.1:8443"

// clientOpts are the flags every command that talks to the manager takes.
type clientOpts struct {
	server    string
	tokenFile string
	output    string // "table" or "json"
	tls       client.TLSFiles
}

func addClientFlags(cmd *cobra.Command, o *clientOpts) {
	f := cmd.PersistentFlags()
	f.StringVar(&o.server, "server", "", "manager URL (default $VMFEX_SERVER, else "+defaultServer+")")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the API token (default: the token in $VMFEX_TOKEN)")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	f.StringVar(&o.tls.CA, "ca-file", "", "with an https manager: its CA certificate (default $VMFEX_CA_FILE; DATA-DIR/pki/ca.crt on the manager's machine)")
	f.StringVar(&o.tls.Cert, "cert-file", "", "with an https manager: this client's certificate from vmfex manager issue-cert (default $VMFEX_CERT_FILE)")
	f.StringVar(&o.tls.Key, "key-file", "", "with an https manager: this client's key (default $VMFEX_KEY_FILE)")
}

// connect returns a client from the flags, then the environment.
func (o *clientOpts) connect() (*client.Client, error) {
	if o.output != "table" && o.output != "json" {
		return nil, fmt.Errorf("-o %q is not an output format; use table or json", o.output)
	}
	server := o.server
	if server == "" {
		server = os.Getenv("VMFEX_SERVER")
	}
	if server == "" {
		server = defaultServer
	}
	var token string
	if o.tokenFile != "" {
		var err error
		if token, err = manager.LoadToken(o.tokenFile); err != nil {
			return nil, err
		}
	} else {
		token = strings.TrimSpace(os.Getenv("VMFEX_TOKEN"))
	}
	return client.NewTLS(server, token, o.tlsFiles())
}

// tlsFiles returns the TLS files from the flags, then the environment.
func (o *clientOpts) tlsFiles() client.TLSFiles {
	t := o.tls
	for _, e := range []struct {
		v   *string
		env string
	}{{&t.CA, "VMFEX_CA_FILE"}, {&t.Cert, "VMFEX_CERT_FILE"}, {&t.Key, "VMFEX_KEY_FILE"}} {
		if *e.v == "" {
			*e.v = os.Getenv(e.env)
		}
	}
	return t
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table prints rows under a header and a line of dashes per column, the
// way NX-OS show commands do.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	dashes := make([]string, len(header))
	for i, h := range header {
		dashes[i] = strings.Repeat("-", len(h))
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	fmt.Fprintln(tw, strings.Join(dashes, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// created reports a created object: the object itself with -o json, else
// one line.
func (o *clientOpts) created(w io.Writer, what, name string, obj any) error {
	if o.output == "json" {
		return printJSON(w, obj)
	}
	_, err := fmt.Fprintf(w, "%s %s created\n", what, name)
	return err
}

func (o *clientOpts) deleted(w io.Writer, what, name string) error {
	if o.output == "json" {
		return printJSON(w, map[string]string{"deleted": name})
	}
	_, err := fmt.Fprintf(w, "%s %s deleted\n", what, name)
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
