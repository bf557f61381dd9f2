// Package policies holds Isolator's shipped default policy files, embedded in the binaries
// so that a fresh machine is protected with no configuration. Administrators add or
// override files in /etc/isolator/policies.d; see docs/POLICY.md.
package policies

import (
	"embed"
	"io/fs"
)

//go:embed *.yaml
var files embed.FS

// FS returns the shipped policy files, at the root of the returned file system.
func FS() fs.FS { return files }
