// Package hygiene holds the repository-wide checks that every package has a
// doc comment and every Go file is gofmt-formatted. It has no code.
package hygiene
