package xdg

import (
	"os"
	"path/filepath"
	"strings"
)

// Env is what the lookups read from the environment: the XDG base directories, the
// current desktop and the search path for programs. Tests build one by hand; FromEnv
// fills one from the process environment.
type Env struct {
	ConfigHome string   // $XDG_CONFIG_HOME, default ~/.config
	ConfigDirs []string // $XDG_CONFIG_DIRS, default /etc/xdg
	DataHome   string   // $XDG_DATA_HOME, default ~/.local/share
	DataDirs   []string // $XDG_DATA_DIRS, default /usr/local/share:/usr/share
	// Desktops are the names in $XDG_CURRENT_DESKTOP, lowercased, in order: each selects
	// a $desktop-mimeapps.list.
	Desktops []string
	Path     string // $PATH, for TryExec= and Exec= programs without a slash
}

// FromEnv returns the Env of the environment getenv reads (os.Getenv for the process's),
// with the defaults of the XDG Base Directory specification for unset variables.
// Relative paths are ignored, as that specification requires.
func FromEnv(getenv func(string) string) Env {
	if getenv == nil {
		getenv = os.Getenv
	}
	home := getenv("HOME")
	if !filepath.IsAbs(home) {
		home = ""
	}
	one := func(name, def string) string {
		if v := getenv(name); filepath.IsAbs(v) {
			return filepath.Clean(v)
		}
		if home == "" {
			return ""
		}
		return filepath.Join(home, def)
	}
	list := func(name, def string) []string {
		v := getenv(name)
		if v == "" {
			v = def
		}
		var dirs []string
		for _, d := range strings.Split(v, ":") {
			if filepath.IsAbs(d) {
				dirs = append(dirs, filepath.Clean(d))
			}
		}
		return dirs
	}
	e := Env{
		ConfigHome: one("XDG_CONFIG_HOME", ".config"),
		ConfigDirs: list("XDG_CONFIG_DIRS", "/etc/xdg"),
		DataHome:   one("XDG_DATA_HOME", ".local/share"),
		DataDirs:   list("XDG_DATA_DIRS", "/usr/local/share:/usr/share"),
		Path:       getenv("PATH"),
	}
	for _, d := range strings.Split(getenv("XDG_CURRENT_DESKTOP"), ":") {
		if d = strings.ToLower(strings.TrimSpace(d)); d != "" && !strings.ContainsRune(d, '/') {
			e.Desktops = append(e.Desktops, d)
		}
	}
	return e
}

// dataDirs is $XDG_DATA_HOME then $XDG_DATA_DIRS, most important first.
func (e *Env) dataDirs() []string {
	var dirs []string
	if e.DataHome != "" {
		dirs = append(dirs, e.DataHome)
	}
	return append(dirs, e.DataDirs...)
}
