package daemon

import (
	"context"
	"fmt"

	"github.com/isolator-dev/isolator/pkg/api"
	"github.com/isolator-dev/isolator/pkg/policy"
)

// PolicyDecider adapts a policy.Store, the hot-reloaded trust policy, to Decider.
type PolicyDecider struct {
	store *policy.Store
}

var (
	_ Decider      = (*PolicyDecider)(nil)
	_ Reloader     = (*PolicyDecider)(nil)
	_ PolicyStatus = (*PolicyDecider)(nil)
)

// NewPolicyDecider returns a Decider that evaluates the policy store's current policy.
func NewPolicyDecider(store *policy.Store) *PolicyDecider { return &PolicyDecider{store: store} }

// Decide evaluates the policy in force for req. The content facts come from req.File, the
// descriptor the daemon opened, and never from the path: a request without one is refused.
func (p *PolicyDecider) Decide(_ context.Context, req *DecideRequest) (*Decision, error) {
	if req.File == nil {
		return nil, fmt.Errorf("policy: no open file to decide on for %s", req.Path)
	}
	preq := &policy.Request{
		Path: req.Path, File: req.File, User: req.User, UID: req.UID, Groups: req.Groups, Home: req.Home,
		Opener: req.Opener, Origin: req.Origin, Referrer: req.Referrer,
	}
	if r := req.Release; r != nil {
		preq.Release = &policy.Release{SHA256: r.SHA256, By: r.By, At: r.At, Reason: r.Reason}
	}
	pd, err := p.store.Current().Decide(preq)
	if err != nil {
		return nil, err
	}
	d := &Decision{Decision: api.Decision{
		Action: api.Action(pd.Action), Rule: pd.Rule, File: pd.File, Line: pd.Line,
		Matched: pd.Matched, Explanation: pd.Explanation, PolicyVersion: pd.PolicyVersion,
	}, SHA256: pd.SHA256}
	if h := pd.Handler; h != nil {
		d.Handler = &Handler{Name: h.Name, Image: h.Image, Program: h.Program, Args: h.Args, Env: h.Env,
			Memory: h.Memory, Timeout: h.Timeout, MaxOutputBytes: h.MaxOutputBytes, MaxOutputFiles: h.MaxOutputFiles}
		for _, o := range h.Returns {
			d.Handler.Returns = append(d.Handler.Returns, string(o))
		}
	}
	return d, nil
}

// Version is the content hash of the policy in force.
func (p *PolicyDecider) Version() string { return p.store.Current().Version() }

// PolicyError is why the latest load of the policy failed, or "" when it succeeded.
func (p *PolicyDecider) PolicyError() string {
	if err := p.store.Last().Err; err != nil {
		return err.Error()
	}
	return ""
}

// Reload rereads the policy; an invalid one is reported and the last good one stays.
func (p *PolicyDecider) Reload() error {
	if r := p.store.Reload(); r.Err != nil {
		return fmt.Errorf("policy reload rejected, keeping %s: %w", r.Version, r.Err)
	}
	return nil
}
