package microvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	enchex "encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/isolator-dev/isolator/pkg/image"
)

// signalWriter collects output and closes seen once it contains want.
type signalWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.seen != nil && strings.Contains(w.buf.String(), w.want) {
		close(w.seen)
		w.seen = nil
	}
	return len(p), nil
}

func (w *signalWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestImagePagesCopyOnWrite runs testdata/cowdata, whose initialized data and mappings of an
// image file are mapped from the image file copy-on-write, in two micro VMs at once: the
// second one, started after the first wrote to all those pages, sees the original bytes, and
// the image file is unchanged.
func TestImagePagesCopyOnWrite(t *testing.T) {
	sys := requireKVM(t)
	bin := filepath.Join(t.TempDir(), "cowdata")
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/cowdata")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	blob := filepath.Join(t.TempDir(), "blob")
	data := make([]byte, 3*pageSize+pageSize/2) // the same in every run: images are cached
	for i := range data {
		data[i] = byte(i*7 + i/pageSize + 3)
	}
	if err := os.WriteFile(blob, data, 0o644); err != nil {
		t.Fatal(err)
	}
	im := buildImage(t, "cowdata", image.BuildConfig{Files: []image.FileSpec{
		{HostPath: bin, GuestPath: "/bin/cowdata"}, {HostPath: blob, GuestPath: "/data/blob"}}})
	before, err := im.Digest()
	if err != nil {
		t.Fatal(err)
	}
	cfg := func(stdin io.Reader, stdout io.Writer) Config {
		return Config{KVM: sys, Image: im, Program: "/bin/cowdata", Args: []string{"/bin/cowdata", "/data/blob"},
			Stdin: stdin, Stdout: stdout, Stderr: stdout, Timeout: 60 * time.Second}
	}

	stdinR, stdinW := io.Pipe()
	out1 := &signalWriter{want: "mmap ok", seen: make(chan struct{})}
	seen := out1.seen
	vm1, err := New(cfg(stdinR, out1))
	if err != nil {
		t.Fatal(err)
	}
	defer vm1.Close()
	done1 := make(chan *Result, 1)
	go func() {
		res, err := vm1.Run(context.Background())
		if err != nil {
			t.Error(err)
		}
		done1 <- res
	}()
	select {
	case <-seen:
	case res := <-done1:
		t.Fatalf("first VM ended early: %+v, output %q", res, out1.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("first VM did not get to its mappings: %q", out1.String())
	}
	// The first VM's pages of the image are mapped from the image file, not copied.
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(maps), "cowdata.img") {
		t.Error("no host mapping of the image file while a micro VM runs from it")
	}

	var out2 bytes.Buffer
	res2, err := Run(context.Background(), cfg(nil, &out2))
	if err != nil {
		t.Fatal(err)
	}
	stdinW.Close()
	res1 := <-done1
	wantOut := "data ABCDE\nmmap ok 14336 " + enchex.EncodeToString(data[:8]) + "\n"
	if res1.ExitCode != 0 || out1.String() != wantOut+"done\n" {
		t.Errorf("first VM: exit %d (%s), output %q, want %q", res1.ExitCode, res1.Reason, out1.String(), wantOut+"done\n")
	}
	if res2.ExitCode != 0 || out2.String() != wantOut+"done\n" {
		t.Errorf("second VM: exit %d (%s), output %q, want %q", res2.ExitCode, res2.Reason, out2.String(), wantOut+"done\n")
	}

	// The image file still has the bytes it was loaded with.
	e, err := im.Lookup("/bin/cowdata")
	if err != nil {
		t.Fatal(err)
	}
	f, _, _, ok := im.Extent(e)
	if !ok {
		t.Fatal("no extent for an image file")
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, im.Size())); err != nil {
		t.Fatal(err)
	}
	if got := enchex.EncodeToString(h.Sum(nil)); got != before {
		t.Errorf("image file digest %s after the runs, %s before", got, before)
	}
}
