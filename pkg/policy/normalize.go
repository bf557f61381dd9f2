package policy

import (
	"bytes"
	"fmt"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// The normalized form of a policy is one YAML document in the policy language that
// behaves exactly like the policy: defaults resolved, handlers and lists sorted by name
// (list files inlined), rules in evaluation order with the file and line they came from as
// comments, sizes in bytes, domains and extensions in lower case.

type normDefault struct {
	Action           Action   `yaml:"action"`
	Handler          string   `yaml:"handler,omitempty"`
	UntrustedAction  Action   `yaml:"untrusted_action"`
	UntrustedHandler string   `yaml:"untrusted_handler,omitempty"`
	TrustedDomains   []string `yaml:"trusted_domains,omitempty"`
}

type normHandler struct {
	Description    string   `yaml:"description,omitempty"`
	Image          string   `yaml:"image"`
	Program        string   `yaml:"program"`
	Args           []string `yaml:"args,omitempty"`
	Env            []string `yaml:"env,omitempty"`
	Memory         int64    `yaml:"memory,omitempty"`
	Timeout        string   `yaml:"timeout,omitempty"`
	MaxOutputBytes int64    `yaml:"max_output_bytes,omitempty"`
	MaxOutputFiles int      `yaml:"max_output_files,omitempty"`
	Returns        []Output `yaml:"returns"`
}

type normList struct {
	SHA256 []string `yaml:"sha256,omitempty"` // absent when empty (list files of no digests): "l: {}"
}

type normOrigin struct {
	Present  *bool    `yaml:"present,omitempty"`
	URLRegex []string `yaml:"url_regex,omitempty"`
	Host     []string `yaml:"host,omitempty"`
	Domain   []string `yaml:"domain,omitempty"`
	Scheme   []string `yaml:"scheme,omitempty"`
}

type normSize struct {
	Min *int64 `yaml:"min,omitempty"`
	Max *int64 `yaml:"max,omitempty"`
}

type normCond struct {
	Path        []string    `yaml:"path,omitempty"`
	PathRegex   []string    `yaml:"path_regex,omitempty"`
	Name        []string    `yaml:"name,omitempty"`
	Extension   []string    `yaml:"extension,omitempty"`
	User        []string    `yaml:"user,omitempty"`
	Group       []string    `yaml:"group,omitempty"`
	Opener      []string    `yaml:"opener,omitempty"`
	Origin      *normOrigin `yaml:"origin,omitempty"`
	Referrer    *normOrigin `yaml:"referrer,omitempty"`
	Size        *normSize   `yaml:"size,omitempty"`
	ContentType []string    `yaml:"content_type,omitempty"`
	SHA256      []string    `yaml:"sha256,omitempty"`
	SHA256List  []string    `yaml:"sha256_list,omitempty"`
}

type normRule struct {
	Name        string    `yaml:"name"`
	Description string    `yaml:"description,omitempty"`
	Action      Action    `yaml:"action"`
	Handler     string    `yaml:"handler,omitempty"`
	Match       *normCond `yaml:"match,omitempty"`
	Unless      *normCond `yaml:"unless,omitempty"`
}

type normPolicy struct {
	Version  int                     `yaml:"version"`
	Default  normDefault             `yaml:"default"`
	Handlers map[string]*normHandler `yaml:"handlers,omitempty"`
	Lists    map[string]*normList    `yaml:"lists,omitempty"`
	Rules    []*normRule             `yaml:"rules,omitempty"`
}

func dedupe(in []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func normConds(cs []*cond) *normCond {
	if len(cs) == 0 {
		return nil
	}
	n := &normCond{}
	orig := func(c *cond) *normOrigin {
		if c.referrer {
			if n.Referrer == nil {
				n.Referrer = &normOrigin{}
			}
			return n.Referrer
		}
		if n.Origin == nil {
			n.Origin = &normOrigin{}
		}
		return n.Origin
	}
	for _, c := range cs {
		keys := dedupe(c.keys)
		switch c.kind {
		case kindPath:
			n.Path = keys
		case kindPathRegex:
			n.PathRegex = keys
		case kindName:
			n.Name = keys
		case kindExtension:
			n.Extension = keys
		case kindContentType:
			n.ContentType = keys
		case kindSize:
			s := &normSize{}
			if c.min > 0 {
				v := c.min
				s.Min = &v
			}
			if c.max >= 0 {
				v := c.max
				s.Max = &v
			}
			if s.Min == nil && s.Max == nil {
				zero := int64(0)
				s.Min = &zero
			}
			n.Size = s
		case kindSHA256:
			n.SHA256 = keys
			for _, l := range c.lists {
				n.SHA256List = append(n.SHA256List, l.name)
			}
		case kindUser:
			for _, k := range keys {
				n.User = append(n.User, strings.TrimPrefix(k, "#"))
			}
		case kindGroup:
			n.Group = keys
		case kindOpener:
			n.Opener = keys
		case kindPresent:
			v := c.present
			orig(c).Present = &v
		case kindURLRegex:
			orig(c).URLRegex = keys
		case kindHost:
			orig(c).Host = keys
		case kindDomain:
			orig(c).Domain = keys
		case kindScheme:
			orig(c).Scheme = keys
		}
	}
	return n
}

// Normalized returns the policy as one YAML document in the policy language, which loads
// into a policy that decides exactly like this one (`isoctl policy show`).
func (p *Policy) Normalized() ([]byte, error) {
	if p.failReason != "" {
		return nil, fmt.Errorf("policy: no policy in force: %s", p.failReason)
	}
	np := normPolicy{
		Version: 1,
		Default: normDefault{
			Action:          p.def.action,
			UntrustedAction: p.untrusted.action,
			TrustedDomains:  p.trustedDomains,
		},
		Handlers: map[string]*normHandler{},
		Lists:    map[string]*normList{},
	}
	if p.def.handler != nil {
		np.Default.Handler = p.def.handler.Name
	}
	if p.untrusted.handler != nil {
		np.Default.UntrustedHandler = p.untrusted.handler.Name
	}
	for name, h := range p.handlers {
		nh := &normHandler{
			Description: h.Summary, Image: h.Image, Program: h.Program, Args: h.Args, Env: h.Env,
			Memory: h.Memory, MaxOutputBytes: h.MaxOutputBytes, MaxOutputFiles: h.MaxOutputFiles, Returns: h.Returns,
		}
		if h.Timeout > 0 {
			nh.Timeout = h.Timeout.String()
		}
		np.Handlers[name] = nh
	}
	for name, l := range p.lists {
		nl := &normList{SHA256: make([]string, 0, len(l.hashes))}
		for h := range l.hashes {
			nl.SHA256 = append(nl.SHA256, h)
		}
		sort.Strings(nl.SHA256)
		np.Lists[name] = nl
	}
	for _, r := range p.rules {
		nr := &normRule{Name: r.name, Description: r.description, Action: r.action, Match: normConds(r.match), Unless: normConds(r.unless)}
		if r.handler != nil {
			nr.Handler = r.handler.Name
		}
		np.Rules = append(np.Rules, nr)
	}
	var doc yaml.Node
	if err := doc.Encode(&np); err != nil {
		return nil, fmt.Errorf("policy: normalizing: %w", err)
	}
	// Say where each rule came from.
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value != "rules" {
			continue
		}
		for j, item := range doc.Content[i+1].Content {
			item.HeadComment = fmt.Sprintf("%s:%d", p.rules[j].file, p.rules[j].line)
		}
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Effective policy %s, merged from:\n", p.version)
	for _, f := range p.files {
		fmt.Fprintf(&b, "#   %s\n", f)
	}
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("policy: normalizing: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("policy: normalizing: %w", err)
	}
	return b.Bytes(), nil
}
