package microvm

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

func TestParseELF(t *testing.T) {
	good := tinyELF([]byte{0xf4})
	e, err := parseELF(bytes.NewReader(good), int64(len(good)))
	if err != nil {
		t.Fatal(err)
	}
	if e.Type != etExec || e.Entry != 0x400078 || len(e.Phdrs) != 1 || e.phdrAddr() != 0x400040 {
		t.Errorf("parsed %+v", e)
	}
	for _, c := range []struct {
		name string
		mut  func(b []byte) []byte
	}{
		{"short", func(b []byte) []byte { return b[:40] }},
		{"magic", func(b []byte) []byte { b[1] = 'X'; return b }},
		{"32-bit", func(b []byte) []byte { b[4] = 1; return b }},
		{"machine", func(b []byte) []byte { b[18] = 3; return b }},
		{"type", func(b []byte) []byte { b[16] = 1; return b }},
		{"phnum huge", func(b []byte) []byte { b[56], b[57] = 0xff, 0xff; return b }},
		{"phoff outside", func(b []byte) []byte { b[32+5] = 0x10; return b }},
		{"filesz outside", func(b []byte) []byte { b[64+32+3] = 0x7f; return b }},
		{"filesz > memsz", func(b []byte) []byte { b[64+40] = 1; b[64+41] = 0; return b }},
	} {
		b := c.mut(append([]byte(nil), good...))
		if _, err := parseELF(bytes.NewReader(b), int64(len(b))); !errors.Is(err, ErrBadELF) {
			t.Errorf("%s: err %v, want ErrBadELF", c.name, err)
		}
	}
}

// FuzzParseELF feeds arbitrary bytes to the ELF header parser: it must never panic, and
// whatever it accepts must be internally consistent.
func FuzzParseELF(f *testing.F) {
	f.Add(tinyELF([]byte{0xf4}))
	if b, err := os.ReadFile("/usr/bin/busybox"); err == nil && len(b) > 4096 {
		f.Add(b[:4096])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := parseELF(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		for _, p := range e.Phdrs {
			if p.Type == ptLoad && (p.Filesz > p.Memsz || p.Off+p.Filesz > uint64(len(b))) {
				t.Fatalf("accepted inconsistent segment %+v", p)
			}
		}
		e.span()
		e.phdrAddr()
	})
}
