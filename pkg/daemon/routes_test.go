package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/isolator-dev/isolator/pkg/api"
)

// TestRouteTable checks that every route carries a label that matches what it does: read
// routes are GETs, write routes POSTs, /metrics is for administrators; and that the methods
// behind the write routes refuse a request that came in on a read route.
func TestRouteTable(t *testing.T) {
	d := &Daemon{}
	want := map[string]perm{
		"POST " + api.PathOpen:    permWrite,
		"GET " + api.PathTasks:    permRead,
		"GET " + api.PathTask:     permRead,
		"GET " + api.PathLogs:     permRead,
		"GET " + api.PathResults:  permRead,
		"POST " + api.PathKill:    permWrite,
		"GET " + api.PathStatus:   permRead,
		"POST " + api.PathRelease: permWrite,
		"GET " + api.PathEvents:   permRead,
		"GET " + api.PathMetrics:  permAdmin,
	}
	for _, rt := range d.routes() {
		method, _, _ := strings.Cut(rt.pattern, " ")
		if p, ok := want[rt.pattern]; !ok || p != rt.perm {
			t.Errorf("route %s is labelled %s, want %s", rt.pattern, rt.perm, want[rt.pattern])
		}
		if (rt.perm == permWrite) != (method == "POST") {
			t.Errorf("route %s: a %s route must be a POST exactly when it writes", rt.pattern, rt.perm)
		}
		delete(want, rt.pattern)
	}
	for pattern := range want {
		t.Errorf("route %s is missing", pattern)
	}

	reader := &Peer{UID: 0, route: permRead}
	if _, err := d.Kill(context.Background(), reader, "0000000000000000"); !errors.Is(err, ErrNotPermitted) {
		t.Errorf("Kill on a read route: %v", err)
	}
	if _, err := d.Release(reader, &api.ReleaseRequest{Path: "/etc/hostname"}); !errors.Is(err, ErrNotPermitted) {
		t.Errorf("Release on a read route: %v", err)
	}
	if err := d.Open(context.Background(), reader, &api.OpenRequest{Path: "/etc/hostname"}, nil); !errors.Is(err, ErrNotPermitted) {
		t.Errorf("Open on a read route: %v", err)
	}
}
