package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"

	"github.com/isolator-dev/isolator/pkg/api"
)

// store keeps task history under <state-dir>/tasks/<id>/: task.json (the task, rewritten
// atomically on every change), results.json (what the output files are), files/<n> (the
// contents of the n-th of them, 0600) and logs.jsonl (what the guest printed). The
// directory is 0700 and owned by the daemon: results reach users only through the API.
type store struct {
	dir string
}

var validID = regexp.MustCompile(`^[0-9a-f]{16}$`)

func newStore(stateDir string) (*store, error) {
	dir := filepath.Join(stateDir, "tasks")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create task store: %w", err)
	}
	return &store{dir: dir}, nil
}

func (s *store) taskDir(id string) string { return filepath.Join(s.dir, id) }

func (s *store) writeJSON(id, name string, v any) error {
	dir := s.taskDir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, name))
}

func (s *store) saveTask(t *api.Task) error {
	if err := s.writeJSON(t.ID, "task.json", t); err != nil {
		return fmt.Errorf("save task %s: %w", t.ID, err)
	}
	return nil
}

// saveResults writes the contents of r's files to files/<n>, dropping them from r (they
// are then read back with openResult), and r to results.json. A file whose contents could
// not be written keeps them in r.
func (s *store) saveResults(r *api.Results) error {
	for i := range r.Files {
		r.Files[i].Size = int64(len(r.Files[i].Data))
	}
	dir := filepath.Join(s.taskDir(r.Task), "files")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save results of %s: %w", r.Task, err)
	}
	var errs []error
	for i := range r.Files {
		f := &r.Files[i]
		if err := writeSynced(filepath.Join(dir, strconv.Itoa(i)), f.Data); err != nil {
			errs = append(errs, err)
			continue
		}
		f.Data = nil
	}
	if err := s.writeJSON(r.Task, "results.json", r); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("save results of %s: %w", r.Task, err)
	}
	return nil
}

// describe returns a copy of r that describes its files without their contents: the
// contents go in EventFile chunks of their own (sendFiles). Contents left in a
// description (a file whose contents could not be saved, or the results.json of an older
// daemon) would make one event of them all, which can exceed api.MaxEventSize, and the
// client would lose every result.
func describe(r *api.Results) *api.Results {
	c := *r
	c.Files = make([]api.File, len(r.Files))
	for i, f := range r.Files {
		if f.Data != nil {
			f.Size = int64(len(f.Data))
		}
		f.Data = nil
		c.Files[i] = f
	}
	return &c
}

// writeSynced creates path, mode 0600, with data.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// loadResults reads results.json. The results of daemons before files/ held their files'
// contents in it; those are returned with Data.
func (s *store) loadResults(id string) (*api.Results, error) {
	data, err := os.ReadFile(filepath.Join(s.taskDir(id), "results.json"))
	if err != nil {
		return nil, err
	}
	var r api.Results
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("results of %s: %w", id, err)
	}
	for i := range r.Files {
		if f := &r.Files[i]; f.Data != nil {
			f.Size = int64(len(f.Data))
		}
	}
	return &r, nil
}

// openResult opens the contents of the n-th result file of task id.
func (s *store) openResult(id string, n int) (*os.File, error) {
	return os.Open(filepath.Join(s.taskDir(id), "files", strconv.Itoa(n)))
}

func (s *store) saveLogs(id string, events []api.Event) error {
	var buf []byte
	for _, ev := range events {
		line, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		buf = append(append(buf, line...), '\n')
	}
	if err := os.WriteFile(filepath.Join(s.taskDir(id), "logs.jsonl"), buf, 0o600); err != nil {
		return fmt.Errorf("save logs of %s: %w", id, err)
	}
	return nil
}

func (s *store) loadLogs(id string) ([]api.Event, error) {
	f, err := os.Open(filepath.Join(s.taskDir(id), "logs.jsonl"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	var evs []api.Event
	dec := json.NewDecoder(f)
	for dec.More() {
		var ev api.Event
		if err := dec.Decode(&ev); err != nil {
			return evs, fmt.Errorf("logs of %s: %w", id, err)
		}
		evs = append(evs, ev)
	}
	return evs, nil
}

// loadAll reads every stored task; unreadable entries are returned as errors beside the
// tasks that loaded.
func (s *store) loadAll() ([]*api.Task, []error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, []error{err}
	}
	var tasks []*api.Task
	var errs []error
	for _, e := range ents {
		if !e.IsDir() || !validID.MatchString(e.Name()) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.dir, e.Name(), "task.json"))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var t api.Task
		if err := json.Unmarshal(data, &t); err != nil || t.ID != e.Name() {
			errs = append(errs, fmt.Errorf("task %s: bad task.json: %v", e.Name(), err))
			continue
		}
		tasks = append(tasks, &t)
	}
	return tasks, errs
}
