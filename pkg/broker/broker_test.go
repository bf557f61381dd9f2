package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/api"
)

func TestStreamFollowLateAndLive(t *testing.T) {
	s := NewStream(0)
	w := s.Writer(api.EventStdout)
	fmt.Fprint(w, "early ")
	var wg sync.WaitGroup
	got := make([]string, 3)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b strings.Builder
			err := s.Follow(context.Background(), func(ev api.Event) error {
				b.Write(ev.Data)
				return nil
			})
			if err != nil {
				t.Errorf("follow: %v", err)
			}
			got[i] = b.String()
		}()
	}
	for i := range 100 {
		fmt.Fprintf(w, "%d ", i)
	}
	s.Close()
	wg.Wait()
	var want strings.Builder
	want.WriteString("early ")
	for i := range 100 {
		fmt.Fprintf(&want, "%d ", i)
	}
	// A follower that starts after Close still reads everything.
	var late strings.Builder
	if err := s.Follow(context.Background(), func(ev api.Event) error { late.Write(ev.Data); return nil }); err != nil {
		t.Fatal(err)
	}
	for i, g := range append(got, late.String()) {
		if g != want.String() {
			t.Errorf("follower %d got %q, want %q", i, g, want.String())
		}
	}
}

func TestStreamFollowCancel(t *testing.T) {
	s := NewStream(0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Follow(ctx, func(api.Event) error { return nil }) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Follow after cancel = %v, want context.Canceled", err)
	}
}

// TestStreamLimit: every event counts EventOverhead against the limit besides its data, so
// a program that prints one byte at a time cannot make the stream keep more than the limit;
// what is kept is the beginning of the output, then one notice.
func TestStreamLimit(t *testing.T) {
	s := NewStream(10 * EventOverhead)
	for range 20 {
		s.Append(api.Event{Type: api.EventStdout, Data: []byte("x")})
	}
	s.Append(api.Event{Type: api.EventStderr, Data: []byte("y")}) // after a drop: dropped too
	s.Close()
	var notices int
	var data []byte
	for _, ev := range s.Events() {
		if ev.Type == api.EventNotice {
			notices++
		}
		data = append(data, ev.Data...)
	}
	// 9 events of 1+EventOverhead bytes fit in 10*EventOverhead; the 10th does not.
	if notices != 1 || string(data) != "xxxxxxxxx" || s.Dropped() != 12 {
		t.Errorf("notices=%d data=%q dropped=%d, want 1, 9 bytes, 12", notices, data, s.Dropped())
	}
	s.Append(api.Event{Type: api.EventStdout, Data: []byte("after close")})
	if n := len(s.Events()); n != 10 {
		t.Errorf("append after close changed the stream: %d events", n)
	}

	// An event larger than the room left is cut to it.
	s = NewStream(EventOverhead + 10)
	s.Append(api.Event{Type: api.EventStdout, Data: []byte("0123456789abcdef")})
	s.Close()
	if evs := s.Events(); len(evs) != 2 || string(evs[0].Data) != "0123456789" || evs[1].Type != api.EventNotice || s.Dropped() != 6 {
		t.Errorf("events %+v, dropped %d", evs, s.Dropped())
	}
}

// TestStreamMerges: adjacent writes to a Writer become events of up to MaxChunk bytes; a
// write to the other Writer, or an event, ends the merged one, keeping the order.
func TestStreamMerges(t *testing.T) {
	s := NewStream(0)
	s.interval = time.Hour // only size, other output, Events and Close append pending output
	out, errw := s.Writer(api.EventStdout), s.Writer(api.EventStderr)
	const n = MaxChunk + 100
	for range n {
		out.Write([]byte("x"))
	}
	errw.Write([]byte("e1"))
	errw.Write([]byte("e2"))
	s.Append(api.Event{Type: api.EventNotice, Message: "between"})
	out.Write([]byte("tail"))
	s.Close()
	var got []string
	for _, ev := range s.Events() {
		switch ev.Type {
		case api.EventNotice:
			got = append(got, "notice:"+ev.Message)
		default:
			got = append(got, fmt.Sprintf("%s:%d", ev.Type, len(ev.Data)))
		}
	}
	want := fmt.Sprintf("[stdout:%d stdout:100 stderr:4 notice:between stdout:4]", MaxChunk)
	if fmt.Sprint(got) != want {
		t.Errorf("events %v, want %s", got, want)
	}
}

// TestStreamFlushesPending: output that nothing follows reaches a follower by itself.
func TestStreamFlushesPending(t *testing.T) {
	s := NewStream(0)
	fmt.Fprint(s.Writer(api.EventStdout), "alone")
	got := make(chan string)
	go s.Follow(context.Background(), func(ev api.Event) error {
		got <- string(ev.Data)
		return nil
	})
	if g := <-got; g != "alone" {
		t.Errorf("follower got %q", g)
	}
	s.Close()
}

func TestSanitizeName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"page-1.png", true},
		{"dir/report.txt", true},
		{"a/b/c/d.txt", true},
		{"", false},
		{"/etc/passwd", false},
		{"../x", false},
		{"a/../../x", false},
		{"a//b", false},
		{"./a", false},
		{"a/", false},
		{"bad\x00name", false},
		{"new\nline", false},
		{"esc\x1b[31m", false},
		{"rtl\u202etxt.exe", false},
		{strings.Repeat("a", 256), false},
		{strings.Repeat("a/", 16) + "x", false},
		{"\xff\xfe", false},
		{"ünïcode ok.txt", true},
	}
	for _, tt := range tests {
		got, err := SanitizeName(tt.name)
		if tt.ok != (err == nil) {
			t.Errorf("SanitizeName(%q) = %q, %v; want ok=%v", tt.name, got, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrUnsafeName) {
			t.Errorf("SanitizeName(%q) error %v does not wrap ErrUnsafeName", tt.name, err)
		}
	}
}

func FuzzSanitizeName(f *testing.F) {
	for _, s := range []string{"a", "a/b", "../x", "/abs", "a\x00", "dir/./x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		got, err := SanitizeName(name)
		if err != nil {
			return
		}
		if filepath.IsAbs(got) || filepath.Clean(got) != got || strings.HasPrefix(filepath.Clean("x/"+got), "x/") == false {
			t.Fatalf("accepted unsafe name %q", got)
		}
		for _, p := range strings.Split(got, "/") {
			if p == ".." || p == "." || p == "" {
				t.Fatalf("accepted %q with component %q", got, p)
			}
		}
	})
}

func TestDeliver(t *testing.T) {
	base := filepath.Join(t.TempDir(), "Isolated")
	files := []api.File{
		{Name: "out.txt", Mode: 0o4755, Data: []byte("hello")},
		{Name: "pages/page-1.txt", Data: []byte("one")},
		{Name: "pages/page-2.txt", Data: []byte("two")},
		{Name: "../escape", Data: []byte("x")},
		{Name: "out.txt", Data: []byte("again")},
		{Name: "out.txt/child", Data: []byte("x")},
		{Name: "big.bin", Data: bytes.Repeat([]byte("z"), 100)},
		{Name: "f4", Data: nil},
		{Name: "f5", Data: nil},
	}
	d, err := Deliver(DeliverConfig{Dir: base, TaskID: "t1", SourceSHA256: "abc", Handler: "docs", MaxFiles: 4, MaxBytes: 50}, files)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, w := range d.Written {
		names = append(names, w.Name)
		data, err := os.ReadFile(w.Path)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(data)) != w.Size {
			t.Errorf("%s: %d bytes on disk, reported %d", w.Name, len(data), w.Size)
		}
	}
	if got, want := strings.Join(names, ","), "out.txt,pages/page-1.txt,pages/page-2.txt,f4"; got != want {
		t.Errorf("written %s, want %s", got, want)
	}
	refused := map[string]string{}
	for _, r := range d.Refused {
		refused[r.Name] = r.Reason
	}
	for name, reason := range map[string]string{
		"../escape":     "unsafe",
		"out.txt":       "not overwritten",
		"out.txt/child": "not a directory",
		"big.bin":       "byte bound",
		"f5":            "more than 4 files",
	} {
		if !strings.Contains(refused[name], reason) {
			t.Errorf("refused[%q] = %q, want it to mention %q", name, refused[name], reason)
		}
	}
	fi, err := os.Stat(filepath.Join(base, "t1", "out.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o111 != 0 || fi.Mode()&os.ModeSetuid != 0 {
		t.Errorf("result is executable or setuid: %v", fi.Mode())
	}
	if d.XattrWarning == "" {
		buf := make([]byte, 64)
		for attr, want := range map[string]string{XattrTask: "t1", XattrSourceSHA256: "abc", XattrHandler: "docs"} {
			n, err := unix.Getxattr(filepath.Join(base, "t1", "pages/page-1.txt"), attr, buf)
			if err != nil || string(buf[:n]) != want {
				t.Errorf("xattr %s = %q, %v; want %q", attr, buf[:n], err, want)
			}
		}
	} else {
		t.Logf("file system without user xattrs: %s", d.XattrWarning)
	}
	// A second delivery of the same task never reuses the directory.
	if _, err := Deliver(DeliverConfig{Dir: base, TaskID: "t1"}, files); err == nil {
		t.Error("Deliver into an existing task directory succeeded")
	}
	if _, err := Deliver(DeliverConfig{Dir: base, TaskID: "../t2"}, files); err == nil {
		t.Error("Deliver with a task id containing a slash succeeded")
	}
}

// TestDeliverExisting: with Existing, an empty directory is written into as it is (its
// mode kept, no tag added); a directory with an entry, a symlink to a directory and a file
// are refused before anything is written; a missing one is created as without Existing.
func TestDeliverExisting(t *testing.T) {
	base := t.TempDir()
	files := []api.File{{Name: "a.txt", Data: []byte("a")}, {Name: "sub/b.txt", Data: []byte("b")}}
	empty := filepath.Join(base, "empty")
	os.Mkdir(empty, 0o750)
	os.Chmod(empty, 0o750)
	d, err := Deliver(DeliverConfig{Dir: base, TaskID: "empty", Handler: "h", Existing: true}, files)
	if err != nil || len(d.Written) != 2 || d.Dir != empty {
		t.Fatalf("Deliver into an empty directory: %+v, %v", d, err)
	}
	if b, err := os.ReadFile(filepath.Join(empty, "sub", "b.txt")); err != nil || string(b) != "b" {
		t.Errorf("sub/b.txt: %q, %v", b, err)
	}
	if fi, _ := os.Stat(empty); fi.Mode().Perm() != 0o750 {
		t.Errorf("the existing directory's mode became %v", fi.Mode())
	}
	if _, err := unix.Getxattr(empty, XattrHandler, make([]byte, 16)); err == nil {
		t.Error("the existing directory was tagged")
	}

	full := filepath.Join(base, "full")
	os.Mkdir(full, 0o755)
	os.WriteFile(filepath.Join(full, "keep"), []byte("mine"), 0o644)
	os.Symlink(empty, filepath.Join(base, "link"))
	os.WriteFile(filepath.Join(base, "file"), nil, 0o644)
	for id, want := range map[string]string{"full": "not empty", "link": "open task directory", "file": "open task directory"} {
		if _, err := Deliver(DeliverConfig{Dir: base, TaskID: id, Existing: true}, files); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Deliver into %s: %v, want an error saying %q", id, err, want)
		}
	}
	if ents, _ := os.ReadDir(full); len(ents) != 1 {
		t.Errorf("a refused delivery wrote into the directory: %v", ents)
	}
	if d, err := Deliver(DeliverConfig{Dir: base, TaskID: "new", Existing: true}, files); err != nil || len(d.Written) != 2 {
		t.Errorf("Deliver into a new directory with Existing: %+v, %v", d, err)
	}
	if fi, err := os.Stat(filepath.Join(base, "new")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("new task directory: %v, %v; want mode 0700", fi, err)
	}
}

func TestCreateAtRefusesSymlinks(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "target"), filepath.Join(dir, "file")); err != nil {
		t.Fatal(err)
	}
	root, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	for _, name := range []string{"link/x", "file"} {
		if dir, _, f, err := createAt(root, name); err == nil {
			f.Close()
			closeIfNot(dir, root)
			t.Errorf("createAt(%q) through a symlink succeeded", name)
		}
	}
	ents, _ := os.ReadDir(outside)
	if len(ents) != 0 {
		t.Errorf("something was written outside: %v", ents)
	}
}

// TestDeliverer writes files that arrive in chunks, as they come after a result event: a
// file in several chunks is written whole; one that stops short, whose chunks come out of
// order or run past its announced size is removed and refused; an announced file that never
// comes and a chunk of a file nobody announced are refused.
func TestDeliverer(t *testing.T) {
	base := t.TempDir()
	announced := []api.File{
		{Name: "whole.txt", Size: 10}, {Name: "dir/short.txt", Size: 10}, {Name: "gap.txt", Size: 4},
		{Name: "long.txt", Size: 2}, {Name: "empty", Size: 0}, {Name: "never.txt", Size: 1},
	}
	dl, err := NewDeliverer(DeliverConfig{Dir: base, TaskID: "t"}, announced)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []api.File{
		{Name: "whole.txt", Offset: 0, Data: []byte("01234")},
		{Name: "whole.txt", Offset: 5, Data: []byte("56789")},
		{Name: "dir/short.txt", Offset: 0, Data: []byte("0123")},
		{Name: "gap.txt", Offset: 0, Data: []byte("ab")},
		{Name: "gap.txt", Offset: 3, Data: []byte("d")},
		{Name: "long.txt", Offset: 0, Data: []byte("abc")},
		{Name: "empty", Offset: 0},
		{Name: "stray.txt", Offset: 0, Data: []byte("x")},
	} {
		dl.Write(c)
	}
	d := dl.Close()
	var written []string
	for _, w := range d.Written {
		written = append(written, fmt.Sprintf("%s:%d", w.Name, w.Size))
	}
	if got := strings.Join(written, ","); got != "whole.txt:10,empty:0" {
		t.Errorf("written %s", got)
	}
	if b, err := os.ReadFile(filepath.Join(base, "t", "whole.txt")); err != nil || string(b) != "0123456789" {
		t.Errorf("whole.txt = %q, %v", b, err)
	}
	refused := map[string]string{}
	for _, r := range d.Refused {
		refused[r.Name] = r.Reason
	}
	for name, want := range map[string]string{
		"dir/short.txt": "incomplete: 4 of 10 bytes received",
		"gap.txt":       "chunk at offset 3, expected 2",
		"long.txt":      "more than the 2 bytes announced",
		"never.txt":     "not received",
		"stray.txt":     "not announced",
	} {
		if !strings.Contains(refused[name], want) {
			t.Errorf("refused[%q] = %q, want %q", name, refused[name], want)
		}
	}
	for _, name := range []string{"dir/short.txt", "gap.txt", "long.txt", "never.txt"} {
		if _, err := os.Lstat(filepath.Join(base, "t", name)); !os.IsNotExist(err) {
			t.Errorf("refused %s left on disk: %v", name, err)
		}
	}
}
