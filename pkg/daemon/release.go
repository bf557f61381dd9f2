package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isolator-dev/isolator/pkg/api"
)

// Extended attributes a release writes on the file.
const (
	XattrVerdict    = "user.isolator.verdict"
	XattrReleasedBy = "user.isolator.released-by"
	XattrReleasedAt = "user.isolator.released-at"
	XattrSHA256     = "user.isolator.sha256"
)

// Release marks a file trusted after review: the file's owner or an administrator records the verdict
// "trust" with the file's SHA-256 in user.isolator.* xattrs on the file itself, and the act
// is audited. Everything happens with the caller's file-system identity, so only someone
// allowed to set the file's attributes can release it.
func (d *Daemon) Release(p *Peer, req *api.ReleaseRequest) (*api.ReleaseResponse, error) {
	if !filepath.IsAbs(req.Path) {
		return nil, fmt.Errorf("%w: path %q is not absolute", errBadRequest, req.Path)
	}
	if err := p.mayWrite(); err != nil {
		return nil, err
	}
	var resp api.ReleaseResponse
	err := asUser(p, func() error {
		fd, err := unix.Open(req.Path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_NOCTTY, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: req.Path, Err: err}
		}
		f := os.NewFile(uintptr(fd), req.Path)
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%w: %s is not a regular file", errBadRequest, req.Path)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != p.UID && !p.IsAdmin() {
			return fmt.Errorf("%w: only the file's owner or an administrator can release it", ErrNotPermitted)
		}
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		sum := hex.EncodeToString(h.Sum(nil))
		for _, kv := range [][2]string{
			{XattrVerdict, string(api.ActionTrust)},
			{XattrSHA256, sum},
			{XattrReleasedBy, strconv.Itoa(p.UID)},
			{XattrReleasedAt, time.Now().UTC().Format(time.RFC3339)},
		} {
			if err := unix.Fsetxattr(fd, kv[0], []byte(kv[1]), 0); err != nil {
				return fmt.Errorf("set %s on %s: %w", kv[0], req.Path, err)
			}
		}
		resp = api.ReleaseResponse{Path: req.Path, SHA256: sum, By: p.UID}
		return nil
	})
	if err != nil {
		return nil, err
	}
	d.writeAudit(&AuditRecord{Event: "release", UID: p.UID, User: p.User, Path: req.Path,
		SHA256: resp.SHA256, Action: string(api.ActionTrust), Reason: req.Reason})
	d.log.Info("file released", "uid", p.UID, "path", req.Path, "sha256", resp.SHA256)
	return &resp, nil
}
