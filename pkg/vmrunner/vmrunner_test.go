package vmrunner

import (
	"testing"

	"github.com/isolator-dev/isolator/pkg/microvm"
	"github.com/isolator-dev/isolator/pkg/policy"
)

// TestHandlerMemoryBounds: the memory a policy's handler may ask for is what a micro VM
// accepts, so that a policy that validates never asks for a VM that cannot be made.
func TestHandlerMemoryBounds(t *testing.T) {
	if policy.MinHandlerMemory != microvm.MinMemory || policy.MaxHandlerMemory != microvm.MaxMemory {
		t.Errorf("policy accepts handler memory %d..%d, micro VMs %d..%d",
			policy.MinHandlerMemory, policy.MaxHandlerMemory, microvm.MinMemory, microvm.MaxMemory)
	}
}
