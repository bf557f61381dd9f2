//go:build tools

// Package deps pins the project's direct dependencies while the packages that use them are written.
package deps

import (
	_ "github.com/bytedance/gopkg/util/gopool"
	_ "github.com/fsnotify/fsnotify"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/spf13/cobra"
	_ "golang.org/x/arch/x86/x86asm"
	_ "golang.org/x/sys/unix"
	_ "gopkg.in/yaml.v3"
)
