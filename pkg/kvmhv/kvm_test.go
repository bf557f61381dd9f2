package kvmhv

import (
	"testing"
)

// requireKVM skips the test, saying why, where /dev/kvm cannot be used.
func requireKVM(t testing.TB) *System {
	t.Helper()
	if ok, why := Available(); !ok {
		t.Skipf("skipping: /dev/kvm unavailable: %s", why)
	}
	s, err := Open()
	if err != nil {
		t.Fatalf("open kvm: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestProbe(t *testing.T) {
	s := requireKVM(t)
	t.Logf("syscall mode: %v", s.SyscallMode())
}
