// Package peerio holds what the peers' helper programs share: how they fail and how they write
// what they build.
package peerio

import (
	"fmt"
	"io"
	"os"
)

// Die prints err after the program's name on stderr and exits 1.
func Die(prog string, err error) {
	fmt.Fprintln(os.Stderr, prog+":", err)
	os.Exit(1)
}

// WriteFile writes all of r to a new file at path.
func WriteFile(path string, r io.Reader) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
