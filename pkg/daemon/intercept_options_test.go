package daemon

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/isolator-dev/isolator/pkg/interception"
)

func TestInterceptOptions(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A passwd file with one regular user whose download directory exists, one without a
	// home and a system account.
	home := filepath.Join(dir, "home", "alice")
	if err := os.MkdirAll(filepath.Join(home, "Downloads"), 0o755); err != nil {
		t.Fatal(err)
	}
	passwd := write("passwd", "root:x:0:0::/root:/bin/sh\n"+
		"daemon:x:1:1::"+dir+":/bin/sh\n"+
		"alice:x:1000:1000::"+home+":/bin/sh\n"+
		"bob:x:1001:1001::"+filepath.Join(dir, "home", "bob")+":/bin/sh\n")
	full := write("full.yaml", "download_dirs: [/srv/a, /srv/b]\ngate: false\ngate_deadline: 250ms\n"+
		"gate_fallback: trust\ngate_allow: [/usr/bin/restic]\ndownload_settle: 3s\ndownload_temp_idle: 1m\n")

	tests := []struct {
		name    string
		args    []string
		check   func(*InterceptConfig) bool
		wantErr string
	}{
		{"off by default", []string{"--config", write("empty.yaml", "")}, func(c *InterceptConfig) bool { return c == nil }, ""},
		{"--intercept uses the users' download dirs", []string{"--intercept"}, func(c *InterceptConfig) bool {
			return len(c.Dirs) == 0 && c.Passwd == passwd && !c.NoGate &&
				c.GateDeadline == interception.DefaultDeadline && c.GateFallback == interception.ActionDeny &&
				c.Settle == interception.DefaultSettle && c.TempIdle == interception.DefaultTempIdle
		}, ""},
		{"intercept key", []string{"--config", write("on.yaml", "intercept: true\n")}, func(c *InterceptConfig) bool {
			return len(c.Dirs) == 0 && c.Passwd == passwd
		}, ""},
		{"--watch-dir repeatable, enables", []string{"--watch-dir", "/x", "--watch-dir", "/y", "--gate-allow", "/usr/bin/a",
			"--gate-allow", "/usr/bin/b", "--no-gate", "--gate-deadline", "2s", "--download-settle", "100ms",
			"--download-temp-idle", "30s"}, func(c *InterceptConfig) bool {
			return slices.Equal(c.Dirs, []string{"/x", "/y"}) && c.Passwd == "" && slices.Equal(c.AllowPrograms, []string{"/usr/bin/a", "/usr/bin/b"}) &&
				c.NoGate && c.GateDeadline == 2*time.Second && c.Settle == 100*time.Millisecond && c.TempIdle == 30*time.Second
		}, ""},
		{"file keys", []string{"--config", full}, func(c *InterceptConfig) bool {
			return slices.Equal(c.Dirs, []string{"/srv/a", "/srv/b"}) && c.NoGate && c.GateDeadline == 250*time.Millisecond &&
				c.GateFallback == interception.ActionTrust && slices.Equal(c.AllowPrograms, []string{"/usr/bin/restic"}) &&
				c.Settle == 3*time.Second && c.TempIdle == time.Minute
		}, ""},
		{"flags override file keys", []string{"--config", full, "--watch-dir", "/z", "--gate-fallback", "deny", "--gate-deadline", "1s"},
			func(c *InterceptConfig) bool {
				return slices.Equal(c.Dirs, []string{"/z"}) && c.GateFallback == interception.ActionDeny && c.GateDeadline == time.Second
			}, ""},
		{"bad fallback", []string{"--intercept", "--gate-fallback", "maybe"}, nil, "neither deny nor trust"},
		{"typo is an error", []string{"--config", write("typo.yaml", "download_dir: [/x]\n")}, nil, "field download_dir not found"},
		{"wrong type", []string{"--config", write("type.yaml", "gate_deadline: soon\n")}, nil, "cannot unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseOptions(tt.args, io.Discard)
			var c *InterceptConfig
			if err == nil {
				c, err = o.interceptConfig(passwd)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Errorf("config %+v", c)
			}
		})
	}
}
