package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/policy"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestPolicyCheck(t *testing.T) {
	good := t.TempDir()
	os.WriteFile(filepath.Join(good, "45-site.yaml"), []byte(`
default: {trusted_domains: [intranet.example.com]}
rules:
  - name: trust-intranet
    action: trust
    match: {origin: {domain: [intranet.example.com]}}
`), 0o644)
	code, out, errOut := runCLI(t, "policy", "check", good)
	if code != 0 || !regexp.MustCompile(`^policy OK: 8 files, \d+ rules, version [0-9a-f]{16}`).MatchString(out) || !strings.Contains(out, "45-site.yaml") {
		t.Fatalf("check of a good policy: exit %d\n%s%s", code, out, errOut)
	}

	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "50-bad.yaml"), []byte(`rules:
  - name: one
    acton: trust
  - name: two
    action: isolate
    handler: nope
    match: {path: ["/x/[y"], path_regex: ["(a"]}
`), 0o644)
	code, out, errOut = runCLI(t, "policy", "check", bad)
	if code != 1 {
		t.Fatalf("check of a bad policy exited %d\n%s%s", code, out, errOut)
	}
	f := filepath.Join(bad, "50-bad.yaml")
	for _, want := range []string{
		f + `:3:5: unknown key "acton" in rule (did you mean "action"?)`,
		f + `:6:14: unknown handler "nope"`,
		f + `:7:20: match.path: pattern "/x/[y"`,
		f + `:7:43: bad path regex "(a"`,
		"policy is invalid: 5 errors",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("errors lack %q:\n%s", want, errOut)
		}
	}

	// --no-defaults checks the directory alone: the handler-less site file is incomplete.
	if code, _, errOut := runCLI(t, "policy", "check", "--no-defaults", good); code != 1 || !strings.Contains(errOut, "default.handler") {
		t.Errorf("check --no-defaults: exit %d\n%s", code, errOut)
	}
	if code, _, _ := runCLI(t, "policy", "check", filepath.Join(bad, "50-bad.yaml")); code != 1 {
		t.Errorf("check of a file, not a directory: exit %d", code)
	}
}

func TestPolicyExplain(t *testing.T) {
	dir := t.TempDir()
	pdf := filepath.Join(dir, "report.pdf")
	os.WriteFile(pdf, []byte("%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"), 0o644)
	if err := unix.Setxattr(pdf, policy.XattrOrigin, []byte("https://unknown.example/report.pdf"), 0); err != nil {
		t.Skipf("no user xattrs on %s: %v", dir, err)
	}
	site := t.TempDir()
	os.WriteFile(filepath.Join(site, "45-site.yaml"), []byte(`
rules:
  - name: trust-intranet
    action: trust
    match: {origin: {domain: [intranet.example.com]}}
`), 0o644)

	code, out, errOut := runCLI(t, "policy", "explain", "--policy-dir", site, "--user", "root", pdf)
	if code != 0 {
		t.Fatalf("explain exited %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		"origin:    https://unknown.example/report.pdf",
		"decision:  isolate",
		"rule:      internet-pdf (<shipped>/50-internet.yaml:",
		`content_type "application/pdf"`,
		"handler:   documents",
		"runs     /usr/bin/pdftotext -layout -nopgbrk /input/report.pdf /output/report.txt",
		"why:       isolate with handler documents",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}

	// The origin flag overrides the xattr; JSON for machines.
	code, out, errOut = runCLI(t, "policy", "explain", "--policy-dir", site, "--json", "--origin", "https://docs.intranet.example.com/r.pdf", pdf)
	if code != 0 {
		t.Fatalf("explain --json exited %d\n%s%s", code, out, errOut)
	}
	var got struct {
		Request  policy.Request
		Decision policy.Decision
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("explain --json: %v\n%s", err, out)
	}
	if got.Decision.Action != policy.ActionTrust || got.Decision.Rule != "trust-intranet" || got.Request.Path != pdf {
		t.Errorf("explain --json decided %+v for %+v", got.Decision, got.Request)
	}

	// An allow-listed opener.
	code, out, _ = runCLI(t, "policy", "explain", "--policy-dir", site, "--opener", "/usr/bin/sha256sum", pdf)
	if code != 0 || !strings.Contains(out, "decision:  trust") || !strings.Contains(out, "trust-byte-readers") {
		t.Errorf("explain --opener: exit %d\n%s", code, out)
	}
	if code, _, errOut := runCLI(t, "policy", "explain", filepath.Join(dir, "missing")); code != 1 || !strings.Contains(errOut, "no such file") {
		t.Errorf("explain of a missing file: exit %d, %s", code, errOut)
	}
}

func TestPolicyShow(t *testing.T) {
	site := t.TempDir()
	os.WriteFile(filepath.Join(site, "05-first.yaml"), []byte("rules:\n  - {name: first, action: deny, match: {extension: [EXE]}}\n"), 0o644)
	code, out, errOut := runCLI(t, "policy", "show", site)
	if code != 0 {
		t.Fatalf("show exited %d\n%s", code, errOut)
	}
	if !strings.Contains(out, "# "+filepath.Join(site, "05-first.yaml")+":2\n") || !strings.Contains(out, "- exe\n") {
		t.Errorf("show output lacks the site rule, normalized:\n%s", out)
	}
	// The shown policy is a complete policy by itself.
	norm := t.TempDir()
	os.WriteFile(filepath.Join(norm, "all.yaml"), []byte(out), 0o644)
	if code, out, errOut := runCLI(t, "policy", "check", "--no-defaults", norm); code != 0 {
		t.Errorf("shown policy does not check: %s%s", out, errOut)
	}
}

// TestPolicyExplicitDir: a policy directory named on the command line must be a readable
// directory. A mistyped one is an error, not a silent check of the shipped defaults alone.
func TestPolicyExplicitDir(t *testing.T) {
	tmp := t.TempDir()
	missing := filepath.Join(tmp, "nonexistent")
	file := filepath.Join(tmp, "file.yaml")
	os.WriteFile(file, []byte("rules: []\n"), 0o644)
	dangling := filepath.Join(tmp, "dangling")
	os.Symlink(filepath.Join(tmp, "gone"), dangling)
	pdf := filepath.Join(tmp, "x.pdf")
	os.WriteFile(pdf, []byte("%PDF-1.4\n"), 0o644)
	for _, tc := range []struct {
		dir, want string
	}{
		{missing, "policy directory " + missing + ": no such file or directory"},
		{dangling, "policy directory " + dangling + ": no such file or directory"},
		{file, "policy directory " + file + " is not a directory"},
	} {
		for _, args := range [][]string{
			{"policy", "check", tc.dir},
			{"policy", "show", tc.dir},
			{"policy", "explain", "--policy-dir", tc.dir, pdf},
			{"policy", "check", "--no-defaults", tc.dir},
		} {
			code, out, errOut := runCLI(t, args...)
			if code != 1 || !strings.Contains(errOut, tc.want) || strings.Contains(out, "policy OK") || strings.Contains(out, "decision:") {
				t.Errorf("%v: exit %d, want 1 with %q\nstdout: %s\nstderr: %s", args, code, tc.want, out, errOut)
			}
		}
	}
	// The default directory, not named, may be absent: isolatord then applies the shipped
	// defaults alone, and so does isoctl.
	if _, err := os.Stat(policy.DefaultDir); os.IsNotExist(err) {
		if code, out, errOut := runCLI(t, "policy", "check"); code != 0 || !strings.Contains(out, "policy OK") {
			t.Errorf("check without a directory, %s absent: exit %d\n%s%s", policy.DefaultDir, code, out, errOut)
		}
	}
}

// TestPolicyExplainRequester: --user names a user of the user database, by name or uid;
// an unknown one is an error, never a silent decision for uid 0 with no home.
func TestPolicyExplainRequester(t *testing.T) {
	file := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(file, []byte("hello\n"), 0o644)
	for _, args := range [][]string{
		{"--user", "nosuchuser"},
		{"--user", "4294967"},
		{"--user", ""},
	} {
		code, out, errOut := runCLI(t, append(append([]string{"policy", "explain"}, args...), file)...)
		want := "no such user " + args[1]
		if args[1] == "" {
			want = "--user must name a user"
		}
		if code != 1 || !strings.Contains(errOut, want) || strings.Contains(out, "decision:") {
			t.Errorf("explain %v: exit %d, want 1 with %q\n%s%s", args, code, want, out, errOut)
		}
	}
	code, out, errOut := runCLI(t, "policy", "explain", "--user", "0", file)
	if code != 0 || !strings.Contains(out, "requester: root (uid 0), home ") {
		t.Errorf("explain --user 0: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCLI(t, "policy", "explain", "--opener", "sha256sum", file)
	if code != 1 || !strings.Contains(errOut, `--opener must be the absolute path of a program, not "sha256sum"`) {
		t.Errorf("explain --opener sha256sum: exit %d\n%s%s", code, out, errOut)
	}
}

// TestPolicyExplainMessages: a missing file is named first; --json uses the same
// snake_case names for the request as for the decision, without unknown facts.
func TestPolicyExplainMessages(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pdf")
	if code, _, errOut := runCLI(t, "policy", "explain", missing); code != 1 || errOut != "isoctl: "+missing+": no such file or directory\n" {
		t.Errorf("explain of a missing file: exit %d, %q", code, errOut)
	}
	link := filepath.Join(dir, "link.pdf")
	os.Symlink(missing, link)
	if code, _, errOut := runCLI(t, "policy", "explain", link); code != 1 || errOut != "isoctl: "+link+": dangling symlink to "+missing+"\n" {
		t.Errorf("explain of a dangling symlink: exit %d, %q", code, errOut)
	}

	file := filepath.Join(dir, "notes.txt")
	os.WriteFile(file, []byte("hello\n"), 0o644)
	code, out, errOut := runCLI(t, "policy", "explain", "--json", "--user", "root", file)
	if code != 0 {
		t.Fatalf("explain --json: exit %d\n%s%s", code, out, errOut)
	}
	var got map[string]map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("explain --json: %v\n%s", err, out)
	}
	req := got["request"]
	for _, k := range []string{"path", "user", "uid", "home"} {
		if _, ok := req[k]; !ok {
			t.Errorf("request lacks %q: %s", k, out)
		}
	}
	for k := range req {
		if k != strings.ToLower(k) {
			t.Errorf("request key %q is not snake_case: %s", k, out)
		}
	}
	for _, k := range []string{"opener", "origin", "referrer", "size", "sha256", "content_type"} {
		if _, ok := req[k]; ok {
			t.Errorf("request has %q, unknown here: %s", k, out)
		}
	}
	if !strings.Contains(out, `"file": "<shipped>/`) {
		t.Errorf("--json escapes <shipped>: %s", out)
	}
}

// TestPolicyCheckLargePolicy: check of a large legal policy whose rules all overlap ends
// with the policy valid and a warning that the shadowed-rule analysis stopped, rather
// than comparing every pair of rules for minutes.
func TestPolicyCheckLargePolicy(t *testing.T) {
	exts := make([]string, 100)
	for i := range exts {
		exts[i] = "e" + strconv.Itoa(i)
	}
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range 1500 {
		b.WriteString("  - {name: r" + strconv.Itoa(i) + ", action: deny, match: {extension: [" + strings.Join(exts, ", ") + ", x" + strconv.Itoa(i) + "]}}\n")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "50-large.yaml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI(t, "policy", "check", dir)
	if code != 0 || !strings.Contains(out, "policy OK") {
		t.Fatalf("check: exit %d\n%s%s", code, out, errOut)
	}
	if n := strings.Count(errOut, "warning: the shadowed-rule analysis stopped here"); n != 1 {
		t.Errorf("%d warnings that the analysis stopped, want 1:\n%s", n, errOut)
	}
}
