package daemon

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/api"
)

// Extended attributes a release writes on the file, as a visible tag. They are never read
// back: the owner of a file can set user.* attributes on it, so they prove nothing.
const (
	XattrVerdict    = "user.isolator.verdict"
	XattrReleasedBy = "user.isolator.released-by"
	XattrReleasedAt = "user.isolator.released-at"
	XattrSHA256     = "user.isolator.sha256"
)

// Release is a release as the Decider sees it: one content of a file, trusted after review.
type Release struct {
	SHA256 string    // the content released
	By     string    // who released it, for explanations: "alice (uid 1000)"
	At     time.Time // when
	Reason string    // the reviewer's words
}

// releaseRecord is one release, one line of <state-dir>/releases.jsonl.
type releaseRecord struct {
	Dev    uint64    `json:"dev"`
	Ino    uint64    `json:"ino"`
	Owner  int       `json:"owner"` // the file's owner at the release; the release needs it unchanged
	SHA256 string    `json:"sha256"`
	By     int       `json:"by"` // uid of whoever released it: the owner or an administrator
	User   string    `json:"user,omitempty"`
	At     time.Time `json:"at"`
	Path   string    `json:"path"` // where the file was, for people reading the file
	Reason string    `json:"reason,omitempty"`
}

type fileID struct{ dev, ino uint64 }

// releases are the daemon's own record of released files, keyed by device and inode: the
// latest release of a file replaces the earlier ones. They are kept in the state
// directory, which only the daemon can write, so a user cannot release a file by writing
// attributes on it.
type releases struct {
	path string

	mu sync.Mutex
	m  map[fileID]*releaseRecord // guarded by mu
}

// openReleases loads the releases at path (a missing file is none). Lines that do not
// parse are reported and skipped.
func openReleases(path string) (*releases, []error) {
	r := &releases{path: path, m: make(map[fileID]*releaseRecord)}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, []error{err}
	}
	defer f.Close()
	var errs []error
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		var rec releaseRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil || rec.SHA256 == "" {
			errs = append(errs, fmt.Errorf("%s:%d: not a release: %v", path, n, err))
			continue
		}
		r.m[fileID{rec.Dev, rec.Ino}] = &rec
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", path, err))
	}
	return r, errs
}

// add records rec durably (appended and synced), then puts it in force.
func (r *releases) add(rec *releaseRecord) error {
	line, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("record release: %w", err)
	}
	_, err = f.Write(append(line, '\n'))
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("record release: %w", err)
	}
	r.m[fileID{rec.Dev, rec.Ino}] = rec
	return nil
}

// lookup returns the release of the file st describes, if there is one and the file still
// has the owner it had when it was released. Whether it is still the released content is
// for the policy to check, from the file's hash.
func (r *releases) lookup(st *unix.Stat_t) *Release {
	r.mu.Lock()
	rec := r.m[fileID{st.Dev, st.Ino}]
	r.mu.Unlock()
	if rec == nil || rec.Owner != int(st.Uid) {
		return nil
	}
	by := rec.User
	if by == "" {
		by = "uid " + strconv.Itoa(rec.By)
	} else {
		by += " (uid " + strconv.Itoa(rec.By) + ")"
	}
	return &Release{SHA256: rec.SHA256, By: by, At: rec.At, Reason: rec.Reason}
}

// Release marks a file trusted after review. The caller must be the file's owner or an
// administrator and able to open it: the file is opened and hashed with the caller's
// file-system identity. The release is recorded in the daemon's state directory, keyed by
// the file's device and inode, with its SHA-256 and owner, and audited; from then on the
// policy trusts the file while its content has that hash (and no deny rule matches it, see
// policy.Policy.Decide). The user.isolator.* attributes written on the file are only a
// visible tag: when they cannot be written (a read-only mount, no user xattrs, no write
// permission) the release holds all the same and the answer carries a warning.
func (d *Daemon) Release(p *Peer, req *api.ReleaseRequest) (*api.ReleaseResponse, error) {
	if err := p.mayWrite(); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(req.Path) {
		return nil, fmt.Errorf("%w: path %q is not absolute", errBadRequest, req.Path)
	}
	var f *os.File
	var st unix.Stat_t
	var sum string
	err := asUser(p, func() error {
		fd, err := unix.Open(req.Path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_NOCTTY, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: req.Path, Err: err}
		}
		f = os.NewFile(uintptr(fd), req.Path)
		if err := unix.Fstat(fd, &st); err != nil {
			return &os.PathError{Op: "stat", Path: req.Path, Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return fmt.Errorf("%w: %s is not a regular file", errBadRequest, req.Path)
		}
		if int(st.Uid) != p.UID && !p.IsAdmin() {
			return fmt.Errorf("%w: only the file's owner or an administrator can release it", ErrNotPermitted)
		}
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62)); err != nil {
			return fmt.Errorf("hash %s: %w", req.Path, err)
		}
		sum = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if f != nil {
		defer f.Close()
	}
	if err != nil {
		return nil, err
	}
	rec := &releaseRecord{Dev: st.Dev, Ino: st.Ino, Owner: int(st.Uid), SHA256: sum, By: p.UID, User: p.User,
		At: time.Now().UTC(), Path: req.Path, Reason: req.Reason}
	if err := d.releases.add(rec); err != nil {
		return nil, err
	}
	resp := &api.ReleaseResponse{Path: req.Path, SHA256: sum, By: p.UID, At: rec.At}
	// The tag, written with the caller's identity like the rest.
	if err := asUser(p, func() error {
		for _, kv := range [][2]string{
			{XattrVerdict, string(api.ActionTrust)},
			{XattrSHA256, sum},
			{XattrReleasedBy, strconv.Itoa(p.UID)},
			{XattrReleasedAt, rec.At.Format(time.RFC3339)},
		} {
			if err := unix.Fsetxattr(int(f.Fd()), kv[0], []byte(kv[1]), 0); err != nil {
				return fmt.Errorf("set %s: %w", kv[0], err)
			}
		}
		return nil
	}); err != nil {
		resp.Warning = fmt.Sprintf("the file is not tagged as released (%v); isolatord has recorded the release and applies it all the same", err)
	}
	d.writeAudit(&AuditRecord{Event: "release", UID: p.UID, User: p.User, Path: req.Path,
		SHA256: sum, Action: string(api.ActionTrust), Reason: req.Reason})
	d.log.Info("file released", "uid", p.UID, "path", req.Path, "sha256", sum, "owner", st.Uid, "tagged", resp.Warning == "")
	if ic := d.icpt.Load(); ic != nil {
		ic.InvalidateFile(f) // the Gate may hold a verdict for this file from before the release
	}
	return resp, nil
}
