package policy

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/isolator-dev/isolator/policies"
	"golang.org/x/sys/unix"
)

// writeFiles writes name -> content into dir, creating it.
func writeFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// loadDir loads the policy in dir alone.
func loadDir(t testing.TB, dir string) (*Policy, error) {
	t.Helper()
	return LoadSources(Source{FS: os.DirFS(dir), Dir: ".", Label: dir})
}

// loadWithShipped loads the shipped defaults with the site directory dir layered on top.
func loadWithShipped(t testing.TB, dir string) *Policy {
	t.Helper()
	p, err := LoadSources(Source{FS: policies.FS(), Dir: ".", Label: ShippedLabel}, Source{FS: os.DirFS(dir), Dir: ".", Label: dir})
	if err != nil {
		t.Fatalf("loading shipped + %s: %v", dir, err)
	}
	return p
}

// setOrigin records a download origin the way Chromium does.
func setOrigin(t testing.TB, path, origin, referrer string) {
	t.Helper()
	if origin != "" {
		if err := unix.Setxattr(path, XattrOrigin, []byte(origin), 0); err != nil {
			t.Skipf("file system of %s has no user xattrs: %v", path, err)
		}
	}
	if referrer != "" {
		if err := unix.Setxattr(path, XattrReferrer, []byte(referrer), 0); err != nil {
			t.Skipf("file system of %s has no user xattrs: %v", path, err)
		}
	}
}

// A minimal but well-formed PDF with one empty page.
const samplePDF = "%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n" +
	"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n" +
	"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>endobj\n" +
	"trailer<</Root 1 0 R>>\n%%EOF\n"

// The EICAR anti-virus test file, on the shipped known-bad list.
const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

func unixSetxattr(path, name, value string) error {
	return unix.Setxattr(path, name, []byte(value), 0)
}
