package cli

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/isolator-dev/isolator/pkg/api"
)

// serveResults serves res for task res.Task, and not-found for any other task.
func serveResults(t *testing.T, res *api.Results) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "isolator.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathResults, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.PathValue("id") != res.Task {
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(&api.Error{Code: api.CodeNotFound, Message: "no such task: " + r.PathValue("id")})
			return
		}
		writeResults(w, res)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// writeResults answers a results request as isolatord does: the result event describing the
// files of res, each file's contents in chunks of at most 4 bytes, then the end.
func writeResults(w http.ResponseWriter, res *api.Results) {
	w.Header().Set("Content-Type", api.ContentTypeNDJSON)
	enc := json.NewEncoder(w)
	meta := *res
	meta.Files = nil
	for _, f := range res.Files {
		meta.Files = append(meta.Files, api.File{Name: f.Name, Mode: f.Mode, Size: int64(len(f.Data))})
	}
	enc.Encode(api.Event{Type: api.EventResult, Results: &meta})
	for _, f := range res.Files {
		for off := 0; off == 0 || off < len(f.Data); off += 4 {
			chunk := f.Data[off:min(off+4, len(f.Data))]
			enc.Encode(api.Event{Type: api.EventFile, File: &api.File{Name: f.Name, Mode: f.Mode, Size: int64(len(f.Data)), Offset: int64(off), Data: chunk}})
		}
	}
	enc.Encode(api.Event{Type: api.EventEnd})
}

func TestResults(t *testing.T) {
	res := &api.Results{Task: "abc123", SHA256: strings.Repeat("0", 64), Handler: "script",
		Files: []api.File{
			{Name: "report.txt", Mode: 0o644, Data: []byte("a result of more than one chunk\n")},
			{Name: "sub/more.txt", Mode: 0o644, Data: []byte("more\n")},
			{Name: "../escape", Mode: 0o644, Data: []byte("no")},
		},
		Rejected: []api.Rejected{{Name: "link", Reason: "not a regular file"}}}
	sock := serveResults(t, res)
	dir := t.TempDir()
	var out, errb bytes.Buffer
	if code := run([]string{"--socket", sock, "results", "--dir", dir, "abc123"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for name, want := range map[string]string{"report.txt": "a result of more than one chunk\n", "sub/more.txt": "more\n"} {
		got, err := os.ReadFile(filepath.Join(dir, "abc123", name))
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v", name, got, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "escape")); err == nil {
		t.Error("an unsafe name escaped the task directory")
	}
	for _, want := range []string{"2 result file(s) in " + filepath.Join(dir, "abc123"), "not returned: link: not a regular file",
		"not returned: ../escape"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	// A second run refuses to overwrite the task directory.
	out.Reset()
	errb.Reset()
	if code := run([]string{"--socket", sock, "results", "--dir", dir, "abc123"}, &out, &errb); code == 0 {
		t.Errorf("second delivery into the same directory succeeded: %s", out.String())
	}
	// --json, and an unknown task.
	out.Reset()
	dir2 := t.TempDir()
	if code := run([]string{"--socket", sock, "results", "--json", "--dir", dir2, "abc123"}, &out, &errb); code != 0 {
		t.Fatalf("--json exit %d: %s", code, errb.String())
	}
	var rep resultsReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil || len(rep.Written) != 2 || rep.ResultsDir != filepath.Join(dir2, "abc123") {
		t.Errorf("--json report %+v, %v", rep, err)
	}
	errb.Reset()
	if code := run([]string{"--socket", sock, "results", "--dir", dir2, "other"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "no such task") {
		t.Errorf("unknown task: exit %d %q", code, errb.String())
	}
}

// TestResultsBounds: isoctl applies the bounds of the task's handler that the results carry,
// not the broker's defaults.
func TestResultsBounds(t *testing.T) {
	res := &api.Results{Task: "bounded", Handler: "h", MaxFiles: 2, MaxBytes: 6,
		Files: []api.File{{Name: "a", Data: []byte("aa")}, {Name: "b", Data: []byte("bbbbb")}, {Name: "c", Data: []byte("c")}, {Name: "d", Data: []byte("d")}}}
	sock := serveResults(t, res)
	var out, errb bytes.Buffer
	if code := run([]string{"--socket", sock, "results", "--json", "--dir", t.TempDir(), "bounded"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var rep resultsReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.Written, ",") != "a,c" || strings.Join(rep.Refused, ";") != "b: over the 6-byte bound;d: more than 2 files" {
		t.Errorf("written %v, refused %v", rep.Written, rep.Refused)
	}
}
